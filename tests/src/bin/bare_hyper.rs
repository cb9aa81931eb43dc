//! `weft-bare-hyper`: the baseline of `cargo xtask bench collector`.
//!
//! A hyper 1.x HTTP/1.1 server on a tokio multi-thread runtime that does the
//! least a server can do with an ingest request: read the whole body and
//! answer 200 `{"success":true}`. The collector's throughput is reported as
//! a fraction of this one's, measured on the same machine in the same run,
//! so the ratio shows what parsing, validation and durable storage cost.
//!
//! Usage: `weft-bare-hyper [--listen ADDR]` (default `127.0.0.1:0`). The
//! first stdout line is `listening on ADDR`.

use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Reads each request body and answers 200.
#[derive(Debug, Parser)]
#[command(name = "weft-bare-hyper")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

const OK_BODY: &[u8] = br#"{"success":true}"#;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let listener = match TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("weft-bare-hyper: cannot listen on {}: {e}", args.listen);
            return std::process::ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().unwrap_or(args.listen);
    if let Err(e) = announce(addr) {
        eprintln!("weft-bare-hyper: cannot write to stdout: {e}");
        return std::process::ExitCode::FAILURE;
    }
    tokio::select! {
        () = accept_loop(listener) => {}
        _ = tokio::signal::ctrl_c() => {}
        () = terminated() => {}
    }
    std::process::ExitCode::SUCCESS
}

/// Prints the address line and flushes it, so a parent reading a pipe sees
/// it at once.
fn announce(addr: SocketAddr) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {addr}")?;
    out.flush()
}

/// Resolves on SIGTERM (never elsewhere than on Unix).
async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(e) => {
                eprintln!("weft-bare-hyper: no SIGTERM handler: {e}");
                std::future::pending::<()>().await;
            }
        }
    }
    #[cfg(not(unix))]
    std::future::pending::<()>().await;
}

/// Accepts connections forever, one task each.
async fn accept_loop(listener: TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly.
                eprintln!("weft-bare-hyper: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let served = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(answer))
                .await;
            if let Err(e) = served
                && !e.is_incomplete_message()
            {
                eprintln!("weft-bare-hyper: connection error: {e}");
            }
        });
    }
}

/// Reads the whole body, then answers 200 `{"success":true}` (400 if the
/// body cannot be read).
async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let status = match req.into_body().collect().await {
        Ok(_) => StatusCode::OK,
        Err(_) => StatusCode::BAD_REQUEST,
    };
    let mut resp = Response::new(Full::new(Bytes::from_static(OK_BODY)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(resp)
}
