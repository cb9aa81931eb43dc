//! Pages and network conditions for the browser SDK tests.
//!
//! - [`Site`]: a web site on an origin of its own (another port, and with
//!   Chromium's host-resolver rules another host name), serving fixture
//!   pages whose script tag points at the collector, as on every real
//!   site: the SDK is always loaded cross-origin. Pages name the collector
//!   as `%WEFT_COLLECTOR%` and the write key as `%WEFT_WRITE_KEY%`.
//! - [`fixtures_dir`]: the SDK fixture pages in `tests/fixtures/sdk/`;
//!   [`fixture_site`] serves them for a collector.
//! - [`FlakyProxy`]: a loopback HTTP proxy in front of a collector that
//!   answers the first N `POST /v1/batch` with 503 and forwards everything
//!   else, recording which messages each batch carried and what it answered.
//!   It is what a collector behind a load balancer looks like during a
//!   deploy, without mocking the SDK or the collector.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::chromium::Page;
use crate::eventually;
use crate::harness::{StoredEvent, TestCollector, WRITE_KEY, workspace_root};

/// `tests/fixtures/sdk/`: the SDK fixture pages.
pub fn fixtures_dir() -> PathBuf {
    workspace_root().join("tests/fixtures/sdk")
}

/// Serves HTTP/1.1 on `listener` with `answer` until `stop` fires: the
/// accept loop the site and the proxy share.
fn serve_until<F, Fut>(listener: TcpListener, mut stop: oneshot::Receiver<()>, answer: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(_) => continue,
                },
                _ = &mut stop => break,
            };
            let answer = answer.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let answer = answer.clone();
                    async move { Ok::<_, Infallible>(answer(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

/// A static web site on loopback, on another origin than the collector.
///
/// HTML pages get `%WEFT_COLLECTOR%` (the collector's origin, e.g.
/// `http://127.0.0.1:PORT`), `%WEFT_WRITE_KEY%` and the site's own
/// replacements filled in; other files are served as they are. The site
/// sets no CORS header: everything cross-origin must be the collector's
/// doing.
pub struct Site {
    /// Where it listens (127.0.0.1).
    pub addr: SocketAddr,
    subst: Arc<Mutex<Vec<(String, String)>>>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Site {
    /// Serves `dir` on `127.0.0.1:0`, with the collector at `collector`
    /// (an origin such as `http://127.0.0.1:PORT`) and `replacements`.
    pub async fn start(dir: &Path, collector: &str, replacements: &[(&str, &str)]) -> Site {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let mut subst = vec![
            ("%WEFT_COLLECTOR%".to_owned(), collector.to_owned()),
            ("%WEFT_WRITE_KEY%".to_owned(), WRITE_KEY.to_owned()),
        ];
        subst.extend(
            replacements
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let subst = Arc::new(Mutex::new(subst));
        let state = Arc::new((dir.to_path_buf(), subst.clone()));
        let (tx, rx) = oneshot::channel::<()>();
        serve_until(listener, rx, move |req: Request<Incoming>| {
            let state = state.clone();
            async move {
                let subst = state.1.lock().unwrap().clone();
                serve_file(&state.0, &subst, req.uri().path())
            }
        });
        Site {
            addr,
            subst,
            shutdown: Some(tx),
        }
    }

    /// From now on pages get `value` for `placeholder` (for values known
    /// only after the site has its port, such as a collector whose allowed
    /// origins name the site).
    pub fn set(&self, placeholder: &str, value: &str) {
        let mut subst = self.subst.lock().unwrap();
        subst.retain(|(k, _)| k != placeholder);
        subst.insert(0, (placeholder.to_owned(), value.to_owned()));
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `http://{host}:PORT{path}`: the site under a host name that
    /// Chromium maps to loopback ([`crate::chromium::WEFT_TEST_HOSTS`]).
    pub fn url_on(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.addr.port())
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

fn serve_file(dir: &Path, subst: &[(String, String)], path: &str) -> Response<Full<Bytes>> {
    let name = path.trim_start_matches('/');
    let safe = !name.is_empty()
        && name
            .split('/')
            .all(|seg| !seg.is_empty() && !seg.starts_with('.'));
    let data = if safe {
        std::fs::read(dir.join(name)).ok()
    } else {
        None
    };
    let Some(mut data) = data else {
        let mut resp = Response::new(Full::new(Bytes::from_static(b"not found")));
        *resp.status_mut() = StatusCode::NOT_FOUND;
        return resp;
    };
    // A page's policy sent as a header: `page.html.csp` beside it.
    let mut csp = None;
    let content_type = match name.rsplit('.').next() {
        Some("html") => {
            csp = std::fs::read_to_string(dir.join(format!("{name}.csp")))
                .ok()
                .map(|policy| {
                    subst
                        .iter()
                        .fold(policy.trim().to_owned(), |p, (from, to)| {
                            p.replace(from.as_str(), to)
                        })
                });
            let mut text = String::from_utf8_lossy(&data).into_owned();
            for (from, to) in subst {
                text = text.replace(from.as_str(), to);
            }
            data = text.into_bytes();
            "text/html; charset=utf-8"
        }
        Some("js") => "text/javascript",
        Some("wasm") => "application/wasm",
        _ => "application/octet-stream",
    };
    let mut resp = Response::new(Full::new(Bytes::from(data)));
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static(content_type));
    resp.headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-store"));
    if let Some(v) = csp.and_then(|p| HeaderValue::from_str(&p).ok()) {
        resp.headers_mut().insert("content-security-policy", v);
    }
    resp
}

/// The SDK fixture pages on a [`Site`] of their own, pointing at `collector`
/// (on 127.0.0.1: the site differs from it by its port).
pub async fn fixture_site(collector: &TestCollector) -> Site {
    Site::start(&fixtures_dir(), &collector.url(""), &[]).await
}

/// Waits until the SDK on `page` has loaded: `weft.ready(cb)` has called
/// back (15 s at most).
pub async fn sdk_ready(page: &Page) {
    page.wait_for(
        Duration::from_secs(15),
        "window.weft && typeof weft.ready === 'function'",
    )
    .await;
    let ok = page
        .eval(
            "new Promise(r => { try { weft.ready(() => r(true)); } catch (e) { r('ready threw: ' + e); } \
             setTimeout(() => r('weft.ready did not call back in 15 s'), 15000); })",
        )
        .await;
    assert_eq!(ok, true, "the SDK loaded on {}", page_url(page).await);
}

async fn page_url(page: &Page) -> String {
    page.eval("location.href")
        .await
        .as_str()
        .unwrap_or("")
        .to_owned()
}

/// Asks the SDK to send what it holds, then waits long enough for any
/// further batch (fixture pages flush every 500 ms) to have arrived: after
/// this, counts of stored events are final.
pub async fn flush_and_settle(page: &Page) {
    page.eval("weft.flush()").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    page.eval("weft.flush()").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
}

/// One `POST /v1/batch` as the proxy saw it.
#[derive(Debug, Clone)]
pub struct SeenBatch {
    /// What the proxy answered (503 while failing, else the collector's
    /// status).
    pub status: u16,
    /// The `messageId`s of the batch, in order (empty if the body was not
    /// a JSON batch).
    pub message_ids: Vec<String>,
    /// When it arrived.
    pub at: Instant,
}

/// An HTTP proxy on loopback that fails the first N batches with 503.
pub struct FlakyProxy {
    /// Where it listens.
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<SeenBatch>>>,
    healed: Arc<AtomicBool>,
    shutdown: Option<oneshot::Sender<()>>,
}

struct ProxyState {
    upstream: SocketAddr,
    fail_first: usize,
    retry_after: Option<u32>,
    seen: Arc<Mutex<Vec<SeenBatch>>>,
    healed: Arc<AtomicBool>,
}

impl FlakyProxy {
    /// Listens on `127.0.0.1:0`, answers the first `fail_first`
    /// `POST /v1/batch` with 503 (with CORS headers, so the page can read
    /// the status) and forwards every other request to `upstream`.
    /// `usize::MAX` fails every batch until [`FlakyProxy::heal`].
    pub async fn start(upstream: SocketAddr, fail_first: usize) -> FlakyProxy {
        Self::start_with_retry_after(upstream, fail_first, None).await
    }

    /// Like [`FlakyProxy::start`], the 503s carrying `Retry-After: secs`
    /// (exposed to the page by CORS) when `retry_after` is given.
    pub async fn start_with_retry_after(
        upstream: SocketAddr,
        fail_first: usize,
        retry_after: Option<u32>,
    ) -> FlakyProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let healed = Arc::new(AtomicBool::new(false));
        let state = Arc::new(ProxyState {
            upstream,
            fail_first,
            retry_after,
            seen: seen.clone(),
            healed: healed.clone(),
        });
        let (tx, rx) = oneshot::channel::<()>();
        serve_until(listener, rx, move |req| {
            let state = state.clone();
            async move { handle(&state, req).await }
        });
        FlakyProxy {
            addr,
            seen,
            healed,
            shutdown: Some(tx),
        }
    }

    /// From now on every request goes through, however many have failed.
    pub fn heal(&self) {
        self.healed.store(true, Ordering::SeqCst);
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every batch posted so far, in arrival order.
    pub fn seen(&self) -> Vec<SeenBatch> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for FlakyProxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

async fn handle(state: &ProxyState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().as_str().to_owned();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned());
    let origin = header(&req, "origin");
    let content_type = header(&req, "content-type");
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let is_batch = method == "POST" && path.split('?').next() == Some("/v1/batch");

    // Which entry of `seen` this batch is, and whether it is failed.
    let mut slot = None;
    let mut fail = false;
    if is_batch {
        let message_ids = message_ids(&body);
        let mut seen = state.seen.lock().unwrap();
        fail = !state.healed.load(Ordering::SeqCst)
            && seen.iter().filter(|b| b.status == 503).count() < state.fail_first;
        slot = Some(seen.len());
        seen.push(SeenBatch {
            status: if fail { 503 } else { 0 },
            message_ids,
            at: Instant::now(),
        });
    }
    if fail {
        let mut resp = Response::new(Full::new(Bytes::from_static(
            b"{\"error\":\"unavailable\",\"message\":\"flaky proxy: try again\"}",
        )));
        *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        // The collector's own CORS answer: the exact origin, with
        // credentials (the SDK sends them, for the device cookie).
        if let Some(o) = &origin
            && let Ok(v) = HeaderValue::from_str(o)
        {
            resp.headers_mut().insert("access-control-allow-origin", v);
            resp.headers_mut().insert(
                "access-control-allow-credentials",
                HeaderValue::from_static("true"),
            );
        }
        resp.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/json"));
        if let Some(secs) = state.retry_after {
            let h = resp.headers_mut();
            h.insert("retry-after", HeaderValue::from(secs));
            h.insert(
                "access-control-expose-headers",
                HeaderValue::from_static("Retry-After"),
            );
        }
        return resp;
    }

    // Only POSTs carry a body here (the SDK's batches).
    let mut forward = if method == "POST" {
        crate::http::Request::post(&path, body.to_vec())
    } else {
        crate::http::Request::new(&method, &path)
    };
    if let Some(o) = &origin {
        forward = forward.header("Origin", o);
    }
    if let Some(ct) = &content_type {
        forward = forward.header("Content-Type", ct);
    }
    let upstream = forward.send(state.upstream).await;
    if let Some(i) = slot {
        state.seen.lock().unwrap()[i].status = upstream.status;
    }
    let mut resp = Response::new(Full::new(Bytes::from(upstream.body.clone())));
    *resp.status_mut() = StatusCode::from_u16(upstream.status).unwrap_or(StatusCode::BAD_GATEWAY);
    for (name, value) in &upstream.headers {
        if matches!(
            name.as_str(),
            "connection" | "content-length" | "transfer-encoding" | "keep-alive"
        ) {
            continue;
        }
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            resp.headers_mut().append(n, v);
        }
    }
    resp
}

fn header(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn message_ids(body: &[u8]) -> Vec<String> {
    let text = crate::chromium::text_of(body.to_vec()).unwrap_or_default();
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return Vec::new();
    };
    v["batch"]
        .as_array()
        .map(|batch| {
            batch
                .iter()
                .filter_map(|m| m["messageId"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A collector for the fixture pages: it serves the SDK, not the pages
/// (they come from a [`Site`] on another origin).
pub async fn fixture_collector() -> TestCollector {
    TestCollector::start_with(|c| c.www_dir = None).await
}

/// Waits until the stored events satisfy `done` (flushing the SDK while it
/// waits, 20 s at most), then lets any further batch arrive and returns the
/// final rows.
pub async fn stored_when(
    collector: &TestCollector,
    page: &Page,
    what: &str,
    done: impl Fn(&[StoredEvent]) -> bool,
) -> Vec<StoredEvent> {
    eventually(Duration::from_secs(20), what, || async {
        page.eval("weft.flush()").await;
        done(&collector.rows()).then_some(())
    })
    .await;
    flush_and_settle(page).await;
    collector.rows()
}

/// The stored `track` events called `name`.
pub fn tracks<'a>(rows: &'a [StoredEvent], name: &str) -> Vec<&'a StoredEvent> {
    rows.iter().filter(|r| r.is_track(name)).collect()
}

/// Asserts the host page has thrown no uncaught error.
pub fn no_exceptions(page: &Page) {
    assert_eq!(
        page.exceptions(),
        Vec::<String>::new(),
        "uncaught errors on the host page"
    );
}
