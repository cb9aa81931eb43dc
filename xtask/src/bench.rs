//! `cargo xtask bench collector`: ingest throughput of the collector with
//! durable storage against two references measured on the same machine in
//! the same run, at 32 and at 256 connections (or only at
//! `--connections N`):
//!
//! - the durable-ingest limit (`weft-durable-limit`): a hyper server that
//!   parses each batch once, frames its messages into one file and answers
//!   after a group `fdatasync`, and does nothing else. No durable collector
//!   can beat it with the same connections on the same disk; the target is
//!   weft >= [`TARGET_RATIO`] of it at every connection count;
//! - a bare hyper server (`weft-bare-hyper`) that reads the body and
//!   answers: what HTTP alone costs (the ratio is printed, not judged).
//!
//! For each: events/s, latency, server CPU per event and peak RSS; for the
//! two durable ones, bytes written per event, syncs per second and requests
//! per sync (weft's `/metrics`, the limit's `GET /stats`), counted over the
//! measured window only; for weft, the index's lag behind the log when the
//! load stops and again [`LAG_RECHECK`] later. A missed target is reported,
//! never a failure of the command.
//!
//! `cargo xtask bench identity [--people N]`: identity stitching at scale.
//! `weft-loadgen identity` ingests a generated history (by default 100,000
//! people, about a million messages, shared devices, aliases, junk IDs,
//! delivered out of order) through the full write path, then times
//! `GET /v1/profiles/{id}` of random IDs and checks a sample of profiles
//! against the history's truth; the collector's peak RSS and its data
//! directory's size come from here.
//!
//! `cargo xtask bench sdk [--rounds N] [--calls N]`: the browser SDK in
//! headless Chromium (`weft-sdk-bench`): time from weft.js's start to
//! `weft.ready` against a same-size no-op script, main-thread time per
//! `track` call against an empty function call and `JSON.stringify` of the
//! same properties, and request bytes per event; then the same figures side
//! by side with PostHog and Snowplow (pinned from npm into
//! `target/tools/npm-anchors`). The SDK is built first, as `cargo xtask sdk`
//! builds it.
//!
//! Each target is started as a child process on `127.0.0.1:0`, loaded by
//! `weft-loadgen` (20-message batches of about 10 KB on keep-alive
//! connections), its peak RSS, CPU time and disk writes read from
//! `/proc/<pid>` and then stopped with SIGTERM. The figures come back as the
//! load generator's JSON line and the servers' counters (a plain HTTP/1.1
//! GET), read here with a few lines of string search so xtask keeps its
//! small dependency list.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::cmd::{Step, cargo, output};

/// The ratio of weft's events/s to the durable limit's the project aims
/// for, at every connection count.
const TARGET_RATIO: f64 = 0.8;
/// Connection counts `bench collector` runs unless `--connections` names one.
const DEFAULT_CONNECTIONS: [u64; 2] = [32, 256];
/// How long after the load stops weft's index lag is read again.
const LAG_RECHECK: Duration = Duration::from_secs(2);
/// How long a server may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long reading a server's counters may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
pub(crate) const WRITE_KEY: &str = "wk_bench";
pub(crate) const ADMIN_TOKEN: &str = "bench";

/// What `bench collector` is asked for.
#[derive(Debug, PartialEq)]
pub(crate) struct Options {
    /// Measured seconds of each run.
    pub(crate) seconds: u64,
    /// One run of every target per count, in this order.
    pub(crate) connections: Vec<u64>,
    /// Seconds of load before the measured window.
    pub(crate) warmup: u64,
}

/// `cargo xtask bench collector [--seconds S] [--connections N] [--warmup S]`,
/// `cargo xtask bench identity [--people N] [--seed S] [--connections N]
/// [--lookups N]` or `cargo xtask bench sdk [--rounds N] [--calls N]`.
pub fn run(root: &Path, args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("collector") => collector(root, &args[1..]),
        Some("identity") => identity(root, &args[1..]),
        Some("sdk") => sdk(root, &args[1..]),
        Some("segments") => crate::segments_bench::run(root, &args[1..]),
        Some("destinations") => crate::destinations_bench::run(root, &args[1..]),
        other => Err(format!(
            "unknown bench {other:?}; usage: cargo xtask bench collector \
             [--seconds S] [--connections N] [--warmup S] | cargo xtask bench identity \
             [--people N] [--seed S] [--connections N] [--lookups N] | cargo xtask bench sdk \
             [--rounds N] [--calls N] | cargo xtask bench segments [--seconds S] [--people N] [--rounds R] | \
             cargo xtask bench destinations [--seconds S]"
        )),
    }
}

/// What `bench sdk` is asked for.
#[derive(Debug, PartialEq)]
struct SdkOptions {
    /// Cold loads per script, and timing rounds per call kind.
    rounds: u32,
    /// Calls per timing round.
    calls: u32,
}

fn parse_sdk_options(args: &[String]) -> Result<SdkOptions, String> {
    let mut options = SdkOptions {
        rounds: 20,
        calls: 1000,
    };
    let mut rest = args.iter();
    while let Some(flag) = rest.next() {
        let slot = match flag.as_str() {
            "--rounds" => &mut options.rounds,
            "--calls" => &mut options.calls,
            other => return Err(format!("bench sdk: unknown flag {other}")),
        };
        let value = rest
            .next()
            .ok_or_else(|| format!("bench sdk: {flag} needs a value"))?;
        *slot = value
            .parse()
            .map_err(|e| format!("bench sdk: {flag} {value}: {e}"))?;
    }
    if !(3..=200).contains(&options.rounds) {
        return Err("bench sdk: --rounds must be 3..=200".into());
    }
    if !(10..=100_000).contains(&options.calls) {
        return Err("bench sdk: --calls must be 10..=100000".into());
    }
    Ok(options)
}

