//! Counters of what the collector did, rendered as Prometheus text at
//! `/metrics`. Names follow `weft_<thing>_total`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// The collector's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Messages received in ingest requests that passed auth.
    pub events_received: AtomicU64,
    /// Messages stored.
    pub events_accepted: AtomicU64,
    /// Messages that failed validation (kept in the rejected store).
    pub events_rejected: AtomicU64,
    /// Messages already stored (same source and messageId).
    pub events_deduplicated: AtomicU64,
    /// Ingest requests refused because the write queue was full.
    pub requests_overloaded: AtomicU64,
    /// Requests answered with a 4xx or 5xx.
    pub requests_failed: AtomicU64,
}

impl Metrics {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Prometheus text exposition, with the write queue depth as a gauge.
    pub fn render(&self, queue_depth: usize) -> String {
        let mut out = String::new();
        let counters = [
            (
                "weft_events_received_total",
                "Messages received",
                &self.events_received,
            ),
            (
                "weft_events_accepted_total",
                "Messages stored",
                &self.events_accepted,
            ),
            (
                "weft_events_rejected_total",
                "Messages that failed validation",
                &self.events_rejected,
            ),
            (
                "weft_events_deduplicated_total",
                "Messages already stored",
                &self.events_deduplicated,
            ),
            (
                "weft_requests_overloaded_total",
                "Requests refused with 503",
                &self.requests_overloaded,
            ),
            (
                "weft_requests_failed_total",
                "Requests answered 4xx/5xx",
                &self.requests_failed,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(out, "# HELP {name} {help}.\n# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }
        let _ = writeln!(
            out,
            "# HELP weft_write_queue_depth Requests waiting for the writer.\n\
             # TYPE weft_write_queue_depth gauge\nweft_write_queue_depth {queue_depth}"
        );
        out
    }
}
