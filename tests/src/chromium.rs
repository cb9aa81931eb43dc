//! Real headless Chromium, driven over the DevTools protocol (CDP).
//!
//! The tests observe the browser from outside the page: network requests,
//! cookies, storage and uncaught exceptions are read through CDP, not through
//! the page's own (possibly patched) JavaScript.
//!
//! Chromium comes from `WEFT_CHROMIUM` or the PATH (`chromium`). Its absence
//! fails the test: browser tests never skip.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

type Reply = Result<Value, Value>;

/// Events' `params` by session (`""` for the browser's own) and method, in
/// arrival order: a long run (the SDK bench) collects hundreds of thousands,
/// and a page's poll for one kind must not scan them all.
type Events = HashMap<(String, String), Vec<Value>>;

/// The connection to the browser: requests by id, events by session and
/// method.
struct Cdp {
    out: mpsc::UnboundedSender<String>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    events: Mutex<Events>,
    next_id: AtomicU64,
}

impl Cdp {
    async fn call(&self, session: Option<&str>, method: &str, params: Value) -> Value {
        match self.call_fallible(session, method, params).await {
            Ok(v) => v,
            Err(e) => panic!("CDP {method} failed: {e}"),
        }
    }

    /// Like [`Cdp::call`], handing back the browser's error instead of
    /// panicking on it.
    async fn call_fallible(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = s.into();
        }
        self.out.send(msg.to_string()).expect("CDP connection open");
        match tokio::time::timeout(Duration::from_secs(30), rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => panic!("CDP connection closed during {method}"),
            Err(_) => panic!("CDP {method} got no answer in 30 s"),
        }
    }
}

/// A headless Chromium process with its own empty profile. Killed on drop.
pub struct Chromium {
    _child: Child,
    _profile: TempDir,
    cdp: Arc<Cdp>,
}

/// The Chromium binary to use.
pub fn chromium_path() -> PathBuf {
    if let Some(p) = std::env::var_os("WEFT_CHROMIUM") {
        return PathBuf::from(p);
    }
    for candidate in [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ] {
        if std::path::Path::new(candidate).exists() {
            return PathBuf::from(candidate);
        }
    }
    panic!(
        "Chromium not found: the browser tests need it. Run `cargo xtask test`, which \
         installs it, or set WEFT_CHROMIUM"
    );
}

/// Chromium's flag mapping every `*.weft.test` host name to loopback, so a
/// test can serve pages from `http://shop.weft.test:PORT` and
/// `http://blog.weft.test:PORT` (two sites under one registrable domain)
/// without DNS.
pub const WEFT_TEST_HOSTS: &str = "--host-resolver-rules=MAP *.weft.test 127.0.0.1";

impl Chromium {
    /// Starts Chromium and connects to it.
    pub async fn launch() -> Chromium {
        Self::launch_with(&[]).await
    }

