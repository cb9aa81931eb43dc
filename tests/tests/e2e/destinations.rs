//! Destinations against real local receivers (HTTP servers in the test):
//! every event delivered in order per profile through an outage, the same
//! `webhook-id` on every retry, signatures checked by Python's own `hmac`,
//! `Retry-After`, dead letters and replay, 410, isolation of a slow
//! destination, consent filtering, audience changes, the GA4 shape, hourly
//! NDJSON files, erasure reaching outboxes, and `/v1/export`.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde_json::{Value, json};
use weft_e2e::harness::{ADMIN_TOKEN, TestCollector};
use weft_e2e::http::Request;
use weft_e2e::receiver::{Received, Receiver, Reply};

/// A signing secret (`whsec_` + base64 of 24 bytes).
const SECRET: &str = "whsec_c2VjcmV0LWZvci10aGUtd2VmdC10ZXN0cw==";

async fn put(c: &TestCollector, name: &str, body: Value) -> (u16, Value) {
    let r = c
        .send(
            Request::put(&format!("/v1/destinations/{name}"), body.to_string()).bearer(ADMIN_TOKEN),
        )
        .await;
    (r.status, r.json())
}

async fn get(c: &TestCollector, path: &str) -> (u16, Value) {
    let r = c.send(Request::get(path).bearer(ADMIN_TOKEN)).await;
    let body = if r.body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&r.body).unwrap_or(Value::Null)
    };
    (r.status, body)
}

fn webhook(receiver: &Receiver, extra: Value) -> Value {
    let mut v = json!({"kind": "webhook", "url": receiver.url("/hook"), "secret": SECRET,
        "batch_size": 10, "max_age_ms": 100});
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    v
}

fn track(anon: &str, n: usize) -> Value {
    json!({"type": "track", "event": "Step", "anonymousId": anon, "messageId": format!("{anon}-{n}"),
        "properties": {"n": n}})
}

/// The stored messages a webhook receiver got, by `webhook-id` first seen
/// (duplicates by retry removed), in arrival order.
fn delivered_messages(requests: &[Received]) -> Vec<Value> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for r in requests {
        if !(200..300).contains(&r.status) {
            continue;
        }
        let id = r.header("webhook-id").unwrap_or("").to_owned();
        if !seen.insert(id) {
            continue;
        }
        let body = r.json();
        if body["type"] == "weft.events" {
            out.extend(body["data"].as_array().cloned().unwrap_or_default());
        }
    }
    out
}

