//! `cargo xtask bench destinations [--seconds S]`: what delivery costs and
//! how fast it is.
//!
//! `bench collector`'s load (32 connections) runs on weft without
//! destinations, then on weft with two webhook destinations to a local
//! receiver, in the same run. Reported: the ingest rate of each and the
//! drop; events delivered per second during the measured window; the
//! end-to-end latency of delivered events (the collector's `receivedAt`,
//! taken when it answers the ingest request, to their arrival at the
//! receiver), p50 and p99; and, once the load stops, how long the backlog
//! takes to drain.
//!
//! The receiver runs in this process: plain HTTP/1.1 on loopback, one
//! thread per connection (each destination keeps one), answering 200.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::bench::{
    COLLECTOR_ADDRESS_PREFIX, Kind, Row, Target, TempDir, build, collector_command, measure,
    parse_options,
};
use crate::segments_bench::http_put;

/// Destinations attached in the second run.
const DESTINATIONS: usize = 2;
/// Longest wait for the backlog after the load.
const DRAIN_BOUND: Duration = Duration::from_secs(120);

/// What the receiver saw: per event, when it arrived and its latency (ms).
#[derive(Default)]
struct Seen {
    events: Vec<(Instant, f64)>,
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

/// `2026-12-02T10:00:00.123Z` as Unix ms.
fn parse_ms(t: &str) -> Option<f64> {
    let b = t.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let n = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (h, mi, s) = (n(11..13)?, n(14..16)?, n(17..19)?);
    let ms = if b[19] == b'.' {
        n(20..23).unwrap_or(0)
    } else {
        0
    };
    // Days from the civil date (proleptic Gregorian).
    let (y2, m2) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * m2 + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + h * 3600 + mi * 60 + s) * 1000 + ms) as f64)
}

/// Starts the receiver; answers its address.
fn receiver(seen: Arc<Mutex<Seen>>) -> Result<SocketAddr, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    std::thread::spawn(move || {
        for stream in listener.incoming().take(10_000) {
            let Ok(stream) = stream else { continue };
            let seen = seen.clone();
            std::thread::spawn(move || serve(stream, &seen));
        }
    });
    Ok(addr)
}

