//! The log against real files in a temporary directory: crash damage made by
//! hand, rollover, retention, erasure and readers.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;

use super::format::{self, HEADER_LEN};
use super::{FRAMING_BYTES, LogError, LogOptions, LogReader, Lsn, MAX_PAYLOAD, SegmentLog};

fn options(segment_bytes: u64) -> LogOptions {
    LogOptions { segment_bytes }
}

/// A recognisable payload for `lsn`, of varying length.
fn payload(lsn: Lsn) -> Vec<u8> {
    format!("event {lsn} {}", "x".repeat((lsn % 7) as usize * 5)).into_bytes()
}

/// Appends `count` records, `payload(lsn)` each, one per call, and syncs.
fn append_each(log: &mut SegmentLog, count: u64) {
    for _ in 0..count {
        let lsn = log.next_lsn();
        assert_eq!(log.append(&[&payload(lsn)]).unwrap(), lsn);
    }
    log.sync().unwrap();
}

/// Everything a fresh reader returns from `from`, in small batches.
fn read_all(dir: &Path, from: Lsn) -> Vec<(Lsn, Vec<u8>)> {
    let mut reader = LogReader::open(dir, from).unwrap();
    let mut out = Vec::new();
    while reader.next_batch(Lsn::MAX, 7, &mut out).unwrap() > 0 {}
    out
}

fn lsns(records: &[(Lsn, Vec<u8>)]) -> Vec<Lsn> {
    records.iter().map(|&(lsn, _)| lsn).collect()
}

/// The records `payload` made for `lsns`.
fn expected(lsns: impl IntoIterator<Item = Lsn>) -> Vec<(Lsn, Vec<u8>)> {
    lsns.into_iter().map(|lsn| (lsn, payload(lsn))).collect()
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

#[test]
fn writer_and_readers_can_move_to_their_threads() {
    fn is_send<T: Send>() {}
    is_send::<SegmentLog>();
    is_send::<LogReader>();
    is_send::<LogError>();
}

#[test]
fn append_sync_reopen_round_trip_and_lsns_continue() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let (mut log, recovery) = SegmentLog::open(&dir, LogOptions::default()).unwrap();
    assert_eq!(
        (recovery.segments, recovery.records, recovery.next_lsn),
        (1, 0, 1)
    );
    assert_eq!(
        log.append(&[]).unwrap(),
        0,
        "an empty append returns next_lsn - 1"
    );

    let (a, b, c) = (payload(1), payload(2), payload(3));
    assert_eq!(log.append(&[&a, &b]).unwrap(), 2);
    assert_eq!(log.append(&[&c, b""]).unwrap(), 4);
    log.sync().unwrap();
    assert_eq!(log.next_lsn(), 5);
    assert_eq!(log.dir(), dir);
    let size: u64 = [&a, &b, &c]
        .iter()
        .map(|p| (FRAMING_BYTES + p.len()) as u64)
        .sum();
    assert_eq!(log.segments()[0].bytes, size + FRAMING_BYTES as u64);
    drop(log);

    let (mut log, recovery) = SegmentLog::open(&dir, LogOptions::default()).unwrap();
    assert_eq!(
        (
            recovery.records,
            recovery.truncated_bytes,
            recovery.next_lsn
        ),
        (4, 0, 5)
    );
    assert_eq!(log.append(&[&payload(5)]).unwrap(), 5);
    log.sync().unwrap();
    let mut want = expected(1..=3);
    want.push((4, Vec::new()));
    want.push((5, payload(5)));
    assert_eq!(read_all(&dir, 1), want);
}

#[test]
fn oversized_payloads_are_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = SegmentLog::open(tmp.path(), LogOptions::default()).unwrap();
    let huge = vec![0u8; MAX_PAYLOAD + 1];
    let err = log.append(&[b"fine", &huge]).unwrap_err();
    assert!(
        matches!(err, LogError::TooLarge { len } if len == MAX_PAYLOAD + 1),
        "{err}"
    );
    assert_eq!(log.next_lsn(), 1);
    assert_eq!(log.segments()[0].bytes, 0);
    assert_eq!(
        log.append(&[b"fine"]).unwrap(),
        1,
        "the log is still usable"
    );
}

