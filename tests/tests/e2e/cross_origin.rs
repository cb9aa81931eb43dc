//! The script tag on a site of another origin than the collector, which is
//! every real deployment (the shop on `www.shop.com`, the collector on
//! `collect.shop.com`).
//!
//! What a browser needs from the collector for that, checked from a page
//! of a [`Site`] on its own origin: the SDK's files readable by any page
//! (the wasm is a CORS fetch), batch POSTs from the source's allowed
//! origins readable (simple requests and preflighted ones), `Retry-After`
//! readable on a 429, and nothing accepted from an origin the source does
//! not allow. The rest of the browser tests (`sdk`, `consent_browser`,
//! `csp`) also run their pages on another origin; `browser` keeps the
//! demo's same-origin case.

use serde_json::{Value, json};
use weft_collector::Source;
use weft_collector::config::RateLimit;
use weft_e2e::chromium::{Chromium, Page};
use weft_e2e::harness::{TestCollector, WRITE_KEY};
use weft_e2e::http::{Request, basic_auth};
use weft_e2e::site::{Site, fixtures_dir, no_exceptions, sdk_ready, stored_when};

/// A source whose every second request is refused (429), for the
/// `Retry-After` check.
const LIMITED_KEY: &str = "wk_limited";

/// `fetch(url, init)` from the page: `{status, retryAfter, body}` or
/// `{error}` when the browser refused to let the page read the answer.
async fn page_fetch(page: &Page, url: &str, init: Value) -> Value {
    page.eval(&format!(
        "fetch({url}, {init}).then(async r => ({{status: r.status, \
         retryAfter: r.headers.get('Retry-After'), body: await r.text()}}), \
         e => ({{error: String(e)}}))",
        url = json!(url),
        init = init,
    ))
    .await
}