/// `cargo xtask bench sdk`: builds the SDK exactly as `cargo xtask sdk`
/// does, then runs `weft-sdk-bench` (release) against it in the Chromium
/// `cargo xtask test` uses. The table is the bench binary's stdout.
fn sdk(root: &Path, args: &[String]) -> Result<(), String> {
    let options = parse_sdk_options(args)?;
    let tools = crate::tools::ensure_sdk_tools(root)?;
    let browser = crate::tools::ensure_browser()?;
    let anchors = crate::tools::ensure_bench_anchors(root)?;
    crate::sdk::build(root, &tools)?;
    // `cargo run` rather than a path under `target/release`: it finds the
    // binary wherever CARGO_TARGET_DIR puts it.
    Step::new("weft-sdk-bench (release, headless Chromium)").run(
        cargo(root)
            .args([
                "run",
                "--release",
                "-p",
                "weft-e2e",
                "--bin",
                "weft-sdk-bench",
                "--",
                "--rounds",
                &options.rounds.to_string(),
                "--calls",
                &options.calls.to_string(),
                "--anchors",
            ])
            .arg(&anchors)
            .env("WEFT_SDK_DIR", crate::sdk::out_dir(root))
            .env("WEFT_CHROMIUM", &browser.chromium),
    )
}

/// Builds the collector and the load tools (release).
pub(crate) fn build(root: &Path) -> Result<(), String> {
    Step::new("build the collector and the load tools (release)").run(cargo(root).args([
        "build",
        "--release",
        "-p",
        "weft-collector",
        "-p",
        "weft-e2e",
        "--bins",
    ]))
}

/// The release collector on `127.0.0.1:0` over `data_dir`, write key
/// [`WRITE_KEY`] and admin token [`ADMIN_TOKEN`].
pub(crate) fn collector_command(release: &Path, data_dir: &Path) -> Command {
    let mut c = Command::new(release.join("weft-collector"));
    // Only the flags below configure it: no `WEFT_*` variables from
    // the caller's shell, no `./weft.toml` from the caller's directory.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("WEFT_") {
            c.env_remove(name);
        }
    }
    c.current_dir(data_dir)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(["--write-key", WRITE_KEY, "--admin-token", ADMIN_TOKEN])
        .env("WEFT_LOG", "warn");
    c
}

/// How the collector's first stdout line begins.
pub(crate) const COLLECTOR_ADDRESS_PREFIX: &str = "weft collector listening on http://";

/// The servers `bench collector` measures, in the order it runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Bare,
    Limit,
    Weft,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Bare, Kind::Limit, Kind::Weft];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Kind::Bare => "bare hyper",
            Kind::Limit => "durable limit",
            Kind::Weft => "weft (durable)",
        }
    }
}

fn collector(root: &Path, args: &[String]) -> Result<(), String> {
    let options = parse_options(args)?;
    build(root)?;
    let release = root.join("target/release");
    let loadgen = release.join("weft-loadgen");
    let mut rows = Vec::new();
    for &connections in &options.connections {
        for kind in Kind::ALL {
            // A fresh directory per run, removed right after it.
            let data_dir = TempDir::create(root)?;
            let (command, address_prefix) = match kind {
                Kind::Bare => {
                    let mut c = Command::new(release.join("weft-bare-hyper"));
                    c.args(["--listen", "127.0.0.1:0"]);
                    (c, "listening on ")
                }
                Kind::Limit => {
                    let mut c = Command::new(release.join("weft-durable-limit"));
                    c.args(["--listen", "127.0.0.1:0", "--data-dir"])
                        .arg(&data_dir.0);
                    (c, "listening on ")
                }
                Kind::Weft => (
                    collector_command(&release, &data_dir.0),
                    COLLECTOR_ADDRESS_PREFIX,
                ),
            };
            let target = Target {
                kind,
                command,
                address_prefix,
                data_dir: &data_dir.0,
                setup: None,
                after_load: None,
            };
            rows.push(measure(target, &loadgen, &options, connections)?);
        }
    }
    print_report(&options, &rows);
    Ok(())
}

pub(crate) fn parse_options(args: &[String]) -> Result<Options, String> {
    let mut seconds = 10;
    let mut warmup = 2;
    let mut connections = None;
    let mut rest = args.iter();
    while let Some(flag) = rest.next() {
        if !matches!(flag.as_str(), "--seconds" | "--connections" | "--warmup") {
            return Err(format!("bench collector: unknown flag {flag}"));
        }
        let value = rest
            .next()
            .ok_or_else(|| format!("bench collector: {flag} needs a value"))?;
        let n: u64 = value
            .parse()
            .map_err(|e| format!("bench collector: {flag} {value}: {e}"))?;
        match flag.as_str() {
            "--seconds" => seconds = n,
            "--warmup" => warmup = n,
            _ => connections = Some(n),
        }
    }
    // The load generator's own bounds.
    if !(1..=120).contains(&seconds) {
        return Err("bench collector: --seconds must be 1..=120".into());
    }
    if warmup > 60 {
        return Err("bench collector: --warmup must be 0..=60".into());
    }
    if connections.is_some_and(|n| !(1..=1024).contains(&n)) {
        return Err("bench collector: --connections must be 1..=1024".into());
    }
    Ok(Options {
        seconds,
        connections: connections.map_or_else(|| DEFAULT_CONNECTIONS.to_vec(), |n| vec![n]),
        warmup,
    })
}

