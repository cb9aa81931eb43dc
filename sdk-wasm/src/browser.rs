//! Everything that touches the browser.
//!
//! No other module imports anything from JavaScript. Failures here are
//! swallowed (a page with storage disabled, an old browser without
//! `crypto`): the SDK degrades, it never throws into the host page.
//!
//! Size: the browser APIs are declared here (module `js`) rather than taken
//! from web-sys and js-sys. Each binding is a function of its own in the JS
//! glue, and a typed string getter, with its copy into wasm memory and its
//! exception wrapper, costs a few hundred bytes; js-sys also links in its
//! futures runtime. So properties are read with one generic `Reflect.get`
//! (`prop`, `prop_string`), strings come back as `JsValue`s through the one
//! shared conversion, and the few methods the SDK calls are declared on
//! minimal types, cast (not checked) from values whose type is known from
//! where they came.

use std::cell::Cell;

use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use weft_protocol::Json;

use crate::consent::{NAMES, Prefs, Signals};
use crate::delivery::Outcome;
use crate::env::{Clock, Random, Storage};
use crate::tracker::{ClickedElement, keys};

/// The browser APIs the SDK uses, as wasm-bindgen imports.
mod js {
    use wasm_bindgen::prelude::*;

    #[wasm_bindgen]
    extern "C" {
        /// The page's global object, its `window`. (`web_sys::window()`
        /// probes four globals and checks the type: bytes for nothing in a
        /// page.)
        #[wasm_bindgen(thread_local_v2, js_name = globalThis)]
        pub static GLOBAL: JsValue;

        /// `Reflect.get(target, key)`; throws for `undefined`/`null`, or
        /// when a getter throws.
        #[wasm_bindgen(catch, js_namespace = Reflect, js_name = get)]
        pub fn reflect_get(target: &JsValue, key: &str) -> Result<JsValue, JsValue>;

        /// `Reflect.set(target, key, value)`.
        #[wasm_bindgen(catch, js_namespace = Reflect, js_name = set)]
        pub fn reflect_set(
            target: &JsValue,
            key: &str,
            value: &JsValue,
        ) -> Result<JsValue, JsValue>;

        /// `JSON.stringify(value)`; throws on cycles and BigInt.
        #[wasm_bindgen(catch, js_namespace = JSON)]
        pub fn stringify(value: &JsValue) -> Result<JsValue, JsValue>;

        /// `Object()`: a new empty object.
        #[wasm_bindgen(js_name = Object)]
        pub fn object() -> JsValue;

        /// `Math.random()`
        #[wasm_bindgen(js_namespace = Math)]
        pub fn random() -> f64;

        /// `fetch(url, init)`; throws on a malformed URL or init.
        #[wasm_bindgen(catch)]
        pub fn fetch(url: &str, init: &JsValue) -> Result<Promise, JsValue>;

        /// `setTimeout(f, ms)`
        #[wasm_bindgen(catch, js_name = setTimeout)]
        pub fn set_timeout(f: &JsValue, ms: f64) -> Result<JsValue, JsValue>;

        pub type Function;
        /// `call(thisArg, arg)`
        #[wasm_bindgen(catch, method, js_name = call)]
        pub fn call1(
            this: &Function,
            this_arg: &JsValue,
            arg: &JsValue,
        ) -> Result<JsValue, JsValue>;

        pub type Date;
        /// `new Date()`
        #[wasm_bindgen(constructor)]
        pub fn new() -> Date;
        /// `Date.now()`
        #[wasm_bindgen(static_method_of = Date)]
        pub fn now() -> f64;
        /// `toISOString()`
        #[wasm_bindgen(method, js_name = toISOString)]
        pub fn to_iso_string(this: &Date) -> JsValue;

        pub type AbortSignal;
        /// `AbortSignal.timeout(ms)`; throws where it does not exist.
        #[wasm_bindgen(catch, static_method_of = AbortSignal)]
        pub fn timeout(ms: f64) -> Result<JsValue, JsValue>;

        pub type Navigator;
        /// `sendBeacon(url, body)`: whether the browser queued it.
        #[wasm_bindgen(catch, method, js_name = sendBeacon)]
        pub fn send_beacon(this: &Navigator, url: &str, body: &str) -> Result<bool, JsValue>;

        pub type Headers;
        /// `get(name)`: a string or `null`.
        #[wasm_bindgen(catch, method)]
        pub fn get(this: &Headers, name: &str) -> Result<JsValue, JsValue>;

        pub type Promise;
        /// `then(onFulfilled, onRejected)`
        #[wasm_bindgen(method)]
        pub fn then(this: &Promise, fulfilled: &JsValue, rejected: &JsValue);

        pub type Storage;
        /// `getItem(key)`: a string or `null`.
        #[wasm_bindgen(catch, method, js_name = getItem)]
        pub fn get_item(this: &Storage, key: &str) -> Result<JsValue, JsValue>;
        /// `setItem(key, value)`; throws when over quota.
        #[wasm_bindgen(catch, method, js_name = setItem)]
        pub fn set_item(this: &Storage, key: &str, value: &str) -> Result<(), JsValue>;
        /// `removeItem(key)`
        #[wasm_bindgen(catch, method, js_name = removeItem)]
        pub fn remove_item(this: &Storage, key: &str) -> Result<(), JsValue>;

        pub type Crypto;
        /// `getRandomValues(buf)`, writing into `buf` in wasm memory.
        #[wasm_bindgen(catch, method, js_name = getRandomValues)]
        pub fn get_random_values(this: &Crypto, buf: &mut [u8]) -> Result<(), JsValue>;

        pub type Element;
        /// `closest(selectors)`: the element or `null`; throws when the
        /// receiver is not an element.
        #[wasm_bindgen(catch, method)]
        pub fn closest(this: &Element, selectors: &str) -> Result<JsValue, JsValue>;
        /// `getAttribute(name)`: a string or `null`.
        #[wasm_bindgen(method, js_name = getAttribute)]
        pub fn get_attribute(this: &Element, name: &str) -> JsValue;
        /// `querySelector(selectors)`: the element or `null`.
        #[wasm_bindgen(catch, method, js_name = querySelector)]
        pub fn query_selector(this: &Element, selectors: &str) -> Result<JsValue, JsValue>;

        pub type EventTarget;
        /// `addEventListener(type, listener, capture)`
        #[wasm_bindgen(catch, method, js_name = addEventListener)]
        pub fn add_event_listener(
            this: &EventTarget,
            kind: &str,
            listener: &JsValue,
            capture: bool,
        ) -> Result<(), JsValue>;
        /// `removeEventListener(type, listener, capture)`
        #[wasm_bindgen(catch, method, js_name = removeEventListener)]
        pub fn remove_event_listener(
            this: &EventTarget,
            kind: &str,
            listener: &JsValue,
            capture: bool,
        ) -> Result<(), JsValue>;
    }
}

