//! The SDK's browser module and tracker in a real browser (headless
//! Chromium through wasm-bindgen-test-runner): storage, cookies, the clock
//! and randomness as the tracker sees them.
#![cfg(target_arch = "wasm32")]

use wasm_bindgen_test::*;
use weft_protocol::Context;
use weft_sdk::browser::{self, BrowserEnv};
use weft_sdk::env::{Clock, Random, Storage};
use weft_sdk::tracker::{Config, Tracker, keys};

wasm_bindgen_test_configure!(run_in_browser);

fn clear() {
    let env = BrowserEnv::new();
    for k in [keys::ANONYMOUS_ID, keys::USER_ID, keys::QUEUE] {
        env.remove(k);
    }
}

#[wasm_bindgen_test]
fn anonymous_id_is_stored_in_local_storage_and_a_cookie() {
    clear();
    let t = Tracker::new(BrowserEnv::new(), Config::new("wk".into()));
    let id = t.anonymous_id().to_owned();
    let window = web_sys::window().unwrap();
    let stored = window
        .local_storage()
        .unwrap()
        .unwrap()
        .get_item(keys::ANONYMOUS_ID)
        .unwrap();
    assert_eq!(stored.as_deref(), Some(id.as_str()));
    let doc: web_sys::HtmlDocument =
        wasm_bindgen::JsCast::dyn_into(window.document().unwrap()).unwrap();
    assert!(doc.cookie().unwrap().contains(&format!("weft_aid={id}")));

    // With localStorage cleared, the cookie still gives the same ID back.
    window
        .local_storage()
        .unwrap()
        .unwrap()
        .remove_item(keys::ANONYMOUS_ID)
        .unwrap();
    let again = Tracker::new(BrowserEnv::new(), Config::new("wk".into()));
    assert_eq!(again.anonymous_id(), id);
    clear();
    assert!(!doc.cookie().unwrap().contains("weft_aid="));
}

#[wasm_bindgen_test]
fn queue_survives_a_new_tracker_like_a_reload() {
    clear();
    let mut t = Tracker::new(BrowserEnv::new(), Config::new("wk".into()));
    t.track("A".into(), None, browser::context());
    t.track("B".into(), None, Context::default());
    drop(t);
    let mut t = Tracker::new(BrowserEnv::new(), Config::new("wk".into()));
    assert_eq!(t.queued(), 2);
    let body = t.next_batch().unwrap();
    assert!(body.contains("\"event\":\"A\"") && body.contains("\"event\":\"B\""));
    t.delivered(true);
    assert_eq!(BrowserEnv::new().get(keys::QUEUE), None);
    clear();
}

#[wasm_bindgen_test]
fn clock_and_randomness_come_from_the_browser() {
    let env = BrowserEnv::new();
    let now = env.now_iso();
    assert_eq!(now.len(), 24, "{now}");
    assert!(now.ends_with('Z'));
    let (mut a, mut b) = ([0u8; 16], [0u8; 16]);
    env.fill(&mut a);
    env.fill(&mut b);
    assert_ne!(a, b);
}

#[wasm_bindgen_test]
fn context_describes_the_page() {
    let ctx = browser::context();
    let page = ctx.page.unwrap();
    assert!(page.url.unwrap().starts_with("http://127.0.0.1"));
    assert!(ctx.user_agent.unwrap().contains("Chrome"));
    assert!(ctx.timezone.is_some());
}
