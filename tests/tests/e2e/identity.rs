//! Identity over HTTP against a real store: devices join the profile of the
//! user who logged in on them, shared devices never merge people, anonymous
//! events join retroactively by time, aliases join users, junk IDs link
//! nothing.

use serde_json::{Value, json};
use weft_e2e::harness::{TestCollector, WRITE_KEY};
use weft_e2e::http::Request;

async fn send(c: &TestCollector, messages: Value) {
    c.send_batch(messages).await;
}

fn msg(kind: &str, at: &str, anon: Option<&str>, user: Option<&str>) -> Value {
    let mut m = json!({"type": kind, "timestamp": at, "event": "E"});
    if let Some(a) = anon {
        m["anonymousId"] = a.into();
    }
    if let Some(u) = user {
        m["userId"] = u.into();
    }
    m
}

#[tokio::test]
async fn a_shared_device_never_merges_two_people_and_attributes_by_time() {
    let c = TestCollector::start().await;
    // Alice browses, logs in at 10:00; Bob logs in on the same computer at
    // 11:00 without a reset; each browses anonymously in between. Sent out of
    // order on purpose.
    send(
        &c,
        json!([
            msg("track", "2026-11-23T10:30:00Z", Some("shared"), None),
            msg(
                "identify",
                "2026-11-23T11:00:00Z",
                Some("shared"),
                Some("bob")
            ),
            msg("track", "2026-11-23T09:50:00Z", Some("shared"), None),
            msg(
                "identify",
                "2026-11-23T10:00:00Z",
                Some("shared"),
                Some("alice")
            ),
            msg("track", "2026-11-23T11:30:00Z", Some("shared"), None),
            msg("track", "2026-11-23T12:00:00Z", None, Some("alice")),
        ]),
    )
    .await;
    let alice = c.profile("alice").await.json();
    let bob = c.profile("bob").await.json();
    assert_eq!(alice["user_ids"], json!(["alice"]));
    assert_eq!(bob["user_ids"], json!(["bob"]));
    assert_ne!(alice["profile_id"], bob["profile_id"]);
    // alice: 09:50 (before her login), her identify, her 12:00 event.
    assert_eq!(alice["event_count"], 3, "{alice}");
    // bob: 10:30 (next login at or after it is his), his identify, 11:30.
    assert_eq!(bob["event_count"], 3, "{bob}");
    assert_eq!(alice["first_seen"], "2026-11-23T09:50:00.000Z");
    // The device answers its most recent user's profile.
    assert_eq!(
        c.profile("shared").await.json()["profile_id"],
        bob["profile_id"]
    );
}

#[tokio::test]
async fn anonymous_history_joins_the_profile_at_login() {
    let c = TestCollector::start().await;
    send(
        &c,
        json!([msg("page", "2026-11-23T09:00:00Z", Some("dev-1"), None)]),
    )
    .await;
    let before = c.profile("dev-1").await.json();
    assert_eq!(before["profile_id"], "anon:dev-1");
    assert_eq!(before["user_ids"], json!([]));
    send(
        &c,
        json!([msg(
            "identify",
            "2026-11-23T09:05:00Z",
            Some("dev-1"),
            Some("carol")
        )]),
    )
    .await;
    let after = c.profile("dev-1").await.json();
    assert_eq!(after["profile_id"], "user:carol");
    assert_eq!(after["anonymous_ids"], json!(["dev-1"]));
    assert_eq!(after["event_count"], 2);
}

#[tokio::test]
async fn alias_joins_two_user_ids() {
    let c = TestCollector::start().await;
    send(
        &c,
        json!([
            msg("identify", "2026-11-23T09:00:00Z", Some("phone"), Some("dave-old")),
            msg("identify", "2026-11-23T09:00:00Z", Some("laptop"), Some("dave@example.com")),
            {"type": "alias", "previousId": "dave-old", "userId": "dave@example.com", "timestamp": "2026-11-23T09:10:00Z"},
        ]),
    )
    .await;
    let p = c.profile("phone").await.json();
    assert_eq!(p["user_ids"], json!(["dave-old", "dave@example.com"]));
    assert_eq!(p["anonymous_ids"], json!(["laptop", "phone"]));
    assert_eq!(p["event_count"], 3);
    assert_eq!(
        c.profile("laptop").await.json()["profile_id"],
        p["profile_id"]
    );
}

