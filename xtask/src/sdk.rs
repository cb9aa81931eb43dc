//! Building the SDK bundle the script tag downloads, and measuring it.
//!
//! Pipeline: cargo (wasm32, `wasm-release` profile) -> wasm-bindgen
//! (`--target no-modules`) -> wasm-opt `-Oz` -> wasm-opt renaming the
//! module's imports and exports to one or two letters -> one `weft.js` made
//! of the glue (with the same names) and `sdk-wasm/js/loader.js` in a single
//! function scope, minified by terser -> `.gz` and `.br` twins that the
//! collector serves.
//!
//! The renaming matters: wasm-bindgen names each import after its JS name
//! plus a 16-hex-digit hash, and each name is in both files, where it
//! compresses badly (about 1.4 KB gzip in all). wasm-opt's
//! `--minify-imports-and-exports-and-modules` prints the old and new names;
//! [`rename_in_glue`] applies them to the glue and fails the build if the
//! glue does not have exactly the names it expects, so a wasm-bindgen
//! upgrade that changes the glue's shape cannot ship a broken bundle.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cmd::{Step, cargo};
use crate::tools::Tools;

/// Where the built SDK goes by default (relative to the workspace root);
/// `WEFT_SDK_DIR` overrides it (see [`out_dir`]).
pub const OUT_DIR: &str = "target/sdk";
/// The script tag's total download, gzip -9, above which the build fails
/// (the SDK issue's hard limit).
pub const BUDGET_GZIP_BYTES: usize = 25 * 1024;
/// The total the SDK aims for, gzip -9; reported, not enforced.
pub const GOAL_GZIP_BYTES: usize = 15 * 1024;

/// wasm-opt's feature flags: what rustc enables for wasm32 today.
const WASM_FEATURES: [&str; 6] = [
    "--enable-bulk-memory",
    "--enable-nontrapping-float-to-int",
    "--enable-sign-ext",
    "--enable-mutable-globals",
    "--enable-reference-types",
    "--enable-multivalue",
];

/// Sizes of one shipped file.
pub struct FileSize {
    name: &'static str,
    raw: usize,
    gzip: usize,
    brotli: usize,
}

/// Sizes of everything the script tag downloads.
pub struct SizeReport {
    files: Vec<FileSize>,
}

impl SizeReport {
    fn total(&self, f: impl Fn(&FileSize) -> usize) -> usize {
        self.files.iter().map(f).sum()
    }

    /// A table of raw, gzip -9 and brotli sizes.
    pub fn summary(&self) -> String {
        let mut out = String::from("SDK download (what the script tag fetches):\n");
        out.push_str(&format!(
            "  {:<12} {:>9} {:>9} {:>9}\n",
            "file", "raw", "gzip -9", "brotli"
        ));
        for f in &self.files {
            out.push_str(&format!(
                "  {:<12} {:>9} {:>9} {:>9}\n",
                f.name, f.raw, f.gzip, f.brotli
            ));
        }
        let gzip = self.total(|f| f.gzip);
        out.push_str(&format!(
            "  {:<12} {:>9} {:>9} {:>9}\n",
            "total",
            self.total(|f| f.raw),
            gzip,
            self.total(|f| f.brotli),
        ));
        out.push_str(&format!(
            "  gzip total {gzip}: budget {BUDGET_GZIP_BYTES} ({}), goal {GOAL_GZIP_BYTES} ({})\n",
            against(gzip, BUDGET_GZIP_BYTES),
            against(gzip, GOAL_GZIP_BYTES),
        ));
        out
    }

    /// Fails when the gzip total is over [`BUDGET_GZIP_BYTES`].
    pub fn check_budget(&self) -> Result<(), String> {
        let gzip = self.total(|f| f.gzip);
        if gzip > BUDGET_GZIP_BYTES {
            return Err(format!(
                "SDK size budget exceeded: {gzip} bytes gzip -9 > {BUDGET_GZIP_BYTES}\n{}",
                self.summary()
            ));
        }
        Ok(())
    }
}

/// Where the built SDK goes: `WEFT_SDK_DIR` (relative to `root` unless
/// absolute), else [`OUT_DIR`]. The build stages its files in a sibling
/// directory (`<dir>-stage`), so builds into different directories, run at
/// the same time, never share a file.
pub fn out_dir(root: &Path) -> PathBuf {
    match std::env::var_os("WEFT_SDK_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => root.join(dir),
        None => root.join(OUT_DIR),
    }
}

/// The stage directory of the build into `out`: `<out>-stage`.
fn stage_dir(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_owned();
    name.push("-stage");
    out.with_file_name(name)
}

