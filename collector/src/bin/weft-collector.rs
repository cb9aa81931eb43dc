//! The `weft-collector` binary: parse flags, set up logging, bind, serve
//! until Ctrl-C or SIGTERM.

use clap::Parser;
use tracing_subscriber::EnvFilter;
use weft_collector::cli::{Cli, TokenOrigin};

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
            eprintln!("weft-collector: cannot prepare the data directory: {e}");
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
    println!("weft collector listening on http://{addr}");
    if config.www_dir.is_some() {
        println!("  demo site:   http://{addr}/");
        println!("  dashboard:   http://{addr}/dashboard");
    }
    println!("  admin token: {} ({token_note})", config.admin_token);
    println!("  data dir:    {}", config.data_dir.display());

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