/// A server to measure: how to start it, how its address line begins, and
/// the data directory it writes to.
pub(crate) struct Target<'a> {
    pub(crate) kind: Kind,
    pub(crate) command: Command,
    pub(crate) address_prefix: &'static str,
    pub(crate) data_dir: &'a Path,
    /// Runs once the server is up, before the load (given its address).
    pub(crate) setup: Option<&'a Setup>,
    /// Runs after the load, before the server is stopped.
    pub(crate) after_load: Option<&'a Setup>,
}

/// What runs once a server is up, before the load (given its address).
pub(crate) type Setup = dyn Fn(&str) -> Result<(), String>;

/// The figures of one target at one connection count.
pub(crate) struct Row {
    pub(crate) kind: Kind,
    pub(crate) connections: u64,
    pub(crate) events_per_s: f64,
    pub(crate) requests_per_s: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) peak_rss_mb: f64,
    non_200: u64,
    pub(crate) errors: String,
    /// Server CPU over the measured window, in cores (1.0 = one core).
    pub(crate) server_cores: f64,
    /// Server CPU time per event answered in the measured window.
    pub(crate) cpu_us_per_event: f64,
    /// The load generator's CPU over its whole run, in cores.
    pub(crate) loadgen_cores: f64,
    /// What the server made the kernel write to storage (`write_bytes` of
    /// /proc/<pid>/io: log, index, WAL, checkpoints) per event.
    pub(crate) disk_bytes_per_event: Option<f64>,
    /// Bytes appended to the log (framing included) per event stored.
    pub(crate) log_bytes_per_event: Option<f64>,
    /// weft: growth of the `weft.sqlite*` files per record indexed.
    pub(crate) index_bytes_per_event: Option<f64>,
    pub(crate) syncs_per_s: Option<f64>,
    pub(crate) requests_per_sync: Option<f64>,
    /// Mean time of one group commit (framing, write, fdatasync).
    pub(crate) commit_ms: Option<f64>,
    /// weft: records durable in the log and not yet in the index when the
    /// load stopped, and [`LAG_RECHECK`] later.
    pub(crate) lag_records: Option<(f64, f64)>,
}

/// Starts `target`, loads it with `connections` connections, reads its
/// counters at the start and the end of the measured window, then stops it.
pub(crate) fn measure(
    target: Target<'_>,
    loadgen: &Path,
    options: &Options,
    connections: u64,
) -> Result<Row, String> {
    let label = target.kind.label();
    eprintln!("\n==> bench: {label}, {connections} connections");
    let mut server = Server::start(target.command, label, target.address_prefix)?;
    if let Some(setup) = target.setup {
        setup(&server.address)?;
    }
    let probe = Probe {
        kind: target.kind,
        pid: server.pid(),
        address: &server.address,
        data_dir: target.data_dir,
    };
    let run = start_loadgen(loadgen, &server.address, options, connections)?;
    let spawned = Instant::now();
    sleep_until(spawned + Duration::from_secs(options.warmup));
    let start = probe.sample();
    sleep_until(spawned + Duration::from_secs(options.warmup + options.seconds));
    let end = probe.sample();
    let figures = finish_loadgen(run, loadgen);
    let wall = spawned.elapsed().as_secs_f64();
    let later = (target.kind == Kind::Weft).then(|| {
        std::thread::sleep(LAG_RECHECK);
        probe.sample()
    });
    if let Some(after) = target.after_load {
        after(&server.address)?;
    }
    let peak_rss_kb = peak_rss_kb(server.pid());
    server.stop()?;
    let figures = figures?;
    let peak_rss_kb =
        peak_rss_kb.ok_or_else(|| format!("{label}: cannot read VmHWM from /proc/<pid>/status"))?;
    let field = |name: &str| {
        json_number(&figures, name)
            .ok_or_else(|| format!("{label}: no `{name}` in the load generator's summary"))
    };
    let events_per_s = field("events_per_s")?;

    let window = end.at.duration_since(start.at).as_secs_f64();
    let delta = |f: fn(&Sample) -> Option<f64>| Some(f(&end)? - f(&start)?);
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let events_in_window = Some(events_per_s * window);
    let server_cpu = delta(|s| s.cpu_s);
    let syncs = delta(|s| s.syncs);
    let lag = |s: &Sample| Some(s.log_position? - s.index_position?);
    Ok(Row {
        kind: target.kind,
        connections,
        events_per_s,
        requests_per_s: field("requests_per_s")?,
        p50_ms: field("p50_ms")?,
        p99_ms: field("p99_ms")?,
        peak_rss_mb: peak_rss_kb as f64 / 1024.0,
        non_200: field("non_200")? as u64,
        errors: json_object(&figures, "errors").unwrap_or_default(),
        server_cores: ratio(server_cpu, Some(window)).unwrap_or(f64::NAN),
        cpu_us_per_event: ratio(server_cpu.map(|s| s * 1e6), events_in_window).unwrap_or(f64::NAN),
        loadgen_cores: json_number(&figures, "cpu_s").map_or(f64::NAN, |cpu| cpu / wall),
        disk_bytes_per_event: (target.kind != Kind::Bare)
            .then(|| ratio(delta(|s| s.disk_bytes), events_in_window))
            .flatten(),
        log_bytes_per_event: ratio(delta(|s| s.log_bytes), delta(|s| s.events)),
        index_bytes_per_event: ratio(delta(|s| s.index_bytes), delta(|s| s.index_position)),
        syncs_per_s: ratio(syncs, Some(window)),
        requests_per_sync: ratio(delta(|s| s.synced_requests), syncs),
        commit_ms: ratio(delta(|s| s.commit_s).map(|s| s * 1e3), syncs),
        lag_records: lag(&end).zip(later.as_ref().and_then(lag)),
    })
}

