//! `weft-loadgen`: the load generator of `cargo xtask bench collector`.
//!
//! It exists to measure ingest throughput the way real senders load a
//! collector: N keep-alive HTTP/1.1 connections on loopback, each sending
//! `POST /v1/batch` requests back to back, every request a batch of `track`
//! messages (about 10 KB for 20) with unique `messageId`s, so the
//! collector's dedup never skips the work. It runs for a bounded time, drops
//! a warm-up period from the figures and prints one JSON line on stdout:
//! events/s, requests/s, latency percentiles, statuses and its own CPU time
//! (it shares the machine with the server it measures, so its cost matters).
//!
//! Bodies are built once per connection as a byte template; each request
//! only overwrites the fixed-width digits of its IDs and copies the bytes,
//! so the generator spends its CPU on HTTP, not on JSON.
//!
//! Usage: `weft-loadgen ADDR [--connections N] [--seconds S] [--warmup S]
//! [--write-key KEY] [--batch-size N] [--threads N]`.
//!
//! `weft-loadgen identity ADDR [--people N] [--seed S] ...` is the load of
//! `cargo xtask bench identity` instead: a generated history of people,
//! devices, logins and aliases, delivered out of order, then timed profile
//! lookups and a check of a sample against the history's truth (see
//! [`identity`]; `weft-loadgen identity --help` lists its flags).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Sends batches of track events to a collector and reports throughput.
#[derive(Debug, Parser)]
#[command(name = "weft-loadgen")]
struct Args {
    /// Address of the server (loopback only), e.g. 127.0.0.1:8080.
    target: SocketAddr,
    /// Keep-alive connections, each with one request in flight.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    connections: u32,
    /// Measured seconds, after the warm-up (at most 120).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=120))]
    seconds: u64,
    /// Warm-up seconds, excluded from the figures (at most 60).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=60))]
    warmup: u64,
    /// Write key, sent as the HTTP Basic username.
    #[arg(long, default_value = "wk_bench")]
    write_key: String,
    /// Messages per request.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100))]
    batch_size: u32,
    /// Worker threads of the generator's runtime.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    threads: u32,
}

/// Requests one connection sends at most, whatever the time bound.
const MAX_REQUESTS_PER_CONNECTION: u64 = 50_000_000;
/// Consecutive failed connects after which a connection task gives up.
const MAX_CONNECT_FAILURES: u32 = 50;
/// How long an in-flight request may outlive the end of the run.
const END_GRACE: Duration = Duration::from_secs(5);
/// Distinct anonymous IDs the messages are spread over.
const ANONYMOUS_ID_POOL: u64 = 5_000;
/// Width of the sequence number in a messageId.
const SEQ_DIGITS: usize = 12;
/// Width of the number in an anonymousId.
const ANON_DIGITS: usize = 6;

fn main() -> std::process::ExitCode {
    if std::env::args_os().nth(1).is_some_and(|a| a == "identity") {
        return identity::main(std::env::args_os().skip(2));
    }
    let args = Args::parse();
    if !args.target.ip().is_loopback() {
        eprintln!(
            "weft-loadgen: refusing a non-loopback target {}",
            args.target
        );
        return std::process::ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads as usize)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft-loadgen: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let summary = runtime.block_on(run(&args));
    println!("{summary}");
    std::process::ExitCode::SUCCESS
}

/// What every connection task shares.
struct Plan {
    target: SocketAddr,
    host: HeaderValue,
    authorization: HeaderValue,
    batch_size: u32,
    run_id: String,
    sent_at: String,
    /// Requests started before this are warm-up.
    measure_from: Instant,
    /// No request starts after this; answers after it are not counted.
    end: Instant,
}

/// Runs every connection to the end and returns the JSON summary line.
async fn run(args: &Args) -> String {
    let started = Instant::now();
    let measure_from = started + Duration::from_secs(args.warmup);
    let measured = Duration::from_secs(args.seconds);
    let plan = Arc::new(Plan {
        target: args.target,
        host: header_value(&args.target.to_string()),
        authorization: header_value(&format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{}:", args.write_key))
        )),
        batch_size: args.batch_size,
        run_id: run_id(),
        sent_at: now_rfc3339(),
        measure_from,
        end: measure_from + measured,
    });
    let tasks: Vec<_> = (0..args.connections)
        .map(|index| tokio::spawn(drive_connection(plan.clone(), index)))
        .collect();
    let mut total = ConnStats::default();
    for task in tasks {
        match task.await {
            Ok(stats) => total.merge(stats),
            Err(e) => *total.statuses.entry(format!("task: {e}")).or_default() += 1,
        }
    }
    let body_bytes = BodyTemplate::new(&plan, 0).bytes.len();
    summary_json(args, &total, measured, body_bytes)
}

/// A header value from text the generator made itself.
fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|e| panic!("bad header value {text:?}: {e}"))
}

/// Eight hex digits that make this run's messageIds differ from any other's.
fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{:08x}",
        (nanos as u64 ^ u64::from(std::process::id())) as u32
    )
}

/// The current time as RFC 3339 with milliseconds, UTC.
fn now_rfc3339() -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::now_utc()
        .format(&format)
        .unwrap_or_else(|e| panic!("cannot format the current time: {e}"))
}

// ---------------------------------------------------------------------------
// One connection

/// Counts and latencies of one connection (or, merged, of all).
#[derive(Default)]
struct ConnStats {
    latency: Histogram,
    /// Answers and failures in the measured window, by status code or by
    /// failure kind (`io`, `timeout`, `connect`).
    statuses: BTreeMap<String, u64>,
    /// Requests answered in the measured window (any status).
    answered: u64,
    /// Of those, answered 200.
    ok: u64,
}

impl ConnStats {
    fn merge(&mut self, other: ConnStats) {
        self.latency.merge(&other.latency);
        for (k, v) in other.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        self.answered += other.answered;
        self.ok += other.ok;
    }

    fn count(&mut self, what: impl Into<String>) {
        *self.statuses.entry(what.into()).or_default() += 1;
    }
}

