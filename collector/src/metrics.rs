//! Counters and histograms of what the collector did, rendered as
//! Prometheus text at `/metrics`. Names follow `weft_<thing>_total`; labels
//! are fixed codes (rejection and error codes), never message content.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// A counter per label value. Label values are `&'static str` codes, so the
/// set is small and bounded.
#[derive(Debug, Default)]
pub struct LabeledCounter(Mutex<BTreeMap<&'static str, u64>>);

impl LabeledCounter {
    /// Adds `n` under `label`.
    pub fn add(&self, label: &'static str, n: u64) {
        *self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(label)
            .or_default() += n;
    }

    /// The value under `label`.
    pub fn get(&self, label: &str) -> u64 {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(label)
            .copied()
            .unwrap_or(0)
    }

    /// Every label and its count.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.iter().map(|(k, v)| (*k, *v)).collect()
    }
}

/// A cumulative histogram of durations with fixed bucket bounds (seconds).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

/// Bucket bounds for commit latency, in seconds.
pub const COMMIT_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

impl Histogram {
    /// An empty histogram with `bounds` (ascending, seconds).
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// The upper bound of the bucket holding quantile `q` (0..1) of the
    /// observations, in seconds; `None` before any.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let want = ((q * count as f64).ceil() as u64).max(1);
        let mut cumulative = 0;
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            if cumulative >= want {
                return Some(*bound);
            }
        }
        self.bounds.last().copied()
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}.\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// What the single writer reports: how long commits take and how many
/// requests each commit carries (group commit at work).
#[derive(Debug)]
pub struct WriterStats {
    /// Time from the start of a group's transaction to its durable commit.
    pub commit_seconds: Histogram,
    /// Commits (one fsync each).
    pub commits: AtomicU64,
    /// Requests made durable, summed over commits.
    pub committed_requests: AtomicU64,
    /// Bytes appended to the event log.
    pub log_bytes: AtomicU64,
}

impl Default for WriterStats {
    fn default() -> Self {
        WriterStats {
            commit_seconds: Histogram::new(COMMIT_BUCKETS),
            commits: AtomicU64::new(0),
            committed_requests: AtomicU64::new(0),
            log_bytes: AtomicU64::new(0),
        }
    }
}

/// Ingest requests from their start to the answer (a 200 waits for the sync).
#[derive(Debug)]
pub struct RequestLatency(pub Histogram);

impl Default for RequestLatency {
    fn default() -> Self {
        RequestLatency(Histogram::new(COMMIT_BUCKETS))
    }
}

/// The collector's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Time to answer ingest requests.
    pub ingest_seconds: RequestLatency,
    /// Messages received in ingest requests that passed auth.
    pub events_received: AtomicU64,
    /// Messages stored.
    pub events_accepted: AtomicU64,
    /// Messages that failed validation (kept in the rejected store), by code.
    pub events_rejected: LabeledCounter,
    /// Messages already stored (same source and messageId).
    pub events_deduplicated: AtomicU64,
    /// Events dropped for consent, by reason (`consent_denied`,
    /// `consent_missing`); never stored.
    pub events_dropped: LabeledCounter,
    /// Events deleted by the retention sweep.
    pub events_expired: AtomicU64,
    /// Events dropped because they carry an erased (suppressed) identifier.
    pub events_suppressed: AtomicU64,
    /// Junk identifiers seen (`null`, `guest`, ...), never linked.
    pub junk_identifiers: AtomicU64,
    /// Requests answered 4xx/5xx, by error code (`overloaded` is the 503 of
    /// a full write queue, `rate_limited` the 429 of a source's limit).
    pub requests_failed: LabeledCounter,
    /// The writer's commits.
    pub writer: std::sync::Arc<WriterStats>,
}