/// Starts the load generator against `address`; its JSON line is read by
/// [`finish_loadgen`].
fn start_loadgen(
    loadgen: &Path,
    address: &str,
    options: &Options,
    connections: u64,
) -> Result<Child, String> {
    Command::new(loadgen)
        .arg(address)
        .args(["--seconds", &options.seconds.to_string()])
        .args(["--connections", &connections.to_string()])
        .args(["--warmup", &options.warmup.to_string()])
        .args(["--write-key", WRITE_KEY])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", loadgen.display()))
}

/// Runs the load generator `command` (`loadgen` is its path) and returns
/// the JSON summary line it printed last.
pub(crate) fn summary_line(mut command: Command, loadgen: &Path) -> Result<String, String> {
    let child = command
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", loadgen.display()))?;
    finish_loadgen(child, loadgen)
}

/// Waits for the load generator and returns the JSON summary line it
/// printed last.
fn finish_loadgen(child: Child, loadgen: &Path) -> Result<String, String> {
    let out = child
        .wait_with_output()
        .map_err(|e| format!("cannot wait for {}: {e}", loadgen.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "the load generator failed ({}): {stdout}",
            out.status
        ));
    }
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .ok_or_else(|| format!("the load generator printed no summary: {stdout:?}"))?;
    eprintln!("loadgen: {line}");
    Ok(line.to_owned())
}

fn sleep_until(at: Instant) {
    let left = at.saturating_duration_since(Instant::now());
    if !left.is_zero() {
        std::thread::sleep(left);
    }
}

// ---------------------------------------------------------------------------
// A server's counters

/// Where to read a running server's counters.
struct Probe<'a> {
    kind: Kind,
    pid: u32,
    address: &'a str,
    data_dir: &'a Path,
}

/// A server's counters at one moment; `None` where it has none (or they
/// could not be read).
struct Sample {
    at: Instant,
    cpu_s: Option<f64>,
    /// `write_bytes` of /proc/<pid>/io.
    disk_bytes: Option<f64>,
    /// Events made durable.
    events: Option<f64>,
    /// Bytes appended to the log, framing included.
    log_bytes: Option<f64>,
    /// Group commits, one fdatasync each.
    syncs: Option<f64>,
    /// Requests answered by those commits.
    synced_requests: Option<f64>,
    /// Time spent in group commits, summed.
    commit_s: Option<f64>,
    /// weft: the log's next record number.
    log_position: Option<f64>,
    /// weft: the position the index has applied up to.
    index_position: Option<f64>,
    /// weft: bytes of the `weft.sqlite*` files.
    index_bytes: Option<f64>,
}

impl Probe<'_> {
    fn sample(&self) -> Sample {
        let mut s = Sample {
            at: Instant::now(),
            cpu_s: cpu_seconds(self.pid),
            disk_bytes: disk_write_bytes(self.pid).map(|b| b as f64),
            events: None,
            log_bytes: None,
            syncs: None,
            synced_requests: None,
            commit_s: None,
            log_position: None,
            index_position: None,
            index_bytes: None,
        };
        let label = self.kind.label();
        match self.kind {
            Kind::Bare => {}
            Kind::Limit => match http_get(self.address, "/stats") {
                Ok(stats) => {
                    s.events = json_number(&stats, "events");
                    s.log_bytes = json_number(&stats, "bytes");
                    s.syncs = json_number(&stats, "syncs");
                    s.synced_requests = json_number(&stats, "requests");
                    s.commit_s = json_number(&stats, "commit_micros").map(|us| us / 1e6);
                }
                Err(e) => eprintln!("{label}: cannot read its counters: {e}"),
            },
            Kind::Weft => {
                match http_get(self.address, "/metrics") {
                    Ok(text) => {
                        s.events = metric(&text, "weft_events_accepted_total");
                        s.log_bytes = metric(&text, "weft_log_bytes_written_total");
                        s.syncs = metric(&text, "weft_commits_total");
                        s.synced_requests = metric(&text, "weft_committed_requests_total");
                        s.commit_s = metric(&text, "weft_commit_seconds_sum");
                        s.log_position = metric(&text, "weft_log_position");
                        s.index_position = metric(&text, "weft_index_position");
                    }
                    Err(e) => eprintln!("{label}: cannot read /metrics: {e}"),
                }
                s.index_bytes = Some(index_bytes(self.data_dir) as f64);
            }
        }
        s
    }
}

/// `GET path` on `address` over plain HTTP/1.1 (`Connection: close`): the
/// body of a 200 answer.
pub(crate) fn http_get(address: &str, path: &str) -> Result<String, String> {
    let fail = |e: std::io::Error| format!("GET http://{address}{path}: {e}");
    let mut stream = std::net::TcpStream::connect(address).map_err(fail)?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT)).map_err(fail)?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT)).map_err(fail)?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(fail)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).map_err(fail)?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("GET http://{address}{path}: no end of headers"))?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("GET http://{address}{path}: {status}"));
    }
    Ok(body.to_owned())
}

/// The value of an unlabeled sample `name` in Prometheus text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let (sample, value) = line.split_once(' ')?;
        if sample == name {
            value.trim().parse().ok()
        } else {
            None
        }
    })
}