/// Checks every request's Standard Webhooks signature with Python's `hmac`
/// (an implementation independent of the collector's); answers how many
/// verified.
fn verify_with_python(requests: &[Received]) -> usize {
    let dir = tempfile::tempdir().unwrap();
    for (n, r) in requests.iter().enumerate() {
        let meta = json!({
            "id": r.header("webhook-id"),
            "timestamp": r.header("webhook-timestamp"),
            "signature": r.header("webhook-signature"),
        });
        std::fs::write(dir.path().join(format!("{n}.json")), meta.to_string()).unwrap();
        std::fs::write(dir.path().join(format!("{n}.body")), &r.body).unwrap();
    }
    let script = r#"
import base64, hashlib, hmac, json, sys, time, pathlib
secret = sys.argv[1]
key = base64.b64decode(secret.removeprefix("whsec_"))
ok = 0
for meta in sorted(pathlib.Path(sys.argv[2]).glob("*.json")):
    m = json.loads(meta.read_text())
    body = meta.with_suffix(".body").read_bytes()
    assert abs(time.time() - int(m["timestamp"])) < 300, "timestamp too far from now"
    signed = m["id"].encode() + b"." + m["timestamp"].encode() + b"." + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    given = [s.split(",", 1)[1] for s in m["signature"].split(" ") if s.startswith("v1,")]
    if any(hmac.compare_digest(expected, g) for g in given):
        ok += 1
print(ok)
"#;
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(SECRET)
        .arg(dir.path())
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// A receiver that fails for a while: 503 for the first `failures`
/// requests, then 200. Each request records what it was answered.
async fn flaky(failures: usize) -> Receiver {
    Receiver::start_scripted(move |n, _| {
        if n < failures {
            Reply::status(503).body("down for maintenance")
        } else {
            Reply::status(200)
        }
    })
    .await
}

#[tokio::test]
async fn a_webhook_that_fails_then_recovers_gets_every_event_in_order_once_deduplicated() {
    let c = TestCollector::start().await;
    let failures = 3;
    let receiver = flaky(failures).await;
    let (status, d) = put(&c, "hook", webhook(&receiver, json!({}))).await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["secret_set"], true);
    assert!(
        !d.to_string().contains(SECRET),
        "the secret is never echoed: {d}"
    );
    let people = ["anna", "ben", "cleo"];
    for round in 0..4 {
        let batch: Vec<Value> = people
            .iter()
            .flat_map(|p| (0..5).map(move |i| track(p, round * 5 + i)))
            .collect();
        c.send_batch(Value::Array(batch)).await;
    }
    let requests =
        weft_e2e::eventually(Duration::from_secs(30), "every event delivered", || async {
            let got = receiver.requests();
            (delivered_messages(&got).len() >= 60).then_some(got)
        })
        .await;
    let messages = delivered_messages(&requests);
    assert_eq!(
        messages.len(),
        60,
        "each event once after deduplication by webhook-id"
    );
    // In stored order per profile.
    let mut per_person: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for m in &messages {
        per_person
            .entry(m["anonymousId"].as_str().unwrap().to_owned())
            .or_default()
            .push(m["properties"]["n"].as_u64().unwrap());
    }
    for p in people {
        assert_eq!(per_person[p], (0..20).collect::<Vec<u64>>(), "{p}");
    }
    // The failed attempts were the same batch, with the same id, each
    // retried after a backoff of at least a second.
    let first_ids: Vec<&str> = requests[..=failures]
        .iter()
        .map(|r| r.header("webhook-id").unwrap())
        .collect();
    assert!(first_ids.windows(2).all(|w| w[0] == w[1]), "{first_ids:?}");
    for w in requests[..=failures].windows(2) {
        assert!(w[1].at - w[0].at >= Duration::from_millis(900), "backoff");
    }
    assert_eq!(
        requests[0].body.len(),
        requests[failures].body.len(),
        "a retry sends the same batch"
    );
    assert_eq!(
        verify_with_python(&requests),
        requests.len(),
        "every signature verifies"
    );
    let body = requests[failures].json();
    assert_eq!(body["type"], "weft.events");
    assert!(body["data"][0]["messageId"].is_string() && body["data"][0]["receivedAt"].is_string());
    // Status: delivered, failed attempts, the last error, latencies (the
    // counters move once the answer is back).
    let s = weft_e2e::eventually(Duration::from_secs(5), "the counters", || async {
        let (_, s) = get(&c, "/v1/destinations/hook").await;
        (s["delivered"] == 60).then_some(s)
    })
    .await;
    assert_eq!(s["delivered"], 60, "{s}");
    assert_eq!(s["failed"], failures as u64, "{s}");
    assert_eq!(s["pending"], 0, "{s}");
    assert!(s["last_error"].as_str().unwrap().contains("503"), "{s}");
    assert!(s["latency_ms"]["p50"].as_u64().is_some(), "{s}");
    let (_, list) = get(&c, "/v1/destinations").await;
    assert_eq!(list["destinations"][0]["name"], "hook");
    assert_eq!(list["destinations"][0]["kind"], "webhook");
    // Prometheus.
    let m = c.send(Request::get("/metrics")).await;
    let text = String::from_utf8_lossy(&m.body);
    assert!(
        text.contains("weft_destination_delivered_total{destination=\"hook\"} 60"),
        "{text}"
    );
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let c = TestCollector::start().await;
    let receiver = Receiver::start_scripted(|n, _| {
        if n == 0 {
            Reply::status(429).header("Retry-After", "3")
        } else {
            Reply::status(200)
        }
    })
    .await;
    put(&c, "hook", webhook(&receiver, json!({}))).await;
    c.send_batch(json!([track("dana", 0)])).await;
    let requests = weft_e2e::eventually(Duration::from_secs(20), "the retry", || async {
        let r = receiver.requests();
        (r.len() >= 2).then_some(r)
    })
    .await;
    let waited = requests[1].at - requests[0].at;
    assert!(
        waited >= Duration::from_millis(2900) && waited < Duration::from_secs(6),
        "waited {waited:?}, asked 3 s"
    );
}

