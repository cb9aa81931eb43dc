//! The `weft-collector` binary: parse flags, set up logging, bind, serve
//! until Ctrl-C or SIGTERM.

use std::io::Write as _;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use weft_collector::cli::{Cli, TokenOrigin};

/// mimalloc: the collector allocates a few strings per message on one
/// thread and frees them on another; glibc's malloc spent 15% of the CPU
/// on that under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            EnvFilter::try_from_env("WEFT_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let listen = cli.listen;
    let (config, token_origin) = match cli.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("weft-collector: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("weft-collector: cannot listen on {listen}: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().unwrap_or(listen);
    let token_note = match &token_origin {
        TokenOrigin::Configured => "from --admin-token".to_owned(),
        TokenOrigin::Stored(p) => format!("kept in {}", p.display()),
        TokenOrigin::Generated(p) => format!("new, saved to {}", p.display()),
    };
    // The start-up banner goes to stdout (the first line is what scripts and
    // tests read). Write errors are ignored: a closed stdout must not stop
    // the collector, as `println!` would.
    let mut banner = format!("weft collector listening on http://{addr}\n");
    if config.www_dir.is_some() {
        banner.push_str(&format!("  demo site:   http://{addr}/\n"));
        banner.push_str(&format!("  dashboard:   http://{addr}/dashboard\n"));
    }
    banner.push_str(&format!(
        "  admin token: {} ({token_note})\n",
        config.admin_token
    ));
    banner.push_str(&format!("  data dir:    {}\n", config.data_dir.display()));
    let mut stdout = std::io::stdout();
    let _ = stdout
        .write_all(banner.as_bytes())
        .and_then(|()| stdout.flush());

    let shutdown = async {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
    };
    match weft_collector::serve(config, listener, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-collector: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
