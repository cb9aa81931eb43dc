//! Shared by the collector's integration tests that drive the real binary:
//! start it on a free loopback port (or see it refuse to start), and send
//! plain HTTP/1.1 requests to it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The admin token every test collector gets.
pub const TOKEN: &str = "test-token";

/// A running collector process; killed (`kill -9`) when dropped.
pub struct Collector {
    /// The process.
    pub child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Collector {
    /// Stops it with SIGTERM (graceful) and waits, at most 30 s.
    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        for _ in 0..300 {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the collector did not stop within 30 s of SIGTERM");
    }
}

/// Starts `bin` with `args` in `cwd`, as a [`Collector`] (killed when
/// dropped). `Err` carries what it wrote to stderr if it exited instead of
/// listening.
pub fn start_in(bin: &Path, cwd: &Path, args: &[&str]) -> Result<Collector, String> {
    spawn(bin, cwd, args).map(|(child, addr)| Collector { child, addr })
}

/// [`start_in`], leaving the process to the caller (tests that `kill -9`
/// it themselves).
pub fn spawn(bin: &Path, cwd: &Path, args: &[&str]) -> Result<(Child, SocketAddr), String> {
    let mut child = Command::new(bin)
        .current_dir(cwd)
        .args(args)
        .env("WEFT_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start weft-collector");
    let mut first = String::new();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let _ = stdout.read_line(&mut first);
    if first.is_empty() {
        let mut err = String::new();
        let _ = child.stderr.take().unwrap().read_to_string(&mut err);
        let status = child.wait().expect("wait for the collector");
        return Err(format!("{status}: {err}"));
    }
    // Keep reading both pipes so the collector never blocks on them.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let mut stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    let addr = first
        .trim()
        .rsplit("http://")
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
    Ok((child, addr))
}

/// The binary under test.
pub fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_weft-collector"))
}

/// Starts the binary under test on `data_dir` with the write key `wk` and
/// [`TOKEN`], plus `extra` flags.
pub fn start(data_dir: &Path, extra: &[&str]) -> Result<Collector, String> {
    let dir = data_dir.to_str().expect("UTF-8 path");
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--admin-token",
        TOKEN,
        "--data-dir",
        dir,
    ];
    args.extend_from_slice(extra);
    let cwd = data_dir.parent().expect("a data dir has a parent");
    start_in(binary(), cwd, &args)
}

/// Sends one request (admin token, or `Basic` with a write key for
/// `/v1/batch`), `Connection: close`: the status and body, or `None` when
/// the connection failed.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Option<(u16, String)> {
    request_with(addr, method, path, body, &[])
}

/// [`request`] with extra header lines (`Name: value`).
pub fn request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[&str],
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let auth = if path.starts_with("/v1/batch") {
        // wk_test:
        "Basic d2tfdGVzdDo=".to_owned()
    } else {
        format!("Bearer {TOKEN}")
    };
    let body = body.unwrap_or("");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Authorization: {auth}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).ok()?;
    s.write_all(body.as_bytes()).ok()?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).ok()?;
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Some((status, body))
}

/// The body of a chunked answer.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    for _ in 0..1_000_000 {
        let Some((size, rest)) = body.split_once("\r\n") else {
            break;
        };
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// `GET` with the admin token, expecting 200: the JSON body.
pub fn get_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let (status, body) = request(addr, "GET", path, None).expect("the collector answers");
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

/// Copies a directory tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
