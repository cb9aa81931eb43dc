//! Finding, and installing when missing, the tools the build and tests use.
//!
//! Everything lands under `target/tools` (project-local, so a second run
//! costs nothing and nothing outside the checkout changes), except Chromium,
//! and Node.js/npm or Python's pip when missing, which come from apt when
//! running as root.
//!
//! | tool | from | why |
//! |---|---|---|
//! | wasm32 target | rustup | the SDK's target |
//! | wasm-bindgen, wasm-bindgen-test-runner | `cargo install wasm-bindgen-cli` at the crate's pinned version | JS glue; browser tests |
//! | wasm-opt, wasm-dis and wasm2js (binaryen), terser | npm | Debian's binaryen is too old for today's rustc; the strict-CSP fallback; minified JS |
//! | @segment/analytics-node | npm | a real Segment server SDK, sent to the collector in the e2e tests |
//! | posthog-js, @snowplow/browser-tracker | npm, into `target/tools/npm-anchors` (`bench sdk` only) | the SDKs `cargo xtask bench sdk` measures weft against |
//! | rudder-sdk-python, segment-analytics-python | PyPI: `python3 -m pip install --target target/tools/python` | real RudderStack and Segment Python server SDKs, sent to the collector in the e2e tests (`PYTHONPATH`) |
//! | chromium, chromedriver | apt | browser tests |
//! | strace | apt | the test that every 200 follows an `fdatasync` of its records |

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cmd::{Step, cargo, is_root, output};

/// npm packages, pinned exactly. Names may be scoped (`@scope/name`).
const NPM_PACKAGES: [(&str, &str); 3] = [
    ("binaryen", "132.0.0"),
    ("terser", "5.51.2"),
    ("@segment/analytics-node", "3.1.0"),
];

/// The browser SDKs `cargo xtask bench sdk` measures weft against, pinned
/// exactly; installed on their own (`target/tools/npm-anchors`), and only
/// by the bench.
const BENCH_ANCHORS: [(&str, &str); 2] = [
    ("posthog-js", "1.449.2"),
    ("@snowplow/browser-tracker", "4.10.1"),
];

/// PyPI packages, pinned exactly: real server SDKs the e2e tests run.
const PYPI_PACKAGES: [(&str, &str); 2] = [
    ("rudder-sdk-python", "2.1.9"),
    ("segment-analytics-python", "2.4.0"),
];

/// Paths of the SDK build tools.
pub struct Tools {
    /// The wasm-bindgen CLI.
    pub wasm_bindgen: PathBuf,
    /// The runner for `cargo test --target wasm32-unknown-unknown`.
    pub wasm_bindgen_test_runner: PathBuf,
    /// binaryen's optimiser.
    pub wasm_opt: PathBuf,
    /// binaryen's wasm-to-JavaScript translator (the strict-CSP fallback);
    /// from the same npm package as `wasm_opt`.
    pub wasm2js: PathBuf,
    /// binaryen's disassembler (wasm to text), from the same package.
    pub wasm_dis: PathBuf,
    /// The JS minifier.
    pub terser: PathBuf,
}

/// Makes sure the SDKs of the side-by-side bench are installed; returns
/// their `node_modules` directory.
pub fn ensure_bench_anchors(root: &Path) -> Result<PathBuf, String> {
    let dir = root.join("target/tools/npm-anchors");
    npm_install(
        &dir,
        &BENCH_ANCHORS,
        "PostHog's and Snowplow's browser SDKs",
    )?;
    Ok(dir.join("node_modules"))
}

