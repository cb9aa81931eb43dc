//! Online backup and restore with the real binary: `weft-collector backup`
//! runs while the collector ingests under load; `restore` makes a new data
//! directory from the copy; a collector started on it has every message
//! acknowledged before the backup began, its log is exactly a prefix of the
//! original's, and its profiles and segment are what a from-scratch index
//! of that log gives.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{get_json, request, start};
use weft_collector::record::{self, Record};

const USERS: usize = 8;

/// Batches answered 200: when, and their messageIds.
type Acked = Arc<Mutex<Vec<(Instant, Vec<String>)>>>;

/// Every record of a data directory's log: (LSN, payload).
fn log_records(data_dir: &Path) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    weft_collector::log::scan(&data_dir.join("log"), 0, u64::MAX, |lsn, p| {
        out.push((lsn, p.to_vec()));
        true
    })
    .unwrap();
    out
}

/// The messageIds of the events in a data directory's log.
fn logged_ids(data_dir: &Path) -> HashSet<String> {
    log_records(data_dir)
        .iter()
        .filter_map(|(_, p)| match record::decode(p) {
            Ok(Record::Event { event, .. }) => Some(event.message_id),
            _ => None,
        })
        .collect()
}

/// Runs the binary with `args`: whether it succeeded, and what it printed.
fn run_status(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_weft-collector"))
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Runs the binary with `args`, which must succeed: what it printed.
fn run(args: &[&str]) -> String {
    let (ok, text) = run_status(args);
    assert!(ok, "{args:?}: {text}");
    text
}

#[test]
fn a_backup_under_load_restores_to_the_same_profiles_and_events() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let c = start(&data, &["--write-key", "wk_test"]).unwrap();
    let rule = r#"{"name": "Buyers", "rule": {"event": "Order Completed", "count": {"op": "gte", "value": 3}}}"#;
    assert_eq!(
        request(c.addr, "PUT", "/v1/segments/buyers", Some(rule))
            .unwrap()
            .0,
        200
    );

    // Load: 4 senders, batches of 50 tracks over 8 users.
    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let addr = c.addr;
    let senders: Vec<_> = (0..4)
        .map(|w| {
            let (acked, stop) = (acked.clone(), stop.clone());
            std::thread::spawn(move || {
                for r in 0..100_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let ids: Vec<String> = (0..50).map(|i| format!("w{w}-r{r}-m{i}")).collect();
                    // Tracks, and an identify whose trait changes with
                    // every batch: an index ahead of its log would show.
                    let batch: Vec<serde_json::Value> = ids
                        .iter()
                        .enumerate()
                        .map(|(i, id)| {
                            if i == 0 {
                                serde_json::json!({"type": "identify", "messageId": id,
                                    "userId": format!("u{w}"), "traits": {"batch": r}})
                            } else {
                                serde_json::json!({"type": "track", "messageId": id,
                                    "userId": format!("u{}", i % USERS), "event": "Order Completed",
                                    "properties": {"n": i}})
                            }
                        })
                        .collect();
                    let body = serde_json::json!({ "batch": batch }).to_string();
                    if let Some((200, _)) = request(addr, "POST", "/v1/batch", Some(&body)) {
                        acked.lock().unwrap().push((Instant::now(), ids));
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));

    let backup_started = Instant::now();
    let copy = tmp.path().join("copy");
    let report = run(&[
        "backup",
        "--data-dir",
        data.to_str().unwrap(),
        "--to",
        copy.to_str().unwrap(),
    ]);
    eprintln!("{}", report.trim());
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.join().unwrap();
    }
    c.stop();

    let restored = tmp.path().join("restored");
    let report = run(&[
        "restore",
        "--from",
        copy.to_str().unwrap(),
        "--data-dir",
        restored.to_str().unwrap(),
    ]);
    eprintln!("{}", report.trim());

    // Every message acknowledged before the backup began is in the copy;
    // the load went on during it, so the original has more.
    let acked = acked.lock().unwrap();
    let before: Vec<&String> = acked
        .iter()
        .filter(|(at, _)| *at < backup_started)
        .flat_map(|(_, ids)| ids)
        .collect();
    assert!(before.len() >= 1000, "load too light: {}", before.len());
    let in_copy = logged_ids(&restored);
    let missing = before.iter().filter(|id| !in_copy.contains(**id)).count();
    assert_eq!(missing, 0, "acknowledged before the backup but not in it");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(copy.join("weft-backup.json")).unwrap())
            .unwrap();
    let (index_at, last) = (
        manifest["index_position"].as_u64().unwrap(),
        manifest["last_lsn"].as_u64().unwrap(),
    );
    assert!(index_at > 1 && index_at <= last + 1, "{manifest}");
    let original = log_records(&data);
    let copied = log_records(&restored);
    assert!(
        copied.len() < original.len(),
        "the load went on after the backup"
    );
    assert_eq!(
        copied[..],
        original[..copied.len()],
        "the copy's log is a prefix of the original's"
    );

    // A from-scratch index of the same log, to compare with.
    let rebuilt = tmp.path().join("rebuilt");
    common::copy_dir(&restored, &rebuilt);
    for f in ["weft.sqlite", "destinations.db"] {
        std::fs::remove_file(rebuilt.join(f)).unwrap();
    }
    let r = start(&restored, &["--write-key", "wk_test"]).unwrap();
    let b = start(&rebuilt, &["--write-key", "wk_test"]).unwrap();
    // The rebuilt index gets the segment from segments.json and computes
    // it for everyone.
    for _ in 0..200 {
        if get_json(b.addr, "/v1/segments/buyers")["status"] == "ready" {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut total = 0;
    for u in 0..USERS {
        let path = format!("/v1/profiles/u{u}");
        let (from_backup, from_log) = (get_json(r.addr, &path), get_json(b.addr, &path));
        assert_eq!(from_backup, from_log, "{path}");
        total += from_backup["event_count"].as_u64().unwrap();
    }
    assert_eq!(
        total as usize,
        in_copy.len(),
        "every copied event is in a profile"
    );
    let (s1, s2) = (
        get_json(r.addr, "/v1/segments/buyers"),
        get_json(b.addr, "/v1/segments/buyers"),
    );
    assert_eq!(s1["size"], USERS, "{s1}");
    assert_eq!(s1["rule"], s2["rule"]);
}

#[test]
fn restore_refuses_a_non_empty_target_and_an_incomplete_backup() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let c = start(&data, &["--write-key", "wk_test"]).unwrap();
    c.stop();
    let copy = tmp.path().join("copy");
    run(&[
        "backup",
        "--data-dir",
        data.to_str().unwrap(),
        "--to",
        copy.to_str().unwrap(),
    ]);
    let restore = |to: &std::path::Path| {
        run_status(&[
            "restore",
            "--from",
            copy.to_str().unwrap(),
            "--data-dir",
            to.to_str().unwrap(),
        ])
    };
    let (ok, text) = restore(&data);
    assert!(!ok && text.contains("is not empty"), "{text}");
    std::fs::remove_file(copy.join("weft-backup.json")).unwrap();
    let (ok, text) = restore(&tmp.path().join("new"));
    assert!(!ok && text.contains("did not finish"), "{text}");
}
