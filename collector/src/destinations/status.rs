//! A destination's live figures: counters (saved in its database as
//! batches finish, kept here for reads) and the end-to-end latencies of
//! its recent deliveries (stored at ingest to 2xx from the receiver).

use std::collections::VecDeque;
use std::sync::Mutex;

use super::outbox::Item;

/// How many recent messages the latency percentiles cover.
const LATENCY_WINDOW: usize = 4096;

#[derive(Debug, Default)]
struct Inner {
    enabled: bool,
    delivered: u64,
    failed: u64,
    dead: u64,
    last_error: Option<String>,
    /// Milliseconds, newest last.
    latencies: VecDeque<u32>,
}

/// Counters and latencies of one destination.
#[derive(Debug, Default)]
pub struct Status(Mutex<Inner>);

/// A snapshot for the API and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    /// Whether it delivers.
    pub enabled: bool,
    /// Messages delivered, ever.
    pub delivered: u64,
    /// Attempts that failed, ever.
    pub failed: u64,
    /// Messages in its dead letters now.
    pub dead: u64,
    /// The last failure.
    pub last_error: Option<String>,
    /// Median end-to-end latency of recent deliveries, ms.
    pub p50_ms: Option<u32>,
    /// 95th percentile, ms.
    pub p95_ms: Option<u32>,
}

impl Status {
    /// Figures as saved.
    pub fn new(
        enabled: bool,
        delivered: u64,
        failed: u64,
        dead: u64,
        last_error: Option<String>,
    ) -> Self {
        Status(Mutex::new(Inner {
            enabled,
            delivered,
            failed,
            dead,
            last_error,
            latencies: VecDeque::new(),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `items` reached the receiver at `now_ms`.
    pub fn delivered(&self, items: &[std::sync::Arc<Item>], now_ms: i64) {
        let mut s = self.lock();
        s.delivered += items.len() as u64;
        for i in items {
            let ms = (now_ms - i.received_ms).clamp(0, i64::from(u32::MAX)) as u32;
            if s.latencies.len() == LATENCY_WINDOW {
                s.latencies.pop_front();
            }
            s.latencies.push_back(ms);
        }
    }

    /// An attempt failed.
    pub fn failed(&self, error: &str) {
        let mut s = self.lock();
        s.failed += 1;
        s.last_error = Some(error.to_owned());
    }

    /// `n` messages went to the dead letters.
    pub fn dead(&self, n: u64) {
        self.lock().dead += n;
    }

    /// The dead letters hold `n` messages now (after a replay or erasure).
    pub fn set_dead(&self, n: u64) {
        self.lock().dead = n;
    }

    /// On or off.
    pub fn set_enabled(&self, enabled: bool) {
        self.lock().enabled = enabled;
    }

    /// A snapshot.
    pub fn figures(&self) -> Figures {
        let s = self.lock();
        let mut sorted: Vec<u32> = s.latencies.iter().copied().collect();
        sorted.sort_unstable();
        let pct = |p: f64| -> Option<u32> {
            if sorted.is_empty() {
                return None;
            }
            let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
            Some(sorted[rank - 1])
        };
        Figures {
            enabled: s.enabled,
            delivered: s.delivered,
            failed: s.failed,
            dead: s.dead,
            last_error: s.last_error.clone(),
            p50_ms: pct(0.50),
            p95_ms: pct(0.95),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn percentiles_cover_recent_deliveries() {
        let status = Status::new(true, 0, 0, 0, None);
        assert_eq!(status.figures().p50_ms, None);
        let items: Vec<Arc<Item>> = (0..100)
            .map(|n| {
                Arc::new(Item {
                    lsn: n + 1,
                    received_ms: 1_000 - n as i64,
                    ids: vec![],
                    kind: weft_protocol::MessageType::Track,
                    body: "{}".into(),
                })
            })
            .collect();
        status.delivered(&items, 1_000);
        let f = status.figures();
        assert_eq!((f.delivered, f.p50_ms, f.p95_ms), (100, Some(49), Some(94)));
    }
}