/// Appends three records, syncs, damages the file with `damage` (given the
/// path and the offset where the third record starts) and checks that
/// recovery keeps exactly the first two and that the log goes on from there.
fn check_torn_tail(name: &str, damage: impl Fn(&Path, u64)) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut log, _) = SegmentLog::open(dir, LogOptions::default()).unwrap();
    append_each(&mut log, 3);
    let path = log.segments()[0].path.clone();
    drop(log);
    let third = (2 * FRAMING_BYTES + payload(1).len() + payload(2).len()) as u64;
    damage(&path, third);
    let damaged_len = fs::metadata(&path).unwrap().len();

    let (mut log, recovery) = SegmentLog::open(dir, LogOptions::default()).unwrap();
    assert_eq!(recovery.records, 2, "{name}");
    assert_eq!(recovery.next_lsn, 3, "{name}");
    assert_eq!(recovery.truncated_bytes, damaged_len - third, "{name}");
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        third,
        "{name}: cut where the third record began"
    );
    assert_eq!(log.append(&[b"after recovery"]).unwrap(), 3, "{name}");
    log.sync().unwrap();
    let mut want = expected(1..=2);
    want.push((3, b"after recovery".to_vec()));
    assert_eq!(read_all(dir, 1), want, "{name}");
    drop(log);

    // A second recovery finds nothing more to cut.
    let (_, recovery) = SegmentLog::open(dir, LogOptions::default()).unwrap();
    assert_eq!(
        (recovery.records, recovery.truncated_bytes),
        (3, 0),
        "{name}"
    );
}

fn set_len(path: &Path, len: u64) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

fn flip_byte(path: &Path, at: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[at as usize] ^= 0x20;
    fs::write(path, bytes).unwrap();
}

#[test]
fn a_torn_tail_is_cut_and_the_log_goes_on() {
    let third_len = (FRAMING_BYTES + payload(3).len()) as u64;
    for cut in [
        1,
        4,
        8,
        HEADER_LEN as u64 - 1,
        HEADER_LEN as u64,
        third_len / 2,
        third_len - 1,
    ] {
        check_torn_tail(
            &format!("cut {cut} bytes into the third record"),
            |path, third| {
                set_len(path, third + cut);
            },
        );
    }
    check_torn_tail("a payload byte flipped", |path, third| {
        flip_byte(path, third + third_len - 1);
    });
    check_torn_tail("an LSN byte flipped", |path, third| {
        flip_byte(path, third + 9)
    });
    check_torn_tail("an unknown version", |path, third| {
        flip_byte(path, third + 8)
    });
    check_torn_tail("an absurd length", |path, third| {
        let mut bytes = fs::read(path).unwrap();
        bytes[third as usize + 3] = 0xff;
        fs::write(path, bytes).unwrap();
    });
    check_torn_tail("zeros past the last record", |path, third| {
        set_len(path, third);
        set_len(path, third + 4096);
    });
}

#[test]
fn a_whole_record_of_a_newer_format_is_refused_not_cut() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut log, _) = SegmentLog::open(dir, LogOptions::default()).unwrap();
    append_each(&mut log, 2);
    let path = log.segments()[0].path.clone();
    drop(log);
    // A record as a newer weft would frame it: version 2, its CRC valid.
    let mut record = Vec::new();
    format::encode(&mut record, 3, b"from the future");
    record[8] = 2;
    let crc = crc32c::crc32c(&record[8..]);
    record[4..8].copy_from_slice(&crc.to_le_bytes());
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(&record).unwrap();
    drop(f);
    let len = fs::metadata(&path).unwrap().len();

    let err = SegmentLog::open(dir, LogOptions::default()).unwrap_err();
    assert!(
        matches!(&err, LogError::Corrupt { reason, .. } if reason.contains("newer weft")),
        "{err}"
    );
    assert_eq!(fs::metadata(&path).unwrap().len(), len, "nothing was cut");
}

