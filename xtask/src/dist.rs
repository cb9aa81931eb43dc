//! `cargo xtask dist`: the one binary an operator deploys.
//!
//! Builds the SDK and vendors the dashboard's libraries, stages them with
//! `www/` in `target/dist-assets/` (`sdk/`, `www/`; the site's scripts and
//! styles get `.gz` and `.br` twins like the SDK's), then builds the
//! collector with the `dist` profile and `WEFT_EMBED_DIR` pointing at the
//! staging, so `collector/build.rs` embeds every file. The result,
//! `target/dist/weft-collector`, serves the demo, the dashboard and the SDK
//! with no other file beside it. `cargo xtask run` runs that same binary.
//!
//! Staged files are rewritten only when their content changed, so a second
//! `dist` with nothing new does not rebuild the collector.

use std::path::{Path, PathBuf};

use crate::cmd::{Step, cargo};

/// Where the staged assets go (relative to the workspace root).
const STAGE_DIR: &str = "target/dist-assets";
/// The deployable binary (cargo's output for the `dist` profile).
pub const BINARY: &str = "target/dist/weft-collector";

/// Extensions of site files that get compressed twins (HTML is filled in
/// per request, so it is sent as is).
const COMPRESSED: [&str; 4] = ["js", "css", "svg", "json"];

/// Builds everything and the binary; returns its path.
pub fn build(root: &Path) -> Result<PathBuf, String> {
    let tools = crate::tools::ensure_sdk_tools(root)?;
    crate::sdk::build(root, &tools)?;
    crate::dashboard::vendor(root)?;
    package(root)
}

/// Stages the built SDK and `www/` (both must be ready) and builds the
/// binary with them; returns its path.
pub fn package(root: &Path) -> Result<PathBuf, String> {
    let stage = root.join(STAGE_DIR);
    let mut wanted = Vec::new();
    stage_sdk(&crate::sdk::out_dir(root), &stage.join("sdk"), &mut wanted)?;
    stage_site(&root.join("www"), &stage.join("www"), &mut wanted)?;
    remove_stale(&stage, &wanted)?;
    Step::new("build the collector with the SDK and site embedded (dist profile)").run(
        cargo(root)
            .args(["build", "--profile", "dist", "-p", "weft-collector"])
            .env("WEFT_EMBED_DIR", &stage),
    )?;
    let bin = root.join(BINARY);
    let size = std::fs::metadata(&bin)
        .map_err(|e| format!("the dist binary is missing at {bin:?}: {e}"))?
        .len();
    eprintln!(
        "xtask: {} ({:.1} MB, {} embedded files)",
        bin.display(),
        size as f64 / 1e6,
        wanted.len()
    );
    Ok(bin)
}

/// Copies the built SDK's files and their twins.
fn stage_sdk(from: &Path, to: &Path, wanted: &mut Vec<PathBuf>) -> Result<(), String> {
    let entries = std::fs::read_dir(from)
        .map_err(|e| format!("cannot read the SDK build in {from:?}: {e}"))?;
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.is_file() {
            let name = path.file_name().expect("a file has a name");
            put(&to.join(name), &read(&path)?, wanted)?;
        }
    }
    Ok(())
}

/// Copies `www/` (without hidden files), adding `.gz` and `.br` twins to
/// scripts and styles.
fn stage_site(from: &Path, to: &Path, wanted: &mut Vec<PathBuf>) -> Result<(), String> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(from)
        .map_err(|e| format!("cannot read {from:?}: {e}"))?
        .map(|e| e.map(|e| e.path()).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for path in entries {
        let name = path.file_name().expect("an entry has a name");
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            stage_site(&path, &to.join(name), wanted)?;
            continue;
        }
        let data = read(&path)?;
        let target = to.join(name);
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if COMPRESSED.contains(&ext) {
            put(&twin(&target, "gz"), &crate::sdk::gzip(&data), wanted)?;
            put(&twin(&target, "br"), &crate::sdk::brotli(&data), wanted)?;
        }
        put(&target, &data, wanted)?;
    }
    Ok(())
}

fn twin(path: &Path, ext: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {path:?}: {e}"))
}

/// Writes `data` to `path` unless it already holds exactly that.
fn put(path: &Path, data: &[u8], wanted: &mut Vec<PathBuf>) -> Result<(), String> {
    wanted.push(path.to_path_buf());
    if std::fs::read(path).is_ok_and(|old| old == data) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {dir:?}: {e}"))?;
    }
    std::fs::write(path, data).map_err(|e| format!("cannot write {path:?}: {e}"))
}

/// Deletes staged files that no longer come from anywhere (a page removed
/// from `www/`), so the binary does not keep serving them.
fn remove_stale(dir: &Path, wanted: &[PathBuf]) -> Result<(), String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.is_dir() {
            remove_stale(&path, wanted)?;
        } else if !wanted.contains(&path) {
            std::fs::remove_file(&path).map_err(|e| format!("cannot remove {path:?}: {e}"))?;
        }
    }
    Ok(())
}