#[tokio::test]
async fn a_400_goes_to_the_dead_letters_the_rest_goes_on_and_a_replay_delivers_it() {
    let c = TestCollector::start().await;
    // The first two batches are refused, everything after is taken.
    let receiver = Receiver::start_scripted(|n, _| {
        if n < 2 {
            Reply::status(400).body(r#"{"error":"field n is not allowed"}"#)
        } else {
            Reply::status(200)
        }
    })
    .await;
    put(&c, "hook", webhook(&receiver, json!({"batch_size": 1}))).await;
    for n in 0..3 {
        c.send_batch(json!([track("eve", n)])).await;
    }
    weft_e2e::eventually(
        Duration::from_secs(10),
        "the batch after the 400s",
        || async { (receiver.count() >= 3).then_some(()) },
    )
    .await;
    let (_, dead) = get(&c, "/v1/destinations/hook/dead?limit=1").await;
    let items = dead["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{dead}");
    let item = &items[0];
    assert_eq!(item["last_status"], 400);
    assert_eq!(item["attempts"], 1, "a 400 is not retried");
    assert!(
        item["response_sample"]
            .as_str()
            .unwrap()
            .contains("field n is not allowed")
    );
    assert!(
        item["request_sample"].as_str().unwrap().contains("eve-0"),
        "{item}"
    );
    assert!(item["first_attempt_at"].is_string() && item["last_attempt_at"].is_string());
    let cursor = dead["next"].as_str().expect("a second page").to_owned();
    let (_, page2) = get(
        &c,
        &format!("/v1/destinations/hook/dead?limit=1&cursor={cursor}"),
    )
    .await;
    assert!(
        page2["items"][0]["request_sample"]
            .as_str()
            .unwrap()
            .contains("eve-1"),
        "{page2}"
    );
    assert!(page2["next"].is_null());
    weft_e2e::eventually(Duration::from_secs(5), "the counters", || async {
        let (_, s) = get(&c, "/v1/destinations/hook").await;
        ((s["dead"].as_u64(), s["delivered"].as_u64()) == (Some(2), Some(1))).then_some(())
    })
    .await;
    let replay = |body: Value| {
        let c = &c;
        async move {
            let r = c
                .send(
                    Request::post("/v1/destinations/hook/replay", body.to_string())
                        .bearer(ADMIN_TOKEN),
                )
                .await;
            assert_eq!(r.status, 200);
            r.json()["requeued"].as_u64().unwrap()
        }
    };
    // One by its id (an unknown id requeues nothing), then all the rest.
    assert_eq!(replay(json!({"ids": [987654]})).await, 0);
    assert_eq!(replay(json!({"ids": [item["id"]]})).await, 1);
    weft_e2e::eventually(Duration::from_secs(10), "the replay", || async {
        (receiver.count() >= 4).then_some(())
    })
    .await;
    let replayed = &receiver.requests()[3];
    assert_eq!(replayed.json()["data"][0]["messageId"], "eve-0");
    assert_eq!(
        replayed.header("webhook-id"),
        receiver.requests()[0].header("webhook-id"),
        "a replay is a retry of the same batch"
    );
    assert_eq!(replay(json!({})).await, 1);
    weft_e2e::eventually(Duration::from_secs(10), "the second replay", || async {
        (receiver.count() >= 5).then_some(())
    })
    .await;
    assert_eq!(
        receiver.requests()[4].json()["data"][0]["messageId"],
        "eve-1"
    );
    let (_, dead) =
        weft_e2e::eventually(Duration::from_secs(5), "the dead letters to go", || async {
            let d = get(&c, "/v1/destinations/hook/dead").await;
            d.1["items"].as_array().unwrap().is_empty().then_some(d)
        })
        .await;
    assert!(dead["next"].is_null());
    weft_e2e::eventually(Duration::from_secs(5), "the counters", || async {
        let (_, s) = get(&c, "/v1/destinations/hook").await;
        ((s["dead"].as_u64(), s["delivered"].as_u64()) == (Some(0), Some(3))).then_some(())
    })
    .await;
    let r = c
        .send(Request::post("/v1/destinations/hook/replay", r#"{"ids":"all"}"#).bearer(ADMIN_TOKEN))
        .await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn gone_410_disables_the_destination_and_it_stays_off() {
    let c = TestCollector::start().await;
    let receiver = Receiver::start_scripted(|_, _| Reply::status(410)).await;
    put(&c, "hook", webhook(&receiver, json!({}))).await;
    c.send_batch(json!([track("finn", 0)])).await;
    let s = weft_e2e::eventually(
        Duration::from_secs(10),
        "the destination to be disabled",
        || async {
            let (_, s) = get(&c, "/v1/destinations/hook").await;
            (s["enabled"] == false).then_some(s)
        },
    )
    .await;
    assert!(s["last_error"].as_str().unwrap().contains("410"), "{s}");
    c.send_batch(json!([track("finn", 1)])).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        receiver.count(),
        1,
        "nothing more is sent to a receiver that is gone"
    );
    // It stays off across a restart.
    let dir = c.stop().await;
    let config = weft_collector::Config::new(
        dir.path(),
        vec![weft_collector::Source::any_origin(
            weft_e2e::harness::WRITE_KEY,
        )],
        ADMIN_TOKEN.to_owned(),
    );
    let c = TestCollector::start_config(config, dir).await;
    let (_, s) = get(&c, "/v1/destinations/hook").await;
    assert_eq!(s["enabled"], false, "{s}");
}

#[tokio::test]
async fn a_destination_that_hangs_does_not_delay_another() {
    let c = TestCollector::start().await;
    let slow =
        Receiver::start_scripted(|_, _| Reply::status(200).delay(Duration::from_secs(60))).await;
    let fast = Receiver::start().await;
    put(&c, "slow", webhook(&slow, json!({}))).await;
    put(&c, "fast", webhook(&fast, json!({}))).await;
    for round in 0..5 {
        let sent = std::time::Instant::now();
        c.send_batch(json!([track("gus", round)])).await;
        weft_e2e::eventually(Duration::from_secs(3), "the fast destination", || async {
            (delivered_messages(&fast.requests()).len() > round).then_some(())
        })
        .await;
        assert!(
            sent.elapsed() < Duration::from_secs(2),
            "{:?}",
            sent.elapsed()
        );
    }
    assert_eq!(slow.count(), 1, "the slow one has one request in flight");
    weft_e2e::eventually(
        Duration::from_secs(5),
        "all 5 pending for the slow one",
        || async {
            let (_, s) = get(&c, "/v1/destinations/slow").await;
            (s["pending"] == 5).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_marketing_destination_gets_only_what_consent_grants_and_no_consent_records() {
    let c = TestCollector::start().await;
    let ads = Receiver::start().await;
    let analytics = Receiver::start().await;
    put(&c, "ads", webhook(&ads, json!({"consent": "marketing"}))).await;
    put(&c, "analytics", webhook(&analytics, json!({}))).await;
    let prefs = |marketing: bool| json!({"consent": {"categoryPreferences": {"analytics": true, "marketing": marketing}}});
    c.send_batch(json!([
        {"type": "track", "event": "Consent Updated", "anonymousId": "hal", "messageId": "consent-1",
         "properties": {"categoryPreferences": {"analytics": true, "marketing": true}},
         "context": prefs(true)},
        {"type": "track", "event": "Seen", "anonymousId": "hal", "messageId": "yes", "context": prefs(true)},
        {"type": "track", "event": "Seen", "anonymousId": "ida", "messageId": "no", "context": prefs(false)},
        {"type": "track", "event": "Seen", "anonymousId": "jo", "messageId": "server-side"}
    ]))
    .await;
    let got = |r: &Receiver| -> Vec<String> {
        delivered_messages(&r.requests())
            .iter()
            .map(|m| m["messageId"].as_str().unwrap().to_owned())
            .collect()
    };
    // Each destination delivers on its own: wait for both, then for any
    // straggler a wrong filter would let through.
    weft_e2e::eventually(Duration::from_secs(10), "both destinations", || async {
        (got(&analytics).len() >= 4 && got(&ads).len() >= 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A server-side message without consent context follows its source
    // (assumed, the default).
    assert_eq!(got(&ads), ["yes", "server-side"]);
    assert_eq!(got(&analytics), ["consent-1", "yes", "no", "server-side"]);
}

#[tokio::test]
async fn audience_changes_are_delivered_as_they_happen() {
    let c = TestCollector::start().await;
    let receiver = Receiver::start().await;
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
    put(
        &c,
        "crm",
        webhook(
            &receiver,
            json!({"audiences": ["pros"], "types": ["identify"]}),
        ),
    )
    .await;
    let identify = |plan: &str| json!({"type": "identify", "userId": "kim", "anonymousId": "kim-phone", "traits": {"plan": plan}});
    c.send_batch(json!([identify("pro")])).await;
    // A read after the 200 sees the membership (the index has applied it),
    // so the next identify is evaluated on its own, not in the same batch
    // (which would settle on "free" with nothing entered).
    assert_eq!(c.profile("kim").await.json()["segments"], json!(["pros"]));
    c.send_batch(json!([identify("free")])).await;
    let changes = weft_e2e::eventually(Duration::from_secs(10), "enter and exit", || async {
        let changes: Vec<Value> = receiver
            .requests()
            .iter()
            .map(Received::json)
            .filter(|b| b["type"] == "weft.audience")
            .flat_map(|b| b["data"].as_array().cloned().unwrap_or_default())
            .collect();
        (changes.len() >= 2).then_some(changes)
    })
    .await;
    assert_eq!(changes[0]["audience"], "pros");
    assert_eq!(changes[0]["action"], "entered");
    assert_eq!(changes[1]["action"], "exited");
    assert_eq!(changes[0]["user_ids"], json!(["kim"]));
    assert_eq!(changes[0]["anonymous_ids"], json!(["kim-phone"]));
    assert!(changes[0]["profile_id"].is_string() && changes[0]["at"].is_string());
    // The identify messages themselves went too (types: identify).
    assert_eq!(delivered_messages(&receiver.requests()).len(), 2);
}

#[tokio::test]
async fn ga4_gets_the_measurement_protocol_shape() {
    let c = TestCollector::start().await;
    let receiver = Receiver::start_scripted(|_, _| Reply::status(204)).await;
    let (status, d) = put(
        &c,
        "ga",
        json!({"kind": "ga4", "measurement_id": "G-TEST123", "api_secret": "s3cr3t",
               "base_url": receiver.url(""), "max_age_ms": 100}),
    )
    .await;
    assert_eq!(status, 200, "{d}");
    assert!(!d.to_string().contains("s3cr3t"), "{d}");
    let ctx = json!({"consent": {"categoryPreferences": {"analytics": true, "marketing": true, "personalization": false}},
                     "page": {"url": "https://shop.example/p/1", "title": "Shoe"}});
    let mut batch = vec![
        json!({"type": "page", "anonymousId": "lou", "userId": "u-lou", "context": ctx}),
        json!({"type": "identify", "anonymousId": "lou", "userId": "u-lou", "traits": {"x": 1}, "context": ctx}),
    ];
    for n in 0..30 {
        batch.push(json!({"type": "track", "event": "Product Added To Cart", "anonymousId": "lou", "userId": "u-lou",
            "properties": {"productId": n, "price": 9.5, "variant": {"size": 42}}, "context": ctx}));
    }
    c.send_batch(Value::Array(batch)).await;
    let requests = weft_e2e::eventually(Duration::from_secs(10), "GA4 requests", || async {
        let r = receiver.requests();
        let events: usize = r
            .iter()
            .map(|r| r.json()["events"].as_array().map_or(0, Vec::len))
            .sum();
        (events >= 31).then_some(r)
    })
    .await;
    let mut names = Vec::new();
    for r in &requests {
        assert_eq!(
            r.path,
            "/mp/collect?measurement_id=G-TEST123&api_secret=s3cr3t"
        );
        let b = r.json();
        let events = b["events"].as_array().unwrap();
        assert!(events.len() <= 25, "at most 25 events a request");
        assert_eq!(b["client_id"], "lou");
        assert_eq!(b["user_id"], "u-lou");
        assert_eq!(
            b["consent"],
            json!({"ad_user_data": "GRANTED", "ad_personalization": "DENIED"})
        );
        for e in events {
            let name = e["name"].as_str().unwrap();
            assert!(
                name.len() <= 40 && name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{name}"
            );
            names.push(name.to_owned());
            assert!(e["timestamp_micros"].is_i64());
        }
    }
    assert_eq!(names.len(), 31, "identify has no GA4 event");
    assert_eq!(names[0], "page_view");
    assert!(names[1..].iter().all(|n| n == "product_added_to_cart"));
    let first = &requests[0].json()["events"][0];
    assert_eq!(first["params"]["page_location"], "https://shop.example/p/1");
    assert_eq!(first["params"]["page_title"], "Shoe");
    let add = &requests[0].json()["events"][1];
    assert_eq!(
        add["params"],
        json!({"product_id": 0, "price": 9.5}),
        "nested values are left out"
    );
}

#[tokio::test]
async fn file_destination_writes_whole_ndjson_files_per_period() {
    let c = TestCollector::start().await;
    let out = tempfile::tempdir().unwrap();
    let (status, d) = put(
        &c,
        "lake",
        json!({"kind": "file", "dir": out.path(), "period": "2s", "max_age_ms": 50, "batch_size": 7}),
    )
    .await;
    assert_eq!(status, 200, "{d}");
    for n in 0..30 {
        c.send_batch(json!([track("max", n)])).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let files = weft_e2e::eventually(Duration::from_secs(15), "every file finished", || async {
        let mut names: Vec<String> = std::fs::read_dir(out.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let partial = names.iter().any(|n| n.ends_with(".partial"));
        let lines: usize = names
            .iter()
            .map(|n| {
                std::fs::read_to_string(out.path().join(n))
                    .unwrap()
                    .lines()
                    .count()
            })
            .sum();
        (!partial && lines == 30).then_some(names)
    })
    .await;
    assert!(
        files.len() >= 2,
        "3 s of events over 2 s periods: {files:?}"
    );
    let mut seen = Vec::new();
    for name in &files {
        assert!(
            name.starts_with("lake-") && name.ends_with("Z.ndjson"),
            "{name}"
        );
        for line in std::fs::read_to_string(out.path().join(name))
            .unwrap()
            .lines()
        {
            let m: Value = serde_json::from_str(line).expect("each line is JSON");
            seen.push(m["properties"]["n"].as_u64().unwrap());
        }
    }
    assert_eq!(
        seen,
        (0..30).collect::<Vec<u64>>(),
        "every event once, in order"
    );
}

#[tokio::test]
async fn erasure_removes_a_person_from_outboxes_and_dead_letters() {
    let c = TestCollector::start().await;
    let receiver = Receiver::start_scripted(|_, r| {
        // Down until told otherwise; then 400 for batches with nora.
        if String::from_utf8_lossy(&r.body).contains("nora") {
            Reply::status(400)
        } else {
            Reply::status(503)
        }
    })
    .await;
    put(&c, "hook", webhook(&receiver, json!({"batch_size": 1}))).await;
    c.send_batch(json!([track("nora", 0)])).await;
    weft_e2e::eventually(Duration::from_secs(10), "nora's dead letter", || async {
        let (_, s) = get(&c, "/v1/destinations/hook").await;
        (s["dead"] == 1).then_some(())
    })
    .await;
    c.send_batch(json!([track("nora", 1), track("otto", 0)]))
        .await;
    // The receiver is down: both wait in the outbox.
    weft_e2e::eventually(Duration::from_secs(10), "a failed attempt", || async {
        (receiver.count() >= 2).then_some(())
    })
    .await;
    let r = c
        .send(Request::new("DELETE", "/v1/profiles/nora").bearer(ADMIN_TOKEN))
        .await;
    assert_eq!(r.status, 200);
    receiver.script(|_, _| Reply::status(200));
    weft_e2e::eventually(Duration::from_secs(15), "otto's event", || async {
        let got = delivered_messages(&receiver.requests());
        got.iter().any(|m| m["anonymousId"] == "otto").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_erasure: Vec<Received> = receiver
        .requests()
        .into_iter()
        .filter(|r| String::from_utf8_lossy(&r.body).contains("otto"))
        .collect();
    for r in &after_erasure {
        assert!(
            !String::from_utf8_lossy(&r.body).contains("nora"),
            "an erased person's event was sent"
        );
    }
    let (_, dead) = get(&c, "/v1/destinations/hook/dead").await;
    assert_eq!(dead["items"], json!([]), "{dead}");
    let (_, s) = get(&c, "/v1/destinations/hook").await;
    assert_eq!(s["dead"], 0, "{s}");
}

#[tokio::test]
async fn settings_are_checked_and_need_the_admin_token() {
    let c = TestCollector::start().await;
    let receiver = Receiver::start().await;
    let r = c
        .send(Request::put(
            "/v1/destinations/x",
            webhook(&receiver, json!({})).to_string(),
        ))
        .await;
    assert_eq!(r.status, 401);
    for (body, field) in [
        (webhook(&receiver, json!({"secret": "plain"})), "secret"),
        (
            webhook(&receiver, json!({"url": "file:///etc/passwd"})),
            "url",
        ),
        (webhook(&receiver, json!({"batch_size": 0})), "batch_size"),
        (webhook(&receiver, json!({"colour": "red"})), "colour"),
        (json!({"kind": "s3"}), "kind"),
    ] {
        let (status, e) = put(&c, "x", body).await;
        assert_eq!(status, 400, "{e}");
        assert_eq!(e["error"], "invalid_destination");
        assert_eq!(e["field"], field, "{e}");
    }
    let r = c
        .send(Request::put("/v1/destinations/x", "{nope").bearer(ADMIN_TOKEN))
        .await;
    assert_eq!(r.status, 400);
    let (status, _) = get(&c, "/v1/destinations/nothing").await;
    assert_eq!(status, 404);
    // A GET's answer can be edited and sent back: the secret is kept.
    put(&c, "x", webhook(&receiver, json!({}))).await;
    let (_, mut d) = get(&c, "/v1/destinations/x").await;
    d["batch_size"] = json!(3);
    let (status, d) = put(&c, "x", d).await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["batch_size"], 3);
    c.send_batch(json!([track("pia", 0)])).await;
    let sig = weft_e2e::eventually(Duration::from_secs(5), "a delivery", || async {
        receiver.requests().first().cloned()
    })
    .await;
    assert_eq!(
        verify_with_python(&[sig]),
        1,
        "still signed with the first secret"
    );
    let r = c
        .send(Request::new("DELETE", "/v1/destinations/x").bearer(ADMIN_TOKEN))
        .await;
    assert_eq!(r.status, 204);
    let (status, _) = get(&c, "/v1/destinations/x").await;
    assert_eq!(status, 404);
}

/// `curl` (a client we did not write, which decodes the chunked stream)
/// for `path` with the admin token: its exit status and output.
async fn curl(c: &TestCollector, path: &str) -> (bool, String) {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "20", "-H"])
        .arg(format!("Authorization: Bearer {ADMIN_TOKEN}"))
        .arg(c.url(path))
        .output()
        .await
        .expect("curl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test]
async fn export_streams_the_stored_events_as_ndjson() {
    let c = TestCollector::start().await;
    for round in 0..4 {
        let batch: Vec<Value> = (0..500).map(|n| track("quinn", round * 500 + n)).collect();
        c.send_batch(Value::Array(batch)).await;
    }
    let r = c.send(Request::get("/v1/export")).await;
    assert_eq!(r.status, 401);
    let r = c.send(Request::get("/v1/export").bearer(ADMIN_TOKEN)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    assert_eq!(
        r.header("transfer-encoding"),
        Some("chunked"),
        "streamed, not buffered"
    );
    let (ok, text) = curl(&c, "/v1/export").await;
    assert!(ok);
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2000);
    let ns: Vec<u64> = lines
        .iter()
        .map(|l| l["properties"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, (0..2000).collect::<Vec<u64>>());
    let received = lines[0]["receivedAt"].as_str().unwrap().to_owned();
    let (_, text) = curl(&c, &format!("/v1/export?from={received}")).await;
    assert_eq!(text.lines().count(), 2000, "from is included");
    let (_, text) = curl(&c, &format!("/v1/export?to={received}")).await;
    assert_eq!(text.lines().count(), 0, "to is excluded");
    let (_, text) = curl(&c, "/v1/export?from=2999-01-01T00:00:00Z").await;
    assert!(text.is_empty());
    let r = c
        .send(Request::get("/v1/export?from=yesterday").bearer(ADMIN_TOKEN))
        .await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn retention_removes_expired_messages_from_outboxes_and_dead_letters() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let clock = Arc::new(weft_collector::clock::ManualClock::new(
        time::macros::datetime!(2026-09-01 10:00:00 UTC),
    ));
    let c = TestCollector::start_with_clock(
        |config| {
            config.retention = Some(Duration::from_secs(30 * 86_400));
            config.retention_sweep_every = Duration::from_millis(100);
        },
        clock.clone(),
    )
    .await;
    let up = Arc::new(AtomicBool::new(false));
    let is_up = up.clone();
    let receiver = Receiver::start_scripted(move |_, r| {
        if String::from_utf8_lossy(&r.body).contains("rex-0") {
            Reply::status(422)
        } else if is_up.load(Ordering::SeqCst) {
            Reply::status(200)
        } else {
            Reply::status(503)
        }
    })
    .await;
    put(&c, "hook", webhook(&receiver, json!({"batch_size": 1}))).await;
    c.send_batch(json!([track("rex", 0)])).await;
    weft_e2e::eventually(Duration::from_secs(10), "the dead letter", || async {
        (get(&c, "/v1/destinations/hook").await.1["dead"] == 1).then_some(())
    })
    .await;
    c.send_batch(json!([track("rex", 1)])).await;
    weft_e2e::eventually(Duration::from_secs(10), "a failed attempt", || async {
        (receiver.count() >= 2).then_some(())
    })
    .await;
    // Forty days later both are past the 30-day retention.
    clock.advance(time::Duration::days(40));
    c.send_batch(json!([track("sam", 0)])).await;
    weft_e2e::eventually(Duration::from_secs(10), "the sweep", || async {
        (c.profile("rex").await.status == 404).then_some(())
    })
    .await;
    let (_, s) = get(&c, "/v1/destinations/hook").await;
    assert_eq!(s["dead"], 0, "{s}");
    let (_, dead) = get(&c, "/v1/destinations/hook/dead").await;
    assert_eq!(dead["items"], json!([]));
    up.store(true, Ordering::SeqCst);
    weft_e2e::eventually(Duration::from_secs(15), "sam's event", || async {
        let got = delivered_messages(&receiver.requests());
        got.iter().any(|m| m["anonymousId"] == "sam").then_some(())
    })
    .await;
    let delivered: Vec<String> = delivered_messages(&receiver.requests())
        .iter()
        .map(|m| m["messageId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(delivered, ["sam-0"], "expired messages are not delivered");
}

#[tokio::test]
async fn https_receivers_are_reached_over_tls_and_an_untrusted_certificate_is_refused() {
    // A real TLS server (Python's ssl) with a self-signed certificate: the
    // handshake happens, and the certificate, signed by no public root, is
    // refused; nothing is sent in clear.
    let tls = weft_e2e::harness::workspace_root().join("tests/fixtures/tls");
    let script = r#"
import http.server, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.send_response(200); self.end_headers()
    def log_message(self, *a):
        pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1] + "/cert.pem", sys.argv[1] + "/key.pem")
s.socket = ctx.wrap_socket(s.socket, server_side=True)
print(s.server_address[1], flush=True)
s.timeout = 1
for _ in range(60):
    s.handle_request()
"#;
    let mut server = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&tls)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    let mut line = String::new();
    {
        use tokio::io::AsyncBufReadExt as _;
        let stdout = server.stdout.take().unwrap();
        tokio::io::BufReader::new(stdout)
            .read_line(&mut line)
            .await
            .unwrap();
    }
    let port: u16 = line.trim().parse().expect("the server's port");
    let c = TestCollector::start().await;
    let (status, d) = put(
        &c,
        "secure",
        json!({"kind": "webhook", "url": format!("https://127.0.0.1:{port}/hook"), "secret": SECRET, "max_age_ms": 50}),
    )
    .await;
    assert_eq!(status, 200, "{d}");
    c.send_batch(json!([track("tess", 0)])).await;
    let s = weft_e2e::eventually(Duration::from_secs(10), "a failed attempt", || async {
        let (_, s) = get(&c, "/v1/destinations/secure").await;
        s["last_error"].is_string().then_some(s)
    })
    .await;
    let error = s["last_error"].as_str().unwrap();
    assert!(error.contains("certificate"), "{error}");
    eprintln!("https receiver: {error}");
    assert_eq!(s["delivered"], 0);
    assert_eq!(s["pending"], 1, "kept for a retry: {s}");
    let _ = server.kill().await;
}