/// `window`.
fn window() -> JsValue {
    js::GLOBAL.with(JsValue::clone)
}

/// `obj[key]`; `undefined` when reading it throws (a getter that throws, or
/// `obj` being `undefined` or `null`).
fn prop(obj: &JsValue, key: &str) -> JsValue {
    js::reflect_get(obj, key).unwrap_or(JsValue::UNDEFINED)
}

/// `obj[key]` when it is a string.
fn prop_string(obj: &JsValue, key: &str) -> Option<String> {
    prop(obj, key).as_string()
}

/// `obj[key]` when it is an object (so not `undefined` or `null`).
fn prop_object(obj: &JsValue, key: &str) -> Option<JsValue> {
    Some(prop(obj, key)).filter(JsValue::is_object)
}

/// `obj[key] = value`; ignored when it throws.
fn set_prop(obj: &JsValue, key: &str, value: &JsValue) {
    let _ = js::reflect_set(obj, key, value);
}

fn document() -> Option<JsValue> {
    prop_object(&window(), "document")
}

/// A script tag option (`dataset[key]`) when it is a string.
pub fn option(options: &JsValue, key: &str) -> Option<String> {
    prop_string(options, key)
}

/// `location.href`
pub fn location_href() -> Option<String> {
    prop_string(&prop(&window(), "location"), "href")
}

