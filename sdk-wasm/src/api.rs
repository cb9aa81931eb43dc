//! The JavaScript boundary: the only module with `#[wasm_bindgen]` exports.
//!
//! Two exports: [`start`], and [`call`] for every method of `window.weft`
//! and the loader's own calls (timers, answers, page hide) by number (one
//! export instead of a dozen keeps the glue small; the numbers are [`op`],
//! [`METHODS`] is the one list of the public ones, and the tests below hold
//! `js/loader.js`, `js/weft.d.ts` and every copy of the inline stub to it).
//! Each converts its arguments at the edge and forwards to the one tracker
//! of the page. None of them can throw: a call before `start`, or one made
//! while the tracker is busy, is ignored. `js/loader.js` adds a `try/catch`
//! around every call as a second guard.
//!
//! A call never waits for the network or storage: a full batch is sent
//! from a 0 ms timer, the queue is written at the next idle moment (at most
//! `SAVE_WAIT_MS` later) and at once when the page is hidden.

use alloc::string::String;
use alloc::sync::Arc;

use wasm_bindgen::prelude::*;

use crate::browser::{self, BrowserEnv};
use crate::consent::{self, Category, Policy, Signals};
use crate::delivery::Outcome;
use crate::queue::Part;
use crate::tracker::{Config, Tracker};
use weft_protocol::MessageType;

/// The methods of `window.weft` that reach Rust, in the order of their
/// numbers in [`op`]: `js/loader.js`'s `METHODS` must be this list, and
/// `js/weft.d.ts` and the inline stub must name them (checked below).
pub const METHODS: [&str; 12] = [
    "page",
    "track",
    "identify",
    "alias",
    "group",
    "reset",
    "flush",
    "anonymousId",
    "userId",
    "consent.set",
    "consent.get",
    "debug",
];

/// The numbers of [`call`]: the public methods (as in [`METHODS`]), then
/// what only the loader calls.
pub mod op {
    /// `page(name?, properties?)`
    pub const PAGE: u32 = 0;
    /// `track(event, properties?, category?)`: the loader passes the
    /// options' category.
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
    /// `anonymousId()`
    pub const ANONYMOUS_ID: u32 = 7;
    /// `userId()`
    pub const USER_ID: u32 = 8;
    /// `consent.set(preferences)`
    pub const CONSENT_SET: u32 = 9;
    /// `consent.get()`
    pub const CONSENT_GET: u32 = 10;
    /// `debug()`: the counts of what is queued, held and lost, as JSON.
    pub const DEBUG: u32 = 11;
    /// A single-page app's route changed: a page view, with the previous
    /// URL as referrer.
    pub const ROUTE: u32 = 12;
    /// The request in flight answered: status `a` as decimal text (none: a
    /// network failure), `Retry-After` `b`.
    pub const SENT: u32 = 13;
    /// The page is being hidden or unloaded.
    pub const HIDE: u32 = 14;
    /// Timer `kind` (see [`super::timer`]) fired: `TICK + kind`.
    pub const TICK: u32 = 15;
}

/// The SDK's timers (`weftHost.later`).
pub mod timer {
    /// The next send.
    pub const SEND: u32 = 0;
    /// Writing the queue to storage, at the next idle moment.
    pub const SAVE: u32 = 1;
}

/// The bits of [`start`]'s `flags`.
pub mod flag {
    /// Record the first page view (`data-capture-pages` is not `false`).
    pub const CAPTURE_PAGES: u32 = 1;
    /// `navigator.globalPrivacyControl === true`.
    pub const GPC: u32 = 2;
    /// `navigator.doNotTrack === "1"` on a site that honours it
    /// (`data-dnt="true"`).
    pub const DNT: u32 = 4;
}

/// The last request's budget for the queue's messages when the page goes
/// away (the browser's keepalive budget is 64 KB for all of them).
const BEACON_BYTES: usize = weft_protocol::limits::KEEPALIVE_BUDGET_BYTES - 1024;
/// The longest a changed queue waits for an idle moment to be written.
const SAVE_WAIT_MS: f64 = 500.0;

struct Sdk {
    tracker: Tracker<BrowserEnv>,
    /// The page's context members, as the loader last described them.
    page: Option<Part>,
    /// When the send timer fires (ms since the epoch), while it is set.
    send_at: Option<f64>,
    /// The saver is waiting for an idle moment.
    saver_set: bool,
    /// The tracker's losses last reported (`data-debug`).
    reported: [u32; 4],
}

/// The page's SDK, once started. Only ever locked with `try_lock`: the
/// wasm runs on the page's one thread, so a held lock means a re-entrant
/// call (page code that JavaScript the SDK called runs calling `weft`
/// again), which is ignored rather than waited for.
static SDK: spin::Mutex<Option<Sdk>> = spin::Mutex::new(None);

