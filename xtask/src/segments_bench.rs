//! `cargo xtask bench segments [--seconds S] [--people N] [--rounds R]`: what real-time
//! segments cost.
//!
//! 1. Ingest: `bench collector`'s load (32 connections, `Product Viewed`
//!    tracks over 5,000 devices) on weft without segments, then on weft
//!    with 50 active segments of mixed kinds (traits, event counts with and
//!    without property filters and windows, consent, segment references,
//!    all/any/not), in the same run: R rounds (3 by default) in alternating
//!    order, each a pair. Target: the median of the pairs' drops is less
//!    than [`MAX_DROP`]. Reports the evaluation cost per event (the
//!    server CPU per event added) and per segment.
//! 2. Recompute: the identity bench's history (`weft-loadgen identity`,
//!    100,000 people by default) is ingested, then a new rule is put; the
//!    time until its status is `ready` must be under [`MAX_RECOMPUTE`].

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::bench::{
    ADMIN_TOKEN, COLLECTOR_ADDRESS_PREFIX, Kind, Row, Server, Setup, Target, TempDir, WRITE_KEY,
    build, collector_command, cpu_seconds, json_number, measure, parse_options, summary_line,
};

/// Largest acceptable fall of the ingest rate with 50 segments: the
/// issue's 20%, tightened to what was reached (medians of 5.0-10.0% in
/// three full runs) and a margin for this VM's noise.
const MAX_DROP: f64 = 0.15;
/// Longest acceptable recompute of one rule over the identity history:
/// the issue's 10 s, tightened to what was reached (4.4 s) and a margin.
const MAX_RECOMPUTE: Duration = Duration::from_secs(6);
/// Segments defined for the ingest run.
const SEGMENTS: usize = 50;