fn serve(stream: TcpStream, seen: &Mutex<Seen>) {
    let Ok(read) = stream.try_clone() else { return };
    let mut reader = BufReader::new(read);
    let mut writer = stream;
    let mut line = String::new();
    for _ in 0..10_000_000 {
        let mut length = 0usize;
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let (at, now) = (Instant::now(), now_ms());
        let text = std::str::from_utf8(&body).unwrap_or("");
        // Every event counts; the latency of one in eight is measured (the
        // receiver shares the cores with the collector it measures).
        let latencies: Vec<f64> = text
            .match_indices("\"receivedAt\":\"")
            .enumerate()
            .map(|(n, (i, m))| {
                if n % 8 == 0 {
                    parse_ms(&text[i + m.len()..]).map_or(f64::NAN, |t| now - t)
                } else {
                    f64::NAN
                }
            })
            .collect();
        seen.lock()
            .unwrap_or_else(|e| e.into_inner())
            .events
            .extend(latencies.into_iter().map(|l| (at, l)));
        if writer
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .is_err()
        {
            return;
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// This process's CPU time so far (user + system), in seconds.
fn own_cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 (11 and 12 after the name);
    // the kernel's USER_HZ is 100 on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

/// `cargo xtask bench destinations`.
pub fn run(root: &Path, args: &[String]) -> Result<(), String> {
    let mut rest = args.to_vec();
    rest.extend(["--connections".into(), "32".into()]);
    let options = parse_options(&rest)?;
    build(root)?;
    let release = root.join("target/release");
    let loadgen = release.join("weft-loadgen");
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let at = receiver(seen.clone())?;

    let mut rows: Vec<Row> = Vec::new();
    let mut window = (Instant::now(), Instant::now());
    let mut drained = None;
    let mut sent_total = 0.0;
    let mut receiver_cpu = 0.0;
    for with in [false, true] {
        let data_dir = TempDir::create(root)?;
        let setup = move |address: &str| -> Result<(), String> {
            for d in 0..DESTINATIONS {
                let body = format!(
                    r#"{{"kind":"webhook","url":"http://{at}/d{d}","secret":"whsec_YmVuY2gtc2VjcmV0LWJlbmNoLXNlY3JldA==","batch_size":100,"max_age_ms":200}}"#
                );
                let (status, _) = http_put(address, &format!("/v1/destinations/d{d}"), &body)?;
                if status != 200 {
                    return Err(format!("PUT destination d{d}: {status}"));
                }
            }
            Ok(())
        };
        // After the load: the backlog drains before the server stops (no
        // new event for a second, within a bound).
        let drained_seen = seen.clone();
        let drain = move |_: &str| -> Result<(), String> {
            let seen = &drained_seen;
            let started = Instant::now();
            let mut last = (usize::MAX, Instant::now());
            while started.elapsed() < DRAIN_BOUND {
                let n = seen.lock().unwrap_or_else(|e| e.into_inner()).events.len();
                if n != last.0 {
                    last = (n, Instant::now());
                } else if last.1.elapsed() > Duration::from_secs(2) {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(format!("deliveries still arriving after {DRAIN_BOUND:?}"))
        };
        let target = Target {
            kind: Kind::Weft,
            command: collector_command(&release, &data_dir.0),
            address_prefix: COLLECTOR_ADDRESS_PREFIX,
            data_dir: &data_dir.0,
            setup: with.then_some(&setup as &crate::bench::Setup),
            after_load: with.then_some(&drain as &crate::bench::Setup),
        };
        eprintln!(
            "\n==> bench destinations: weft with {} destinations",
            if with { DESTINATIONS } else { 0 }
        );
        let started = Instant::now();
        let cpu_before = own_cpu_s();
        let row = measure(target, &loadgen, &options, 32)?;
        if with {
            receiver_cpu = own_cpu_s() - cpu_before;
        }
        if with {
            window = (
                started + Duration::from_secs(options.warmup),
                started + Duration::from_secs(options.warmup + options.seconds),
            );
            sent_total = row.events_per_s * (options.warmup + options.seconds) as f64;
            let last = seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .events
                .last()
                .map(|(t, _)| *t);
            drained = last.map(|t| t.saturating_duration_since(window.1));
        }
        rows.push(row);
    }

    let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    let in_window: Vec<f64> = seen
        .events
        .iter()
        .filter(|(t, _)| *t >= window.0 && *t < window.1)
        .map(|(_, l)| *l)
        .collect();
    let mut sorted: Vec<f64> = in_window.iter().copied().filter(|l| !l.is_nan()).collect();
    sorted.sort_by(f64::total_cmp);
    let secs = (window.1 - window.0).as_secs_f64();
    let delivered_per_s = in_window.len() as f64 / secs / DESTINATIONS as f64;
    let (without, with) = (&rows[0], &rows[1]);
    let drop = 1.0 - with.events_per_s / without.events_per_s;
    println!(
        "\nbench destinations: {} s measured after {} s warm-up, 32 connections; two webhook \
         destinations (batches of 100, max age 200 ms) to a receiver in this process; \
         loopback, {} cores shared by everything\n",
        options.seconds,
        options.warmup,
        std::thread::available_parallelism().map_or(0, usize::from),
    );
    println!(
        "{:<26} {:>10} {:>8} {:>8} {:>10} {:>8} {:>9}",
        "weft", "events/s", "p50 ms", "p99 ms", "CPU us/ev", "server", "RSS MB"
    );
    for (label, r) in [("no destinations", without), ("2 destinations", with)] {
        println!(
            "{:<26} {:>10.0} {:>8.2} {:>8.2} {:>10.1} {:>7.0}% {:>9.1}",
            label,
            r.events_per_s,
            r.p50_ms,
            r.p99_ms,
            r.cpu_us_per_event,
            r.server_cores * 100.0,
            r.peak_rss_mb
        );
    }
    println!(
        "\ningest with {DESTINATIONS} destinations: {:.1}% below without",
        drop * 100.0
    );
    println!(
        "delivered during the window: {delivered_per_s:.0} events/s per destination \
         (ingest {:.0} events/s), end-to-end latency p50 {:.0} ms, p99 {:.0} ms ({} deliveries)",
        with.events_per_s,
        percentile(&sorted, 0.50),
        percentile(&sorted, 0.99),
        in_window.len()
    );
    let total = seen.events.len() as f64 / DESTINATIONS as f64;
    println!(
        "the receiver (in this process) used {:.1} us of CPU per delivered event, on the same cores",
        receiver_cpu * 1e6 / seen.events.len().max(1) as f64
    );
    println!(
        "delivered in all: {total:.0} events per destination of about {sent_total:.0} ingested; \
         the last arrived {:.1} s after the window ended",
        drained.map_or(f64::NAN, |d| d.as_secs_f64())
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_at_parses_to_unix_ms() {
        assert_eq!(parse_ms("1970-01-01T00:00:00.000Z"), Some(0.0));
        assert_eq!(
            parse_ms("2026-12-02T10:00:00.123Z\""),
            Some(1_796_205_600_123.0)
        );
        assert_eq!(parse_ms("2024-02-29T23:59:59Z"), Some(1_709_251_199_000.0));
        assert_eq!(parse_ms("nope"), None);
    }
}
