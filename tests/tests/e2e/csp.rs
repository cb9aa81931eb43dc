//! The strict-CSP fallback and a failing SDK download, in real headless
//! Chromium against a real collector.
//!
//! A page whose Content-Security-Policy lacks `'wasm-unsafe-eval'` cannot
//! compile `weft.wasm`; `weft.js` must then load `weft-fallback.js` (the
//! wasm2js build of the same wasm) and deliver exactly what the wasm build
//! delivers; when the policy is in a `<meta>` it must not download
//! `weft.wasm` at all. A normal page must never download the fallback. And when the
//! SDK cannot load at all (ad-blocked, 404, the wasm or the fallback
//! missing), the page keeps working: the inline stub's API never throws and
//! nothing uncaught reaches the page.
//!
//! The pages are in `tests/fixtures/csp/`; each records its globals and
//! `WebAssembly` before `weft.js` runs and every CSP violation, so the test
//! can check that the SDK leaked nothing and that the strict pages really
//! refused wasm.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tempfile::TempDir;
use weft_e2e::chromium::{Chromium, Page};
use weft_e2e::eventually;
use weft_e2e::harness::{TestCollector, sdk_dir, workspace_root};
use weft_e2e::http::Request;
use weft_e2e::site::Site;

/// What the pages do once the SDK runs: two events with varied properties,
/// and in between an event name and a property of 1 MiB each (too big to
/// send), which make the SDK's memory grow: wasm2js swaps its buffer then,
/// and the views of memory the glue cached must follow.
const SCENARIO: &str = r#"
    weft.track("Order Completed", {order_id: "o-1", total: 12.5, items: ["a", "b"], gift: false, note: null});
    weft.track("x".repeat(1 << 20));
    weft.track("Too Big", {blob: "y".repeat(1 << 20)});
    weft.track("After Growth", {text: "h\u00e9llo \u2713 \ud834\udd1e", n: 3});
    weft.flush();
    true
"#;

/// The events [`SCENARIO`] and the page produce, as (type, event name).
const EXPECTED: [(&str, Option<&str>); 4] = [
    ("page", None),
    ("track", Some("Early")),
    ("track", Some("Order Completed")),
    ("track", Some("After Growth")),
];

/// Every call of the SDK's JS API contract (with consent), each in
/// its own try: the calls that threw, with their errors.
const EVERY_CALL: &str = r#"
    (() => {
      const calls = {
        track: () => weft.track("Clicked", {a: 1}),
        page: () => weft.page(),
        namedPage: () => weft.page("Home", {x: 1}),
        identify: () => weft.identify("user-1", {plan: "pro"}),
        alias: () => weft.alias("user-2"),
        group: () => weft.group("group-1", {name: "g"}),
        reset: () => weft.reset(),
        flush: () => weft.flush(),
        ready: () => weft.ready(function () {}),
        anonymousId: () => weft.anonymousId && weft.anonymousId(),
        consentSet: () => weft.consent.set({analytics: true, ad_storage: "denied"}),
        consentGrantAll: () => weft.consent.grantAll(),
        consentDenyAll: () => weft.consent.denyAll(),
        consentOnChange: () => weft.consent.onChange(function () {}),
      };
      const threw = {};
      for (const [name, call] of Object.entries(calls)) {
        try { call(); } catch (e) { threw[name] = String(e); }
      }
      return threw;
    })()
"#;

/// The fixture pages, plus copies of the built `weft.js` where the rest of
/// the SDK is missing: `broken/` (no wasm, no fallback) and `nofallback/`
/// (the wasm but no fallback).
fn www() -> TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let fixtures = workspace_root().join("tests/fixtures/csp");
    for entry in std::fs::read_dir(&fixtures).expect("tests/fixtures/csp") {
        let path = entry.expect("fixture").path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).expect("copy fixture");
    }
    let sdk = sdk_dir();
    assert!(
        sdk.join("weft-fallback.js").is_file(),
        "the SDK in {sdk:?} has no weft-fallback.js: rebuild it with `cargo xtask sdk`"
    );
    for (sub, files) in [
        ("broken", &["weft.js"][..]),
        ("nofallback", &["weft.js", "weft.wasm"][..]),
    ] {
        std::fs::create_dir(dir.path().join(sub)).expect("mkdir");
        for file in files {
            std::fs::copy(sdk.join(file), dir.path().join(sub).join(file)).expect("copy SDK file");
        }
    }
    dir
}

