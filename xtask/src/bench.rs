//! `cargo xtask bench collector`: ingest throughput of the collector with
//! durable storage, as a fraction of a bare hyper server's on the same
//! machine in the same run.
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
//! same properties, and request bytes per event. The SDK is built first, as
//! `cargo xtask sdk` builds it.
//!
//! Each target is started as a child process on `127.0.0.1:0`, loaded by
//! `weft-loadgen` (20-message batches of about 10 KB on keep-alive
//! connections), its peak RSS and CPU time read from `/proc/<pid>` and then
//! stopped with SIGTERM. The figures come back as the load generator's JSON
//! line, read here with a few lines of string search so xtask keeps its
//! small dependency list.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::cmd::{Step, cargo, output};

/// The ratio of collector to bare-server events/s the project aims for.
const TARGET_RATIO: f64 = 0.6;
/// How long a server may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const WRITE_KEY: &str = "wk_bench";
const ADMIN_TOKEN: &str = "bench";

/// What the bench is asked for.
struct Options {
    seconds: u64,
    connections: u64,
    warmup: u64,
}

/// `cargo xtask bench collector [--seconds S] [--connections N] [--warmup S]`,
/// `cargo xtask bench identity [--people N] [--seed S] [--connections N]
/// [--lookups N]` or `cargo xtask bench sdk [--rounds N] [--calls N]`.
pub fn run(root: &Path, args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("collector") => collector(root, &args[1..]),
        Some("identity") => identity(root, &args[1..]),
        Some("sdk") => sdk(root, &args[1..]),
        other => Err(format!(
            "unknown bench {other:?}; usage: cargo xtask bench collector \
             [--seconds S] [--connections N] [--warmup S] | cargo xtask bench identity \
             [--people N] [--seed S] [--connections N] [--lookups N] | cargo xtask bench sdk \
             [--rounds N] [--calls N]"
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
            ])
            .env("WEFT_SDK_DIR", crate::sdk::out_dir(root))
            .env("WEFT_CHROMIUM", &browser.chromium),
    )
}

