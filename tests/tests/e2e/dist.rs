//! The deployable binary, deployed as the README's "Deploy" section says:
//! `target/dist/weft-collector` (built by `cargo xtask dist`, given here as
//! `WEFT_DIST_BIN`) copied alone into an empty directory with the
//! repository's `deploy/weft.toml`, checked with `check-config`, started,
//! and then used as a site and an operator would: a page on another origin
//! loads the SDK from it and sends, the demo shop and the dashboard load
//! from it in Chromium (nothing else on disk), the probes answer,
//! `X-Forwarded-For` is believed from the configured proxy only, and the
//! systemd unit passes `systemd-analyze verify` where systemd is installed.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use weft_collector::record::{self, Record};
use weft_e2e::chromium::Chromium;
use weft_e2e::harness::workspace_root;
use weft_e2e::http::{Request, basic_auth};
use weft_e2e::site::{Site, fixtures_dir, sdk_ready};

const TOKEN: &str = "dist-admin-token";
const KEY: &str = "wk_change_me";

/// The dist binary. Panics with the fix when it was not built: this test
/// must never pass without it.
fn dist_bin() -> PathBuf {
    let bin = std::env::var_os("WEFT_DIST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/dist/weft-collector"));
    assert!(
        bin.is_file(),
        "the dist binary is not built at {bin:?}: run `cargo xtask test` (or `cargo xtask dist`)"
    );
    bin
}