async fn collector(www: &Path) -> TestCollector {
    let www = www.to_path_buf();
    TestCollector::start_with(|config| config.www_dir = Some(www)).await
}

/// One page's run of [`SCENARIO`], as the browser and the store saw it.
struct Run {
    aid: String,
    /// Stored events by (type, event name): the body as stored.
    events: BTreeMap<(String, Option<String>), Value>,
    /// URLs the page requested.
    urls: Vec<String>,
    /// CSP violations the page saw (`directive blockedURI`).
    violations: Value,
    /// Own properties of `window` that the SDK added, besides `weft`.
    leaked: Value,
    /// Whether `window.WebAssembly` is still the page's own.
    same_webassembly: bool,
    exceptions: Vec<String>,
}

impl Run {
    fn fetched(&self, path: &str) -> bool {
        self.urls.iter().any(|u| u.ends_with(path))
    }
}

/// Loads `page_name` from a site of its own, with a collector of its own on
/// another origin (so each run has its own origin, storage and store;
/// cookies, which ignore ports, are cleared),
/// runs [`SCENARIO`] and waits until the store has the [`EXPECTED`] events
/// under the SDK's anonymousId.
async fn run(chromium: &Chromium, www: &Path, page_name: &str) -> Run {
    let collector = collector(www).await;
    let site = Site::start(www, &collector.url(""), &[]).await;
    let page = chromium.new_page().await;
    page.call("Network.clearBrowserCookies", json!({})).await;
    page.goto(&site.url(&format!("/{page_name}"))).await;
    let aid = eventually(
        Duration::from_secs(20),
        &format!("the SDK to start on {page_name}"),
        || async {
            page.eval("window.weft && weft.anonymousId && weft.anonymousId()")
                .await
                .as_str()
                .map(str::to_owned)
        },
    )
    .await;
    assert_eq!(page.eval(SCENARIO).await, true);

    let events = eventually(
        Duration::from_secs(30),
        &format!("the events of {page_name} stored"),
        || async {
            let events = stored(&collector, &aid);
            EXPECTED
                .iter()
                .all(|(t, e)| events.contains_key(&(t.to_string(), e.map(str::to_owned))))
                .then_some(events)
        },
    )
    .await;
    // The log is read as written: an event can be there a moment before
    // its sync is done and the admin API answers for it.
    let profile = eventually(
        Duration::from_secs(10),
        &format!("the profile of {aid} on {page_name}"),
        || async {
            let p = collector.profile(&aid).await;
            (p.status == 200).then_some(p)
        },
    )
    .await;
    assert_eq!(profile.json()["anonymous_ids"], json!([aid]));

    let run = Run {
        aid,
        events,
        urls: page.requests().into_iter().map(|(_, url)| url).collect(),
        violations: page.eval("__csp.violations").await,
        leaked: page
            .eval(
                "Object.getOwnPropertyNames(window)\
                 .filter(n => !__csp.globals.includes(n) && n !== '__csp' && n !== 'weft')",
            )
            .await,
        same_webassembly: page.eval("window.WebAssembly === __csp.wasm").await == true,
        exceptions: page.exceptions(),
    };
    page.call("Page.close", json!({})).await;
    run
}

/// The stored events of `aid`, by (type, event name).
fn stored(collector: &TestCollector, aid: &str) -> BTreeMap<(String, Option<String>), Value> {
    collector
        .rows()
        .into_iter()
        .filter(|r| r.anonymous_id.as_deref() == Some(aid))
        .map(|r| ((r.kind, r.event), r.body))
        .collect()
}

