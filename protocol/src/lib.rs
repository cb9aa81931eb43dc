//! The wire protocol of weft: one definition of every message the SDK sends
//! and the collector accepts, compiled for both wasm32 and the host.
//!
//! Layout:
//! - [`message`]: the Segment-spec message ([`Message`], [`MessageType`]) and
//!   the batch envelope ([`Batch`]), with serde for the collector.
//! - [`json`]: raw JSON values ([`Json`]) and a small JSON writer that uses
//!   no `core::fmt`, so the SDK can encode messages without pulling
//!   formatting machinery into the wasm it ships.
//! - [`context`]: the typed parts of `context` that weft itself reads or
//!   writes (page, library, consent).
//!
//! Invariant: nothing here knows about HTTP or the browser. No hyper, no
//! web-sys; only serde and plain data.
//!
//! Features: `serde` (default) gives the serde types and impls the
//! collector reads and writes with. Without it the crate is `no_std` (with
//! `alloc`) and holds only what the SDK's wasm uses: the writer, [`Json`],
//! [`MessageType`] and [`CategoryPreferences`]. The SDK builds its shipped
//! wasm without `std` so that it can abort on a panic without std's panic
//! machinery (about 1 KB gzip in every visitor's download).

#![cfg_attr(not(feature = "serde"), no_std)]
// `push_str("x")` rather than `push('x')`: pushing a `char` links in its
// UTF-8 encoder, which the SDK's wasm need not carry.
#![allow(
    clippy::single_char_add_str,
    reason = "push(char) links the UTF-8 encoder into the SDK's wasm"
)]

extern crate alloc;

pub mod context;
pub mod json;
pub mod message;

pub use context::CategoryPreferences;
#[cfg(feature = "serde")]
pub use context::{Campaign, ConsentContext, Context, LibraryContext, PageContext, Screen};
pub use json::Json;
pub use message::MessageType;
#[cfg(feature = "serde")]
pub use message::{Batch, Message};

/// Limits every party agrees on (DESIGN.md §4).
pub mod limits {
    /// Largest encoded message, in bytes.
    pub const MAX_MESSAGE_BYTES: usize = 32 * 1024;
    /// Largest request body, in bytes, after decompression.
    pub const MAX_REQUEST_BYTES: usize = 500 * 1024;
    /// Budget of a `fetch(..., {keepalive: true})` or `sendBeacon` body.
    pub const KEEPALIVE_BUDGET_BYTES: usize = 64 * 1024;
}