/// Builds the collector and the load tools (release).
fn build(root: &Path) -> Result<(), String> {
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
fn collector_command(release: &Path, data_dir: &Path) -> Command {
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
const COLLECTOR_ADDRESS_PREFIX: &str = "weft collector listening on http://";

fn collector(root: &Path, args: &[String]) -> Result<(), String> {
    let options = parse_options(args)?;
    build(root)?;
    let release = root.join("target/release");
    let loadgen = release.join("weft-loadgen");

    let bare = Target {
        label: "bare hyper",
        command: {
            let mut c = Command::new(release.join("weft-bare-hyper"));
            c.args(["--listen", "127.0.0.1:0"]);
            c
        },
        address_prefix: "listening on ",
    };
    let bare_row = measure(bare, &loadgen, &options)?;

    let data_dir = TempDir::create(root)?;
    let weft = Target {
        label: "weft (durable)",
        command: collector_command(&release, &data_dir.0),
        address_prefix: COLLECTOR_ADDRESS_PREFIX,
    };
    let weft_row = measure(weft, &loadgen, &options)?;
    drop(data_dir);

    print_report(&options, &weft_row, &bare_row);
    Ok(())
}

fn parse_options(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        seconds: 10,
        connections: 32,
        warmup: 2,
    };
    let mut rest = args.iter();
    while let Some(flag) = rest.next() {
        let slot = match flag.as_str() {
            "--seconds" => &mut options.seconds,
            "--connections" => &mut options.connections,
            "--warmup" => &mut options.warmup,
            other => return Err(format!("bench collector: unknown flag {other}")),
        };
        let value = rest
            .next()
            .ok_or_else(|| format!("bench collector: {flag} needs a value"))?;
        *slot = value
            .parse()
            .map_err(|e| format!("bench collector: {flag} {value}: {e}"))?;
    }
    if !(1..=120).contains(&options.seconds) {
        return Err("bench collector: --seconds must be 1..=120".into());
    }
    Ok(options)
}

/// A server to measure: how to start it and how its address line begins.
struct Target {
    label: &'static str,
    command: Command,
    address_prefix: &'static str,
}

/// The figures of one target.
struct Row {
    label: &'static str,
    events_per_s: f64,
    requests_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    peak_rss_mb: f64,
    non_200: u64,
    /// Server CPU over the load generator's run, in cores (1.0 = one core).
    server_cores: f64,
    /// The load generator's CPU over its run, in cores.
    loadgen_cores: f64,
    errors: String,
}

/// Starts `target`, loads it, reads its peak RSS and stops it.
fn measure(target: Target, loadgen: &Path, options: &Options) -> Result<Row, String> {
    eprintln!("\n==> bench: {}", target.label);
    let mut server = Server::start(target.command, target.label, target.address_prefix)?;
    let cpu_before = cpu_seconds(server.pid());
    let started = Instant::now();
    let figures = run_loadgen(loadgen, &server.address, options);
    let wall = started.elapsed().as_secs_f64();
    let cpu_after = cpu_seconds(server.pid());
    let peak_rss_kb = peak_rss_kb(server.pid());
    server.stop()?;
    let figures = figures?;
    let peak_rss_kb = peak_rss_kb.ok_or_else(|| {
        format!(
            "{}: cannot read VmHWM from /proc/<pid>/status",
            target.label
        )
    })?;
    let server_cores = match (cpu_before, cpu_after) {
        (Some(a), Some(b)) if wall > 0.0 => (b - a) / wall,
        _ => f64::NAN,
    };
    let field = |name: &str| {
        json_number(&figures, name).ok_or_else(|| {
            format!(
                "{}: no `{name}` in the load generator's summary",
                target.label
            )
        })
    };
    Ok(Row {
        label: target.label,
        events_per_s: field("events_per_s")?,
        requests_per_s: field("requests_per_s")?,
        p50_ms: field("p50_ms")?,
        p99_ms: field("p99_ms")?,
        peak_rss_mb: peak_rss_kb as f64 / 1024.0,
        non_200: field("non_200")? as u64,
        server_cores,
        loadgen_cores: json_number(&figures, "cpu_s").map_or(f64::NAN, |cpu| cpu / wall),
        errors: json_object(&figures, "errors").unwrap_or_default(),
    })
}

/// Runs the load generator against `address`; returns its JSON line.
fn run_loadgen(loadgen: &Path, address: &str, options: &Options) -> Result<String, String> {
    let mut command = Command::new(loadgen);
    command
        .arg(address)
        .args(["--seconds", &options.seconds.to_string()])
        .args(["--connections", &options.connections.to_string()])
        .args(["--warmup", &options.warmup.to_string()])
        .args(["--write-key", WRITE_KEY])
        .stderr(Stdio::inherit());
    summary_line(command, loadgen)
}

/// Runs the load generator `command` (`loadgen` is its path) and returns
/// the JSON summary line it printed last.
fn summary_line(mut command: Command, loadgen: &Path) -> Result<String, String> {
    let out = command
        .output()
        .map_err(|e| format!("cannot start {}: {e}", loadgen.display()))?;
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

// ---------------------------------------------------------------------------
// The server child process

/// A server child process; stopped (and, failing that, killed) when dropped.
struct Server {
    child: Option<Child>,
    label: &'static str,
    address: String,
}

impl Server {
    /// Starts `command` with stdout piped and waits for its address line.
    fn start(
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

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends SIGTERM to this child and waits; kills it after
    /// [`STOP_TIMEOUT`].
    fn stop(&mut self) -> Result<(), String> {
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
fn cpu_seconds(pid: u32) -> Option<f64> {
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

// ---------------------------------------------------------------------------
// Reading the summary line

/// The number after `"name":` in a flat JSON text.
fn json_number(json: &str, name: &str) -> Option<f64> {
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

fn print_report(options: &Options, weft: &Row, bare: &Row) {
    println!(
        "\nbench collector: {} s measured after {} s warm-up, {} connections, \
         20 events (~10 KB) per request, loopback, {} cores shared with the load generator\n",
        options.seconds,
        options.warmup,
        options.connections,
        std::thread::available_parallelism().map_or(0, usize::from),
    );
    println!(
        "{:<16} {:>10} {:>9} {:>8} {:>8} {:>13} {:>8} {:>11} {:>12}",
        "target",
        "events/s",
        "req/s",
        "p50 ms",
        "p99 ms",
        "peak RSS MB",
        "non-200",
        "server CPU",
        "loadgen CPU"
    );
    for row in [weft, bare] {
        println!(
            "{:<16} {:>10.0} {:>9.0} {:>8.2} {:>8.2} {:>13.1} {:>8} {:>10.0}% {:>11.0}%",
            row.label,
            row.events_per_s,
            row.requests_per_s,
            row.p50_ms,
            row.p99_ms,
            row.peak_rss_mb,
            row.non_200,
            row.server_cores * 100.0,
            row.loadgen_cores * 100.0,
        );
    }
    for row in [weft, bare] {
        if row.non_200 > 0 {
            println!("{}: non-200 by kind: {}", row.label, row.errors);
        }
    }
    let ratio = if bare.events_per_s > 0.0 {
        weft.events_per_s / bare.events_per_s
    } else {
        f64::NAN
    };
    let verdict = if ratio >= TARGET_RATIO {
        "meets"
    } else {
        "below"
    };
    println!(
        "\nratio events/s weft / bare hyper: {ratio:.2} (target >= {TARGET_RATIO}: {verdict})\n\
         CPU is % of one core over the load generator's run (warm-up included)."
    );
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
struct TempDir(PathBuf);

impl TempDir {
    fn create(root: &Path) -> Result<Self, String> {
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
        let o = parse_options(&[]).unwrap();
        assert_eq!((o.seconds, o.connections, o.warmup), (10, 32, 2));
        let args: Vec<String> = ["--seconds", "5", "--connections", "8"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let o = parse_options(&args).unwrap();
        assert_eq!((o.seconds, o.connections), (5, 8));
        assert!(parse_options(&["--seconds".into(), "500".into()]).is_err());
        assert!(parse_options(&["--nope".into()]).is_err());
    }
}
