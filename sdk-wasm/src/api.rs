//! The JavaScript boundary: the only module with `#[wasm_bindgen]` exports.
//!
//! Each export converts its arguments at the edge and forwards to the one
//! tracker of the page. None of them can throw: a call before `start`, or one
//! made while the tracker is busy, is ignored. `js/loader.js` adds a
//! `try/catch` around every call as a second guard.

use std::cell::RefCell;

use wasm_bindgen::prelude::*;
use weft_protocol::Json;

use crate::browser::{self, BrowserEnv, Interval, Listener, Sender};
use crate::tracker::{Call, ClickedElement, Config, Tracker};

/// How often queued messages are sent, in milliseconds.
const FLUSH_INTERVAL_MS: i32 = 5_000;

struct Sdk {
    tracker: Tracker<BrowserEnv>,
    sender: Sender,
    /// Owned browser resources: dropping the SDK removes them.
    _listeners: Vec<Listener>,
    _timer: Option<Interval>,
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

/// Starts the SDK: restores identity and the queue, records the page view
/// and installs click capture, the flush timer and the page-hide flush.
/// `host` is the collector's origin (`https://collector.example.com`).
#[wasm_bindgen]
pub fn start(write_key: String, host: String) {
    let already = SDK
        .try_with(|cell| cell.try_borrow().map(|s| s.is_some()).unwrap_or(true))
        .unwrap_or(true);
    if already {
        return;
    }
    let tracker = Tracker::new(BrowserEnv::new(), Config::new(write_key));

    let mut listeners = Vec::new();
    listeners.extend(browser::on_click(|el| record(Record::Click(el))));
    listeners.extend(browser::on_page_hide(flush));
    let timer = Interval::new(FLUSH_INTERVAL_MS, flush);

    let mut endpoint = host;
    while endpoint.as_bytes().last() == Some(&b'/') {
        endpoint.pop();
    }
    endpoint.push_str("/v1/batch");
    let sender = Sender::new(endpoint, sent);
    let _ = SDK.try_with(|cell| {
        if let Ok(mut s) = cell.try_borrow_mut() {
            *s = Some(Sdk {
                tracker,
                sender,
                _listeners: listeners,
                _timer: timer,
            });
        }
    });
    record(Record::Page(Call::default()));
    flush();
}

/// `weft.page(name?, properties?)`
#[wasm_bindgen]
pub fn page(name: Option<String>, properties: JsValue) {
    let data = browser::object_to_json(&properties);
    record(Record::Page(Call { name, data }));
}

/// `weft.track(event, properties?)`
#[wasm_bindgen]
pub fn track(event: String, properties: JsValue) {
    record(Record::Track(event, browser::object_to_json(&properties)));
}

/// `weft.identify(userId, traits?)`
#[wasm_bindgen]
pub fn identify(user_id: String, traits: JsValue) {
    record(Record::Identify(user_id, browser::object_to_json(&traits)));
}

/// A call to record, with its properties or traits already converted.
enum Record {
    Page(Call),
    Track(String, Option<Json>),
    Identify(String, Option<Json>),
    Click(ClickedElement),
}

/// Records a call with the page's context of now, and sends at once if a
/// batch is full. One function for every kind of call, so the tracker's
/// message building is in the wasm once rather than inlined at each caller.
fn record(what: Record) {
    with_sdk(|s| {
        let context = browser::context();
        match what {
            Record::Page(call) => s.tracker.page(call, context),
            Record::Track(event, properties) => s.tracker.track(event, properties, context),
            Record::Identify(user_id, traits) => s.tracker.identify(user_id, traits, context),
            Record::Click(element) => s.tracker.click(&element, context),
        }
    });
    flush_if_full();
}

/// The anonymous ID of this browser once started (a string), else
/// `undefined`. A `JsValue` rather than an `Option<String>`: no copy into a
/// new allocation for the glue to read back.
#[wasm_bindgen(js_name = anonymousId)]
pub fn anonymous_id() -> JsValue {
    with_sdk(|s| JsValue::from_str(s.tracker.anonymous_id())).unwrap_or(JsValue::UNDEFINED)
}

/// `weft.flush()`: sends the next batch now, unless one is in flight.
#[wasm_bindgen]
pub fn flush() {
    with_sdk(|s| {
        if let Some(body) = s.tracker.next_batch() {
            s.sender.send(&body);
        }
    });
}

/// The answer to the batch in flight: on success, the next one goes at once.
fn sent(ok: bool) {
    let more = with_sdk(|s| {
        s.tracker.delivered(ok);
        ok && s.tracker.queued() > 0
    });
    if more == Some(true) {
        flush();
    }
}

fn flush_if_full() {
    if with_sdk(|s| s.tracker.batch_ready()) == Some(true) {
        flush();
    }
}
