//! Everything that touches the browser, through web-sys.
//!
//! No other module calls web-sys. Failures here are swallowed (a page with
//! storage disabled, an old browser without `crypto`): the SDK degrades, it
//! never throws into the host page.

use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use weft_protocol::{Context, PageContext};

use crate::env::{Clock, Random, Storage};
use crate::tracker::{ClickedElement, keys};

fn window() -> Option<web_sys::Window> {
    web_sys::window()
}

/// The browser as the tracker's [`crate::env::Env`]: localStorage, a
/// first-party cookie mirroring the anonymous ID, `Date` and
/// `crypto.getRandomValues`.
pub struct BrowserEnv {
    storage: Option<web_sys::Storage>,
}

impl BrowserEnv {
    /// Opens localStorage if the page allows it.
    pub fn new() -> Self {
        let storage = window().and_then(|w| w.local_storage().ok().flatten());
        BrowserEnv { storage }
    }
}

impl Default for BrowserEnv {
    fn default() -> Self {
        Self::new()
    }
}

const COOKIE_ANONYMOUS_ID: &str = "weft_aid";

fn html_document() -> Option<web_sys::HtmlDocument> {
    window()?
        .document()?
        .dyn_into::<web_sys::HtmlDocument>()
        .ok()
}

fn read_cookie(name: &str) -> Option<String> {
    let all = html_document()?.cookie().ok()?;
    all.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name && !v.is_empty()).then(|| v.to_owned())
    })
}

fn write_cookie(name: &str, value: &str, max_age_secs: &str) {
    if let Some(doc) = html_document() {
        let mut c = String::new();
        c.push_str(name);
        c.push('=');
        c.push_str(value);
        c.push_str("; path=/; max-age=");
        c.push_str(max_age_secs);
        c.push_str("; SameSite=Lax");
        let _ = doc.set_cookie(&c);
    }
}

impl Storage for BrowserEnv {
    fn get(&self, key: &str) -> Option<String> {
        let stored = self
            .storage
            .as_ref()
            .and_then(|s| s.get_item(key).ok().flatten());
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
        js_sys::Date::new_0().to_iso_string().into()
    }
}

impl Random for BrowserEnv {
    fn fill(&self, buf: &mut [u8]) {
        let crypto = window().and_then(|w| w.crypto().ok());
        if let Some(c) = crypto
            && c.get_random_values_with_u8_array(buf).is_ok()
        {
            return;
        }
        for b in buf.iter_mut() {
            *b = (js_sys::Math::random() * 256.0) as u8;
        }
    }
}

/// The page context of right now: URL, referrer, title, browser and locale.
pub fn context() -> Context {
    let mut ctx = Context::default();
    let Some(w) = window() else { return ctx };
    let loc = w.location();
    let doc = w.document();
    ctx.page = Some(PageContext {
        url: loc.href().ok(),
        path: loc.pathname().ok(),
        search: loc.search().ok(),
        referrer: doc.as_ref().map(|d| d.referrer()),
        title: doc.as_ref().map(|d| d.title()),
    });
    let nav = w.navigator();
    ctx.user_agent = nav.user_agent().ok();
    ctx.locale = nav.language();
    let options = js_sys::Intl::DateTimeFormat::new(&js_sys::Array::new(), &js_sys::Object::new())
        .resolved_options();
    ctx.timezone = js_sys::Reflect::get(&options, &"timeZone".into())
        .ok()
        .and_then(|v| v.as_string());
    ctx
}

/// `JSON.stringify` of a plain object argument; `None` for anything else or
/// for objects that cannot be serialised (cycles, BigInt).
pub fn object_to_json(value: &JsValue) -> Option<weft_protocol::Json> {
    if !value.is_object() {
        return None;
    }
    let text: String = js_sys::JSON::stringify(value).ok()?.into();
    Some(weft_protocol::Json::from_trusted(text))
}