/// `Date.now()`
pub fn now_ms() -> f64 {
    js::Date::now()
}

/// The privacy signals of the browser: Global Privacy Control, and Do Not
/// Track when the site honours it.
pub fn signals(honour_dnt: bool) -> Signals {
    let nav = prop(&window(), "navigator");
    Signals {
        gpc: prop(&nav, "globalPrivacyControl").as_bool() == Some(true),
        dnt: honour_dnt && prop_string(&nav, "doNotTrack").as_deref() == Some("1"),
    }
}

/// Reads `consent.set`'s argument: for each of [`NAMES`], `true`/`false`
/// or Google Consent Mode's `"granted"`/`"denied"`; anything else is
/// "not given".
pub fn consent_values(prefs: &JsValue) -> [Option<bool>; NAMES.len()] {
    NAMES.map(|(name, _)| {
        let v = prop(prefs, name);
        v.as_bool().or_else(|| match v.as_string().as_deref() {
            Some("granted") => Some(true),
            Some("denied") => Some(false),
            _ => None,
        })
    })
}

/// `consent.get()`'s answer: `{necessary, analytics, marketing,
/// personalization}`.
pub fn prefs_object(prefs: Prefs) -> JsValue {
    let obj = js::object();
    for (key, on) in [
        ("necessary", true),
        ("analytics", prefs.analytics),
        ("marketing", prefs.marketing),
        ("personalization", prefs.personalization),
    ] {
        set_prop(&obj, key, &JsValue::from_bool(on));
    }
    obj
}

/// Sends `body` with `navigator.sendBeacon`; `true` when the browser took
/// it.
pub fn beacon(url: &str, body: &str) -> bool {
    let nav: js::Navigator = prop(&window(), "navigator").unchecked_into();
    nav.send_beacon(url, body).unwrap_or(false)
}

/// The browser as the tracker's [`crate::env::Env`]: localStorage, a
/// first-party cookie mirroring the anonymous ID, `Date` and
/// `crypto.getRandomValues`.
pub struct BrowserEnv {
    storage: Option<js::Storage>,
    /// The cookie's `domain` attribute: the site's registrable domain, found
    /// on first use (inner `None`: a host-only cookie). A `Cell` rather
    /// than a `OnceCell`, whose re-entrancy check is a formatted panic.
    cookie_domain: Cell<Option<Option<String>>>,
}

impl BrowserEnv {
    /// Opens localStorage if the page allows it (reading `localStorage`
    /// throws when storage is disabled). `cookie_domain` overrides the
    /// registrable-domain detection.
    pub fn new(cookie_domain: Option<String>) -> Self {
        let storage = prop_object(&window(), "localStorage").map(JsCast::unchecked_into);
        BrowserEnv {
            storage,
            cookie_domain: Cell::new(cookie_domain.map(Some)),
        }
    }

    fn cookie_domain(&self) -> Option<String> {
        let domain = self.cookie_domain.take().unwrap_or_else(registrable_domain);
        self.cookie_domain.set(Some(domain.clone()));
        domain
    }
}

impl Default for BrowserEnv {
    fn default() -> Self {
        Self::new(None)
    }
}

const COOKIE_ANONYMOUS_ID: &str = "weft_aid";
const COOKIE_PROBE: &str = "weft_probe";

