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
    let accepted_all = format!("\"accepted\":{batch_size},");
    let is_collector = text.contains("\"accepted\":");
    if status != StatusCode::OK || (is_collector && !text.contains(&accepted_all)) {
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
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); the first after the name is field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
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
