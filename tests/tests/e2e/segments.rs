//! Real-time segments over HTTP against a real collector: rules refused
//! with the path of what is wrong, membership that changes with the
//! event's 200 (no sleep), windows that slide on the collector's clock,
//! merges, consent withdrawal, erasure, a recompute of 10,000 profiles and
//! one interrupted by a restart.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use weft_collector::clock::ManualClock;
use weft_e2e::harness::{ADMIN_TOKEN, TestCollector, WRITE_KEY};
use weft_e2e::http::Request;

async fn send(c: &TestCollector, messages: Value) {
    c.send_batch(messages).await;
}

async fn put(c: &TestCollector, key: &str, rule: Value) -> (u16, Value) {
    let body = json!({"name": format!("The {key} people"), "rule": rule});
    let r = c
        .send(Request::put(&format!("/v1/segments/{key}"), body.to_string()).bearer(ADMIN_TOKEN))
        .await;
    (r.status, r.json())
}

async fn get(c: &TestCollector, path: &str) -> (u16, Value) {
    let r = c.send(Request::get(path).bearer(ADMIN_TOKEN)).await;
    let body = if r.body.is_empty() {
        Value::Null
    } else {
        r.json()
    };
    (r.status, body)
}

/// The segments of the profile `id` belongs to.
async fn segments_of(c: &TestCollector, id: &str) -> Vec<String> {
    let (status, p) = get(c, &format!("/v1/profiles/{id}")).await;
    assert_eq!(status, 200, "{p}");
    serde_json::from_value(p["segments"].clone()).unwrap()
}

/// Waits (bounded) until segment `key` has been computed for everyone.
async fn ready(c: &TestCollector, key: &str) -> Value {
    weft_e2e::eventually(
        Duration::from_secs(60),
        "the segment to be ready",
        || async {
            let (_, s) = get(c, &format!("/v1/segments/{key}")).await;
            (s["status"] == "ready").then_some(s)
        },
    )
    .await
}

fn identify(user: &str, anon: &str, traits: Value) -> Value {
    json!({"type": "identify", "userId": user, "anonymousId": anon, "traits": traits})
}

fn track(anon: Option<&str>, user: Option<&str>, event: &str, props: Value) -> Value {
    let mut m = json!({"type": "track", "event": event, "properties": props});
    if let Some(a) = anon {
        m["anonymousId"] = a.into();
    }
    if let Some(u) = user {
        m["userId"] = u.into();
    }
    m
}

#[tokio::test]
async fn invalid_rules_are_refused_with_the_path_of_what_is_wrong() {
    let c = TestCollector::start().await;
    let (status, e) = put(
        &c,
        "bad",
        json!({"all": [{"trait": "plan", "op": "eq", "value": "pro"}, {"trait": "ltv", "op": "bigger", "value": 1}]}),
    )
    .await;
    assert_eq!(status, 400, "{e}");
    assert_eq!(e["error"], "invalid_rule");
    assert_eq!(e["path"], "rule.all[1].op");
    let (status, e) = put(&c, "bad", json!({"event": "Viewed", "within": "30 days"})).await;
    assert_eq!((status, e["path"].as_str()), (400, Some("rule.within")));
    let (status, _) = put(&c, "Bad_Key", json!({"consent": "marketing"})).await;
    assert_eq!(status, 400);
    // Cycles, however indirect, and unknown segments.
    assert_eq!(put(&c, "a", json!({"consent": "marketing"})).await.0, 200);
    assert_eq!(put(&c, "b", json!({"segment": "a"})).await.0, 200);
    let (status, e) = put(&c, "a", json!({"segment": "b"})).await;
    assert_eq!(status, 400, "{e}");
    assert!(e["reason"].as_str().unwrap().contains("cycle"), "{e}");
    assert_eq!(put(&c, "c", json!({"segment": "nope"})).await.0, 400);
    // A segment others refer to cannot go first.
    let r = c
        .send(Request::new("DELETE", "/v1/segments/a").bearer(ADMIN_TOKEN))
        .await;
    assert_eq!(r.status, 400);
    // The admin token is required.
    let r = c.send(Request::get("/v1/segments")).await;
    assert_eq!(r.status, 401);
    let r = c
        .send(Request::new("DELETE", "/v1/segments/b").bearer(ADMIN_TOKEN))
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(get(&c, "/v1/segments/b").await.0, 404);
    let (_, list) = get(&c, "/v1/segments").await;
    assert_eq!(list["segments"].as_array().unwrap().len(), 1, "{list}");
}