/// The registrable domain of the page (`shop.example` for
/// `www.shop.example`, `example.co.uk` for `a.example.co.uk`), so every
/// subdomain shares the cookie. Found without a public-suffix list the way
/// the browser itself decides: the shortest parent domain that accepts a
/// cookie. `None` for IP addresses and single-label hosts (`localhost`).
#[expect(
    clippy::manual_pattern_char_comparison,
    reason = "a `char` pattern links in a panicking slice path"
)]
fn registrable_domain() -> Option<String> {
    let host = prop_string(&prop(&window(), "location"), "hostname")?;
    let is_ip =
        host.contains(|c| c == ':') || host.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    if is_ip {
        return None;
    }
    let mut suffix = String::new();
    for label in host.rsplit(|c| c == '.') {
        let dotted = !suffix.is_empty();
        if dotted {
            suffix.insert(0, '.');
        }
        suffix.insert_str(0, label);
        if !dotted {
            continue;
        }
        write_cookie(COOKIE_PROBE, "1", "10", Some(&suffix));
        if read_cookie(COOKIE_PROBE).is_some() {
            write_cookie(COOKIE_PROBE, "", "0", Some(&suffix));
            return Some(suffix);
        }
    }
    None
}

#[expect(
    clippy::manual_pattern_char_comparison,
    reason = "a `char` pattern links in a panicking slice path: 900 bytes gzip"
)]
fn read_cookie(name: &str) -> Option<String> {
    let all = prop_string(&document()?, "cookie")?;
    // A predicate split and `&str` prefixes: none of them has a slice index
    // that can panic (`char` patterns have: the searcher's, and the 4-byte
    // buffer a `char` encodes itself into), so no panic message formatting
    // is linked in.
    all.split(|c| c == ';').find_map(|pair| {
        let v = pair.trim_ascii().strip_prefix(name)?.strip_prefix("=")?;
        (!v.is_empty()).then(|| v.to_owned())
    })
}

fn write_cookie(name: &str, value: &str, max_age_secs: &str, domain: Option<&str>) {
    if let Some(doc) = document() {
        let mut c = String::new();
        c.push_str(name);
        c.push('=');
        c.push_str(value);
        c.push_str("; path=/; max-age=");
        c.push_str(max_age_secs);
        c.push_str("; SameSite=Lax");
        if let Some(d) = domain {
            c.push_str("; domain=");
            c.push_str(d);
        }
        if prop_string(&prop(&window(), "location"), "protocol").as_deref() == Some("https:") {
            c.push_str("; Secure");
        }
        set_prop(&doc, "cookie", &JsValue::from_str(&c));
    }
}

impl Storage for BrowserEnv {
    fn get(&self, key: &str) -> Option<String> {
        let stored = self
            .storage
            .as_ref()
            .and_then(|s| s.get_item(key).ok()?.as_string());
        if stored.is_none() && key == keys::ANONYMOUS_ID {
            return read_cookie(COOKIE_ANONYMOUS_ID);
        }
        stored
    }

    fn set(&self, key: &str, value: &str) {
        if let Some(s) = &self.storage {
            let _ = s.set_item(key, value);
        }
        if key == keys::ANONYMOUS_ID {
            // One year; the cookie lets the ID survive a cleared localStorage
            // and reach the site's other subdomains.
            write_cookie(
                COOKIE_ANONYMOUS_ID,
                value,
                "31536000",
                self.cookie_domain().as_deref(),
            );
        }
    }

    fn remove(&self, key: &str) {
        if let Some(s) = &self.storage {
            let _ = s.remove_item(key);
        }
        if key == keys::ANONYMOUS_ID && read_cookie(COOKIE_ANONYMOUS_ID).is_some() {
            write_cookie(
                COOKIE_ANONYMOUS_ID,
                "",
                "0",
                self.cookie_domain().as_deref(),
            );
            // And a host-only one, from before the domain was known.
            write_cookie(COOKIE_ANONYMOUS_ID, "", "0", None);
        }
    }
}

impl Clock for BrowserEnv {
    fn now_iso(&self) -> String {
        js::Date::new()
            .to_iso_string()
            .as_string()
            .unwrap_or_default()
    }

    fn now_ms(&self) -> f64 {
        js::Date::now()
    }
}

impl Random for BrowserEnv {
    fn fill(&self, buf: &mut [u8]) {
        let crypto = prop_object(&window(), "crypto").map(JsCast::unchecked_into::<js::Crypto>);
        if let Some(c) = crypto
            && c.get_random_values(buf).is_ok()
        {
            return;
        }
        for b in buf.iter_mut() {
            *b = (js::random() * 256.0) as u8;
        }
    }
}