    /// Starts Chromium with `extra` command-line flags (e.g.
    /// [`WEFT_TEST_HOSTS`]) and connects to it.
    pub async fn launch_with(extra: &[&str]) -> Chromium {
        let profile = tempfile::tempdir().expect("profile dir");
        let mut child = Command::new(chromium_path())
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-default-apps",
                "--disable-extensions",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start Chromium");
        let stderr = child.stderr.take().expect("stderr piped");
        let mut lines = BufReader::new(stderr).lines();
        let deadline = Instant::now() + Duration::from_secs(30);
        let ws_url = loop {
            let line = tokio::time::timeout_at(deadline.into(), lines.next_line())
                .await
                .expect("Chromium printed its DevTools address within 30 s")
                .expect("read Chromium stderr")
                .expect("Chromium exited before printing its DevTools address");
            if let Some(url) = line.strip_prefix("DevTools listening on ") {
                break url.trim().to_owned();
            }
        };
        // Keep draining stderr so Chromium never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        let (ws, _) = tokio_tungstenite::connect_async(ws_url.as_str())
            .await
            .expect("connect to DevTools");
        let (mut sink, mut stream) = ws.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<String>();
        let cdp = Arc::new(Cdp {
            out,
            pending: Mutex::new(HashMap::new()),
            events: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        });
        tokio::spawn(async move {
            while let Some(text) = out_rx.recv().await {
                if sink.send(Message::text(text)).await.is_err() {
                    break;
                }
            }
        });
        let reader = cdp.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let Ok(text) = msg.to_text() else { continue };
                let Ok(v) = serde_json::from_str::<Value>(text) else {
                    continue;
                };
                if let Some(id) = v.get("id").and_then(Value::as_u64) {
                    let reply = match v.get("error") {
                        Some(e) => Err(e.clone()),
                        None => Ok(v.get("result").cloned().unwrap_or(Value::Null)),
                    };
                    if let Some(tx) = reader.pending.lock().unwrap().remove(&id) {
                        let _ = tx.send(reply);
                    }
                } else if let Value::Object(mut event) = v {
                    let text = |v: Option<Value>| match v {
                        Some(Value::String(s)) => s,
                        _ => String::new(),
                    };
                    let key = (
                        text(event.remove("sessionId")),
                        text(event.remove("method")),
                    );
                    let params = event.remove("params").unwrap_or(Value::Null);
                    reader
                        .events
                        .lock()
                        .unwrap()
                        .entry(key)
                        .or_default()
                        .push(params);
                }
            }
        });
        Chromium {
            _child: child,
            _profile: profile,
            cdp,
        }
    }

    /// Opens a new tab on `about:blank` with Page, Runtime and Network
    /// events enabled.
    pub async fn new_page(&self) -> Page {
        let target = self
            .cdp
            .call(None, "Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let target_id = target["targetId"].as_str().expect("targetId").to_owned();
        let attached = self
            .cdp
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
            )
            .await;
        let session = attached["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_owned();
        let page = Page {
            cdp: self.cdp.clone(),
            session,
        };
        for domain in ["Page.enable", "Runtime.enable", "Network.enable"] {
            page.call(domain, json!({})).await;
        }
        page
    }
}

impl Chromium {
    /// Every cookie of the browser (all sites), read by the browser itself.
    pub async fn cookies(&self) -> Vec<Value> {
        let r = self.cdp.call(None, "Storage.getCookies", json!({})).await;
        r["cookies"].as_array().cloned().unwrap_or_default()
    }
}

/// A request the page sent, as the browser's network layer saw it.
#[derive(Debug, Clone)]
pub struct SentRequest {
    /// CDP's request id (for `Network.getRequestPostData`).
    pub id: String,
    /// `GET`, `POST`...
    pub method: String,
    /// The full URL.
    pub url: String,
    /// The body as text (gzip decompressed), when the browser reported it
    /// with the request.
    pub post_data: Option<String>,
    /// The body's size in bytes as sent, when the browser reported it.
    pub wire_bytes: Option<usize>,
    /// What started it (`fetch`, `beacon`, `script`...), from CDP's `type`.
    pub kind: String,
}

/// One tab.
pub struct Page {
    cdp: Arc<Cdp>,
    session: String,
}

impl Page {
    /// Sends a CDP command to this tab.
    pub async fn call(&self, method: &str, params: Value) -> Value {
        self.cdp.call(Some(&self.session), method, params).await
    }

    /// This tab's events called `method`, in arrival order.
    pub fn events(&self, method: &str) -> Vec<Value> {
        self.cdp
            .events
            .lock()
            .unwrap()
            .get(&(self.session.clone(), method.to_owned()))
            .cloned()
            .unwrap_or_default()
    }

