//! The state every request handler shares.

use std::sync::Arc;

use crate::clock::Clock;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::store::EventStore;

/// Shared, read-mostly state of a running collector.
pub struct App {
    /// Settings.
    pub config: Config,
    /// Where events go.
    pub store: Arc<dyn EventStore>,
    /// The time source.
    pub clock: Arc<dyn Clock>,
    /// Counters.
    pub metrics: Metrics,
    /// Per-source request budgets.
    pub limiter: RateLimiter,
    /// The dashboard's traffic figures and live stream.
    pub stats: Arc<crate::stats::Stats>,
    /// Where stored data goes next.
    pub destinations: Arc<crate::destinations::Destinations>,
}
