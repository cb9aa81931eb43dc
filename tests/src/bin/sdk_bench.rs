//! `weft-sdk-bench`: the browser SDK's performance figures, measured in the
//! same headless Chromium the end-to-end tests use (`cargo xtask bench sdk`).
//!
//! It exists because the SDK's cost is paid on every page of every site that
//! embeds it, and only a real browser says what that cost is: how long the
//! script tag takes to become usable, how much main-thread time each `track`
//! call takes from the page, and how many bytes each event puts on the wire.
//! Unit tests of the Rust code cannot answer that, and timed tests would be
//! flaky, so the figures come from here, by hand, each against a baseline
//! measured in the same run on the same machine:
//!
//! 1. **Ready time**, over `--rounds` cold loads (HTTP cache disabled,
//!    storage cleared, so every load is a first visit): from the moment
//!    `weft.js` starts executing to the `weft.ready` callback, and from the
//!    moment the browser requests `weft.js` to that callback. The baseline
//!    is a no-op script of exactly the same size (weft.js itself inside a
//!    comment, so it also compresses alike) loaded by the same
//!    `<script async>` tag, timed to its `load` event: the ratio is what
//!    weft adds over merely fetching a script of its size.
//! 2. **Main-thread time per `track` call**, timed with `performance.now()`
//!    inside the page: in `--rounds` rounds of one batch (20 calls, the
//!    SDK's queue drained before each: a page's usual load) and in
//!    `--rounds` bursts of `--calls` back-to-back calls (the queue drained
//!    after each: a burst starts empty and ends with `--calls` queued, the
//!    queue written once, later, at an idle moment), each after a warm-up
//!    round and a garbage collection. Baselines, in the same
//!    page: a call of an empty JS function with the same arguments, and
//!    `JSON.stringify` of the same properties object, each repeated for at
//!    least 20 ms a round (the page's clock has a 0.1 ms resolution). The
//!    first `track` call of each cold load, in the ready callback, is
//!    reported too.
//! 3. **Bytes on the wire per event**: the body of `POST /v1/batch` as the
//!    browser sent it (read over CDP), divided by the events in it, for a
//!    batch of 1 (`track` + `flush`) and a full batch of 20 (the default),
//!    as sent (the SDK gzips its batches) and as JSON text;
//!    the reference is the size of the properties object as JSON. The
//!    script tag's download (the `.gz` files of the SDK build, and what
//!    Chromium really transferred) is a separate line.
//!
//! The pages are generated into a temporary directory and served by a
//! [`TestCollector`] on `127.0.0.1:0`, with the SDK from `WEFT_SDK_DIR` (or
//! `target/sdk`); Chromium comes from `WEFT_CHROMIUM` (or the PATH). The
//! table goes to stdout; progress and page problems (uncaught exceptions,
//! console warnings with `data-debug="true"`) to stderr. Uncaught exceptions
//! make the run fail: figures from a broken page mean nothing.
//!
//! Usage: `weft-sdk-bench [--rounds N] [--calls N] [--anchors DIR]
//! [--ready-only] [--compare DIR]...`: `--ready-only` measures ready time
//! alone (a quick comparison of builds), `--compare` adds another SDK build's
//! ready time to the side-by-side table, in the same rounds.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

#[path = "sdk_bench/anchors.rs"]
mod anchors;
use serde_json::{Value, json};
use weft_e2e::chromium::{Chromium, Page};
use weft_e2e::harness::{TestCollector, sdk_dir};

/// Measures the browser SDK in headless Chromium against same-run baselines.
#[derive(Debug, Parser)]
#[command(name = "weft-sdk-bench")]
struct Args {
    /// Cold page loads per script (ready time), and timing rounds of
    /// `track` and its baselines.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(3..=200))]
    rounds: u32,
    /// Calls per timing round.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(10..=100_000))]
    calls: u32,
    /// A `node_modules` directory with `posthog-js` and
    /// `@snowplow/browser-tracker`: also measure them, side by side.
    #[arg(long)]
    anchors: Option<std::path::PathBuf>,
    /// Measure ready time only (weft's and, with `--anchors`, the
    /// anchors'): for quick comparisons of builds.
    #[arg(long)]
    ready_only: bool,
    /// Another build of the SDK (a directory like `target/sdk`) whose
    /// ready time is measured beside the anchors, in the same rounds
    /// (with `--anchors`; repeatable).
    #[arg(long)]
    compare: Vec<std::path::PathBuf>,
}