/// `v` with every leaf replaced by its JSON type: what two builds must agree
/// on when ids, times and URLs differ.
fn shape(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
        Value::Array(a) => Value::Array(a.iter().map(shape).collect()),
        Value::String(_) => "string".into(),
        Value::Number(_) => "number".into(),
        Value::Bool(_) => "bool".into(),
        Value::Null => "null".into(),
    }
}

/// `run` used the JS build and delivered what `reference` (the wasm build)
/// delivered: same events, same shape, same properties and library.
fn assert_same_delivery(reference: &Run, run: &Run, what: &str) {
    assert_ne!(
        reference.aid, run.aid,
        "{what}: runs have their own identity"
    );
    let keys = |r: &Run| r.events.keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(run), keys(reference), "{what}: the same events");
    for (key, body) in &reference.events {
        let other = &run.events[key];
        assert_eq!(shape(other), shape(body), "{what}: the shape of {key:?}");
        assert_eq!(other["anonymousId"], run.aid.as_str(), "{what}: {key:?}");
        for field in ["type", "event", "properties", "traits"] {
            assert_eq!(
                other.get(field),
                body.get(field),
                "{what}: {field} of {key:?}"
            );
        }
        assert_eq!(
            other["context"]["library"], body["context"]["library"],
            "{what}: {key:?}"
        );
    }
}

