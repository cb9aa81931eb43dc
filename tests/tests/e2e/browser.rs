//! The walking skeleton in a real browser: the demo page's script tag loads
//! the SDK; once the visitor accepts the consent banner (the default policy
//! is opt-in), the page view held until then and a click are delivered to
//! the collector and stored under the browser's new anonymousId.

use std::time::Duration;

use serde_json::Value;
use weft_e2e::chromium::Chromium;
use weft_e2e::eventually;
use weft_e2e::harness::TestCollector;
use weft_e2e::site::sdk_ready;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_view_and_click_are_stored_under_the_persisted_anonymous_id() {
    let collector = TestCollector::start().await;
    let chromium = Chromium::launch().await;
    let page = chromium.new_page().await;
    page.goto(&collector.url("/")).await;
    sdk_ready(&page).await;
    assert_eq!(
        page.eval("weft.anonymousId()").await,
        Value::Null,
        "no identity before a consent decision"
    );

    page.click("#consent-accept").await;
    let aid = eventually(
        Duration::from_secs(5),
        "an identity after accepting",
        || async {
            page.eval("weft.anonymousId()")
                .await
                .as_str()
                .map(str::to_owned)
        },
    )
    .await;
    assert_eq!(aid.len(), 36, "anonymousId is a UUID: {aid}");
    assert_eq!(
        page.eval("localStorage.getItem('weft.aid')").await,
        aid.as_str()
    );
    let cookies = page.call("Network.getCookies", serde_json::json!({})).await;
    assert!(
        cookies["cookies"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "weft_aid" && c["value"] == aid.as_str()),
        "anonymousId mirrored in a first-party cookie: {cookies}"
    );

    page.click("#buy").await;
    page.eval("weft.flush()").await;

    let is_buy = |r: &weft_e2e::harness::StoredEvent| {
        r.is_track("Element Clicked") && r.body["properties"]["id"] == "buy"
    };
    eventually(
        Duration::from_secs(20),
        "page view, consent record and click stored",
        || async {
            let rows = collector.rows();
            (rows.iter().any(|r| r.kind == "page")
                && rows.iter().any(|r| r.is_track("Consent Updated"))
                && rows.iter().any(is_buy))
            .then_some(())
        },
    )
    .await;
    // Let any straggler arrive before counting.
    page.eval("weft.flush()").await;
    tokio::time::sleep(Duration::from_millis(1000)).await;

    // What is on disk, read from the store itself. The click on the accept
    // button itself may or may not be captured; the rest is exact.
    let rows = collector.rows();
    let summary: Vec<String> = rows
        .iter()
        .map(|r| format!("{} {:?}", r.kind, r.event))
        .collect();
    for row in &rows {
        assert_eq!(
            row.anonymous_id.as_deref(),
            Some(aid.as_str()),
            "{}",
            row.raw
        );
    }
    let pages: Vec<_> = rows.iter().filter(|r| r.kind == "page").collect();
    assert_eq!(pages.len(), 1, "{summary:?}");
    let page_view = &pages[0].body;
    assert_eq!(page_view["context"]["page"]["path"], "/");
    assert_eq!(page_view["context"]["page"]["title"], "weft demo shop");
    assert_eq!(page_view["context"]["library"]["name"], "weft.js");
    assert_eq!(
        page_view["context"]["consent"]["categoryPreferences"]["analytics"],
        true
    );
    assert_eq!(
        rows.iter()
            .filter(|r| r.is_track("Consent Updated"))
            .count(),
        1,
        "{summary:?}"
    );
    let clicks: Vec<_> = rows.iter().filter(|r| is_buy(r)).collect();
    assert_eq!(clicks.len(), 1, "{summary:?}");
    let click = &clicks[0].body;
    assert_eq!(click["properties"]["tag"], "button");
    assert_eq!(click["properties"]["text"], "Add to cart");
    assert_ne!(page_view["messageId"], click["messageId"]);
    let accept_click = |r: &weft_e2e::harness::StoredEvent| {
        r.is_track("Element Clicked") && r.body["properties"]["id"] == "consent-accept"
    };
    let expected = |r: &weft_e2e::harness::StoredEvent| {
        r.kind == "page" || r.is_track("Consent Updated") || is_buy(r) || accept_click(r)
    };
    let others = rows.iter().filter(|r| !expected(r)).count();
    assert_eq!(others, 0, "nothing else was stored: {summary:?}");

    let profile = collector.profile(&aid).await;
    assert_eq!(profile.status, 200);
    assert_eq!(profile.json()["anonymous_ids"], serde_json::json!([aid]));

    let batches = page
        .requests()
        .into_iter()
        .filter(|(m, url)| m == "POST" && url.ends_with("/v1/batch"))
        .count();
    assert!(batches >= 1, "the SDK posted to /v1/batch");
    assert_eq!(
        page.exceptions(),
        Vec::<String>::new(),
        "no uncaught errors on the page"
    );
}