/// The event every measurement sends.
const EVENT: &str = "Product Viewed";
/// Its properties: a typical e-commerce event.
const PROPERTIES: &str = r#"{"product_id":"sku_48213","name":"Merino wool T-shirt","category":"apparel/tops","price":49.9,"currency":"EUR","quantity":1,"in_stock":true}"#;
/// Full batches measured for the bytes-per-event figures.
const BYTE_SAMPLES: usize = 5;
/// A baseline round repeats its calls until it has lasted this long
/// (Chromium's `performance.now()` has a 0.1 ms resolution on a page that is
/// not cross-origin isolated, and an empty call takes nanoseconds).
const MIN_BASELINE_MS: u32 = 20;
/// The SDK's default batch size.
const BATCH: usize = 20;
/// How long the page may take to do one thing (become ready, drain its
/// queue, send a batch) before the bench gives up.
const STEP_TIMEOUT_MS: u64 = 15_000;

/// Runs in the page before anything else: records when each script starts
/// executing (its first read of `document.currentScript`, the first thing
/// both weft.js and the no-op script do) and holds the figures.
const PROBE: &str = r#"<script>
window.__bench = { start: {}, loaded: {} };
(function () {
  var d = Object.getOwnPropertyDescriptor(Document.prototype, "currentScript");
  Object.defineProperty(document, "currentScript", { configurable: true, get: function () {
    var s = d.get.call(this);
    if (s && s.src) {
      var k = new URL(s.src).pathname;
      if (!(k in __bench.start)) __bench.start[k] = performance.now();
    }
    return s;
  } });
})();
// A first visit: nothing left by the previous load of this origin.
try { localStorage.clear(); } catch (e) {}
document.cookie = "weft_aid=; max-age=0; path=/";
</script>"#;

/// The contract's inline stub, so `weft.ready` can be called before weft.js
/// has loaded.
const STUB: &str = r#"<script>!function(w){var a=w.weft=w.weft||{_q:[]},q=function(n){return function(){a._q.push([n,[].slice.call(arguments)])}};"page track identify alias group reset flush ready".split(" ").forEach(function(n){a[n]=a[n]||q(n)});a.consent=a.consent||{};"set grantAll denyAll onChange".split(" ").forEach(function(n){a.consent[n]=a.consent[n]||q("consent."+n)})}(window)</script>"#;

/// Collects the figures of one load: resolves when `done` has happened.
fn collect_script(script: &str, done: &str) -> String {
    format!(
        r#"new Promise(function (resolve, reject) {{
  var timer = setTimeout(function () {{ reject(new Error("{done} did not happen in {STEP_TIMEOUT_MS} ms")); }}, {STEP_TIMEOUT_MS});
  {done}.then(function (end) {{
    clearTimeout(timer);
    var entry = function (path) {{
      var e = performance.getEntriesByName(location.origin + path)[0];
      return e ? {{ start: e.startTime, end: e.responseEnd, body: e.encodedBodySize, transfer: e.transferSize }} : null;
    }};
    resolve({{ end: end, exec: __bench.start["{script}"], loaded: __bench.loaded["{script}"],
              script: entry("{script}"), wasm: entry("/weft.wasm"), firstTrack: __bench.firstTrack,
              ua: navigator.userAgent }});
  }});
}})"#
    )
}

