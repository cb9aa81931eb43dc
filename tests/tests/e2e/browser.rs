//! The walking skeleton in a real browser: the demo page's script tag loads
//! the SDK, which records the page view and a click and delivers them to
//! the collector, where they are stored under the browser's anonymousId.

use std::time::Duration;

use weft_e2e::chromium::Chromium;
use weft_e2e::eventually;
use weft_e2e::harness::TestCollector;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_view_and_click_are_stored_under_the_persisted_anonymous_id() {
    let collector = TestCollector::start().await;
    let chromium = Chromium::launch().await;
    let page = chromium.new_page().await;
    page.goto(&collector.url("/")).await;

    let aid = eventually(Duration::from_secs(15), "the SDK to start", || async {
        page.eval("window.weft && weft.anonymousId && weft.anonymousId()")
            .await
            .as_str()
            .map(str::to_owned)
    })
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

    let profile = eventually(
        Duration::from_secs(20),
        "page view and click stored",
        || async {
            let r = collector.profile(&aid).await;
            (r.status == 200 && r.json()["event_count"].as_u64() >= Some(2)).then(|| r.json())
        },
    )
    .await;
    assert_eq!(profile["anonymous_ids"], serde_json::json!([aid]));
    assert_eq!(profile["event_count"], 2);

    // What is on disk, read from the store itself.
    let db = collector.db();
    let mut stmt = db
        .prepare("SELECT type, event, body FROM events WHERE anonymous_id = ?1 ORDER BY seq")
        .unwrap();
    let rows: Vec<(String, Option<String>, serde_json::Value)> = stmt
        .query_map([&aid], |r| {
            let body: String = r.get(2)?;
            Ok((r.get(0)?, r.get(1)?, serde_json::from_str(&body).unwrap()))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let (kind, _, page_view) = &rows[0];
    assert_eq!(kind, "page");
    assert_eq!(page_view["context"]["page"]["path"], "/");
    assert_eq!(page_view["context"]["page"]["title"], "weft demo shop");
    assert_eq!(page_view["context"]["library"]["name"], "weft.js");
    let (kind, event, click) = &rows[1];
    assert_eq!(
        (kind.as_str(), event.as_deref()),
        ("track", Some("Element Clicked"))
    );
    assert_eq!(click["properties"]["tag"], "button");
    assert_eq!(click["properties"]["id"], "buy");
    assert_eq!(click["properties"]["text"], "Add to cart");
    assert_ne!(page_view["messageId"], click["messageId"]);

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
