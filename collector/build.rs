//! Embeds the SDK and the site (demo shop, dashboard) into the binary when
//! `WEFT_EMBED_DIR` names a staged asset directory, which is what
//! `cargo xtask dist` and `cargo xtask run` do: the binary then serves
//! everything on its own, copied alone onto a machine without Rust.
//!
//! The staged directory holds `sdk/` (the built SDK with its `.gz` and `.br`
//! twins) and `www/`. Without the variable the table is empty and the
//! collector serves only what `--sdk-dir`/`--www-dir` point at, so plain
//! `cargo build` and `cargo test` need no SDK build.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo::rerun-if-env-changed=WEFT_EMBED_DIR");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let mut files = Vec::new();
    if let Some(dir) = std::env::var_os("WEFT_EMBED_DIR").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        assert!(
            dir.is_dir(),
            "WEFT_EMBED_DIR={} is not a directory",
            dir.display()
        );
        println!("cargo::rerun-if-changed={}", dir.display());
        walk(&dir, &dir, &mut files);
    }
    // Sorted by name: the server looks files up by binary search.
    files.sort();
    let mut code = String::from(
        "/// Files embedded at build time, sorted by their path under the staged\n\
         /// directory (`sdk/weft.js`, `www/index.html`).\n\
         pub static FILES: &[(&str, &[u8])] = &[\n",
    );
    for (name, path) in &files {
        let abs = path.canonicalize().expect("staged file exists");
        writeln!(code, "    ({name:?}, include_bytes!({abs:?})),").expect("write to a String");
    }
    code.push_str("];\n");
    std::fs::write(out.join("embedded.rs"), code).expect("write embedded.rs");
}

/// Every file under `dir`, named by its `/`-separated path under `root`.
fn walk(root: &Path, dir: &Path, files: &mut Vec<(String, PathBuf)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read the staged directory")
        .map(|e| e.expect("read a staged entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            walk(root, &path, files);
        } else {
            let rel = path.strip_prefix(root).expect("under the root");
            let name = rel
                .components()
                .map(|c| c.as_os_str().to_str().expect("staged names are UTF-8"))
                .collect::<Vec<_>>()
                .join("/");
            files.push((name, path));
        }
    }
}
