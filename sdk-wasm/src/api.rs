//! The JavaScript boundary: the only module with `#[wasm_bindgen]` exports.
//!
//! Each export converts its arguments at the edge and forwards to the one
//! tracker of the page. None of them can throw: a call before `start`, or one
//! made while the tracker is busy, is ignored. `js/loader.js` adds a
//! `try/catch` around every call as a second guard.

use std::cell::RefCell;

use wasm_bindgen::prelude::*;

use crate::browser::{self, BrowserEnv, Interval, Listener};
use crate::tracker::{Call, Config, Tracker};

/// How often queued messages are sent, in milliseconds.
const FLUSH_INTERVAL_MS: i32 = 5_000;

struct Sdk {
    tracker: Tracker<BrowserEnv>,
    endpoint: String,
    /// Owned browser resources: dropping the SDK removes them.
    _listeners: Vec<Listener>,
    _timer: Option<Interval>,
}

thread_local! {
    static SDK: RefCell<Option<Sdk>> = const { RefCell::new(None) };
}

/// Runs `f` on the started SDK; does nothing before `start` or on re-entry.
fn with_sdk<R>(f: impl FnOnce(&mut Sdk) -> R) -> Option<R> {
    SDK.with(|cell| {
        let mut guard = cell.try_borrow_mut().ok()?;
        guard.as_mut().map(f)
    })
}

/// Starts the SDK: restores identity and the queue, records the page view
/// and installs click capture, the flush timer and the page-hide flush.
/// `host` is the collector's origin (`https://collector.example.com`).
#[wasm_bindgen]
pub fn start(write_key: String, host: String) {
    let already = SDK.with(|cell| cell.try_borrow().map(|s| s.is_some()).unwrap_or(true));
    if already {
        return;
    }
    let mut tracker = Tracker::new(BrowserEnv::new(), Config::new(write_key));
    tracker.page(Call::default(), browser::context());

    let mut listeners = Vec::new();
    listeners.extend(browser::on_click(|el| {
        with_sdk(|s| s.tracker.click(&el, browser::context()));
        flush_if_full();
    }));
    listeners.extend(browser::on_page_hide(flush));
    let timer = Interval::new(FLUSH_INTERVAL_MS, flush);

    let mut endpoint = host.trim_end_matches('/').to_owned();
    endpoint.push_str("/v1/batch");
    SDK.with(|cell| {
        if let Ok(mut s) = cell.try_borrow_mut() {
            *s = Some(Sdk {
                tracker,
                endpoint,
                _listeners: listeners,
                _timer: timer,
            });
        }
    });
    flush();
}

/// `weft.page(name?, properties?)`
#[wasm_bindgen]
pub fn page(name: Option<String>, properties: JsValue) {
    let call = Call {
        name,
        data: browser::object_to_json(&properties),
    };
    with_sdk(|s| s.tracker.page(call, browser::context()));
    flush_if_full();
}

/// `weft.track(event, properties?)`
#[wasm_bindgen]
pub fn track(event: String, properties: JsValue) {
    let props = browser::object_to_json(&properties);
    with_sdk(|s| s.tracker.track(event, props, browser::context()));
    flush_if_full();
}

/// `weft.identify(userId, traits?)`
#[wasm_bindgen]
pub fn identify(user_id: String, traits: JsValue) {
    let traits = browser::object_to_json(&traits);
    with_sdk(|s| s.tracker.identify(user_id, traits, browser::context()));
    flush_if_full();
}

/// The anonymous ID of this browser, once started.
#[wasm_bindgen(js_name = anonymousId)]
pub fn anonymous_id() -> Option<String> {
    with_sdk(|s| s.tracker.anonymous_id().to_owned())
}

/// `weft.flush()`: sends the next batch now, unless one is in flight.
#[wasm_bindgen]
pub fn flush() {
    let Some((endpoint, body)) = with_sdk(|s| {
        s.tracker
            .next_batch()
            .map(|body| (s.endpoint.clone(), body))
    })
    .flatten() else {
        return;
    };
    wasm_bindgen_futures::spawn_local(async move {
        let ok = browser::send(&endpoint, &body).await;
        let more = with_sdk(|s| {
            s.tracker.delivered(ok);
            ok && s.tracker.queued() > 0
        });
        if more == Some(true) {
            flush();
        }
    });
}

fn flush_if_full() {
    if with_sdk(|s| s.tracker.batch_ready()) == Some(true) {
        flush();
    }
}
