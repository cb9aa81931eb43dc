//! `weft-durable-limit`: the durable-ingest ceiling of `cargo xtask bench
//! collector`.
//!
//! The least a server can do and still answer 200 only for events that are
//! on disk: a hyper 1.x HTTP/1.1 server (the same shape as
//! `weft-bare-hyper`) that, for each POST, reads the body, parses the batch
//! envelope once into its raw messages (reading only each one's `type` and
//! `messageId`, as borrowed strings), frames every message as
//! `[len: u32][crc32c: u32][payload]` and hands the frames to one writer
//! thread. The writer takes the first queued request, drains every other
//! request queued at that moment, appends them all to one file with one
//! `write_all`, makes them durable with one `fdatasync` and only then
//! answers each of them 200 `{"success":true,"accepted":N}`.
//!
//! Nothing else: no authentication, no validation beyond "a JSON object
//! with a `batch` array of objects with a string `type`", no dedup, no
//! index. With a fixed number of connections on a given disk, no durable
//! collector can go faster, so the collector is measured against it.
//!
//! `GET /stats` answers its counters as one JSON object (requests, events,
//! syncs, bytes written, time spent committing groups); they are also
//! printed on stderr at exit.
//!
//! Usage: `weft-durable-limit --data-dir DIR [--listen ADDR]` (default
//! `127.0.0.1:0`). The first stdout line is `listening on ADDR`; SIGTERM or
//! Ctrl-C stops it.

use std::borrow::Cow;
use std::convert::Infallible;
use std::fs::File;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

/// Appends each batch's messages to one file, answering after a group
/// fdatasync.
#[derive(Debug, Parser)]
#[command(name = "weft-durable-limit")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Directory of the log file (created if missing).
    #[arg(long)]
    data_dir: PathBuf,
}

/// The file the messages go to, inside the data directory.
const LOG_FILE: &str = "durable-limit.log";
/// Requests waiting for the writer at most; senders wait beyond it.
const QUEUE: usize = 4096;
/// Bytes of framing per message: length and CRC32C.
const FRAMING_BYTES: usize = 8;

/// What is counted since the start.
#[derive(Default)]
struct Stats {
    /// Requests answered 200.
    requests: AtomicU64,
    /// Messages written.
    events: AtomicU64,
    /// Group commits (one write and one fdatasync each).
    syncs: AtomicU64,
    /// Bytes appended to the file, framing included.
    bytes: AtomicU64,
    /// Time from taking a group to having it durable (copy, write,
    /// fdatasync), summed, in microseconds.
    commit_micros: AtomicU64,
    /// Requests answered 400 (not a batch).
    bad_requests: AtomicU64,
}

impl Stats {
    fn json(&self) -> String {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            r#"{{"requests":{},"events":{},"syncs":{},"bytes":{},"commit_micros":{},"bad_requests":{}}}"#,
            load(&self.requests),
            load(&self.events),
            load(&self.syncs),
            load(&self.bytes),
            load(&self.commit_micros),
            load(&self.bad_requests),
        )
    }
}

/// One request's framed messages, and where to send its answer once they
/// are durable.
struct Append {
    frames: Vec<u8>,
    events: u64,
    reply: oneshot::Sender<Result<(), String>>,
}

/// What every connection shares.
struct Shared {
    queue: mpsc::Sender<Append>,
    stats: Arc<Stats>,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-durable-limit: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    std::fs::create_dir_all(&args.data_dir)
        .map_err(|e| format!("cannot create {}: {e}", args.data_dir.display()))?;
    let path = args.data_dir.join(LOG_FILE);
    let file = open_log(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let stats = Arc::new(Stats::default());
    let (queue, rx) = mpsc::channel(QUEUE);
    let writer = {
        let stats = stats.clone();
        std::thread::Builder::new()
            .name("durable-limit-writer".into())
            .spawn(move || write_groups(file, rx, &stats))
            .map_err(|e| format!("cannot start the writer thread: {e}"))?
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let shared = Arc::new(Shared {
        queue,
        stats: stats.clone(),
    });
    runtime.block_on(serve(args.listen, shared))?;
    // The connection tasks hold the last senders; dropping the runtime
    // drops them, and the writer finishes what is queued.
    drop(runtime);
    let written = writer
        .join()
        .map_err(|_| "the writer thread panicked".to_owned())?;
    eprintln!("weft-durable-limit: stats {}", stats.json());
    written
}

/// Opens (creating, appending) the log file and makes its directory entry
/// durable.
fn open_log(path: &Path) -> std::io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(file)
}

async fn serve(listen: SocketAddr, shared: Arc<Shared>) -> Result<(), String> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr().unwrap_or(listen);
    announce(addr).map_err(|e| format!("cannot write to stdout: {e}"))?;
    tokio::select! {
        () = accept_loop(listener, shared) => {}
        _ = tokio::signal::ctrl_c() => {}
        () = terminated() => {}
    }
    Ok(())
}

/// Prints the address line and flushes it, so a parent reading a pipe sees
/// it at once.
fn announce(addr: SocketAddr) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {addr}")?;
    out.flush()
}

/// Resolves on SIGTERM.
async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            term.recv().await;
        }
        Err(e) => {
            eprintln!("weft-durable-limit: no SIGTERM handler: {e}");
            std::future::pending::<()>().await;
        }
    }
}