#[test]
fn damage_in_an_older_segment_is_an_error_not_a_silent_loss() {
    type Damage = fn(&Path);
    let cases: [(&str, Damage); 3] = [
        ("a payload byte flipped", |path| {
            flip_byte(path, HEADER_LEN as u64 + 2)
        }),
        ("the end cut off", |path| {
            let len = fs::metadata(path).unwrap().len();
            set_len(path, len - 3);
        }),
        ("a CRC byte flipped", |path| flip_byte(path, 5)),
    ];
    for (name, damage) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (mut log, _) = SegmentLog::open(dir, options(100)).unwrap();
        append_each(&mut log, 20);
        let segments = log.segments();
        assert!(segments.len() >= 3, "{name}: {segments:?}");
        drop(log);
        let older = &segments[0].path;
        damage(older);
        let len_before = fs::metadata(older).unwrap().len();

        let err = SegmentLog::open(dir, options(100)).unwrap_err();
        match &err {
            LogError::Corrupt { segment, .. } => assert_eq!(segment, older, "{name}: {err}"),
            other => panic!("{name}: expected Corrupt, got {other}"),
        }
        assert_eq!(
            fs::metadata(older).unwrap().len(),
            len_before,
            "{name}: nothing was cut"
        );
        assert_eq!(
            files_in(dir).len(),
            segments.len(),
            "{name}: nothing was deleted"
        );
    }
}

#[test]
fn records_out_of_lsn_order_are_an_error_even_in_the_active_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut log, _) = SegmentLog::open(dir, LogOptions::default()).unwrap();
    append_each(&mut log, 2);
    let path = log.segments()[0].path.clone();
    drop(log);
    // A well-formed record that repeats LSN 2.
    let mut frame = Vec::new();
    format::encode(&mut frame, 2, b"again");
    OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(&frame)
        .unwrap();
    let err = SegmentLog::open(dir, LogOptions::default()).unwrap_err();
    assert!(
        matches!(&err, LogError::Corrupt { reason, .. } if reason.contains("out of order")),
        "{err}"
    );
}

#[test]
fn rollover_makes_private_segments_that_read_back_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("nested").join("log");
    let (mut log, _) = SegmentLog::open(&dir, options(200)).unwrap();
    for _ in 0..20 {
        let batch: Vec<Vec<u8>> = (log.next_lsn()..log.next_lsn() + 3).map(payload).collect();
        let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
        log.append(&refs).unwrap();
        log.sync().unwrap();
    }
    let segments = log.segments();
    assert!(segments.len() > 5, "{segments:?}");
    assert_eq!(read_all(&dir, 1), expected(1..=60));

    // Each segment is named by, and starts with, the first LSN it holds, and
    // is never longer than the threshold plus one append.
    for (index, segment) in segments.iter().enumerate() {
        let name = segment.path.file_name().unwrap().to_str().unwrap();
        assert_eq!(name, format!("{:020}.log", segment.first_lsn));
        assert_eq!(fs::metadata(&segment.path).unwrap().len(), segment.bytes);
        let first = read_all(&dir, segment.first_lsn)[0].0;
        assert_eq!(first, segment.first_lsn);
        if index + 1 < segments.len() {
            assert!(
                segment.bytes >= 200 && segment.bytes < 200 + 3 * 60,
                "{segment:?}"
            );
        }
    }

    let files = files_in(&dir);
    assert_eq!(files.len(), segments.len());
    for file in &files {
        assert_eq!(file.extension().unwrap(), "log", "{file:?}");
        assert_eq!(
            fs::metadata(file).unwrap().permissions().mode() & 0o777,
            0o600,
            "{file:?}"
        );
    }
    assert_eq!(
        fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    drop(log);

    let (log, recovery) = SegmentLog::open(&dir, options(200)).unwrap();
    assert_eq!(
        (recovery.segments, recovery.records, recovery.next_lsn),
        (segments.len(), 60, 61)
    );
    assert_eq!(log.segments(), segments);
}

#[test]
fn drop_segments_before_keeps_the_active_segment_and_every_later_record() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut log, _) = SegmentLog::open(dir, options(150)).unwrap();
    append_each(&mut log, 40);
    let segments = log.segments();
    assert!(segments.len() > 4);

    assert_eq!(log.drop_segments_before(1).unwrap(), 0);
    let before = segments[2].first_lsn + 1; // Inside the third segment.
    assert_eq!(log.drop_segments_before(before).unwrap(), 2);
    assert_eq!(log.segments(), segments[2..].to_vec());
    assert_eq!(files_in(dir).len(), segments.len() - 2);
    let left = read_all(dir, 1);
    assert_eq!(left, expected(segments[2].first_lsn..=40));

    // However far: the active segment stays, and the log goes on.
    let dropped = log.drop_segments_before(Lsn::MAX).unwrap();
    assert_eq!(dropped, segments.len() - 3);
    let active = segments.last().unwrap();
    assert_eq!(log.segments(), vec![active.clone()]);
    assert_eq!(read_all(dir, 1), expected(active.first_lsn..=40));
    append_each(&mut log, 1);
    assert_eq!(read_all(dir, 1), expected(active.first_lsn..=41));
    drop(log);
    let (_, recovery) = SegmentLog::open(dir, options(150)).unwrap();
    assert_eq!(recovery.next_lsn, 42);
}

