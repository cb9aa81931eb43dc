//! The dashboard in real headless Chromium against a real collector: the
//! token asked once (a wrong one said so), every view rendered from the
//! admin API without a console error, a profile's timeline and identity
//! graph with the edge that joined two IDs (labelled with its message),
//! the live view showing a new event within 2 seconds, and the endpoints
//! behind them (`/v1/stats`, `/v1/live`). Screenshots of every view go to
//! `target/screenshots/` (test artefacts, not committed).

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use weft_e2e::chromium::{Chromium, Page};
use weft_e2e::harness::{ADMIN_TOKEN, TestCollector, workspace_root};
use weft_e2e::http::Request;

/// Saves a PNG of the page as `target/screenshots/{name}.png`.
async fn screenshot(page: &Page, name: &str) {
    let shot = page
        .call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true}),
        )
        .await;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().unwrap_or_default())
        .expect("a PNG");
    let dir = workspace_root().join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

/// Console errors, uncaught exceptions and failed loads the page reported.
pub(crate) fn console_errors(page: &Page) -> Vec<String> {
    let mut out: Vec<String> = page
        .events("Runtime.consoleAPICalled")
        .into_iter()
        .filter(|e| e["type"] == "error")
        .map(|e| e["args"].to_string())
        .collect();
    out.extend(page.exceptions());
    out.extend(
        page.events("Log.entryAdded")
            .into_iter()
            .filter(|e| e["entry"]["level"] == "error")
            // The wrong token's 401 is the test's own doing.
            .filter(|e| !e["entry"]["text"].as_str().unwrap_or("").contains("401"))
            .map(|e| e["entry"].to_string()),
    );
    out
}

async fn text(page: &Page) -> String {
    page.eval("document.getElementById('view').innerText")
        .await
        .as_str()
        .unwrap_or("")
        .to_owned()
}