/// Accepts connections forever, one task each.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                eprintln!("weft-durable-limit: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(shared.clone(), req));
            let served = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served
                && !e.is_incomplete_message()
            {
                eprintln!("weft-durable-limit: connection error: {e}");
            }
        });
    }
}

type Resp = Response<Full<Bytes>>;

async fn answer(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Resp, Infallible> {
    if req.method() == Method::GET && req.uri().path() == "/stats" {
        return Ok(json(StatusCode::OK, shared.stats.json()));
    }
    if req.method() != Method::POST {
        return Ok(json(
            StatusCode::METHOD_NOT_ALLOWED,
            r#"{"success":false}"#.into(),
        ));
    }
    let body = match req.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Ok(bad_request(&shared)),
    };
    let Some((frames, events)) = frame_batch(&body) else {
        return Ok(bad_request(&shared));
    };
    let (reply, done) = oneshot::channel();
    let queued = shared
        .queue
        .send(Append {
            frames,
            events,
            reply,
        })
        .await;
    let durable = match queued {
        Ok(()) => done.await.unwrap_or_else(|_| Err("writer gone".into())),
        Err(_) => Err("writer gone".into()),
    };
    Ok(match durable {
        Ok(()) => json(
            StatusCode::OK,
            format!(r#"{{"success":true,"accepted":{events}}}"#),
        ),
        Err(e) => {
            eprintln!("weft-durable-limit: {e}");
            json(
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"success":false}"#.into(),
            )
        }
    })
}

fn bad_request(shared: &Shared) -> Resp {
    shared.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
    json(StatusCode::BAD_REQUEST, r#"{"success":false}"#.into())
}

fn json(status: StatusCode, body: String) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// The envelope, messages left raw.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    batch: Vec<&'a RawValue>,
}

/// The two fields of a message the limit reads.
#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    #[serde(borrow, rename = "messageId", default)]
    message_id: Option<Cow<'a, str>>,
}

/// Frames every message of a batch body as `[len][crc32c][payload]`;
/// `None` if the body is not a batch of messages with a `type`.
fn frame_batch(body: &[u8]) -> Option<(Vec<u8>, u64)> {
    let envelope: Envelope<'_> = serde_json::from_slice(body).ok()?;
    let payload_bytes: usize = envelope.batch.iter().map(|m| m.get().len()).sum();
    let mut frames = Vec::with_capacity(payload_bytes + FRAMING_BYTES * envelope.batch.len());
    for message in &envelope.batch {
        let fields: Fields<'_> = serde_json::from_str(message.get()).ok()?;
        if fields.kind.is_empty() || fields.message_id.as_deref() == Some("") {
            return None;
        }
        let payload = message.get().as_bytes();
        let len = u32::try_from(payload.len()).ok()?;
        frames.extend_from_slice(&len.to_le_bytes());
        frames.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
        frames.extend_from_slice(payload);
    }
    Some((frames, envelope.batch.len() as u64))
}

/// The writer thread: one write and one fdatasync per group of every
/// request queued at that moment, then the group's answers.
fn write_groups(
    mut file: File,
    mut rx: mpsc::Receiver<Append>,
    stats: &Stats,
) -> Result<(), String> {
    let mut group: Vec<Append> = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        group.push(first);
        while let Ok(more) = rx.try_recv() {
            group.push(more);
        }
        let started = Instant::now();
        buf.clear();
        for append in &group {
            buf.extend_from_slice(&append.frames);
        }
        let written = file.write_all(&buf).and_then(|()| file.sync_data());
        match written {
            Ok(()) => {
                let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                stats.commit_micros.fetch_add(micros, Ordering::Relaxed);
                stats.syncs.fetch_add(1, Ordering::Relaxed);
                stats.bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
                stats
                    .requests
                    .fetch_add(group.len() as u64, Ordering::Relaxed);
                let events: u64 = group.iter().map(|a| a.events).sum();
                stats.events.fetch_add(events, Ordering::Relaxed);
                for append in group.drain(..) {
                    let _ = append.reply.send(Ok(()));
                }
            }
            Err(e) => {
                // What reached the disk is unknown: refuse everything from
                // here on, as a durable server must.
                let message = format!("write or fdatasync failed: {e}");
                for append in group.drain(..) {
                    let _ = append.reply.send(Err(message.clone()));
                }
                return Err(message);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_each_message_with_its_length_and_crc() {
        let body = br#"{"batch":[{"type":"track","messageId":"m\"1","x":[1,{"y":2}]},{"type":"page"}],"sentAt":"t"}"#;
        let (frames, events) = frame_batch(body).unwrap();
        assert_eq!(events, 2);
        let first = br#"{"type":"track","messageId":"m\"1","x":[1,{"y":2}]}"#;
        let second = br#"{"type":"page"}"#;
        let mut expected = Vec::new();
        for payload in [&first[..], &second[..]] {
            expected.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            expected.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
            expected.extend_from_slice(payload);
        }
        assert_eq!(frames, expected);
    }

    #[test]
    fn refuses_what_is_not_a_batch_of_typed_messages() {
        for body in [
            &b"[]"[..],
            b"{}",
            b"{\"batch\":{}}",
            b"{\"batch\":[1]}",
            b"{\"batch\":[{\"messageId\":\"m\"}]}",
            b"{\"batch\":[{\"type\":7}]}",
            b"{\"batch\":[{\"type\":\"track\"",
        ] {
            assert!(
                frame_batch(body).is_none(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        assert_eq!(frame_batch(b"{\"batch\":[]}").unwrap().1, 0);
    }
}