#[test]
fn remove_records_rewrites_segments_and_leaves_no_trace_of_the_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let secret = |lsn: Lsn| format!("person-42 secret {lsn}").into_bytes();
    // Every fifth record belongs to the person, and 38 to 40 in the active
    // segment; the newest does not.
    let is_theirs = |lsn: Lsn| lsn % 5 == 2 || (38..=40).contains(&lsn);
    let body = |lsn: Lsn| {
        if is_theirs(lsn) {
            secret(lsn)
        } else {
            payload(lsn)
        }
    };
    let (mut log, _) = SegmentLog::open(dir, options(150)).unwrap();
    for lsn in 1..=37 {
        log.append(&[&body(lsn)]).unwrap();
    }
    // One append (so one segment, the active one) for 38..=41, not synced:
    // erasure must keep it all the same.
    let last: Vec<Vec<u8>> = (38..=41).map(body).collect();
    let last: Vec<&[u8]> = last.iter().map(Vec::as_slice).collect();
    log.append(&last).unwrap();
    let segments = log.segments();
    assert!(segments.len() > 4);
    let active = segments.last().unwrap();
    assert!(
        active.first_lsn <= 38,
        "the active segment holds a record to remove: {active:?}"
    );

    let mut asked = Vec::new();
    let removed = log
        .remove_records(|lsn, bytes| {
            asked.push(lsn);
            assert_eq!(bytes, body(lsn));
            contains(bytes, b"person-42")
        })
        .unwrap();
    assert_eq!(
        asked,
        (1..=41).collect::<Vec<_>>(),
        "asked once per record, in order"
    );
    assert_eq!(removed, 11);
    assert_eq!(log.next_lsn(), 42);
    let names = |segments: &[super::SegmentInfo]| -> Vec<PathBuf> {
        segments.iter().map(|s| s.path.clone()).collect()
    };
    assert_eq!(
        names(&log.segments()),
        names(&segments),
        "same files, same names"
    );

    let kept: Vec<Lsn> = (1..=41).filter(|&lsn| !is_theirs(lsn)).collect();
    assert_eq!(read_all(dir, 1), expected(kept.iter().copied()));

    // The active segment's handle follows the rewritten file: it is short
    // enough now that the next append goes into it.
    assert!(log.segments().last().unwrap().bytes < 150);
    append_each(&mut log, 1);
    assert_eq!(log.segments().len(), segments.len(), "no rollover");
    append_each(&mut log, 1);
    let mut want = expected(kept.iter().copied());
    want.extend(expected(42..=43));
    assert_eq!(read_all(dir, 1), want);

    for file in files_in(dir) {
        assert_eq!(
            file.extension().unwrap(),
            "log",
            "no temporary file is left: {file:?}"
        );
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(
            !contains(&fs::read(&file).unwrap(), b"person-42"),
            "{file:?}"
        );
    }
    drop(log);
    let (_, recovery) = SegmentLog::open(dir, options(150)).unwrap();
    assert_eq!(
        (recovery.records, recovery.next_lsn),
        (kept.len() as u64 + 2, 44)
    );
    assert_eq!(read_all(dir, 1), want);
}

#[test]
fn removing_the_newest_records_never_hands_their_lsns_out_again() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut log, _) = SegmentLog::open(dir, LogOptions::default()).unwrap();
    append_each(&mut log, 5);
    assert_eq!(log.remove_records(|lsn, _| lsn >= 4).unwrap(), 2);
    assert_eq!(log.next_lsn(), 6);
    drop(log);

    let (mut log, recovery) = SegmentLog::open(dir, LogOptions::default()).unwrap();
    assert_eq!(recovery.next_lsn, 6);
    assert_eq!(log.append(&[&payload(6)]).unwrap(), 6);
    log.sync().unwrap();
    assert_eq!(read_all(dir, 1), expected([1, 2, 3, 6]));

    // Everything, then nothing to remove.
    assert_eq!(log.remove_records(|_, _| true).unwrap(), 4);
    assert_eq!(log.remove_records(|_, _| true).unwrap(), 0);
    assert!(read_all(dir, 1).is_empty());
    drop(log);
    let (_, recovery) = SegmentLog::open(dir, LogOptions::default()).unwrap();
    assert_eq!((recovery.records, recovery.next_lsn), (0, 7));
}