/// Runs `f` on the started SDK; does nothing before `start` or on re-entry.
fn with_sdk<R>(f: impl FnOnce(&mut Sdk) -> R) -> Option<R> {
    SDK.try_lock()?.as_mut().map(f)
}

/// A number option (at least 1, whole, at most a day's milliseconds), else
/// `default` (the loader passes `NaN` for an option not given).
fn number(n: f64, default: f64) -> f64 {
    if n >= 1.0 {
        // `as` truncates toward zero: whole milliseconds or messages.
        (n.min(86_400_000.0) as u64) as f64
    } else {
        default
    }
}

/// Starts the SDK with the loader's options: the script tag's
/// `data-write-key`, `data-consent`, `data-policy-version`,
/// `data-flush-interval` and `data-batch-size`, and the [`flag`] bits.
/// Works out consent, restores identity and the queue when allowed,
/// records the page view and has what is queued sent soon (not now: the
/// page is loading). Typed arguments rather than an options object: no
/// `JsValue` crosses the boundary, so wasm-bindgen's table of JS values
/// and its conversions are not linked in.
#[wasm_bindgen]
pub fn start(
    write_key: Option<String>,
    consent: Option<String>,
    policy_version: Option<String>,
    flush_interval: f64,
    batch_size: f64,
    flags: u32,
) {
    // Held while the tracker starts: a call it makes into JavaScript that
    // calls `weft` back finds the SDK busy (and not started).
    let Some(mut slot) = SDK.try_lock() else {
        return;
    };
    if slot.is_some() {
        return;
    }
    let mut config = Config::new(write_key.unwrap_or_default());
    config.policy = Policy::parse(consent.as_deref());
    config.policy_version = policy_version.unwrap_or_default();
    config.flush_interval_ms = number(flush_interval, config.flush_interval_ms);
    config.batch_count = number(batch_size, 20.0) as usize;
    let signals = Signals {
        gpc: flags & flag::GPC != 0,
        dnt: flags & flag::DNT != 0,
    };
    // Built in its place, not moved there.
    *slot = Some(Sdk {
        tracker: Tracker::new(BrowserEnv, config, signals),
        page: None,
        send_at: None,
        saver_set: false,
        reported: [0; 4],
    });
    drop(slot);
    if flags & flag::CAPTURE_PAGES != 0 {
        record(MessageType::Page, None, None, None, None);
    }
    with_sdk(schedule);
}

/// Every method of `window.weft` and the loader's calls (see [`op`]); the
/// loader passes up to three arguments as text: names and IDs, properties
/// and traits as JSON, numbers in decimal. The getters answer with
/// `weftHost.answer(text)` (nothing for `undefined`) rather than a return
/// value: a returned string is two values, which wasm2js (the strict-CSP
/// fallback) cannot translate. Exported as `op`: the loader's `wasm.op`
/// (renamed with the other exports by the build).
#[wasm_bindgen(js_name = op)]
pub fn call(op: u32, a: Option<String>, b: Option<String>, c: Option<String>) {
    match op {
        op::PAGE | op::ROUTE => {
            // A route change: a page view with the previous URL as referrer.
            let (name, data, referrer) = match op {
                op::PAGE => (a, b, None),
                _ => (None, None, a),
            };
            record(MessageType::Page, name, data, None, referrer);
        }
        op::TRACK | op::IDENTIFY | op::ALIAS | op::GROUP if a.is_some() => {
            let kind = match op {
                op::TRACK => MessageType::Track,
                op::IDENTIFY => MessageType::Identify,
                op::ALIAS => MessageType::Alias,
                _ => MessageType::Group,
            };
            record(kind, a, b, c, None);
        }
        op::RESET => {
            if let Some(Some(notice)) = with_sdk(|s| s.tracker.reset()) {
                browser::beacon(&notice);
            }
        }
        op::FLUSH => flush(false),
        op::CONSENT_SET => set_consent(a.as_deref().unwrap_or_default()),
        op::CONSENT_GET => {
            with_sdk(|s| browser::answer(&browser::prefs_bits(s.tracker.prefs())));
        }
        op::ANONYMOUS_ID | op::USER_ID => {
            with_sdk(|s| {
                let id = if op == op::ANONYMOUS_ID {
                    s.tracker.anonymous_id()
                } else {
                    s.tracker.user_id()
                };
                id.map(browser::answer)
            });
        }
        op::DEBUG => {
            with_sdk(|s| browser::answer(&s.tracker.debug_json()));
        }
        op::SENT => {
            let status = a.and_then(|s| weft_protocol::json::parse_u64(&s));
            sent(Outcome::of(status.map(|s| s as u16), b.as_deref()));
        }
        op::HIDE => page_hidden(),
        SAVE_DUE => {
            with_sdk(|s| {
                s.saver_set = false;
                s.tracker.save();
            });
        }
        SEND_DUE => {
            with_sdk(|s| s.send_at = None);
            flush(false);
        }
        _ => {}
    }
}

