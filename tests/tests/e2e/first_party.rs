//! Paths the operator picks (issue 16): the SDK and a batch endpoint served
//! under names blocklists do not know, beside the defaults.

use weft_collector::config::PublicPaths;
use weft_e2e::harness::{TestCollector, WRITE_KEY, sdk_dir};
use weft_e2e::http::Request;

fn basic() -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{WRITE_KEY}:"))
    )
}

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
                .header("Authorization", &basic())
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
        .send(Request::post("/v1/batch", body).header("Authorization", &basic()))
        .await;
    assert_eq!(r.status, 200);
}