#[tokio::test]
async fn membership_changes_with_the_events_200_and_the_design_example_holds() {
    let c = TestCollector::start().await;
    let example = json!({"all":[
        {"event":"Product Viewed","within":"30d"},
        {"not":{"event":"Order Completed","within":"30d"}},
        {"trait":"city_tier","op":"eq","value":1},
        {"trait":"ltv","op":"gte","value":1000}]});
    let (status, s) = put(&c, "hot-leads", example.clone()).await;
    assert_eq!(status, 200, "{s}");
    assert_eq!(s["rule"], example);
    ready(&c, "hot-leads").await;

    send(
        &c,
        json!([identify(
            "ann",
            "a-1",
            json!({"city_tier": "1", "ltv": 1500})
        )]),
    )
    .await;
    assert!(
        segments_of(&c, "ann").await.is_empty(),
        "no product viewed yet"
    );
    send(
        &c,
        json!([track(
            Some("a-1"),
            None,
            "Product Viewed",
            json!({"sku": "x"})
        )]),
    )
    .await;
    // No sleep: the read after the 200 sees the membership it causes.
    assert_eq!(segments_of(&c, "ann").await, ["hot-leads"]);
    let (_, members) = get(&c, "/v1/segments/hot-leads/profiles").await;
    assert_eq!(
        members["profiles"][0]["profile_id"], "user:ann",
        "{members}"
    );
    assert_eq!(members["profiles"][0]["anonymous_ids"], json!(["a-1"]));
    assert!(members["profiles"][0]["entered_at"].is_string());
    send(
        &c,
        json!([track(None, Some("ann"), "Order Completed", json!({}))]),
    )
    .await;
    assert!(segments_of(&c, "ann").await.is_empty(), "bought: left");
    let (_, s) = get(&c, "/v1/segments/hot-leads").await;
    assert_eq!(s["size"], 0);
}

#[tokio::test]
async fn a_window_slides_on_the_collectors_clock_and_takes_people_out_and_in() {
    let clock = Arc::new(ManualClock::new(
        time::macros::datetime!(2026-03-01 12:00 UTC),
    ));
    let c = TestCollector::start_with_clock(
        |config| config.segment_tick = Duration::from_millis(50),
        clock.clone(),
    )
    .await;
    put(
        &c,
        "recent",
        json!({"event": "Product Viewed", "within": "1h"}),
    )
    .await;
    put(
        &c,
        "lapsed",
        json!({"not": {"event": "Product Viewed", "within": "1h"}}),
    )
    .await;
    ready(&c, "recent").await;
    let viewed = json!({"type": "track", "event": "Product Viewed", "anonymousId": "v-1",
                        "timestamp": "2026-03-01T12:00:00Z"});
    send(&c, json!([viewed])).await;
    assert_eq!(segments_of(&c, "v-1").await, ["recent"]);
    // 59 minutes later nothing has moved yet.
    clock.advance(time::Duration::minutes(59));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(segments_of(&c, "v-1").await, ["recent"]);
    // Past the hour it leaves one and enters the other, with no new event.
    clock.advance(time::Duration::minutes(2));
    weft_e2e::eventually(Duration::from_secs(10), "the window to slide", || async {
        (segments_of(&c, "v-1").await == ["lapsed"]).then_some(())
    })
    .await;
    // A new view brings it back at once (what the tick decided is what the
    // next batch starts from).
    let again = json!({"type": "track", "event": "Product Viewed", "anonymousId": "v-1",
                       "timestamp": "2026-03-01T13:01:00Z"});
    send(&c, json!([again])).await;
    assert_eq!(segments_of(&c, "v-1").await, ["recent"]);
}

#[tokio::test]
async fn a_login_merges_an_anonymous_visitors_events_into_the_users_count() {
    let c = TestCollector::start().await;
    put(
        &c,
        "shoe-fans",
        json!({"event": "Product Viewed", "where": [{"property": "category", "op": "eq", "value": "shoes"}],
               "count": {"op": "gte", "value": 2}}),
    )
    .await;
    ready(&c, "shoe-fans").await;
    send(&c, json!([identify("bo", "phone", json!({}))])).await;
    send(
        &c,
        json!([
            track(
                Some("phone"),
                Some("bo"),
                "Product Viewed",
                json!({"category": "shoes"})
            ),
            track(
                Some("laptop"),
                None,
                "Product Viewed",
                json!({"category": "hats"})
            ),
            track(
                Some("laptop"),
                None,
                "Product Viewed",
                json!({"category": "shoes"})
            ),
        ]),
    )
    .await;
    assert!(segments_of(&c, "bo").await.is_empty(), "one view each");
    assert!(segments_of(&c, "laptop").await.is_empty());
    // Bo logs in on the laptop: its anonymous view counts for Bo now.
    send(&c, json!([identify("bo", "laptop", json!({}))])).await;
    assert_eq!(segments_of(&c, "bo").await, ["shoe-fans"]);
    let (_, members) = get(&c, "/v1/segments/shoe-fans/profiles").await;
    let ids: Vec<&str> = members["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["profile_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["user:bo"], "the laptop's own profile is gone");
}