/// The bench pages: `ready.html`, `noop.html`, `track.html`, and `noop.js`
/// (weft.js's size, doing nothing) with its `.gz` twin.
fn write_pages(dir: &Path, sdk: &Path) -> std::io::Result<()> {
    let weft_js = std::fs::read_to_string(sdk.join("weft.js"))?;
    let noop = same_size_noop(&weft_js);
    std::fs::write(dir.join("noop.js"), &noop)?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(noop.as_bytes())?;
    std::fs::write(dir.join("noop.js.gz"), gz.finish()?)?;

    let page = |head: &str| {
        format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>weft bench</title>\n{PROBE}\n{head}\n</head><body><h1>weft bench</h1></body></html>\n"
        )
    };
    let onload = |path: &str| format!("__bench.loaded['{path}'] = performance.now()");
    std::fs::write(
        dir.join("ready.html"),
        page(&format!(
            "{STUB}\n<script>__bench.ready = new Promise(function (r) {{ weft.ready(function () {{\n\
               var t = performance.now();\n\
               weft.track(\"{EVENT}\", {PROPERTIES});\n\
               __bench.firstTrack = performance.now() - t;\n\
               r(t);\n\
             }}); }});</script>\n\
             <script async src=\"/weft.js\" onload=\"{}\" data-write-key=\"%WEFT_WRITE_KEY%\" data-consent=\"opt-out\" data-debug=\"true\"></script>",
            onload("/weft.js")
        )),
    )?;
    std::fs::write(
        dir.join("noop.html"),
        page(&format!(
            "<script>__bench.ready = new Promise(function (r) {{ __bench.done = r; }});</script>\n\
             <script async src=\"/noop.js\" onload=\"{}; __bench.done(performance.now())\"></script>",
            onload("/noop.js")
        )),
    )?;
    // No automatic page views or clicks and no timed flush: every batch is
    // made of the bench's own `track` calls.
    std::fs::write(
        dir.join("track.html"),
        page(&format!(
            "{STUB}\n<script>__bench.ready = new Promise(function (r) {{ weft.ready(function () {{ r(performance.now()); }}); }});\n\
             function noop() {{}}\n\
             __bench.props = {PROPERTIES};\n\
             __bench.run = {{\n\
               weft: function (n, p) {{ var t = performance.now(); for (var i = 0; i < n; i++) weft.track(\"{EVENT}\", p); return performance.now() - t; }},\n\
               noop: function (n, p) {{ var t = performance.now(), e, k = 0; do {{ for (var i = 0; i < n; i++) noop(\"{EVENT}\", p); k++; e = performance.now() - t; }} while (e < {MIN_BASELINE_MS}); return e / k; }},\n\
               stringify: function (n, p) {{ var t = performance.now(), e, k = 0, s = 0; do {{ for (var i = 0; i < n; i++) s += JSON.stringify(p).length; k++; e = performance.now() - t; }} while (e < {MIN_BASELINE_MS}); __bench.sink = s; return e / k; }}\n\
             }};</script>\n\
             <script async src=\"/weft.js\" data-write-key=\"%WEFT_WRITE_KEY%\" data-consent=\"opt-out\" data-capture-pages=\"false\" data-capture-clicks=\"false\" data-capture-spa=\"false\" data-flush-interval=\"600000\" data-debug=\"true\"></script>"
        )),
    )?;
    Ok(())
}

/// A script of exactly `source.len()` bytes that does nothing but read
/// `document.currentScript` (so the probe sees it start): `source` itself,
/// commented out.
fn same_size_noop(source: &str) -> String {
    let head = "document.currentScript;/*";
    let tail = "*/\n";
    let body = source.replace("*/", "*_");
    let room = source.len().saturating_sub(head.len() + tail.len());
    let mut cut = room.min(body.len());
    while !body.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = format!("{head}{}", &body[..cut]);
    while out.len() + tail.len() < source.len() {
        out.push(' ');
    }
    out.push_str(tail);
    out
}

/// Figures of one cold load, in ms since navigation start.
#[derive(Debug, Clone, Copy)]
struct Load {
    /// The script's request started (Resource Timing `startTime`).
    request: f64,
    /// Its response ended.
    response_end: f64,
    /// It started executing.
    exec: f64,
    /// Its `load` event.
    loaded: f64,
    /// `weft.ready` called back (weft), or the `load` event (no-op).
    end: f64,
    /// weft.wasm's request start and response end (weft only).
    wasm: Option<(f64, f64)>,
    /// Bytes of the script's and the wasm's bodies as transferred.
    script_body: f64,
    wasm_body: f64,
    /// Milliseconds of the first `track` call, in the ready callback (weft
    /// only).
    first_track: f64,
}

fn number(v: &Value, what: &str) -> Result<f64, String> {
    v.as_f64()
        .ok_or_else(|| format!("no {what} in the page's figures: {v}"))
}

