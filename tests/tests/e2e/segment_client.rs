//! Segment's own Node server SDK against weft, changed only in its host.
//!
//! weft promises that an existing Segment-spec server SDK works by pointing
//! it at the collector (DESIGN.md section 4). This proves it with the real
//! client from npm (`@segment/analytics-node`, pinned in xtask's tools and
//! installed under `target/tools/npm`), run by `tests/js/segment-client.mjs`:
//! one message of each type, sent the way the SDK sends them (its batching,
//! its headers, its auth, its field layout), must all be answered 2xx,
//! accepted, stored as sent, and make a profile.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::Command;
use weft_e2e::harness::{TestCollector, WRITE_KEY, workspace_root};

/// The ids `segment-client.mjs` sends with.
const USER_ID: &str = "segment-user-1";
const ANONYMOUS_ID: &str = "segment-anon-1";
const GROUP_ID: &str = "segment-org-1";
/// What the SDK calls itself in `context.library.name`.
const LIBRARY: &str = "@segment/analytics-node";

/// The installed package, or a failure that says how to install it.
fn package_dir() -> PathBuf {
    let dir = workspace_root().join("target/tools/npm/node_modules/@segment/analytics-node");
    assert!(
        dir.join("package.json").is_file(),
        "{LIBRARY} is not installed in {dir:?}: run `cargo xtask test` \
         (or `cargo xtask sdk`), which installs the pinned npm packages"
    );
    dir
}

/// The installed package's version, as its package.json says.
fn package_version(dir: &std::path::Path) -> String {
    let text = std::fs::read_to_string(dir.join("package.json")).expect("read package.json");
    let manifest: Value = serde_json::from_str(&text).expect("package.json is JSON");
    manifest["version"]
        .as_str()
        .expect("package.json has a version")
        .to_owned()
}

/// One row of `events`.
#[derive(Debug)]
struct Stored {
    message_id: String,
    kind: String,
    event: Option<String>,
    anonymous_id: Option<String>,
    user_id: Option<String>,
    timestamp: String,
    received_at: String,
    body: Value,
}

fn stored_events(collector: &TestCollector) -> Vec<Stored> {
    collector
        .rows()
        .into_iter()
        .map(|r| Stored {
            message_id: r.message_id,
            kind: r.kind,
            event: r.event,
            anonymous_id: r.anonymous_id,
            user_id: r.user_id,
            timestamp: r.timestamp,
            received_at: r.received_at,
            body: r.body,
        })
        .collect()
}

/// The rejected store as `(code, reason, raw)`, to show why a message is missing.
fn rejected(collector: &TestCollector) -> Vec<(String, String, String)> {
    let db = collector.db();
    let mut stmt = db
        .prepare("SELECT code, reason, raw FROM rejected ORDER BY seq")
        .expect("prepare rejected query");
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("query rejected")
        .collect::<Result<_, _>>()
        .expect("read rejected")
}

/// Asserts every key of `expected` is in `actual` with the same value (the
/// SDK may add keys of its own).
fn assert_contains(what: &str, actual: &Value, expected: &Value) {
    let expected = expected.as_object().expect("expected is an object");
    for (key, value) in expected {
        assert_eq!(
            actual.get(key),
            Some(value),
            "{what}.{key}: stored {what} is {actual}"
        );
    }
}

