//! Identity over HTTP against a real store: devices join the profile of the
//! user who logged in on them, shared devices never merge people, anonymous
//! events join retroactively by time, aliases join users, junk IDs link
//! nothing.

use serde_json::{Value, json};
use weft_e2e::harness::{TestCollector, WRITE_KEY};
use weft_e2e::http::Request;

async fn send(c: &TestCollector, messages: Value) {
    let body = json!({"writeKey": WRITE_KEY, "batch": messages});
    let r = c.send(Request::post("/v1/batch", body.to_string())).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["rejected"], 0, "{:?}", r.json());
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