#[tokio::test]
async fn the_sdk_files_are_readable_by_any_origin_and_nothing_else_is() {
    let c = TestCollector::start().await;
    for path in [
        "/weft.js",
        "/weft.wasm",
        "/weft-fallback.js",
        "/weft.d.ts",
        "/missing/weft.wasm",
    ] {
        let r = c
            .send(Request::get(path).header("Origin", "http://shop.example"))
            .await;
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some("*"),
            "{path} ({})",
            r.status
        );
        assert_eq!(r.header("access-control-allow-credentials"), None, "{path}");
    }
    for path in ["/", "/dashboard", "/healthz", "/v1/profiles/someone"] {
        let r = c
            .send(Request::get(path).header("Origin", "http://shop.example"))
            .await;
        assert_eq!(r.header("access-control-allow-origin"), None, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_on_an_allowed_origin_loads_the_sdk_and_sends_and_others_cannot() {
    // The shop, allowed by both sources, and another site allowed by none.
    let shop = Site::start(&fixtures_dir(), "", &[]).await;
    let other = Site::start(&fixtures_dir(), "", &[]).await;
    let shop_origin = shop.url("");
    let allowed = vec![shop_origin.clone()];
    let c = TestCollector::start_with(move |config| {
        config.www_dir = None;
        config.sources[0].allowed_origins = allowed.clone();
        config.sources.push(Source {
            rate_limit: Some(RateLimit {
                requests_per_second: 0.001,
                burst: 1,
            }),
            allowed_origins: allowed,
            ..Source::any_origin(LIMITED_KEY)
        });
    })
    .await;
    let collector = c.url("");
    shop.set("%WEFT_COLLECTOR%", &collector);
    other.set("%WEFT_COLLECTOR%", &collector);
    assert_ne!(shop_origin, collector, "the page is on another origin");

    let chromium = Chromium::launch().await;
    let page = chromium.new_page().await;
    page.goto(&shop.url("/basic.html")).await;
    sdk_ready(&page).await;
    let aid = page.eval("weft.anonymousId()").await;
    let aid = aid.as_str().expect("an anonymousId").to_owned();
    page.eval("weft.track('Cross Origin'); weft.flush()").await;
    let rows = stored_when(&c, &page, "the page view and the event", |rows| {
        rows.iter().any(|r| r.is_track("Cross Origin")) && rows.iter().any(|r| r.kind == "page")
    })
    .await;
    assert!(
        rows.iter()
            .all(|r| r.anonymous_id.as_deref() == Some(aid.as_str())),
        "{rows:?}"
    );

    // The SDK's files, as the page's own fetch sees them.
    for file in ["weft.wasm", "weft-fallback.js", "weft.d.ts"] {
        let r = page_fetch(&page, &format!("{collector}/{file}"), json!({})).await;
        assert_eq!(r["status"], 200, "{file}: {r}");
    }

    // A request that needs a preflight (JSON with an Authorization header),
    // as a page's own code might send: the preflight passes, the answer
    // is readable.
    let body = json!({"batch": [{"type": "track", "event": "Preflighted", "anonymousId": aid}]});
    let init = |key: &str| {
        json!({
            "method": "POST",
            "headers": {"Content-Type": "application/json", "Authorization": basic_auth(key)},
            "body": body.to_string(),
        })
    };
    let r = page_fetch(&page, &format!("{collector}/v1/batch"), init(WRITE_KEY)).await;
    assert_eq!(r["status"], 200, "{r}");
    let answer: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
    assert_eq!(answer["accepted"], 1, "{answer}");

    // A 429's Retry-After is readable by the page (the SDK honours it).
    let first = page_fetch(&page, &format!("{collector}/v1/batch"), init(LIMITED_KEY)).await;
    assert_eq!(first["status"], 200, "{first}");
    let limited = page_fetch(&page, &format!("{collector}/v1/batch"), init(LIMITED_KEY)).await;
    assert_eq!(limited["status"], 429, "{limited}");
    assert!(
        limited["retryAfter"]
            .as_str()
            .is_some_and(|s| s.parse::<u64>().is_ok_and(|n| n >= 1)),
        "Retry-After readable cross-origin: {limited}"
    );
    no_exceptions(&page);

    // A page on an origin the source does not allow: the SDK still loads
    // (its files are public) but nothing it sends is accepted, and the
    // page cannot read the refusal.
    let page = chromium.new_page().await;
    page.goto(&other.url("/basic.html")).await;
    sdk_ready(&page).await;
    page.eval("weft.track('Not Allowed'); weft.flush()").await;
    let refused = page_fetch(&page, &format!("{collector}/v1/batch"), init(WRITE_KEY)).await;
    assert!(refused["error"].is_string(), "{refused}");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let rows = c.rows();
    assert!(!rows.iter().any(|r| r.is_track("Not Allowed")), "{rows:?}");
    assert_eq!(
        rows.iter().filter(|r| r.is_track("Preflighted")).count(),
        2,
        "only the allowed page's two preflighted batches: {rows:?}"
    );
    no_exceptions(&page);
}

/// The `console` lines of `page` that start with `weft:`, as text.
fn weft_console_lines(page: &Page) -> Vec<String> {
    page.events("Runtime.consoleAPICalled")
        .iter()
        .map(|e| {
            e["args"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| {
                    a["value"]
                        .as_str()
                        .or(a["description"].as_str())
                        .unwrap_or("")
                        .to_owned()
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|line| line.starts_with("weft:"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_wasm_cannot_load_debug_says_why_in_one_line_and_the_page_is_unharmed() {
    // A collector whose SDK directory has weft.js but lost weft.wasm.
    let sdk = tempfile::tempdir().unwrap();
    std::fs::copy(
        weft_e2e::harness::sdk_dir().join("weft.js"),
        sdk.path().join("weft.js"),
    )
    .unwrap();
    let sdk_path = sdk.path().to_owned();
    let c = TestCollector::start_with(move |config| {
        config.www_dir = None;
        config.sdk_dir = Some(sdk_path);
    })
    .await;
    let site = weft_e2e::site::fixture_site(&c).await;
    let chromium = Chromium::launch().await;
    let page = chromium.new_page().await;
    page.goto(&site.url("/debug.html")).await;
    let lines = weft_e2e::eventually(
        std::time::Duration::from_secs(15),
        "the SDK's debug line",
        || async {
            let lines = weft_console_lines(&page);
            (!lines.is_empty()).then_some(lines)
        },
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let lines_after = weft_console_lines(&page);
    assert_eq!(lines_after, lines, "one line, not one per call");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("404") && lines[0].contains("weft.wasm"),
        "the line says the wasm could not be fetched: {lines:?}"
    );
    // The API keeps answering without throwing, and nothing is sent.
    assert_eq!(
        page.eval(
            "(() => { try { weft.track('x'); weft.page(); weft.identify('u'); weft.flush(); \
             weft.consent.grantAll(); return true } catch (e) { return String(e) } })()"
        )
        .await,
        true
    );
    assert!(page.requests_to("/v1/batch").is_empty());
    assert!(c.rows().is_empty());
    no_exceptions(&page);
}
