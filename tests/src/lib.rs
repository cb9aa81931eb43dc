//! Support for weft's end-to-end tests (the tests themselves are in
//! `tests/e2e/`).
//!
//! - [`harness`]: a real collector on `127.0.0.1:0` with a temporary data
//!   directory, in one line; readers of its store.
//! - [`http`]: a deliberately small HTTP/1.1 client, so tests can send
//!   exactly the bytes they mean (including malformed ones).
//! - [`chromium`]: real headless Chromium driven over the DevTools protocol,
//!   observed from outside the page.
//! - [`receiver`]: a real HTTP receiver that records requests and answers
//!   as scripted (destinations' tests and bench).
//! - [`site`]: the SDK fixture pages and a flaky proxy that fails batches
//!   before letting them through to a collector.

pub mod chromium;
pub mod harness;
pub mod http;
pub mod receiver;
pub mod site;

use std::time::{Duration, Instant};

/// Polls `check` every 50 ms until it returns `Some`, or panics with `what`
/// after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
