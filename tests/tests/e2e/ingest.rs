//! The ingest API against a real collector and its store on disk: what is
//! accepted is durable and visible, what is wrong gets its status and
//! reason, and valid data beside bad data is kept.

use std::io::Write;

use serde_json::{Value, json};
use weft_e2e::harness::{ADMIN_TOKEN, TestCollector, WRITE_KEY};
use weft_e2e::http::Request;

fn basic(key: &str) -> String {
    // base64("key:") for the ASCII keys the tests use.
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let input = format!("{key}:").into_bytes();
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    format!("Basic {out}")
}

fn batch(messages: Value) -> Vec<u8> {
    json!({"batch": messages, "sentAt": "2026-11-23T10:00:00Z"})
        .to_string()
        .into_bytes()
}

fn stored_count(c: &TestCollector) -> i64 {
    c.db()
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test]
async fn batch_is_stored_and_retries_are_deduplicated() {
    let c = TestCollector::start().await;
    let body = batch(json!([
        {"type": "page", "messageId": "m1", "anonymousId": "anon-1", "timestamp": "2026-11-23T09:59:00Z"},
        {"type": "identify", "messageId": "m2", "anonymousId": "anon-1", "userId": "alice"},
        {"type": "track", "messageId": "m3", "userId": "alice", "event": "Bought"},
    ]));
    let req = Request::post("/v1/batch", body).header("Authorization", &basic(WRITE_KEY));
    let r = c.send(req.clone()).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(r.json()["accepted"], 3);

    // A client retry of the same batch stores nothing new.
    let again = c.send(req).await.json();
    assert_eq!(
        (again["accepted"].as_u64(), again["duplicates"].as_u64()),
        (Some(0), Some(3))
    );
    assert_eq!(stored_count(&c), 3);

    for id in ["anon-1", "alice"] {
        let p = c.profile(id).await;
        assert_eq!(p.status, 200);
        let p = p.json();
        assert_eq!(p["anonymous_ids"], json!(["anon-1"]));
        assert_eq!(p["user_ids"], json!(["alice"]));
        assert_eq!(p["event_count"], 3);
    }
}

