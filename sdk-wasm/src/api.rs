//! The JavaScript boundary: the only module with `#[wasm_bindgen]` exports.
//!
//! Two exports: [`start`], and [`call`] for every method of `window.weft`
//! by number (one export instead of a dozen keeps the glue small; the
//! numbers are [`op`] and `js/loader.js` names them). Each converts its
//! arguments at the edge and forwards to the one tracker of the page. None
//! of them can throw: a call before `start`, or one made while the tracker
//! is busy, is ignored. `js/loader.js` adds a `try/catch` around every call
//! as a second guard.

use std::cell::RefCell;

use wasm_bindgen::prelude::*;
use weft_protocol::Json;

use crate::browser::{self, BrowserEnv, Listener, Sender, Timer};
use crate::consent::{self, Category, Policy};
use crate::delivery::Outcome;
use crate::tracker::{Call, ClickedElement, Config, Tracker};

/// The methods of `window.weft`, as numbered for [`call`]. The loader's
/// table (`js/loader.js`) must match.
pub mod op {
    /// `page(name?, properties?)`
    pub const PAGE: u32 = 0;
    /// `track(event, properties?, options?)`
    pub const TRACK: u32 = 1;
    /// `identify(userId, traits?)`
    pub const IDENTIFY: u32 = 2;
    /// `alias(userId, previousId?)`
    pub const ALIAS: u32 = 3;
    /// `group(groupId, traits?)`
    pub const GROUP: u32 = 4;
    /// `reset()`
    pub const RESET: u32 = 5;
    /// `flush()`
    pub const FLUSH: u32 = 6;
    /// The URL may have changed (history API, `popstate`).
    pub const ROUTE: u32 = 7;
    /// `consent.set(preferences)`
    pub const CONSENT_SET: u32 = 8;
    /// `consent.get()`
    pub const CONSENT_GET: u32 = 9;
    /// `anonymousId()`
    pub const ANONYMOUS_ID: u32 = 10;
    /// `userId()`
    pub const USER_ID: u32 = 11;
}

/// The last request's budget for the queue's messages when the page goes
/// away (the browser's keepalive budget is 64 KB for all of them).
const BEACON_BYTES: usize = weft_protocol::limits::KEEPALIVE_BUDGET_BYTES - 1024;

struct Sdk {
    tracker: Tracker<BrowserEnv>,
    sender: Sender,
    /// The route of the last page view (see [`crate::url::route_key`]) and
    /// its full URL, the next SPA page view's referrer.
    route: Option<String>,
    url: Option<String>,
    capture_spa: bool,
    /// The loader's function that describes the page (see
    /// [`browser::context`]).
    describe: JsValue,
    /// One timer for the next send; `timer_set` while it is pending.
    timer: Timer,
    timer_set: bool,
    /// One timer to write the queue once per burst of calls.
    saver: Timer,
    saver_set: bool,
    /// Owned browser resources: dropping the SDK removes them.
    _listeners: Vec<Listener>,
}

thread_local! {
    static SDK: RefCell<Option<Sdk>> = const { RefCell::new(None) };
}

/// Runs `f` on the started SDK; does nothing before `start` or on re-entry.
fn with_sdk<R>(f: impl FnOnce(&mut Sdk) -> R) -> Option<R> {
    SDK.try_with(|cell| {
        let mut guard = cell.try_borrow_mut().ok()?;
        guard.as_mut().map(f)
    })
    .ok()
    .flatten()
}

/// `data-*="false"` turns an on-by-default option off.
fn enabled(options: &JsValue, key: &str) -> bool {
    browser::option(options, key).as_deref() != Some("false")
}

/// A positive number option, else `default`.
fn number(options: &JsValue, key: &str, default: f64) -> f64 {
    browser::option(options, key)
        .and_then(|s| weft_protocol::json::parse_u64(s.trim_ascii()))
        .filter(|n| *n > 0)
        .map_or(default, |n| n.min(86_400_000) as f64)
}

