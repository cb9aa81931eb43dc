//! The side-by-side run (`weft-sdk-bench --anchors DIR`): weft against
//! PostHog (`posthog-js`, `dist/array.js`) and Snowplow
//! (`@snowplow/browser-tracker`, `dist/index.umd.min.js`), pinned from npm
//! by `cargo xtask bench sdk`, in the same Chromium, the same kind of page
//! and the same loopback, interleaved.
//!
//! Each SDK gets a ready page (cold loads, rotating which goes first) and a
//! track page. PostHog and Snowplow send to a stub receiver on loopback that
//! answers 200 to anything and counts the events in what it receives
//! (gzip and base64 bodies decoded); weft sends to the real collector. All
//! three pages get the same plain Chrome user agent (PostHog drops events
//! from `HeadlessChrome` as a bot, and still took the page for one with the
//! user agent replaced, so its `opt_out_useragent_filter` is set). PostHog's client-side rate limiter (10
//! events/s, bursts of 100 by default) is raised to 100,000/s so that it
//! measures the SDK, not the limiter; Snowplow and weft have none.
//!
//! Figures, medians over rounds: download (gzip -9 and brotli of what the
//! script tag fetches), ready (script execution start to usable), the
//! synchronous cost of a track call in rounds of 20 and in bursts (up to
//! 10 after a warm-up burst, each from an empty queue: the SDK has handed
//! over the burst before), the
//! main-thread time per call including the work the calls cause later
//! (timers, sends, storage: Chromium's `TaskDuration` from before a round
//! of 20 until one second after it), request bytes per event as sent, and
//! the events delivered of a burst of 1,050 calls.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use weft_e2e::chromium::{Chromium, Page, text_of};
use weft_e2e::harness::TestCollector;

use super::{EVENT, PROPERTIES, median_p95};

/// One SDK of the comparison.
struct Sdk {
    name: String,
    /// The script whose execution start the ready time counts from.
    script: String,
    /// The files the script tag downloads.
    files: Vec<PathBuf>,
    /// The ready page and the track page.
    ready_page: String,
    track_page: &'static str,
    /// A JavaScript statement tracking `EVENT` with properties `p`.
    track: &'static str,
    /// Measured for ready time only.
    ready_only: bool,
}

/// What the stub receiver saw: (path, bytes as sent, events decoded).
type Seen = Arc<Mutex<Vec<(String, usize, usize)>>>;

/// The stub receiver of PostHog's and Snowplow's requests.
struct Receiver {
    url: String,
    seen: Seen,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the stub receiver");
        let url = format!("http://{}", listener.local_addr().expect("its address"));
        let seen: Seen = Arc::default();
        let log = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let log = log.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let log = log.clone();
                        async move {
                            let origin = req
                                .headers()
                                .get("origin")
                                .and_then(|o| o.to_str().ok())
                                .unwrap_or("*")
                                .to_owned();
                            // Echoed: a credentialed request may not be
                            // answered with `*`.
                            let asked = req
                                .headers()
                                .get("access-control-request-headers")
                                .and_then(|o| o.to_str().ok())
                                .unwrap_or("content-type")
                                .to_owned();
                            let post = req.method() == hyper::Method::POST;
                            let path = req.uri().to_string();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            if post {
                                let events = count_events(&body);
                                log.lock().unwrap().push((path, body.len(), events));
                            }
                            let mut resp = Response::new(Full::new(Bytes::from_static(b"{}")));
                            let h = resp.headers_mut();
                            h.insert("access-control-allow-origin", origin.parse().unwrap());
                            h.insert("access-control-allow-credentials", "true".parse().unwrap());
                            h.insert("access-control-allow-headers", asked.parse().unwrap());
                            h.insert("access-control-allow-methods", "GET, POST".parse().unwrap());
                            h.insert("content-type", "application/json".parse().unwrap());
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver { url, seen, task }
    }

