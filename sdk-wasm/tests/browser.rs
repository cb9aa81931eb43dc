//! The SDK's browser module and tracker in a real browser (headless
//! Chromium through wasm-bindgen-test-runner): the clock against the
//! browser's own `Date`, and the tracker over its imports.
//!
//! The loader's side of the imports (`weftHost` in `js/loader.js`) is not
//! here: it is exercised with the real `weft.js` in the end-to-end tests
//! (`tests/tests/e2e/sdk.rs`). These tests install a minimal `weftHost` of
//! their own over the page's localStorage, so they check that the imports
//! reach it by those names and that what the tracker stores reads back.
#![cfg(target_arch = "wasm32")]

use wasm_bindgen::JsValue;
use wasm_bindgen_test::*;
use weft_sdk::browser::BrowserEnv;
use weft_sdk::consent::{Category, Policy, Signals};
use weft_sdk::delivery::Outcome;
use weft_sdk::env::{Clock, Random, iso_utc};
use weft_sdk::tracker::{Config, Tracker, keys};

wasm_bindgen_test_configure!(run_in_browser);

#[wasm_bindgen::prelude::wasm_bindgen]
extern "C" {
    /// The page's `eval`.
    #[wasm_bindgen(js_name = eval)]
    fn js_eval(code: &str) -> JsValue;
}

/// A `weftHost` over localStorage, as the tests need it.
fn install_host() {
    js_eval(
        "globalThis.weftHost = {
           load: k => localStorage.getItem(k) ?? undefined,
           store: (k, v) => v == null ? localStorage.removeItem(k) : localStorage.setItem(k, v),
           random: b => crypto.getRandomValues(b),
           describe: () => undefined, shared: () => '', dropped: () => {},
           iso: () => new Date().toISOString(),
           send: () => false, beacon: () => false, later: () => {}
         }; localStorage.clear();",
    );
}

fn tracker() -> Tracker<BrowserEnv> {
    let config = Config {
        policy: Policy::OptOut,
        ..Config::new("wk".into())
    };
    Tracker::new(BrowserEnv, config, Signals::default())
}

fn messages(body: &str) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    v["batch"].as_array().unwrap().clone()
}

#[wasm_bindgen_test]
fn the_clock_writes_what_date_to_iso_string_writes() {
    let env = BrowserEnv;
    let now = env.now_ms();
    let date = js_eval(&format!("new Date({now}).toISOString()"));
    assert_eq!(env.now_iso().len(), 24);
    assert_eq!(Some(iso_utc(now)), date.as_string());
    // Across years, leap days and the end of a day.
    for ms in [
        0.0,
        951_868_799_999.0,
        4_102_444_800_000.0,
        1_709_164_800_000.0,
    ] {
        let date = js_eval(&format!("new Date({ms}).toISOString()"));
        assert_eq!(Some(iso_utc(ms)), date.as_string(), "{ms}");
    }
}

#[wasm_bindgen_test]
fn the_queue_and_identity_survive_a_new_tracker_like_a_reload() {
    install_host();
    let mut t = tracker();
    let aid = t.anonymous_id().unwrap().to_owned();
    t.track("A".into(), None, Category::Analytics, None);
    t.track("B".into(), None, Category::Analytics, None);
    t.save();
    let body = t.next_batch(false, "").unwrap();
    assert_eq!(messages(&body).len(), 2);
    t.delivered(Outcome::Retry(None));
    let stored = js_eval("localStorage.getItem('weft.queue')").as_string();
    assert!(stored.is_some_and(|q| q.contains("\"A\"")));

    let mut again = tracker();
    assert_eq!(again.anonymous_id(), Some(aid.as_str()));
    assert_eq!(
        messages(&again.next_batch(false, "").unwrap()),
        messages(&body),
        "the same messages, with the same messageIds"
    );
    let mut bytes = [0u8; 32];
    BrowserEnv.fill(&mut bytes);
    assert!(bytes.iter().any(|b| *b != 0), "crypto.getRandomValues");
    again.delivered(Outcome::Accepted);
    again.save();
    assert!(js_eval(&format!("localStorage.getItem('{}')", keys::QUEUE)).is_null());
}