#[test]
fn leftovers_of_an_interrupted_rewrite_are_removed_on_open() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut log, _) = SegmentLog::open(dir, LogOptions::default()).unwrap();
    append_each(&mut log, 2);
    let path = log.segments()[0].path.clone();
    drop(log);
    let mut tmp_name = path.file_name().unwrap().to_os_string();
    tmp_name.push(".tmp");
    fs::write(dir.join(&tmp_name), b"half a rewrite").unwrap();
    fs::write(dir.join("notes.tmp"), b"not the log's").unwrap();

    let (_, recovery) = SegmentLog::open(dir, LogOptions::default()).unwrap();
    assert_eq!((recovery.tmp_files_removed, recovery.records), (1, 2));
    assert!(!dir.join(&tmp_name).exists());
    assert!(
        dir.join("notes.tmp").exists(),
        "files that are not the log's are left alone"
    );
}

#[test]
fn the_reader_stays_below_until_and_within_max() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut log, _) = SegmentLog::open(dir, options(120)).unwrap();
    append_each(&mut log, 10);
    let mut reader = LogReader::open(dir, 1).unwrap();
    let mut out = Vec::new();
    assert_eq!(reader.next_batch(5, 100, &mut out).unwrap(), 4);
    assert_eq!(out, expected(1..=4));
    assert_eq!(reader.position(), 5);
    assert_eq!(
        reader.next_batch(5, 100, &mut out).unwrap(),
        0,
        "caught up to until"
    );

    out.clear();
    assert_eq!(reader.next_batch(11, 3, &mut out).unwrap(), 3);
    assert_eq!(out, expected(5..=7));
    assert_eq!(reader.next_batch(11, 100, &mut out).unwrap(), 3);
    assert_eq!(out, expected(5..=10));
    assert_eq!(reader.position(), 11);
    assert_eq!(reader.next_batch(11, 100, &mut out).unwrap(), 0);
    assert_eq!(
        reader.next_batch(100, 0, &mut out).unwrap(),
        0,
        "max 0 reads nothing"
    );

    // The writer goes on; the reader sees it once the bound moves.
    append_each(&mut log, 2);
    assert_eq!(reader.next_batch(12, 100, &mut out).unwrap(), 1);
    assert_eq!(reader.next_batch(13, 100, &mut out).unwrap(), 1);
    assert_eq!(lsns(&out[6..]), [11, 12]);

    // A reader can start anywhere.
    assert_eq!(read_all(dir, 7), expected(7..=12));
    assert!(read_all(dir, 13).is_empty());
}

#[test]
fn a_half_written_record_at_the_tail_is_waited_for_not_returned() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut log, _) = SegmentLog::open(dir, LogOptions::default()).unwrap();
    append_each(&mut log, 2);
    let path = log.segments()[0].path.clone();
    drop(log);
    let mut frame = Vec::new();
    format::encode(&mut frame, 3, &payload(3));
    let mut file = OpenOptions::new().append(true).open(&path).unwrap();

    let mut reader = LogReader::open(dir, 1).unwrap();
    let mut out = Vec::new();
    let mut written = 0;
    for cut in [5, HEADER_LEN + 2, frame.len() - 1] {
        file.write_all(&frame[written..cut]).unwrap();
        written = cut;
        reader.next_batch(Lsn::MAX, 100, &mut out).unwrap();
        assert_eq!(out, expected(1..=2), "with {cut} bytes of the third record");
    }
    file.write_all(&frame[frame.len() - 1..]).unwrap();
    assert_eq!(reader.next_batch(Lsn::MAX, 100, &mut out).unwrap(), 1);
    assert_eq!(out, expected(1..=3));
}

