//! Command-line flags (each with a `WEFT_*` environment variable) and how
//! they become a [`Config`]: the default write key, the admin token kept in
//! the data directory, and the warnings for development defaults.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;

use crate::config::{Config, Source};

/// The write key used when none is configured.
pub const DEV_WRITE_KEY: &str = "wk_dev";
/// The file in the data directory that keeps a generated admin token.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

/// weft collector: receives events, stores them, serves profiles.
#[derive(Debug, Clone, Parser)]
#[command(name = "weft-collector", version)]
pub struct Cli {
    /// Address to listen on.
    #[arg(long, env = "WEFT_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Directory of the embedded store.
    #[arg(long, env = "WEFT_DATA_DIR", default_value = "./weft-data")]
    pub data_dir: PathBuf,
    /// A source write key (repeatable). Without one, `wk_dev` is used.
    #[arg(long = "write-key", env = "WEFT_WRITE_KEY", value_delimiter = ',')]
    pub write_keys: Vec<String>,
    /// Bearer token of the admin API. Without one, a random token is
    /// generated once and kept in the data directory.
    #[arg(long, env = "WEFT_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Browser origin allowed to send (repeatable). Without one, any origin.
    #[arg(
        long = "allowed-origin",
        env = "WEFT_ALLOWED_ORIGIN",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,
    /// Directory of the demo site and dashboard.
    #[arg(long, env = "WEFT_WWW_DIR")]
    pub www_dir: Option<PathBuf>,
    /// Directory of the built SDK (`weft.js`, `weft.wasm`).
    #[arg(long, env = "WEFT_SDK_DIR")]
    pub sdk_dir: Option<PathBuf>,
    /// Store whole client IP addresses instead of truncating them.
    #[arg(long, env = "WEFT_KEEP_FULL_IP")]
    pub keep_full_ip: bool,
    /// An identifier value never to link profiles by (repeatable), beyond
    /// the built-in list (`null`, `undefined`, `guest`, `0`, ...).
    #[arg(long = "junk-id", env = "WEFT_JUNK_ID", value_delimiter = ',')]
    pub junk_ids: Vec<String>,
    /// Delete events older than this many days (by receipt). Without it,
    /// events are kept.
    #[arg(long, env = "WEFT_RETENTION_DAYS", value_parser = clap::value_parser!(u32).range(1..))]
    pub retention_days: Option<u32>,
    /// How many recent (source, messageId) pairs ingest remembers to
    /// deduplicate client retries before they reach the log.
    #[arg(long, env = "WEFT_DEDUP_WINDOW", default_value_t = 10_000_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub dedup_window: u64,
    /// Sources file (TOML, `[[source]]` tables). Without it, `./weft.toml`
    /// is read if present.
    #[arg(long, env = "WEFT_CONFIG")]
    pub config: Option<PathBuf>,
}

/// The default sources file, read when present and no `--config` is given.
pub const DEFAULT_CONFIG_FILE: &str = "weft.toml";

/// The sources file.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default, rename = "source")]
    sources: Vec<Source>,
    /// Checked by the destinations' own parser, which names the field.
    #[serde(default, rename = "destination")]
    destinations: Vec<toml::Table>,
}

/// Why the flags could not become a configuration.
#[derive(Debug)]
pub enum CliError {
    /// The data directory or token file could not be prepared.
    Io(std::io::Error),
    /// The sources file is missing, unreadable or invalid.
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Io(e) => write!(f, "cannot prepare the data directory: {e}"),
            CliError::ConfigFile { path, reason } => {
                write!(f, "config file {}: {reason}", path.display())
            }
        }
    }
}

impl std::error::Error for CliError {}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError::Io(e)
    }
}

type Destination = crate::destinations::config::DestinationConfig;

