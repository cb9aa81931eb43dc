//! Paths the operator picks (issue 16): the SDK and a batch endpoint served
//! under names blocklists do not know, beside the defaults.

use weft_collector::config::PublicPaths;
use weft_e2e::harness::{TestCollector, WRITE_KEY, sdk_dir};
use weft_e2e::http::{Request, basic_auth};

#[tokio::test]
async fn the_sdk_and_batches_at_the_operators_paths() {
    let c = TestCollector::start_with(|config| {
        config.paths = PublicPaths {
            script: Some("/assets/app-4f1.js".into()),
            ingest: Some("/assets/s".into()),
        };
    })
    .await;
    // The script is weft.js, byte for byte; its files beside it.
    let script = c.send(Request::get("/assets/app-4f1.js")).await;
    assert_eq!(script.status, 200);
    assert_eq!(
        script.body,
        std::fs::read(sdk_dir().join("weft.js")).unwrap()
    );
    assert_eq!(script.header("access-control-allow-origin"), Some("*"));
    let wasm = c
        .send(Request::get("/assets/app-4f1.wasm").header("Accept-Encoding", "br"))
        .await;
    assert_eq!(
        (
            wasm.status,
            wasm.header("content-type"),
            wasm.header("content-encoding")
        ),
        (200, Some("application/wasm"), Some("br"))
    );
    assert_eq!(wasm.header("access-control-allow-origin"), Some("*"));
    for path in ["/assets/app-4f1-fallback.js", "/assets/app-4f1.d.ts"] {
        assert_eq!(c.send(Request::get(path)).await.status, 200, "{path}");
    }
    assert_eq!(
        c.send(Request::get("/assets/app-4f1.css")).await.status,
        404
    );

    // Batches at the chosen path: stored like /v1/batch's, with its CORS.
    let body = r#"{"batch":[{"type":"track","anonymousId":"fp-1","event":"Seen"}]}"#;
    let r = c
        .send(
            Request::post("/assets/s", body)
                .header("Authorization", &basic_auth(WRITE_KEY))
                .header("Origin", "https://www.shop.example"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://www.shop.example")
    );
    let preflight = c
        .send(
            Request::new("OPTIONS", "/assets/s")
                .header("Origin", "https://www.shop.example")
                .header("Access-Control-Request-Method", "POST"),
        )
        .await;
    assert_eq!(preflight.status, 204);
    assert!(c.rows().iter().any(|e| e.is_track("Seen")));

    // The defaults stay.
    assert_eq!(c.send(Request::get("/weft.js")).await.status, 200);
    let r = c
        .send(Request::post("/v1/batch", body).header("Authorization", &basic_auth(WRITE_KEY)))
        .await;
    assert_eq!(r.status, 200);
}

/// Request-blocking rules of the kind ad and tracker blocklists hold
/// (EasyPrivacy-style URL patterns), applied by Chromium itself.
const BLOCKLIST: [&str; 5] = [
    "*/weft.js*",
    "*/weft.wasm*",
    "*/v1/batch*",
    "*track*",
    "*analytics*",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocklist_rules_stop_the_default_paths_but_not_the_operators() {
    use std::time::Duration;
    use weft_e2e::chromium::Chromium;
    use weft_e2e::site::{Site, fixtures_dir, sdk_ready};

    let c = TestCollector::start_with(|config| {
        config.www_dir = None;
        config.paths = PublicPaths {
            script: Some("/assets/app-4f1.js".into()),
            ingest: Some("/assets/s".into()),
        };
    })
    .await;
    let collector = c.url("");
    let site = Site::start(&fixtures_dir(), &collector, &[]).await;
    let chromium = Chromium::launch().await;

    // The fixture page with `script` and `endpoint`, in a tab under the
    // rules.
    let open = |script: &'static str, endpoint: String| {
        site.set("%WEFT_SCRIPT%", script);
        site.set("%WEFT_ENDPOINT%", &endpoint);
        let (chromium, url) = (&chromium, site.url("/first-party.html"));
        async move {
            let page = chromium.new_page().await;
            page.call(
                "Network.setBlockedURLs",
                serde_json::json!({ "urls": BLOCKLIST }),
            )
            .await;
            page.goto(&url).await;
            page
        }
    };

    // The default setup, under the rules: nothing loads, nothing is sent.
    let page = open("/weft.js", format!("{collector}/v1/batch")).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let loaded = page
        .eval("typeof weft === 'object' && typeof weft.ready === 'function'")
        .await;
    assert_eq!(loaded, false, "the blocklist stops weft.js");
    let blocked: Vec<String> = page
        .events("Network.loadingFailed")
        .iter()
        .filter(|e| e["blockedReason"] == "inspector")
        .map(|e| e.to_string())
        .collect();
    assert!(!blocked.is_empty(), "Chromium blocked the default script");
    assert!(c.rows().is_empty(), "nothing arrived");

    // The operator's paths, under the same rules: every event arrives.
    let page = open("/assets/app-4f1.js", format!("{collector}/assets/s")).await;
    sdk_ready(&page).await;
    page.eval("for (let i = 0; i < 5; i++) weft.track('Signup Step', {step: i}); weft.flush()")
        .await;
    let rows = weft_e2e::eventually(Duration::from_secs(15), "6 events", || async {
        let rows = c.rows();
        (rows.len() >= 6).then_some(rows)
    })
    .await;
    let steps = rows.iter().filter(|e| e.is_track("Signup Step")).count();
    assert_eq!(steps, 5, "every track arrived");
    assert_eq!(rows.iter().filter(|e| e.kind == "page").count(), 1);
    let requested: Vec<String> = page.requests().into_iter().map(|(_, url)| url).collect();
    assert!(
        requested
            .iter()
            .all(|u| !u.contains("weft") && !u.contains("/v1/")),
        "no default name was asked for: {requested:?}"
    );
}