#[tokio::test]
async fn write_key_in_body_and_single_message_endpoints() {
    let c = TestCollector::start().await;
    let body = json!({"writeKey": WRITE_KEY, "batch": [{"type": "page", "anonymousId": "a"}]});
    // sendBeacon posts text/plain: the body decides, not the Content-Type.
    let r = c
        .send(
            Request::post("/v1/batch", body.to_string())
                .header("Content-Type", "text/plain;charset=UTF-8"),
        )
        .await;
    assert_eq!(r.status, 200);

    let single = json!({"writeKey": WRITE_KEY, "userId": "u1", "event": "Signed Up"});
    let r = c.send(Request::post("/v1/track", single.to_string())).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let (kind, event): (String, String) = c
        .db()
        .query_row(
            "SELECT type, event FROM events WHERE user_id = 'u1'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((kind.as_str(), event.as_str()), ("track", "Signed Up"));
}

#[tokio::test]
async fn invalid_messages_are_kept_as_rejected_without_failing_the_batch() {
    let c = TestCollector::start().await;
    let body = batch(json!([
        {"type": "track", "anonymousId": "a", "event": "Good"},
        {"type": "track", "anonymousId": "a"},
        {"type": "teleport", "anonymousId": "a"},
    ]));
    let r = c
        .send(Request::post("/v1/batch", body).header("Authorization", &basic(WRITE_KEY)))
        .await;
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(
        (j["accepted"].as_u64(), j["rejected"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(j["errors"][0]["index"], 1);
    assert!(j["errors"][0]["reason"].as_str().unwrap().contains("event"));
    let reasons: Vec<String> = c
        .db()
        .prepare("SELECT reason FROM rejected ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(reasons.len(), 2);
    assert_eq!(stored_count(&c), 1);
}

#[tokio::test]
async fn whole_request_errors_have_status_and_reason_and_lose_nothing_else() {
    let c = TestCollector::start().await;
    let good = batch(json!([{"type": "page", "anonymousId": "keep-me"}]));
    let cases: Vec<(Request, u16, &str)> = vec![
        (
            Request::post("/v1/batch", good.clone()),
            401,
            "missing_write_key",
        ),
        (
            Request::post("/v1/batch", good.clone()).header("Authorization", &basic("wk_wrong")),
            401,
            "unknown_write_key",
        ),
        (
            Request::post("/v1/batch", "{\"batch\": [").header("Authorization", &basic(WRITE_KEY)),
            400,
            "malformed_json",
        ),
        (
            Request::post("/v1/batch", vec![b'x'; 600 * 1024])
                .header("Authorization", &basic(WRITE_KEY)),
            413,
            "payload_too_large",
        ),
        (
            Request::post("/v1/batch", good.clone())
                .header("Authorization", &basic(WRITE_KEY))
                .header("Content-Encoding", "zstd"),
            415,
            "unsupported_encoding",
        ),
        (Request::new("PUT", "/v1/batch"), 405, "method_not_allowed"),
    ];
    for (req, status, code) in cases {
        let r = c.send(req).await;
        assert_eq!((r.status, r.json()["error"].as_str()), (status, Some(code)));
        assert!(r.json()["reason"].as_str().is_some_and(|s| !s.is_empty()));
    }
    // The collector is still up and valid traffic is kept.
    let r = c
        .send(Request::post("/v1/batch", good).header("Authorization", &basic(WRITE_KEY)))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(stored_count(&c), 1);
}

#[tokio::test]
async fn gzip_bodies_are_accepted_and_bombs_refused() {
    let c = TestCollector::start().await;
    let gz = |data: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    };
    let body = gz(&batch(json!([{"type": "page", "anonymousId": "gz"}])));
    let r = c
        .send(
            Request::post("/v1/batch", body)
                .header("Authorization", &basic(WRITE_KEY))
                .header("Content-Encoding", "gzip"),
        )
        .await;
    assert_eq!(r.status, 200);
    let bomb = gz(&vec![b' '; 20 * 1024 * 1024]);
    let r = c
        .send(
            Request::post("/v1/batch", bomb)
                .header("Authorization", &basic(WRITE_KEY))
                .header("Content-Encoding", "gzip"),
        )
        .await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (413, Some("payload_too_large"))
    );
    assert_eq!(stored_count(&c), 1);
}

#[tokio::test]
async fn browsers_are_limited_to_the_sources_origins() {
    let c = TestCollector::start_with(|config| {
        config.sources[0].allowed_origins = vec!["https://shop.example".into()];
    })
    .await;
    let pre = c
        .send(
            Request::new("OPTIONS", "/v1/batch")
                .header("Origin", "https://shop.example")
                .header("Access-Control-Request-Method", "POST"),
        )
        .await;
    assert_eq!(pre.status, 204);
    assert_eq!(
        pre.header("access-control-allow-origin"),
        Some("https://shop.example")
    );
    assert!(
        pre.header("access-control-allow-methods")
            .unwrap()
            .contains("POST")
    );

    let body = json!({"writeKey": WRITE_KEY, "batch": [{"type": "page", "anonymousId": "o"}]});
    let ok = c
        .send(Request::post("/v1/batch", body.to_string()).header("Origin", "https://shop.example"))
        .await;
    assert_eq!(ok.status, 200);
    assert_eq!(
        ok.header("access-control-allow-origin"),
        Some("https://shop.example")
    );

    let evil = c
        .send(Request::post("/v1/batch", body.to_string()).header("Origin", "https://evil.example"))
        .await;
    assert_eq!(
        (evil.status, evil.json()["error"].as_str()),
        (403, Some("origin_not_allowed"))
    );
    assert_eq!(evil.header("access-control-allow-origin"), None);
    assert_eq!(stored_count(&c), 1);
}

#[tokio::test]
async fn admin_api_needs_the_token_and_answers_404_for_unknown_ids() {
    let c = TestCollector::start().await;
    let r = c.send(Request::get("/v1/profiles/x")).await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (401, Some("unauthorized"))
    );
    let r = c.send(Request::get("/v1/profiles/x").bearer("wrong")).await;
    assert_eq!(r.status, 401);
    let r = c
        .send(Request::get("/v1/profiles/nobody").bearer(ADMIN_TOKEN))
        .await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (404, Some("not_found"))
    );
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let c = TestCollector::start().await;
    assert_eq!(c.send(Request::get("/healthz")).await.status, 200);
    assert_eq!(c.send(Request::get("/readyz")).await.json()["ready"], true);
    let body = batch(json!([{"type": "page", "anonymousId": "m"}, {"type": "page"}]));
    c.send(Request::post("/v1/batch", body).header("Authorization", &basic(WRITE_KEY)))
        .await;
    let m = String::from_utf8(c.send(Request::get("/metrics")).await.body).unwrap();
    assert!(m.contains("weft_events_received_total 2"), "{m}");
    assert!(m.contains("weft_events_accepted_total 1"), "{m}");
    assert!(m.contains("weft_events_rejected_total 1"), "{m}");
}

#[tokio::test]
async fn graceful_stop_keeps_everything_acknowledged() {
    let c = TestCollector::start().await;
    let body = batch(json!([{"type": "page", "anonymousId": "s"}]));
    let r = c
        .send(Request::post("/v1/batch", body).header("Authorization", &basic(WRITE_KEY)))
        .await;
    assert_eq!(r.status, 200);
    let data_dir = c.stop().await;
    let n: i64 = rusqlite::Connection::open(data_dir.path().join("weft.sqlite"))
        .unwrap()
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
}
