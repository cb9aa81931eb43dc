//! weft's browser SDK: the Rust core behind `weft.js`.
//!
//! Layout, from the page inward:
//! - `js/loader.js` (not Rust): reads the script tag's `data-` attributes,
//!   loads the wasm, defines `window.weft` and guards every call so nothing
//!   ever throws into the host page.
//! - [`api`]: the only module that exports to JavaScript. Converts JS values
//!   at the edge and forwards to the tracker.
//! - [`browser`]: the only module that touches web-sys: storage, cookies,
//!   fetch, listeners, timers, page context.
//! - [`tracker`]: the state machine: identity, message building, the queue
//!   and what to send next. Plain Rust over the [`env`] traits, tested
//!   natively.
//! - [`queue`]: the bounded queue of encoded messages and its persistence
//!   format.
//! - [`ids`]: UUIDs from random bytes.
//! - [`env`]: the seams (storage, clock, randomness) that the browser
//!   implements and tests replace.
//!
//! Size matters here more than anywhere: this crate avoids `core::fmt`,
//! serde deserialisers and Unicode tables on the shipped path.

pub mod api;
pub mod browser;
pub mod env;
pub mod ids;
pub mod queue;
pub mod tracker;

/// The library name sent in `context.library.name`.
pub const LIBRARY_NAME: &str = "weft.js";
/// The library version sent in `context.library.version`.
pub const LIBRARY_VERSION: &str = env!("CARGO_PKG_VERSION");
