//! weft's browser SDK: the Rust core behind `weft.js`.
//!
//! Layout, from the page inward:
//! - `js/loader.js` (not Rust): reads the script tag's `data-` attributes,
//!   loads the wasm, defines `window.weft` and guards every call so nothing
//!   ever throws into the host page; does the browser's side of each job in
//!   the fewer bytes JavaScript needs (storage and the anonymous-ID cookie,
//!   the page's context, click and route capture, timers, fetch).
//! - [`api`]: the only module that exports to JavaScript. Converts JS values
//!   at the edge, forwards to the tracker and schedules sends and saves.
//! - [`browser`]: the only module that imports from JavaScript: the
//!   loader's functions and a few built-ins.
//! - [`tracker`]: the state machine: identity, consent gating, message
//!   building, the queue and what to send next. Plain Rust over the
//!   [`env`](crate::env) traits, tested natively.
//! - [`consent`]: policies, categories, the stored decision, Google Consent
//!   Mode names, GPC and Do Not Track.
//! - [`delivery`]: what a response means (retry or drop) and the backoff.
//! - [`queue`]: the bounded queue of encoded messages, the batch bodies
//!   (shared context at the batch level) and its persistence format.
//! - [`ids`]: UUIDs from random bytes.
//! - [`env`](crate::env): the seams (storage, clock, randomness) that the browser
//!   implements and tests replace.
//!
//! Size matters here more than anywhere: the shipped wasm is `no_std`
//! (below), and this crate avoids `core::fmt`, serde, Unicode tables,
//! `char` decoding and encoding (text is cut and escaped byte by byte, and
//! pushed as `&str`) and `JsValue` on the shipped path. `cargo xtask sdk`
//! reports the size; `twiggy` on a build kept with names
//! (`wasm-bindgen --keep-debug`, `wasm-opt --debuginfo`) shows where it goes.

// The shipped wasm is built without the `std` feature (see Cargo.toml):
// `no_std`, so that a panic aborts through the handler below and std's
// panic machinery (the hook, payload boxing, `core::fmt::write`) is not
// linked in. With `std` (tests, clippy, host builds) std's handler is used.
#![cfg_attr(not(feature = "std"), no_std)]
// `push_str("x")` rather than `push('x')`: pushing a `char` links in its
// UTF-8 encoder, which the SDK's wasm need not carry.
#![allow(
    clippy::single_char_add_str,
    reason = "push(char) links the UTF-8 encoder into the SDK's wasm"
)]

extern crate alloc;

/// A panic in the shipped wasm traps: no message is formatted (nothing
/// would show it), so no panic site costs the formatting code. The trap
/// reaches the loader's `try/catch`, like any failed call.
#[cfg(all(target_arch = "wasm32", not(feature = "std")))]
#[panic_handler]
fn abort(_: &core::panic::PanicInfo<'_>) -> ! {
    core::arch::wasm32::unreachable()
}

// The allocator of the shipped wasm (and of the wasm tests): the SDK's own
// (see `heap`), a few hundred bytes where a general allocator is kilobytes.
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
#[global_allocator]
static ALLOCATOR: heap::Heap = heap::Heap::new();

pub mod api;
pub mod browser;
pub mod consent;
pub mod delivery;
pub mod env;
pub mod heap;
pub mod ids;
pub mod queue;
pub mod tracker;

/// The library name sent in `context.library.name`.
pub const LIBRARY_NAME: &str = "weft.js";
/// The library version sent in `context.library.version`.
pub const LIBRARY_VERSION: &str = env!("CARGO_PKG_VERSION");
/// The `library` member of every message's context, written at compile
/// time (the name and version above, checked by a test).
pub const LIBRARY_MEMBER: &str = concat!(
    "\"library\":{\"name\":\"weft.js\",\"version\":\"",
    env!("CARGO_PKG_VERSION"),
    "\"}"
);