impl Metrics {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Prometheus text exposition, with the write queue depth as a gauge.
    pub fn render(&self, gauges: Gauges) -> String {
        let Gauges {
            queue_depth,
            log_position,
            index_position,
        } = gauges;
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}.\n# TYPE {name} counter\n{name} {v}"
            );
        };
        let labeled =
            |out: &mut String, name: &str, help: &str, label: &str, c: &LabeledCounter| {
                let _ = writeln!(out, "# HELP {name} {help}.\n# TYPE {name} counter");
                for (k, v) in c.snapshot() {
                    let _ = writeln!(out, "{name}{{{label}=\"{k}\"}} {v}");
                }
            };
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            &mut out,
            "weft_events_received_total",
            "Messages received",
            load(&self.events_received),
        );
        counter(
            &mut out,
            "weft_events_accepted_total",
            "Messages stored",
            load(&self.events_accepted),
        );
        labeled(
            &mut out,
            "weft_events_rejected_total",
            "Messages that failed validation",
            "reason",
            &self.events_rejected,
        );
        counter(
            &mut out,
            "weft_events_deduplicated_total",
            "Messages already stored",
            load(&self.events_deduplicated),
        );
        labeled(
            &mut out,
            "weft_events_dropped_total",
            "Messages dropped for consent, never stored",
            "reason",
            &self.events_dropped,
        );
        counter(
            &mut out,
            "weft_events_expired_total",
            "Messages deleted by retention",
            load(&self.events_expired),
        );
        counter(
            &mut out,
            "weft_events_suppressed_total",
            "Messages dropped for carrying an erased identifier",
            load(&self.events_suppressed),
        );
        counter(
            &mut out,
            "weft_junk_identifiers_total",
            "Junk identifiers ignored for identity",
            load(&self.junk_identifiers),
        );
        labeled(
            &mut out,
            "weft_requests_failed_total",
            "Requests answered 4xx or 5xx",
            "error",
            &self.requests_failed,
        );
        counter(
            &mut out,
            "weft_commits_total",
            "Group commits (one fsync each)",
            load(&self.writer.commits),
        );
        counter(
            &mut out,
            "weft_committed_requests_total",
            "Requests made durable",
            load(&self.writer.committed_requests),
        );
        self.writer.commit_seconds.render(
            &mut out,
            "weft_commit_seconds",
            "Time to commit a group durably",
        );
        self.ingest_seconds.0.render(
            &mut out,
            "weft_ingest_request_seconds",
            "Time to answer an ingest request",
        );
        let _ = writeln!(
            out,
            "# HELP weft_write_queue_depth Requests waiting for the writer.\n\
             # TYPE weft_write_queue_depth gauge\nweft_write_queue_depth {queue_depth}"
        );
        let _ = writeln!(
            out,
            "# HELP weft_log_position Records in the event log (the next record's number).\n\
             # TYPE weft_log_position gauge\nweft_log_position {log_position}\n\
             # HELP weft_index_position Log records the index has applied (its lag is the difference).\n\
             # TYPE weft_index_position gauge\nweft_index_position {index_position}"
        );
        counter(
            &mut out,
            "weft_log_bytes_written_total",
            "Bytes appended to the event log, framing included",
            load(&self.writer.log_bytes),
        );
        out
    }
}

/// The store's gauges, read when `/metrics` is rendered.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    /// Requests waiting for the log writer.
    pub queue_depth: usize,
    /// The next log record's number: records written so far.
    pub log_position: u64,
    /// The log position the index has reached.
    pub index_position: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn histogram_is_cumulative_in_prometheus_text() {
        let h = Histogram::new(&[0.001, 0.01]);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_secs(1));
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"0.001\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.01\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count 3\n"), "{out}");
    }

    #[test]
    fn labeled_counters_render_each_label() {
        let m = Metrics::default();
        m.events_rejected.add("missing_field", 2);
        m.events_rejected.add("too_large", 1);
        let text = m.render(Gauges::default());
        assert!(text.contains("weft_events_rejected_total{reason=\"missing_field\"} 2"));
        assert!(text.contains("weft_events_rejected_total{reason=\"too_large\"} 1"));
    }
}