#[test]
fn a_reader_skips_segments_dropped_before_its_position() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut log, _) = SegmentLog::open(dir, options(150)).unwrap();
    append_each(&mut log, 40);
    let segments = log.segments();
    // A reader that has its first segment open before the drop.
    let mut early = LogReader::open(dir, 1).unwrap();
    let mut out = Vec::new();
    assert_eq!(early.next_batch(41, 1, &mut out).unwrap(), 1);

    let kept_from = segments[3].first_lsn;
    assert_eq!(log.drop_segments_before(kept_from).unwrap(), 3);

    // Opened at a position inside a dropped segment: starts at the oldest left.
    let mut late = LogReader::open(dir, segments[1].first_lsn + 1).unwrap();
    let mut late_out = Vec::new();
    while late.next_batch(41, 5, &mut late_out).unwrap() > 0 {}
    assert_eq!(late_out, expected(kept_from..=40));

    // The early one finishes the file it has open, then skips the gap.
    while early.next_batch(41, 5, &mut out).unwrap() > 0 {}
    let mut want = expected(1..segments[1].first_lsn);
    want.extend(expected(kept_from..=40));
    assert_eq!(out, want);
    assert_eq!(early.position(), 41);
}

#[test]
fn a_reader_reopened_after_erasure_returns_no_removed_record() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut log, _) = SegmentLog::open(dir, options(150)).unwrap();
    append_each(&mut log, 30);
    let mut reader = LogReader::open(dir, 1).unwrap();
    let mut stale = LogReader::open(dir, 1).unwrap();
    let mut out = Vec::new();
    assert_eq!(reader.next_batch(31, 2, &mut out).unwrap(), 2);
    assert_eq!(stale.next_batch(31, 2, &mut Vec::new()).unwrap(), 2);

    let odd = |lsn: Lsn| lsn % 2 == 1;
    assert_eq!(log.remove_records(|lsn, _| odd(lsn)).unwrap(), 15);
    reader.reopen().unwrap();
    assert_eq!(reader.position(), 3);
    while reader.next_batch(31, 4, &mut out).unwrap() > 0 {}
    assert_eq!(
        out,
        expected([1, 2].into_iter().chain((3..=30).filter(|&lsn| !odd(lsn))))
    );

    // Without reopen, the file a reader holds still has the removed records:
    // this is why callers must reopen every reader after an erasure.
    let mut stale_out = Vec::new();
    stale.next_batch(31, 1, &mut stale_out).unwrap();
    assert_eq!(stale_out, expected([3]));
}

#[test]
fn a_reader_at_the_end_follows_a_rewritten_active_segment_by_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut log, _) = SegmentLog::open(dir, LogOptions::default()).unwrap();
    append_each(&mut log, 3);
    let mut reader = LogReader::open(dir, 1).unwrap();
    let mut out = Vec::new();
    while reader.next_batch(Lsn::MAX, 10, &mut out).unwrap() > 0 {}
    assert_eq!(log.remove_records(|lsn, _| lsn == 2).unwrap(), 1);
    append_each(&mut log, 1);
    // The reader had the old active file open at its end.
    reader.next_batch(Lsn::MAX, 10, &mut out).unwrap();
    assert_eq!(out, expected([1, 2, 3, 4]));
    assert_eq!(read_all(dir, 1), expected([1, 3, 4]));
}

#[test]
fn until_holds_across_gaps_left_by_erasure() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut log, _) = SegmentLog::open(dir, LogOptions::default()).unwrap();
    append_each(&mut log, 10);
    assert_eq!(
        log.remove_records(|lsn, _| (4..=6).contains(&lsn)).unwrap(),
        3
    );
    let mut reader = LogReader::open(dir, 1).unwrap();
    let mut out = Vec::new();
    assert_eq!(reader.next_batch(5, 100, &mut out).unwrap(), 3);
    assert_eq!(
        reader.next_batch(7, 100, &mut out).unwrap(),
        0,
        "7 is not below 7"
    );
    assert_eq!(reader.position(), 7, "nothing lies below 7 any more");
    assert_eq!(reader.next_batch(8, 100, &mut out).unwrap(), 1);
    assert_eq!(out, expected([1, 2, 3, 7]));
}