/// Cargo's target directory: `CARGO_TARGET_DIR` (relative to `root` unless
/// absolute), else `root/target`.
fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

/// Builds the SDK into [`out_dir`] and reports its size.
pub fn build(root: &Path, tools: &Tools) -> Result<SizeReport, String> {
    Step::new("build the SDK (wasm32, size profile)").run(cargo(root).args([
        "build",
        "-p",
        "weft-sdk",
        "--target",
        "wasm32-unknown-unknown",
        "--profile",
        "wasm-release",
    ]))?;
    let wasm = target_dir(root).join("wasm32-unknown-unknown/wasm-release/weft_sdk.wasm");
    let out = out_dir(root);
    let stage = stage_dir(&out);
    for dir in [&stage, &out] {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {dir:?}: {e}"))?;
    }
    // `--omit-default-module-path`: the loader always passes the wasm's URL.
    // `--encode-into always`: every browser with the wasm features used here
    // has `TextEncoder#encodeInto`, so its fallback is dead code.
    Step::new("wasm-bindgen (no-modules glue)").run(
        Command::new(&tools.wasm_bindgen)
            .args([
                "--target",
                "no-modules",
                "--no-typescript",
                "--omit-default-module-path",
                "--encode-into",
                "always",
                "--out-dir",
            ])
            .arg(&stage)
            .arg(&wasm),
    )?;
    // `--converge` repeats -Oz while it still shrinks the module.
    // `--low-memory-unused` lets it fold constant offsets into loads and
    // stores: true of Rust's wasm32 layout, where the stack takes the first
    // 1 MiB and grows down from its top, so the low 1 KiB is never used. The
    // target features section is only read by the tools, so it goes too.
    let optimized = stage.join("weft_sdk_opt.wasm");
    Step::new("wasm-opt -Oz").run(
        Command::new(&tools.wasm_opt)
            .args(["-Oz", "--converge", "--low-memory-unused"])
            .args(WASM_FEATURES)
            .args([
                "--strip-debug",
                "--strip-producers",
                "--strip-target-features",
            ])
            .arg(stage.join("weft_sdk_bg.wasm"))
            .arg("-o")
            .arg(&optimized),
    )?;
    // A separate run: the renaming must happen exactly once, and it prints
    // the old and new names on stdout.
    let names_path = stage.join("wasm-names.json");
    let names_file = std::fs::File::create(&names_path)
        .map_err(|e| format!("cannot create {names_path:?}: {e}"))?;
    Step::new("wasm-opt: short import and export names").run(
        Command::new(&tools.wasm_opt)
            .arg("--minify-imports-and-exports-and-modules")
            .args(WASM_FEATURES)
            .arg(&optimized)
            .arg("-o")
            .arg(stage.join("weft.wasm"))
            .stdout(names_file),
    )?;

    let wasm_out = std::fs::read(stage.join("weft.wasm"))
        .map_err(|e| format!("cannot read the renamed wasm: {e}"))?;
    let glue = import_module(&wasm_out)
        .and_then(|module| {
            rename_in_glue(
                &read(&stage.join("weft_sdk.js"))?,
                &read(&names_path)?,
                &module,
            )
        })
        .map_err(|e| format!("renaming the glue's wasm imports and exports: {e}"))?;
    // The loader never calls `initSync`; unexported, terser drops it.
    let glue = replace_once(
        &glue,
        "Object.assign(__wbg_init, { initSync }, exports)",
        "Object.assign(__wbg_init, exports)",
    )?;
    let loader = read(&root.join("sdk-wasm/js/loader.js"))?;
    let bundle = format!("(function(){{\"use strict\";\n{glue}\n{loader}\n}})();\n");
    let unminified = stage.join("weft.bundle.js");
    write(&unminified, bundle.as_bytes())?;
    Step::new("terser (minify weft.js)").run(
        Command::new(&tools.terser)
            .arg(&unminified)
            .args([
                "--compress",
                "passes=2",
                "--mangle",
                "--ecma",
                "2017",
                "--output",
            ])
            .arg(stage.join("weft.js")),
    )?;

    // Only now, with both built, do they replace the served pair: the wasm's
    // names and the glue's must match.
    let mut files = Vec::new();
    for name in ["weft.js", "weft.wasm"] {
        let path = stage.join(name);
        let data = std::fs::read(&path).map_err(|e| format!("cannot read {path:?}: {e}"))?;
        write(&out.join(name), &data)?;
        let gz = gzip(&data);
        let br = brotli(&data);
        write(&out.join(format!("{name}.gz")), &gz)?;
        write(&out.join(format!("{name}.br")), &br)?;
        files.push(FileSize {
            name,
            raw: data.len(),
            gzip: gz.len(),
            brotli: br.len(),
        });
    }
    let report = SizeReport { files };
    eprintln!("\n{}", report.summary());
    Ok(report)
}