/// Sends requests back to back on one keep-alive connection (reconnecting
/// after a failure) until the plan's end.
async fn drive_connection(plan: Arc<Plan>, index: u32) -> ConnStats {
    let mut stats = ConnStats::default();
    let mut template = BodyTemplate::new(&plan, index);
    let mut sender: Option<SendRequest<Full<Bytes>>> = None;
    let mut connect_failures = 0u32;
    let mut seq = 0u64;
    while Instant::now() < plan.end && seq < MAX_REQUESTS_PER_CONNECTION {
        let mut current = match sender.take() {
            Some(s) => s,
            None => match connect(plan.target).await {
                Ok(s) => {
                    connect_failures = 0;
                    s
                }
                Err(e) => {
                    connect_failures += 1;
                    if Instant::now() >= plan.measure_from {
                        stats.count("connect");
                    }
                    if connect_failures >= MAX_CONNECT_FAILURES {
                        eprintln!("weft-loadgen: connection {index} gives up: {e}");
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let request = build_request(&plan, template.fill(seq));
        seq += 1;
        let started = Instant::now();
        let outcome = tokio::time::timeout_at(
            (plan.end + END_GRACE).into(),
            exchange(&mut current, request),
        )
        .await;
        let done = Instant::now();
        let in_window = started >= plan.measure_from;
        match outcome {
            Ok(Ok((status, body))) => {
                check_first_answer(status, &body, plan.batch_size);
                if in_window && done <= plan.end {
                    stats.latency.record(done - started);
                    stats.answered += 1;
                    if status == StatusCode::OK {
                        stats.ok += 1;
                    } else {
                        stats.count(status.as_str());
                    }
                }
                sender = Some(current);
            }
            Ok(Err(e)) => {
                if in_window && done <= plan.end {
                    stats.count("io");
                    eprintln!("weft-loadgen: connection {index}: {e}");
                }
            }
            Err(_elapsed) => {
                if in_window {
                    stats.count("timeout");
                }
            }
        }
    }
    stats
}

/// Opens a keep-alive HTTP/1.1 connection; its driver runs as its own task.
async fn connect(target: SocketAddr) -> Result<SendRequest<Full<Bytes>>, String> {
    let stream = TcpStream::connect(target)
        .await
        .map_err(|e| format!("connect to {target}: {e}"))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("set TCP_NODELAY: {e}"))?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP/1.1 handshake with {target}: {e}"))?;
    tokio::spawn(async move {
        // Ends when the sender is dropped or the server closes; a failure
        // shows up on the sender's next request, where it is counted.
        let _ = connection.await;
    });
    Ok(sender)
}

fn build_request(plan: &Plan, body: Bytes) -> Request<Full<Bytes>> {
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = hyper::Uri::from_static("/v1/batch");
    let headers = request.headers_mut();
    headers.insert(HOST, plan.host.clone());
    headers.insert(AUTHORIZATION, plan.authorization.clone());
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    request
}

/// Sends one request and reads its whole answer.
async fn exchange(
    sender: &mut SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Result<(StatusCode, Bytes), String> {
    sender
        .ready()
        .await
        .map_err(|e| format!("connection not ready: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading the answer failed: {e}"))?
        .to_bytes();
    Ok((status, body))
}

/// Looks once at the first answer of the run: warns if it is not a 200 or
/// if a collector did not accept the whole batch (so a misconfigured run
/// does not pass for a fast one).
fn check_first_answer(status: StatusCode, body: &Bytes, batch_size: u32) {
    static CHECKED: AtomicBool = AtomicBool::new(false);
    if CHECKED.swap(true, Ordering::Relaxed) {
        return;
    }
    let text = String::from_utf8_lossy(body);
    // `"accepted":20` followed by `,` (the collector) or `}` (the durable
    // limit, `weft-durable-limit`).
    let accepted_all = format!("\"accepted\":{batch_size}");
    let is_collector = text.contains("\"accepted\":");
    let all_accepted = text
        .match_indices(&accepted_all)
        .any(|(at, m)| matches!(text.as_bytes().get(at + m.len()), Some(b',' | b'}')));
    if status != StatusCode::OK || (is_collector && !all_accepted) {
        eprintln!("weft-loadgen: warning: first answer was {status} {text}");
    }
}

// ---------------------------------------------------------------------------
// Request bodies

/// One connection's batch body with the positions of its variable digits.
struct BodyTemplate {
    bytes: Vec<u8>,
    /// Where each message's sequence digits start (`SEQ_DIGITS` wide).
    seq_slots: Vec<usize>,
    /// Where each message's anonymousId digits start (`ANON_DIGITS` wide).
    anon_slots: Vec<usize>,
    /// Spreads connections over the anonymousId pool.
    anon_offset: u64,
}

impl BodyTemplate {
    fn new(plan: &Plan, connection: u32) -> Self {
        let mut t = BodyTemplate {
            bytes: Vec::with_capacity(16 * 1024),
            seq_slots: Vec::new(),
            anon_slots: Vec::new(),
            anon_offset: u64::from(connection) * 7_919,
        };
        t.push(r#"{"batch":["#);
        for i in 0..plan.batch_size {
            if i > 0 {
                t.push(",");
            }
            t.push_message(plan, connection, i);
        }
        t.push(&format!(r#"],"sentAt":"{}"}}"#, plan.sent_at));
        t
    }

    fn push(&mut self, text: &str) {
        self.bytes.extend_from_slice(text.as_bytes());
    }

    /// Appends a digit field of `width` zeros and returns where it starts.
    fn push_slot(&mut self, width: usize) -> usize {
        let at = self.bytes.len();
        self.bytes.resize(at + width, b'0');
        at
    }

    /// One `track` message of about 500 bytes: IDs, properties and context
    /// like those a shop page sends.
    fn push_message(&mut self, plan: &Plan, connection: u32, i: u32) {
        self.push(&format!(
            r#"{{"type":"track","messageId":"lg-{}-{connection:04}-"#,
            plan.run_id
        ));
        let seq = self.push_slot(SEQ_DIGITS);
        self.seq_slots.push(seq);
        self.push(&format!(r#"-{i:03}","anonymousId":"anon-"#));
        let anon = self.push_slot(ANON_DIGITS);
        self.anon_slots.push(anon);
        let sku = 10_000 + connection * 100 + i;
        self.push(&format!(
            concat!(
                r#"","event":"Product Viewed","timestamp":"{ts}","#,
                r#""properties":{{"product_id":"sku-{sku}","name":"Merino Wool Scarf","#,
                r#""category":"Accessories","price":49.95,"#,
                r#""currency":"EUR","quantity":1,"position":{i}}},"#,
                r#""context":{{"library":{{"name":"weft-loadgen","version":"0.1.0"}},"#,
                r#""page":{{"path":"/products/sku-{sku}","#,
                r#""title":"Merino Wool Scarf","url":"https://shop.example.com/products/sku-{sku}"}},"#,
                r#""locale":"en-GB","timezone":"Europe/Berlin"}}}}"#
            ),
            ts = plan.sent_at,
            sku = sku,
            i = i,
        ));
    }

    /// The body of request number `seq`: unique messageIds, anonymousIds
    /// drawn from the pool.
    fn fill(&mut self, seq: u64) -> Bytes {
        let batch = self.seq_slots.len() as u64;
        for (i, (&seq_at, &anon_at)) in self.seq_slots.iter().zip(&self.anon_slots).enumerate() {
            write_digits(&mut self.bytes[seq_at..seq_at + SEQ_DIGITS], seq);
            let anon = (self.anon_offset + seq * batch + i as u64) % ANONYMOUS_ID_POOL;
            write_digits(&mut self.bytes[anon_at..anon_at + ANON_DIGITS], anon);
        }
        Bytes::copy_from_slice(&self.bytes)
    }
}

/// Writes `value` as zero-padded decimal filling `out` (keeping the low
/// digits if it is too wide).
fn write_digits(out: &mut [u8], mut value: u64) {
    for digit in out.iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

// ---------------------------------------------------------------------------
// Latency histogram

/// Latencies in microseconds, in log buckets with 64 steps per power of two
/// (under 1.6 % error), exact below 128 µs. Fixed memory whatever the run.
#[derive(Clone)]
struct Histogram {
    counts: Vec<u64>,
    total: u64,
    sum_micros: u128,
    max_micros: u64,
}

const EXACT_BELOW: u64 = 128;
const STEPS: u64 = 64;
/// Buckets for every u64 value: 128 exact + 64 per power of two from 2^7.
const BUCKETS: usize = (EXACT_BELOW + STEPS * (64 - 7)) as usize;

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            sum_micros: 0,
            max_micros: 0,
        }
    }
}

impl Histogram {
    fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.counts[bucket_of(micros)] += 1;
        self.total += 1;
        self.sum_micros += u128::from(micros);
        self.max_micros = self.max_micros.max(micros);
    }

    fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.sum_micros += other.sum_micros;
        self.max_micros = self.max_micros.max(other.max_micros);
    }

    /// The latency at quantile `q` (0..=1) in microseconds: the midpoint of
    /// the bucket holding that rank, at most the maximum seen.
    fn quantile_micros(&self, q: f64) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (index, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                let (low, width) = bucket_range(index);
                return (low as f64 + (width as f64 - 1.0) / 2.0).min(self.max_micros as f64);
            }
        }
        self.max_micros as f64
    }

    fn mean_micros(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum_micros as f64 / self.total as f64
        }
    }
}

fn bucket_of(micros: u64) -> usize {
    if micros < EXACT_BELOW {
        return micros as usize;
    }
    let exponent = 63 - u64::from(micros.leading_zeros()); // >= 7
    let shift = exponent - 6;
    let step = (micros >> shift) - STEPS; // 0..64
    (EXACT_BELOW + (shift - 1) * STEPS + step) as usize
}

/// The lowest value of bucket `index` and how many values it holds.
fn bucket_range(index: usize) -> (u64, u64) {
    let index = index as u64;
    if index < EXACT_BELOW {
        return (index, 1);
    }
    let shift = (index - EXACT_BELOW) / STEPS + 1;
    let step = (index - EXACT_BELOW) % STEPS;
    ((STEPS + step) << shift, 1 << shift)
}

// ---------------------------------------------------------------------------
// Summary

/// The one-line JSON summary.
fn summary_json(args: &Args, total: &ConnStats, measured: Duration, body_bytes: usize) -> String {
    let secs = measured.as_secs_f64();
    let events = total.ok * u64::from(args.batch_size);
    let non_200: u64 = total.statuses.values().sum();
    let round = |x: f64| (x * 1000.0).round() / 1000.0;
    let ms = |micros: f64| round(micros / 1000.0);
    serde_json::json!({
        "target": args.target.to_string(),
        "connections": args.connections,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "batch_size": args.batch_size,
        "body_bytes": body_bytes,
        "requests": total.answered,
        "ok_requests": total.ok,
        "events": events,
        "events_per_s": round(events as f64 / secs),
        "requests_per_s": round(total.answered as f64 / secs),
        "p50_ms": ms(total.latency.quantile_micros(0.50)),
        "p99_ms": ms(total.latency.quantile_micros(0.99)),
        "max_ms": ms(total.latency.max_micros as f64),
        "mean_ms": ms(total.latency.mean_micros()),
        "non_200": non_200,
        "errors": total.statuses,
        "cpu_s": own_cpu_seconds().map(round),
    })
    .to_string()
}

/// CPU time (user + system) this process has used, from `/proc/self/stat`
/// (Linux; clock ticks of 1/100 s, the fixed USER_HZ of /proc).
fn own_cpu_seconds() -> Option<f64> {
    cpu_seconds_from("/proc/self/stat")
}

/// CPU time (user + system) process `pid` has used, like
/// [`own_cpu_seconds`].
fn proc_cpu_seconds(pid: u32) -> Option<f64> {
    cpu_seconds_from(&format!("/proc/{pid}/stat"))
}

fn cpu_seconds_from(stat_path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(stat_path).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); the first after the name is field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

// ---------------------------------------------------------------------------
// Identity mode (`cargo xtask bench identity`)

/// `weft-loadgen identity ADDR [--people N] ...`: ingests a generated
/// identity history, then looks profiles up.
///
/// The history is deterministic for a seed (splitmix64, no extra crates):
/// people with 1-4 own devices each, each device browsed anonymously
/// (`page`/`track`), then an `identify`, then `track`s as the user; 5 % of
/// all devices are shared, each used in turn by 2-3 people who browse and
/// then log in; a fifth of the people add a second user ID by `alias` and
/// use it on a device; a few send junk IDs (`"null"`, `"undefined"`). The
/// messages of each device session are cut into runs of 1-4 and the runs
/// shuffled across the whole stream, so a login often arrives before the
/// browsing it explains; the stream goes out in fixed-size batches over
/// keep-alive connections. Every message's owner is known, so the expected
/// profile of every person is known too.
///
/// Phases: ingest (all of it, retrying 429/503, every non-200 counted);
/// timed `GET /v1/profiles/{id}` of random user and anonymous IDs (bounded
/// in count and time); then a spot check of a sample of people against the
/// truth (user IDs, devices and event count of their profile, and that a
/// device of theirs answers a profile with the right user). One JSON line
/// on stdout.
mod identity {
    use std::collections::BTreeMap;
    use std::ffi::OsString;
    use std::fmt::Write as _;
    use std::net::SocketAddr;
    use std::process::ExitCode;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use base64::Engine as _;
    use bytes::Bytes;
    use clap::Parser;
    use http_body_util::Full;
    use hyper::client::conn::http1::SendRequest;
    use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
    use hyper::{Method, Request, StatusCode};

    use super::{
        Histogram, connect, exchange, header_value, now_rfc3339, own_cpu_seconds, proc_cpu_seconds,
    };

    /// Ingests a generated identity history, then measures profile lookups.
    #[derive(Debug, Parser)]
    #[command(name = "weft-loadgen identity")]
    pub struct Args {
        /// Address of the collector (loopback only), e.g. 127.0.0.1:8080.
        target: SocketAddr,
        /// People in the history (about 10 messages each).
        #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..=2_000_000))]
        people: u32,
        /// Seed of the history (same seed, same messages, same order).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Keep-alive connections of the ingest phase.
        #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
        connections: u32,
        /// Messages per request.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100))]
        batch_size: u32,
        /// Write key, sent as the HTTP Basic username.
        #[arg(long, default_value = "wk_bench")]
        write_key: String,
        /// Admin token for `GET /v1/profiles/{id}`.
        #[arg(long, default_value = "bench")]
        admin_token: String,
        /// Profile lookups of the timed query phase, at most.
        #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
        lookups: u64,
        /// Seconds the query phase may take, at most.
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=600))]
        query_seconds: u64,
        /// Keep-alive connections of the query phase and the spot check.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
        query_connections: u32,
        /// People whose profiles are checked against the truth (two lookups
        /// each, untimed).
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
        checks: u32,
        /// Seconds the ingest phase may take before the rest is given up.
        #[arg(long, default_value_t = 1800, value_parser = clap::value_parser!(u64).range(1..=7200))]
        ingest_timeout: u64,
        /// The collector's PID, to report its CPU time per phase from /proc.
        #[arg(long)]
        server_pid: Option<u32>,
        /// Worker threads of the generator's runtime.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
        threads: u32,
    }

    /// `weft-loadgen identity ...` (`rest`: the arguments after `identity`).
    pub fn main(rest: impl Iterator<Item = OsString>) -> ExitCode {
        let args =
            Args::parse_from(std::iter::once(OsString::from("weft-loadgen identity")).chain(rest));
        if !args.target.ip().is_loopback() {
            eprintln!(
                "weft-loadgen: refusing a non-loopback target {}",
                args.target
            );
            return ExitCode::from(2);
        }
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads as usize)
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("weft-loadgen: cannot start the runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
        match runtime.block_on(run(args)) {
            Ok(summary) => {
                println!("{summary}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("weft-loadgen identity: {e}");
                ExitCode::FAILURE
            }
        }
    }

    // -----------------------------------------------------------------------
    // The generator

    /// splitmix64: small, fast, and good enough for a benchmark's choices.
    struct Rng(u64);

    impl Rng {
        /// A generator for one purpose (`stream`) of the history `seed`.
        fn new(seed: u64, stream: u64) -> Self {
            Rng(mix(seed ^ mix(stream.wrapping_add(0x5EED))))
        }

        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            mix(self.0)
        }

        /// Uniform in `0..n` (`n > 0`).
        fn below(&mut self, n: u64) -> u64 {
            ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
        }

        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
    }

    /// The splitmix64 finaliser: a bijection on u64.
    fn mix(mut z: u64) -> u64 {
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Percent of all devices that are shared.
    const SHARED_PERCENT: u64 = 5;
    /// Percent of people who add a second user ID (an email) by alias.
    const ALIAS_PERCENT: u64 = 20;
    /// Percent of people with a `userId: "null"` message before a login,
    /// and (independently) with an `anonymousId: "undefined"` message.
    const JUNK_PERCENT: u64 = 3;
    const JUNK: [&str; 2] = ["null", "undefined"];
    const DAY: u64 = 86_400;
    /// The history covers these days from [`HISTORY_START`].
    const HISTORY_DAYS: u64 = 90;
    /// 2026-01-01T00:00:00Z: a fixed start keeps the history deterministic.
    const HISTORY_START: i64 = 1_767_225_600;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Kind {
        Page,
        Track,
        Identify,
        Alias,
    }

    /// An identifier field of a message.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Id {
        None,
        Device(u32),
        /// The person's login user ID.
        User(u32),
        /// The person's second user ID, joined by alias.
        Email(u32),
        /// An index into [`JUNK`].
        Junk(u8),
    }

    /// One message, compact (the JSON is written when its batch is sent).
    #[derive(Clone, Copy, Debug)]
    struct Msg {
        kind: Kind,
        anonymous: Id,
        user: Id,
        /// Seconds after [`HISTORY_START`].
        at: u32,
    }

    /// What the history says about one person.
    #[derive(Clone, Debug, Default)]
    struct Person {
        /// Own devices first, then the shared devices they used.
        devices: Vec<u32>,
        aliased: bool,
        /// Messages that belong to the person's profile.
        events: u32,
    }

    /// A generated history: the messages, their delivery order and the
    /// truth.
    pub struct History {
        seed: u64,
        batch_size: usize,
        /// In generation order; a message's index is its messageId.
        messages: Vec<Msg>,
        /// Indices into `messages`, in delivery order.
        order: Vec<u32>,
        people: Vec<Person>,
        /// Per device, the person whose user answers a lookup of it (the
        /// most recent login on it).
        device_owner: Vec<u32>,
        own_devices: u32,
        shared_devices: u32,
        shared_sessions: u32,
        /// Sessions per number of messages, to describe the history.
        session_messages: u64,
        sessions: u64,
    }

    impl History {
        /// The history of `people` people for `seed`.
        pub fn generate(people: u32, seed: u64, batch_size: usize) -> History {
            let mut rng = Rng::new(seed, 1);
            let mut h = History {
                seed,
                batch_size: batch_size.max(1),
                messages: Vec::with_capacity(people as usize * 11),
                order: Vec::new(),
                people: vec![Person::default(); people as usize],
                device_owner: Vec::new(),
                own_devices: 0,
                shared_devices: 0,
                shared_sessions: 0,
                session_messages: 0,
                sessions: 0,
            };
            // Runs of consecutive messages of one session: (first, count).
            let mut runs: Vec<(u32, u32)> = Vec::with_capacity(people as usize * 6);
            let latest_start = (HISTORY_DAYS - 20) * DAY;
            for p in 0..people {
                let start = rng.below(latest_start);
                let own = 1 + rng.below(4) as u32;
                let junk_user_on = rng.chance(JUNK_PERCENT).then(|| rng.below(u64::from(own)));
                let mut first_device = 0;
                for d in 0..own {
                    let device = h.device_owner.len() as u32;
                    h.device_owner.push(p);
                    h.people[p as usize].devices.push(device);
                    if d == 0 {
                        first_device = device;
                    }
                    let mut t = start + rng.below(5 * DAY);
                    let junk = junk_user_on == Some(u64::from(d));
                    h.session(
                        p,
                        device,
                        &mut t,
                        1 + rng.below(2),
                        rng.below(3),
                        junk,
                        &mut rng,
                    );
                    h.cut_into_runs(&mut runs, &mut rng);
                }
                h.own_devices += own;
                if rng.chance(ALIAS_PERCENT) {
                    // Later, the person signs up with an email, the site
                    // calls alias, and they use it on their first device.
                    h.people[p as usize].aliased = true;
                    let mut t = start + 12 * DAY + rng.below(2 * DAY);
                    let first = h.messages.len();
                    h.push(p, Kind::Alias, Id::None, Id::Email(p), &mut t, &mut rng);
                    h.push(
                        p,
                        Kind::Track,
                        Id::Device(first_device),
                        Id::Email(p),
                        &mut t,
                        &mut rng,
                    );
                    runs.push((first as u32, 1));
                    runs.push((first as u32 + 1, 1));
                }
                if rng.chance(JUNK_PERCENT) {
                    // A server-side call with a broken anonymousId.
                    let mut t = start + 15 * DAY + rng.below(DAY);
                    let first = h.messages.len() as u32;
                    h.push(p, Kind::Track, Id::Junk(1), Id::User(p), &mut t, &mut rng);
                    runs.push((first, 1));
                }
            }
            // Shared devices: SHARED_PERCENT of all devices, each used in
            // turn by 2-3 different people, a day or more apart.
            let shared = if people >= 2 {
                (u64::from(h.own_devices) * SHARED_PERCENT + (100 - SHARED_PERCENT) / 2)
                    / (100 - SHARED_PERCENT)
            } else {
                0
            };
            for _ in 0..shared {
                let device = h.device_owner.len() as u32;
                let turns = (2 + rng.below(2)).min(u64::from(people)) as usize;
                let mut users: Vec<u32> = Vec::with_capacity(turns);
                while users.len() < turns {
                    let p = rng.below(u64::from(people)) as u32;
                    if !users.contains(&p) {
                        users.push(p);
                    }
                }
                h.device_owner.push(*users.last().unwrap_or(&0));
                let mut t = rng.below(latest_start);
                for &p in &users {
                    h.people[p as usize].devices.push(device);
                    h.session(
                        p,
                        device,
                        &mut t,
                        1 + rng.below(2),
                        rng.below(2),
                        false,
                        &mut rng,
                    );
                    h.cut_into_runs(&mut runs, &mut rng);
                    h.shared_sessions += 1;
                    t += DAY + rng.below(DAY);
                }
                h.shared_devices += 1;
            }
            // Out of order: the runs shuffled across the whole stream.
            for i in (1..runs.len()).rev() {
                runs.swap(i, rng.below(i as u64 + 1) as usize);
            }
            h.order = Vec::with_capacity(h.messages.len());
            for (first, count) in runs {
                h.order.extend(first..first + count);
            }
            debug_assert_eq!(h.order.len(), h.messages.len());
            h
        }

        /// One visit of person `p` on `device`: `before` anonymous messages
        /// (the first a page; `junk`: it carries `userId: "null"`), the
        /// login, then `after` tracks as the user.
        #[allow(clippy::too_many_arguments)]
        fn session(
            &mut self,
            p: u32,
            device: u32,
            t: &mut u64,
            before: u64,
            after: u64,
            junk: bool,
            rng: &mut Rng,
        ) {
            let first = self.messages.len();
            for i in 0..before {
                let kind = if i == 0 || rng.chance(50) {
                    Kind::Page
                } else {
                    Kind::Track
                };
                let user = if junk && i == 0 {
                    Id::Junk(0)
                } else {
                    Id::None
                };
                self.push(p, kind, Id::Device(device), user, t, rng);
            }
            self.push(p, Kind::Identify, Id::Device(device), Id::User(p), t, rng);
            for _ in 0..after {
                self.push(p, Kind::Track, Id::Device(device), Id::User(p), t, rng);
            }
            self.sessions += 1;
            self.session_messages += (self.messages.len() - first) as u64;
        }

        /// Cuts the messages of the session just written (those after the
        /// last run) into runs of 1-4.
        fn cut_into_runs(&self, runs: &mut Vec<(u32, u32)>, rng: &mut Rng) {
            let end = self.messages.len() as u32;
            let mut at = runs.last().map_or(0, |&(f, c)| f + c);
            while at < end {
                let count = (1 + rng.below(4) as u32).min(end - at);
                runs.push((at, count));
                at += count;
            }
        }

        /// Appends a message of person `p` at `*t` and moves `*t` on by
        /// 10-90 s.
        fn push(
            &mut self,
            p: u32,
            kind: Kind,
            anonymous: Id,
            user: Id,
            t: &mut u64,
            rng: &mut Rng,
        ) {
            self.messages.push(Msg {
                kind,
                anonymous,
                user,
                at: *t as u32,
            });
            self.people[p as usize].events += 1;
            *t += 10 + rng.below(81);
        }

        pub fn messages(&self) -> usize {
            self.messages.len()
        }

        pub fn batches(&self) -> usize {
            self.order.len().div_ceil(self.batch_size)
        }

        fn batch(&self, index: usize) -> &[u32] {
            let from = index * self.batch_size;
            &self.order[from..(from + self.batch_size).min(self.order.len())]
        }

        /// The request body of batch `index`.
        fn batch_body(&self, index: usize, sent_at: &str) -> Bytes {
            let messages = self.batch(index);
            let mut out = String::with_capacity(messages.len() * 560 + 64);
            out.push_str(r#"{"batch":["#);
            for (i, &m) in messages.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                self.write_message(&mut out, m);
            }
            let _ = write!(out, r#"],"sentAt":"{sent_at}"}}"#);
            Bytes::from(out)
        }

        /// The text of identifier `id`.
        fn write_id(&self, out: &mut String, id: Id) {
            let _ = match id {
                Id::None => Ok(()),
                Id::Device(d) => {
                    // Unique per device (the first 64 bits are a bijection
                    // of its index), shaped like the SDK's UUIDs.
                    let a = mix(u64::from(d) ^ mix(self.seed));
                    let b = mix(a);
                    write!(
                        out,
                        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
                        a >> 32,
                        (a >> 16) & 0xffff,
                        a & 0xffff,
                        b >> 48,
                        b & 0xffff_ffff_ffff
                    )
                }
                Id::User(p) => write!(out, "usr_{p:07}"),
                Id::Email(p) => write!(out, "person{p:07}@example.com"),
                Id::Junk(j) => write!(out, "{}", JUNK[usize::from(j)]),
            };
        }

        fn id_text(&self, id: Id) -> String {
            let mut s = String::new();
            self.write_id(&mut s, id);
            s
        }

        /// One message as a site would send it (about 450 bytes).
        fn write_message(&self, out: &mut String, index: u32) {
            const PRODUCTS: [&str; 4] = [
                "Merino Wool Scarf",
                "Linen Shirt",
                "Leather Belt",
                "Canvas Tote",
            ];
            const EVENTS: [&str; 4] = [
                "Product Viewed",
                "Product Added",
                "Checkout Started",
                "Order Completed",
            ];
            let m = self.messages[index as usize];
            let pick = mix(u64::from(index) ^ self.seed);
            let sku = 10_000 + pick % 5_000;
            let product = PRODUCTS[(pick >> 20) as usize % PRODUCTS.len()];
            let kind = match m.kind {
                Kind::Page => "page",
                Kind::Track => "track",
                Kind::Identify => "identify",
                Kind::Alias => "alias",
            };
            let _ = write!(
                out,
                r#"{{"type":"{kind}","messageId":"idb-{}-{index:08}""#,
                self.seed
            );
            if m.anonymous != Id::None {
                out.push_str(r#","anonymousId":""#);
                self.write_id(out, m.anonymous);
                out.push('"');
            }
            if m.kind == Kind::Alias {
                if let Id::Email(p) = m.user {
                    out.push_str(r#","previousId":""#);
                    self.write_id(out, Id::User(p));
                    out.push('"');
                }
            }
            if m.user != Id::None {
                out.push_str(r#","userId":""#);
                self.write_id(out, m.user);
                out.push('"');
            }
            let at = time::OffsetDateTime::from_unix_timestamp(HISTORY_START + i64::from(m.at))
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
            let _ = write!(
                out,
                r#","timestamp":"{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z""#,
                at.year(),
                u8::from(at.month()),
                at.day(),
                at.hour(),
                at.minute(),
                at.second(),
                (pick >> 40) % 1000
            );
            match m.kind {
                Kind::Page => {
                    let _ = write!(
                        out,
                        r#","name":"{product}","properties":{{"path":"/products/sku-{sku}","url":"https://shop.example.com/products/sku-{sku}","title":"{product}","referrer":"https://www.example.org/"}}"#
                    );
                }
                Kind::Track => {
                    let event = EVENTS[(pick >> 24) as usize % EVENTS.len()];
                    let _ = write!(
                        out,
                        r#","event":"{event}","properties":{{"product_id":"sku-{sku}","name":"{product}","price":{}.95,"currency":"EUR","quantity":1}}"#,
                        9 + (pick >> 32) % 90
                    );
                }
                Kind::Identify => {
                    if let Id::User(p) = m.user {
                        let plan = ["free", "plus", "pro"][(pick >> 28) as usize % 3];
                        let _ = write!(
                            out,
                            r#","traits":{{"email":"person{p:07}@example.com","plan":"{plan}","first_name":"Alex"}}"#
                        );
                    }
                }
                Kind::Alias => {}
            }
            let _ = write!(
                out,
                concat!(
                    r#","context":{{"library":{{"name":"weft-loadgen","version":"0.1.0"}},"#,
                    r#""page":{{"path":"/products/sku-{sku}","url":"https://shop.example.com/products/sku-{sku}"}},"#,
                    r#""userAgent":"Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0","#,
                    r#""locale":"en-GB","timezone":"Europe/Berlin"}}}}"#
                ),
                sku = sku
            );
        }

        /// Random IDs to look up: half user IDs (the email for some aliased
        /// people), half anonymous IDs of the person's devices.
        fn lookup_ids(&self, count: u64) -> Vec<String> {
            let mut rng = Rng::new(self.seed, 2);
            (0..count)
                .map(|_| {
                    let p = rng.below(self.people.len() as u64) as u32;
                    let person = &self.people[p as usize];
                    let id = if rng.chance(50) {
                        if person.aliased && rng.chance(50) {
                            Id::Email(p)
                        } else {
                            Id::User(p)
                        }
                    } else {
                        Id::Device(person.devices[rng.below(person.devices.len() as u64) as usize])
                    };
                    self.id_text(id)
                })
                .collect()
        }

        /// For `count` random people: their user ID with the exact profile
        /// expected, and one of their devices with the user its profile must
        /// hold.
        fn checks(&self, count: u32) -> Vec<Check> {
            let mut rng = Rng::new(self.seed, 3);
            let mut checks = Vec::with_capacity(count as usize * 2);
            for _ in 0..count {
                let p = rng.below(self.people.len() as u64) as u32;
                let person = &self.people[p as usize];
                let mut users = vec![self.id_text(Id::User(p))];
                if person.aliased {
                    users.push(self.id_text(Id::Email(p)));
                }
                users.sort();
                let mut devices: Vec<String> = person
                    .devices
                    .iter()
                    .map(|&d| self.id_text(Id::Device(d)))
                    .collect();
                devices.sort();
                devices.dedup();
                checks.push(Check {
                    id: self.id_text(Id::User(p)),
                    expect: Expect::Exact {
                        users,
                        devices,
                        events: u64::from(person.events),
                    },
                });
                let d = person.devices[rng.below(person.devices.len() as u64) as usize];
                checks.push(Check {
                    id: self.id_text(Id::Device(d)),
                    expect: Expect::HasUser(self.id_text(Id::User(self.device_owner[d as usize]))),
                });
            }
            checks
        }
    }

    /// A profile lookup and what its answer must say.
    struct Check {
        id: String,
        expect: Expect,
    }

    enum Expect {
        /// Exactly these user IDs and devices (sorted) and event count.
        Exact {
            users: Vec<String>,
            devices: Vec<String>,
            events: u64,
        },
        /// The profile holds this user ID.
        HasUser(String),
    }

    impl Check {
        /// `None` if the answer is right, else what is wrong.
        fn verify(&self, status: StatusCode, body: &[u8]) -> Option<String> {
            if status != StatusCode::OK {
                return Some(format!("{}: status {status}", self.id));
            }
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
                return Some(format!("{}: answer is not JSON", self.id));
            };
            let strings = |key: &str| -> Vec<String> {
                let mut list: Vec<String> = v[key]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                list.sort();
                list
            };
            match &self.expect {
                Expect::Exact {
                    users,
                    devices,
                    events,
                } => {
                    let got_users = strings("user_ids");
                    let got_devices = strings("anonymous_ids");
                    let got_events = v["event_count"].as_u64();
                    if &got_users != users {
                        Some(format!(
                            "{}: user_ids {got_users:?}, expected {users:?}",
                            self.id
                        ))
                    } else if &got_devices != devices {
                        Some(format!(
                            "{}: anonymous_ids {got_devices:?}, expected {devices:?}",
                            self.id
                        ))
                    } else if got_events != Some(*events) {
                        Some(format!(
                            "{}: event_count {got_events:?}, expected {events}",
                            self.id
                        ))
                    } else {
                        None
                    }
                }
                Expect::HasUser(user) => {
                    let got = strings("user_ids");
                    (!got.contains(user))
                        .then(|| format!("{}: user_ids {got:?} lack {user}", self.id))
                }
            }
        }
    }

    // -----------------------------------------------------------------------
    // Running it

    /// How long one request may take before it counts as a timeout.
    const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
    /// Attempts per batch (429/503, I/O errors and timeouts are retried).
    const MAX_ATTEMPTS: u32 = 10;

    /// What the tasks of a phase share.
    struct Shared {
        history: Arc<History>,
        target: SocketAddr,
        host: HeaderValue,
        basic: HeaderValue,
        bearer: HeaderValue,
        /// The next batch, lookup or check to take.
        next: AtomicUsize,
        /// Messages acknowledged with 200 so far (for progress lines).
        ok_messages: AtomicU64,
        /// Microseconds into the ingest when a fifth, then four fifths of
        /// the messages were acknowledged (0: not yet): the start and end
        /// rates are over the first and the last fifth.
        fifths: [AtomicU64; 2],
        /// Failure descriptions printed so far (a few at most).
        printed: AtomicU64,
    }

    impl Shared {
        /// Prints the first few problems of the run to stderr.
        fn note(&self, what: impl FnOnce() -> String) {
            if self.printed.fetch_add(1, Ordering::Relaxed) < 10 {
                eprintln!("weft-loadgen identity: {}", what());
            }
        }
    }

    /// Counts of one task of a phase (or, merged, of the phase).
    #[derive(Default)]
    struct Stats {
        latency: Histogram,
        /// Non-200 answers and failures, by status code or failure kind.
        statuses: BTreeMap<String, u64>,
        ok: u64,
        ok_messages: u64,
        accepted: u64,
        duplicates: u64,
        rejected: u64,
        dropped: u64,
        lost_batches: u64,
        lost_messages: u64,
        checks_passed: u64,
        checks_run: u64,
    }

    impl Stats {
        fn merge(&mut self, other: Stats) {
            self.latency.merge(&other.latency);
            for (k, v) in other.statuses {
                *self.statuses.entry(k).or_default() += v;
            }
            self.ok += other.ok;
            self.ok_messages += other.ok_messages;
            self.accepted += other.accepted;
            self.duplicates += other.duplicates;
            self.rejected += other.rejected;
            self.dropped += other.dropped;
            self.lost_batches += other.lost_batches;
            self.lost_messages += other.lost_messages;
            self.checks_passed += other.checks_passed;
            self.checks_run += other.checks_run;
        }

        fn count(&mut self, what: impl Into<String>) {
            *self.statuses.entry(what.into()).or_default() += 1;
        }

        fn non_200(&self) -> u64 {
            self.statuses.values().sum()
        }
    }

    async fn run(args: Args) -> Result<String, String> {
        let generating = Instant::now();
        let history = Arc::new(History::generate(
            args.people,
            args.seed,
            args.batch_size as usize,
        ));
        let generate_s = generating.elapsed().as_secs_f64();
        eprintln!(
            "weft-loadgen identity: {} people, {} own + {} shared devices ({} shared sessions), \
             {} messages ({:.1} per session, {:.1} per person) in {} batches, generated in {generate_s:.1} s",
            args.people,
            history.own_devices,
            history.shared_devices,
            history.shared_sessions,
            history.messages(),
            history.session_messages as f64 / history.sessions.max(1) as f64,
            history.messages() as f64 / f64::from(args.people),
            history.batches(),
        );
        let shared = |history: &Arc<History>| {
            Arc::new(Shared {
                history: history.clone(),
                target: args.target,
                host: header_value(&args.target.to_string()),
                basic: header_value(&format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD
                        .encode(format!("{}:", args.write_key))
                )),
                bearer: header_value(&format!("Bearer {}", args.admin_token)),
                next: AtomicUsize::new(0),
                ok_messages: AtomicU64::new(0),
                fifths: [AtomicU64::new(0), AtomicU64::new(0)],
                printed: AtomicU64::new(0),
            })
        };
        let server_cpu = || args.server_pid.and_then(proc_cpu_seconds);
        let cores = |a: Option<f64>, b: Option<f64>, wall: f64| match (a, b) {
            (Some(a), Some(b)) if wall > 0.0 => Some((b - a) / wall),
            _ => None,
        };

        // Ingest.
        let phase = shared(&history);
        let (server0, own0) = (server_cpu(), own_cpu_seconds());
        let started = Instant::now();
        let deadline = started + Duration::from_secs(args.ingest_timeout);
        let progress = tokio::spawn(progress(phase.clone(), history.messages() as u64));
        let tasks: Vec<_> = (0..args.connections)
            .map(|_| tokio::spawn(ingest_connection(phase.clone(), deadline)))
            .collect();
        let ingest = join(tasks).await;
        progress.abort();
        let ingest_s = started.elapsed().as_secs_f64();
        let (server1, own1) = (server_cpu(), own_cpu_seconds());
        // Rates over the first and the last fifth of the messages.
        let fifth = history.messages() as f64 / 5.0;
        let at = |i: usize| phase.fifths[i].load(Ordering::Relaxed) as f64 / 1e6;
        let (start_rate, end_rate) = match (at(0), at(1)) {
            (t1, t4) if t1 > 0.0 && t4 > 0.0 && ingest_s > t4 => {
                (Some(fifth / t1), Some(fifth / (ingest_s - t4)))
            }
            _ => (None, None),
        };
        eprintln!(
            "weft-loadgen identity: ingest done: {} of {} messages acknowledged in {ingest_s:.1} s",
            ingest.ok_messages,
            history.messages()
        );

        // Timed lookups of random IDs.
        let lookups = Arc::new(history.lookup_ids(args.lookups));
        let phase = shared(&history);
        let started = Instant::now();
        let deadline = started + Duration::from_secs(args.query_seconds);
        let tasks: Vec<_> = (0..args.query_connections)
            .map(|_| tokio::spawn(query_connection(phase.clone(), lookups.clone(), deadline)))
            .collect();
        let query = join(tasks).await;
        let query_s = started.elapsed().as_secs_f64();
        let (server2, own2) = (server_cpu(), own_cpu_seconds());
        let lookups_done = query.latency.total;
        eprintln!(
            "weft-loadgen identity: {lookups_done} lookups in {query_s:.1} s ({} non-200)",
            query.non_200()
        );

        // Spot check against the truth (untimed).
        let checks = Arc::new(history.checks(args.checks));
        let phase = shared(&history);
        let deadline = Instant::now() + Duration::from_secs(args.query_seconds);
        let tasks: Vec<_> = (0..args.query_connections)
            .map(|_| tokio::spawn(check_connection(phase.clone(), checks.clone(), deadline)))
            .collect();
        let checked = join(tasks).await;

        let round = |x: f64| (x * 1000.0).round() / 1000.0;
        let ms = |micros: f64| round(micros / 1000.0);
        let opt = |x: Option<f64>| x.map(round);
        let mut summary = serde_json::json!({
            "mode": "identity",
            "seed": args.seed,
            "people": args.people,
            "own_devices": history.own_devices,
            "shared_devices": history.shared_devices,
            "shared_sessions": history.shared_sessions,
            "aliased_people": history.people.iter().filter(|p| p.aliased).count(),
            "messages": history.messages(),
            "batches": history.batches(),
            "batch_size": args.batch_size,
            "connections": args.connections,
            "generate_s": round(generate_s),
            "ingest_s": round(ingest_s),
            "ok_messages": ingest.ok_messages,
            "messages_per_s": round(ingest.ok_messages as f64 / ingest_s),
            "start_messages_per_s": opt(start_rate),
            "end_messages_per_s": opt(end_rate),
            "accepted": ingest.accepted,
            "duplicates": ingest.duplicates,
            "rejected": ingest.rejected,
            "dropped": ingest.dropped,
            "non_200": ingest.non_200(),
            "errors": ingest.statuses,
            "lost_batches": ingest.lost_batches,
            "lost_messages": ingest.lost_messages,
            "batch_p50_ms": ms(ingest.latency.quantile_micros(0.50)),
            "batch_p99_ms": ms(ingest.latency.quantile_micros(0.99)),
            "ingest_server_cores": opt(cores(server0, server1, ingest_s)),
            "ingest_loadgen_cores": opt(cores(own0, own1, ingest_s)),
        });
        let query_part = serde_json::json!({
            "query_connections": args.query_connections,
            "lookups": lookups_done,
            "query_s": round(query_s),
            "lookups_per_s": round(lookups_done as f64 / query_s),
            "p50_ms": ms(query.latency.quantile_micros(0.50)),
            "p99_ms": ms(query.latency.quantile_micros(0.99)),
            "max_ms": ms(query.latency.max_micros as f64),
            "mean_ms": ms(query.latency.mean_micros()),
            "query_non_200": query.non_200(),
            "query_errors": query.statuses,
            "query_server_cores": opt(cores(server1, server2, query_s)),
            "query_loadgen_cores": opt(cores(own1, own2, query_s)),
            "spot_checks": checked.checks_run,
            "spot_checks_passed": checked.checks_passed,
            "spot_checks_planned": checks.len(),
            "cpu_s": opt(own_cpu_seconds()),
        });
        if let (Some(all), serde_json::Value::Object(rest)) = (summary.as_object_mut(), query_part)
        {
            all.extend(rest);
        }
        Ok(summary.to_string())
    }

    async fn join(tasks: Vec<tokio::task::JoinHandle<Stats>>) -> Stats {
        let mut total = Stats::default();
        for task in tasks {
            match task.await {
                Ok(stats) => total.merge(stats),
                Err(e) => total.count(format!("task: {e}")),
            }
        }
        total
    }

    /// A line on stderr every 10 s while the ingest runs, and the times
    /// at which a fifth and four fifths of `total` were acknowledged
    /// (sampled every 20 ms).
    async fn progress(shared: Arc<Shared>, total: u64) {
        let started = Instant::now();
        let mut printed = 0;
        let marks = [total / 5, total - total / 5];
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let done = shared.ok_messages.load(Ordering::Relaxed);
            let elapsed = started.elapsed();
            for (mark, at) in marks.iter().zip(&shared.fifths) {
                if done >= *mark && at.load(Ordering::Relaxed) == 0 {
                    at.store(elapsed.as_micros().max(1) as u64, Ordering::Relaxed);
                }
            }
            let secs = elapsed.as_secs();
            if secs >= printed + 10 {
                printed = secs;
                eprintln!(
                    "weft-loadgen identity: {done}/{total} messages after {secs} s ({:.0}/s)",
                    done as f64 / elapsed.as_secs_f64()
                );
            }
        }
    }

    /// Takes batches until none is left, sending each on this connection
    /// until it is answered 200 (at most [`MAX_ATTEMPTS`] tries).
    async fn ingest_connection(shared: Arc<Shared>, deadline: Instant) -> Stats {
        let mut stats = Stats::default();
        let mut sender: Option<SendRequest<Full<Bytes>>> = None;
        let batches = shared.history.batches();
        loop {
            let index = shared.next.fetch_add(1, Ordering::Relaxed);
            if index >= batches {
                break;
            }
            let count = shared.history.batch(index).len() as u64;
            let mut delivered = false;
            for attempt in 0..MAX_ATTEMPTS {
                if Instant::now() >= deadline {
                    break;
                }
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_millis(50 << attempt.min(5))).await;
                }
                let mut current = match sender.take() {
                    Some(s) => s,
                    None => match connect(shared.target).await {
                        Ok(s) => s,
                        Err(e) => {
                            stats.count("connect");
                            shared.note(|| e);
                            continue;
                        }
                    },
                };
                let body = shared.history.batch_body(index, &now_rfc3339());
                let request = request(Method::POST, "/v1/batch", &shared.host, &shared.basic, body);
                let started = Instant::now();
                let outcome =
                    tokio::time::timeout(REQUEST_TIMEOUT, exchange(&mut current, request)).await;
                match outcome {
                    Ok(Ok((status, answer))) => {
                        sender = Some(current);
                        if status == StatusCode::OK {
                            stats.latency.record(started.elapsed());
                            stats.ok += 1;
                            stats.ok_messages += count;
                            shared.ok_messages.fetch_add(count, Ordering::Relaxed);
                            read_outcome(&shared, &mut stats, &answer);
                            delivered = true;
                            break;
                        }
                        stats.count(status.as_str());
                        shared.note(|| {
                            format!(
                                "batch {index}: {status} {}",
                                String::from_utf8_lossy(&answer)
                            )
                        });
                        if !matches!(status.as_u16(), 429 | 503) {
                            break;
                        }
                    }
                    Ok(Err(e)) => {
                        stats.count("io");
                        shared.note(|| format!("batch {index}: {e}"));
                    }
                    Err(_elapsed) => {
                        stats.count("timeout");
                        shared.note(|| format!("batch {index}: no answer in {REQUEST_TIMEOUT:?}"));
                    }
                }
            }
            if !delivered {
                stats.lost_batches += 1;
                stats.lost_messages += count;
            }
        }
        stats
    }

    /// Adds the counts of a 200 answer of `/v1/batch`.
    fn read_outcome(shared: &Shared, stats: &mut Stats, answer: &[u8]) {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(answer) else {
            shared.note(|| "a 200 answer is not JSON".to_owned());
            return;
        };
        let n = |key: &str| v[key].as_u64().unwrap_or(0);
        stats.accepted += n("accepted");
        stats.duplicates += n("duplicates");
        stats.rejected += n("rejected");
        stats.dropped += n("dropped_for_consent") + n("suppressed");
        if n("rejected") > 0 {
            shared.note(|| format!("messages rejected: {}", v["errors"]));
        }
    }

    /// Looks up IDs until the list or the time is used up; every answer's
    /// latency is recorded.
    async fn query_connection(
        shared: Arc<Shared>,
        ids: Arc<Vec<String>>,
        deadline: Instant,
    ) -> Stats {
        let mut stats = Stats::default();
        let mut sender: Option<SendRequest<Full<Bytes>>> = None;
        while Instant::now() < deadline {
            let index = shared.next.fetch_add(1, Ordering::Relaxed);
            let Some(id) = ids.get(index) else { break };
            let answer = lookup(&shared, &mut sender, &mut stats, id, deadline).await;
            if let Some((status, _)) = answer {
                if status != StatusCode::OK {
                    stats.count(status.as_str());
                    shared.note(|| format!("GET /v1/profiles/{id}: {status}"));
                }
            }
        }
        stats
    }

    /// Looks up the checks' IDs and verifies the answers.
    async fn check_connection(
        shared: Arc<Shared>,
        checks: Arc<Vec<Check>>,
        deadline: Instant,
    ) -> Stats {
        let mut stats = Stats::default();
        let mut sender: Option<SendRequest<Full<Bytes>>> = None;
        while Instant::now() < deadline {
            let index = shared.next.fetch_add(1, Ordering::Relaxed);
            let Some(check) = checks.get(index) else {
                break;
            };
            let Some((status, body)) =
                lookup(&shared, &mut sender, &mut stats, &check.id, deadline).await
            else {
                continue;
            };
            stats.checks_run += 1;
            match check.verify(status, &body) {
                None => stats.checks_passed += 1,
                Some(problem) => shared.note(|| format!("spot check failed: {problem}")),
            }
        }
        stats
    }

    /// `GET /v1/profiles/{id}` on this task's connection (opened if
    /// needed); records the latency of an answer. `None` after a failure
    /// (counted).
    async fn lookup(
        shared: &Shared,
        sender: &mut Option<SendRequest<Full<Bytes>>>,
        stats: &mut Stats,
        id: &str,
        deadline: Instant,
    ) -> Option<(StatusCode, Bytes)> {
        let mut current = match sender.take() {
            Some(s) => s,
            None => match connect(shared.target).await {
                Ok(s) => s,
                Err(e) => {
                    stats.count("connect");
                    shared.note(|| e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    return None;
                }
            },
        };
        let request = request(
            Method::GET,
            &format!("/v1/profiles/{id}"),
            &shared.host,
            &shared.bearer,
            Bytes::new(),
        );
        let started = Instant::now();
        let limit = REQUEST_TIMEOUT
            .min(deadline.saturating_duration_since(started) + Duration::from_secs(5));
        match tokio::time::timeout(limit, exchange(&mut current, request)).await {
            Ok(Ok((status, body))) => {
                stats.latency.record(started.elapsed());
                *sender = Some(current);
                Some((status, body))
            }
            Ok(Err(e)) => {
                stats.count("io");
                shared.note(|| format!("GET /v1/profiles/{id}: {e}"));
                None
            }
            Err(_elapsed) => {
                stats.count("timeout");
                None
            }
        }
    }

    fn request(
        method: Method,
        path: &str,
        host: &HeaderValue,
        authorization: &HeaderValue,
        body: Bytes,
    ) -> Request<Full<Bytes>> {
        let with_body = !body.is_empty();
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = method;
        *request.uri_mut() = path
            .parse()
            .unwrap_or_else(|e| panic!("bad request path {path:?}: {e}"));
        let headers = request.headers_mut();
        headers.insert(HOST, host.clone());
        headers.insert(AUTHORIZATION, authorization.clone());
        if with_body {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        request
    }

    #[cfg(test)]
    mod tests {
        use std::collections::{BTreeMap, BTreeSet};

        use super::*;

        #[test]
        fn the_history_is_deterministic_and_complete() {
            let a = History::generate(2_000, 7, 20);
            let b = History::generate(2_000, 7, 20);
            assert_eq!(a.messages(), b.messages());
            assert_eq!(a.order, b.order);
            assert_eq!(a.batch_body(3, "x"), b.batch_body(3, "x"));
            // Every message is delivered exactly once.
            let mut seen = a.order.clone();
            seen.sort_unstable();
            assert!(seen.iter().enumerate().all(|(i, &m)| i as u32 == m));
            // Every message belongs to one person.
            let owned: u64 = a.people.iter().map(|p| u64::from(p.events)).sum();
            assert_eq!(owned, a.messages() as u64);
            // About 10 messages per person; 5 % of devices shared.
            let per_person = a.messages() as f64 / 2_000.0;
            assert!((9.0..11.5).contains(&per_person), "{per_person}");
            let shared = f64::from(a.shared_devices) / f64::from(a.own_devices + a.shared_devices);
            assert!((0.045..0.055).contains(&shared), "{shared}");
            // Delivery is out of order.
            assert!(a.order.windows(2).filter(|w| w[0] > w[1]).count() > 1_000);
            let c = History::generate(2_000, 8, 20);
            assert_ne!(a.order, c.order);
        }

        #[test]
        fn bodies_are_valid_batches_with_unique_ids() {
            let h = History::generate(300, 1, 20);
            let mut ids = BTreeSet::new();
            let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
            for b in 0..h.batches() {
                let body = h.batch_body(b, "2026-11-23T10:00:00.000Z");
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                for m in v["batch"].as_array().unwrap() {
                    assert!(ids.insert(m["messageId"].as_str().unwrap().to_owned()));
                    let kind = m["type"].as_str().unwrap().to_owned();
                    if kind == "track" {
                        assert!(m["event"].is_string());
                    }
                    if kind == "alias" {
                        assert!(m["previousId"].is_string() && m["userId"].is_string());
                    }
                    assert!(m["anonymousId"].is_string() || m["userId"].is_string());
                    let ts = m["timestamp"].as_str().unwrap();
                    assert!(ts.starts_with("2026-") && ts.ends_with('Z'), "{ts}");
                    *kinds.entry(kind).or_default() += 1;
                }
            }
            assert_eq!(ids.len(), h.messages());
            for kind in ["page", "track", "identify", "alias"] {
                assert!(kinds.get(kind).copied().unwrap_or(0) > 0, "{kinds:?}");
            }
            let devices: BTreeSet<String> = (0..h.device_owner.len() as u32)
                .map(|d| h.id_text(Id::Device(d)))
                .collect();
            assert_eq!(devices.len(), h.device_owner.len());
        }

        #[test]
        fn checks_accept_the_truth_and_refuse_a_wrong_merge() {
            let check = Check {
                id: "u1".into(),
                expect: Expect::Exact {
                    users: vec!["u1".into()],
                    devices: vec!["d1".into(), "d2".into()],
                    events: 5,
                },
            };
            let right = br#"{"user_ids":["u1"],"anonymous_ids":["d2","d1"],"event_count":5}"#;
            assert_eq!(check.verify(StatusCode::OK, right), None);
            let merged = br#"{"user_ids":["u1","u2"],"anonymous_ids":["d1","d2"],"event_count":5}"#;
            assert!(check.verify(StatusCode::OK, merged).is_some());
            assert!(check.verify(StatusCode::NOT_FOUND, b"{}").is_some());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_their_values() {
        for v in [
            0u64,
            1,
            127,
            128,
            129,
            255,
            256,
            1000,
            12_345,
            1 << 40,
            u64::MAX,
        ] {
            let (low, width) = bucket_range(bucket_of(v));
            assert!(low <= v && v - low < width, "{v} not in [{low}, +{width})");
        }
        assert!(bucket_of(u64::MAX) < BUCKETS);
    }

    #[test]
    fn quantiles_are_close() {
        let mut h = Histogram::default();
        for v in 1..=10_000u64 {
            h.record(Duration::from_micros(v));
        }
        let p50 = h.quantile_micros(0.5);
        let p99 = h.quantile_micros(0.99);
        assert!((p50 - 5_000.0).abs() < 100.0, "{p50}");
        assert!((p99 - 9_900.0).abs() < 160.0, "{p99}");
    }

    #[test]
    fn digits_are_fixed_width() {
        let mut out = *b"000000";
        write_digits(&mut out, 42);
        assert_eq!(&out, b"000042");
        write_digits(&mut out, 12_345_678);
        assert_eq!(&out, b"345678");
    }
}