/// Reads and checks a sources file: its sources and destinations.
fn read_sources(path: &Path) -> Result<(Vec<Source>, Vec<Destination>), CliError> {
    let err = |reason: String| CliError::ConfigFile {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let file: ConfigFile = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
    let mut sources = file.sources;
    for s in &mut sources {
        if s.write_key.trim().is_empty() {
            return Err(err("a source has an empty write_key".into()));
        }
        if let Some(r) = s.rate_limit
            && (!r.requests_per_second.is_finite() || r.requests_per_second <= 0.0 || r.burst == 0)
        {
            return Err(err(format!(
                "source {:?}: rate_limit needs requests_per_second > 0 and burst > 0",
                s.write_key
            )));
        }
        if s.name.is_empty() {
            s.name = s.write_key.clone();
        }
    }
    let mut destinations: Vec<Destination> = Vec::new();
    for table in file.destinations {
        let body = serde_json::to_value(&table).map_err(|e| err(e.to_string()))?;
        let name = body.get("name").and_then(|n| n.as_str()).unwrap_or("");
        let d = Destination::from_json(name, &body, None)
            .map_err(|e| err(format!("destination {name:?}: {e}")))?;
        if destinations.iter().any(|x| x.name == d.name) {
            return Err(err(format!("destination {name:?} is configured twice")));
        }
        destinations.push(d);
    }
    Ok((sources, destinations))
}

/// Where the admin token came from, so the binary can say so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenOrigin {
    /// Given by flag or environment.
    Configured,
    /// Read from the data directory.
    Stored(PathBuf),
    /// Generated now and saved in the data directory.
    Generated(PathBuf),
}

impl Cli {
    /// Builds the configuration: creates the data directory, resolves the
    /// admin token, applies development defaults with a warning each.
    pub fn into_config(self) -> Result<(Config, TokenOrigin), CliError> {
        let (mut sources, destinations) = match &self.config {
            Some(path) => read_sources(path)?,
            None if Path::new(DEFAULT_CONFIG_FILE).is_file() => {
                read_sources(Path::new(DEFAULT_CONFIG_FILE))?
            }
            None => (Vec::new(), Vec::new()),
        };
        std::fs::create_dir_all(&self.data_dir)?;
        let (admin_token, origin) = match self.admin_token {
            Some(t) if !t.is_empty() => (t, TokenOrigin::Configured),
            _ => load_or_create_token(&self.data_dir)?,
        };
        let mut keys = self.write_keys;
        keys.retain(|k| !k.is_empty());
        if keys.is_empty() && sources.is_empty() {
            tracing::warn!(
                "no --write-key given: accepting the development key `{DEV_WRITE_KEY}`; \
                 configure real keys before exposing this collector"
            );
            keys.push(DEV_WRITE_KEY.to_owned());
        }
        if !keys.is_empty() && self.allowed_origins.is_empty() {
            tracing::warn!(
                "no --allowed-origin given: browsers on any origin may send with the configured keys"
            );
        }
        sources.extend(keys.into_iter().map(|write_key| Source {
            allowed_origins: self.allowed_origins.clone(),
            ..Source::any_origin(write_key)
        }));
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = sources.iter().find(|s| !seen.insert(s.write_key.as_str())) {
            return Err(CliError::ConfigFile {
                path: self
                    .config
                    .clone()
                    .unwrap_or_else(|| DEFAULT_CONFIG_FILE.into()),
                reason: format!("write key {:?} is configured twice", dup.name),
            });
        }
        let mut config = Config::new(self.data_dir, sources, admin_token);
        config.www_dir = self.www_dir;
        config.sdk_dir = self.sdk_dir;
        config.keep_full_ip = self.keep_full_ip;
        config.destinations = destinations;
        config.junk_ids = self.junk_ids;
        config.dedup_window = usize::try_from(self.dedup_window).unwrap_or(usize::MAX);
        config.retention = self
            .retention_days
            .map(|d| std::time::Duration::from_secs(u64::from(d) * 86_400));
        Ok((config, origin))
    }
}

fn load_or_create_token(data_dir: &Path) -> std::io::Result<(String, TokenOrigin)> {
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let token = text.trim().to_owned();
        if !token.is_empty() {
            return Ok((token, TokenOrigin::Stored(path)));
        }
    }
    let token = random_token()?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&path)?;
    file.write_all(token.as_bytes())?;
    file.sync_all()?;
    Ok((token, TokenOrigin::Generated(path)))
}