/// Starts the SDK with the script tag's `dataset` as `options`: works out
/// consent, restores identity and the queue when allowed, records the page
/// view and installs click capture and the page-hide flush. `host` is the
/// collector's origin (`https://collector.example.com`); `describe` the
/// loader's page-context function.
#[wasm_bindgen]
pub fn start(options: JsValue, host: JsValue, describe: JsValue) {
    let already = SDK
        .try_with(|cell| cell.try_borrow().map(|s| s.is_some()).unwrap_or(true))
        .unwrap_or(true);
    if already {
        return;
    }
    let mut config = Config::new(browser::option(&options, "writeKey").unwrap_or_default());
    config.policy = Policy::parse(browser::option(&options, "consent").as_deref());
    config.policy_version = browser::option(&options, "policyVersion").unwrap_or_default();
    config.flush_interval_ms = number(&options, "flushInterval", config.flush_interval_ms);
    config.batch_count = number(&options, "batchSize", 20.0) as usize;
    let signals = browser::signals(browser::option(&options, "dnt").as_deref() == Some("true"));
    let env = BrowserEnv::new(browser::option(&options, "cookieDomain"));
    let tracker = Tracker::new(env, config, signals);

    let mut listeners = Vec::new();
    if enabled(&options, "captureClicks") {
        listeners.extend(browser::on_click(|el| record(Record::Click(el))));
    }
    listeners.extend(browser::on_page_hide(page_hidden));

    // `host` as a `JsValue`: a `String` parameter links in a formatted
    // panic (the glue's boxed-slice conversion).
    let mut endpoint = host.as_string().unwrap_or_default();
    while endpoint.as_bytes().last() == Some(&b'/') {
        endpoint.pop();
    }
    endpoint.push_str("/v1/batch");
    let url = browser::location_href();
    let sdk = Sdk {
        tracker,
        sender: Sender::new(endpoint, sent),
        route: url.as_deref().map(|u| crate::url::route_key(u).to_owned()),
        url,
        capture_spa: enabled(&options, "captureSpa"),
        describe,
        timer: Timer::new(timer_fired),
        timer_set: false,
        saver: Timer::new(save),
        saver_set: false,
        _listeners: listeners,
    };
    let _ = SDK.try_with(|cell| {
        if let Ok(mut s) = cell.try_borrow_mut() {
            *s = Some(sdk);
        }
    });
    if enabled(&options, "capturePages") {
        record(Record::Page(Call::default(), None));
    }
    flush(true);
}

/// Every method of `window.weft` (see [`op`]); the loader passes up to three
/// arguments as they came. Returns the answer of the getters, else
/// `undefined`. Named `op` in JavaScript (`call` would shadow
/// `Function.prototype.call` on the glue's function object).
#[wasm_bindgen(js_name = op)]
pub fn call(op: u32, a: JsValue, b: JsValue, c: JsValue) -> JsValue {
    let text = |v: &JsValue| v.as_string();
    let json = browser::object_to_json;
    match op {
        op::PAGE => {
            // page(properties) or page(name, properties)
            let call = if a.is_object() {
                Call {
                    name: None,
                    data: json(&a),
                }
            } else {
                Call {
                    name: text(&a),
                    data: json(&b),
                }
            };
            record(Record::Page(call, None));
        }
        op::TRACK => {
            if let Some(event) = text(&a) {
                let category = browser::option(&c, "category")
                    .map_or(Category::Analytics, |name| Category::parse(&name));
                record(Record::Track(event, json(&b), category));
            }
        }
        op::IDENTIFY => {
            if let Some(user) = text(&a) {
                record(Record::Identify(user, json(&b)));
            }
        }
        op::ALIAS => {
            if let Some(user) = text(&a) {
                record(Record::Alias(user, text(&b)));
            }
        }
        op::GROUP => {
            if let Some(group) = text(&a) {
                record(Record::Group(group, json(&b)));
            }
        }
        op::RESET => {
            with_sdk(|s| s.tracker.reset());
        }
        op::FLUSH => flush(false),
        op::ROUTE => route_changed(),
        op::CONSENT_SET => set_consent(&a),
        op::CONSENT_GET => {
            return with_sdk(|s| browser::prefs_object(s.tracker.prefs()))
                .unwrap_or(JsValue::UNDEFINED);
        }
        op::ANONYMOUS_ID | op::USER_ID => {
            let id = with_sdk(|s| {
                let id = if op == op::ANONYMOUS_ID {
                    s.tracker.anonymous_id()
                } else {
                    s.tracker.user_id()
                };
                id.map(JsValue::from_str)
            });
            return id.flatten().unwrap_or(JsValue::UNDEFINED);
        }
        _ => {}
    }
    JsValue::UNDEFINED
}

/// A call to record, with its properties or traits already converted.
enum Record {
    /// A page view, with the referrer of a single-page app's route change.
    Page(Call, Option<String>),
    Track(String, Option<Json>, Category),
    Identify(String, Option<Json>),
    Alias(String, Option<String>),
    Group(String, Option<Json>),
    Click(ClickedElement),
}