/// `text` with its one occurrence of `from` replaced; an error if `from`
/// is not there exactly once (the glue changed shape).
fn replace_once(text: &str, from: &str, to: &str) -> Result<String, String> {
    match text.matches(from).count() {
        1 => Ok(text.replacen(from, to, 1)),
        n => Err(format!(
            "expected `{from}` once in the glue, found it {n} times"
        )),
    }
}

/// "under by N" or "over by N", for the summary.
fn against(total: usize, limit: usize) -> String {
    if total <= limit {
        format!("under by {}", limit - total)
    } else {
        format!("OVER by {}", total - limit)
    }
}

/// Applies wasm-opt's renaming (`names`, the JSON it prints) to the
/// wasm-bindgen glue: the keys of the imports object, the module name they
/// are given under (`module`, read from the renamed wasm) and every
/// `wasm.<export>`.
///
/// Fails unless each import name is an imports-object key exactly once,
/// there is one module, and every `wasm.<name>` in the glue is a renamed
/// export.
fn rename_in_glue(glue: &str, names: &str, module: &str) -> Result<String, String> {
    let mut imports = Vec::new();
    let mut exports = std::collections::HashMap::new();
    for line in names.lines() {
        // Lines are `["module", "old", "new"],` (imports) or
        // `["old", "new"],` (exports); names have no quotes or escapes.
        if !line.trim_start().starts_with('[') {
            continue;
        }
        let quoted: Vec<&str> = line.split('"').skip(1).step_by(2).collect();
        match quoted[..] {
            [old_module, old, new] => imports.push((old_module, old, new)),
            [old, new] => {
                exports.insert(old, new);
            }
            _ => return Err(format!("unexpected line in wasm-opt's names: {line}")),
        }
    }
    let Some(&(old_module, _, _)) = imports.first() else {
        return Err("wasm-opt renamed no imports".into());
    };
    if imports.iter().any(|(m, _, _)| *m != old_module) {
        return Err("imports from more than one module".into());
    }

    let mut glue = glue.to_owned();
    for (_, old, new) in &imports {
        glue = replace_once(&glue, &format!("{old}:"), &format!("{new}:"))?;
    }
    glue = replace_once(
        &glue,
        &format!("\"{old_module}\":"),
        &format!("\"{module}\":"),
    )?;

    // Every `wasm.<identifier>`, where `wasm` is a whole identifier.
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '$';
    let mut out = String::with_capacity(glue.len());
    let mut rest = glue.as_str();
    while let Some(at) = rest.find("wasm.") {
        let (before, after) = rest.split_at(at);
        out.push_str(before);
        let after = &after["wasm.".len()..];
        let whole = !out.ends_with(is_ident);
        let len = after.find(|c: char| !is_ident(c)).unwrap_or(after.len());
        let (name, tail) = after.split_at(len);
        out.push_str("wasm.");
        if whole {
            let Some(new) = exports.get(name) else {
                return Err(format!(
                    "the glue uses export `{name}`, which was not renamed"
                ));
            };
            out.push_str(new);
        } else {
            out.push_str(name);
        }
        rest = tail;
    }
    out.push_str(rest);
    Ok(out)
}

/// The module name of the wasm's imports (all of them, checked), read from
/// its import section.
fn import_module(wasm: &[u8]) -> Result<String, String> {
    struct Reader<'a>(&'a [u8]);
    impl<'a> Reader<'a> {
        fn byte(&mut self) -> Result<u8, String> {
            let (&b, rest) = self.0.split_first().ok_or("truncated wasm")?;
            self.0 = rest;
            Ok(b)
        }
        fn leb(&mut self) -> Result<usize, String> {
            let mut value = 0usize;
            for shift in (0..35).step_by(7) {
                let b = self.byte()?;
                value |= usize::from(b & 0x7f) << shift;
                if b & 0x80 == 0 {
                    return Ok(value);
                }
            }
            Err("bad LEB128 in wasm".into())
        }
        fn bytes(&mut self, n: usize) -> Result<&'a [u8], String> {
            if n > self.0.len() {
                return Err("truncated wasm".into());
            }
            let (head, rest) = self.0.split_at(n);
            self.0 = rest;
            Ok(head)
        }
        fn name(&mut self) -> Result<&'a str, String> {
            let n = self.leb()?;
            std::str::from_utf8(self.bytes(n)?).map_err(|_| "non-UTF-8 name in wasm".to_string())
        }
    }

    let mut r = Reader(wasm);
    if r.bytes(8)? != b"\0asm\x01\0\0\0" {
        return Err("not a wasm module".into());
    }
    while !r.0.is_empty() {
        let id = r.byte()?;
        let size = r.leb()?;
        let mut section = Reader(r.bytes(size)?);
        if id != 2 {
            continue;
        }
        let mut module = None;
        for _ in 0..section.leb()? {
            let m = section.name()?;
            section.name()?;
            // Only function imports (kind 0, then a type index) are expected.
            if section.byte()? != 0 {
                return Err("an import that is not a function".into());
            }
            section.leb()?;
            match module {
                None => module = Some(m),
                Some(first) if first != m => return Err("imports from two modules".into()),
                Some(_) => {}
            }
        }
        return module.map(str::to_owned).ok_or_else(|| "no imports".into());
    }
    Err("no import section".into())
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {path:?}: {e}"))
}

