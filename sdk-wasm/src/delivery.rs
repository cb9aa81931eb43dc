//! When to send again: what a response means and how long to wait.
//!
//! Every message keeps its `messageId` across attempts, so the collector's
//! dedup turns at-least-once sending into exactly-once storage. What this
//! module decides is only *whether* a batch is tried again (server errors,
//! overload, network failures) or dropped (requests the collector will never
//! accept), and *when*: exponential backoff with jitter, or the collector's
//! own `Retry-After`.

/// First retry delay, in milliseconds.
pub const BACKOFF_BASE_MS: f64 = 1_000.0;
/// Longest retry delay, in milliseconds.
pub const BACKOFF_MAX_MS: f64 = 60_000.0;

/// What became of a request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// Accepted: forget its messages.
    Accepted,
    /// Refused for good (a 4xx other than 429): retrying cannot help.
    Refused,
    /// Try again later; `Some(ms)` when the collector said how long.
    Retry(Option<f64>),
}

impl Outcome {
    /// Classifies a response: `status` is `None` for a network error, and
    /// `retry_after` is the `Retry-After` header's text.
    pub fn of(status: Option<u16>, retry_after: Option<&str>) -> Outcome {
        match status {
            Some(200..=299) => Outcome::Accepted,
            Some(429) | Some(500..) | Some(0..=199) | None => {
                Outcome::Retry(retry_after.and_then(retry_after_ms))
            }
            Some(_) => Outcome::Refused,
        }
    }
}

/// `Retry-After` in delay-seconds form, as milliseconds (the HTTP-date form
/// is not used by weft's collector and is ignored).
fn retry_after_ms(text: &str) -> Option<f64> {
    let secs = weft_protocol::json::parse_u64(text.trim_ascii())?;
    Some(secs.min(3_600) as f64 * 1000.0)
}

/// The delay before attempt number `failures + 1` after `failures` failed
/// attempts: `base * 2^(failures-1)` capped at the maximum, scaled by a
/// jitter factor in `[0.5, 1)` from `random` (a value in `[0, 1)`), so
/// clients that failed together do not return together.
pub fn backoff_ms(failures: u32, random: f64) -> f64 {
    let exp = failures.saturating_sub(1).min(16);
    let full = (BACKOFF_BASE_MS * f64::from(1u32 << exp)).min(BACKOFF_MAX_MS);
    full * (0.5 + random.clamp(0.0, 1.0) / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified() {
        assert_eq!(Outcome::of(Some(200), None), Outcome::Accepted);
        assert_eq!(Outcome::of(Some(204), Some("5")), Outcome::Accepted);
        assert_eq!(Outcome::of(Some(400), None), Outcome::Refused);
        assert_eq!(Outcome::of(Some(401), None), Outcome::Refused);
        assert_eq!(Outcome::of(Some(413), None), Outcome::Refused);
        assert_eq!(
            Outcome::of(Some(429), Some("7")),
            Outcome::Retry(Some(7000.0))
        );
        assert_eq!(
            Outcome::of(Some(503), Some(" 2 ")),
            Outcome::Retry(Some(2000.0))
        );
        assert_eq!(Outcome::of(Some(500), None), Outcome::Retry(None));
        assert_eq!(
            Outcome::of(Some(503), Some("Wed, 21 Oct 2026 07:28:00 GMT")),
            Outcome::Retry(None)
        );
        assert_eq!(Outcome::of(None, None), Outcome::Retry(None));
        assert_eq!(Outcome::of(Some(0), None), Outcome::Retry(None));
        assert_eq!(
            Outcome::of(Some(503), Some("999999")),
            Outcome::Retry(Some(3_600_000.0))
        );
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        assert_eq!(backoff_ms(1, 0.0), 500.0);
        assert!((backoff_ms(1, 0.999_999) - 999.9995).abs() < 1e-6);
        assert_eq!(backoff_ms(2, 0.0), 1000.0);
        assert_eq!(backoff_ms(3, 0.0), 2000.0);
        for failures in 7..100 {
            let d = backoff_ms(failures, 0.5);
            assert_eq!(d, BACKOFF_MAX_MS * 0.75, "capped at {failures}");
        }
        // Jitter spreads clients over half the window.
        assert!(backoff_ms(4, 0.1) < backoff_ms(4, 0.9));
    }
}
