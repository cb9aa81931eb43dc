//! Real Python server SDKs against weft, changed only in their host:
//! RudderStack's (`rudder-sdk-python`) and Segment's
//! (`segment-analytics-python`).
//!
//! They put an identify's traits in different places: RudderStack's moves
//! them into `context.traits` (nothing at the top level), Segment's sends
//! `traits` and keeps whatever `context` the caller gives. weft counts both
//! places, the top-level value winning a key given in both (DESIGN.md
//! section 4). The packages are pinned in xtask's tools and installed under
//! `target/tools/python`; `tests/py/send.py` runs one of them with that on
//! `PYTHONPATH`, prints what the library put on the wire and what weft
//! answered, and each test checks the wire, the store and the profile.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::Command;
use weft_e2e::harness::{StoredEvent, TestCollector, WRITE_KEY, workspace_root};
use weft_e2e::http::basic_auth;

/// What both libraries call themselves in `context.library.name`.
const LIBRARY: &str = "analytics-python";
/// The traits `send.py` gives `identify`.
fn traits() -> Value {
    json!({"email": "ada@example.com", "plan": "pro", "logins": 3})
}

/// `target/tools/python`, or a failure that says how to fill it.
fn python_dir() -> PathBuf {
    let dir = workspace_root().join("target/tools/python");
    for module in ["rudderstack/analytics", "segment/analytics"] {
        assert!(
            dir.join(module).join("__init__.py").is_file(),
            "{module} is not installed in {dir:?}: run `cargo xtask test` (or \
             `cargo xtask sdk`), which installs the pinned PyPI packages there"
        );
    }
    dir
}

/// The installed version of the distribution `dist` (pip's `--target`
/// leaves one `<dist>-<version>.dist-info` directory per package).
fn installed_version(dir: &Path, dist: &str) -> String {
    let prefix = format!("{dist}-");
    let versions: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {dir:?}: {e}"))
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| {
            n.strip_prefix(&prefix)?
                .strip_suffix(".dist-info")
                .map(str::to_owned)
        })
        .collect();
    match versions.as_slice() {
        [v] => v.clone(),
        _ => panic!(
            "expected one {dist} in {dir:?}, found versions {versions:?}: run `cargo xtask test`"
        ),
    }
}

/// What one run of `send.py` printed.
struct Run {
    /// The library's own `VERSION`.
    version: String,
    /// Every request the library made: `method`, `url`, `contentEncoding`,
    /// `authorization` and the `body` as sent (un-gzipped).
    requests: Vec<Value>,
    /// weft's answers, as the library received them.
    answers: Vec<Value>,
}

impl Run {
    /// The one message of type `kind` the library sent.
    fn sent(&self, kind: &str) -> &Value {
        let found: Vec<&Value> = self
            .requests
            .iter()
            .filter_map(|r| r["body"]["batch"].as_array())
            .flatten()
            .filter(|m| m["type"] == kind)
            .collect();
        match found.as_slice() {
            [m] => m,
            _ => panic!(
                "expected one {kind} on the wire, found {}: {:#?}",
                found.len(),
                self.requests
            ),
        }
    }

    /// The messageIds sent, sorted.
    fn message_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .requests
            .iter()
            .filter_map(|r| r["body"]["batch"].as_array())
            .flatten()
            .map(|m| m["messageId"].as_str().expect("a messageId").to_owned())
            .collect();
        ids.sort();
        ids
    }
}

/// Runs `send.py` with `client` against `collector`.
async fn send(client: &str, collector: &TestCollector) -> Run {
    let dir = python_dir();
    let script = workspace_root().join("tests/py/send.py");
    let mut python = Command::new("python3");
    python
        .arg(&script)
        .arg(client)
        .arg(collector.url(""))
        .arg(WRITE_KEY)
        .env("PYTHONPATH", &dir)
        .env("PYTHONNOUSERSITE", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .kill_on_drop(true);
    let run = tokio::time::timeout(Duration::from_secs(30), python.output())
        .await
        .expect("send.py finished within 30 s")
        .unwrap_or_else(|e| {
            panic!("cannot run `python3` ({e}): install Python 3, or run `cargo xtask test`")
        });
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    println!("send.py {client} said:\n{stdout}{stderr}");
    assert!(
        run.status.success(),
        "send.py {client} failed ({}).\nstdout:\n{stdout}\nstderr:\n{stderr}\n\
         rejected in the store: {:?}",
        run.status,
        rejected(collector)
    );
    let json_of = |line: &str| -> Value {
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    };
    let requests = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("request "))
        .map(json_of)
        .collect();
    let answers = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("response "))
        .map(|l| {
            let (status, body) = l.split_once(' ').unwrap_or((l, ""));
            assert_eq!(status, "200", "weft answered {client}'s SDK: {l}");
            json_of(body)
        })
        .collect();
    let version = stdout
        .lines()
        .find_map(|l| l.strip_prefix("version "))
        .expect("send.py prints the library's version")
        .to_owned();
    Run {
        version,
        requests,
        answers,
    }
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

