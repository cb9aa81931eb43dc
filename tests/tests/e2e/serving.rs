//! The collector serves the SDK and the demo site.

use weft_e2e::harness::{TestCollector, WRITE_KEY};
use weft_e2e::http::Request;

#[tokio::test]
async fn sdk_files_have_their_types_and_compressed_twins() {
    let c = TestCollector::start().await;
    let wasm = c.send(Request::get("/weft.wasm")).await;
    assert_eq!(wasm.status, 200);
    assert_eq!(wasm.header("content-type"), Some("application/wasm"));
    assert_eq!(&wasm.body[..4], b"\0asm");

    let js = c
        .send(Request::get("/weft.js").header("Accept-Encoding", "gzip, br"))
        .await;
    assert_eq!(js.status, 200);
    assert_eq!(js.header("content-encoding"), Some("br"));
    assert!(
        js.header("content-type")
            .unwrap()
            .starts_with("text/javascript")
    );

    let gz = c
        .send(Request::get("/weft.js").header("Accept-Encoding", "gzip"))
        .await;
    assert_eq!(gz.header("content-encoding"), Some("gzip"));
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz.body[..]), &mut text)
        .unwrap();
    assert!(text.contains("weft"), "weft.js decompresses to the SDK");

    let types = c.send(Request::get("/weft.d.ts")).await;
    assert_eq!(types.status, 200);
    let types = String::from_utf8(types.body).unwrap();
    for api in [
        "track(event: string",
        "consent: WeftConsent",
        "grantAll(): void",
    ] {
        assert!(types.contains(api), "weft.d.ts declares {api}");
    }
}

#[tokio::test]
async fn demo_page_carries_the_configured_write_key() {
    let c = TestCollector::start().await;
    let r = c.send(Request::get("/")).await;
    assert_eq!(r.status, 200);
    let html = String::from_utf8(r.body).unwrap();
    assert!(html.contains(&format!("data-write-key=\"{WRITE_KEY}\"")));
    assert!(!html.contains("%WEFT_WRITE_KEY%"));
    assert_eq!(c.send(Request::get("/dashboard")).await.status, 200);
}

#[tokio::test]
async fn paths_outside_the_site_are_not_served() {
    let c = TestCollector::start().await;
    for path in [
        "/../Cargo.toml",
        "/%2e%2e/Cargo.toml",
        "/.git/config",
        "/nope.html",
    ] {
        let r = c.send(Request::get(path)).await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.json()["error"], "not_found");
    }
}