fn parse_load(v: &Value) -> Result<Load, String> {
    let script = &v["script"];
    let wasm = v["wasm"].is_object().then(|| {
        (
            v["wasm"]["start"].as_f64().unwrap_or(f64::NAN),
            v["wasm"]["end"].as_f64().unwrap_or(f64::NAN),
        )
    });
    Ok(Load {
        request: number(&script["start"], "script request start")?,
        response_end: number(&script["end"], "script response end")?,
        exec: number(&v["exec"], "execution start")?,
        loaded: number(&v["loaded"], "script load event")?,
        end: number(&v["end"], "end time")?,
        wasm,
        script_body: script["body"].as_f64().unwrap_or(f64::NAN),
        wasm_body: v["wasm"]["body"].as_f64().unwrap_or(f64::NAN),
        first_track: v["firstTrack"].as_f64().unwrap_or(f64::NAN),
    })
}

/// Loads `url` cold in `page` and returns its figures.
async fn cold_load(page: &Page, url: &str, script: &str) -> Result<(Load, Value), String> {
    page.goto(url).await;
    let v = page.eval(&collect_script(script, "__bench.ready")).await;
    Ok((parse_load(&v)?, v))
}

/// Median and 95th percentile (nearest rank) of `values`.
fn median_p95(values: &[f64]) -> (f64, f64) {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    v.sort_by(f64::total_cmp);
    let rank = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    (rank(0.5), rank(0.95))
}

/// One line of the table.
struct Line {
    what: String,
    weft: (f64, f64),
    baseline_what: String,
    baseline: (f64, f64),
    unit: &'static str,
}

fn format_value(v: f64, unit: &str) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    let digits = match unit {
        "B" => 0,
        _ if v.abs() >= 100.0 => 0,
        _ if v.abs() >= 10.0 => 1,
        _ if v.abs() >= 0.1 => 2,
        _ => 4,
    };
    format!("{v:.digits$} {unit}")
}

fn print_table(lines: &[Line]) {
    println!(
        "{:<44} {:>11} {:>11}   {:<36} {:>11} {:>11} {:>9}",
        "figure", "weft med", "weft p95", "baseline", "base med", "base p95", "ratio"
    );
    println!("{}", "-".repeat(144));
    for l in lines {
        let ratio = l.weft.0 / l.baseline.0;
        let ratio = if ratio.is_finite() {
            if ratio >= 100.0 {
                format!("{ratio:.0}x")
            } else {
                format!("{ratio:.2}x")
            }
        } else {
            "n/a".into()
        };
        println!(
            "{:<44} {:>11} {:>11}   {:<36} {:>11} {:>11} {:>9}",
            l.what,
            format_value(l.weft.0, l.unit),
            format_value(l.weft.1, l.unit),
            l.baseline_what,
            format_value(l.baseline.0, l.unit),
            format_value(l.baseline.1, l.unit),
            ratio,
        );
    }
}

/// How long the SDK may take to send what it holds after a round.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs Chromium's garbage collector in `page`. Between rounds, so a round
/// does not pay for the garbage of the previous one, and because Chromium
/// counts a `keepalive` fetch against its 64 KB in-flight quota until its
/// response is collected: the SDK leaves the responses unread, so without
/// a collection its sends fail after about three full batches and back off.
async fn collect_garbage(page: &Page) {
    page.call("HeapProfiler.collectGarbage", json!({})).await;
}

/// Times `calls` calls of `kind` (`weft`, `noop` or `stringify`) after a
/// garbage collection; returns the milliseconds of the whole round.
async fn timed_round(page: &Page, kind: &str, calls: usize) -> Result<f64, String> {
    collect_garbage(page).await;
    let ms = page
        .eval(&format!("__bench.run.{kind}({calls}, __bench.props)"))
        .await;
    number(&ms, "round time")
}