/// Installs `packages` (pinned) under `npm_dir` unless they are there.
fn npm_install(npm_dir: &Path, packages: &[(&str, &str)], what: &str) -> Result<(), String> {
    let installed = |name: &str, version: &str| {
        // A scoped name is two directories: node_modules/@scope/name.
        let package_json = name
            .split('/')
            .fold(npm_dir.join("node_modules"), |dir, part| dir.join(part))
            .join("package.json");
        std::fs::read_to_string(package_json)
            .is_ok_and(|p| p.contains(&format!("\"version\": \"{version}\"")))
    };
    if packages.iter().all(|(n, v)| installed(n, v)) {
        return Ok(());
    }
    ensure_npm()?;
    std::fs::create_dir_all(npm_dir).map_err(|e| format!("cannot create {npm_dir:?}: {e}"))?;
    let specs: Vec<String> = packages.iter().map(|(n, v)| format!("{n}@{v}")).collect();
    Step::new(format!("install {what} (once)")).run(
        Command::new("npm")
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--no-save",
                "--prefix",
            ])
            .arg(npm_dir)
            .args(&specs),
    )
}

/// Paths of the browser and its driver.
pub struct Browser {
    /// The Chromium binary.
    pub chromium: PathBuf,
    /// The matching ChromeDriver.
    pub chromedriver: PathBuf,
}

/// Makes sure the wasm target, wasm-bindgen-cli, the npm tools and the
/// PyPI packages are there.
pub fn ensure_sdk_tools(root: &Path) -> Result<Tools, String> {
    ensure_wasm_target()?;
    let tools_dir = root.join("target/tools");
    let version = pinned_wasm_bindgen(root)?;
    let bin = tools_dir.join("bin");
    let wasm_bindgen = bin.join("wasm-bindgen");
    let has_version = output(Command::new(&wasm_bindgen).arg("--version"))
        .is_some_and(|v| v.split_whitespace().nth(1) == Some(version.as_str()));
    if !has_version {
        // No --locked: the CLI's lockfile names a crate version the registry
        // here does not serve (see shared/TOOLCHAIN.md).
        Step::new(format!(
            "install wasm-bindgen-cli {version} (once, about 2 min)"
        ))
        .run(
            cargo(root)
                .args([
                    "install",
                    "wasm-bindgen-cli",
                    "--version",
                    &version,
                    "--root",
                ])
                .arg(&tools_dir),
        )?;
    }

    npm_install(
        &tools_dir.join("npm"),
        &NPM_PACKAGES,
        "the pinned npm packages",
    )?;
    ensure_python_packages(&tools_dir.join("python"))?;
    let node_bin = tools_dir.join("npm/node_modules/.bin");
    Ok(Tools {
        wasm_bindgen,
        wasm_bindgen_test_runner: bin.join("wasm-bindgen-test-runner"),
        wasm_opt: node_bin.join("wasm-opt"),
        wasm2js: node_bin.join("wasm2js"),
        wasm_dis: node_bin.join("wasm-dis"),
        terser: node_bin.join("terser"),
    })
}

/// Installs [`PYPI_PACKAGES`] into `dir` (the e2e tests put it on
/// `PYTHONPATH`) unless each is there at its pinned version.
fn ensure_python_packages(dir: &Path) -> Result<(), String> {
    // pip --target leaves a `<name, with _ for ->-<version>.dist-info` per package.
    let installed = |name: &str, version: &str| {
        dir.join(format!("{}-{version}.dist-info", name.replace('-', "_")))
            .join("METADATA")
            .is_file()
    };
    if PYPI_PACKAGES.iter().all(|(n, v)| installed(n, v)) {
        return Ok(());
    }
    ensure_pip()?;
    // From scratch: pip --target keeps what an older pin left behind.
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| format!("cannot remove {dir:?}: {e}"))?;
    }
    let specs: Vec<String> = PYPI_PACKAGES
        .iter()
        .map(|(n, v)| format!("{n}=={v}"))
        .collect();
    Step::new("install the pinned PyPI packages (once)").run(
        Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "--target",
            ])
            .arg(dir)
            .args(&specs),
    )?;
    match PYPI_PACKAGES.iter().find(|(n, v)| !installed(n, v)) {
        None => Ok(()),
        Some((n, v)) => Err(format!(
            "pip finished but {n} {v} is not in {dir:?} (no {}-{v}.dist-info)",
            n.replace('-', "_")
        )),
    }
}