/// The page's context of right now, as JSON: what `describe` (the
/// loader's `context` function: URL, referrer, title, campaign, browser,
/// screen, locale) returns for `referrer` (a single-page app's previous
/// route, else `undefined` for `document.referrer`). Gathered in
/// JavaScript, where `URLSearchParams` and object literals cost a fraction
/// of their Rust equivalents in the download; `{}` if it fails.
pub fn context(describe: &JsValue, referrer: Option<&str>) -> Json {
    let referrer = referrer.map_or(JsValue::UNDEFINED, JsValue::from_str);
    let f: &js::Function = describe.unchecked_ref();
    f.call1(&JsValue::NULL, &referrer)
        .ok()
        .and_then(|v| object_to_json(&v))
        .unwrap_or_else(|| Json::from_trusted("{}"))
}

/// `JSON.stringify` of a plain object argument; `None` for anything else or
/// for objects that cannot be serialised (cycles, BigInt).
pub fn object_to_json(value: &JsValue) -> Option<Json> {
    if !value.is_object() {
        return None;
    }
    let text = js::stringify(value).ok()?.as_string()?;
    // Objects only: not arrays, nor what a `toJSON` turned into a scalar.
    text.starts_with("{").then(|| Json::from_trusted(text))
}

/// Delivers batch bodies with `fetch`, and reports each outcome to the
/// handler given at creation.
///
/// The outcome comes back through one closure, kept for the sender's life and
/// given as both the fulfilment and the rejection handler: no future, no task
/// queue, no closure per request.
pub struct Sender {
    url: String,
    done: Closure<dyn FnMut(JsValue)>,
}

impl Sender {
    /// A sender to `url` that calls `on_done` with the outcome of each
    /// request.
    pub fn new(url: String, mut on_done: impl FnMut(Outcome) + 'static) -> Self {
        let done = Closure::<dyn FnMut(JsValue)>::new(move |answer: JsValue| {
            // Fulfilled: a Response with a status. Rejected: an error (a
            // network failure), which has none.
            let status = prop(&answer, "status").as_f64().map(|s| s as u16);
            let headers: js::Headers = prop(&answer, "headers").unchecked_into();
            let retry_after = headers.get("Retry-After").ok().and_then(|v| v.as_string());
            on_done(Outcome::of(status, retry_after.as_deref()));
        });
        Sender { url, done }
    }

    /// The collector's batch endpoint.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// POSTs `body`; the handler is called with the outcome. `false` when
    /// the request could not even start (the handler is not called).
    ///
    /// The body is sent as `text/plain` with no custom headers, so the
    /// browser makes a simple CORS request (no preflight round trip). Only
    /// the page's last requests use `keepalive` (they outlive the page):
    /// the browser counts unread keepalive responses against a 64 KB quota,
    /// which ordinary traffic would exhaust. A request that has not
    /// answered in 30 s is aborted and retried.
    pub fn send(&self, body: &str, keepalive: bool) -> bool {
        let init = js::object();
        set_prop(&init, "method", &JsValue::from_str("POST"));
        set_prop(&init, "body", &JsValue::from_str(body));
        if keepalive {
            set_prop(&init, "keepalive", &JsValue::TRUE);
        }
        if let Ok(signal) = js::AbortSignal::timeout(30_000.0) {
            set_prop(&init, "signal", &signal);
        }
        let done = self.done.as_ref();
        match js::fetch(&self.url, &init) {
            Ok(p) => {
                p.then(done, done);
                true
            }
            Err(_) => false,
        }
    }
}

/// A one-shot timer that can be started again and again with one closure.
pub struct Timer {
    closure: Closure<dyn FnMut(JsValue)>,
}

impl Timer {
    /// A timer that calls `f` each time it fires.
    pub fn new(mut f: impl FnMut() + 'static) -> Self {
        // The same closure type as the listeners' (the timer passes no
        // argument): one kind of closure less in the wasm and the glue.
        let closure = Closure::<dyn FnMut(JsValue)>::new(move |_| f());
        Timer { closure }
    }