#[tokio::test]
async fn junk_identifiers_link_nothing_and_are_counted() {
    let c = TestCollector::start().await;
    send(
        &c,
        json!([
            msg(
                "identify",
                "2026-11-23T09:00:00Z",
                Some("dev-a"),
                Some("null")
            ),
            msg(
                "identify",
                "2026-11-23T09:00:00Z",
                Some("dev-b"),
                Some("null")
            ),
            msg(
                "identify",
                "2026-11-23T09:00:00Z",
                Some("undefined"),
                Some("erin")
            ),
            msg(
                "identify",
                "2026-11-23T09:00:00Z",
                Some("dev-f"),
                Some("Guest")
            ),
        ]),
    )
    .await;
    assert_eq!(c.profile("dev-a").await.json()["profile_id"], "anon:dev-a");
    assert_eq!(c.profile("dev-b").await.json()["profile_id"], "anon:dev-b");
    assert_eq!(c.profile("erin").await.json()["anonymous_ids"], json!([]));
    assert_eq!(c.profile("null").await.status, 404);
    let m = String::from_utf8(c.send(Request::get("/metrics")).await.body).unwrap();
    assert!(m.contains("weft_junk_identifiers_total 4"), "{m}");
}

#[tokio::test]
async fn traits_merge_with_the_latest_timestamp_winning_whatever_the_arrival_order() {
    let c = TestCollector::start().await;
    let identify = |at: &str, traits: Value| json!({"type": "identify", "userId": "fay", "timestamp": at, "traits": traits});
    // The newer identify arrives first.
    send(
        &c,
        json!([identify(
            "2026-11-23T12:00:00Z",
            json!({"plan": "pro", "city": "Oslo"})
        )]),
    )
    .await;
    send(
        &c,
        json!([identify(
            "2026-11-23T09:00:00Z",
            json!({"plan": "free", "email": "fay@example.com"})
        )]),
    )
    .await;
    let consented = json!({"type": "track", "userId": "fay", "event": "E", "timestamp": "2026-11-23T13:00:00Z",
        "context": {"consent": {"categoryPreferences": {"analytics": true, "marketing": false}}}});
    send(&c, json!([consented])).await;
    let p = c.profile("fay").await.json();
    assert_eq!(
        p["traits"],
        json!({"plan": "pro", "city": "Oslo", "email": "fay@example.com"})
    );
    assert_eq!(p["consent"], json!({"analytics": true, "marketing": false}));
}

