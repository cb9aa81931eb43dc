//! Durability of the real binary: under concurrent load, `kill -9` the
//! collector; every message that was answered 200 must be in the event log
//! when it is opened again, the collector must start again on the same
//! data directory, and its index must then count each of them once.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weft_collector::log::{LogOptions, LogReader, SegmentLog};
use weft_collector::record::{self, Record};

/// Starts the binary on a free loopback port; returns it and its address.
fn start(data_dir: &std::path::Path) -> (Child, SocketAddr) {
    let dir = data_dir.to_str().unwrap();
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--write-key",
        "wk_kill",
        "--admin-token",
        "t",
        "--data-dir",
        dir,
    ];
    common::spawn(common::binary(), data_dir.parent().unwrap(), &args).expect("it starts")
}

/// `GET /v1/profiles/{id}` with the admin token: the status and the body.
fn get_profile_answer(addr: SocketAddr, id: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(15))).ok()?;
    let head = format!(
        "GET /v1/profiles/{id} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Authorization: Bearer t\r\n\r\n"
    );
    s.write_all(head.as_bytes()).ok()?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).ok()?;
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// `GET /v1/profiles/{id}` with the admin token: the status.
fn get_profile(addr: SocketAddr, id: &str) -> Option<u16> {
    get_profile_answer(addr, id).map(|(status, _)| status)
}

/// `GET /v1/profiles/{id}`: its `event_count`, if it answers 200.
fn profile_event_count(addr: SocketAddr, id: &str) -> Option<u64> {
    let (status, body) = get_profile_answer(addr, id)?;
    if status != 200 {
        return None;
    }
    let profile: serde_json::Value = serde_json::from_str(&body).ok()?;
    profile["event_count"].as_u64()
}

/// POSTs `body` and returns the status, or `None` if the connection failed.
fn post(addr: SocketAddr, body: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let head = format!(
        "POST /v1/batch HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Authorization: Basic d2tfa2lsbDo=\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).ok()?;
    s.write_all(body.as_bytes()).ok()?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).ok()?;
    let line = String::from_utf8_lossy(&resp);
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn every_acknowledged_message_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = start(dir.path());
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let refused: Arc<Mutex<Vec<Option<u16>>>> = Arc::default();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(30);
    let killed = Arc::new(std::sync::atomic::AtomicBool::new(false));

    let workers: Vec<_> = (0..4)
        .map(|w| {
            let acked = acked.clone();
            let refused = refused.clone();
            let killed = killed.clone();
            std::thread::spawn(move || {
                // Bounded in count and time; ends when the collector dies.
                for request in 0..20_000 {
                    if Instant::now() > deadline {
                        break;
                    }
                    let ids: Vec<String> = (0..20).map(|i| format!("w{w}-r{request}-m{i}")).collect();
                    let batch: Vec<String> = ids
                        .iter()
                        .map(|id| {
                            format!(
                                r#"{{"type":"track","event":"Load","anonymousId":"a{w}","messageId":"{id}","properties":{{"pad":"{}"}}}}"#,
                                "x".repeat(400)
                            )
                        })
                        .collect();
                    let body = format!(r#"{{"batch":[{}]}}"#, batch.join(","));
                    match post(addr, &body) {
                        Some(200) => acked.lock().unwrap().extend(ids),
                        other => {
                            refused.lock().unwrap().push(other);
                            // A failed connection ends the worker only once the
                            // collector is dead; before that it is load.
                            if other.is_none() && killed.load(std::sync::atomic::Ordering::SeqCst) {
                                break;
                            }
                        }
                    }
                }
            })
        })
        .collect();

    // Kill mid-load: after at least 1.5 s and 2,000 acknowledged messages
    // (or 20 s on a very slow machine).
    while Instant::now() < started + Duration::from_secs(20)
        && (started.elapsed() < Duration::from_millis(1500) || acked.lock().unwrap().len() < 2000)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("SIGKILL the collector"); // kill -9: no chance to flush
    killed.store(true, std::sync::atomic::Ordering::SeqCst);
    child.wait().unwrap();
    for w in workers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 100,
        "the load got only {} acks before the kill",
        acked.len()
    );

    // The log, the system of record, holds every acknowledged message:
    // read with the collector's own reader after recovery cut any torn tail.
    let (_, recovery) = SegmentLog::open(&dir.path().join("log"), LogOptions::default())
        .expect("the log opens after kill -9");
    let mut reader = LogReader::open(&dir.path().join("log"), 0).unwrap();
    let mut raw = Vec::new();
    while reader
        .next_batch(recovery.next_lsn, 10_000, &mut raw)
        .unwrap()
        > 0
    {}
    let logged: HashSet<String> = raw
        .iter()
        .filter_map(|(_, p)| match record::decode(p) {
            Ok(Record::Event { event, .. }) => Some(event.message_id),
            _ => None,
        })
        .collect();
    let lost: Vec<&String> = acked.iter().filter(|id| !logged.contains(*id)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged messages not in the log, e.g. {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );

    // The collector comes back on the same data directory, and its index
    // catches up with the log: every acknowledged message, none twice.
    let (mut again, addr) = start(dir.path());
    let body = r#"{"batch":[{"type":"page","anonymousId":"after"}]}"#;
    assert_eq!(post(addr, body), Some(200));
    // An admin read waits for the index to pass what was durable.
    assert_eq!(get_profile(addr, "after"), Some(200));
    // The log holds no message twice, and the index (read through the
    // admin API) counts for each device exactly the events the log holds.
    let mut stored = Vec::new();
    let mut per_device: std::collections::HashMap<String, u64> = Default::default();
    weft_collector::log::scan(&dir.path().join("log"), 0, u64::MAX, |_, p| {
        if let Ok(Record::Event { event, .. }) = record::decode(p) {
            *per_device
                .entry(event.anonymous_id.clone().unwrap_or_default())
                .or_default() += 1;
            stored.push(event.message_id);
        }
        true
    })
    .unwrap();
    let unique: HashSet<&String> = stored.iter().collect();
    assert_eq!(unique.len(), stored.len(), "no message stored twice");
    let lost: Vec<&String> = acked.iter().filter(|id| !unique.contains(*id)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged messages missing after the restart, e.g. {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
    for (device, logged) in &per_device {
        assert_eq!(
            profile_event_count(addr, device),
            Some(*logged),
            "the index counts {device}'s events as the log holds them"
        );
    }
    again.kill().unwrap();
    again.wait().unwrap();
    eprintln!(
        "kill -9 under load: {} acknowledged messages, all stored",
        acked.len()
    );
}
