//! `cargo xtask`: the project's automation, in Rust so it runs wherever
//! cargo does.
//!
//! - `cargo xtask run [-- COLLECTOR FLAGS]`: install what is missing, build
//!   the SDK, start the collector serving the demo site and dashboard.
//! - `cargo xtask test`: install what is missing, then every check CI runs:
//!   fmt, clippy, the SDK build and its size budget, all tests (unit,
//!   integration, end-to-end in headless Chromium) and the SDK's
//!   wasm-bindgen tests in Chromium.
//! - `cargo xtask sdk`: build the SDK into `target/sdk` and report its size.
//! - `cargo xtask dist`: the deployable binary, `target/dist/weft-collector`,
//!   with the SDK, demo site and dashboard embedded ([`dist`]).
//! - `cargo xtask bench collector [--seconds S] [--connections N]
//!   [--warmup S]`: ingest throughput of the collector against the
//!   durable-ingest limit (target >= 0.8 of it) and a bare hyper server, at
//!   32 and 256 connections ([`bench`]).
//! - `cargo xtask bench identity [--people N]`: identity stitching at scale:
//!   ingest of a generated history (1M messages by default), then
//!   `GET /v1/profiles/{id}` latency and a check against the truth.
//! - `cargo xtask bench sdk [--rounds N] [--calls N]`: the SDK in headless
//!   Chromium: time to `weft.ready`, main-thread time per `track` call and
//!   bytes per event, each against a baseline from the same run.
//!
//! Layout: [`tools`] finds or installs external tools, [`sdk`] builds the
//! SDK bundle, [`cmd`] runs commands and reports failures.

mod bench;
mod cmd;
mod dashboard;
mod destinations_bench;
mod dist;
mod sdk;
mod segments_bench;
mod tools;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use cmd::{Step, cargo};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    let result = match args.first().map(String::as_str) {
        Some("run") => run(&root, &args[1..]),
        Some("test") => test(&root),
        Some("dist") => dist::build(&root).map(drop),
        Some("sdk") => tools::ensure_sdk_tools(&root).and_then(|t| sdk::build(&root, &t).map(drop)),
        Some("bench") => bench::run(&root, &args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n  run [-- FLAGS]  build the SDK and run the collector with the demo site\n  test            run every check and test (what CI runs)\n  sdk             build the SDK into target/sdk and report its size\n  dist            build target/dist/weft-collector: one binary with the SDK, demo and dashboard inside\n  bench collector [--seconds S] [--connections N] [--warmup S]\n                  ingest throughput at 32 and 256 connections: collector vs the durable-ingest limit and a bare hyper server\n  bench identity [--people N] [--seed S] [--connections N] [--lookups N]\n                  identity at scale: ingest msg/s of a generated history, profile p50/p99\n  bench sdk [--rounds N] [--calls N]\n                  the SDK in headless Chromium: ready time, main thread per track, bytes/event"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nxtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root: the parent of this crate's directory.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn run(root: &Path, args: &[String]) -> Result<(), String> {
    let flags: Vec<String> = match args.first().map(String::as_str) {
        Some("--") => args[1..].to_vec(),
        _ => args.to_vec(),
    };
    let bin = dist::build(root)?;
    let mut command = std::process::Command::new(bin);
    command.current_dir(root).args(&flags);
    eprintln!("xtask: starting the collector (Ctrl-C stops it)");
    let status = command
        .status()
        .map_err(|e| format!("cannot start the collector: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("the collector exited with {status}"))
    }
}

fn test(root: &Path) -> Result<(), String> {
    let started = Instant::now();
    let tools = tools::ensure_sdk_tools(root)?;
    let browser = tools::ensure_browser()?;
    tools::ensure_strace()?;

    Step::new("cargo fmt --check").run(cargo(root).args(["fmt", "--all", "--", "--check"]))?;
    Step::new("clippy (host)").run(cargo(root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    Step::new("clippy (wasm32 SDK)").run(cargo(root).args([
        "clippy",
        "-p",
        "weft-sdk",
        "--target",
        "wasm32-unknown-unknown",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;

    Step::new("clippy (wasm32 SDK as shipped: no_std)").run(cargo(root).args([
        "clippy",
        "-p",
        "weft-sdk",
        "--no-default-features",
        "--target",
        "wasm32-unknown-unknown",
        "--lib",
        "--",
        "-D",
        "warnings",
    ]))?;

    let report = sdk::build(root, &tools)?;
    report.check_budget()?;
    dashboard::vendor(root)?;
    let dist = dist::package(root)?;

    Step::new("tests: unit, integration, end-to-end (headless Chromium)").run(
        cargo(root)
            .args(["test", "--workspace"])
            .env("WEFT_SDK_DIR", sdk::out_dir(root))
            .env("WEFT_DIST_BIN", &dist)
            .env("WEFT_CHROMIUM", &browser.chromium),
    )?;
    Step::new("SDK wasm-bindgen tests (headless Chromium)").run(
        cargo(root)
            .args([
                "test",
                "-p",
                "weft-sdk",
                "--target",
                "wasm32-unknown-unknown",
                "--test",
                "browser",
            ])
            .env(
                "CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER",
                &tools.wasm_bindgen_test_runner,
            )
            .env("CHROMEDRIVER", &browser.chromedriver)
            .env("WASM_BINDGEN_TEST_TIMEOUT", "60"),
    )?;
    eprintln!(
        "\nxtask: all checks passed in {:.0?}\n{}",
        started.elapsed(),
        report.summary()
    );
    Ok(())
}