/// 32 random bytes as hex, prefixed `wat_` (weft admin token).
pub fn random_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
    let mut out = String::from("wat_");
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        let mut all = vec!["weft-collector"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).expect("flags parse")
    }

    #[test]
    fn defaults_give_dev_key_and_a_stored_token() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let (config, origin) = cli(&["--data-dir", data.to_str().unwrap()])
            .into_config()
            .unwrap();
        assert_eq!(config.sources, vec![Source::any_origin(DEV_WRITE_KEY)]);
        assert!(matches!(origin, TokenOrigin::Generated(_)));
        assert!(config.admin_token.starts_with("wat_") && config.admin_token.len() == 68);

        // A restart reads the same token back.
        let (again, origin) = cli(&["--data-dir", data.to_str().unwrap()])
            .into_config()
            .unwrap();
        assert_eq!(again.admin_token, config.admin_token);
        assert!(matches!(origin, TokenOrigin::Stored(_)));
    }

    #[test]
    fn sources_file_with_origins_and_rate_limits() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("weft.toml");
        std::fs::write(
            &file,
            r#"
[[source]]
name = "shop"
write_key = "wk_shop"
allowed_origins = ["https://shop.example"]
rate_limit = { requests_per_second = 5.0, burst = 10 }

[[source]]
write_key = "wk_backend"
"#,
        )
        .unwrap();
        let (config, _) = cli(&[
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--config",
            file.to_str().unwrap(),
            "--write-key",
            "wk_cli",
        ])
        .into_config()
        .unwrap();
        let keys: Vec<&str> = config
            .sources
            .iter()
            .map(|s| s.write_key.as_str())
            .collect();
        assert_eq!(keys, ["wk_shop", "wk_backend", "wk_cli"]);
        let shop = config.source("wk_shop").unwrap();
        assert_eq!(shop.name, "shop");
        assert!(!shop.allows_origin("https://evil.example"));
        assert_eq!(shop.rate_limit.unwrap().burst, 10);
        assert_eq!(config.source("wk_backend").unwrap().name, "wk_backend");
        assert!(
            config
                .source("wk_backend")
                .unwrap()
                .allows_origin("https://any.example")
        );
    }

    #[test]
    fn bad_sources_files_say_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let check = |text: &str, expect: &str| {
            let file = dir.path().join("bad.toml");
            std::fs::write(&file, text).unwrap();
            let err = cli(&[
                "--data-dir",
                dir.path().to_str().unwrap(),
                "--config",
                file.to_str().unwrap(),
            ])
            .into_config()
            .unwrap_err()
            .to_string();
            assert!(err.contains(expect), "{text:?}: {err}");
        };
        check("[[source]]\nwrite_key = \"\"", "empty write_key");
        check(
            "[[source]]\nwrite_key = \"a\"\n[[source]]\nwrite_key = \"a\"",
            "twice",
        );
        check(
            "[[source]]\nwrite_key = \"a\"\nallowed_origin = []",
            "unknown field",
        );
        check(
            "[[source]]\nwrite_key = \"a\"\nrate_limit = { requests_per_second = 0.0, burst = 1 }",
            "rate_limit",
        );
        check("[[source]", "config file");
        let missing = cli(&[
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--config",
            "/nonexistent.toml",
        ])
        .into_config()
        .unwrap_err();
        assert!(matches!(missing, CliError::ConfigFile { .. }));
    }

    #[test]
    fn explicit_keys_origins_and_token() {
        let dir = tempfile::tempdir().unwrap();
        let (config, origin) = cli(&[
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--write-key",
            "wk_a",
            "--write-key",
            "wk_b",
            "--allowed-origin",
            "https://shop.example",
            "--admin-token",
            "secret",
        ])
        .into_config()
        .unwrap();
        assert_eq!(origin, TokenOrigin::Configured);
        assert_eq!(config.admin_token, "secret");
        assert_eq!(config.sources.len(), 2);
        let a = config.source("wk_a").unwrap();
        assert!(a.allows_origin("https://shop.example"));
        assert!(!a.allows_origin("https://evil.example"));
        assert!(config.source("wk_dev").is_none());
    }
}