#[tokio::test]
async fn segment_node_sdk_works_by_changing_only_its_host() {
    let package = package_dir();
    let version = package_version(&package);
    let script = workspace_root().join("tests/js/segment-client.mjs");
    let collector = TestCollector::start().await;

    let mut node = Command::new("node");
    node.arg(&script)
        .arg(&package)
        .arg(collector.url(""))
        .arg(WRITE_KEY)
        .kill_on_drop(true);
    let run = tokio::time::timeout(Duration::from_secs(30), node.output())
        .await
        .expect("segment-client.mjs finished within 30 s")
        .unwrap_or_else(|e| {
            panic!("cannot run `node` ({e}): install Node.js, or run `cargo xtask test`")
        });
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    println!("segment-client.mjs said:\n{stdout}{stderr}");
    assert!(
        run.status.success(),
        "segment-client.mjs failed ({}).\nstdout:\n{stdout}\nstderr:\n{stderr}\n\
         rejected in the store: {:?}",
        run.status,
        rejected(&collector)
    );

    // weft's answers, as the SDK received them: all six accepted.
    let answers: Vec<Value> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("response "))
        .map(|l| {
            let (status, body) = l.split_once(' ').unwrap_or((l, ""));
            assert_eq!(status, "200", "weft answered the SDK: {l}");
            serde_json::from_str(body).unwrap_or_else(|e| panic!("answer is not JSON ({e}): {l}"))
        })
        .collect();
    let sum = |field: &str| -> u64 { answers.iter().filter_map(|a| a[field].as_u64()).sum() };
    assert_eq!(
        (!answers.is_empty(), sum("accepted"), sum("rejected")),
        (true, 6, 0),
        "weft's answers to the SDK: {answers:?}; rejected in the store: {:?}",
        rejected(&collector)
    );

    // The store holds exactly the six messages, as the SDK made them.
    let events = stored_events(&collector);
    let mut kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    kinds.sort_unstable();
    assert_eq!(
        kinds,
        ["alias", "group", "identify", "page", "screen", "track"],
        "stored events: {events:#?}; rejected: {:?}",
        rejected(&collector)
    );
    for e in &events {
        let library = &e.body["context"]["library"];
        assert_eq!(
            (library["name"].as_str(), library["version"].as_str()),
            (Some(LIBRARY), Some(version.as_str())),
            "context.library of the stored {} message: {}",
            e.kind,
            e.body
        );
        assert_eq!(
            e.body["messageId"].as_str(),
            Some(e.message_id.as_str()),
            "the stored {} body's messageId differs from its row: {}",
            e.kind,
            e.body
        );
        assert!(
            !e.message_id.is_empty() && !e.timestamp.is_empty() && !e.received_at.is_empty(),
            "stored {} row lacks messageId, timestamp or receivedAt: {e:?}",
            e.kind
        );
        assert_eq!(e.body["type"].as_str(), Some(e.kind.as_str()), "{e:?}");
    }
    let one = |kind: &str| -> &Stored {
        events
            .iter()
            .find(|e| e.kind == kind)
            .unwrap_or_else(|| panic!("no stored {kind} in {events:#?}"))
    };
    let ids = |e: &Stored| (e.user_id.clone(), e.anonymous_id.clone());
    let user = Some(USER_ID.to_owned());
    let anonymous = Some(ANONYMOUS_ID.to_owned());

    let identify = one("identify");
    assert_eq!(
        ids(identify),
        (user.clone(), anonymous.clone()),
        "{identify:?}"
    );
    assert_contains(
        "traits",
        &identify.body["traits"],
        &json!({"email": "ada@example.com", "plan": "pro", "logins": 3}),
    );

    let track = one("track");
    assert_eq!(ids(track), (user.clone(), None), "{track:?}");
    assert_eq!(track.event.as_deref(), Some("Order Completed"), "{track:?}");
    assert_eq!(track.body["event"], "Order Completed", "{}", track.body);
    assert_contains(
        "properties",
        &track.body["properties"],
        &json!({"orderId": "o-1001", "revenue": 42.5, "currency": "EUR",
                "products": [{"sku": "sku-7"}]}),
    );

    let page = one("page");
    assert_eq!(ids(page), (None, anonymous.clone()), "{page:?}");
    assert_contains(
        "page",
        &page.body,
        &json!({"name": "Pricing", "category": "Docs"}),
    );
    assert_contains(
        "properties",
        &page.body["properties"],
        &json!({"path": "/pricing", "url": "https://shop.example/pricing"}),
    );

    let screen = one("screen");
    assert_eq!(ids(screen), (user.clone(), None), "{screen:?}");
    assert_eq!(screen.body["name"], "Home", "{}", screen.body);
    assert_contains(
        "properties",
        &screen.body["properties"],
        &json!({"variant": "dark"}),
    );

    let group = one("group");
    assert_eq!(ids(group), (user.clone(), None), "{group:?}");
    assert_eq!(group.body["groupId"], GROUP_ID, "{}", group.body);
    assert_contains(
        "traits",
        &group.body["traits"],
        &json!({"name": "Acme", "employees": 12}),
    );

    let alias = one("alias");
    assert_eq!(ids(alias), (user.clone(), None), "{alias:?}");
    assert_eq!(alias.body["previousId"], ANONYMOUS_ID, "{}", alias.body);

    // The identify linked the two ids into one profile holding all six.
    let profile = collector.profile(USER_ID).await;
    assert_eq!(
        profile.status,
        200,
        "GET /v1/profiles/{USER_ID}: {}",
        String::from_utf8_lossy(&profile.body)
    );
    let profile = profile.json();
    assert_eq!(
        (
            &profile["user_ids"],
            &profile["anonymous_ids"],
            &profile["event_count"]
        ),
        (&json!([USER_ID]), &json!([ANONYMOUS_ID]), &json!(6)),
        "profile of {USER_ID}: {profile}"
    );
}