/// The things every run must satisfy: nothing leaked into the page and
/// nothing uncaught.
fn assert_unharmed(run: &Run, what: &str) {
    assert_eq!(
        run.exceptions,
        Vec::<String>::new(),
        "{what}: uncaught errors"
    );
    assert_eq!(run.leaked, json!([]), "{what}: globals the SDK added");
    assert!(run.same_webassembly, "{what}: window.WebAssembly replaced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_csp_page_runs_the_js_build_and_stores_what_the_wasm_build_stores() {
    let www = www();
    let chromium = Chromium::launch().await;

    // The reference: a page without CSP runs the wasm and never downloads
    // the fallback.
    let wasm = run(&chromium, www.path(), "normal.html").await;
    assert_unharmed(&wasm, "normal page");
    assert!(wasm.fetched("/weft.wasm"), "{:?}", wasm.urls);
    assert!(
        !wasm.fetched("/weft-fallback.js"),
        "a page that allows wasm downloaded the fallback: {:?}",
        wasm.urls
    );
    assert_eq!(wasm.violations, json!([]));
    let growth = &wasm.events[&("track".to_owned(), Some("After Growth".to_owned()))];
    assert_eq!(
        growth["properties"],
        json!({"text": "h\u{e9}llo \u{2713} \u{1d11e}", "n": 3})
    );
    assert_eq!(growth["context"]["library"]["name"], "weft.js");

    // A CSP without 'wasm-unsafe-eval' ('self' scripts), then one that
    // allows scripts by nonce only (the fallback's <script> needs it too),
    // each in a <meta> the loader reads: weft.wasm is not even downloaded,
    // and nothing is refused. Then the first policy sent as a header, which
    // no script can read: the wasm is tried, refused once, and the fallback
    // takes over.
    for (page, meta) in [
        ("strict.html", true),
        ("nonce.html", true),
        ("header.html", false),
    ] {
        let js = run(&chromium, www.path(), page).await;
        assert_unharmed(&js, page);
        assert!(
            js.fetched("/weft-fallback.js"),
            "{page}: the fallback was not downloaded: {:?}",
            js.urls
        );
        assert_eq!(
            js.fetched("/weft.wasm"),
            !meta,
            "{page}: weft.wasm downloaded: {:?}",
            js.urls
        );
        let refused = if meta {
            json!([])
        } else {
            json!(["script-src wasm-eval"])
        };
        assert_eq!(
            js.violations, refused,
            "{page}: what the CSP refused (the wasm at most, once)"
        );
        assert_same_delivery(&wasm, &js, page);
    }
}

/// The DevTools ids of the page's requests whose URL ends with `path`.
fn request_ids(page: &Page, path: &str) -> Vec<Value> {
    page.events("Network.requestWillBeSent")
        .into_iter()
        .filter(|e| {
            e["request"]["url"]
                .as_str()
                .is_some_and(|u| u.ends_with(path))
        })
        .map(|e| e["requestId"].clone())
        .collect()
}

/// Waits until the page has an answer (or a failure) for a request whose
/// URL ends with `path`, then a little longer for the SDK's promise chains
/// to settle.
async fn wait_for_request_done(page: &Page, path: &str) {
    eventually(
        Duration::from_secs(20),
        &format!("the request of {path} to end"),
        || async {
            let ids = request_ids(page, path);
            let done = ["Network.loadingFinished", "Network.loadingFailed"]
                .into_iter()
                .flat_map(|m| page.events(m))
                .any(|e| ids.contains(&e["requestId"]));
            done.then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// Why the request of `path` failed (`Network.loadingFailed`'s
/// `errorText`), if it did.
fn failure(page: &Page, path: &str) -> Option<String> {
    let ids = request_ids(page, path);
    page.events("Network.loadingFailed")
        .into_iter()
        .find(|e| ids.contains(&e["requestId"]))
        .and_then(|e| e["errorText"].as_str().map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_that_fails_to_load_leaves_the_page_unharmed() {
    let www = www();
    let collector = collector(www.path()).await;
    let site = Site::start(www.path(), &collector.url(""), &[]).await;
    let chromium = Chromium::launch().await;

    // (page, the request whose failure the SDK meets, block weft.js as an
    // ad blocker would, the CSP violations the page sees)
    // The missing fallback's page names its CSP in a <meta>: the wasm is
    // not tried, so nothing is refused.
    let refused = json!([]);
    let cases = [
        ("normal.html", "/weft.js", true, json!([])),
        ("missing-sdk.html", "/missing/weft.js", false, json!([])),
        ("missing-wasm.html", "/broken/weft.wasm", false, json!([])),
        (
            "missing-fallback.html",
            "/nofallback/weft-fallback.js",
            false,
            refused,
        ),
    ];
    for (name, failing, block, violations) in cases {
        let what = if block {
            format!("{name} with weft.js blocked")
        } else {
            format!("{name} ({failing} missing)")
        };
        let page = chromium.new_page().await;
        if block {
            page.call("Network.setBlockedURLs", json!({"urls": ["*/weft.js"]}))
                .await;
        }
        page.goto(&site.url(&format!("/{name}"))).await;
        wait_for_request_done(&page, failing).await;
        let status = page
            .events("Network.responseReceived")
            .into_iter()
            .find(|e| {
                e["response"]["url"]
                    .as_str()
                    .is_some_and(|u| u.ends_with(failing))
            })
            .map(|e| e["response"]["status"].clone());
        let failed = failure(&page, failing);
        if block {
            assert_eq!(status, None, "{what}: weft.js was not blocked");
        } else if failing.ends_with(".js") && failed.is_some() {
            // A cross-origin <script> whose answer is a 404 in JSON: Chromium's
            // opaque-response blocking withholds it from the page (and from
            // the DevTools response events); the collector did answer 404.
            assert_eq!(failed.as_deref(), Some("net::ERR_BLOCKED_BY_ORB"), "{what}");
            let direct = collector.send(Request::get(failing)).await;
            assert_eq!(direct.status, 404, "{what}");
        } else {
            assert_eq!(status, Some(json!(404)), "{what}: {failing}");
        }

        assert_eq!(
            page.eval(EVERY_CALL).await,
            json!({}),
            "{what}: calls threw"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            page.exceptions(),
            Vec::<String>::new(),
            "{what}: uncaught errors"
        );
        assert_eq!(
            page.eval("window.WebAssembly === __csp.wasm").await,
            true,
            "{what}"
        );
        assert_eq!(page.eval("__csp.violations").await, violations, "{what}");
        assert_eq!(
            page.eval("document.querySelectorAll('script[src*=\"weft-fallback\"]').length")
                .await,
            0,
            "{what}: a failed fallback <script> is removed"
        );
        page.call("Page.close", json!({})).await;
    }
}