    /// Navigates and waits for the load event.
    pub async fn goto(&self, url: &str) {
        let before = self.events("Page.loadEventFired").len();
        let nav = self.call("Page.navigate", json!({"url": url})).await;
        assert!(
            nav.get("errorText").is_none(),
            "navigation to {url} failed: {nav}"
        );
        crate::eventually(Duration::from_secs(20), "the page load event", || async {
            (self.events("Page.loadEventFired").len() > before).then_some(())
        })
        .await;
    }

    /// Evaluates `expression` in the page (awaiting promises) and returns
    /// its value. Panics if it throws.
    pub async fn eval(&self, expression: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if let Some(ex) = r.get("exceptionDetails") {
            panic!("evaluating {expression:?} threw: {ex}");
        }
        r["result"]["value"].clone()
    }

    /// Clicks the centre of the first element matching `selector` with real
    /// mouse events (press and release), as a user would.
    pub async fn click(&self, selector: &str) {
        let sel = serde_json::to_string(selector).expect("selector as JSON");
        let point = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({sel}); if (!e) return null; \
                 e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); \
                 return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
            ))
            .await;
        let (x, y) = match point.as_array().map(|a| (a[0].as_f64(), a[1].as_f64())) {
            Some((Some(x), Some(y))) => (x, y),
            _ => panic!("no element matches {selector}"),
        };
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
            )
            .await;
        }
    }

    /// Uncaught exceptions the page has thrown so far, as text.
    pub fn exceptions(&self) -> Vec<String> {
        self.events("Runtime.exceptionThrown")
            .into_iter()
            .map(|e| e["exceptionDetails"].to_string())
            .collect()
    }

    /// URLs of the requests the page has sent so far.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.events("Network.requestWillBeSent")
            .into_iter()
            .map(|e| {
                (
                    e["request"]["method"].as_str().unwrap_or("").to_owned(),
                    e["request"]["url"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }

    /// Every request the page has sent so far, in order, with its body when
    /// the browser reported one.
    pub fn sent_requests(&self) -> Vec<SentRequest> {
        self.events("Network.requestWillBeSent")
            .into_iter()
            .map(|e| SentRequest {
                id: e["requestId"].as_str().unwrap_or("").to_owned(),
                method: e["request"]["method"].as_str().unwrap_or("").to_owned(),
                url: e["request"]["url"].as_str().unwrap_or("").to_owned(),
                post_data: post_data_of(&e["request"]),
                wire_bytes: wire_bytes_of(&e["request"]),
                kind: e["type"].as_str().unwrap_or("").to_owned(),
            })
            .collect()
    }

    /// The body of a request the page sent, as text (gzip bodies
    /// decompressed): from the request event when the browser put it there,
    /// else asked for (`None` when the browser no longer has it).
    pub async fn request_body(&self, request: &SentRequest) -> Option<String> {
        if let Some(body) = &request.post_data {
            return Some(body.clone());
        }
        let r = self
            .cdp
            .call_fallible(
                Some(&self.session),
                "Network.getRequestPostData",
                json!({"requestId": request.id}),
            )
            .await
            .ok()?;
        let data = r["postData"].as_str()?;
        if r["base64Encoded"].as_bool() == Some(true) {
            return text_of(
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, data).ok()?,
            );
        }
        Some(data.to_owned())
    }

    /// Requests sent to a URL whose path ends with `path_suffix` (query and
    /// fragment ignored).
    pub fn requests_to(&self, path_suffix: &str) -> Vec<SentRequest> {
        self.sent_requests()
            .into_iter()
            .filter(|r| {
                let path = r.url.split(['?', '#']).next().unwrap_or("");
                path.ends_with(path_suffix)
            })
            .collect()
    }

    /// Reloads and waits for the load event.
    pub async fn reload(&self) {
        let before = self.events("Page.loadEventFired").len();
        self.call("Page.reload", json!({"ignoreCache": false}))
            .await;
        crate::eventually(
            Duration::from_secs(20),
            "the page load event after reload",
            || async { (self.events("Page.loadEventFired").len() > before).then_some(()) },
        )
        .await;
    }

    /// Runs `source` in every document this tab loads from now on, before
    /// the page's own scripts (e.g. to fake `navigator.globalPrivacyControl`).
    pub async fn add_init_script(&self, source: &str) {
        self.call(
            "Page.addScriptToEvaluateOnNewDocument",
            json!({"source": source}),
        )
        .await;
    }

    /// Takes the tab's network offline (requests fail as with no
    /// connection, `navigator.onLine` is false) or back online.
    pub async fn set_offline(&self, offline: bool) {
        self.call(
            "Network.emulateNetworkConditions",
            json!({"offline": offline, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1}),
        )
        .await;
    }

    /// Types `text` into the focused element, as an input method would.
    pub async fn insert_text(&self, text: &str) {
        self.call("Input.insertText", json!({"text": text})).await;
    }

    /// `localStorage` of `origin` (`http://host:port`), read by the browser
    /// rather than by the page, sorted by key.
    pub async fn local_storage(&self, origin: &str) -> Vec<(String, String)> {
        self.dom_storage(origin, true).await
    }

    /// `sessionStorage` of `origin`, like [`Page::local_storage`].
    pub async fn session_storage(&self, origin: &str) -> Vec<(String, String)> {
        self.dom_storage(origin, false).await
    }

    async fn dom_storage(&self, origin: &str, local: bool) -> Vec<(String, String)> {
        let r = self
            .call(
                "DOMStorage.getDOMStorageItems",
                json!({"storageId": {"securityOrigin": origin, "isLocalStorage": local}}),
            )
            .await;
        let mut items: Vec<(String, String)> = r["entries"]
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .filter_map(|kv| Some((kv[0].as_str()?.to_owned(), kv[1].as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        items.sort();
        items
    }

    /// The names of `origin`'s IndexedDB databases, read by the browser.
    pub async fn indexed_db_names(&self, origin: &str) -> Vec<String> {
        let r = self
            .call(
                "IndexedDB.requestDatabaseNames",
                json!({"securityOrigin": origin}),
            )
            .await;
        r["databaseNames"]
            .as_array()
            .map(|names| {
                names
                    .iter()
                    .filter_map(|n| n.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until `expression` evaluates to something truthy in the page
    /// and returns it; exceptions while polling count as "not yet".
    pub async fn wait_for(&self, timeout: Duration, expression: &str) -> Value {
        let wrapped = format!(
            "(() => {{ try {{ return ({expression}) || null; }} catch (_) {{ return null; }} }})()"
        );
        crate::eventually(timeout, expression, || async {
            let v = self.eval(&wrapped).await;
            (!v.is_null()).then_some(v)
        })
        .await
    }
}

fn post_data_of(request: &Value) -> Option<String> {
    // Newer Chromium reports bodies as base64 entries too: the bytes as
    // sent (`postData` is a lossy text form of a binary body).
    if let Some(entries) = request["postDataEntries"].as_array() {
        let mut body = Vec::new();
        for e in entries {
            let b64 = e["bytes"].as_str()?;
            body.extend(
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64).ok()?,
            );
        }
        return text_of(body);
    }
    request["postData"].as_str().map(str::to_owned)
}

/// The size of a request's body as sent.
fn wire_bytes_of(request: &Value) -> Option<usize> {
    match request["postDataEntries"].as_array() {
        Some(entries) => entries
            .iter()
            .map(|e| {
                let b64 = e["bytes"].as_str()?;
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64)
                    .ok()
                    .map(|b| b.len())
            })
            .sum(),
        None => request["postData"].as_str().map(str::len),
    }
}

/// A body as text: gzip bodies (the SDK compresses its batches)
/// decompressed.
pub fn text_of(body: Vec<u8>) -> Option<String> {
    if body.starts_with(&[0x1f, 0x8b]) {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&body[..]), &mut text)
            .ok()?;
        return Some(text);
    }
    String::from_utf8(body).ok()
}