    /// Events received so far, and their bytes as sent.
    fn totals(&self) -> (usize, usize) {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .fold((0, 0), |(e, b), (_, bytes, events)| (e + events, b + bytes))
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The events in a request body: PostHog's (a JSON array, or an object with
/// a `batch`; gzip, or base64 in a `data=` form field) or Snowplow's
/// (`{"schema":..,"data":[..]}`).
fn count_events(body: &[u8]) -> usize {
    let mut text = text_of(body.to_vec()).unwrap_or_default();
    if let Some(form) = text.strip_prefix("data=") {
        let form = form.split('&').next().unwrap_or("");
        let decoded = percent_decode(form);
        text = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, decoded)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_default();
    }
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Array(a)) => a.len(),
        Ok(v) => v["batch"]
            .as_array()
            .or(v["data"].as_array())
            .map_or(1, Vec::len),
        Err(_) => 0,
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (c, hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
                continue;
            }
            (b'+', _) => out.push(b' '),
            _ => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn gzip_len(data: &[u8]) -> usize {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let _ = gz.write_all(data);
    gz.finish().map_or(0, |v| v.len())
}

fn brotli_len(data: &[u8]) -> usize {
    let mut out = Vec::new();
    let params = brotli::enc::BrotliEncoderParams {
        quality: 11,
        lgwin: 22,
        ..Default::default()
    };
    let _ = brotli::BrotliCompress(&mut &data[..], &mut out, &params);
    out.len()
}

/// Writes the anchors' pages and served copies into `www` (the weft pages
/// are the bench's own `ready.html` and `track.html`); returns the three
/// SDKs.
fn write_pages(
    www: &Path,
    anchors: &Path,
    sdk: &Path,
    compare: &[PathBuf],
    stub: &str,
) -> Result<Vec<Sdk>, String> {
    // weft's ready page with the preload hint the README's snippet has:
    // the wasm downloads while weft.js does.
    let ready =
        std::fs::read_to_string(www.join("ready.html")).map_err(|e| format!("ready.html: {e}"))?;
    let preload = ready.replacen(
        "<script async src=\"/weft.js\"",
        "<link rel=\"preload\" href=\"/weft.wasm\" as=\"fetch\" crossorigin>\n<script async src=\"/weft.js\"",
        1,
    );
    std::fs::write(www.join("ready-preload.html"), preload).map_err(|e| format!("{e}"))?;
    let posthog = anchors.join("posthog-js/dist/array.js");
    let snowplow = anchors.join("@snowplow/browser-tracker/dist/index.umd.min.js");
    for (from, to) in [(&posthog, "posthog.js"), (&snowplow, "snowplow.js")] {
        let source = std::fs::read_to_string(from).map_err(|e| format!("{from:?}: {e}"))?;
        // The first thing the script does: note when it started.
        let served = format!("__bench.start['/{to}'] = performance.now();\n{source}");
        std::fs::write(www.join(to), served).map_err(|e| format!("{to}: {e}"))?;
    }
    let posthog_init = format!(
        "posthog.init('phc_bench', {{api_host: '{stub}', autocapture: false, capture_pageview: false, \
         capture_pageleave: false, disable_session_recording: true, disable_surveys: true, \
         advanced_disable_flags: true, advanced_disable_decide: true, persistence: 'localStorage', \
         opt_out_useragent_filter: true, \
         rate_limiting: {{events_per_second: 100000, events_burst_limit: 100000}}, \
         loaded: function () {{ __bench.done(performance.now()); }}}})"
    );
    let snowplow_init = format!(
        "snowplowBrowserTracking.newTracker('sp', '{stub}', {{appId: 'bench', platform: 'web', \
         eventMethod: 'post', contexts: {{webPage: true}}}}); __bench.done(performance.now())"
    );
    let page = |title: &str, script: &str, init: &str| {
        format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title>\n\
             <script>window.__bench = {{start: {{}}}}; try {{ localStorage.clear(); }} catch (e) {{}}\n\
             __bench.ready = new Promise(function (r) {{ __bench.done = r; }});\n\
             __bench.props = {PROPERTIES};</script>\n\
             <script async src=\"/{script}\" onload=\"{init}\"></script>\n\
             </head><body><h1>{title}</h1></body></html>\n"
        )
    };
    for (name, script, init) in [
        ("posthog", "posthog.js", posthog_init.replace('"', "&quot;")),
        (
            "snowplow",
            "snowplow.js",
            snowplow_init.replace('"', "&quot;"),
        ),
    ] {
        let html = page(name, script, &init);
        std::fs::write(www.join(format!("{name}-ready.html")), &html)
            .and_then(|()| std::fs::write(www.join(format!("{name}-track.html")), &html))
            .map_err(|e| format!("{name} pages: {e}"))?;
    }
    let mut sdks = vec![
        Sdk {
            name: "weft".into(),
            script: "/weft.js".into(),
            files: vec![sdk.join("weft.js"), sdk.join("weft.wasm")],
            ready_page: "/ready.html".into(),
            track_page: "/track.html",
            track: "weft.track(E, p)",
            ready_only: false,
        },
        Sdk {
            name: "weft + preload hint".into(),
            script: "/weft.js".into(),
            files: vec![sdk.join("weft.js"), sdk.join("weft.wasm")],
            ready_page: "/ready-preload.html".into(),
            track_page: "/track.html",
            track: "weft.track(E, p)",
            ready_only: true,
        },
        Sdk {
            name: "PostHog".into(),
            script: "/posthog.js".into(),
            files: vec![posthog],
            ready_page: "/posthog-ready.html".into(),
            track_page: "/posthog-track.html",
            track: "posthog.capture(E, p)",
            ready_only: false,
        },
        Sdk {
            name: "Snowplow".into(),
            script: "/snowplow.js".into(),
            files: vec![snowplow],
            ready_page: "/snowplow-ready.html".into(),
            track_page: "/snowplow-track.html",
            track: "snowplowBrowserTracking.trackSelfDescribingEvent({event: {schema: \
                    'iglu:com.example/product_viewed/jsonschema/1-0-0', data: p}})",
            ready_only: false,
        },
    ];
    // Other builds of the SDK, ready time only, each from a folder of the
    // site (`/cmp1/weft.js` loads `/cmp1/weft.wasm`), with and without the
    // preload hint: A/B comparisons of builds in the same rounds.
    for (i, dir) in compare.iter().enumerate() {
        let folder = format!("cmp{}", i + 1);
        std::fs::create_dir_all(www.join(&folder)).map_err(|e| format!("{folder}: {e}"))?;
        for name in ["weft.js", "weft.wasm"] {
            for ext in ["", ".gz", ".br"] {
                let file = format!("{name}{ext}");
                std::fs::copy(dir.join(&file), www.join(&folder).join(&file))
                    .map_err(|e| format!("{dir:?}/{file}: {e}"))?;
            }
        }
        for (page, hint) in [
            ("ready.html", ""),
            ("ready-preload.html", " + preload hint"),
        ] {
            let html =
                std::fs::read_to_string(www.join(page)).map_err(|e| format!("{page}: {e}"))?;
            let html = html
                .replace("\"/weft.js\"", &format!("\"/{folder}/weft.js\""))
                .replace("\"/weft.wasm\"", &format!("\"/{folder}/weft.wasm\""));
            let name = format!("{folder}-{page}");
            std::fs::write(www.join(&name), html).map_err(|e| format!("{name}: {e}"))?;
            sdks.push(Sdk {
                name: format!("{}{hint}", dir.display()),
                script: format!("/{folder}/weft.js"),
                files: vec![dir.join("weft.js"), dir.join("weft.wasm")],
                ready_page: format!("/{name}"),
                track_page: "",
                track: "",
                ready_only: true,
            });
        }
    }
    Ok(sdks)
}