#[tokio::test]
async fn events_are_paged_newest_first_with_their_message_ids() {
    let c = TestCollector::start().await;
    let messages: Vec<Value> = (0..7)
        .map(|i| {
            json!({"type": "track", "event": format!("E{i}"), "userId": "gus",
                   "messageId": format!("gus-{i}"), "timestamp": format!("2026-11-23T10:0{i}:00Z")})
        })
        .collect();
    send(&c, Value::from(messages)).await;
    let get = |q: String| {
        c.send(
            Request::get(&format!("/v1/profiles/gus/events{q}"))
                .bearer(weft_e2e::harness::ADMIN_TOKEN),
        )
    };
    let first = get("?limit=3".into()).await.json();
    let ids = |page: &Value| -> Vec<String> {
        page["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["messageId"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&first), ["gus-6", "gus-5", "gus-4"]);
    let cursor = first["next_before"].as_str().unwrap().to_owned();
    let second = get(format!("?limit=3&before={cursor}")).await.json();
    assert_eq!(ids(&second), ["gus-3", "gus-2", "gus-1"]);
    let third = get(format!(
        "?limit=3&before={}",
        second["next_before"].as_str().unwrap()
    ))
    .await
    .json();
    assert_eq!(ids(&third), ["gus-0"]);
    assert!(third["next_before"].is_null());
    // A plain time works as `before` too.
    let by_time = get("?before=2026-11-23T10:02:00Z".into()).await.json();
    assert_eq!(ids(&by_time), ["gus-1", "gus-0"]);
    for bad in [
        "?limit=0",
        "?limit=abc",
        "?limit=100000",
        "?before=yesterday",
    ] {
        let r = get(bad.into()).await;
        assert_eq!(
            (r.status, r.json()["error"].as_str()),
            (400, Some("bad_request")),
            "{bad}"
        );
    }
    assert_eq!(
        c.send(Request::get("/v1/profiles/nobody/events").bearer(weft_e2e::harness::ADMIN_TOKEN))
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn the_graph_says_which_message_joined_which_identifiers() {
    let c = TestCollector::start().await;
    send(
        &c,
        json!([
            {"type": "identify", "anonymousId": "tablet", "userId": "hal", "messageId": "login-1", "timestamp": "2026-11-23T09:00:00Z"},
            {"type": "alias", "previousId": "hal", "userId": "hal@example.com", "messageId": "alias-1", "timestamp": "2026-11-23T09:05:00Z"},
            // Another person on the same tablet: not in hal's graph.
            {"type": "identify", "anonymousId": "tablet", "userId": "ida", "messageId": "login-2", "timestamp": "2026-11-23T10:00:00Z"},
        ]),
    )
    .await;
    let g = c
        .send(Request::get("/v1/profiles/hal/graph").bearer(weft_e2e::harness::ADMIN_TOKEN))
        .await
        .json();
    assert_eq!(g["user_ids"], json!(["hal", "hal@example.com"]));
    assert_eq!(g["anonymous_ids"], json!(["tablet"]));
    assert_eq!(
        g["edges"],
        json!([
            {"kind": "link", "from": "tablet", "to": "hal", "at": "2026-11-23T09:00:00.000Z", "message_id": "login-1"},
            {"kind": "alias", "from": "hal", "to": "hal@example.com", "at": "2026-11-23T09:05:00.000Z", "message_id": "alias-1"},
        ])
    );
}

/// Every file under `dir`, as bytes.
fn files_under(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    out
}

#[tokio::test]
async fn erasure_removes_a_person_everywhere_and_suppresses_their_identifiers() {
    let c = TestCollector::start().await;
    let secrets = ["zoe-4711", "zoe-phone", "zoe.erasable@example.com"];
    send(
        &c,
        json!([
            msg("page", "2026-11-23T09:00:00Z", Some("zoe-phone"), None),
            {"type": "identify", "anonymousId": "zoe-phone", "userId": "zoe-4711", "timestamp": "2026-11-23T09:01:00Z",
             "traits": {"email": "zoe.erasable@example.com"}},
            msg("track", "2026-11-23T09:02:00Z", None, Some("zoe-4711")),
            // A kiosk used by Zoe, then Bob: Bob keeps it.
            msg("page", "2026-11-23T10:00:00Z", Some("kiosk"), None),
            msg("identify", "2026-11-23T10:01:00Z", Some("kiosk"), Some("zoe-4711")),
            msg("page", "2026-11-23T11:00:00Z", Some("kiosk"), None),
            msg("identify", "2026-11-23T11:01:00Z", Some("kiosk"), Some("bob-1")),
        ]),
    )
    .await;
    // A bad row naming Zoe.
    let bad = json!({"writeKey": WRITE_KEY, "batch": [{"type": "track", "userId": "zoe-4711"}]});
    assert_eq!(
        c.send(Request::post("/v1/batch", bad.to_string()))
            .await
            .json()["rejected"],
        1
    );
    let bob_before = c.profile("bob-1").await.json();

    let admin = weft_e2e::harness::ADMIN_TOKEN;
    let erased = c
        .send(Request::new("DELETE", "/v1/profiles/zoe-phone").bearer(admin))
        .await;
    assert_eq!(erased.status, 200);
    let report = erased.json();
    assert_eq!(report["profile_id"], "user:zoe-4711");
    assert_eq!(report["events"], 5, "{report}");
    assert_eq!(report["rejected"], 1, "{report}");
    assert_eq!(
        report["suppressed_identifiers"], 2,
        "the user and the phone, not the kiosk: {report}"
    );
    assert_eq!(c.profile("zoe-4711").await.status, 404);
    assert_eq!(c.profile("zoe-phone").await.status, 404);
    assert_eq!(
        c.send(Request::new("DELETE", "/v1/profiles/zoe-4711").bearer(admin))
            .await
            .status,
        404
    );
    assert_eq!(
        c.profile("bob-1").await.json(),
        bob_before,
        "Bob's profile is untouched"
    );

    // Later messages carrying Zoe's identifiers are dropped and counted.
    let later = json!({"writeKey": WRITE_KEY, "batch": [
        msg("track", "2026-11-24T09:00:00Z", None, Some("zoe-4711")),
        msg("page", "2026-11-24T09:00:00Z", Some("zoe-phone"), None),
        msg("page", "2026-11-24T09:00:00Z", Some("kiosk"), None),
    ]});
    let r = c
        .send(Request::post("/v1/batch", later.to_string()))
        .await
        .json();
    assert_eq!(
        (r["accepted"].as_u64(), r["suppressed"].as_u64()),
        (Some(1), Some(2)),
        "{r}"
    );
    let m = String::from_utf8(c.send(Request::get("/metrics")).await.body).unwrap();
    assert!(m.contains("weft_events_suppressed_total 2"), "{m}");

    // Nothing in the data directory names Zoe in clear.
    let data_dir = c.stop().await;
    for (path, bytes) in files_under(data_dir.path()) {
        for secret in secrets {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} found in {path:?}"
            );
        }
    }
    // The suppression survives a restart.
    let config = weft_collector::Config::new(
        data_dir.path(),
        vec![weft_collector::Source::any_origin(WRITE_KEY)],
        admin.to_owned(),
    );
    let again = TestCollector::start_config(config, data_dir).await;
    let retry = json!({"writeKey": WRITE_KEY, "batch": [msg("track", "2026-11-25T09:00:00Z", None, Some("zoe-4711"))]});
    let r = again
        .send(Request::post("/v1/batch", retry.to_string()))
        .await
        .json();
    assert_eq!(r["suppressed"], 1, "{r}");
}

#[tokio::test]
async fn retention_deletes_old_events_and_the_profiles_left_empty() {
    use std::sync::Arc;
    use std::time::Duration;
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
    send(
        &c,
        json!([
            msg("page", "2026-09-01T09:00:00Z", Some("old-visitor"), None),
            msg(
                "identify",
                "2026-09-01T09:00:00Z",
                Some("old-laptop"),
                Some("ivy")
            ),
        ]),
    )
    .await;
    clock.advance(time::Duration::days(40));
    send(
        &c,
        json!([msg("track", "2026-10-11T09:00:00Z", None, Some("ivy"))]),
    )
    .await;
    weft_e2e::eventually(Duration::from_secs(10), "the sweep", || async {
        (c.profile("old-visitor").await.status == 404).then_some(())
    })
    .await;
    let ivy = c.profile("ivy").await.json();
    assert_eq!(
        ivy["event_count"], 1,
        "only the recent event is left: {ivy}"
    );
    assert_eq!(
        ivy["anonymous_ids"],
        json!(["old-laptop"]),
        "a user keeps their link"
    );
    let m = String::from_utf8(c.send(Request::get("/metrics")).await.body).unwrap();
    assert!(m.contains("weft_events_expired_total 2"), "{m}");
}
