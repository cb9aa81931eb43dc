//! The ingest API against a real collector and its store on disk: what is
//! accepted is durable and visible, what is wrong gets its status and
//! reason, and valid data beside bad data is kept.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use weft_collector::Source;
use weft_collector::clock::FixedClock;
use weft_collector::config::RateLimit;
use weft_e2e::harness::{ADMIN_TOKEN, TestCollector, WRITE_KEY};
use weft_e2e::http::{Request, basic_auth};

fn batch(messages: Value) -> Vec<u8> {
    json!({"batch": messages, "sentAt": "2026-11-23T10:00:00Z"})
        .to_string()
        .into_bytes()
}

fn stored_count(c: &TestCollector) -> i64 {
    c.rows().len() as i64
}

#[tokio::test]
async fn batch_is_stored_and_retries_are_deduplicated() {
    let c = TestCollector::start().await;
    let body = batch(json!([
        {"type": "page", "messageId": "m1", "anonymousId": "anon-1", "timestamp": "2026-11-23T09:59:00Z"},
        {"type": "identify", "messageId": "m2", "anonymousId": "anon-1", "userId": "alice"},
        {"type": "track", "messageId": "m3", "userId": "alice", "event": "Bought"},
    ]));
    let req = Request::post("/v1/batch", body).header("Authorization", &basic_auth(WRITE_KEY));
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
    let rows = c.rows();
    let row = rows
        .iter()
        .find(|r| r.user_id.as_deref() == Some("u1"))
        .expect("u1's event is stored");
    assert!(row.is_track("Signed Up"), "{row:?}");
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
        .send(Request::post("/v1/batch", body).header("Authorization", &basic_auth(WRITE_KEY)))
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
            Request::post("/v1/batch", good.clone())
                .header("Authorization", &basic_auth("wk_wrong")),
            401,
            "unknown_write_key",
        ),
        (
            Request::post("/v1/batch", "{\"batch\": [")
                .header("Authorization", &basic_auth(WRITE_KEY)),
            400,
            "malformed_json",
        ),
        (
            Request::post("/v1/batch", vec![b'x'; 600 * 1024])
                .header("Authorization", &basic_auth(WRITE_KEY)),
            413,
            "payload_too_large",
        ),
        (
            Request::post("/v1/batch", good.clone())
                .header("Authorization", &basic_auth(WRITE_KEY))
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
        .send(Request::post("/v1/batch", good).header("Authorization", &basic_auth(WRITE_KEY)))
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
                .header("Authorization", &basic_auth(WRITE_KEY))
                .header("Content-Encoding", "gzip"),
        )
        .await;
    assert_eq!(r.status, 200);
    let bomb = gz(&vec![b' '; 20 * 1024 * 1024]);
    let r = c
        .send(
            Request::post("/v1/batch", bomb)
                .header("Authorization", &basic_auth(WRITE_KEY))
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
    c.send(Request::post("/v1/batch", body).header("Authorization", &basic_auth(WRITE_KEY)))
        .await;
    let m = String::from_utf8(c.send(Request::get("/metrics")).await.body).unwrap();
    assert!(m.contains("weft_events_received_total 2"), "{m}");
    assert!(m.contains("weft_events_accepted_total 1"), "{m}");
    assert!(
        m.contains("weft_events_rejected_total{reason=\"missing_identity\"} 1"),
        "{m}"
    );
    assert!(m.contains("weft_commits_total 1"), "{m}");
    assert!(m.contains("weft_commit_seconds_count 1"), "{m}");
    assert!(m.contains("weft_write_queue_depth 0"), "{m}");
}

#[tokio::test]
async fn graceful_stop_keeps_everything_acknowledged() {
    let c = TestCollector::start().await;
    let body = batch(json!([{"type": "page", "anonymousId": "s"}]));
    let r = c
        .send(Request::post("/v1/batch", body).header("Authorization", &basic_auth(WRITE_KEY)))
        .await;
    assert_eq!(r.status, 200);
    let data_dir = c.stop().await;
    assert_eq!(weft_e2e::harness::logged_events(data_dir.path()).len(), 1);
}