/// Records a call with the page's context of now, then sends at once if a
/// batch is full, else makes sure a send is scheduled. One function for
/// every kind of call, so the tracker's message building is in the wasm
/// once rather than inlined at each caller.
fn record(what: Record) {
    let full = with_sdk(|s| {
        let referrer = match &what {
            Record::Page(_, referrer) => referrer.as_deref(),
            _ => None,
        };
        let context = browser::context(&s.describe, referrer);
        let t = &mut s.tracker;
        match what {
            Record::Page(call, _) => t.page(call, context),
            Record::Track(event, properties, category) => {
                t.track(event, properties, category, context)
            }
            Record::Identify(user, traits) => t.identify(user, traits, context),
            Record::Alias(user, previous) => t.alias(user, previous, context),
            Record::Group(group, traits) => t.group(group, traits, context),
            Record::Click(element) => t.click(&element, context),
        }
        t.batch_ready()
    });
    if full == Some(true) {
        flush(false);
    } else {
        with_sdk(schedule);
    }
}

/// A single-page app may have changed route: records a page view when the
/// route differs from the last one's, with that page's URL as referrer.
fn route_changed() {
    let change = with_sdk(|s| {
        let url = browser::location_href()?;
        let route = crate::url::route_key(&url).to_owned();
        if !s.capture_spa || s.route.as_deref() == Some(route.as_str()) {
            return None;
        }
        s.route = Some(route);
        Some(s.url.replace(url))
    });
    // Outer `Option`s: the SDK is there, the route changed; inner: the
    // previous URL.
    if let Some(Some(referrer)) = change {
        record(Record::Page(Call::default(), referrer));
    }
}

/// `consent.set(preferences)`: applies the decision; a withdrawal's record
/// goes out at once with `sendBeacon` (the queue it would wait in is gone).
fn set_consent(values: &JsValue) {
    let values = browser::consent_values(values);
    let withdrawal = with_sdk(|s| {
        let prefs = consent::apply(s.tracker.prefs(), values);
        let context = browser::context(&s.describe, None);
        let body = s.tracker.set_consent(prefs, context);
        body.map(|b| browser::beacon(s.sender.url(), &b))
    });
    if withdrawal.flatten().is_none() {
        flush(false);
    }
}

/// Sends the next batch, unless one is in flight or a retry is not due
/// (`force`: the page is starting or going away, try now).
fn flush(force: bool) {
    with_sdk(|s| {
        if let Some(body) = s.tracker.next_batch(force)
            && !s.sender.send(&body, force)
        {
            s.tracker.delivered(Outcome::Retry(None));
        }
        schedule(s);
    });
}

/// Makes sure the timer is set when something waits to be sent, and the
/// saver when the queue changed.
fn schedule(s: &mut Sdk) {
    if !s.saver_set && s.tracker.unsaved() {
        s.saver_set = s.saver.start(0.0);
        if !s.saver_set {
            s.tracker.save();
        }
    }
    if s.timer_set {
        return;
    }
    if let Some(ms) = s.tracker.send_delay() {
        s.timer_set = s.timer.start(ms);
    }
}

/// Writes the queue after a burst of calls (one write, not one per call).
fn save() {
    with_sdk(|s| {
        s.saver_set = false;
        s.tracker.save();
    });
}

fn timer_fired() {
    with_sdk(|s| s.timer_set = false);
    flush(false);
}

/// The answer to the batch in flight: on success the next one goes at once,
/// on failure the timer waits out the retry delay.
fn sent(outcome: Outcome) {
    let more = with_sdk(|s| {
        s.tracker.delivered(outcome);
        outcome == Outcome::Accepted && s.tracker.queued() > 0
    });
    if more == Some(true) {
        flush(false);
    } else {
        with_sdk(schedule);
    }
}

/// The page is being hidden or unloaded: the last chance to send. The next
/// batch goes with fetch `keepalive` (which outlives the page) if none is
/// in flight; what the in-flight request does not carry goes with
/// `sendBeacon`.
fn page_hidden() {
    flush(true);
    with_sdk(|s| {
        s.tracker.save();
        if let Some((body, n)) = s.tracker.beacon_batch(BEACON_BYTES)
            && browser::beacon(s.sender.url(), &body)
        {
            s.tracker.beacon_sent(n);
            s.tracker.save();
        }
    });
}