/// The checks both clients share: every message accepted and stored as
/// sent, by the pinned library, in one profile with both ids. Returns the
/// stored rows and the profile.
async fn delivered(
    client: &str,
    collector: &TestCollector,
    run: &Run,
    dist: &str,
) -> (Vec<StoredEvent>, Value) {
    assert_eq!(
        run.version,
        installed_version(&python_dir(), dist),
        "{client}: the library that ran is not the installed pin"
    );
    let sum = |field: &str| -> u64 { run.answers.iter().filter_map(|a| a[field].as_u64()).sum() };
    assert_eq!(
        (!run.answers.is_empty(), sum("accepted"), sum("rejected")),
        (true, 6, 0),
        "weft's answers to {client}: {:?}; rejected in the store: {:?}",
        run.answers,
        rejected(collector)
    );
    for r in &run.requests {
        assert_eq!(r["method"], "POST", "{r}");
        assert_eq!(r["url"], collector.url("/v1/batch"), "{r}");
    }

    let rows = collector.rows();
    let mut kinds: Vec<&str> = rows.iter().map(|e| e.kind.as_str()).collect();
    kinds.sort_unstable();
    assert_eq!(
        kinds,
        ["alias", "group", "identify", "page", "screen", "track"],
        "{client}: stored events: {rows:#?}; rejected: {:?}",
        rejected(collector)
    );
    let mut stored_ids: Vec<String> = rows.iter().map(|e| e.message_id.clone()).collect();
    stored_ids.sort();
    assert_eq!(stored_ids, run.message_ids(), "{client}: stored vs sent");
    for e in &rows {
        assert_eq!(
            e.body["context"]["library"],
            json!({"name": LIBRARY, "version": run.version}),
            "{client}: context.library of the stored {}: {}",
            e.kind,
            e.body
        );
        assert_eq!(e.body["type"], e.kind.as_str(), "{client}: {e:?}");
    }
    let user = format!("py-{client}-user-1");
    let anonymous = format!("py-{client}-anon-1");
    let one = |kind: &str| rows.iter().find(|e| e.kind == kind).expect("stored above");
    let ids = |e: &StoredEvent| (e.user_id.clone(), e.anonymous_id.clone());
    assert_eq!(
        ids(one("identify")),
        (Some(user.clone()), Some(anonymous.clone()))
    );
    assert_eq!(one("track").event.as_deref(), Some("Order Completed"));
    assert_eq!(ids(one("page")), (None, Some(anonymous.clone())));
    assert_eq!(one("group").body["groupId"], format!("py-{client}-org-1"));
    assert_eq!(one("alias").body["previousId"], anonymous.as_str());

    let profile = collector.profile(&user).await;
    assert_eq!(
        profile.status,
        200,
        "GET /v1/profiles/{user}: {}",
        String::from_utf8_lossy(&profile.body)
    );
    let profile = profile.json();
    assert_eq!(
        (
            &profile["user_ids"],
            &profile["anonymous_ids"],
            &profile["event_count"]
        ),
        (&json!([user]), &json!([anonymous]), &json!(6)),
        "{client}: profile of {user}: {profile}"
    );
    (rows, profile)
}

#[tokio::test]
async fn rudderstack_python_sdk_traits_in_context_traits_reach_the_profile() {
    let collector = TestCollector::start().await;
    let run = send("rudderstack", &collector).await;
    let (rows, profile) = delivered("rudderstack", &collector, &run, "rudder_sdk_python").await;

    // The wire: gzip, Basic auth, and the identify's traits only in
    // context.traits.
    for r in &run.requests {
        assert_eq!(
            (r["contentEncoding"].as_str(), r["authorization"].as_str()),
            (Some("gzip"), Some(basic_auth(WRITE_KEY).as_str())),
            "{r}"
        );
    }
    let identify = run.sent("identify");
    assert_eq!(
        (identify.get("traits"), &identify["context"]["traits"]),
        (None, &traits()),
        "RudderStack's identify on the wire: {identify}"
    );
    assert_eq!(identify["channel"], "server", "{identify}");
    let stored = rows.iter().find(|e| e.kind == "identify").expect("stored");
    assert_eq!(
        stored.body["context"]["traits"],
        traits(),
        "stored as sent: {}",
        stored.raw
    );

    // The profile has them.
    assert_eq!(profile["traits"], traits(), "profile: {profile}");
}

#[tokio::test]
async fn segment_python_sdk_top_level_traits_win_over_context_traits() {
    let collector = TestCollector::start().await;
    let run = send("segment", &collector).await;
    let (_, profile) = delivered("segment", &collector, &run, "segment_analytics_python").await;

    // The wire: plain JSON, Basic auth and the writeKey in the body, and
    // the identify's traits in both places, `plan` in each.
    for r in &run.requests {
        assert_eq!(
            (r["contentEncoding"].as_str(), r["authorization"].as_str()),
            (None, Some(basic_auth(WRITE_KEY).as_str())),
            "{r}"
        );
        assert_eq!(r["body"]["writeKey"], WRITE_KEY, "{r}");
    }
    let identify = run.sent("identify");
    assert_eq!(
        (&identify["traits"], &identify["context"]["traits"]),
        (&traits(), &json!({"plan": "free", "company": "Acme Corp"})),
        "Segment's identify on the wire: {identify}"
    );

    // Both places count; `plan` is the top-level "pro", not "free".
    assert_eq!(
        profile["traits"],
        json!({"email": "ada@example.com", "plan": "pro", "logins": 3, "company": "Acme Corp"}),
        "profile: {profile}"
    );
}
