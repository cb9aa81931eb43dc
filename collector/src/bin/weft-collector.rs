//! The `weft-collector` binary: parse flags, set up logging, then serve
//! until Ctrl-C or SIGTERM, or run one of the operator's subcommands
//! (`check-config`, `backup`, `restore`).

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use weft_collector::cli::{Cli, Command, Resolved, TokenOrigin};

/// mimalloc: the collector allocates a few strings per message on one
/// thread and frees them on another; glibc's malloc spent 15% of the CPU
/// on that under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            EnvFilter::try_from_env("WEFT_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let mut cli = Cli::parse();
    let result = match cli.command.take() {
        Some(Command::CheckConfig { config }) => check_config(config.as_deref()),
        Some(Command::Backup { data_dir, to }) => weft_collector::backup::backup(&data_dir, &to)
            .map(|report| println!("{report}"))
            .map_err(|e| format!("backup: {e}")),
        Some(Command::Restore { from, data_dir }) => {
            weft_collector::backup::restore(&from, &data_dir)
                .map(|report| println!("{report}"))
                .map_err(|e| format!("restore: {e}"))
        }
        None => {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("weft-collector: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(serve(cli))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-collector: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `check-config`: every problem of the file, each with its line.
fn check_config(flag: Option<&std::path::Path>) -> Result<(), String> {
    let path = weft_collector::cli::config_path(flag).ok_or_else(|| {
        format!(
            "no configuration file: give --config or put {} here",
            weft_collector::cli::DEFAULT_CONFIG_FILE
        )
    })?;
    let file = weft_collector::cli::read_config_file(&path).map_err(|e| e.to_string())?;
    println!(
        "{}: ok ({} sources, {} destinations)",
        path.display(),
        file.sources.len(),
        file.destinations.len()
    );
    Ok(())
}

async fn serve(cli: Cli) -> Result<(), String> {
    let Resolved {
        config,
        token: token_origin,
        listen,
    } = cli.into_config().map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr().unwrap_or(listen);
    let token_note = match &token_origin {
        TokenOrigin::Configured => "from --admin-token".to_owned(),
        TokenOrigin::Stored(p) => format!("kept in {}", p.display()),
        TokenOrigin::Generated(p) => format!("new, saved to {}", p.display()),
    };
    // The start-up banner goes to stdout once the data is open (the first
    // line is what scripts and tests read). Write errors are ignored: a
    // closed stdout must not stop the collector, as `println!` would.
    let mut banner = format!("weft collector listening on http://{addr}\n");
    let (sdk, site) =
        weft_collector::assets::serves_site(config.sdk_dir.as_deref(), config.www_dir.as_deref());
    if site {
        banner.push_str(&format!("  demo site:   http://{addr}/\n"));
        banner.push_str(&format!("  dashboard:   http://{addr}/dashboard\n"));
    }
    if sdk {
        let script = config.paths.script.as_deref().unwrap_or("/weft.js");
        banner.push_str(&format!("  script tag:  http://{addr}{script}\n"));
    }
    banner.push_str(&format!(
        "  admin token: {} ({token_note})\n",
        config.admin_token
    ));
    banner.push_str(&format!("  data dir:    {}\n", config.data_dir.display()));
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
    let announce = Box::new(move || {
        let mut stdout = std::io::stdout();
        let _ = stdout
            .write_all(banner.as_bytes())
            .and_then(|()| stdout.flush());
    });
    weft_collector::server::serve_announced(config, listener, shutdown, Some(announce))
        .await
        .map_err(|e| e.to_string())
}
