//! Destinations across `kill -9` of the real binary, configured in
//! `weft.toml`: a webhook receiver that is down while a backlog builds,
//! the collector killed with the backlog pending, started again, killed
//! again in the middle of delivering, and started once more. The receiver
//! must end up with every acknowledged event, each profile's in stored
//! order (after deduplication by `webhook-id`), and no event lost.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Child;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A request the receiver answered 2xx: its `webhook-id` and body.
type Delivered = Arc<Mutex<Vec<(String, String)>>>;

/// A small HTTP/1.1 receiver on its own threads: answers `mode` (0: 503,
/// else 200 after `mode - 1` ms), records what it answered 200.
fn receiver(mode: Arc<AtomicU32>, delivered: Delivered, attempts: Arc<AtomicUsize>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(100_000) {
            let Ok(stream) = stream else { continue };
            let (mode, delivered, attempts) = (mode.clone(), delivered.clone(), attempts.clone());
            std::thread::spawn(move || serve(stream, &mode, &delivered, &attempts));
        }
    });
    addr
}

fn serve(stream: TcpStream, mode: &AtomicU32, delivered: &Delivered, attempts: &AtomicUsize) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    // Keep-alive: requests one after another on the connection.
    for _ in 0..100_000 {
        let mut id = String::new();
        let mut length = 0usize;
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                match k.to_ascii_lowercase().as_str() {
                    "content-length" => length = v.trim().parse().unwrap_or(0),
                    "webhook-id" => id = v.trim().to_owned(),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        attempts.fetch_add(1, Ordering::SeqCst);
        let m = mode.load(Ordering::SeqCst);
        let status = if m == 0 {
            "503 Service Unavailable"
        } else {
            std::thread::sleep(Duration::from_millis(u64::from(m - 1)));
            delivered
                .lock()
                .unwrap()
                .push((id, String::from_utf8_lossy(&body).into_owned()));
            "200 OK"
        };
        let answer = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

fn start(data_dir: &std::path::Path, config: &std::path::Path) -> (Child, SocketAddr) {
    let (dir, config) = (data_dir.to_str().unwrap(), config.to_str().unwrap());
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--admin-token",
        "t",
        "--data-dir",
        dir,
        "--config",
        config,
    ];
    common::spawn(common::binary(), data_dir.parent().unwrap(), &args).expect("it starts")
}

fn post(addr: SocketAddr, body: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let head = format!(
        "POST /v1/batch HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Authorization: Basic d2tfY3Jhc2g6\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).ok()?;
    s.write_all(body.as_bytes()).ok()?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).ok()?;
    String::from_utf8_lossy(&resp)
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Waits (bounded) for `check`.
fn wait_for(what: &str, timeout: Duration, check: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn nothing_is_lost_or_reordered_across_kill_9_and_restarts() {
    let mode = Arc::new(AtomicU32::new(0));
    let delivered: Delivered = Arc::default();
    let attempts = Arc::new(AtomicUsize::new(0));
    let at = receiver(mode.clone(), delivered.clone(), attempts.clone());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("weft.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[source]]
write_key = "wk_crash"

[[destination]]
name = "hook"
kind = "webhook"
url = "http://{at}/in"
secret = "whsec_c2VjcmV0LWZvci10aGUtd2VmdC10ZXN0cw=="
batch_size = 50
max_age_ms = 50
"#
        ),
    )
    .unwrap();
    let data = dir.path().join("data");

    // 1. The receiver is down; a backlog of acknowledged events builds.
    let (mut child, addr) = start(&data, &config);
    let people = 4;
    let per_person = 500;
    for round in 0..per_person / 25 {
        let batch: Vec<String> = (0..people)
            .flat_map(|p| {
                (0..25).map(move |i| {
                    let n = round * 25 + i;
                    format!(
                        r#"{{"type":"track","event":"Step","anonymousId":"p{p}","messageId":"p{p}-{n}","properties":{{"n":{n}}}}}"#
                    )
                })
            })
            .collect();
        let body = format!(r#"{{"batch":[{}]}}"#, batch.join(","));
        assert_eq!(post(addr, &body), Some(200));
    }
    wait_for("a failed attempt", Duration::from_secs(10), || {
        attempts.load(Ordering::SeqCst) > 0
    });
    child.kill().expect("kill -9"); // with the whole backlog pending
    child.wait().unwrap();
    assert!(delivered.lock().unwrap().is_empty());

    // 2. The receiver is up but slow; killed again half way.
    mode.store(21, Ordering::SeqCst);
    let (mut child, _) = start(&data, &config);
    wait_for("some deliveries", Duration::from_secs(30), || {
        delivered.lock().unwrap().len() >= 5
    });
    child.kill().expect("kill -9"); // in the middle of delivering
    child.wait().unwrap();
    let halfway = delivered.lock().unwrap().len();

    // 3. Started once more: the rest arrives.
    mode.store(1, Ordering::SeqCst);
    let (mut child, _) = start(&data, &config);
    let total = people * per_person;
    let messages = |d: &[(String, String)]| -> Vec<serde_json::Value> {
        let mut seen = HashSet::new();
        d.iter()
            .filter(|(id, _)| seen.insert(id.clone()))
            .flat_map(|(_, body)| {
                let v: serde_json::Value = serde_json::from_str(body).unwrap();
                v["data"].as_array().cloned().unwrap_or_default()
            })
            .collect()
    };
    wait_for("every event", Duration::from_secs(60), || {
        let d = delivered.lock().unwrap();
        let ids: HashSet<String> = messages(&d)
            .iter()
            .map(|m| m["messageId"].as_str().unwrap_or("").to_owned())
            .collect();
        ids.len() >= total
    });
    child.kill().unwrap();
    child.wait().unwrap();

    let d = delivered.lock().unwrap().clone();
    let messages = messages(&d);
    let mut order: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for m in &messages {
        order
            .entry(m["anonymousId"].as_str().unwrap().to_owned())
            .or_default()
            .push(m["properties"]["n"].as_u64().unwrap());
    }
    for (person, ns) in &order {
        // A batch repeated after a crash carries the same webhook-id and
        // is dropped above: what is left is each event once, in order.
        assert_eq!(
            ns,
            &(0..per_person as u64).collect::<Vec<_>>(),
            "{person}: events lost, repeated or out of order"
        );
    }
    assert_eq!(order.len(), people);
    eprintln!(
        "kill -9 twice: {total} events, {} requests answered 200 ({halfway} before the second kill), {} attempts",
        d.len(),
        attempts.load(Ordering::SeqCst)
    );
}