/// A page with the plain Chrome user agent.
async fn page_as_chrome(chromium: &Chromium, user_agent: &str) -> Page {
    let page = chromium.new_page().await;
    page.call(
        "Network.setUserAgentOverride",
        json!({"userAgent": user_agent}),
    )
    .await;
    page.call("Network.setCacheDisabled", json!({"cacheDisabled": true}))
        .await;
    page.call("Performance.enable", json!({})).await;
    page
}

/// Chromium's main-thread task time of `page` so far, in ms.
async fn task_ms(page: &Page) -> f64 {
    let m = page.call("Performance.getMetrics", json!({})).await;
    m["metrics"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["name"] == "TaskDuration"))
        .and_then(|x| x["value"].as_f64())
        .map_or(f64::NAN, |s| s * 1000.0)
}

/// Loads `url` and waits for `__bench.ready`: (exec start -> ready) in ms.
async fn ready_ms(page: &Page, url: &str, script: &str) -> Result<f64, String> {
    page.goto(url).await;
    let v = page
        .eval(&format!(
            "Promise.race([__bench.ready, new Promise(function (r) {{ setTimeout(function () {{ r(null); }}, 15000); }})])\
             .then(function (end) {{ return end === null ? null : end - __bench.start['{script}']; }})"
        ))
        .await;
    v.as_f64()
        .ok_or_else(|| format!("{url}: not ready in 15 s ({v})"))
}