/// The timers' operations.
const SEND_DUE: u32 = op::TICK + timer::SEND;
const SAVE_DUE: u32 = op::TICK + timer::SAVE;

/// Records a call (see [`Tracker::call`]; `category`: a track's) with the
/// page's context of now, then makes sure a send is scheduled (at once, in
/// a task of its own, when a batch is full: the call itself never waits
/// for a request to start). `referrer`: a route change's previous URL.
fn record(
    kind: MessageType,
    a: Option<String>,
    b: Option<String>,
    category: Option<String>,
    referrer: Option<String>,
) {
    with_sdk(|s| {
        if let Some(members) = browser::describe(referrer.as_deref()) {
            s.page = Some(Arc::new(members));
        }
        let category = category.map_or(Category::Analytics, |name| Category::parse(&name));
        s.tracker.call(kind, a, b, category, s.page.clone());
        schedule(s);
    });
}

/// `consent.set(preferences)`: applies the decision; a withdrawal's record
/// goes out at once with `sendBeacon` (the queue it would wait in is gone).
fn set_consent(values: &str) {
    let values = browser::consent_values(values);
    with_sdk(|s| {
        let prefs = consent::apply(s.tracker.prefs(), values);
        if let Some(members) = browser::describe(None) {
            s.page = Some(Arc::new(members));
        }
        let page = s.page.clone();
        if let Some(body) = s.tracker.set_consent(prefs, page, &browser::shared()) {
            browser::beacon(&body);
        }
        schedule(s);
    });
}

/// Sends the next batch, unless one is in flight or a retry is not due
/// (`force`: the page is going away, try now).
fn flush(force: bool) {
    with_sdk(|s| {
        if s.tracker.queued() > 0
            && let Some(body) = s.tracker.next_batch(force, &browser::shared())
            && !browser::send(&body, force)
        {
            s.tracker.delivered(Outcome::Retry(None));
        }
        schedule(s);
    });
}

/// Makes sure the send timer is set for when the next request is due, and
/// the saver when the queue changed; says what was lost (`data-debug`).
fn schedule(s: &mut Sdk) {
    let losses = s.tracker.losses();
    if losses != s.reported {
        s.reported = losses;
        browser::dropped(&s.tracker.debug_json());
    }
    if !s.saver_set && s.tracker.unsaved() {
        s.saver_set = true;
        browser::later(timer::SAVE, SAVE_WAIT_MS);
    }
    if let Some(ms) = s.tracker.send_delay() {
        let at = browser::now_ms() + ms;
        if s.send_at.is_none_or(|t| at < t) {
            s.send_at = Some(at);
            browser::later(timer::SEND, ms);
        }
    }
}

/// The answer to the batch in flight: on success the next one goes at once,
/// on failure the timer waits out the retry delay.
fn sent(outcome: Outcome) {
    let more = with_sdk(|s| {
        s.tracker.delivered(outcome);
        matches!(outcome, Outcome::Accepted) && s.tracker.queued() > 0
    });
    if more == Some(true) {
        flush(false);
    } else {
        with_sdk(schedule);
    }
}

