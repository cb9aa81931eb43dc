//! The dashboard's front-end libraries: pinned from the npm registry,
//! installed once into `target/tools/npm-dashboard`, copied into
//! `www/vendor/` (ignored by git), where the collector serves them with the
//! rest of `www/`. Nothing is fetched from a CDN at run time.

use std::path::Path;
use std::process::Command;

use crate::cmd::Step;

/// uPlot: the charts (about 22 KB gzip).
const UPLOT: (&str, &str) = ("uplot", "1.6.32");

/// Files copied: (path in the package, name in `www/vendor/`).
const FILES: [(&str, &str); 2] = [
    ("dist/uPlot.iife.min.js", "uPlot.iife.min.js"),
    ("dist/uPlot.min.css", "uPlot.min.css"),
];

/// Installs (once) and copies the dashboard's libraries into `www/vendor/`.
pub fn vendor(root: &Path) -> Result<(), String> {
    let prefix = root.join("target/tools/npm-dashboard");
    let package = prefix.join("node_modules").join(UPLOT.0);
    let installed = std::fs::read_to_string(package.join("package.json"))
        .is_ok_and(|p| p.contains(&format!("\"version\": \"{}\"", UPLOT.1)));
    if !installed {
        crate::tools::ensure_npm()?;
        std::fs::create_dir_all(&prefix).map_err(|e| format!("cannot create {prefix:?}: {e}"))?;
        Step::new("install the dashboard's pinned npm packages (once)").run(
            Command::new("npm")
                .args([
                    "install",
                    "--no-audit",
                    "--no-fund",
                    "--no-save",
                    "--prefix",
                ])
                .arg(&prefix)
                .arg(format!("{}@{}", UPLOT.0, UPLOT.1)),
        )?;
    }
    let out = root.join("www/vendor");
    std::fs::create_dir_all(&out).map_err(|e| format!("cannot create {out:?}: {e}"))?;
    for (from, to) in FILES {
        std::fs::copy(package.join(from), out.join(to))
            .map_err(|e| format!("cannot copy {from} of {}: {e}", UPLOT.0))?;
    }
    Ok(())
}