/// Runs the side-by-side comparison and prints its table.
pub async fn run(
    chromium: &Chromium,
    collector: &TestCollector,
    www: &Path,
    anchors: &Path,
    sdk_dir: &Path,
    args: &super::Args,
) -> Result<(), String> {
    let (rounds, calls) = (args.rounds as usize, args.calls as usize);
    let (ready_only, compare) = (args.ready_only, &args.compare);
    let stub = Receiver::start().await;
    let sdks = write_pages(www, anchors, sdk_dir, compare, &stub.url)?;
    let probe = chromium.new_page().await;
    let headless = probe.eval("navigator.userAgent").await;
    let user_agent = headless
        .as_str()
        .unwrap_or("")
        .replace("HeadlessChrome", "Chrome");
    probe.call("Page.close", json!({})).await;

    // Download.
    let mut table: Vec<(String, Vec<f64>, &str)> = Vec::new();
    let sizes = |f: fn(&[u8]) -> usize| -> Vec<f64> {
        sdks.iter()
            .map(|s| {
                s.files
                    .iter()
                    .map(|p| std::fs::read(p).map_or(0, |d| f(&d)))
                    .sum::<usize>() as f64
            })
            .collect()
    };
    table.push(("download, gzip -9".into(), sizes(gzip_len), "B"));
    table.push(("download, brotli".into(), sizes(brotli_len), "B"));

    // Ready: cold loads, in a new order every round (a fixed rotation
    // gives each SDK the same predecessor every time, and what one page
    // leaves behind, its unload and garbage, falls on the next).
    eprintln!("weft-sdk-bench: side by side: {rounds} cold loads of each SDK");
    let loader = page_as_chrome(chromium, &user_agent).await;
    let mut ready: Vec<Vec<f64>> = vec![Vec::new(); sdks.len()];
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for i in 0..=rounds {
        let mut order: Vec<usize> = (0..sdks.len()).collect();
        for k in (1..order.len()).rev() {
            // xorshift64: any fixed sequence of shuffles will do.
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            order.swap(k, (seed % (k as u64 + 1)) as usize);
        }
        for s in order {
            let script = sdks[s].script.as_str();
            let url = collector.url(&sdks[s].ready_page);
            let ms = if script.ends_with("/weft.js") {
                // The weft page's probe notes weft.js's start itself.
                loader.goto(&url).await;
                let v = loader
                    .eval(&format!(
                        "__bench.ready.then(function (t) {{ return t - __bench.start['{script}']; }})"
                    ))
                    .await;
                v.as_f64().ok_or("weft: no ready time")?
            } else {
                ready_ms(&loader, &url, script).await?
            };
            if i > 0 {
                ready[s].push(ms);
            }
        }
    }
    table.push((
        "ready: script execution start -> ready".into(),
        ready.iter().map(|r| median_p95(r).0).collect(),
        "ms",
    ));

    // Per call, main thread, bytes, delivery: one track page per SDK.
    let mut sync20 = Vec::new();
    let mut burst = Vec::new();
    let mut async20 = Vec::new();
    let mut bytes = Vec::new();
    let mut delivered = Vec::new();
    for s in &sdks {
        if s.ready_only || ready_only {
            for v in [
                &mut sync20,
                &mut async20,
                &mut burst,
                &mut bytes,
                &mut delivered,
            ] {
                v.push(f64::NAN);
            }
            continue;
        }
        eprintln!("weft-sdk-bench: side by side: {} track page", s.name);
        let page = page_as_chrome(chromium, &user_agent).await;
        page.goto(&collector.url(s.track_page)).await;
        page.eval("__bench.ready").await;
        page.eval(&format!(
            "__bench.E = {EVENT:?}; __bench.time = function (n) {{ var E = __bench.E, p = __bench.props, \
             t = performance.now(); for (var i = 0; i < n; i++) {{ {} }} return performance.now() - t; }}; true",
            s.track
        ))
        .await;
        let weft = s.name == "weft";
        let wire_before = weft_wire(&page);
        let stub_before = stub.totals();
        let rows_before = collector.rows().len();
        let (mut sync, mut with_async) = (Vec::new(), Vec::new());
        for round in 0..=rounds {
            page.call("HeapProfiler.collectGarbage", json!({})).await;
            let before = task_ms(&page).await;
            let ms = page
                .eval("__bench.time(20)")
                .await
                .as_f64()
                .unwrap_or(f64::NAN);
            tokio::time::sleep(Duration::from_secs(1)).await;
            let after = task_ms(&page).await;
            if round > 0 {
                sync.push(ms * 1000.0 / 20.0);
                with_async.push((after - before) * 1000.0 / 20.0);
            }
        }
        // Everything sent by now (PostHog batches every 3 s).
        tokio::time::sleep(Duration::from_secs(4)).await;
        let events_sent = 20 * (rounds + 1);
        let per_event = if weft {
            let (wire, n) = (
                weft_wire(&page) - wire_before,
                collector.rows().len() - rows_before,
            );
            wire as f64 / n.max(1) as f64
        } else {
            let (e0, b0) = stub_before;
            let (e1, b1) = stub.totals();
            let _ = events_sent;
            (b1 - b0) as f64 / (e1 - e0).max(1) as f64
        };
        // Bursts: one to warm up, then `rounds` measured, at most 10 (with
        // 20, twice the whole run stalled in Snowplow's page on a loaded
        // 2-core VM: a CDP evaluation unanswered for 30 s), each after a
        // garbage collection and from an empty queue: the SDK has handed
        // over what the burst before made (weft: nothing queued, by
        // `weft.debug()`, as the main table drains; the others: the stub
        // receiver has counted the burst's events, or its count stood still
        // for 4 s: PostHog sends every 3 s).
        let mut bursts = Vec::new();
        for round in 0..=rounds.min(10) {
            let before = stub.totals().0;
            page.call("HeapProfiler.collectGarbage", json!({})).await;
            let ms = page
                .eval(&format!("__bench.time({calls})"))
                .await
                .as_f64()
                .unwrap_or(f64::NAN);
            if weft {
                super::drain(&page).await;
            } else {
                handed_over(|| stub.totals().0, before + calls).await;
            }
            if round > 0 {
                bursts.push(ms * 1000.0 / calls as f64);
            }
        }
        page.call("Page.close", json!({})).await;
        // What the closed page still sends (on its way out) must not count
        // for the next burst.
        settle(|| {
            if weft {
                collector.rows().len()
            } else {
                stub.totals().0
            }
        })
        .await;

        // Delivery of a burst of 1,050 on a fresh page.
        let page = page_as_chrome(chromium, &user_agent).await;
        page.goto(&collector.url(s.track_page)).await;
        page.eval("__bench.ready").await;
        let (stub_events, _) = stub.totals();
        let rows = collector.rows().len();
        page.eval(&format!(
            "var E = {EVENT:?}, p = __bench.props; for (var i = 0; i < 1050; i++) {{ {} }} true",
            s.track
        ))
        .await;
        let got = settle(|| {
            if weft {
                collector.rows().len() - rows
            } else {
                stub.totals().0 - stub_events
            }
        })
        .await;
        if !weft && got == 0 {
            let seen = stub.seen.lock().unwrap().len();
            eprintln!(
                "weft-sdk-bench: {}: nothing delivered ({seen} POSTs seen in all); page problems: {:?} {:?}",
                s.name,
                page.exceptions(),
                super::problems(&page, &s.name).1
            );
        }
        page.call("Page.close", json!({})).await;

        sync20.push(median_p95(&sync).0);
        async20.push(median_p95(&with_async).0);
        burst.push(median_p95(&bursts).0);
        bytes.push(per_event);
        delivered.push(got as f64);
    }
    table.push((
        "track, rounds of 20: synchronous per call".into(),
        sync20,
        "us",
    ));
    table.push((
        format!("track, bursts of {calls}: synchronous per call"),
        burst,
        "us",
    ));
    table.push((
        "track, rounds of 20: main-thread per call incl. later work".into(),
        async20,
        "us",
    ));
    table.push(("request bytes per event, as sent".into(), bytes, "B"));
    table.push((
        "events delivered of a 1,050-call burst".into(),
        delivered,
        "events",
    ));

    println!(
        "\nside by side ({} cold loads each, interleaved; user agent {user_agent:?}; PostHog's rate \
         limiter set to 100000/s and bursts of 100000 and its bot filter off; PostHog and Snowplow send to a stub receiver, \
         weft to the collector):\n",
        rounds
    );
    println!(
        "| figure (median) | {} |",
        sdks.iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("|---|{}", "---:|".repeat(sdks.len()));
    for (what, values, unit) in &table {
        // The best: the largest for deliveries, else the smallest.
        let best = if *unit == "events" {
            values.iter().copied().fold(f64::NAN, f64::max)
        } else {
            values.iter().copied().fold(f64::NAN, f64::min)
        };
        let cells: Vec<String> = values
            .iter()
            .map(|v| {
                let ratio = if *unit == "events" {
                    best / v
                } else {
                    v / best
                };
                if v.is_finite() {
                    format!("{} ({ratio:.2}x)", super::format_value(*v, unit))
                } else {
                    "n/a".to_owned()
                }
            })
            .collect();
        println!("| {what} | {} |", cells.join(" | "));
    }
    Ok(())
}

/// Waits until `count` reaches `target`, or has not changed for 4 s; 20 s
/// at most.
async fn handed_over(count: impl Fn() -> usize, target: usize) {
    let (mut last, mut still) = (usize::MAX, 0);
    for _ in 0..100 {
        let now = count();
        if now >= target {
            return;
        }
        still = if now == last { still + 1 } else { 0 };
        if still == 20 {
            return;
        }
        last = now;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until `count` has not changed for 4 s (PostHog sends every 3 s),
/// 30 s at most; returns its last value.
async fn settle(count: impl Fn() -> usize) -> usize {
    let (mut last, mut still) = (usize::MAX, 0);
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = count();
        still = if now == last { still + 1 } else { 0 };
        if still == 4 {
            return now;
        }
        last = now;
    }
    last
}

/// Bytes of weft's `/v1/batch` requests as sent so far.
fn weft_wire(page: &Page) -> usize {
    page.requests_to("/v1/batch")
        .iter()
        .filter_map(|r| r.wire_bytes)
        .sum()
}
