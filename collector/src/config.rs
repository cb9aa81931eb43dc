//! The collector's settings as plain data. [`crate::cli`] builds them from
//! flags and environment variables; tests build them directly.

use std::path::PathBuf;
use std::time::Duration;

/// A source: something that sends events (a website, a server), identified
/// by its write key.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// A name for people (`shop`, `backend`); defaults to the write key.
    #[serde(default)]
    pub name: String,
    /// The write key the source authenticates with.
    pub write_key: String,
    /// Browser origins (`https://shop.example`) allowed to send with this
    /// key. Empty: any origin.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Requests per second this source may send; beyond it, 429.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    /// What messages without consent context mean: `assumed` (default, for
    /// server SDKs) or `required` (dropped).
    #[serde(default)]
    pub consent: crate::consent::MissingConsent,
}

/// A token bucket: `requests_per_second` on average, bursts of `burst`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained requests per second.
    pub requests_per_second: f64,
    /// Requests allowed at once after a quiet period.
    pub burst: u32,
}

impl Source {
    /// A source that accepts browsers from any origin, without a rate limit.
    pub fn any_origin(write_key: impl Into<String>) -> Self {
        let write_key = write_key.into();
        Source {
            name: write_key.clone(),
            write_key,
            allowed_origins: Vec::new(),
            rate_limit: None,
            consent: Default::default(),
        }
    }

    /// Whether a browser on `origin` may send with this key.
    pub fn allows_origin(&self, origin: &str) -> bool {
        self.allowed_origins.is_empty() || self.allowed_origins.iter().any(|o| o == origin)
    }
}

/// Paths the operator picks for what browsers load and send to, so that
/// blocklists matching `weft.js` or `/v1/batch` (or words like `track`,
/// `analytics`) find nothing to match. The defaults stay served as well.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublicPaths {
    /// The SDK script (`/assets/app-4f1.js`); the wasm, the strict-CSP
    /// fallback and the types are served beside it under its stem
    /// (`/assets/app-4f1.wasm`, `/assets/app-4f1-fallback.js`,
    /// `/assets/app-4f1.d.ts`), which is where the SDK looks for them.
    pub script: Option<String>,
    /// A batch endpoint (`/assets/s`), the same as `/v1/batch`; the script
    /// tag names it in `data-endpoint`.
    pub ingest: Option<String>,
}

impl PublicPaths {
    /// Checks a script path: absolute, ending in `.js`, plain characters,
    /// clear of the collector's own routes.
    pub fn check_script(path: &str) -> Result<(), String> {
        check_path(path)?;
        if !path.ends_with(".js") || path.len() < 5 {
            return Err(format!(
                "{path:?}: a script path ends in .js, like \"/assets/app-4f1.js\""
            ));
        }
        Ok(())
    }

    /// Checks an ingest path: absolute, plain characters, clear of the
    /// collector's own routes.
    pub fn check_ingest(path: &str) -> Result<(), String> {
        check_path(path)?;
        if path.ends_with('/') {
            return Err(format!("{path:?}: no trailing /"));
        }
        Ok(())
    }

    /// The SDK file (`weft.js`, `weft.wasm`, ...) a request path names
    /// under the configured script's stem.
    pub fn sdk_file(&self, path: &str) -> Option<&'static str> {
        let stem = self.script.as_deref()?.strip_suffix(".js")?;
        match path.strip_prefix(stem)? {
            ".js" => Some("weft.js"),
            ".wasm" => Some("weft.wasm"),
            "-fallback.js" => Some("weft-fallback.js"),
            ".d.ts" => Some("weft.d.ts"),
            _ => None,
        }
    }
}

fn check_path(path: &str) -> Result<(), String> {
    let plain = path.len() <= 200
        && path.starts_with('/')
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.'))
        && !path.contains("//")
        && !path
            .split('/')
            .any(|seg| seg == "." || seg == ".." || seg.starts_with('.'));
    if !plain {
        return Err(format!(
            "{path:?}: an absolute path of letters, digits, -, _, . and / (no .., no hidden names)"
        ));
    }
    let reserved = ["/v1/", "/healthz", "/readyz", "/metrics", "/dashboard"];
    if reserved.iter().any(|r| path.starts_with(r)) || path == "/" {
        return Err(format!("{path:?}: taken by the collector's own routes"));
    }
    Ok(())
}

/// Everything [`crate::serve`] needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the embedded store keeps its files.
    pub data_dir: PathBuf,
    /// The sources allowed to send.
    pub sources: Vec<Source>,
    /// The bearer token of the admin API.
    pub admin_token: String,
    /// The demo site and dashboard (`www/`); `None` serves none.
    pub www_dir: Option<PathBuf>,
    /// The built SDK (`weft.js`, `weft.wasm`); `None` serves none.
    pub sdk_dir: Option<PathBuf>,
    /// Bound of the write queue, in requests; beyond it ingest answers 503.
    pub write_queue_capacity: usize,
    /// How many recent (source, messageId) pairs ingest deduplicates
    /// against before a message is written to the log.
    pub dedup_window: usize,
    /// Most connections served at once; more are closed on accept.
    pub max_connections: usize,
    /// Time a client has to send its request headers.
    pub header_timeout: Duration,
    /// Time a client has to send its request body.
    pub body_timeout: Duration,
    /// Operator-chosen paths for the SDK and batches ([`PublicPaths`]).
    pub paths: PublicPaths,
    /// Where the first-party device cookie is set
    /// ([`crate::device_cookie`]).
    pub server_cookie: crate::device_cookie::Scope,
    /// Peers whose `X-Forwarded-For` is believed (reverse proxies); the
    /// header of any other peer is ignored ([`crate::proxy`]).
    pub trusted_proxies: Vec<crate::proxy::Cidr>,
    /// Keep whole client IPs instead of truncating them (IPv4 /24, IPv6 /48).
    pub keep_full_ip: bool,
    /// Identifier values never linked, beyond the built-in junk list.
    pub junk_ids: Vec<String>,
    /// Events (and rejected messages) older than this, by receipt, are
    /// deleted; `None` keeps them forever.
    pub retention: Option<Duration>,
    /// How often the retention sweep runs.
    pub retention_sweep_every: Duration,
    /// How often segment memberships with `within` windows are checked for
    /// windows that moved on (a profile leaves within this of the exact
    /// time).
    pub segment_tick: Duration,
    /// Destinations from the configuration file (`[[destination]]`),
    /// applied at start; more come by the API.
    pub destinations: Vec<crate::destinations::config::DestinationConfig>,
}

impl Config {
    /// Defaults for a data directory, sources and an admin token.
    pub fn new(data_dir: impl Into<PathBuf>, sources: Vec<Source>, admin_token: String) -> Self {
        Config {
            data_dir: data_dir.into(),
            sources,
            admin_token,
            www_dir: None,
            sdk_dir: None,
            write_queue_capacity: 1024,
            dedup_window: 10_000_000,
            max_connections: 4096,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            paths: PublicPaths::default(),
            server_cookie: Default::default(),
            trusted_proxies: Vec::new(),
            keep_full_ip: false,
            junk_ids: Vec::new(),
            retention: None,
            retention_sweep_every: Duration::from_secs(3600),
            segment_tick: Duration::from_secs(10),
            destinations: Vec::new(),
        }
    }

    /// The source with this write key.
    pub fn source(&self, write_key: &str) -> Option<&Source> {
        self.sources.iter().find(|s| s.write_key == write_key)
    }
}