/// Segment `i`'s rule: ten kinds in turn.
fn rule(i: usize) -> String {
    match i % 10 {
        0 => r#"{"trait":"plan","op":"eq","value":"pro"}"#.to_owned(),
        1 => format!(r#"{{"event":"Product Viewed","within":"{}d"}}"#, i + 1),
        2 => format!(
            r#"{{"event":"Product Viewed","where":[{{"property":"category","op":"eq","value":"Accessories"}}],"count":{{"op":"gte","value":{}}}}}"#,
            i % 7 + 2
        ),
        3 => r#"{"event":"Order Completed","within":"30d"}"#.to_owned(),
        4 => r#"{"consent":"marketing"}"#.to_owned(),
        5 => r#"{"all":[{"event":"Product Viewed","within":"7d"},{"not":{"event":"Order Completed","within":"7d"}}]}"#.to_owned(),
        6 => r#"{"any":[{"trait":"ltv","op":"gte","value":1000},{"event":"Product Viewed","where":[{"property":"price","op":"gt","value":40}],"count":{"op":"gte","value":5}}]}"#.to_owned(),
        7 => r#"{"trait":"email","op":"contains","value":"@example.com"}"#.to_owned(),
        8 => format!(r#"{{"segment":"s{:02}"}}"#, i - 8),
        _ => format!(r#"{{"not":{{"segment":"s{:02}"}}}}"#, i - 8),
    }
}

/// `PUT path` with the admin token: the status and body.
pub(crate) fn http_put(address: &str, path: &str, body: &str) -> Result<(u16, String), String> {
    let fail = |e: std::io::Error| format!("PUT http://{address}{path}: {e}");
    let mut stream = std::net::TcpStream::connect(address).map_err(fail)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(fail)?;
    let request = format!(
        "PUT {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\
         Authorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).map_err(fail)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).map_err(fail)?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_owned()))
}

/// `GET path` with the admin token (the bench's `http_get` sends none).
fn admin_get(address: &str, path: &str) -> Result<String, String> {
    let fail = |e: std::io::Error| format!("GET http://{address}{path}: {e}");
    let mut stream = std::net::TcpStream::connect(address).map_err(fail)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(fail)?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\
         Authorization: Bearer {ADMIN_TOKEN}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).map_err(fail)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).map_err(fail)?;
    let response = String::from_utf8_lossy(&response);
    Ok(response
        .split_once("\r\n\r\n")
        .map_or_else(String::new, |(_, b)| b.to_owned()))
}

/// Puts `segments` rules and waits (bounded) until every one is ready.
fn define(address: &str, segments: usize) -> Result<(), String> {
    for i in 0..segments {
        let body = format!(r#"{{"name":"segment {i}","rule":{}}}"#, rule(i));
        let (status, answer) = http_put(address, &format!("/v1/segments/s{i:02}"), &body)?;
        if status != 200 {
            return Err(format!("PUT segment s{i:02}: {status} {answer}"));
        }
    }
    wait_ready(address, Duration::from_secs(60)).map(drop)
}

/// Waits until no segment is computing; answers how long it took.
fn wait_ready(address: &str, bound: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    loop {
        let list = admin_get(address, "/v1/segments")?;
        if !list.contains("\"computing\"") {
            return Ok(started.elapsed());
        }
        if started.elapsed() > bound {
            return Err(format!("segments still computing after {bound:?}: {list}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `cargo xtask bench segments`.
pub fn run(root: &Path, args: &[String]) -> Result<(), String> {
    let mut people = 100_000u32;
    let mut rounds = 3usize;
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--people" {
            people = it
                .next()
                .and_then(|v| v.parse().ok())
                .filter(|n| (1..=2_000_000).contains(n))
                .ok_or("bench segments: --people needs 1..=2000000")?;
        } else if a == "--rounds" {
            rounds = it
                .next()
                .and_then(|v| v.parse().ok())
                .filter(|n| (1..=9).contains(n))
                .ok_or("bench segments: --rounds needs 1..=9")?;
        } else {
            rest.push(a.clone());
        }
    }
    rest.extend(["--connections".into(), "32".into()]);
    let options = parse_options(&rest)?;
    build(root)?;
    let release = root.join("target/release");
    let loadgen = release.join("weft-loadgen");

    // 1. Ingest without and with segments, same run, in rounds whose order
    // alternates (without, with; with, without; ...): on this shared VM the
    // rate drifts by tens of percent over a minute, and one pair measured
    // in one order takes that drift for the segments' cost.
    let mut pairs: Vec<(Row, Row)> = Vec::new();
    for round in 0..rounds {
        let mut without = None;
        let mut with_segments = None;
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for with in order {
            let data_dir = TempDir::create(root)?;
            let setup = |address: &str| define(address, SEGMENTS);
            let target = Target {
                kind: Kind::Weft,
                command: collector_command(&release, &data_dir.0),
                address_prefix: COLLECTOR_ADDRESS_PREFIX,
                data_dir: &data_dir.0,
                setup: with.then_some(&setup as &Setup),
                after_load: None,
            };
            eprintln!(
                "\n==> bench segments: round {} of {rounds}, weft with {} segments",
                round + 1,
                if with { SEGMENTS } else { 0 }
            );
            let row = measure(target, &loadgen, &options, 32)?;
            if with {
                with_segments = Some(row);
            } else {
                without = Some(row);
            }
        }
        if let (Some(a), Some(b)) = (without, with_segments) {
            pairs.push((a, b));
        }
    }

    // 2. A recompute over the identity history.
    let data_dir = TempDir::create(root)?;
    let mut server = Server::start(
        collector_command(&release, &data_dir.0),
        "weft (durable)",
        COLLECTOR_ADDRESS_PREFIX,
    )?;
    eprintln!("\n==> bench segments: recompute over {people} people");
    let mut ingest = Command::new(&loadgen);
    ingest
        .arg("identity")
        .arg(&server.address)
        .args(["--people", &people.to_string()])
        .args(["--lookups", "1"])
        .args(["--write-key", WRITE_KEY, "--admin-token", ADMIN_TOKEN])
        .args(["--server-pid", &server.pid().to_string()]);
    let figures = summary_line(ingest, &loadgen)?;
    let messages = json_number(&figures, "ok_messages").unwrap_or(f64::NAN);
    let recompute_rule = r#"{"any":[{"all":[{"trait":"plan","op":"eq","value":"pro"},{"event":"Page Viewed","count":{"op":"gte","value":2}}]},{"event":"Signed Up"},{"not":{"consent":"marketing"}}]}"#;
    let cpu_before = cpu_seconds(server.pid());
    let started = Instant::now();
    let (status, answer) = http_put(
        &server.address,
        "/v1/segments/recompute",
        &format!(r#"{{"name":"recompute","rule":{recompute_rule}}}"#),
    )?;
    if status != 200 {
        return Err(format!("PUT the recompute segment: {status} {answer}"));
    }
    let took = wait_ready(&server.address, Duration::from_secs(600))?
        .max(started.elapsed().min(Duration::from_secs(600)));
    // Beside the time: what the collector's threads used of the CPU
    // meanwhile, which does not grow when the VM gives it less.
    let cpu = cpu_seconds(server.pid())
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    let segment = admin_get(&server.address, "/v1/segments/recompute")?;
    let size = json_number(&segment, "size").unwrap_or(f64::NAN);
    server.stop()?;

    // The report: every round, then the median of the rounds' drops (a
    // pair is one measurement of the drop; the median is not moved by
    // one round the VM disturbed).
    println!(
        "\nbench segments: {} s measured after {} s warm-up, 32 connections, `Product Viewed` \
         tracks over 5,000 devices, {rounds} rounds in alternating order; loopback, {} cores \
         shared with the load generator\n",
        options.seconds,
        options.warmup,
        std::thread::available_parallelism().map_or(0, usize::from),
    );
    println!(
        "{:<24} {:>10} {:>8} {:>8} {:>10} {:>8} {:>9} {:>14}",
        "weft", "events/s", "p50 ms", "p99 ms", "CPU us/ev", "server", "RSS MB", "index lag s"
    );
    let mut drops = Vec::new();
    let mut added = Vec::new();
    for (round, (without, with)) in pairs.iter().enumerate() {
        for (label, r) in [("no segments", without), ("50 segments", with)] {
            // Behind the log when the load stopped, in seconds of ingest: an
            // index that falls behind leaves the ingest more CPU than it can
            // keep, so a rate with a growing lag is not sustained.
            let lag = r.lag_records.map_or("n/a".to_owned(), |(at_end, _)| {
                format!("{:.2}", at_end / r.events_per_s.max(1.0))
            });
            println!(
                "{:<24} {:>10.0} {:>8.2} {:>8.2} {:>10.1} {:>7.0}% {:>9.1} {:>14}",
                format!("{} {label}", round + 1),
                r.events_per_s,
                r.p50_ms,
                r.p99_ms,
                r.cpu_us_per_event,
                r.server_cores * 100.0,
                r.peak_rss_mb,
                lag
            );
        }
        let drop = 1.0 - with.events_per_s / without.events_per_s;
        println!(
            "{:<24} {:>9.1}%",
            format!("{} drop", round + 1),
            drop * 100.0
        );
        drops.push(drop);
        added.push(with.cpu_us_per_event - without.cpu_us_per_event);
    }
    let drop = median(&mut drops);
    let added_us = median(&mut added);
    println!(
        "\nevaluation cost: {added_us:.1} us of server CPU per event for {SEGMENTS} segments \
         ({:.3} us per event per segment; median of the rounds)",
        added_us / SEGMENTS as f64
    );
    println!(
        "ingest with {SEGMENTS} segments: {:.1}% below without, median of {} rounds \
         (each: {}) (target < {:.0}%: {})",
        drop * 100.0,
        drops.len(),
        drops
            .iter()
            .map(|d| format!("{:.1}%", d * 100.0))
            .collect::<Vec<_>>()
            .join(", "),
        MAX_DROP * 100.0,
        if drop < MAX_DROP { "met" } else { "NOT MET" }
    );
    println!(
        "recompute of one rule over {people} people ({messages:.0} messages): {:.2} s \
         ({} s of the collector's CPU), {size:.0} members (target < {} s: {})",
        took.as_secs_f64(),
        cpu.map_or("n/a".to_owned(), |c| format!("{c:.2}")),
        MAX_RECOMPUTE.as_secs(),
        if took < MAX_RECOMPUTE {
            "met"
        } else {
            "NOT MET"
        }
    );
    Ok(())
}

/// The median of `values` (sorted in place; NaN when empty).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}
