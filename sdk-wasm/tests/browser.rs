//! The SDK's browser module and tracker in a real browser (headless
//! Chromium through wasm-bindgen-test-runner): storage, cookies, the clock
//! and randomness as the tracker sees them.
#![cfg(target_arch = "wasm32")]

use wasm_bindgen_test::*;
use weft_protocol::Json;
use weft_sdk::browser::{self, BrowserEnv};
use weft_sdk::consent::{Category, Policy, Prefs, Signals};
use weft_sdk::delivery::Outcome;
use weft_sdk::env::{Clock, Random, Storage};
use weft_sdk::tracker::{Config, Tracker, keys};

wasm_bindgen_test_configure!(run_in_browser);

fn clear() {
    let env = BrowserEnv::default();
    for k in keys::IDENTITY {
        env.remove(k);
    }
    env.remove(keys::CONSENT);
}

#[wasm_bindgen::prelude::wasm_bindgen]
extern "C" {
    /// The page's `eval`, to make functions in tests.
    #[wasm_bindgen(js_name = eval)]
    fn js_eval(code: &str) -> wasm_bindgen::JsValue;
}

fn ctx() -> Json {
    Json::from_trusted("{}")
}

/// A tracker under opt-out: identity and storage from the start.
fn tracker() -> Tracker<BrowserEnv> {
    let config = Config {
        policy: Policy::OptOut,
        ..Config::new("wk".into())
    };
    Tracker::new(BrowserEnv::default(), config, Signals::default())
}

fn local_storage_keys() -> Vec<String> {
    let storage = web_sys::window().unwrap().local_storage().unwrap().unwrap();
    let mut keys: Vec<String> = (0..storage.length().unwrap())
        .filter_map(|i| storage.key(i).unwrap())
        .collect();
    keys.sort();
    keys
}

fn cookies() -> String {
    let doc: web_sys::HtmlDocument =
        wasm_bindgen::JsCast::dyn_into(web_sys::window().unwrap().document().unwrap()).unwrap();
    doc.cookie().unwrap()
}

#[wasm_bindgen_test]
fn anonymous_id_is_stored_in_local_storage_and_a_cookie() {
    clear();
    let t = tracker();
    let id = t.anonymous_id().unwrap().to_owned();
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
    let again = tracker();
    assert_eq!(again.anonymous_id(), Some(id.as_str()));
    clear();
    assert!(!doc.cookie().unwrap().contains("weft_aid="));
}

#[wasm_bindgen_test]
fn queue_survives_a_new_tracker_like_a_reload() {
    clear();
    let mut t = tracker();
    t.track("A".into(), None, Category::Analytics, ctx());
    t.track("B".into(), None, Category::Analytics, ctx());
    t.save();
    drop(t);
    let mut t = tracker();
    assert_eq!(t.queued(), 2);
    let body = t.next_batch(false).unwrap();
    assert!(body.contains("\"event\":\"A\"") && body.contains("\"event\":\"B\""));
    // A 503: the same batch again after the delay, then accepted.
    t.delivered(Outcome::Retry(Some(0.0)));
    // The same messages; only `sentAt` is new.
    let messages = |b: &str| b.split("\"sentAt\"").next().unwrap().to_owned();
    assert_eq!(messages(&t.next_batch(false).unwrap()), messages(&body));
    t.delivered(Outcome::Accepted);
    t.save();
    assert_eq!(BrowserEnv::default().get(keys::QUEUE), None);
    clear();
}

#[wasm_bindgen_test]
fn opt_in_touches_no_storage_or_cookie_until_granted_and_withdrawal_clears_them() {
    clear();
    assert_eq!(local_storage_keys(), Vec::<String>::new());
    let mut t = Tracker::new(
        BrowserEnv::default(),
        Config::new("wk".into()),
        Signals::default(),
    );
    t.page(Default::default(), ctx());
    t.track("A".into(), None, Category::Analytics, ctx());
    assert_eq!(local_storage_keys(), Vec::<String>::new());
    assert!(!cookies().contains("weft_aid="));

    t.set_consent(Prefs::ALL, ctx());
    t.save();
    let id = t.anonymous_id().unwrap().to_owned();
    assert!(cookies().contains(&format!("weft_aid={id}")));
    assert_eq!(
        local_storage_keys(),
        ["weft.aid", "weft.consent", "weft.queue", "weft.session"]
    );
    assert_eq!(t.queued(), 3, "the record, then the two held calls");

    let record = t.set_consent(Prefs::default(), ctx());
    assert!(record.unwrap().contains(&id));
    assert_eq!(local_storage_keys(), ["weft.consent"]);
    assert!(!cookies().contains("weft_aid="));
    clear();
}

#[wasm_bindgen_test]
fn clock_and_randomness_come_from_the_browser() {
    let env = BrowserEnv::default();
    let ms = env.now_ms();
    assert!(ms > 1.7e12, "{ms}");
    let now = env.now_iso();
    assert_eq!(now.len(), 24, "{now}");
    assert!(now.ends_with('Z'));
    let (mut a, mut b) = ([0u8; 16], [0u8; 16]);
    env.fill(&mut a);
    env.fill(&mut b);
    assert_ne!(a, b);
}

#[wasm_bindgen_test]
fn context_comes_from_the_loaders_function_and_failures_give_an_empty_object() {
    let describe = js_eval(
        "(function (r) { return {page: {url: location.href, referrer: r}, screen: {density: devicePixelRatio}}; })",
    );
    let json = browser::context(&describe, Some("https://previous.example/"));
    let v: serde_json::Value = serde_json::from_str(json.as_str()).unwrap();
    assert!(
        v["page"]["url"]
            .as_str()
            .unwrap()
            .starts_with("http://127.0.0.1")
    );
    assert_eq!(v["page"]["referrer"], "https://previous.example/");
    assert!(v["screen"]["density"].as_f64().unwrap() > 0.0);
    let throws = js_eval("(function () { throw new Error('no'); })");
    assert_eq!(browser::context(&throws, None).as_str(), "{}");
}