/// Asks the SDK to send what it holds and waits until it has (nothing
/// queued, by `weft.debug()`: storage is written later, at an idle
/// moment); `false` if it did not within [`DRAIN_TIMEOUT`].
async fn drain(page: &Page) -> bool {
    page.eval("weft.flush(); true").await;
    let deadline = std::time::Instant::now() + DRAIN_TIMEOUT;
    loop {
        if page.eval("weft.debug().queued === 0").await == Value::Bool(true) {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        collect_garbage(page).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (bounded) until `page` has sent `count` batches and the last has
/// been answered; returns the batches' bodies.
async fn batches_after(
    page: &Page,
    before: usize,
    count: usize,
) -> Result<Vec<(String, usize)>, String> {
    let deadline = std::time::Instant::now() + Duration::from_millis(STEP_TIMEOUT_MS);
    loop {
        let sent = page.requests_to("/v1/batch");
        let finished: Vec<String> = page
            .events("Network.loadingFinished")
            .iter()
            .chain(page.events("Network.loadingFailed").iter())
            .filter_map(|e| e["requestId"].as_str().map(str::to_owned))
            .collect();
        if sent.len() >= before + count
            && sent[before..before + count]
                .iter()
                .all(|r| finished.contains(&r.id))
        {
            let mut bodies = Vec::new();
            for r in &sent[before..before + count] {
                let text = page
                    .request_body(r)
                    .await
                    .ok_or_else(|| format!("Chromium did not report the body of batch {}", r.id))?;
                let wire = r.wire_bytes.unwrap_or(text.len());
                bodies.push((text, wire));
            }
            return Ok(bodies);
        }
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "expected {count} more batch(es) after {before} within {STEP_TIMEOUT_MS} ms; saw {}",
                sent.len()
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Body bytes per event of each body as sent (checking it carries `events`
/// events), and as JSON text (the SDK gzips its batches where it can).
fn bytes_per_event(
    bodies: &[(String, usize)],
    events: usize,
) -> Result<(Vec<f64>, Vec<f64>), String> {
    let wire = bodies
        .iter()
        .map(|(_, w)| *w as f64 / events as f64)
        .collect();
    let text = bodies
        .iter()
        .map(|(b, _)| {
            let v: Value =
                serde_json::from_str(b).map_err(|e| format!("a batch is not JSON ({e}): {b}"))?;
            let n = v["batch"].as_array().map_or(0, Vec::len);
            if n != events {
                return Err(format!("expected a batch of {events}, got {n}: {b}"));
            }
            Ok(b.len() as f64 / events as f64)
        })
        .collect::<Result<_, String>>()?;
    Ok((wire, text))
}

fn gzip_len(data: &[u8]) -> f64 {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let _ = gz.write_all(data);
    gz.finish().map_or(f64::NAN, |v| v.len() as f64)
}

/// Uncaught exceptions and console warnings or errors of `page`.
fn problems(page: &Page, label: &str) -> (Vec<String>, Vec<String>) {
    let exceptions = page
        .exceptions()
        .into_iter()
        .map(|e| format!("{label}: {e}"))
        .collect();
    let warnings = page
        .events("Runtime.consoleAPICalled")
        .into_iter()
        .filter(|e| matches!(e["type"].as_str(), Some("warning" | "error")))
        .map(|e| {
            let args: Vec<String> = e["args"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|x| {
                            x["value"]
                                .as_str()
                                .map(str::to_owned)
                                .or_else(|| x["description"].as_str().map(str::to_owned))
                                .unwrap_or_else(|| x.to_string())
                        })
                        .collect()
                })
                .unwrap_or_default();
            format!(
                "{label}: console.{}: {}",
                e["type"].as_str().unwrap_or(""),
                args.join(" ")
            )
        })
        .collect();
    (exceptions, warnings)
}

/// The bytes per event (3, first, on a fresh page with an empty queue) and
/// the main-thread time per call (2), on one track page, which it returns.
async fn track_figures(
    chromium: &Chromium,
    collector: &TestCollector,
    rounds: usize,
    calls: usize,
    lines: &mut Vec<Line>,
    notes: &mut Vec<String>,
    user_agent: &str,
) -> Result<Page, String> {
    eprintln!("weft-sdk-bench: bytes per event");
    let tracker = chromium.new_page().await;
    tracker
        .call("Network.setCacheDisabled", json!({"cacheDisabled": true}))
        .await;
    tracker.goto(&collector.url("/track.html")).await;
    tracker
        .eval(&collect_script("/weft.js", "__bench.ready"))
        .await;
    let track_once = format!("weft.track(\"{EVENT}\", __bench.props)");
    let mut single = Vec::new();
    let mut full = Vec::new();
    let mut tracked = 0;
    for _ in 0..BYTE_SAMPLES {
        collect_garbage(&tracker).await;
        tracked += 1 + BATCH;
        let before = tracker.requests_to("/v1/batch").len();
        tracker
            .eval(&format!("{track_once}; weft.flush(); true"))
            .await;
        single.extend(batches_after(&tracker, before, 1).await?);
        let before = tracker.requests_to("/v1/batch").len();
        tracker
            .eval(&format!(
                "for (var i = 0; i < {BATCH}; i++) {track_once}; true"
            ))
            .await;
        full.extend(batches_after(&tracker, before, 1).await?);
    }
    let properties_bytes = PROPERTIES.len() as f64;
    let (single_bytes, single_text) = bytes_per_event(&single, 1)?;
    let (full_bytes, full_text) = bytes_per_event(&full, BATCH)?;
    lines.push(Line {
        what: "bytes/event: batch of 1 (track + flush), as sent".into(),
        weft: median_p95(&single_bytes),
        baseline_what: "the properties as JSON".into(),
        baseline: (properties_bytes, properties_bytes),
        unit: "B",
    });
    lines.push(Line {
        what: "bytes/event: batch of 20 (default size), as sent".into(),
        weft: median_p95(&full_bytes),
        baseline_what: "the properties as JSON".into(),
        baseline: (properties_bytes, properties_bytes),
        unit: "B",
    });
    let gz_full: Vec<f64> = full
        .iter()
        .map(|(b, _)| gzip_len(b.as_bytes()) / BATCH as f64)
        .collect();
    notes.push(format!(
        "bytes: request bodies as Chromium sent them (gzip by the SDK where the browser has          CompressionStream, except page-hide sends); as JSON text {:.0} B/event in a batch of 1 and {:.0}          in a batch of 20 (gzip -6 of that: {:.0} B/event); page URL {} ({} chars), user agent {} chars",
        median_p95(&single_text).0,
        median_p95(&full_text).0,
        median_p95(&gz_full).0,
        collector.url("/track.html"),
        collector.url("/track.html").len(),
        user_agent.len(),
    ));

    // 2. Main-thread time per call: first in rounds of one batch (20
    // calls, the queue empty at the start: a page's usual load), then in
    // bursts of `calls`; the baselines in rounds of `calls`.
    eprintln!(
        "weft-sdk-bench: {rounds} rounds of {BATCH} and of {calls} track calls, {rounds} rounds of \
         {calls} calls of each baseline"
    );
    let mut undrained = 0;
    let mut batch_rounds = Vec::new();
    for round in 0..=rounds {
        let ms = timed_round(&tracker, "weft", BATCH).await?;
        tracked += BATCH;
        if undrained == 0 && !drain(&tracker).await {
            undrained = round + 1;
        }
        // Round 0 warms the JIT.
        if round > 0 {
            batch_rounds.push(ms * 1000.0 / BATCH as f64);
        }
    }
    let mut per_call: [Vec<f64>; 3] = Default::default();
    for round in 0..=rounds {
        for (k, kind) in ["weft", "noop", "stringify"].into_iter().enumerate() {
            let ms = timed_round(&tracker, kind, calls).await?;
            if kind == "weft" {
                tracked += calls;
                if undrained == 0 && !drain(&tracker).await {
                    undrained = rounds + 2 + round;
                }
            }
            if round > 0 {
                per_call[k].push(ms * 1000.0 / calls as f64);
            }
        }
    }
    let empty_call = median_p95(&per_call[1]);
    let stringify = median_p95(&per_call[2]);
    for (what, weft) in [
        (
            format!("track: per call, {BATCH}/round (queue empty)"),
            median_p95(&batch_rounds),
        ),
        (
            format!("track: per call, {calls}/round (burst)"),
            median_p95(&per_call[0]),
        ),
    ] {
        lines.push(Line {
            what: what.clone(),
            weft,
            baseline_what: "empty function call, same args".into(),
            baseline: empty_call,
            unit: "us",
        });
        lines.push(Line {
            what,
            weft,
            baseline_what: "JSON.stringify(properties)".into(),
            baseline: stringify,
            unit: "us",
        });
    }
    if undrained > 0 {
        notes.push(format!(
            "track: the SDK stopped delivering: its queue was not drained within {DRAIN_TIMEOUT:?} \
             after round {undrained} of {} (warm-ups counted); later rounds ran without draining",
            2 * (rounds + 1)
        ));
    }
    // What reached the collector of what was tracked on this page (the
    // ready pages' first tracks are not counted).
    let stored = collector
        .rows()
        .iter()
        .filter(|r| {
            r.is_track(EVENT)
                && r.body["context"]["page"]["url"]
                    .as_str()
                    .is_some_and(|p| p.ends_with("/track.html"))
        })
        .count();
    notes.push(format!(
        "track: the collector stored {stored} of the {tracked} events tracked on the track page \
         ({} not stored by the end: dropped at the queue's 512 KB cap, oldest first, or still queued)",
        tracked.saturating_sub(stored)
    ));
    Ok(tracker)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("weft-sdk-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs every measurement and prints the table; `Ok(false)` when the pages
/// threw.
async fn run(args: &Args) -> Result<bool, String> {
    let sdk = sdk_dir();
    let pages = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    write_pages(pages.path(), &sdk).map_err(|e| format!("writing the bench pages: {e}"))?;
    let www = pages.path().to_path_buf();
    let collector = TestCollector::start_with(|config| config.www_dir = Some(www)).await;
    let chromium = Chromium::launch().await;
    let rounds = args.rounds as usize;
    let calls = args.calls as usize;
    let mut lines = Vec::new();
    let mut notes = Vec::new();

    // 1. Ready time: cold loads, alternating which script goes first.
    eprintln!("weft-sdk-bench: {rounds} cold loads of weft.js and of a same-size no-op script");
    let loader = chromium.new_page().await;
    loader
        .call("Network.setCacheDisabled", json!({"cacheDisabled": true}))
        .await;
    let (ready_url, noop_url) = (collector.url("/ready.html"), collector.url("/noop.html"));
    let (mut weft_loads, mut noop_loads) = (Vec::new(), Vec::new());
    let mut user_agent = String::new();
    for i in 0..=rounds {
        let weft_first = i % 2 == 0;
        for weft in [weft_first, !weft_first] {
            let (load, raw) = if weft {
                cold_load(&loader, &ready_url, "/weft.js").await?
            } else {
                cold_load(&loader, &noop_url, "/noop.js").await?
            };
            user_agent = raw["ua"].as_str().unwrap_or("").to_owned();
            // The first pair warms Chromium's process and the collector.
            if i == 0 {
                continue;
            }
            if weft {
                weft_loads.push(load);
            } else {
                noop_loads.push(load);
            }
        }
    }
    let of =
        |loads: &[Load], f: fn(&Load) -> f64| median_p95(&loads.iter().map(f).collect::<Vec<_>>());
    lines.push(Line {
        what: "ready: weft.js execution start -> ready".into(),
        weft: of(&weft_loads, |l| l.end - l.exec),
        baseline_what: "no-op script: exec start -> load event".into(),
        baseline: of(&noop_loads, |l| l.loaded - l.exec),
        unit: "ms",
    });
    lines.push(Line {
        what: "ready: weft.js request start -> ready".into(),
        weft: of(&weft_loads, |l| l.end - l.request),
        baseline_what: "no-op script: request -> load event".into(),
        baseline: of(&noop_loads, |l| l.loaded - l.request),
        unit: "ms",
    });
    lines.push(Line {
        what: "ready: navigation start -> ready".into(),
        weft: of(&weft_loads, |l| l.end),
        baseline_what: "no-op script: navigation -> load event".into(),
        baseline: of(&noop_loads, |l| l.loaded),
        unit: "ms",
    });
    let wasm_of = |f: fn((f64, f64), &Load) -> f64| {
        median_p95(
            &weft_loads
                .iter()
                .map(|l| l.wasm.map_or(f64::NAN, |w| f(w, l)))
                .collect::<Vec<_>>(),
        )
    };
    let med = |x: (f64, f64)| x.0;
    notes.push(format!(
        "ready breakdown (weft medians): weft.js download {:.2} ms, response end -> exec start {:.2} ms, \
         exec start -> weft.wasm request {:.2} ms, weft.wasm download {:.2} ms, wasm response end -> ready {:.2} ms; \
         weft.js load event at exec start + {:.2} ms",
        med(of(&weft_loads, |l| l.response_end - l.request)),
        med(of(&weft_loads, |l| l.exec - l.response_end)),
        med(wasm_of(|w, l| w.0 - l.exec)),
        med(wasm_of(|w, _| w.1 - w.0)),
        med(wasm_of(|w, l| l.end - w.1)),
        med(of(&weft_loads, |l| l.loaded - l.exec)),
    ));
    let first = of(&weft_loads, |l| l.first_track);
    notes.push(format!(
        "first track call of a page (in the ready callback of the cold loads): median {:.1} ms, p95 {:.1} ms",
        first.0, first.1
    ));

    // 2 and 3: on a track page of its own.
    let tracked = if args.ready_only {
        None
    } else {
        Some(
            track_figures(
                &chromium,
                &collector,
                rounds,
                calls,
                &mut lines,
                &mut notes,
                &user_agent,
            )
            .await?,
        )
    };
    let delivered = tracked
        .as_ref()
        .map_or(0, |page| page.requests_to("/v1/batch").len());

    // The script tag's download.
    let size = |name: &str| std::fs::metadata(sdk.join(name)).map_or(f64::NAN, |m| m.len() as f64);
    let (js_gz, wasm_gz) = (size("weft.js.gz"), size("weft.wasm.gz"));
    let transferred =
        |f: fn(&Load) -> f64| median_p95(&weft_loads.iter().map(f).collect::<Vec<_>>()).0;
    let download = format!(
        "script tag download: weft.js.gz {js_gz:.0} B + weft.wasm.gz {wasm_gz:.0} B = {:.0} B ({:.1} KiB) \
         in {}; Chromium received bodies of {:.0} B + {:.0} B ({} B raw weft.js, {} B raw weft.wasm)",
        js_gz + wasm_gz,
        (js_gz + wasm_gz) / 1024.0,
        sdk.display(),
        transferred(|l| l.script_body),
        transferred(|l| l.wasm_body),
        size("weft.js"),
        size("weft.wasm"),
    );

    println!(
        "\nweft SDK bench: {} on loopback, {} cores, load average {}; {rounds} cold loads \
         (cache disabled, storage cleared) per script; track timed in {rounds} rounds of {BATCH} \
         and of {calls} calls, baselines in {rounds} rounds of at least {MIN_BASELINE_MS} ms, \
         each after a warm-up round; p95 is over rounds; {delivered} batches sent in all\n",
        user_agent
            .split_whitespace()
            .find(|w| w.starts_with("HeadlessChrome/") || w.starts_with("Chrome/"))
            .unwrap_or("Chromium"),
        std::thread::available_parallelism().map_or(0, usize::from),
        std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next().map(str::to_owned))
            .unwrap_or_else(|| "n/a".into()),
    );
    print_table(&lines);
    println!("\n{download}");
    for n in &notes {
        println!("{n}");
    }

    if let Some(dir) = &args.anchors {
        anchors::run(&chromium, &collector, pages.path(), dir, &sdk, args).await?;
    }

    let mut exceptions = Vec::new();
    let mut warnings = Vec::new();
    let pages = [
        (Some(&loader), "ready/noop pages"),
        (tracked.as_ref(), "track page"),
    ];
    for (page, label) in pages.into_iter().filter_map(|(p, l)| Some((p?, l))) {
        let (e, w) = problems(page, label);
        exceptions.extend(e);
        warnings.extend(w);
    }
    for w in &warnings {
        eprintln!("page warning: {w}");
    }
    for e in &exceptions {
        eprintln!("page exception: {e}");
    }
    if !exceptions.is_empty() {
        eprintln!(
            "weft-sdk-bench: {} uncaught exception(s) on the pages: the figures are suspect",
            exceptions.len()
        );
    }
    drop(chromium);
    collector.stop().await;
    Ok(exceptions.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_noop_script_has_the_size_of_its_source() {
        for source in ["", "x", "a*/b", &"é*/".repeat(50), &"abc".repeat(3000)] {
            let noop = same_size_noop(source);
            if source.len() >= 28 {
                assert_eq!(noop.len(), source.len(), "{source:?}");
            }
            assert!(noop.starts_with("document.currentScript;/*"));
            assert_eq!(noop.matches("*/").count(), 1, "{noop}");
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(median_p95(&v), (10.0, 19.0));
        assert_eq!(median_p95(&[3.0]), (3.0, 3.0));
        assert!(median_p95(&[]).0.is_nan());
    }
}
