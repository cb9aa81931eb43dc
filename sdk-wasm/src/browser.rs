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

use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use weft_protocol::{Context, PageContext};

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

        /// `fetch(url, init)`
        #[wasm_bindgen]
        pub fn fetch(url: &str, init: &JsValue) -> Promise;

        /// `setInterval(f, ms)`
        #[wasm_bindgen(catch, js_name = setInterval)]
        pub fn set_interval(f: &JsValue, ms: i32) -> Result<i32, JsValue>;

        /// `clearInterval(id)`
        #[wasm_bindgen(js_name = clearInterval)]
        pub fn clear_interval(id: i32);

        /// `Intl.DateTimeFormat()` (callable without `new`).
        #[wasm_bindgen(js_namespace = Intl, js_name = DateTimeFormat)]
        pub fn date_time_format() -> DateTimeFormat;

        pub type DateTimeFormat;
        /// `resolvedOptions()`
        #[wasm_bindgen(method, js_name = resolvedOptions)]
        pub fn resolved_options(this: &DateTimeFormat) -> JsValue;

        pub type Date;
        /// `new Date()`
        #[wasm_bindgen(constructor)]
        pub fn new() -> Date;
        /// `toISOString()`
        #[wasm_bindgen(method, js_name = toISOString)]
        pub fn to_iso_string(this: &Date) -> JsValue;

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

/// The browser as the tracker's [`crate::env::Env`]: localStorage, a
/// first-party cookie mirroring the anonymous ID, `Date` and
/// `crypto.getRandomValues`.
pub struct BrowserEnv {
    storage: Option<js::Storage>,
}

impl BrowserEnv {
    /// Opens localStorage if the page allows it (reading `localStorage`
    /// throws when storage is disabled).
    pub fn new() -> Self {
        let storage = prop_object(&window(), "localStorage").map(JsCast::unchecked_into);
        BrowserEnv { storage }
    }
}

impl Default for BrowserEnv {
    fn default() -> Self {
        Self::new()
    }
}

const COOKIE_ANONYMOUS_ID: &str = "weft_aid";

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

fn write_cookie(name: &str, value: &str, max_age_secs: &str) {
    if let Some(doc) = document() {
        let mut c = String::new();
        c.push_str(name);
        c.push('=');
        c.push_str(value);
        c.push_str("; path=/; max-age=");
        c.push_str(max_age_secs);
        c.push_str("; SameSite=Lax");
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
            // One year; the cookie lets the ID survive a cleared localStorage.
            write_cookie(COOKIE_ANONYMOUS_ID, value, "31536000");
        }
    }

    fn remove(&self, key: &str) {
        if let Some(s) = &self.storage {
            let _ = s.remove_item(key);
        }
        if key == keys::ANONYMOUS_ID {
            write_cookie(COOKIE_ANONYMOUS_ID, "", "0");
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

/// The page context of right now: URL, referrer, title, browser and locale.
pub fn context() -> Context {
    let w = window();
    let loc = prop(&w, "location");
    let doc = prop(&w, "document");
    let nav = prop(&w, "navigator");
    Context {
        page: Some(PageContext {
            url: prop_string(&loc, "href"),
            path: prop_string(&loc, "pathname"),
            search: prop_string(&loc, "search"),
            referrer: prop_string(&doc, "referrer"),
            title: prop_string(&doc, "title"),
        }),
        library: None,
        user_agent: prop_string(&nav, "userAgent"),
        locale: prop_string(&nav, "language"),
        timezone: time_zone(),
    }
}

/// `Intl.DateTimeFormat().resolvedOptions().timeZone`
fn time_zone() -> Option<String> {
    prop_string(&js::date_time_format().resolved_options(), "timeZone")
}

/// `JSON.stringify` of a plain object argument; `None` for anything else or
/// for objects that cannot be serialised (cycles, BigInt).
pub fn object_to_json(value: &JsValue) -> Option<weft_protocol::Json> {
    if !value.is_object() {
        return None;
    }
    let text = js::stringify(value).ok()?.as_string()?;
    Some(weft_protocol::Json::from_trusted(text))
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
    /// A sender to `url` that calls `on_done` with whether the collector
    /// accepted each request.
    pub fn new(url: String, mut on_done: impl FnMut(bool) + 'static) -> Self {
        let done = Closure::<dyn FnMut(JsValue)>::new(move |answer: JsValue| {
            // Fulfilled: a Response, accepted when `ok`. Rejected: an error,
            // which has no `ok`.
            on_done(prop(&answer, "ok").as_bool() == Some(true));
        });
        Sender { url, done }
    }

    /// POSTs `body`; the handler is called with the outcome.
    ///
    /// The body is sent as `text/plain` with no custom headers, so the
    /// browser makes a simple CORS request (no preflight round trip), and
    /// with `keepalive` so it survives the page being closed.
    pub fn send(&self, body: &str) {
        let init = js::object();
        set_prop(&init, "method", &JsValue::from_str("POST"));
        set_prop(&init, "body", &JsValue::from_str(body));
        set_prop(&init, "keepalive", &JsValue::TRUE);
        let done = self.done.as_ref();
        js::fetch(&self.url, &init).then(done, done);
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

/// A repeating timer that is cleared when dropped.
pub struct Interval {
    id: i32,
    _closure: Closure<dyn FnMut(JsValue)>,
}

impl Interval {
    /// Calls `f` every `ms` milliseconds.
    pub fn new(ms: i32, mut f: impl FnMut() + 'static) -> Option<Self> {
        // The same closure type as the listeners' (the timer passes no
        // argument): one kind of closure less in the wasm and the glue.
        let closure = Closure::<dyn FnMut(JsValue)>::new(move |_| f());
        let id = js::set_interval(closure.as_ref(), ms).ok()?;
        Some(Interval {
            id,
            _closure: closure,
        })
    }
}

impl Drop for Interval {
    fn drop(&mut self) {
        js::clear_interval(self.id);
    }
}

/// Calls `handler` with the clicked link, button or `data-weft-click`
/// element for every click on the page.
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
    let el = Some(target.closest("a,button,[data-weft-click]").ok()?).filter(JsValue::is_object)?;
    let attribute = |name| {
        el.unchecked_ref::<js::Element>()
            .get_attribute(name)
            .as_string()
    };
    Some(ClickedElement {
        tag: prop_string(&el, "tagName")
            .unwrap_or_default()
            .to_ascii_lowercase(),
        id: prop_string(&el, "id").filter(|s| !s.is_empty()),
        // The attribute, not `className`, which is an object on SVG
        // elements (an SVG link is matched too).
        classes: attribute("class").filter(|s| !s.is_empty()),
        href: attribute("href"),
        text: prop_string(&el, "textContent").unwrap_or_default(),
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