/// Bytes of weft's index files (`weft.sqlite`, its WAL and shm) in
/// `data_dir`.
fn index_bytes(data_dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("weft.sqlite"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

// ---------------------------------------------------------------------------
// The server child process

/// A server child process; stopped (and, failing that, killed) when dropped.
pub(crate) struct Server {
    child: Option<Child>,
    label: &'static str,
    pub(crate) address: String,
}

impl Server {
    /// Starts `command` with stdout piped and waits for its address line.
    pub(crate) fn start(
        mut command: Command,
        label: &'static str,
        address_prefix: &str,
    ) -> Result<Self, String> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("{label}: cannot start {:?}: {e}", command.get_program()))?;
        let stdout = child.stdout.take();
        // Own the child from here on, so an early return still stops it.
        let mut server = Server {
            child: Some(child),
            label,
            address: String::new(),
        };
        let stdout = stdout.ok_or_else(|| format!("{label}: no stdout pipe"))?;
        let first_line = first_line_then_drain(stdout)
            .recv_timeout(START_TIMEOUT)
            .map_err(|_| format!("{label}: printed no address line within {START_TIMEOUT:?}"))?;
        server.address = first_line
            .trim()
            .strip_prefix(address_prefix)
            .ok_or_else(|| {
                format!("{label}: first line {first_line:?} does not start with {address_prefix:?}")
            })?
            .trim_end_matches('/')
            .to_owned();
        eprintln!("{label}: pid {} on {}", server.pid(), server.address);
        Ok(server)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends SIGTERM to this child and waits; kills it after
    /// [`STOP_TIMEOUT`].
    pub(crate) fn stop(&mut self) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = child.id().to_string();
        let term = Command::new("kill").args(["-TERM", &pid]).status();
        if !term.is_ok_and(|s| s.success()) {
            eprintln!("{}: `kill -TERM {pid}` failed", self.label);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    if !status.success() {
                        eprintln!("{}: exited with {status}", self.label);
                    }
                    return Ok(());
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(None) => break,
                Err(e) => return Err(format!("{}: cannot wait for pid {pid}: {e}", self.label)),
            }
        }
        eprintln!(
            "{}: still running {STOP_TIMEOUT:?} after SIGTERM; killing pid {pid}",
            self.label
        );
        child
            .kill()
            .and_then(|()| child.wait())
            .map(drop)
            .map_err(|e| format!("{}: cannot kill pid {pid}: {e}", self.label))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("{e}");
        }
    }
}

/// Sends the first line of `stdout` on the returned channel and keeps
/// reading the rest in the background, so the server never writes into a
/// full or closed pipe.
fn first_line_then_drain(stdout: std::process::ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        for _ in lines.map_while(Result::ok) {}
    });
    rx
}

// ---------------------------------------------------------------------------
// /proc readers

