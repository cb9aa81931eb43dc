//! Building the SDK bundle the script tag downloads, and measuring it.
//!
//! Pipeline: cargo (wasm32, `wasm-release` profile) -> wasm-bindgen (for
//! the wasm; its JS glue is not used) -> wasm-opt `-Oz`, without the
//! exports the loader never calls -> wasm-opt renaming the module's imports
//! and exports to one or two letters -> `weft.js`: `sdk-wasm/js/loader.js`
//! (with the same names) in a function scope, minified by terser -> `.gz`
//! and `.br` twins that the collector serves.
//!
//! The loader is its own glue: the few types that cross (text, numbers,
//! flags) in wasm-bindgen's ABI, in far fewer bytes than wasm-bindgen's
//! general glue. When a page's Content-Security-Policy refuses to compile
//! wasm, it loads `weft-fallback.js` instead: binaryen's `wasm2js`
//! translation of the same final `weft.wasm` (see [`fallback`]), with the
//! same imports and exports, so one glue drives either. Only strict-CSP
//! pages download it, so it is reported on its own line and not counted in
//! the budget.
//!
//! The renaming matters: wasm-bindgen names each import after its JS name
//! plus a 16-hex-digit hash, and each name is in both files, where it
//! compresses badly (about 1.4 KB gzip in all). wasm-opt's
//! `--minify-imports-and-exports-and-modules` prints the old and new names;
//! [`rename_in_loader`] applies them to the loader and fails the build
//! unless the loader's `weftHost` has exactly the module's imports, so a
//! changed import (or a wasm-bindgen upgrade) cannot ship a broken bundle.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cmd::{Step, cargo};
use crate::tools::Tools;

/// Where the built SDK goes by default (relative to the workspace root);
/// `WEFT_SDK_DIR` overrides it (see [`out_dir`]).
pub const OUT_DIR: &str = "target/sdk";
/// The script tag's total download, gzip -9, above which the build fails:
/// what the SDK measured when it was set (15,349 B) and a small margin
/// under the goal, so it cannot creep back over it.
pub const BUDGET_GZIP_BYTES: usize = 15_349 + 5;
/// The total the SDK aims for, gzip -9; reported, not enforced.
pub const GOAL_GZIP_BYTES: usize = 15 * 1024;

/// wasm-bindgen's exports that the loader never calls (its own glue's
/// string reallocation and freeing, its abort-handler and termination
/// flags, its table of JS values, which no JS value uses, and the start
/// function that would set that table up, checked by [`start_only_sets_up_the_table`]):
/// removed before optimising, so what only they reach goes too.
const UNUSED_EXPORTS: &str = "__wbindgen_realloc,__wbindgen_free,__abort_handler,\
                              __instance_terminated,__wbindgen_externrefs,__wbindgen_start";

/// Between `-Oz` runs: the control flow flattened and rebuilt by
/// binaryen's relooper, which finds a smaller shape for the `match`es that
/// rustc lowers to branch tables (twice: 116 B gzip less than one plain
/// `-Oz --converge`, once: 86 B).
const REFLOW: [&str; 3] = ["--flatten", "--rereloop", "-Oz"];

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

/// Sizes of everything the script tag downloads, and of the strict-CSP
/// fallback (downloaded instead of `weft.wasm` on such pages only).
pub struct SizeReport {
    files: Vec<FileSize>,
    fallback: FileSize,
}

impl SizeReport {
    fn total(&self, f: impl Fn(&FileSize) -> usize) -> usize {
        self.files.iter().map(f).sum()
    }