#[test]
fn a_reader_keeps_up_with_a_writer_across_rollovers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let (mut log, _) = SegmentLog::open(&dir, options(4096)).unwrap();
    let durable = Arc::new(AtomicU64::new(log.next_lsn()));
    const TOTAL: Lsn = 3000;

    let reader = {
        let dir = dir.clone();
        let durable = Arc::clone(&durable);
        thread::spawn(move || {
            let mut reader = LogReader::open(&dir, 1).unwrap();
            let mut out = Vec::new();
            while (out.len() as Lsn) < TOTAL {
                let until = durable.load(Ordering::Acquire);
                if reader.next_batch(until, 64, &mut out).unwrap() == 0 {
                    thread::yield_now();
                }
            }
            out
        })
    };
    let mut lsn = 1;
    while lsn <= TOTAL {
        let group: Vec<Vec<u8>> = (lsn..(lsn + 1 + lsn % 13).min(TOTAL + 1))
            .map(payload)
            .collect();
        let refs: Vec<&[u8]> = group.iter().map(Vec::as_slice).collect();
        log.append(&refs).unwrap();
        log.sync().unwrap();
        lsn = log.next_lsn();
        durable.store(lsn, Ordering::Release);
    }
    assert!(log.segments().len() > 10);
    assert_eq!(reader.join().unwrap(), expected(1..=TOTAL));
}

#[test]
fn a_record_cut_short_in_an_older_segment_is_corrupt_for_a_reader() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut log, _) = SegmentLog::open(dir, options(100)).unwrap();
    append_each(&mut log, 10);
    let segments = log.segments();
    assert!(segments.len() >= 2);
    // Damage after the writer checked the log: the reader must not take it
    // for a write in progress and report "caught up".
    set_len(&segments[0].path, segments[0].bytes - 3);
    let mut reader = LogReader::open(dir, 1).unwrap();
    let mut out = Vec::new();
    let err = loop {
        match reader.next_batch(log.next_lsn(), 1, &mut out) {
            Ok(0) => panic!("stopped silently after {:?}", lsns(&out)),
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    assert!(
        matches!(&err, LogError::Corrupt { segment, .. } if *segment == segments[0].path),
        "{err}"
    );
    assert_eq!(
        lsns(&out),
        (1..segments[1].first_lsn - 1).collect::<Vec<_>>()
    );
}

#[test]
fn lookup_reads_any_record_by_lsn_across_rollover_growth_erasure_and_retention() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = SegmentLog::open(dir.path(), options(300)).unwrap();
    append_each(&mut log, 40);
    let lookup = super::LogLookup::new(dir.path());
    for lsn in [1, 17, 40, 2, 39] {
        assert_eq!(lookup.read(lsn).unwrap(), Some(payload(lsn)), "lsn {lsn}");
    }
    assert_eq!(lookup.read(41).unwrap(), None, "not written yet");
    assert_eq!(lookup.read(0).unwrap(), None);
    // The active segment grows after its table was built.
    append_each(&mut log, 5);
    assert_eq!(lookup.read(45).unwrap(), Some(payload(45)));
    // Erasure rewrites segments under the lookup (which is told): removed
    // records are gone, the others are found at their new offsets.
    log.remove_records(|lsn, _| lsn % 3 == 0).unwrap();
    lookup.invalidate();
    for lsn in 1..=45 {
        let want = (lsn % 3 != 0).then(|| payload(lsn));
        assert_eq!(lookup.read(lsn).unwrap(), want, "lsn {lsn}");
    }
    // Retention deletes old segments: their records are no longer found.
    let starts = super::segment_starts(dir.path()).unwrap();
    log.drop_segments_before(starts[2]).unwrap();
    lookup.invalidate();
    assert_eq!(lookup.read(1).unwrap(), None);
    let kept = starts[2] + 1;
    let want = (kept % 3 != 0).then(|| payload(kept));
    assert_eq!(lookup.read(kept).unwrap(), want);
}

#[test]
fn lookup_never_returns_a_damaged_record_whether_read_whole_or_in_two() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = SegmentLog::open(dir.path(), options(1 << 20)).unwrap();
    append_each(&mut log, 5);
    let file = files_in(dir.path())
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "log"))
        .unwrap();
    let bytes = fs::read(&file).unwrap();
    let at = |lsn: Lsn| {
        let needle = payload(lsn);
        bytes
            .windows(needle.len())
            .position(|w| w == needle)
            .unwrap() as u64
    };
    // Record 3 is read in one go (record 4's offset gives its length),
    // record 5, the last, header first.
    let (third, fifth) = (at(3), at(5));
    flip_byte(&file, third + 2);
    flip_byte(&file, fifth + 2);
    let lookup = super::LogLookup::new(dir.path());
    for lsn in [1, 2, 4] {
        assert_eq!(lookup.read(lsn).unwrap(), Some(payload(lsn)), "lsn {lsn}");
    }
    assert_eq!(lookup.read(3).unwrap(), None);
    assert_eq!(lookup.read(5).unwrap(), None);
}