fn write(path: &Path, data: &[u8]) -> Result<(), String> {
    std::fs::write(path, data).map_err(|e| format!("cannot write {path:?}: {e}"))
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).expect("writing to memory");
    e.finish().expect("writing to memory")
}

fn brotli(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let params = brotli::enc::BrotliEncoderParams {
        quality: 11,
        lgwin: 22,
        ..Default::default()
    };
    brotli::BrotliCompress(&mut &data[..], &mut out, &params).expect("compressing in memory");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: &str = r#"{
 "imports": [
  ["./weft_sdk_bg.js", "__wbg_fetch_21015a0a4570ab44", "a"],
  ["./weft_sdk_bg.js", "__wbindgen_init_externref_table", "b"]
 ],
"exports": [
  ["memory", "A"],
  ["start", "B"]
 ]
}"#;

    const GLUE: &str = r#"function start(k) { wasm.start(k); }
const import0 = {
    __wbg_fetch_21015a0a4570ab44: function(a) { return fetch(a); },
    __wbindgen_init_externref_table: function() {},
};
return { "./weft_sdk_bg.js": import0 };
new DataView(wasm.memory.buffer); wasmModule = 1;"#;

    #[test]
    fn glue_gets_the_wasms_new_names() {
        let glue = rename_in_glue(GLUE, NAMES, "m").unwrap();
        assert!(glue.contains("function start(k) { wasm.B(k); }"), "{glue}");
        assert!(glue.contains("    a: function(a) { return fetch(a); },"));
        assert!(glue.contains("    b: function() {},"));
        assert!(glue.contains(r#"return { "m": import0 };"#));
        assert!(glue.contains("new DataView(wasm.A.buffer); wasmModule = 1;"));
    }

    #[test]
    fn glue_of_another_shape_fails_the_build() {
        let unknown_export = GLUE.replace("wasm.start(k)", "wasm.stop(k)");
        assert!(rename_in_glue(&unknown_export, NAMES, "m").is_err());
        let missing_import = GLUE.replace("__wbg_fetch_21015a0a4570ab44:", "fetch:");
        assert!(rename_in_glue(&missing_import, NAMES, "m").is_err());
        let quoted_keys = GLUE.replace("__wbindgen_init_externref_table:", "\"x\":");
        assert!(rename_in_glue(&quoted_keys, NAMES, "m").is_err());
    }

    #[test]
    fn import_module_is_read_from_the_import_section() {
        // A type section with `() -> ()`, then two function imports.
        let mut wasm = b"\0asm\x01\0\0\0\x01\x04\x01\x60\0\0".to_vec();
        wasm.extend([0x02, 0x0d, 0x02]);
        wasm.extend([1, b'a', 1, b'f', 0, 0]);
        wasm.extend([1, b'a', 1, b'g', 0, 0]);
        assert_eq!(import_module(&wasm).unwrap(), "a");

        let mut two_modules = wasm.clone();
        let last_module = two_modules.len() - 5;
        two_modules[last_module] = b'b';
        assert!(import_module(&two_modules).is_err());
        assert!(import_module(b"\0asm\x01\0\0\0").is_err());
        assert!(import_module(b"not wasm").is_err());
    }

    #[test]
    fn the_stage_is_next_to_the_output() {
        assert_eq!(
            stage_dir(Path::new("/w/target/sdk")),
            Path::new("/w/target/sdk-stage")
        );
        assert_eq!(stage_dir(Path::new("/tmp/b/")), Path::new("/tmp/b-stage"));
    }
}