/// Peak resident set size (`VmHWM`) of `pid`, in kB.
fn peak_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// User + system CPU time of `pid` (all threads), in seconds.
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); the first after the name is field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> f64 {
    output(Command::new("getconf").arg("CLK_TCK"))
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Bytes `pid` caused to be sent to storage (`write_bytes` of
/// /proc/<pid>/io).
fn disk_write_bytes(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    let line = io.lines().find(|l| l.starts_with("write_bytes:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

// ---------------------------------------------------------------------------
// Reading the summary line

/// The number after `"name":` in a flat JSON text.
pub(crate) fn json_number(json: &str, name: &str) -> Option<f64> {
    let key = format!("\"{name}\":");
    let start = json.find(&key)? + key.len();
    let rest = json[start..].trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E')))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// The `{...}` text after `"name":` (no nested objects).
fn json_object(json: &str, name: &str) -> Option<String> {
    let key = format!("\"{name}\":");
    let start = json.find(&key)? + key.len();
    let rest = json[start..].trim_start();
    let end = rest.find('}')?;
    rest.starts_with('{').then(|| rest[..=end].to_owned())
}

// ---------------------------------------------------------------------------
// Report

fn print_report(options: &Options, rows: &[Row]) {
    println!(
        "\nbench collector: {} s measured after {} s warm-up per run, 20 events (~10 KB) per \
         request, loopback, {} cores shared with the load generator\n",
        options.seconds,
        options.warmup,
        std::thread::available_parallelism().map_or(0, usize::from),
    );
    println!(
        "{:>5} {:<15} {:>9} {:>8} {:>7} {:>7} {:>9} {:>7} {:>8} {:>8} {:>7}",
        "conns",
        "target",
        "events/s",
        "req/s",
        "p50 ms",
        "p99 ms",
        "CPU us/ev",
        "server",
        "loadgen",
        "RSS MB",
        "non-200",
    );
    for row in rows {
        println!(
            "{:>5} {:<15} {:>9.0} {:>8.0} {:>7.2} {:>7.2} {:>9.1} {:>6.0}% {:>7.0}% {:>8.1} {:>7}",
            row.connections,
            row.kind.label(),
            row.events_per_s,
            row.requests_per_s,
            row.p50_ms,
            row.p99_ms,
            row.cpu_us_per_event,
            row.server_cores * 100.0,
            row.loadgen_cores * 100.0,
            row.peak_rss_mb,
            row.non_200,
        );
    }
    for row in rows.iter().filter(|r| r.non_200 > 0) {
        println!(
            "{} at {} connections: non-200 by kind: {}",
            row.kind.label(),
            row.connections,
            row.errors
        );
    }

    println!(
        "\n{:>5} {:<15} {:>11} {:>13} {:>12} {:>8} {:>9} {:>10}",
        "conns",
        "target",
        "log B/ev",
        "index B/ev",
        "disk B/ev",
        "syncs/s",
        "req/sync",
        "commit ms",
    );
    for row in rows.iter().filter(|r| r.kind != Kind::Bare) {
        println!(
            "{:>5} {:<15} {:>11} {:>13} {:>12} {:>8} {:>9} {:>10}",
            row.connections,
            row.kind.label(),
            figure(row.log_bytes_per_event, 0),
            figure(row.index_bytes_per_event, 0),
            figure(row.disk_bytes_per_event, 0),
            figure(row.syncs_per_s, 0),
            figure(row.requests_per_sync, 1),
            figure(row.commit_ms, 2),
        );
    }
    println!(
        "\nlog B/ev: appended to the log, framing included; index B/ev: growth of weft.sqlite* \
         per record indexed; disk B/ev: what the process had the kernel write (/proc/<pid>/io \
         write_bytes: log, index, WAL and checkpoints); commit: one group's framing, write and \
         fdatasync.\n\
         CPU us/ev and server CPU (% of one core) are over the measured window; loadgen CPU over \
         its whole run."
    );

    for row in rows.iter().filter(|r| r.kind == Kind::Weft) {
        let seconds = |records: f64| {
            if row.events_per_s > 0.0 {
                format!("{:.2} s", records / row.events_per_s)
            } else {
                "n/a".to_owned()
            }
        };
        match row.lag_records {
            Some((at_end, later)) => println!(
                "weft index lag at {} connections: {at_end:.0} records ({} of ingest) when the \
                 load stopped, {later:.0} records ({}) {} s later (indexing them is not in CPU \
                 us/ev)",
                row.connections,
                seconds(at_end),
                seconds(later),
                LAG_RECHECK.as_secs(),
            ),
            None => println!(
                "weft index lag at {} connections: n/a (/metrics unread)",
                row.connections
            ),
        }
    }

    println!();
    let mut below = Vec::new();
    for &connections in &options.connections {
        let events = |kind: Kind| {
            rows.iter()
                .find(|r| r.kind == kind && r.connections == connections)
                .map_or(f64::NAN, |r| r.events_per_s)
        };
        let weft = events(Kind::Weft);
        let to_limit = weft / events(Kind::Limit);
        let to_bare = weft / events(Kind::Bare);
        let verdict = if to_limit >= TARGET_RATIO {
            "meets"
        } else {
            below.push(connections.to_string());
            "BELOW"
        };
        println!(
            "{connections:>4} connections: events/s weft / durable limit {to_limit:.2} \
             (target >= {TARGET_RATIO}: {verdict}); weft / bare hyper {to_bare:.2}"
        );
    }
    if below.is_empty() {
        println!(
            "verdict: weft meets the target (>= {TARGET_RATIO} x the durable limit) at every connection count"
        );
    } else {
        println!(
            "verdict: weft is BELOW the target (>= {TARGET_RATIO} x the durable limit) at {} \
             connections",
            below.join(" and ")
        );
    }
}

/// `value` with `decimals` decimals, or `-` when there is none.
fn figure(value: Option<f64>, decimals: usize) -> String {
    match value {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "-".to_owned(),
    }
}

// ---------------------------------------------------------------------------
// bench identity

/// What `bench identity` is asked for.
struct IdentityOptions {
    people: u64,
    seed: u64,
    connections: u64,
    lookups: u64,
}

fn parse_identity_options(args: &[String]) -> Result<IdentityOptions, String> {
    let mut options = IdentityOptions {
        people: 100_000,
        seed: 1,
        connections: 32,
        lookups: 20_000,
    };
    let mut rest = args.iter();
    while let Some(flag) = rest.next() {
        let slot = match flag.as_str() {
            "--people" => &mut options.people,
            "--seed" => &mut options.seed,
            "--connections" => &mut options.connections,
            "--lookups" => &mut options.lookups,
            other => return Err(format!("bench identity: unknown flag {other}")),
        };
        let value = rest
            .next()
            .ok_or_else(|| format!("bench identity: {flag} needs a value"))?;
        *slot = value
            .parse()
            .map_err(|e| format!("bench identity: {flag} {value}: {e}"))?;
    }
    if !(1..=2_000_000).contains(&options.people) {
        return Err("bench identity: --people must be 1..=2000000".into());
    }
    if !(1..=1024).contains(&options.connections) {
        return Err("bench identity: --connections must be 1..=1024".into());
    }
    if !(1..=10_000_000).contains(&options.lookups) {
        return Err("bench identity: --lookups must be 1..=10000000".into());
    }
    Ok(options)
}

/// `cargo xtask bench identity`: one collector, loaded by
/// `weft-loadgen identity`.
fn identity(root: &Path, args: &[String]) -> Result<(), String> {
    let options = parse_identity_options(args)?;
    build(root)?;
    let release = root.join("target/release");
    let loadgen = release.join("weft-loadgen");
    let data_dir = TempDir::create(root)?;
    eprintln!("\n==> bench identity: {} people", options.people);
    let mut server = Server::start(
        collector_command(&release, &data_dir.0),
        "weft (durable)",
        COLLECTOR_ADDRESS_PREFIX,
    )?;
    let started = Instant::now();
    let mut command = Command::new(&loadgen);
    command
        .arg("identity")
        .arg(&server.address)
        .args(["--people", &options.people.to_string()])
        .args(["--seed", &options.seed.to_string()])
        .args(["--connections", &options.connections.to_string()])
        .args(["--lookups", &options.lookups.to_string()])
        .args(["--write-key", WRITE_KEY, "--admin-token", ADMIN_TOKEN])
        .args(["--server-pid", &server.pid().to_string()])
        .stderr(Stdio::inherit());
    let figures = summary_line(command, &loadgen);
    let wall = started.elapsed();
    let peak_rss_kb = peak_rss_kb(server.pid());
    let size_running = dir_size(&data_dir.0);
    server.stop()?;
    let size_stopped = dir_size(&data_dir.0);
    drop(data_dir);
    let figures = figures?;
    let peak_rss_kb =
        peak_rss_kb.ok_or("weft (durable): cannot read VmHWM from /proc/<pid>/status")?;
    let field = |name: &str| {
        json_number(&figures, name)
            .ok_or_else(|| format!("no `{name}` in the load generator's summary"))
    };
    let messages = field("messages")?;
    let checks = field("spot_checks")?;
    let checks_passed = field("spot_checks_passed")?;
    let checks_planned = field("spot_checks_planned")?;
    let lost = field("lost_messages")?;
    let ingest_non_200 = field("non_200")?;
    let query_non_200 = field("query_non_200")?;
    let rejected = field("rejected")?;
    let mb = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);

    println!(
        "\nbench identity: {} people (seed {}): {messages:.0} messages ({:.0} own + {:.0} shared \
         devices, {:.0} people aliased), {:.0} per batch over {} connections, delivered out of \
         order; then profile lookups of random IDs over {:.0} connections; loopback, {} cores \
         shared with the load generator; {:.0} s in all\n",
        options.people,
        options.seed,
        field("own_devices")?,
        field("shared_devices")?,
        field("aliased_people")?,
        field("batch_size")?,
        options.connections,
        field("query_connections")?,
        std::thread::available_parallelism().map_or(0, usize::from),
        wall.as_secs_f64(),
    );
    println!(
        "{:>9} {:>9} {:>13} {:>13} {:>8} {:>9} {:>8} {:>8} {:>14} {:>12} {:>12} {:>12}",
        "messages",
        "ingest s",
        "ingest msg/s",
        "batch p99 ms",
        "lookups",
        "p50 ms",
        "p99 ms",
        "max ms",
        "non-200 in/q",
        "spot checks",
        "peak RSS MB",
        "data dir MB",
    );
    println!(
        "{:>9.0} {:>9.1} {:>13.0} {:>13.2} {:>8.0} {:>9.2} {:>8.2} {:>8.2} {:>14} {:>12} {:>12.1} {:>12.1}",
        messages,
        field("ingest_s")?,
        field("messages_per_s")?,
        field("batch_p99_ms")?,
        field("lookups")?,
        field("p50_ms")?,
        field("p99_ms")?,
        field("max_ms")?,
        format!("{ingest_non_200:.0}/{query_non_200:.0}"),
        format!("{checks_passed:.0}/{checks_planned:.0}"),
        peak_rss_kb as f64 / 1024.0,
        mb(size_stopped.allocated),
    );
    let percent = |name: &str| {
        json_number(&figures, name)
            .map_or_else(|| "n/a".to_owned(), |c| format!("{:.0}%", c * 100.0))
    };
    println!(
        "\nlatencies: profile p50/p99/max are of GET /v1/profiles/{{id}} ({:.0} lookups/s, {:.1} s); \
         batch p99 is of POST /v1/batch (20 messages, durable before the answer).\n\
         CPU (% of one core): collector {} while ingesting, {} while looking up; \
         load generator {} / {}.\n\
         data dir: {:.1} MB on disk ({:.1} MB of content) after the collector stopped, \
         {:.1} MB while it ran (WAL included).",
        field("lookups_per_s")?,
        field("query_s")?,
        percent("ingest_server_cores"),
        percent("query_server_cores"),
        percent("ingest_loadgen_cores"),
        percent("query_loadgen_cores"),
        mb(size_stopped.allocated),
        mb(size_stopped.apparent),
        mb(size_running.allocated),
    );
    let rate = field("messages_per_s")?;
    let verdict = |ok: bool| if ok { "met" } else { "NOT MET" };
    println!(
        "\ntargets: ingest {rate:.0} msg/s (>= 100000: {}); lookups p99 {:.2} ms (< 5 ms: {}); \
         spot checks {checks_passed:.0}/{checks_planned:.0}",
        verdict(rate >= 100_000.0),
        field("p99_ms")?,
        verdict(field("p99_ms")? < 5.0),
    );
    match (
        json_number(&figures, "start_messages_per_s"),
        json_number(&figures, "end_messages_per_s"),
    ) {
        (Some(start), Some(end)) if start > 0.0 => println!(
            "ingest rate over the first fifth of the messages {start:.0} msg/s, over the last \
             fifth {end:.0} msg/s: end / start {:.2} (within 20%: {})",
            end / start,
            verdict(end >= 0.8 * start),
        ),
        _ => println!("ingest rate at start and end: not measured (the ingest was too short)"),
    }
    if ingest_non_200 > 0.0 {
        println!(
            "ingest non-200 by kind: {}",
            json_object(&figures, "errors").unwrap_or_default()
        );
    }
    if query_non_200 > 0.0 {
        println!(
            "lookup non-200 by kind: {}",
            json_object(&figures, "query_errors").unwrap_or_default()
        );
    }
    if rejected > 0.0 {
        println!("{rejected:.0} messages were rejected by validation");
    }
    if lost > 0.0 || checks_passed < checks || checks < checks_planned {
        return Err(format!(
            "bench identity: {lost:.0} messages never acknowledged; spot checks {checks_passed:.0} \
             passed of {checks:.0} run ({checks_planned:.0} planned); see the load generator's \
             stderr above"
        ));
    }
    Ok(())
}

/// Bytes of the files under a directory: their lengths and the disk
/// blocks allocated to them.
#[derive(Default)]
struct DirSize {
    apparent: u64,
    allocated: u64,
}

fn dir_size(dir: &Path) -> DirSize {
    use std::os::unix::fs::MetadataExt as _;
    let mut size = DirSize::default();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.is_dir() {
                pending.push(entry.path());
            } else {
                size.apparent += meta.len();
                size.allocated += meta.blocks() * 512;
            }
        }
    }
    size
}

// ---------------------------------------------------------------------------
// Temporary data directory

/// A fresh directory under `target/`, removed when dropped.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn create(root: &Path) -> Result<Self, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = root
            .join("target")
            .join(format!("bench-data-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("cannot remove {}: {e}", self.0.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_summary_line() {
        let line = r#"{"events_per_s":1234.5,"non_200":3,"errors":{"503":2,"io":1},"p99_ms":12.0}"#;
        assert_eq!(json_number(line, "events_per_s"), Some(1234.5));
        assert_eq!(json_number(line, "non_200"), Some(3.0));
        assert_eq!(json_number(line, "p99_ms"), Some(12.0));
        assert_eq!(json_number(line, "missing"), None);
        assert_eq!(
            json_object(line, "errors").as_deref(),
            Some(r#"{"503":2,"io":1}"#)
        );
    }

    #[test]
    fn identity_options_have_defaults_and_bounds() {
        let o = parse_identity_options(&[]).unwrap();
        assert_eq!(
            (o.people, o.seed, o.connections, o.lookups),
            (100_000, 1, 32, 20_000)
        );
        let o = parse_identity_options(&["--people".into(), "5000".into()]).unwrap();
        assert_eq!(o.people, 5_000);
        assert!(parse_identity_options(&["--people".into(), "0".into()]).is_err());
        assert!(parse_identity_options(&["--people".into()]).is_err());
        assert!(parse_identity_options(&["--seconds".into(), "5".into()]).is_err());
    }

    #[test]
    fn sdk_options_have_defaults_and_bounds() {
        let o = parse_sdk_options(&[]).unwrap();
        assert_eq!(
            o,
            SdkOptions {
                rounds: 20,
                calls: 1000
            }
        );
        let o = parse_sdk_options(&["--rounds".into(), "5".into()]).unwrap();
        assert_eq!((o.rounds, o.calls), (5, 1000));
        assert!(parse_sdk_options(&["--rounds".into(), "1".into()]).is_err());
        assert!(parse_sdk_options(&["--calls".into()]).is_err());
        assert!(parse_sdk_options(&["--seconds".into(), "5".into()]).is_err());
    }

    #[test]
    fn options_have_defaults_and_bounds() {
        let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse_options(&[]).unwrap(),
            Options {
                seconds: 10,
                connections: vec![32, 256],
                warmup: 2
            }
        );
        // `--connections N` runs that count only.
        let o = parse_options(&args(&["--seconds", "5", "--connections", "8"])).unwrap();
        assert_eq!((o.seconds, o.connections, o.warmup), (5, vec![8], 2));
        let o = parse_options(&args(&["--warmup", "0", "--connections", "1024"])).unwrap();
        assert_eq!((o.connections, o.warmup), (vec![1024], 0));
        for bad in [
            &["--seconds", "500"][..],
            &["--seconds", "0"],
            &["--connections", "0"],
            &["--connections", "1025"],
            &["--connections", "many"],
            &["--warmup", "61"],
            &["--warmup"],
            &["--nope"],
        ] {
            assert!(parse_options(&args(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn reads_prometheus_samples_and_http_answers() {
        let text = "# HELP weft_commits_total Group commits.\n# TYPE weft_commits_total counter\n\
                    weft_commits_total 42\nweft_commits_total_other 7\n\
                    weft_events_rejected_total{reason=\"x\"} 3\nweft_commit_seconds_sum 1.5\n";
        assert_eq!(metric(text, "weft_commits_total"), Some(42.0));
        assert_eq!(metric(text, "weft_commit_seconds_sum"), Some(1.5));
        assert_eq!(metric(text, "weft_events_rejected_total"), None);
        assert_eq!(metric(text, "weft_commit"), None);
        assert_eq!(figure(Some(2.345), 2), "2.35");
        assert_eq!(figure(Some(f64::NAN), 0), "-");
        assert_eq!(figure(None, 1), "-");
    }

    #[test]
    fn gets_a_page_over_plain_http() {
        use std::net::TcpListener;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            for body in ["{\"syncs\":3}", ""] {
                let (mut stream, _) = listener.accept().unwrap();
                let mut request = Vec::new();
                let mut chunk = [0u8; 1024];
                while !request.ends_with(b"\r\n\r\n") {
                    let n = stream.read(&mut chunk).unwrap();
                    assert!(n > 0, "the request ended early");
                    request.extend_from_slice(&chunk[..n]);
                }
                assert!(request.starts_with(b"GET /stats HTTP/1.1\r\n"));
                let status = if body.is_empty() {
                    "404 Not Found"
                } else {
                    "200 OK"
                };
                write!(
                    stream,
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                )
                .unwrap();
            }
        });
        assert_eq!(http_get(&address, "/stats").unwrap(), "{\"syncs\":3}");
        assert!(http_get(&address, "/stats").unwrap_err().contains("404"));
        server.join().unwrap();
    }
}
