//! A request is answered 200 only after its records are synced: watched
//! from outside, on the real binary, with `strace`.
//!
//! The collector runs under `strace -f -y`, which names every file
//! descriptor, so the trace shows writes to the log's segment files, the
//! `fdatasync` of them, and the HTTP answers written to sockets, in the
//! order they happened. One client sends batches one at a time (so no
//! group is in flight while another is answered), and for every `200` the
//! trace must show: the batch's bytes written to the log, then an
//! `fdatasync` of the log that completed, then the answer.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

const BATCHES: usize = 20;

fn strace() -> &'static str {
    let ok = Command::new("strace")
        .arg("-V")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "strace is needed to watch the collector's syscalls: `cargo xtask test` installs it \
         (apt-get install -y strace)"
    );
    "strace"
}

fn post(addr: SocketAddr, i: usize) -> u16 {
    let body = format!(
        r#"{{"batch":[{{"type":"track","event":"Synced {i}","anonymousId":"sync-{i}","messageId":"sync-{i}"}}]}}"#
    );
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = format!(
        "POST /v1/batch HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Authorization: Basic d2tfc3luYzo=\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    String::from_utf8_lossy(&resp)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// What one line of the trace is about.
#[derive(Debug, PartialEq)]
enum Event {
    /// Bytes written to a log segment (the message's ID, if in them).
    LogWrite(Option<usize>),
    /// An `fdatasync` of a log segment finished.
    LogSynced,
    /// An HTTP 200 started going out on a socket.
    Answer,
}

/// The events of a `strace -f -y` trace, in order. A call interrupted by
/// another thread's line shows as `<unfinished ...>` and later
/// `<... fdatasync resumed>`: a sync counts when it finishes.
fn events(trace: &str) -> Vec<Event> {
    let mut out = Vec::new();
    for line in trace.lines() {
        let is_log = line.contains(".log>");
        let is_write =
            line.contains(" write(") || line.contains(" pwrite64(") || line.contains(" writev(");
        if is_log && is_write {
            let id = line.find("sync-").and_then(|at| {
                let digits: String = line[at + 5..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                digits.parse().ok()
            });
            out.push(Event::LogWrite(id));
        } else if (line.contains("fdatasync(") && is_log && !line.contains("<unfinished"))
            || line.contains("<... fdatasync resumed>")
        {
            out.push(Event::LogSynced);
        } else if (line.contains("<socket:") || line.contains("<TCP"))
            && (line.contains(" write(") || line.contains(" writev(") || line.contains(" sendto("))
            && line.contains("HTTP/1.1 200")
        {
            out.push(Event::Answer);
        }
    }
    out
}

#[test]
fn every_200_follows_an_fdatasync_of_its_records() {
    let strace = strace();
    let dir = tempfile::tempdir().unwrap();
    let trace_file = dir.path().join("trace.txt");
    let mut child = Command::new(strace)
        .args([
            "-f",
            "-y",
            "-s",
            "256",
            "-e",
            "trace=write,pwrite64,writev,sendto,fdatasync,fsync",
            "-o",
        ])
        .arg(&trace_file)
        .arg(env!("CARGO_BIN_EXE_weft-collector"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--write-key",
            "wk_sync",
            "--admin-token",
            "t",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("WEFT_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start weft-collector under strace");
    let mut first = String::new();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    stdout.read_line(&mut first).unwrap();
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let addr: SocketAddr = first
        .trim()
        .rsplit("http://")
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"));

    for i in 0..BATCHES {
        assert_eq!(post(addr, i), 200, "batch {i}");
    }
    // Killing strace would leave the collector running, detached: kill
    // the collector itself (the trace's first line is its PID), and
    // strace ends with it.
    let trace = std::fs::read_to_string(&trace_file).unwrap();
    let collector_pid: u32 = trace
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("the trace starts with the collector's PID");
    let killed = Command::new("kill")
        .args(["-9", &collector_pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    if !killed {
        let _ = child.kill();
    }
    child.wait().unwrap();
    assert!(
        !std::path::Path::new(&format!("/proc/{collector_pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{collector_pid}/stat"))
                .is_ok_and(|s| s.contains(") Z ")),
        "the collector is gone"
    );

    let trace = std::fs::read_to_string(&trace_file).unwrap();
    let events = events(&trace);
    let answers = events.iter().filter(|e| **e == Event::Answer).count();
    assert!(
        answers >= BATCHES,
        "{answers} answers in the trace:\n{trace}"
    );
    // Walk the trace: an answer may go out only when no log write is
    // waiting for a sync, and each batch's write precedes its answer.
    let mut unsynced = false;
    let mut written = Vec::new();
    for e in &events {
        match e {
            Event::LogWrite(id) => {
                unsynced = true;
                written.extend(*id);
            }
            Event::LogSynced => unsynced = false,
            Event::Answer => {
                assert!(
                    !unsynced,
                    "a 200 went out before the log was synced:\n{trace}"
                );
            }
        }
    }
    let expected: Vec<usize> = (0..BATCHES).collect();
    assert_eq!(
        written, expected,
        "each batch was written to the log, in order"
    );
}