    /// A table of raw, gzip -9 and brotli sizes.
    pub fn summary(&self) -> String {
        let mut out = String::from("SDK download (what the script tag fetches):\n");
        out.push_str(&format!(
            "  {:<16} {:>9} {:>9} {:>9}\n",
            "file", "raw", "gzip -9", "brotli"
        ));
        for f in &self.files {
            out.push_str(&format!(
                "  {:<16} {:>9} {:>9} {:>9}\n",
                f.name, f.raw, f.gzip, f.brotli
            ));
        }
        let gzip = self.total(|f| f.gzip);
        out.push_str(&format!(
            "  {:<16} {:>9} {:>9} {:>9}\n",
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
        let f = &self.fallback;
        out.push_str(&format!(
            "  {:<16} {:>9} {:>9} {:>9}  (strict-CSP pages only, instead of weft.wasm; not in the budget)\n",
            f.name, f.raw, f.gzip, f.brotli
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
    // `--no-default-features`: without `std` (see sdk-wasm/Cargo.toml).
    Step::new("build the SDK (wasm32, size profile, no_std)").run(cargo(root).args([
        "build",
        "-p",
        "weft-sdk",
        "--no-default-features",
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
    // Only its wasm is used (the loader is the glue).
    Step::new("wasm-bindgen").run(
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
    let bindgen_wat = stage.join("weft_sdk_bg.wat");
    Step::new("wasm-dis: wasm-bindgen's module as text").run(
        Command::new(&tools.wasm_dis)
            .arg(stage.join("weft_sdk_bg.wasm"))
            .arg("-o")
            .arg(&bindgen_wat),
    )?;
    if !start_only_sets_up_the_table(&read(&bindgen_wat)?) {
        return Err(
            "wasm-bindgen's `__wbindgen_start` does more than set up its table of \
                    JS values (a `#[wasm_bindgen(start)]`?): the loader must call it"
                .into(),
        );
    }
    let optimized = stage.join("weft_sdk_opt.wasm");
    Step::new("wasm-opt -Oz").run(
        Command::new(&tools.wasm_opt)
            .arg("--remove-exports")
            .arg(format!("--pass-arg=remove-exports@{UNUSED_EXPORTS}"))
            .args(["-Oz"])
            .args(REFLOW)
            .args(REFLOW)
            .args(["--converge", "--low-memory-unused"])
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
    let loader = read(&root.join("sdk-wasm/js/loader.js"))?;
    let loader = import_module(&wasm_out)
        .and_then(|module| rename_in_loader(&loader, &read(&names_path)?, &module))
        .map_err(|e| format!("renaming the loader's wasm imports and exports: {e}"))?;
    let bundle = format!("(function(){{\"use strict\";\n{loader}\n}})();\n");
    let unminified = stage.join("weft.bundle.js");
    write(&unminified, bundle.as_bytes())?;
    // `unsafe_arrows`: function expressions that use neither `this` nor
    // `arguments` become arrows (every browser that runs the wasm has
    // them): 47 bytes gzip. `unsafe_methods`: functions in object literals
    // become methods (`weftHost`'s; none is ever called with `new`): 8.
    Step::new("terser (minify weft.js)").run(
        Command::new(&tools.terser)
            .arg(&unminified)
            .args([
                "--compress",
                "passes=2,unsafe_arrows=true,unsafe_methods=true",
                "--mangle",
                "--ecma",
                "2017",
                "--output",
            ])
            .arg(stage.join("weft.js")),
    )?;

    fallback::build(&stage, tools)?;

    // Only now, with all three built, do they replace the served files: the
    // names in the wasm, the fallback and the glue must match.
    let mut files = Vec::new();
    for name in ["weft.js", "weft.wasm", "weft-fallback.js"] {
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
    // The API's TypeScript declarations, served beside the SDK.
    let types = root.join("sdk-wasm/js/weft.d.ts");
    let types = std::fs::read(&types).map_err(|e| format!("cannot read {types:?}: {e}"))?;
    write(&out.join("weft.d.ts"), &types)?;
    let fallback = files.pop().expect("three files");
    let report = SizeReport { files, fallback };
    eprintln!("\n{}", report.summary());
    Ok(report)
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
/// loader: the keys of its `weftHost` object (the imports, each under the
/// name Rust gives it: wasm-bindgen's `__wbg_<name>_<hash>` is `<name>`),
/// and every `wasm.<export>`.
///
/// Fails unless `weftHost`'s keys are exactly the imports, the imports come
/// from one module, named `a` (the loader's `imports` object says so), and
/// every `wasm.<name>` in the loader is a renamed export.
fn rename_in_loader(loader: &str, names: &str, module: &str) -> Result<String, String> {
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
    const IMPORTS: &str = "var imports = { a: weftHost };";
    if module != "a" || loader.matches(IMPORTS).count() != 1 {
        return Err(format!(
            "the module is `{module}`; the loader must say `{IMPORTS}` once, with that name"
        ));
    }

    // `weftHost`'s keys: its lines indented by two spaces, `name: `.
    const HOST: &str = "\nvar weftHost = {\n";
    // From the newline before the first key.
    let start = find_once(loader, HOST)? + HOST.len() - 1;
    let end = start
        + loader[start..]
            .find("\n};\n")
            .ok_or("`var weftHost = {` is not closed by `};`")?;
    let mut host = loader[start..end].to_owned();
    let mut keys: Vec<&str> = loader[start..end]
        .lines()
        .filter_map(|l| l.strip_prefix("  ")?.split_once(": ").map(|(k, _)| k))
        .filter(|k| k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .collect();
    keys.sort_unstable();
    let mut wanted: Vec<&str> = imports.iter().map(|(_, old, _)| rust_name(old)).collect();
    wanted.sort_unstable();
    if keys != wanted {
        return Err(format!(
            "`weftHost`'s keys are {keys:?}, the wasm's imports {wanted:?}"
        ));
    }
    for (_, old, new) in &imports {
        let key = format!("\n  {}: ", rust_name(old));
        if host.matches(&key).count() != 1 {
            return Err(format!("`weftHost` must have the key of `{old}` once"));
        }
        host = host.replacen(&key, &format!("\n  {new}: "), 1);
    }
    let loader = format!("{}{host}{}", &loader[..start], &loader[end..]);

    // Every `wasm.<identifier>`, where `wasm` is a whole identifier.
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '$';
    let mut out = String::with_capacity(loader.len());
    let mut rest = loader.as_str();
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
                    "the loader uses export `{name}`, which was not renamed"
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

/// Whether the module's `__wbindgen_start` export (in wasm-dis text) is
/// wasm-bindgen's import `__wbindgen_init_externref_table` itself: all it
/// does is set up the table of JS values.
fn start_only_sets_up_the_table(wat: &str) -> bool {
    let func = |line: &str, head: &str| -> Option<String> {
        let rest = line.trim().strip_prefix(head)?;
        let name = rest.strip_prefix("(func ")?;
        let end = name.find([' ', ')'])?;
        Some(name[..end].to_owned())
    };
    let start = wat
        .lines()
        .find_map(|l| func(l, "(export \"__wbindgen_start\" "));
    let init = wat.lines().find_map(|l| {
        let (_, rest) = l.split_once("\"__wbindgen_init_externref_table\" ")?;
        l.trim().starts_with("(import ").then(|| func(rest, ""))?
    });
    start.is_some() && start == init
}

/// The name Rust gives an import: wasm-bindgen's `__wbg_<name>_<hash>`
/// without its prefix and 16-hex-digit hash (its own imports keep their
/// `__wbindgen_` names).
fn rust_name(import: &str) -> &str {
    let Some(name) = import.strip_prefix("__wbg_") else {
        return import;
    };
    match name.rsplit_once('_') {
        Some((name, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            name
        }
        _ => name,
    }
}

/// Where `what` is in `text`, if it is there exactly once.
fn find_once(text: &str, what: &str) -> Result<usize, String> {
    match (text.find(what), text.matches(what).count()) {
        (Some(at), 1) => Ok(at),
        (_, n) => Err(format!("expected `{what}` once, found it {n} times")),
    }
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

pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).expect("writing to memory");
    e.finish().expect("writing to memory")
}

pub(crate) fn brotli(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let params = brotli::enc::BrotliEncoderParams {
        quality: 11,
        lgwin: 22,
        ..Default::default()
    };
    brotli::BrotliCompress(&mut &data[..], &mut out, &params).expect("compressing in memory");
    out
}

mod fallback {
    //! The strict-CSP fallback, `weft-fallback.js`: the final `weft.wasm`
    //! made plain JavaScript by binaryen's `wasm2js`.
    //!
    //! Why this is more than one `wasm2js` call: wasm2js translates one
    //! funcref table and no other, and its saturating float-to-int
    //! conversions are wrong out of range. Rust's wasm has both, so the
    //! module is lowered first, in its text form (binaryen's printer is
    //! pinned with binaryen, and every rewrite checks that it found what it
    //! expects, so a changed module fails the build instead of shipping a
    //! broken fallback):
    //!
    //! - wasm-bindgen's externref table (the JS values Rust holds) becomes
    //!   four imports, `table.get/set/grow/size`, backed by a JS array in
    //!   `weft-fallback.js`, which also hands the glue a Table-like object
    //!   under the table's export name;
    //! - `trunc_sat` conversions (Rust's `as` from floats) become calls of small
    //!   wasm functions with the same saturating results, and wasm2js runs
    //!   with that feature disabled, so one left behind fails validation.
    //!
    //! What wasm2js translates itself was checked against real wasm in Node
    //! (random and edge inputs): sign extension, `memory.copy`,
    //! `memory.fill` and `memory.grow`; and the eight conversions of
    //! [`trunc_sat_helper`].
    //!
    //! wasm2js then writes an ES module; [`wrap`] turns it into a classic
    //! script that defines no global: it hands its instantiate function to
    //! `document.currentScript.weft`, which `sdk-wasm/js/loader.js` set.

    use std::path::Path;
    use std::process::Command;

    use super::{read, write};
    use crate::cmd::Step;
    use crate::tools::Tools;

    /// The import module of the lowered externref table.
    const TABLE_MODULE: &str = "table";
    /// What the lowered module still needs from wasm2js: everything rustc
    /// enables but the saturating conversions, which [`lower`] removes.
    const FEATURES: [&str; 6] = [
        "--enable-bulk-memory",
        "--disable-nontrapping-float-to-int",
        "--enable-sign-ext",
        "--enable-mutable-globals",
        "--enable-reference-types",
        "--enable-multivalue",
    ];
    /// V8's limit on a table's length, used when the table states no maximum.
    const TABLE_LIMIT: u32 = 10_000_000;

    /// Builds `stage/weft-fallback.js` from `stage/weft.wasm`.
    pub fn build(stage: &Path, tools: &Tools) -> Result<(), String> {
        let printed = stage.join("weft.wat");
        Step::new("wasm-dis: weft.wasm as text (for the fallback)").run(
            Command::new(&tools.wasm_dis)
                .arg(stage.join("weft.wasm"))
                .arg("-o")
                .arg(&printed),
        )?;
        let lowered =
            lower(&read(&printed)?).map_err(|e| format!("lowering weft.wasm for wasm2js: {e}"))?;
        let wat = stage.join("weft-fallback.wat");
        write(&wat, lowered.wat.as_bytes())?;
        let module = stage.join("weft-fallback.mjs");
        // `-Os`, not `-Oz`: binaryen 132's `-Oz` inside wasm2js can merge
        // similar functions into thunks with `call_ref`/`return_call`,
        // which wasm2js then cannot translate (seen on this module).
        Step::new("wasm2js -Os (strict-CSP fallback)").run(
            Command::new(&tools.wasm2js)
                .arg(&wat)
                .args(FEATURES)
                .arg("-Os")
                .arg("-o")
                .arg(&module),
        )?;
        let script = wrap(&read(&module)?, lowered.table.as_ref())
            .map_err(|e| format!("wrapping wasm2js's output: {e}"))?;
        let unminified = stage.join("weft-fallback.bundle.js");
        write(&unminified, script.as_bytes())?;
        Step::new("terser (minify weft-fallback.js)").run(
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
                .arg(stage.join("weft-fallback.js")),
        )
    }

    /// The module, lowered for wasm2js.
    pub struct Lowered {
        /// Its text.
        pub wat: String,
        /// The externref table that became imports, if it had one.
        pub table: Option<ExternrefTable>,
    }

    /// An externref table replaced by imports.
    #[derive(Debug, PartialEq)]
    pub struct ExternrefTable {
        /// Its initial length.
        pub initial: u32,
        /// Its maximum length, if stated.
        pub max: Option<u32>,
        /// The name it was exported under, if it was.
        pub export: Option<String>,
    }

    /// Lowers binaryen's text of a module for wasm2js (see the module docs).
    pub fn lower(wat: &str) -> Result<Lowered, String> {
        if wat.contains("$weft_") {
            return Err("the module already has `$weft_` names".into());
        }
        check_no_i64_at_the_boundary(wat)?;
        let (wat, table) = lower_externref_table(wat)?;
        let wat = lower_trunc_sat(&wat)?;
        Ok(Lowered { wat, table })
    }

    /// Fails if an imported or exported function takes or returns an i64
    /// (a BigInt in JS): wasm2js splits those into two i32s, so its exports
    /// would no longer match what the glue passes.
    fn check_no_i64_at_the_boundary(wat: &str) -> Result<(), String> {
        let lines: Vec<&str> = wat.lines().collect();
        // A signature given as `(type $N)` is the type's declaration.
        let signature = |line: &str| -> String {
            let mut sig = line.to_owned();
            if let Some(at) = line.find("(type $") {
                let name = &line[at + "(type ".len()..];
                let name = &name[..name.find(')').unwrap_or(name.len())];
                let decl = format!(" (type {name} ");
                if let Some(t) = lines.iter().find(|l| l.starts_with(&decl)) {
                    sig.push_str(t);
                }
            }
            sig
        };
        let has_i64 = |text: &str| text.split([' ', '(', ')']).any(|token| token == "i64");
        for line in &lines {
            let boundary = if line.starts_with(" (import ") && line.contains("(func ") {
                Some(signature(line))
            } else if let Some(name) = line
                .strip_prefix(" (export \"")
                .and_then(|l| l.split_once("\" (func "))
                .and_then(|(_, f)| f.strip_suffix("))"))
            {
                let decl = format!(" (func {name} ");
                let bare = format!(" (func {name}");
                lines
                    .iter()
                    .find(|l| l.starts_with(&decl) || **l == bare)
                    .map(|l| signature(l))
            } else {
                None
            };
            if boundary.is_some_and(|sig| has_i64(&sig)) {
                return Err(format!(
                    "`{}` passes an i64 to or from JS, which wasm2js splits in two i32s",
                    line.trim()
                ));
            }
        }
        Ok(())
    }

    /// Replaces the one externref table, if any, by imported functions.
    fn lower_externref_table(wat: &str) -> Result<(String, Option<ExternrefTable>), String> {
        let mut found = None;
        for line in wat.lines() {
            let Some(decl) = line
                .strip_prefix(" (table ")
                .and_then(|d| d.strip_suffix(" externref)"))
            else {
                continue;
            };
            if found.is_some() {
                return Err("more than one externref table".into());
            }
            let parts: Vec<&str> = decl.split(' ').collect();
            let number = |s: &str| {
                s.parse::<u32>()
                    .map_err(|_| format!("unexpected table declaration `{line}`"))
            };
            let (name, initial, max) = match parts[..] {
                [name, initial] => (name, number(initial)?, None),
                [name, initial, max] => (name, number(initial)?, Some(number(max)?)),
                _ => return Err(format!("unexpected table declaration `{line}`")),
            };
            if !name.starts_with('$') {
                return Err(format!("unexpected table declaration `{line}`"));
            }
            found = Some((line, name, initial, max));
        }
        let Some((decl, name, initial, max)) = found else {
            return Ok((wat.to_owned(), None));
        };
        if wat.contains(&format!(" (import \"{TABLE_MODULE}\" ")) {
            return Err(format!("the module already imports from `{TABLE_MODULE}`"));
        }

        let mut export = None;
        let export_suffix = format!(" (table {name}))");
        let mut out = String::with_capacity(wat.len());
        let mut imports_end = None;
        for line in wat.lines() {
            if line == decl {
                continue;
            }
            if let Some(export_name) = line
                .strip_prefix(" (export \"")
                .and_then(|l| l.strip_suffix(&export_suffix))
                .and_then(|l| l.strip_suffix('"'))
            {
                export = Some(export_name.to_owned());
                continue;
            }
            out.push_str(line);
            out.push('\n');
            if line.starts_with(" (import ") {
                imports_end = Some(out.len());
            }
        }
        let imports_end = imports_end.ok_or("the module has no imports to add the table's to")?;
        out.insert_str(
            imports_end,
            &format!(
                " (import \"{TABLE_MODULE}\" \"get\" (func $weft_table_get (param i32) (result externref)))\n \
                 (import \"{TABLE_MODULE}\" \"set\" (func $weft_table_set (param i32 externref)))\n \
                 (import \"{TABLE_MODULE}\" \"grow\" (func $weft_table_grow (param externref i32) (result i32)))\n \
                 (import \"{TABLE_MODULE}\" \"size\" (func $weft_table_size (result i32)))\n"
            ),
        );
        for op in ["get", "set", "grow", "size"] {
            out = replace_instruction(
                &out,
                &format!("(table.{op} {name}"),
                &format!("(call $weft_table_{op}"),
            );
        }
        // Anything else naming the table (table.fill, table.copy, an elem
        // segment) has no lowering here.
        for (at, _) in out.match_indices(name) {
            let before = &out[..at];
            // The instruction or keyword before the name.
            let word = before.trim_end().rsplit(['(', ' ', '\n']).next();
            let after = out[at + name.len()..].chars().next();
            let whole = matches!(after, None | Some(' ' | ')' | '\n'));
            if whole && word.is_some_and(|w| w.starts_with("table")) {
                let line_start = before.rfind('\n').map_or(0, |i| i + 1);
                let line_end = out[at..].find('\n').map_or(out.len(), |i| at + i);
                return Err(format!(
                    "the externref table is used in a way with no lowering: `{}`",
                    out[line_start..line_end].trim()
                ));
            }
        }
        Ok((
            out,
            Some(ExternrefTable {
                initial,
                max,
                export,
            }),
        ))
    }

    /// The wasm function replacing the saturating conversion `int.trunc_sat_
    /// float_sign` (e.g. `i64.trunc_sat_f64_u`): out of range gives the
    /// nearest bound, NaN gives 0, as in wasm (and Rust's `as`); in range it
    /// is the trapping conversion, which wasm2js translates.
    fn trunc_sat_helper(int: &str, float: &str, signed: bool) -> String {
        let bits = if int == "i64" { 64 } else { 32 };
        let sign = if signed { "s" } else { "u" };
        // Bounds as hex floats: exact in f32 and f64.
        let (upper, max, lower_test, otherwise) = if signed {
            let (max, min) = if bits == 64 {
                (i64::MAX.to_string(), i64::MIN.to_string())
            } else {
                (i32::MAX.to_string(), i32::MIN.to_string())
            };
            (
                format!("0x1p{}", bits - 1),
                max,
                format!(
                    "({float}.ge (local.get $x) ({float}.const -0x1p{}))",
                    bits - 1
                ),
                format!(
                    "(if (result {int}) ({float}.eq (local.get $x) (local.get $x)) \
                     (then ({int}.const {min})) (else ({int}.const 0)))"
                ),
            )
        } else {
            (
                format!("0x1p{bits}"),
                "-1".to_owned(),
                format!("({float}.gt (local.get $x) ({float}.const -1))"),
                format!("({int}.const 0)"),
            )
        };
        format!(
            "(func $weft_{int}_trunc_sat_{float}_{sign} (param $x {float}) (result {int})
  (if (result {int}) ({float}.ge (local.get $x) ({float}.const {upper}))
   (then ({int}.const {max}))
   (else (if (result {int}) {lower_test}
    (then ({int}.trunc_{float}_{sign} (local.get $x)))
    (else {otherwise})))))"
        )
    }

    /// Replaces each scalar `trunc_sat` by a call of an equivalent function.
    fn lower_trunc_sat(wat: &str) -> Result<String, String> {
        let mut out = wat.to_owned();
        let mut helpers = String::new();
        for int in ["i32", "i64"] {
            for float in ["f32", "f64"] {
                for signed in [false, true] {
                    let sign = if signed { "s" } else { "u" };
                    let op = format!("{int}.trunc_sat_{float}_{sign}");
                    let call = format!("(call $weft_{int}_trunc_sat_{float}_{sign}");
                    let replaced = replace_instruction(&out, &format!("({op}"), &call);
                    if replaced != out {
                        out = replaced;
                        helpers.push(' ');
                        helpers.push_str(&trunc_sat_helper(int, float, signed));
                        helpers.push('\n');
                    }
                }
            }
        }
        if let Some(at) = out.find(".trunc_sat_") {
            let end = out[at..]
                .find(['\n', ' ', ')'])
                .map_or(out.len(), |i| at + i);
            return Err(format!("`{}` has no lowering here", &out[at..end]));
        }
        // Before the module's closing parenthesis.
        let end = out
            .trim_end()
            .strip_suffix(')')
            .ok_or("the module text does not end with `)`")?
            .len();
        out.insert_str(end, &helpers);
        Ok(out)
    }

    /// `text` with every instruction `from` (followed by a space, a newline or
    /// `)`, so `$1` is not `$10`) replaced by `to`.
    fn replace_instruction(text: &str, from: &str, to: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(at) = rest.find(from) {
            let after = &rest[at + from.len()..];
            out.push_str(&rest[..at]);
            if matches!(after.chars().next(), None | Some(' ' | ')' | '\n')) {
                out.push_str(to);
            } else {
                out.push_str(from);
            }
            rest = after;
        }
        out.push_str(rest);
        out
    }

    /// wasm2js's ES module as a classic script that defines no global: it
    /// passes `make(imports) -> exports` to `document.currentScript.weft`.
    pub fn wrap(module: &str, table: Option<&ExternrefTable>) -> Result<String, String> {
        let (head, tail) = module
            .split_once("\nvar retasmFunc = asmFunc(")
            .ok_or("no `var retasmFunc = asmFunc(`")?;
        // After the module's own instantiation, only its exports.
        for line in tail.lines().skip(1) {
            let known = line.is_empty()
                || line == "});"
                || (line.starts_with("  \"") && line.ends_with(','))
                || line.starts_with("export var ");
            if !known {
                return Err(format!("unexpected line after asmFunc: `{line}`"));
            }
        }
        let mut body = String::with_capacity(head.len());
        for line in head.lines() {
            if line.starts_with("import * as ") {
                continue;
            }
            if line.starts_with("import ") || line.starts_with("export ") {
                return Err(format!("unexpected module syntax: `{line}`"));
            }
            body.push_str(line);
            body.push('\n');
        }
        if !body.contains("\nfunction asmFunc(imports) {") {
            return Err("no `function asmFunc(imports)`".into());
        }
        let make = match table {
            None => "return asmFunc(imports);".to_owned(),
            Some(t) => {
                let limit = t.max.unwrap_or(TABLE_LIMIT);
                let export = t.export.as_ref().map_or(String::new(), |name| {
                    format!(
                        "exports[{name:?}] = {{ get: get, set: set, \
                         grow: function (n, v) {{ return grow(v, n); }}, \
                         get length() {{ return t.length; }} }};\n"
                    )
                });
                format!(
                    "var t = [], n = {initial};
while (n--) t.push(null);
var get = function (i) {{ return t[i]; }};
var set = function (i, v) {{ t[i] = v; }};
var grow = function (v, n) {{
  var old = t.length;
  n >>>= 0;
  if (old + n > {limit}) return -1;
  while (n--) t.push(v);
  return old;
}};
var size = function () {{ return t.length; }};
var exports = asmFunc(Object.assign({{ {TABLE_MODULE}: {{ get: get, set: set, grow: grow, size: size }} }}, imports));
{export}return exports;",
                    initial = t.initial
                )
            }
        };
        Ok(format!(
            "(function () {{\n\"use strict\";\n{body}\
             var script = document.currentScript;\n\
             if (script && script.weft) script.weft(function (imports) {{\n{make}\n}});\n\
             }})();\n"
        ))
    }
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

    const LOADER: &str = r#"var x = { fetch: 1 };
var weftHost = {
  // A comment.
  fetch: function (p, n) {
    return { start: 1 };
  },
  __wbindgen_init_externref_table: function () {}
};
var imports = { a: weftHost };
wasm.start(1); new DataView(wasm.memory.buffer);
"#;

    #[test]
    fn the_loader_gets_the_wasms_new_names() {
        let js = rename_in_loader(LOADER, NAMES, "a").unwrap();
        assert!(js.contains("\n  a: function (p, n) {\n"), "{js}");
        assert!(js.contains("\n  b: function () {}\n"), "{js}");
        assert!(
            js.contains("var x = { fetch: 1 };"),
            "only weftHost's keys: {js}"
        );
        assert!(
            js.contains("return { start: 1 };"),
            "only weftHost's keys: {js}"
        );
        assert!(
            js.contains("wasm.B(1); new DataView(wasm.A.buffer);"),
            "{js}"
        );
        assert_eq!(rust_name("__wbg_fetch_21015a0a4570ab44"), "fetch");
        assert_eq!(
            rust_name("__wbg___wbindgen_throw_4c88d8bf264fd984"),
            "__wbindgen_throw"
        );
        assert_eq!(
            rust_name("__wbindgen_init_externref_table"),
            "__wbindgen_init_externref_table"
        );
    }

    #[test]
    fn a_loader_of_another_shape_fails_the_build() {
        let unknown_export = LOADER.replace("wasm.start(1)", "wasm.stop(1)");
        assert!(rename_in_loader(&unknown_export, NAMES, "a").is_err());
        let missing_import = LOADER.replace("  fetch: function", "  load: function");
        assert!(rename_in_loader(&missing_import, NAMES, "a").is_err());
        let extra_key = LOADER.replace("  // A comment.", "  now: Date.now,");
        assert!(rename_in_loader(&extra_key, NAMES, "a").is_err());
        assert!(rename_in_loader(LOADER, NAMES, "m").is_err());
        let no_imports = LOADER.replace("{ a: weftHost }", "{ b: weftHost }");
        assert!(rename_in_loader(&no_imports, NAMES, "a").is_err());
        let no_host = LOADER.replace("var weftHost", "var host");
        assert!(rename_in_loader(&no_host, NAMES, "a").is_err());
    }

    #[test]
    fn the_start_function_is_dropped_only_when_it_is_the_table_set_up() {
        let wat = r#"(module
 (import "./weft_sdk_bg.js" "__wbg_load_37788aab5c87d0a8" (func $fimport$2 (param i32 i32 i32)))
 (import "./weft_sdk_bg.js" "__wbindgen_init_externref_table" (func $fimport$13))
 (export "__wbindgen_start" (func $fimport$13))
)"#;
        assert!(start_only_sets_up_the_table(wat));
        let other = wat.replace("(func $fimport$13))\n)", "(func $42))\n)");
        assert!(!start_only_sets_up_the_table(&other), "{other}");
        let none = wat.replace(" (export \"__wbindgen_start\" (func $fimport$13))\n", "");
        assert!(!start_only_sets_up_the_table(&none));
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

    const WAT: &str = r#"(module
 (type $0 (func (param i32) (result i32)))
 (import "a" "a" (func $fimport$0 (param externref)))
 (import "a" "b" (func $fimport$1 (result f64)))
 (table $0 2 2 funcref)
 (table $1 1028 externref)
 (elem $0 (table $0) (i32.const 0) func $1 $10)
 (export "T" (table $1))
 (export "f" (func $1))
 (func $1 (param $0 i32) (result i32)
  (table.set $1
   (local.get $0)
   (table.get $1
    (i32.const 1)
   )
  )
  (drop
   (table.grow $1
    (ref.null noextern)
    (i32.const 1)
   )
  )
  (call $10
   (i32.trunc_sat_f64_u
    (call $fimport$1)
   )
  )
 )
 (func $10 (param $0 i32) (result i32)
  (i32.add
   (table.size $1)
   (call $1
    (local.get $0)
   )
  )
 )
)
"#;

    #[test]
    fn the_externref_table_becomes_imports() {
        let lowered = fallback::lower(WAT).unwrap();
        assert_eq!(
            lowered.table,
            Some(fallback::ExternrefTable {
                initial: 1028,
                max: None,
                export: Some("T".into()),
            })
        );
        let wat = &lowered.wat;
        assert!(
            !wat.contains("externref)\n") && !wat.contains("(table $1"),
            "{wat}"
        );
        assert!(
            !wat.contains("table.") && !wat.contains("(export \"T\""),
            "{wat}"
        );
        // The new imports follow the old ones; calls replace the instructions.
        let imports = wat.find("(import \"table\" \"get\"").unwrap();
        assert!(imports > wat.find("(import \"a\" \"b\"").unwrap());
        assert!(imports < wat.find("(table $0 2 2 funcref)").unwrap());
        for op in ["get", "set", "grow", "size"] {
            assert!(
                wat.contains(&format!("(call $weft_table_{op}")),
                "{op}: {wat}"
            );
        }
        // Functions and the funcref table named like the externref table
        // are left alone.
        assert!(wat.contains("(call $1\n") && wat.contains("(call $10\n"));
        assert!(wat.contains("(elem $0 (table $0) (i32.const 0) func $1 $10)"));
    }

    #[test]
    fn saturating_conversions_become_calls_of_added_functions() {
        let wat = fallback::lower(WAT).unwrap().wat;
        assert!(!wat.contains(".trunc_sat"), "{wat}");
        assert!(wat.contains("(call $weft_i32_trunc_sat_f64_u\n"));
        assert!(
            wat.trim_end().ends_with("(else (i32.const 0))))))\n)"),
            "{wat}"
        );
        assert_eq!(
            wat.matches("(func $weft_i32_trunc").count(),
            1,
            "only what is used"
        );

        let i64_sat = WAT
            .replace(
                "(i32.trunc_sat_f64_u",
                "(i32.wrap_i64\n(i64.trunc_sat_f64_s",
            )
            .replace("(call $fimport$1)\n", "(call $fimport$1))\n");
        let wat = fallback::lower(&i64_sat).unwrap().wat;
        assert!(wat.contains("(call $weft_i64_trunc_sat_f64_s\n"), "{wat}");
        assert!(
            wat.contains("(then (i64.const 9223372036854775807))"),
            "{wat}"
        );

        let simd = WAT.replace("i32.trunc_sat_f64_u", "i32x4.trunc_sat_f32x4_s");
        assert!(fallback::lower(&simd).is_err());
    }

    #[test]
    fn i64_between_wasm_and_js_fails_the_build() {
        let import = WAT.replace(
            "(func $fimport$1 (result f64))",
            "(func $fimport$1 (result i64))",
        );
        assert!(fallback::lower(&import).is_err());
        let export = WAT.replace(
            " (func $1 (param $0 i32) (result i32)",
            " (func $1 (param $0 i64) (result i32)",
        );
        assert!(fallback::lower(&export).is_err());
        let by_type = WAT
            .replace(
                "(type $0 (func (param i32) (result i32)))",
                "(type $0 (func (param i64)))",
            )
            .replace(
                "(func $fimport$0 (param externref))",
                "(func $fimport$0 (type $0))",
            );
        assert!(fallback::lower(&by_type).is_err());
        // Inside the module, i64 is fine.
        let inside = WAT.replace(" (func $10 (param $0 i32)", " (func $10 (param $0 i64)");
        assert!(fallback::lower(&inside).is_ok());
    }

    #[test]
    fn table_uses_without_lowering_fail_the_build() {
        let fill = WAT.replace(
            "(table.size $1)",
            "(table.fill $1 (i32.const 0) (ref.null noextern) (i32.const 1))",
        );
        assert!(fallback::lower(&fill).is_err());
        let two = WAT.replace(" (table $0 2 2 funcref)", " (table $0 2 2 externref)");
        assert!(fallback::lower(&two).is_err());
        let no_imports = WAT
            .replace(
                " (import \"a\" \"a\" (func $fimport$0 (param externref)))\n",
                "",
            )
            .replace(" (import \"a\" \"b\" (func $fimport$1 (result f64)))\n", "");
        assert!(fallback::lower(&no_imports).is_err());
    }

    const MODULE: &str = r#"import * as a from 'a';
import * as table from 'table';

  var bufferView;
function asmFunc(imports) {
 var a = imports.a;
 return { "E": 1 };
}

var retasmFunc = asmFunc({
  "a": a,
  "table": table,
});
export var E = retasmFunc.E;
"#;

    #[test]
    fn the_fallback_defines_no_global_and_hands_over_its_exports() {
        let table = fallback::ExternrefTable {
            initial: 4,
            max: Some(8),
            export: Some("T".into()),
        };
        let js = fallback::wrap(MODULE, Some(&table)).unwrap();
        assert!(js.starts_with("(function () {\n\"use strict\";\n"), "{js}");
        assert!(js.ends_with("});\n})();\n"), "{js}");
        assert!(!js.contains("import ") && !js.contains("export ") && !js.contains("retasmFunc"));
        assert!(js.contains("script.weft(function (imports) {"));
        assert!(js.contains("var t = [], n = 4;") && js.contains("if (old + n > 8) return -1;"));
        assert!(js.contains("asmFunc(Object.assign({ table: { get: get, set: set, grow: grow, size: size } }, imports))"));
        assert!(js.contains("exports[\"T\"] = { get: get, set: set,"));

        let plain = fallback::wrap(MODULE, None).unwrap();
        assert!(plain.contains("return asmFunc(imports);") && !plain.contains("var t ="));

        let extra = format!("{MODULE}console.log(1);\n");
        assert!(fallback::wrap(&extra, None).is_err());
        assert!(fallback::wrap(&MODULE.replace("var retasmFunc", "var r"), None).is_err());
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