/// POSTs `body` to `url` and resolves to whether the collector accepted it.
///
/// The body is sent as `text/plain` with no custom headers, so the browser
/// makes a simple CORS request (no preflight round trip), and with
/// `keepalive` so it survives the page being closed.
pub async fn send(url: &str, body: &str) -> bool {
    let Some(w) = window() else { return false };
    let init = web_sys::RequestInit::new();
    init.set_method("POST");
    init.set_body(&JsValue::from_str(body));
    let _ = js_sys::Reflect::set(&init, &"keepalive".into(), &true.into());
    let promise = w.fetch_with_str_and_init(url, &init);
    match JsFuture::from(promise).await {
        Ok(resp) => resp
            .dyn_into::<web_sys::Response>()
            .map(|r| r.ok())
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// An event listener that is removed when dropped.
pub struct Listener {
    target: web_sys::EventTarget,
    kind: &'static str,
    closure: Closure<dyn FnMut(web_sys::Event)>,
    capture: bool,
}

impl Listener {
    /// Listens for `kind` events on `target`.
    pub fn new(
        target: web_sys::EventTarget,
        kind: &'static str,
        capture: bool,
        handler: impl FnMut(web_sys::Event) + 'static,
    ) -> Option<Self> {
        let closure = Closure::<dyn FnMut(web_sys::Event)>::new(handler);
        target
            .add_event_listener_with_callback_and_bool(
                kind,
                closure.as_ref().unchecked_ref(),
                capture,
            )
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
        let _ = self.target.remove_event_listener_with_callback_and_bool(
            self.kind,
            self.closure.as_ref().unchecked_ref(),
            self.capture,
        );
    }
}

/// A repeating timer that is cleared when dropped.
pub struct Interval {
    id: i32,
    _closure: Closure<dyn FnMut()>,
}

impl Interval {
    /// Calls `f` every `ms` milliseconds.
    pub fn new(ms: i32, f: impl FnMut() + 'static) -> Option<Self> {
        let closure = Closure::<dyn FnMut()>::new(f);
        let id = window()?
            .set_interval_with_callback_and_timeout_and_arguments_0(
                closure.as_ref().unchecked_ref(),
                ms,
            )
            .ok()?;
        Some(Interval {
            id,
            _closure: closure,
        })
    }
}

impl Drop for Interval {
    fn drop(&mut self) {
        if let Some(w) = window() {
            w.clear_interval_with_handle(self.id);
        }
    }
}

/// Calls `handler` with the clicked link, button or `data-weft-click`
/// element for every click on the page.
pub fn on_click(mut handler: impl FnMut(ClickedElement) + 'static) -> Option<Listener> {
    let doc: web_sys::EventTarget = window()?.document()?.into();
    Listener::new(doc, "click", true, move |event: web_sys::Event| {
        if let Some(el) = clicked_element(&event) {
            handler(el);
        }
    })
}

fn clicked_element(event: &web_sys::Event) -> Option<ClickedElement> {
    let target = event.target()?.dyn_into::<web_sys::Element>().ok()?;
    let el = target
        .closest("a,button,[data-weft-click]")
        .ok()
        .flatten()?;
    Some(ClickedElement {
        tag: el.tag_name().to_ascii_lowercase(),
        id: Some(el.id()).filter(|s| !s.is_empty()),
        classes: Some(el.class_name()).filter(|s| !s.is_empty()),
        href: el.get_attribute("href"),
        text: el.text_content().unwrap_or_default(),
    })
}

/// Calls `handler` when the page is hidden or unloaded (`pagehide`, and
/// `visibilitychange` to hidden), the last moment to send.
pub fn on_page_hide(handler: impl Fn() + 'static) -> Vec<Listener> {
    let handler = std::rc::Rc::new(handler);
    let mut out = Vec::new();
    let Some(w) = window() else { return out };
    let h = handler.clone();
    out.extend(Listener::new(
        w.clone().into(),
        "pagehide",
        false,
        move |_| h(),
    ));
    if let Some(doc) = w.document() {
        let d = doc.clone();
        out.extend(Listener::new(
            doc.into(),
            "visibilitychange",
            false,
            move |_| {
                if d.visibility_state() == web_sys::VisibilityState::Hidden {
                    handler();
                }
            },
        ));
    }
    out
}
