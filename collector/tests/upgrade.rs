//! Upgrades: a data directory written by the previous format (the fixture
//! `fixtures/data-format0`, made by weft before format versions were
//! recorded) is opened by this build, migrated in place, and gives the same
//! profiles, segments and destinations; a directory or database stamped
//! with a newer format is refused with a clear message and left untouched.

mod common;

use std::path::Path;

use common::{get_json, request, start};

fn fixture() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/data-format0"
    ))
}

/// A fresh copy of the fixture in a temporary directory: `(tmp, data_dir)`.
fn copy_fixture() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::copy_dir(fixture(), &data);
    (tmp, data)
}

#[test]
fn the_previous_format_is_migrated_and_reads_the_same() {
    let (_tmp, data) = copy_fixture();
    assert!(!data.join("FORMAT").exists(), "the fixture predates FORMAT");
    let c = start(&data, &["--write-key", "wk_test"]).expect("starts on the old directory");

    let ada = get_json(c.addr, "/v1/profiles/ada");
    assert_eq!(ada["traits"]["ltv"], 1500, "{ada}");
    assert_eq!(ada["event_count"], 3, "{ada}");
    assert_eq!(ada["anonymous_ids"], serde_json::json!(["dev-1"]), "{ada}");
    assert_eq!(ada["segments"], serde_json::json!(["scarf-fans"]), "{ada}");
    assert_eq!(ada["consent"]["marketing"], false, "{ada}");
    let bob = get_json(c.addr, "/v1/profiles/bob");
    // dev-2's Signed Up, the alias, the order.
    assert_eq!(bob["event_count"], 3, "alias joined dev-2's event: {bob}");
    let segment = get_json(c.addr, "/v1/segments/scarf-fans");
    assert_eq!(
        (segment["size"].as_u64(), segment["status"].as_str()),
        (Some(1), Some("ready"))
    );
    let crm = get_json(c.addr, "/v1/destinations/crm");
    assert_eq!(crm["kind"], "webhook", "{crm}");
    let events = get_json(c.addr, "/v1/profiles/ada/events");
    assert_eq!(
        events["events"].as_array().map(Vec::len),
        Some(3),
        "{events}"
    );

    // It goes on working: a new event lands after the old ones.
    let (status, body) = request(
        c.addr,
        "POST",
        "/v1/batch",
        Some(r#"{"batch":[{"type":"track","userId":"ada","event":"Order Completed"}]}"#),
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let ada = get_json(c.addr, "/v1/profiles/ada");
    assert_eq!(ada["event_count"], 4, "{ada}");
    c.stop();

    // segments.json made from the old index.
    let definitions: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("segments.json")).unwrap())
            .unwrap();
    assert_eq!(
        definitions["segments"][0]["key"], "scarf-fans",
        "{definitions}"
    );
    // Stamped with the current format; the destinations database too.
    let format = std::fs::read_to_string(data.join("FORMAT")).unwrap();
    assert_eq!(format.trim(), "weft data directory format 1");
    let db = rusqlite::Connection::open(data.join("destinations.db")).unwrap();
    let v: i64 = db
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(v, 1);
    // And private, whatever the fixture's checkout gave it.
    use std::os::unix::fs::PermissionsExt as _;
    for f in [
        "FORMAT",
        "destinations.db",
        "weft.sqlite",
        "suppressed.bin",
        "segments.json",
    ] {
        let mode = std::fs::metadata(data.join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
}

/// Every file of `dir` with its bytes, except SQLite's shared-memory file
/// and an empty WAL, which any reader of a WAL database creates.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        let len = entry.metadata().unwrap().len();
        if name.ends_with("-shm") || (name.ends_with("-wal") && len == 0) {
            continue;
        }
        if entry.file_type().unwrap().is_dir() {
            out.extend(snapshot(&entry.path()));
        } else {
            out.push((
                entry.path().display().to_string(),
                std::fs::read(entry.path()).unwrap(),
            ));
        }
    }
    out.sort();
    out
}

#[test]
fn a_newer_format_is_refused_and_left_untouched() {
    // The directory says a newer format.
    let (_tmp, data) = copy_fixture();
    std::fs::write(data.join("FORMAT"), "weft data directory format 2\n").unwrap();
    let before = snapshot(&data);
    let err = start(&data, &[]).err().expect("refuses to start");
    assert!(
        err.contains("has format 2, written by a newer weft")
            && err.contains("Nothing was changed"),
        "{err}"
    );
    assert!(before == snapshot(&data), "the directory was changed");

    // The index says a newer schema.
    let (_tmp, data) = copy_fixture();
    {
        let db = rusqlite::Connection::open(data.join("weft.sqlite")).unwrap();
        db.pragma_update(None, "user_version", 9).unwrap();
    }
    let before = snapshot(&data);
    let err = start(&data, &[]).err().expect("refuses to start");
    assert!(err.contains("weft.sqlite has schema version 9"), "{err}");
    assert!(before == snapshot(&data), "the directory was changed");

    // The destinations database says a newer schema.
    let (_tmp, data) = copy_fixture();
    {
        let db = rusqlite::Connection::open(data.join("destinations.db")).unwrap();
        db.pragma_update(None, "user_version", 2).unwrap();
    }
    let err = start(&data, &[]).err().expect("refuses to start");
    assert!(
        err.contains("destinations.db has schema version 2"),
        "{err}"
    );
}