#[tokio::test]
async fn consent_withdrawal_takes_someone_out_of_a_marketing_segment_and_erasure_out_of_all() {
    let c = TestCollector::start().await;
    put(&c, "reachable", json!({"consent": "marketing"})).await;
    put(&c, "anyone", json!({"segment": "reachable"})).await;
    ready(&c, "anyone").await;
    let consent = |marketing: bool| {
        json!({"type": "track", "event": "Consent Updated", "userId": "cy",
               "properties": {"categoryPreferences": {"marketing": marketing}},
               "context": {"consent": {"categoryPreferences": {"analytics": true, "marketing": marketing}}}})
    };
    send(&c, json!([consent(true)])).await;
    assert_eq!(segments_of(&c, "cy").await, ["anyone", "reachable"]);
    send(&c, json!([consent(false)])).await;
    assert!(segments_of(&c, "cy").await.is_empty());
    send(&c, json!([consent(true)])).await;
    assert_eq!(segments_of(&c, "cy").await.len(), 2);
    let r = c
        .send(Request::new("DELETE", "/v1/profiles/cy").bearer(ADMIN_TOKEN))
        .await;
    assert_eq!(r.status, 200);
    for key in ["reachable", "anyone"] {
        let (_, s) = get(&c, &format!("/v1/segments/{key}")).await;
        assert_eq!(s["size"], 0, "{s}");
    }
    let db = c.db();
    let left: i64 = db
        .query_row(
            "SELECT count(*) FROM segment_changes WHERE profile_id LIKE '%cy%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(left, 0, "no membership history names the erased person");
}

/// `n` people, each an identify with `plan` pro for every third.
fn people(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let plan = if i % 3 == 0 { "pro" } else { "free" };
            identify(&format!("p{i}"), &format!("d{i}"), json!({"plan": plan}))
        })
        .collect()
}

#[tokio::test]
async fn a_new_rule_is_computed_for_10000_profiles_in_the_background() {
    let c = TestCollector::start().await;
    for chunk in people(10_000).chunks(500) {
        send(&c, Value::Array(chunk.to_vec())).await;
    }
    let (status, s) = put(
        &c,
        "pro",
        json!({"trait": "plan", "op": "eq", "value": "pro"}),
    )
    .await;
    assert_eq!(status, 200);
    assert!(s["status"] == "computing" || s["status"] == "ready", "{s}");
    let s = ready(&c, "pro").await;
    assert_eq!(s["size"], 3334, "{s}");
    // Pages cover every member once.
    let mut seen = std::collections::BTreeSet::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let path = match &cursor {
            Some(c) => format!("/v1/segments/pro/profiles?limit=1000&cursor={c}"),
            None => "/v1/segments/pro/profiles?limit=1000".to_owned(),
        };
        let (_, page) = get(&c, &path).await;
        for p in page["profiles"].as_array().unwrap() {
            assert!(seen.insert(p["profile_id"].as_str().unwrap().to_owned()));
        }
        cursor = page["next"].as_str().map(str::to_owned);
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(seen.len(), 3334);
    // A changed rule is computed again; changed twice in a row, `ready`
    // means the last rule's pass is done.
    put(
        &c,
        "pro",
        json!({"trait": "plan", "op": "eq", "value": "pro"}),
    )
    .await;
    put(
        &c,
        "pro",
        json!({"trait": "plan", "op": "eq", "value": "free"}),
    )
    .await;
    assert_eq!(ready(&c, "pro").await["size"], 6666);
}

#[tokio::test]
async fn a_recompute_interrupted_by_a_restart_finishes_after_it() {
    let c = TestCollector::start().await;
    for chunk in people(20_000).chunks(1000) {
        send(&c, Value::Array(chunk.to_vec())).await;
    }
    put(
        &c,
        "pro",
        json!({"trait": "plan", "op": "eq", "value": "pro"}),
    )
    .await;
    let data_dir = c.stop().await;
    // The stop came before the pass over 40,000 identifiers was through.
    let ready_at_stop: bool = rusqlite::Connection::open(data_dir.path().join("weft.sqlite"))
        .unwrap()
        .query_row("SELECT ready FROM segments WHERE key = 'pro'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(
        !ready_at_stop,
        "the recompute was not interrupted; make the test bigger"
    );
    let mut config = weft_collector::Config::new(
        data_dir.path(),
        vec![weft_collector::config::Source::any_origin(WRITE_KEY)],
        ADMIN_TOKEN.to_owned(),
    );
    config.segment_tick = Duration::from_secs(1);
    let c = TestCollector::start_config(config, data_dir).await;
    let s = ready(&c, "pro").await;
    assert_eq!(s["size"], 6667, "{s}");
}

