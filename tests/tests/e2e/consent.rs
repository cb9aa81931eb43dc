//! Consent enforced again by the collector, whatever the browser did: an
//! event whose category is not granted in its own context is dropped and
//! counted, never stored; consent records form an audit log that retention
//! leaves alone.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use weft_collector::Source;
use weft_collector::consent::MissingConsent;
use weft_e2e::harness::{ADMIN_TOKEN, TestCollector, WRITE_KEY};
use weft_e2e::http::Request;

async fn post(c: &TestCollector, key: &str, messages: Value) -> Value {
    let body = json!({"writeKey": key, "batch": messages});
    let r = c.send(Request::post("/v1/batch", body.to_string())).await;
    assert_eq!(r.status, 200);
    r.json()
}

fn stored(c: &TestCollector) -> Vec<String> {
    c.rows().into_iter().map(|r| r.message_id).collect()
}

fn with_consent(id: &str, category: Option<&str>, prefs: Value) -> Value {
    let mut consent = json!({"categoryPreferences": prefs});
    if let Some(c) = category {
        consent["category"] = c.into();
    }
    json!({"type": "track", "event": "E", "anonymousId": "a", "messageId": id,
           "context": {"consent": consent}})
}

#[tokio::test]
async fn a_batch_claiming_a_category_not_granted_is_dropped_and_counted() {
    let c = TestCollector::start().await;
    let r = post(
        &c,
        WRITE_KEY,
        json!([
            with_consent("ok", None, json!({"analytics": true, "marketing": false})),
            with_consent("no-analytics", None, json!({"analytics": false})),
            with_consent(
                "no-marketing",
                Some("marketing"),
                json!({"analytics": true, "marketing": false})
            ),
            with_consent(
                "gcm-granted",
                Some("marketing"),
                json!({"marketing": "granted"})
            ),
        ]),
    )
    .await;
    assert_eq!(
        (r["accepted"].as_u64(), r["dropped_for_consent"].as_u64()),
        (Some(2), Some(2)),
        "{r}"
    );
    assert_eq!(stored(&c), ["ok", "gcm-granted"]);
    let m = String::from_utf8(c.send(Request::get("/metrics")).await.body).unwrap();
    assert!(
        m.contains("weft_events_dropped_total{reason=\"consent_denied\"} 2"),
        "{m}"
    );
}

#[tokio::test]
async fn sources_choose_whether_missing_consent_context_is_assumed_or_required() {
    let c = TestCollector::start_with(|config| {
        config.sources.push(Source {
            consent: MissingConsent::Required,
            ..Source::any_origin("wk_strict")
        });
    })
    .await;
    let plain = |id: &str| json!([{"type": "page", "anonymousId": "a", "messageId": id}]);
    assert_eq!(
        post(&c, WRITE_KEY, plain("server-sdk")).await["accepted"],
        1
    );
    let r = post(&c, "wk_strict", plain("strict")).await;
    assert_eq!(
        (r["accepted"].as_u64(), r["dropped_for_consent"].as_u64()),
        (Some(0), Some(1))
    );
    assert_eq!(stored(&c), ["server-sdk"]);
}

#[tokio::test]
async fn consent_records_are_an_audit_log_that_retention_keeps() {
    let clock = Arc::new(weft_collector::clock::ManualClock::new(
        time::macros::datetime!(2026-01-10 10:00:00 UTC),
    ));
    let c = TestCollector::start_with_clock(
        |config| {
            config.retention = Some(Duration::from_secs(30 * 86_400));
            config.retention_sweep_every = Duration::from_millis(100);
        },
        clock.clone(),
    )
    .await;
    let record = |id: &str, at: &str, analytics: bool| {
        let prefs = json!({"analytics": analytics, "marketing": false});
        json!({"type": "track", "event": "Consent Updated", "anonymousId": "visitor-9", "messageId": id,
               "timestamp": at,
               "properties": {"categoryPreferences": prefs, "policy": "opt-in", "policyVersion": "v3"},
               "context": {"consent": {"categoryPreferences": prefs}}})
    };
    let r = post(
        &c,
        WRITE_KEY,
        json!([
            record("grant", "2026-01-10T09:00:00Z", true),
            with_consent("page", None, json!({"analytics": true})),
        ]),
    )
    .await;
    assert_eq!(r["accepted"], 2);
    // Withdrawal: the record itself is `necessary`, so it is kept even though
    // analytics is now denied.
    let r = post(
        &c,
        WRITE_KEY,
        json!([record("withdraw", "2026-01-10T09:30:00Z", false)]),
    )
    .await;
    assert_eq!(r["accepted"], 1, "{r}");

    let history = Request::get("/v1/profiles/visitor-9/consent").bearer(ADMIN_TOKEN);
    let h = c.send(history.clone()).await.json();
    let entries = h["consent"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{h}");
    assert_eq!(entries[0]["message_id"], "grant");
    assert_eq!(
        entries[0]["preferences"],
        json!({"analytics": true, "marketing": false})
    );
    assert_eq!(entries[0]["policy"], "opt-in");
    assert_eq!(entries[0]["policy_version"], "v3");
    assert_eq!(entries[1]["message_id"], "withdraw");
    assert_eq!(entries[1]["preferences"]["analytics"], false);
    assert_eq!(
        c.profile("visitor-9").await.json()["consent"]["analytics"],
        false
    );

    // Two months later the events are swept; the audit log is not.
    clock.advance(time::Duration::days(60));
    weft_e2e::eventually(Duration::from_secs(10), "the retention sweep", || async {
        stored(&c).is_empty().then_some(())
    })
    .await;
    let after = c.send(history).await;
    assert_eq!(after.status, 200);
    assert_eq!(after.json()["consent"].as_array().unwrap().len(), 2);
}