/// Reads from a raw socket until the server closes it or `limit` passes;
/// returns what was read and whether it was closed.
async fn read_until_closed(s: &mut tokio::net::TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return (got, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn slow_loris_is_cut_off_while_others_are_served() {
    let c = TestCollector::start_with(|config| {
        config.header_timeout = Duration::from_millis(300);
    })
    .await;
    let mut slow = tokio::net::TcpStream::connect(c.addr).await.unwrap();
    slow.write_all(b"POST /v1/batch HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // Meanwhile a normal client is served.
    let good = batch(json!([{"type": "page", "anonymousId": "patient"}]));
    let r = c
        .send(Request::post("/v1/batch", good).header("Authorization", &basic_auth(WRITE_KEY)))
        .await;
    assert_eq!(r.status, 200);
    let started = std::time::Instant::now();
    let (_, closed) = read_until_closed(&mut slow, Duration::from_secs(5)).await;
    assert!(closed, "the slow client was not cut off");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(stored_count(&c), 1);
}

#[tokio::test]
async fn a_body_that_never_arrives_gets_408() {
    let c = TestCollector::start_with(|config| {
        config.body_timeout = Duration::from_millis(300);
    })
    .await;
    let mut s = tokio::net::TcpStream::connect(c.addr).await.unwrap();
    s.write_all(
        format!(
            "POST /v1/batch HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Length: 1000\r\n\r\n{{\"batch\":",
            basic_auth(WRITE_KEY)
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (raw, _) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    let r = weft_e2e::http::parse_response(&raw);
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (408, Some("body_timeout"))
    );
}

#[tokio::test]
async fn oversize_headers_are_refused() {
    let c = TestCollector::start().await;
    let r = c
        .send(Request::get("/healthz").header("X-Padding", &"p".repeat(64 * 1024)))
        .await;
    assert_eq!(r.status, 431);
    assert_eq!(c.send(Request::get("/healthz")).await.status, 200);
}

#[tokio::test]
async fn connections_beyond_the_limit_are_closed() {
    let c = TestCollector::start_with(|config| config.max_connections = 2).await;
    let idle1 = tokio::net::TcpStream::connect(c.addr).await.unwrap();
    let idle2 = tokio::net::TcpStream::connect(c.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = tokio::net::TcpStream::connect(c.addr).await.unwrap();
    let _ = third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let (got, closed) = read_until_closed(&mut third, Duration::from_secs(3)).await;
    assert!(
        closed && got.is_empty(),
        "third connection was served: {got:?}"
    );
    drop((idle1, idle2));
    let r = weft_e2e::eventually(Duration::from_secs(5), "a free connection slot", || async {
        let mut s = tokio::net::TcpStream::connect(c.addr).await.ok()?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let (raw, _) = read_until_closed(&mut s, Duration::from_secs(2)).await;
        (!raw.is_empty()).then(|| weft_e2e::http::parse_response(&raw))
    })
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn a_source_over_its_rate_limit_gets_429_with_retry_after() {
    // A clock that never moves: the bucket never refills during the test.
    let clock = Arc::new(FixedClock(time::macros::datetime!(2026-11-23 10:00:00 UTC)));
    let c = TestCollector::start_with_clock(
        |config| {
            config.sources[0].rate_limit = Some(RateLimit {
                requests_per_second: 0.5,
                burst: 2,
            });
            config.sources.push(Source::any_origin("wk_other"));
        },
        clock,
    )
    .await;
    let send = |key: &'static str, id: &'static str| {
        let body = batch(json!([{"type": "page", "anonymousId": id}]));
        c.send(Request::post("/v1/batch", body).header("Authorization", &basic_auth(key)))
    };
    assert_eq!(send(WRITE_KEY, "r1").await.status, 200);
    assert_eq!(send(WRITE_KEY, "r2").await.status, 200);
    let limited = send(WRITE_KEY, "r3").await;
    assert_eq!(
        (limited.status, limited.json()["error"].as_str()),
        (429, Some("rate_limited"))
    );
    assert_eq!(limited.header("retry-after"), Some("2"));
    // Other sources are not affected.
    assert_eq!(send("wk_other", "o1").await.status, 200);
    assert_eq!(stored_count(&c), 3);
    let m = String::from_utf8(c.send(Request::get("/metrics")).await.body).unwrap();
    assert!(
        m.contains("weft_requests_failed_total{error=\"rate_limited\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn shutdown_drains_a_request_in_flight() {
    let c = TestCollector::start().await;
    let addr = c.addr;
    let body = batch(json!([{"type": "page", "anonymousId": "in-flight"}]));
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!(
            "POST /v1/batch HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: {}\r\nContent-Length: {}\r\n\r\n",
            basic_auth(WRITE_KEY),
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    s.write_all(&body[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopping = tokio::spawn(c.stop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    // New connections are refused once shutdown began.
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown began"
    );
    s.write_all(&body[10..]).await.unwrap();
    let (raw, _) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert_eq!(weft_e2e::http::parse_response(&raw).status, 200);
    let data_dir = stopping.await.unwrap();
    assert_eq!(weft_e2e::harness::logged_events(data_dir.path()).len(), 1);
}

/// What Python's `urllib` (a client that writes its whole body before it
/// reads anything, as most server SDKs do) gets for a POST of `body_kb` KB
/// of JSON to `/v1/batch`, with a Content-Length or chunked:
/// `{"status": N, "body": TEXT}`, or `{"error": TEXT}` for a network error.
async fn urllib_post(c: &TestCollector, body_kb: usize, chunked: bool) -> Value {
    const SCRIPT: &str = r#"
import json, sys, urllib.request, urllib.error
url, key, kb, chunked = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
msg = '{"type":"track","event":"Big","anonymousId":"big","properties":{"pad":"' + "x" * 1000 + '"}}'
body = ('{"batch":[' + ",".join([msg] * kb) + "]}").encode()
data = iter([body[i:i + 65536] for i in range(0, len(body), 65536)]) if chunked else body
req = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
import base64
req.add_header("Authorization", "Basic " + base64.b64encode((key + ":").encode()).decode())
try:
    r = urllib.request.urlopen(req, timeout=20)
    print(json.dumps({"status": r.status, "body": r.read().decode()}))
except urllib.error.HTTPError as e:
    print(json.dumps({"status": e.code, "body": e.read().decode()}))
except Exception as e:
    print(json.dumps({"error": repr(e)}))
"#;
    let out = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(c.url("/v1/batch"))
        .arg(WRITE_KEY)
        .arg(body_kb.to_string())
        .arg(if chunked { "1" } else { "0" })
        .output()
        .await
        .expect("python3 runs (it is on every machine of this kind)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[tokio::test]
async fn an_oversize_body_gets_a_413_that_a_client_writing_it_whole_reads() {
    let c = TestCollector::start().await;
    // About 600 KB (the size of the report), 2 MB and 7 MB: more than the
    // socket buffers hold, so a server that answers without reading would
    // reset the connection under the client's feet.
    for (kb, chunked) in [
        (600, false),
        (600, true),
        (2000, false),
        (7000, false),
        (7000, true),
    ] {
        let r = urllib_post(&c, kb, chunked).await;
        assert_eq!(r["status"], 413, "{kb} KB, chunked {chunked}: {r}");
        let body: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["error"], "payload_too_large", "{body}");
        assert!(body["reason"].as_str().is_some_and(|s| !s.is_empty()));
    }
    // Under the limit it is accepted, and the refused ones stored nothing.
    let r = urllib_post(&c, 400, false).await;
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(stored_count(&c), 400);

    // The same with a raw client that writes all 600 KB before reading.
    let mut s = tokio::net::TcpStream::connect(c.addr).await.unwrap();
    let body = vec![b' '; 600 * 1024];
    let head = format!(
        "POST /v1/batch HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Length: {}\r\n\r\n",
        basic_auth(WRITE_KEY),
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&body).await.unwrap();
    let (raw, _) = read_until_closed_or(&mut s, b"}", Duration::from_secs(10)).await;
    let r = weft_e2e::http::parse_response(&raw);
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (413, Some("payload_too_large"))
    );
}

/// Reads until `end` closes a response body or the connection closes.
async fn read_until_closed_or(
    s: &mut tokio::net::TcpStream,
    end: &[u8],
    limit: Duration,
) -> (Vec<u8>, bool) {
    use tokio::io::AsyncReadExt;
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => return (raw, true),
            Ok(Ok(n)) => {
                raw.extend_from_slice(&buf[..n]);
                if raw.ends_with(end) {
                    return (raw, false);
                }
            }
            Ok(Err(e)) => panic!("read failed after {} bytes: {e}", raw.len()),
        }
    }
}

#[tokio::test]
async fn a_body_that_is_not_a_json_object_is_a_400() {
    let c = TestCollector::start().await;
    let nested = format!("{}{}", "[".repeat(100), "]".repeat(100));
    let cases = [
        ("/v1/batch", nested.clone()),
        ("/v1/batch", "[1,2,3]".to_owned()),
        (
            "/v1/batch",
            format!("  [{}]", r#"[{"type":"page","anonymousId":"a"}]"#),
        ),
        ("/v1/batch", "\"batch\"".to_owned()),
        ("/v1/batch", "null".to_owned()),
        ("/v1/track", nested),
        ("/v1/track", "[1,2,3]".to_owned()),
    ];
    for (path, body) in cases {
        let r = c
            .send(Request::post(path, body.clone()).header("Authorization", &basic_auth(WRITE_KEY)))
            .await;
        assert_eq!(
            (r.status, r.json()["error"].as_str()),
            (400, Some("malformed_json")),
            "{path} {body}"
        );
        assert!(r.json()["reason"].as_str().is_some_and(|s| !s.is_empty()));
    }
    assert_eq!(stored_count(&c), 0);
    let rejected: i64 = c
        .db()
        .query_row("SELECT count(*) FROM rejected", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rejected, 0, "a request error rejects no message");
}