#[tokio::test]
async fn retention_takes_people_out_of_segments_whose_events_it_deleted() {
    let clock = Arc::new(ManualClock::new(
        time::macros::datetime!(2026-03-01 12:00 UTC),
    ));
    let c = TestCollector::start_with_clock(
        |config| {
            config.retention = Some(Duration::from_secs(30 * 86_400));
            config.retention_sweep_every = Duration::from_millis(100);
        },
        clock.clone(),
    )
    .await;
    put(&c, "buyers", json!({"event": "Order Completed"})).await;
    ready(&c, "buyers").await;
    send(
        &c,
        json!([track(Some("r-1"), None, "Order Completed", json!({}))]),
    )
    .await;
    assert_eq!(segments_of(&c, "r-1").await, ["buyers"]);
    // Two months on, the sweep deletes the event; the all-time rule no
    // longer holds for anyone.
    clock.advance(time::Duration::days(60));
    weft_e2e::eventually(
        Duration::from_secs(20),
        "retention to empty the segment",
        || async {
            let (_, s) = get(&c, "/v1/segments/buyers").await;
            (s["size"] == 0).then_some(())
        },
    )
    .await;
}

/// Members of segment `key`, every page.
async fn members(c: &TestCollector, key: &str) -> Vec<String> {
    let (status, page) = get(c, &format!("/v1/segments/{key}/profiles?limit=1000")).await;
    assert_eq!(status, 200, "{page}");
    assert!(page["next"].is_null(), "one page: {page}");
    let mut ids: Vec<String> = page["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["profile_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn a_recompute_finds_the_members_real_time_found_over_shared_devices_aliases_and_logins() {
    let c = TestCollector::start().await;
    let rule = json!({"all": [
        {"event": "Product Viewed", "count": {"op": "gte", "value": 2}},
        {"not": {"trait": "plan", "op": "eq", "value": "staff"}}
    ]});
    // Kept up to date event by event, from before the first event.
    put(&c, "live", rule.clone()).await;
    ready(&c, "live").await;
    let at = |minute: u32| format!("2026-03-01T10:{minute:02}:00Z");
    let view = |anon: Option<&str>, user: Option<&str>, minute: u32| {
        let mut m = track(anon, user, "Product Viewed", json!({}));
        m["timestamp"] = at(minute).into();
        m
    };
    let login = |user: &str, anon: &str, minute: u32, plan: &str| {
        let mut m = identify(user, anon, json!({"plan": plan}));
        m["timestamp"] = at(minute).into();
        m
    };
    send(
        &c,
        json!([
            // A shared kiosk: two anonymous views, then Ann logs in; one
            // more, then Ben logs in. An anonymous event counts for the
            // next login, so Ann has two views and Ben one, though the
            // kiosk itself resolves to Ben, its latest user.
            view(Some("kiosk"), None, 1),
            view(Some("kiosk"), None, 2),
            login("ann", "kiosk", 3, "free"),
            view(Some("kiosk"), None, 4),
            login("ben", "kiosk", 5, "free"),
            // Two users joined by an alias: one view each.
            view(None, Some("cat-old"), 6),
            view(None, Some("cat"), 7),
            {"type": "alias", "previousId": "cat-old", "userId": "cat", "timestamp": at(8)},
            // One user on two devices: one anonymous view on each.
            view(Some("dan-phone"), None, 9),
            view(Some("dan-laptop"), None, 10),
            login("dan", "dan-phone", 11, "free"),
            login("dan", "dan-laptop", 12, "free"),
            // Anonymous visitors: two views, one view.
            view(Some("eve-anon"), None, 13),
            view(Some("eve-anon"), None, 14),
            view(Some("fay-anon"), None, 15),
            // Two views, but staff.
            view(Some("gus-phone"), Some("gus"), 16),
            view(Some("gus-phone"), Some("gus"), 17),
            login("gus", "gus-phone", 18, "staff"),
        ]),
    )
    .await;
    let expected = ["anon:eve-anon", "user:ann", "user:cat", "user:dan"];
    assert_eq!(members(&c, "live").await, expected);
    // The same rule, new: computed by a pass over every identifier.
    put(&c, "later", rule).await;
    ready(&c, "later").await;
    assert_eq!(members(&c, "later").await, expected);
}