/// The exact wasm-bindgen version pinned in the workspace manifest.
fn pinned_wasm_bindgen(root: &Path) -> Result<String, String> {
    let manifest = std::fs::read_to_string(root.join("Cargo.toml"))
        .map_err(|e| format!("cannot read Cargo.toml: {e}"))?;
    manifest
        .lines()
        .find(|l| l.starts_with("wasm-bindgen = "))
        .and_then(|l| l.split("\"=").nth(1))
        .and_then(|rest| rest.split('"').next())
        .map(str::to_owned)
        .ok_or_else(|| "Cargo.toml must pin wasm-bindgen exactly (\"=X.Y.Z\")".into())
}

fn ensure_wasm_target() -> Result<(), String> {
    let installed = output(Command::new("rustup").args(["target", "list", "--installed"]));
    match installed {
        Some(list) if list.lines().any(|l| l.trim() == "wasm32-unknown-unknown") => Ok(()),
        Some(_) => Step::new("rustup target add wasm32-unknown-unknown")
            .run(Command::new("rustup").args(["target", "add", "wasm32-unknown-unknown"])),
        None => Err("rustup not found: install Rust with rustup (https://rustup.rs)".into()),
    }
}

pub(crate) fn ensure_npm() -> Result<(), String> {
    if output(Command::new("npm").arg("--version")).is_some() {
        return Ok(());
    }
    apt_install(
        &["nodejs", "npm"],
        "Node.js and npm (for wasm-opt and terser)",
    )
}

fn ensure_pip() -> Result<(), String> {
    let pip = || output(Command::new("python3").args(["-m", "pip", "--version"])).is_some();
    if pip() {
        return Ok(());
    }
    apt_install(
        &["python3", "python3-pip"],
        "Python 3 and pip (for the Python server SDKs of the e2e tests)",
    )?;
    if pip() {
        Ok(())
    } else {
        Err(
            "`python3 -m pip` still does not run after installing python3-pip: \
             put a Python 3 with pip on PATH as `python3`"
                .into(),
        )
    }
}

/// Makes sure `strace` is installed: a test watches the collector's
/// syscalls to prove every 200 follows the sync of its records.
pub fn ensure_strace() -> Result<(), String> {
    let present = || {
        output(Command::new("sh").args(["-c", "command -v strace"]))
            .is_some_and(|s| !s.trim().is_empty())
    };
    if !present() {
        apt_install(&["strace"], "strace (the sync-before-acknowledge test)")?;
    }
    if present() {
        Ok(())
    } else {
        Err("strace is still missing after installing it".into())
    }
}

/// Makes sure Chromium and ChromeDriver are installed.
pub fn ensure_browser() -> Result<Browser, String> {
    if find_browser().is_none() {
        apt_install(
            &["chromium", "chromium-driver"],
            "Chromium and ChromeDriver (browser tests)",
        )?;
    }
    find_browser().ok_or_else(|| {
        "Chromium and ChromeDriver are still missing after installing; \
         set WEFT_CHROMIUM and CHROMEDRIVER to their paths"
            .into()
    })
}

fn find_browser() -> Option<Browser> {
    let find = |env: &str, names: &[&str]| -> Option<PathBuf> {
        if let Some(p) = std::env::var_os(env)
            .map(PathBuf::from)
            .filter(|p| p.exists())
        {
            return Some(p);
        }
        names.iter().find_map(|n| {
            output(Command::new("sh").args(["-c", &format!("command -v {n}")]))
                .map(|s| PathBuf::from(s.trim()))
                .filter(|p| p.exists())
        })
    };
    Some(Browser {
        chromium: find(
            "WEFT_CHROMIUM",
            &["chromium", "chromium-browser", "google-chrome"],
        )?,
        chromedriver: find("CHROMEDRIVER", &["chromedriver"])?,
    })
}

fn apt_install(packages: &[&str], what: &str) -> Result<(), String> {
    if !is_root() {
        return Err(format!(
            "{what} missing. Install them with: sudo apt-get install -y {}",
            packages.join(" ")
        ));
    }
    Step::new("apt-get update").run(Command::new("apt-get").arg("update"))?;
    Step::new(format!("apt-get install {}", packages.join(" "))).run(
        Command::new("apt-get")
            .args(["install", "-y"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}