struct Running {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `bin` in `dir` with `args`, waiting for its banner.
fn start(bin: &Path, dir: &Path, args: &[&str]) -> (Running, Duration) {
    let started = Instant::now();
    let mut child = Command::new(bin)
        .current_dir(dir)
        .args(args)
        .env("WEFT_ADMIN_TOKEN", TOKEN)
        .env("WEFT_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the dist binary");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let took = started.elapsed();
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let addr = first
        .trim()
        .rsplit("http://")
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
    (Running { child, addr }, took)
}

/// The deploy example with the test's site origin and a data directory
/// under `dir`.
fn config_for(origin: &str) -> String {
    let shipped = std::fs::read_to_string(workspace_root().join("deploy/weft.toml")).unwrap();
    assert!(shipped.contains("https://www.shop.example"));
    shipped.replace("https://www.shop.example", origin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dist_binary_alone_serves_the_sdk_demo_and_dashboard() {
    let bin = dist_bin();
    let opt = tempfile::tempdir().unwrap();
    let installed = opt.path().join("weft-collector");
    std::fs::copy(&bin, &installed).unwrap();
    let listing: Vec<_> = std::fs::read_dir(opt.path()).unwrap().collect();
    assert_eq!(listing.len(), 1, "nothing but the binary");

    // The shipped configuration passes the check as it is.
    let check = Command::new(&installed)
        .args(["check-config", "--config"])
        .arg(workspace_root().join("deploy/weft.toml"))
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
    // A site on another origin, and the configuration naming it.
    let shop = Site::start(&fixtures_dir(), "", &[]).await;
    let origin = shop.url("");
    std::fs::write(opt.path().join("weft.toml"), config_for(&origin)).unwrap();
    let check = Command::new(&installed)
        .current_dir(opt.path())
        .arg("check-config")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("weft.toml: ok (1 sources"),
        "{check:?}"
    );

    let (weft, startup) = start(
        &installed,
        opt.path(),
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            "data",
            "--script-path",
            "/assets/app-4f1.js",
            "--ingest-path",
            "/assets/s",
        ],
    );
    eprintln!(
        "dist binary: {} bytes, banner after {startup:?}",
        std::fs::metadata(&installed).unwrap().len()
    );
    let collector = format!("http://{}", weft.addr);
    shop.set("%WEFT_COLLECTOR%", &collector);
    shop.set("%WEFT_WRITE_KEY%", KEY);

    // Probes.
    for (path, want) in [("/healthz", "ok"), ("/readyz", "\"ready\":true")] {
        let r = Request::get(path).send(weft.addr).await;
        assert_eq!(r.status, 200, "{path}");
        assert!(String::from_utf8_lossy(&r.body).contains(want), "{path}");
    }
    // The SDK, compressed as built.
    let r = Request::get("/weft.wasm")
        .header("Accept-Encoding", "br, gzip")
        .send(weft.addr)
        .await;
    assert_eq!((r.status, r.header("content-encoding")), (200, Some("br")));
    // The operator's paths, given as flags.
    let r = Request::get("/assets/app-4f1.wasm").send(weft.addr).await;
    assert_eq!(
        (r.status, r.header("content-type")),
        (200, Some("application/wasm"))
    );
    let r = Request::post(
        "/assets/s",
        r#"{"batch":[{"type":"track","anonymousId":"fp","event":"At the operator's path"}]}"#,
    )
    .header("Authorization", &basic_auth(KEY))
    .send(weft.addr)
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    let chromium = Chromium::launch().await;
    // A page of another origin loads the SDK from the binary and sends.
    let page = chromium.new_page().await;
    page.goto(&shop.url("/basic.html")).await;
    sdk_ready(&page).await;
    let aid = page.eval("weft.anonymousId()").await;
    let aid = aid.as_str().expect("an anonymousId").to_owned();
    page.eval("weft.track('Deployed', {ok: true}); weft.flush()")
        .await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = Request::get(&format!("/v1/profiles/{aid}"))
            .bearer(TOKEN)
            .send(weft.addr)
            .await;
        if r.status == 200 && r.json()["event_count"].as_u64() >= Some(2) {
            break;
        }
        assert!(Instant::now() < deadline, "the page's events never arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The demo shop and the dashboard, from the binary alone.
    let page = chromium.new_page().await;
    page.goto(&format!("{collector}/")).await;
    sdk_ready(&page).await;
    let title = page.eval("document.title").await;
    assert!(title.as_str().unwrap_or("").contains("Fern"), "{title}");
    let page = chromium.new_page().await;
    page.goto(&format!("{collector}/dashboard")).await;
    page.wait_for(
        Duration::from_secs(10),
        "typeof uPlot === 'function' && document.getElementById('login').open",
    )
    .await;
    let errors = crate::dashboard::console_errors(&page);
    assert!(errors.is_empty(), "console errors: {errors:?}");

    // X-Forwarded-For: believed from the proxy (127.0.0.1, trusted by the
    // deploy configuration), truncated like any client address.
    let body =
        r#"{"batch":[{"type":"track","anonymousId":"xff","messageId":"xff-1","event":"Proxied"}]}"#;
    let basic = basic_auth(KEY);
    let r = Request::post("/v1/batch", body)
        .header("Authorization", &basic)
        .header("X-Forwarded-For", "198.51.100.99, 203.0.113.77")
        .send(weft.addr)
        .await;
    assert_eq!(r.status, 200);
    drop(weft);

    let mut ips = Vec::new();
    weft_collector::log::scan(&opt.path().join("data/log"), 0, u64::MAX, |_, p| {
        if let Ok(Record::Event { event, .. }) = record::decode(p) {
            ips.push((event.message_id, event.ip));
        }
        true
    })
    .unwrap();
    let proxied = ips.iter().find(|(id, _)| id == "xff-1").expect("stored");
    assert_eq!(proxied.1.as_deref(), Some("203.0.113.0"), "{ips:?}");
    let browser = ips
        .iter()
        .find(|(id, _)| id != "xff-1")
        .expect("the page's");
    assert_eq!(browser.1.as_deref(), Some("127.0.0.0"), "{ips:?}");
}

#[tokio::test]
async fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    let bin = dist_bin();
    let opt = tempfile::tempdir().unwrap();
    let (weft, _) = start(
        &bin,
        opt.path(),
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            "data",
            "--write-key",
            KEY,
        ],
    );
    let basic = basic_auth(KEY);
    let body = r#"{"batch":[{"type":"track","anonymousId":"a","messageId":"spoof","event":"E"}]}"#;
    let r = Request::post("/v1/batch", body)
        .header("Authorization", &basic)
        .header("X-Forwarded-For", "203.0.113.77")
        .send(weft.addr)
        .await;
    assert_eq!(r.status, 200);
    drop(weft);
    let mut ip = None;
    weft_collector::log::scan(&opt.path().join("data/log"), 0, u64::MAX, |_, p| {
        if let Ok(Record::Event { event, .. }) = record::decode(p) {
            ip = event.ip;
        }
        true
    })
    .unwrap();
    assert_eq!(ip.as_deref(), Some("127.0.0.0"), "the header was believed");
}

#[test]
fn the_systemd_unit_verifies() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    };
    assert!(out.status.success());
    let dir = tempfile::tempdir().unwrap();
    // The unit as shipped, with ExecStart pointing at a binary that exists.
    let unit = std::fs::read_to_string(workspace_root().join("deploy/weft.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/weft-collector "));
    let unit = unit.replace(
        "/usr/local/bin/weft-collector",
        dist_bin().to_str().unwrap(),
    );
    let path = dir.path().join("weft.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Unknown keys are only warnings to systemd: none is allowed here.
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
}
