//! Everything that touches the browser, as the loader hands it over.
//!
//! No other module imports anything from JavaScript. The browser's side of
//! each job (localStorage and the anonymous-ID cookie, the page's context,
//! fetch and sendBeacon, timers) is a small function of `js/loader.js`'s
//! `weftHost` object, which never throws: JavaScript says these things in
//! far fewer bytes than Rust bindings to the same APIs (each binding is a
//! function in the glue and in the wasm, each closure a table entry and
//! glue of its own). Only text and numbers cross: no `JsValue` (each one
//! costs wasm-bindgen's table of JS values and its conversions in the
//! wasm). Properties come as JSON text: the loader writes them.

use alloc::string::String;

use crate::consent::Prefs;
use crate::env::{Clock, Random, Storage};

/// The browser APIs the SDK uses, as wasm-bindgen imports.
mod js {
    use alloc::string::String;
    use wasm_bindgen::prelude::*;

    #[wasm_bindgen]
    extern "C" {
        /// `weftHost.load(key)`: the stored string, or `undefined`.
        #[wasm_bindgen(js_namespace = weftHost)]
        pub fn load(key: &str) -> Option<String>;
        /// `weftHost.store(key, value)`: stores, or removes when `value` is
        /// `undefined`.
        #[wasm_bindgen(js_namespace = weftHost)]
        pub fn store(key: &str, value: Option<&str>);
        /// `weftHost.describe(referrer)`: the page's context members, or
        /// `undefined` when unchanged since the last answer.
        #[wasm_bindgen(js_namespace = weftHost)]
        pub fn describe(referrer: Option<&str>) -> Option<String>;
        /// `weftHost.shared()`: context members for the batch level.
        #[wasm_bindgen(js_namespace = weftHost)]
        pub fn shared() -> String;
        /// `weftHost.send(body, keepalive)`: `false` if it could not start.
        #[wasm_bindgen(js_namespace = weftHost)]
        pub fn send(body: &str, keepalive: bool) -> bool;
        /// `weftHost.beacon(body)`: `true` if the browser took it.
        #[wasm_bindgen(js_namespace = weftHost)]
        pub fn beacon(body: &str) -> bool;
        /// `weftHost.later(kind, ms)`: a timer.
        #[wasm_bindgen(js_namespace = weftHost)]
        pub fn later(kind: u32, ms: f64);
        /// `weftHost.random(bytes)`: fills them.
        #[wasm_bindgen(js_namespace = weftHost)]
        pub fn random(bytes: &mut [u8]);
        /// `weftHost.answer(text)`: a getter's answer.
        #[wasm_bindgen(js_namespace = weftHost)]
        pub fn answer(text: &str);
        /// `weftHost.dropped(counters)`: `data-debug` reports a loss.
        #[wasm_bindgen(js_namespace = weftHost)]
        pub fn dropped(counters: &str);

        /// `Date.now()`
        #[wasm_bindgen(js_namespace = Date)]
        pub fn now() -> f64;
        /// `weftHost.iso()`: `new Date().toISOString()`.
        #[wasm_bindgen(js_namespace = weftHost)]
        pub fn iso() -> String;
    }
}

/// Reads `consent.set`'s argument as the loader gives it: for each of
/// [`crate::consent::DECIDED`], `1` (granted: every name of
/// [`crate::consent::NAMES`] given for it grants), `0` (denied) or anything
/// else (not given).
pub fn consent_values(text: &str) -> [Option<bool>; 3] {
    let mut out = [None; 3];
    for (slot, b) in out.iter_mut().zip(text.bytes()) {
        *slot = match b {
            b'1' => Some(true),
            b'0' => Some(false),
            _ => None,
        };
    }
    out
}

/// `consent.get()`'s answer for the loader, which makes the object: a bit
/// for each of analytics (1), marketing (2) and personalization (4), as
/// one decimal digit.
pub fn prefs_bits(prefs: Prefs) -> String {
    let bits = u8::from(prefs.analytics)
        | u8::from(prefs.marketing) << 1
        | u8::from(prefs.personalization) << 2;
    let mut out = String::new();
    weft_protocol::json::push_hex(&mut out, bits);
    out
}

/// Sends `body` with `navigator.sendBeacon`; `true` when the browser took
/// it.
pub fn beacon(body: &str) -> bool {
    js::beacon(body)
}

/// POSTs `body` (the answer comes back as `api::op::SENT`); `false` when
/// the request could not even start.
pub fn send(body: &str, keepalive: bool) -> bool {
    js::send(body, keepalive)
}

/// Timer `kind` calls back (`api::op::TICK`) after `ms`.
pub fn later(kind: u32, ms: f64) {
    js::later(kind, ms)
}

/// Answers the getter being called (`api::call`).
pub fn answer(text: &str) {
    js::answer(text)
}

/// `data-debug`: says which counters of losses went up.
pub fn dropped(counters: &str) {
    js::dropped(counters)
}

/// The page's context members (`"page":{..},"userAgent":..`), or `None`
/// when they are what the last call returned. `referrer`: a single-page
/// app's previous route, else `document.referrer`.
pub fn describe(referrer: Option<&str>) -> Option<String> {
    js::describe(referrer)
}

/// Context members every batch carries at its level (the time zone).
pub fn shared() -> String {
    js::shared()
}

/// `Date.now()`
pub fn now_ms() -> f64 {
    js::now()
}

/// The browser as the tracker's [`crate::env::Env`]: the loader's storage
/// (localStorage, the anonymous ID mirrored in a first-party cookie),
/// `Date.now()` and `crypto.getRandomValues`.
#[derive(Default)]
pub struct BrowserEnv;

impl Storage for BrowserEnv {
    fn get(&self, key: &str) -> Option<String> {
        js::load(key)
    }

    fn set(&self, key: &str, value: &str) {
        js::store(key, Some(value));
    }

    fn remove(&self, key: &str) {
        js::store(key, None);
    }
}

impl Clock for BrowserEnv {
    /// The browser's own `Date#toISOString`: a call into JavaScript and a
    /// string copied back per message (well under a microsecond) rather
    /// than [`crate::env::iso_utc`]'s calendar arithmetic in every
    /// visitor's download (about 300 bytes gzip).
    fn now_iso(&self) -> String {
        js::iso()
    }

    fn now_ms(&self) -> f64 {
        js::now()
    }
}

impl Random for BrowserEnv {
    fn fill(&self, buf: &mut [u8]) {
        js::random(buf);
    }
}