/// The page is being hidden or unloaded: the last chance to send and to
/// save. The next batch goes with fetch `keepalive` (which outlives the
/// page) if none is in flight; what the in-flight request does not carry
/// goes with `sendBeacon`; the queue is written at once.
fn page_hidden() {
    flush(true);
    with_sdk(|s| {
        s.tracker.save();
        if let Some((body, n)) = s.tracker.beacon_batch(BEACON_BYTES, &browser::shared())
            && browser::beacon(&body)
        {
            s.tracker.beacon_sent(n);
            s.tracker.save();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of the workspace.
    fn read(path: &str) -> String {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// The methods only the loader answers (never numbered).
    const LOADER_ONLY: [&str; 4] = [
        "ready",
        "consent.grantAll",
        "consent.denyAll",
        "consent.onChange",
    ];
    /// The getters: answered at once, so not queued by the stub.
    const GETTERS: [&str; 4] = ["anonymousId", "userId", "consent.get", "debug"];

    #[test]
    fn the_numbers_are_the_positions_in_the_method_list() {
        let numbered = [
            ("page", op::PAGE),
            ("track", op::TRACK),
            ("identify", op::IDENTIFY),
            ("alias", op::ALIAS),
            ("group", op::GROUP),
            ("reset", op::RESET),
            ("flush", op::FLUSH),
            ("anonymousId", op::ANONYMOUS_ID),
            ("userId", op::USER_ID),
            ("consent.set", op::CONSENT_SET),
            ("consent.get", op::CONSENT_GET),
            ("debug", op::DEBUG),
        ];
        assert_eq!(numbered.len(), METHODS.len());
        for (name, n) in numbered {
            assert_eq!(METHODS.get(n as usize), Some(&name), "op {n}");
        }
    }

    #[test]
    fn the_loader_numbers_its_methods_and_operations_as_rust_does() {
        let loader = read("sdk-wasm/js/loader.js");
        let list = format!("var METHODS = \"{}\".split(\" \");", METHODS.join(" "));
        assert!(loader.contains(&list), "loader.js must say: {list}");
        let internal = format!(
            "var ROUTE = {}, SENT = {}, HIDE = {}, TICK = {};",
            op::ROUTE,
            op::SENT,
            op::HIDE,
            op::TICK
        );
        assert!(loader.contains(&internal), "loader.js must say: {internal}");
        let timers = format!("if (kind) {{ // {} (the saver)", timer::SAVE);
        assert!(
            timer::SEND == 0 && loader.contains(&timers),
            "loader.js's `later` tells the saver by a non-zero kind: {timers}"
        );
        let flags = format!(
            "var CAPTURE_PAGES = {}, GPC = {}, DNT = {};",
            flag::CAPTURE_PAGES,
            flag::GPC,
            flag::DNT
        );
        assert!(loader.contains(&flags), "loader.js must say: {flags}");
        let names: Vec<&str> = crate::consent::NAMES.iter().map(|(n, _)| *n).collect();
        let consent = format!("var CONSENT_NAMES = \"{}\".split(\" \");", names.join(" "));
        assert!(loader.contains(&consent), "loader.js must say: {consent}");
        let of: String = crate::consent::NAMES
            .iter()
            .map(|(_, c)| {
                let i = crate::consent::DECIDED.iter().position(|d| d == c);
                char::from(b'0' + i.expect("a decided category") as u8)
            })
            .collect();
        let categories = format!("var CONSENT_OF = \"{of}\";");
        assert!(
            loader.contains(&categories),
            "loader.js must say: {categories}"
        );
        for name in LOADER_ONLY {
            assert!(loader.contains(&format!("\"{name}\"")), "{name}");
        }
    }

    #[test]
    fn the_types_declare_every_method() {
        let types = read("sdk-wasm/js/weft.d.ts");
        let (weft, consent) = types
            .split_once("export interface WeftConsent {")
            .and_then(|(_, rest)| rest.split_once("export interface Weft {"))
            .map(|(consent, weft)| (weft.to_owned(), consent.to_owned()))
            .expect("weft.d.ts declares WeftConsent, then Weft");
        let declared = |body: &str| -> Vec<String> {
            body.lines()
                .filter_map(|l| {
                    let l = l.trim();
                    let name = l.split_once('(')?.0;
                    name.chars()
                        .all(|c| c.is_ascii_alphanumeric())
                        .then(|| name.to_owned())
                })
                .collect()
        };
        let mut all: Vec<String> = declared(&weft);
        all.extend(declared(&consent).iter().map(|n| format!("consent.{n}")));
        all.sort();
        all.dedup();
        let mut expected: Vec<String> = METHODS
            .iter()
            .chain(LOADER_ONLY.iter())
            .map(|s| s.to_string())
            .collect();
        expected.sort();
        assert_eq!(all, expected, "the methods weft.d.ts declares");
    }

    #[test]
    fn every_copy_of_the_inline_stub_is_the_one_stub_and_queues_every_method() {
        let stub = read("sdk-wasm/js/stub.min.js");
        let stub = stub.trim();
        // What it queues: every method but the getters.
        let queued = |prefix: &str| -> String {
            METHODS
                .iter()
                .chain(LOADER_ONLY.iter())
                .filter(|m| !GETTERS.contains(m))
                .filter_map(|m| match m.split_once('.') {
                    Some((p, n)) if p == prefix => Some(n),
                    None if prefix.is_empty() => Some(*m),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert!(
            stub.contains(&format!("\"{}\".split", queued(""))),
            "{stub}"
        );
        assert!(
            stub.contains(&format!("\"{}\".split", queued("consent"))),
            "{stub}"
        );
        for path in [
            "README.md",
            "www/index.html",
            "www/product.html",
            "www/app.html",
            "www/account.html",
            "tests/src/bin/sdk_bench.rs",
            "tests/fixtures/sdk/stub.html",
            "tests/fixtures/csp/strict.html",
            "tests/fixtures/csp/header.html",
            "tests/fixtures/csp/nonce.html",
            "tests/fixtures/csp/normal.html",
            "tests/fixtures/csp/missing-sdk.html",
            "tests/fixtures/csp/missing-wasm.html",
            "tests/fixtures/csp/missing-fallback.html",
        ] {
            let text = read(path);
            assert!(
                text.contains(stub),
                "{path} must hold the inline stub of sdk-wasm/js/stub.min.js"
            );
        }
    }
}