    /// Fires once after `ms` milliseconds; `false` if it could not be set.
    pub fn start(&self, ms: f64) -> bool {
        js::set_timeout(self.closure.as_ref(), ms).is_ok()
    }
}

/// An event listener that is removed when dropped.
pub struct Listener {
    target: js::EventTarget,
    kind: &'static str,
    closure: Closure<dyn FnMut(JsValue)>,
    capture: bool,
}

impl Listener {
    /// Listens for `kind` events on `target`; the handler gets the event.
    pub fn new(
        target: JsValue,
        kind: &'static str,
        capture: bool,
        handler: impl FnMut(JsValue) + 'static,
    ) -> Option<Self> {
        let target: js::EventTarget = target.unchecked_into();
        let closure = Closure::<dyn FnMut(JsValue)>::new(handler);
        target
            .add_event_listener(kind, closure.as_ref(), capture)
            .ok()?;
        Some(Listener {
            target,
            kind,
            closure,
            capture,
        })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self
            .target
            .remove_event_listener(self.kind, self.closure.as_ref(), self.capture);
    }
}

/// What a click is recorded on: the closest of these to the click's target.
const CLICKABLE: &str = "a,button,[role=button],input[type=submit],input[type=button],[data-weft-click],[data-weft-event]";
/// Elements whose text is never recorded, nor that of elements inside
/// them or containing them.
const SENSITIVE: &str = "[data-weft-mask],input[type=password],[autocomplete^=cc-]";

/// Calls `handler` with the clicked link, button or `data-weft-*` element
/// for every click on the page, except inside `[data-weft-ignore]`.
pub fn on_click(mut handler: impl FnMut(ClickedElement) + 'static) -> Option<Listener> {
    Listener::new(document()?, "click", true, move |event| {
        if let Some(el) = clicked_element(&event) {
            handler(el);
        }
    })
}

fn clicked_element(event: &JsValue) -> Option<ClickedElement> {
    // The target is not checked to be an Element: on anything else
    // `closest` is not a function, which the binding catches as an error.
    let target: js::Element = prop_object(event, "target")?.unchecked_into();
    let found = |el: &js::Element, selectors| el.closest(selectors).is_ok_and(|e| e.is_object());
    if found(&target, "[data-weft-ignore]") {
        return None;
    }
    let el: js::Element = Some(target.closest(CLICKABLE).ok()?)
        .filter(JsValue::is_object)?
        .unchecked_into();
    let attribute = |name| el.get_attribute(name).as_string();
    let tag = prop_string(&el, "tagName")
        .unwrap_or_default()
        .to_ascii_lowercase();
    // Input values are never read: an input button's label is its value.
    let masked = tag == "input"
        || found(&el, SENSITIVE)
        || el.query_selector(SENSITIVE).is_ok_and(|e| e.is_object());
    Some(ClickedElement {
        id: prop_string(&el, "id").filter(|s| !s.is_empty()),
        // The attribute, not `className`, which is an object on SVG
        // elements (an SVG link is matched too).
        classes: attribute("class").filter(|s| !s.is_empty()),
        href: attribute("href"),
        text: if masked {
            String::new()
        } else {
            prop_string(&el, "textContent").unwrap_or_default()
        },
        event: attribute("data-weft-event").filter(|s| !s.is_empty()),
        tag,
    })
}

/// Calls `handler` when the page is hidden or unloaded (`pagehide`, and
/// `visibilitychange` to hidden), the last moment to send.
pub fn on_page_hide(handler: impl Fn() + Copy + 'static) -> Vec<Listener> {
    let mut out = Vec::new();
    out.extend(Listener::new(window(), "pagehide", false, move |_| {
        handler()
    }));
    if let Some(doc) = document() {
        let d = doc.clone();
        out.extend(Listener::new(doc, "visibilitychange", false, move |_| {
            if prop_string(&d, "visibilityState").as_deref() == Some("hidden") {
                handler();
            }
        }));
    }
    out
}
