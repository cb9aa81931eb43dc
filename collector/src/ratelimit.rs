//! Per-source rate limits: a token bucket per write key, refilled by the
//! collector's [`crate::clock::Clock`] so tests control time.

use std::collections::HashMap;
use std::sync::Mutex;

use time::OffsetDateTime;

use crate::config::RateLimit;

/// Token buckets keyed by write key.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: OffsetDateTime,
}

impl RateLimiter {
    /// Takes a token for `key`; when none is left, `Err` with the whole
    /// seconds to wait before one is (at least 1).
    pub fn check(&self, key: &str, limit: RateLimit, now: OffsetDateTime) -> Result<(), u64> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let burst = f64::from(limit.burst);
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let elapsed = (now - bucket.last).as_seconds_f64().max(0.0);
        bucket.tokens = (bucket.tokens + elapsed * limit.requests_per_second).min(burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / limit.requests_per_second;
            Err((wait.ceil() as u64).max(1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::Duration;
    use time::macros::datetime;

    #[test]
    fn bursts_then_refills_at_the_rate() {
        let limiter = RateLimiter::default();
        let limit = RateLimit {
            requests_per_second: 2.0,
            burst: 3,
        };
        let t0 = datetime!(2026-11-23 10:00:00 UTC);
        for _ in 0..3 {
            assert_eq!(limiter.check("k", limit, t0), Ok(()));
        }
        assert_eq!(limiter.check("k", limit, t0), Err(1));
        // Another key has its own bucket.
        assert_eq!(limiter.check("other", limit, t0), Ok(()));
        // Half a second later one token is back, and only one.
        let t1 = t0 + Duration::milliseconds(500);
        assert_eq!(limiter.check("k", limit, t1), Ok(()));
        assert!(limiter.check("k", limit, t1).is_err());
        // A long pause refills to the burst, not beyond.
        let t2 = t1 + Duration::hours(1);
        for _ in 0..3 {
            assert_eq!(limiter.check("k", limit, t2), Ok(()));
        }
        assert!(limiter.check("k", limit, t2).is_err());
        // A slow rate asks for a longer wait.
        let slow = RateLimit {
            requests_per_second: 0.1,
            burst: 1,
        };
        assert_eq!(limiter.check("s", slow, t0), Ok(()));
        assert_eq!(limiter.check("s", slow, t0), Err(10));
    }
}