async fn wait_text(page: &Page, what: &str, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let t = text(page).await;
        if t.contains(needle) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {needle:?} not in the view:\n{t}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn show(page: &Page, hash: &str) {
    page.eval(&format!("location.hash = {hash:?}; true")).await;
}

#[tokio::test]
async fn every_view_renders_the_profile_graph_and_live_events() {
    let c = TestCollector::start().await;
    let prefs =
        json!({"consent": {"categoryPreferences": {"analytics": true, "marketing": false}}});
    c.send_batch(json!([
        {"type": "track", "event": "Consent Updated", "anonymousId": "dev-laptop", "messageId": "consent-1",
         "properties": {"categoryPreferences": {"analytics": true, "marketing": false}, "policy": "opt-in"}, "context": prefs},
        {"type": "page", "anonymousId": "dev-laptop", "messageId": "page-1", "context": {"page": {"path": "/shoes", "url": "https://shop.example/shoes?utm=x"}, "consent": prefs["consent"]}},
        {"type": "track", "event": "Product Viewed", "anonymousId": "dev-laptop", "messageId": "view-1", "properties": {"sku": "S1"}, "context": prefs},
        {"type": "identify", "anonymousId": "dev-laptop", "userId": "olga", "messageId": "login-olga", "traits": {"plan": "pro", "city": "Oslo"}, "context": prefs},
        {"type": "track", "event": "Order Completed", "userId": "olga", "messageId": "order-1", "properties": {"total": 99}, "context": prefs}
    ]))
    .await;
    // More than a page of later events: the login that joined the two IDs
    // is not on the timeline's first page, and its edge is labelled anyway.
    let later: Vec<Value> = (0..60)
        .map(|n| json!({"type": "track", "event": "Scrolled", "userId": "olga", "messageId": format!("scroll-{n}"), "context": prefs}))
        .collect();
    c.send_batch(Value::Array(later)).await;
    // A segment and a destination for their views.
    let r = c
        .send(
            Request::put(
                "/v1/segments/pros",
                json!({"name": "Pros", "rule": {"trait": "plan", "op": "eq", "value": "pro"}})
                    .to_string(),
            )
            .bearer(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(r.status, 200);
    let r = c
        .send(
            Request::put(
                "/v1/destinations/lake",
                json!({"kind": "file", "dir": c.data_dir.path().join("lake")}).to_string(),
            )
            .bearer(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(r.status, 200);

    let browser = Chromium::launch().await;
    let page = browser.new_page().await;
    page.call("Log.enable", json!({})).await;
    page.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": false}),
    )
    .await;
    page.goto(&c.url("/dashboard#/overview")).await;
    // Asked for the token; a wrong one is refused and said so.
    page.wait_for(
        Duration::from_secs(10),
        "document.getElementById('login').open",
    )
    .await;
    page.eval("document.getElementById('login-token').value = 'wrong'; document.querySelector('#login-form button').click(); true").await;
    page.wait_for(
        Duration::from_secs(10),
        "document.getElementById('login').open && document.getElementById('login-error').textContent.includes('refused')",
    )
    .await;
    screenshot(&page, "dashboard-token-refused").await;
    page.eval(&format!(
        "document.getElementById('login-token').value = {ADMIN_TOKEN:?}; document.querySelector('#login-form button').click(); true"
    ))
    .await;
    assert_eq!(
        page.eval("sessionStorage.getItem('weft.adminToken')").await,
        ADMIN_TOKEN,
        "kept in sessionStorage under weft.adminToken"
    );
    assert!(
        !page
            .eval("location.href")
            .await
            .as_str()
            .unwrap()
            .contains(ADMIN_TOKEN)
    );

    // Overview: the figures of what was sent, and two charts.
    wait_text(&page, "overview", "unique visitors").await;
    wait_text(&page, "overview", "/shoes").await;
    wait_text(&page, "overview", "Product Viewed").await;
    let t = text(&page).await;
    assert!(
        t.contains("marketing") && t.contains("analytics"),
        "consent rates: {t}"
    );
    assert!(!t.contains("utm"), "no query strings in top pages");
    page.wait_for(
        Duration::from_secs(10),
        "document.querySelectorAll('.uplot').length === 2",
    )
    .await;
    screenshot(&page, "dashboard-overview").await;

    // The profile: identifiers, traits, consent history, segment, timeline
    // and the graph with the edge the login made.
    show(&page, "#/profiles/olga").await;
    wait_text(&page, "profile", "Timeline").await;
    page.wait_for(
        Duration::from_secs(10),
        "document.querySelectorAll('.timeline-row').length === 50",
    )
    .await;
    let t = text(&page).await;
    for needle in ["olga", "dev-laptop", "Oslo", "pros", "opt-in", "Scrolled"] {
        assert!(t.contains(needle), "{needle} not on the profile:\n{t}");
    }
    page.wait_for(
        Duration::from_secs(10),
        "Array.from(document.querySelectorAll('svg.graph .edge-group')).every(g => !g.textContent.startsWith('message'))",
    )
    .await;
    let edge = page
        .eval("Array.from(document.querySelectorAll('svg.graph .edge-group')).map(g => [g.dataset.message, g.textContent])")
        .await;
    assert_eq!(edge.as_array().unwrap().len(), 1, "{edge}");
    assert_eq!(edge[0][0], "login-olga");
    assert!(
        edge[0][1].as_str().unwrap().starts_with("identify · "),
        "labelled with the message's type: {edge}"
    );
    let nodes = page
        .eval("Array.from(document.querySelectorAll('svg.graph .node')).map(n => n.dataset.id).sort()")
        .await;
    assert_eq!(nodes, json!(["dev-laptop", "olga"]));
    screenshot(&page, "dashboard-profile").await;

    // Live: a new event shows within 2 s.
    show(&page, "#/live").await;
    page.wait_for(
        Duration::from_secs(10),
        "document.querySelectorAll('.live-row').length >= 5",
    )
    .await;
    let sent = Instant::now();
    c.send_batch(json!([{"type": "track", "event": "Live Ping", "anonymousId": "dev-phone", "messageId": "ping-1"}]))
        .await;
    page.wait_for(
        Duration::from_secs(2),
        "document.getElementById('view').innerText.includes('Live Ping')",
    )
    .await;
    let shown = sent.elapsed();
    assert!(shown < Duration::from_secs(2), "shown after {shown:?}");
    let first = page
        .eval("document.querySelector('.live-row').innerText")
        .await;
    assert!(
        first.as_str().unwrap().contains("Live Ping"),
        "newest first: {first}"
    );
    screenshot(&page, "dashboard-live").await;

    show(&page, "#/segments/pros").await;
    wait_text(&page, "segment", "Members").await;
    wait_text(&page, "segment", "user:olga").await;
    screenshot(&page, "dashboard-segment").await;
    show(&page, "#/segments").await;
    wait_text(&page, "segments", "ready").await;
    screenshot(&page, "dashboard-segments").await;
    show(&page, "#/destinations").await;
    wait_text(&page, "destinations", "lake").await;
    screenshot(&page, "dashboard-destinations").await;
    show(&page, "#/profiles").await;
    wait_text(&page, "profiles", "Recently seen").await;
    wait_text(&page, "profiles", "dev-phone").await;
    screenshot(&page, "dashboard-profiles").await;

    let errors = console_errors(&page);
    assert!(errors.is_empty(), "console errors: {errors:?}");
}

#[tokio::test]
async fn the_live_endpoint_waits_for_events_and_says_what_a_slow_reader_missed() {
    let c = TestCollector::start().await;
    let get = |path: String| {
        let c = &c;
        async move {
            let r = c.send(Request::get(&path).bearer(ADMIN_TOKEN)).await;
            assert_eq!(r.status, 200, "{path}");
            r.json()
        }
    };
    let r = c.send(Request::get("/v1/live?wait=0")).await;
    assert_eq!(r.status, 401);
    let empty = get("/v1/live?wait=0".into()).await;
    assert_eq!(empty["events"], json!([]));
    // A waiting reader is answered when an event is stored.
    let waiting = tokio::spawn({
        let addr = c.addr;
        async move {
            Request::get("/v1/live?wait=10&after=0")
                .bearer(ADMIN_TOKEN)
                .send(addr)
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = Instant::now();
    c.send_batch(
        json!([{"type": "track", "event": "First", "anonymousId": "a", "messageId": "m-0",
        "properties": {"secret": "not shown"}}]),
    )
    .await;
    let first = waiting.await.unwrap().json();
    assert!(sent.elapsed() < Duration::from_secs(2));
    assert_eq!(first["events"][0]["event"], "First");
    assert!(
        !first.to_string().contains("not shown"),
        "no properties in the stream"
    );
    let after = first["next"].as_u64().unwrap();
    // 1,500 more: more than the ring keeps; the slow reader is told.
    for round in 0..3 {
        let batch: Vec<Value> = (0..500)
            .map(|n| json!({"type": "track", "event": "Bulk", "anonymousId": "a", "messageId": format!("b-{round}-{n}")}))
            .collect();
        c.send_batch(Value::Array(batch)).await;
    }
    // The figures follow the log a moment behind (at most 200 ms, paced).
    weft_e2e::eventually(
        Duration::from_secs(5),
        "the figures to catch up",
        || async { (get("/v1/stats".into()).await["events_24h"] == 1501).then_some(()) },
    )
    .await;
    let page = get(format!("/v1/live?wait=0&after={after}&limit=1000")).await;
    assert_eq!(page["events"].as_array().unwrap().len(), 1000);
    assert_eq!(page["missed"], 500, "{}", page["missed"]);
    // Stats count all of it.
    let stats = get("/v1/stats".into()).await;
    assert_eq!(stats["events_24h"], 1501);
    assert_eq!(stats["visitors_24h"], 1);
    assert_eq!(stats["top_events"][0], json!({"event": "Bulk", "n": 1500}));
    assert_eq!(stats["since_start"]["accepted"], 1501);
    assert!(stats["latency_ms"]["ingest"]["p50"].as_f64().is_some());
    let per_minute: u64 = stats["events_per_minute"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["n"].as_u64().unwrap())
        .sum();
    assert_eq!(per_minute, 1501);
}
