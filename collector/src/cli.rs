//! Command-line flags (each with a `WEFT_*` environment variable) and how
//! they become a [`Config`]: the default write key, the admin token kept in
//! the data directory, and the warnings for development defaults.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;

use crate::config::{Config, Source};
use crate::config_file::FileConfig;
use crate::proxy::Cidr;

/// The write key used when none is configured.
pub const DEV_WRITE_KEY: &str = "wk_dev";
/// The file in the data directory that keeps a generated admin token.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

/// weft collector: receives events, stores them, serves profiles.
///
/// Every flag has a `WEFT_*` environment variable, and most a key in the
/// configuration file (`weft.toml`); a flag or variable wins over the file.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "weft-collector",
    version,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// What to do instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "WEFT_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory of the embedded store [default: ./weft-data].
    #[arg(long, env = "WEFT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// A source write key (repeatable). Without one (and no `[[source]]`),
    /// `wk_dev` is used.
    #[arg(long = "write-key", env = "WEFT_WRITE_KEY", value_delimiter = ',')]
    pub write_keys: Vec<String>,
    /// Bearer token of the admin API. Without one, a random token is
    /// generated once and kept in the data directory.
    #[arg(long, env = "WEFT_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Browser origin allowed to send with the `--write-key` keys
    /// (repeatable). Without one, any origin.
    #[arg(
        long = "allowed-origin",
        env = "WEFT_ALLOWED_ORIGIN",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,
    /// Serve the demo site and dashboard from this directory instead of the
    /// copies built into the binary (development).
    #[arg(long, env = "WEFT_WWW_DIR")]
    pub www_dir: Option<PathBuf>,
    /// Serve the SDK (`weft.js`, `weft.wasm`) from this directory instead of
    /// the copies built into the binary (development).
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
    /// deduplicate client retries before they reach the log
    /// [default: 10000000].
    #[arg(long, env = "WEFT_DEDUP_WINDOW", value_parser = clap::value_parser!(u64).range(1..))]
    pub dedup_window: Option<u64>,
    /// A reverse proxy whose `X-Forwarded-For` is believed: an address or
    /// range such as `127.0.0.1` or `10.0.0.0/8` (repeatable). Without one,
    /// the header is ignored and the TCP peer is the client.
    #[arg(
        long = "trusted-proxy",
        env = "WEFT_TRUSTED_PROXY",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<Cidr>,
    /// Serve the SDK script at this path too (ending in `.js`); its wasm,
    /// fallback and types beside it under the same stem. For sites whose
    /// visitors' blocklists match `weft.js`.
    #[arg(long, env = "WEFT_SCRIPT_PATH", value_parser = parse_script_path)]
    pub script_path: Option<String>,
    /// Accept batches at this path too (the script tag names it in
    /// `data-endpoint`). For blocklists that match `/v1/batch`.
    #[arg(long, env = "WEFT_INGEST_PATH", value_parser = parse_ingest_path)]
    pub ingest_path: Option<String>,
    /// Where the collector sets its first-party device cookie (only with
    /// analytics consent): `auto` on the domain the page and the collector
    /// share, `off`, or a domain such as `shop.example` [default: auto].
    #[arg(long, env = "WEFT_SERVER_COOKIE", value_parser = crate::device_cookie::Scope::parse)]
    pub server_cookie: Option<crate::device_cookie::Scope>,
    /// Configuration file (TOML). Without it, `./weft.toml` is read if
    /// present.
    #[arg(long, env = "WEFT_CONFIG")]
    pub config: Option<PathBuf>,
}

fn parse_script_path(s: &str) -> Result<String, String> {
    crate::config::PublicPaths::check_script(s).map(|()| s.to_owned())
}

fn parse_ingest_path(s: &str) -> Result<String, String> {
    crate::config::PublicPaths::check_ingest(s).map(|()| s.to_owned())
}

/// The subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Check a configuration file and report every problem with its line.
    CheckConfig {
        /// The file [default: ./weft.toml].
        #[arg(long, env = "WEFT_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Copy a data directory consistently, also while a collector runs on it.
    Backup {
        /// The data directory to copy.
        #[arg(long, env = "WEFT_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// The backup's directory (created; must not exist or be empty).
        #[arg(long)]
        to: PathBuf,
    },
    /// Make a data directory from a backup (checked first).
    Restore {
        /// The backup's directory.
        #[arg(long)]
        from: PathBuf,
        /// The data directory to create (must not exist or be empty).
        #[arg(long, env = "WEFT_DATA_DIR")]
        data_dir: PathBuf,
    },
}

/// The default configuration file, read when present and no `--config` is
/// given.
pub const DEFAULT_CONFIG_FILE: &str = "weft.toml";
/// The default address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// The default data directory.
pub const DEFAULT_DATA_DIR: &str = "./weft-data";

/// Why the flags could not become a configuration.
#[derive(Debug)]
pub enum CliError {
    /// The data directory or token file could not be prepared.
    Io(std::io::Error),
    /// The configuration file is missing, unreadable or invalid.
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// What is wrong: one problem per line.
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

/// Reads and checks a configuration file.
pub fn read_config_file(path: &Path) -> Result<FileConfig, CliError> {
    let err = |reason: String| CliError::ConfigFile {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    crate::config_file::parse(&text).map_err(|problems| {
        let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
        err(if lines.len() == 1 {
            lines[0].clone()
        } else {
            format!("{} problems:\n  {}", lines.len(), lines.join("\n  "))
        })
    })
}

/// The configuration file to read: `--config`, else `./weft.toml` when
/// present.
pub fn config_path(flag: Option<&Path>) -> Option<PathBuf> {
    match flag {
        Some(p) => Some(p.to_owned()),
        None => Path::new(DEFAULT_CONFIG_FILE)
            .is_file()
            .then(|| PathBuf::from(DEFAULT_CONFIG_FILE)),
    }
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

/// What [`Cli::into_config`] resolved.
#[derive(Debug)]
pub struct Resolved {
    /// The collector's configuration.
    pub config: Config,
    /// Where the admin token came from.
    pub token: TokenOrigin,
    /// The address to listen on.
    pub listen: SocketAddr,
}

impl Cli {
    /// Builds the configuration: reads the configuration file, lets flags
    /// win over it, creates the data directory, resolves the admin token,
    /// applies development defaults with a warning each.
    pub fn into_config(self) -> Result<Resolved, CliError> {
        let config_path = config_path(self.config.as_deref());
        let file = match &config_path {
            Some(path) => read_config_file(path)?,
            None => FileConfig::default(),
        };
        let mut sources = file.sources;
        let data_dir = self
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let listen = self
            .listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("a valid default address"));
        std::fs::create_dir_all(&data_dir)?;
        let (admin_token, origin) = match self.admin_token {
            Some(t) if !t.is_empty() => (t, TokenOrigin::Configured),
            _ => load_or_create_token(&data_dir)?,
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
        let allowed_origins = if self.allowed_origins.is_empty() {
            file.allowed_origins
        } else {
            self.allowed_origins
        };
        if !keys.is_empty() && allowed_origins.is_empty() {
            tracing::warn!(
                "no --allowed-origin given: browsers on any origin may send with the configured keys"
            );
        }
        sources.extend(keys.into_iter().map(|write_key| Source {
            allowed_origins: allowed_origins.clone(),
            ..Source::any_origin(write_key)
        }));
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = sources.iter().find(|s| !seen.insert(s.write_key.as_str())) {
            return Err(CliError::ConfigFile {
                path: config_path.unwrap_or_else(|| DEFAULT_CONFIG_FILE.into()),
                reason: format!("write key {:?} is configured twice", dup.name),
            });
        }
        let mut config = Config::new(data_dir, sources, admin_token);
        config.www_dir = self.www_dir.or(file.www_dir);
        config.sdk_dir = self.sdk_dir.or(file.sdk_dir);
        config.keep_full_ip = self.keep_full_ip || file.keep_full_ip.unwrap_or(false);
        config.paths = crate::config::PublicPaths {
            script: self.script_path.or(file.script_path),
            ingest: self.ingest_path.or(file.ingest_path),
        };
        config.server_cookie = self
            .server_cookie
            .or(file.server_cookie)
            .unwrap_or_default();
        config.destinations = file.destinations;
        config.junk_ids = if self.junk_ids.is_empty() {
            file.junk_ids
        } else {
            self.junk_ids
        };
        config.trusted_proxies = if self.trusted_proxies.is_empty() {
            file.trusted_proxies
        } else {
            self.trusted_proxies
        };
        let window = self
            .dedup_window
            .or(file.dedup_window)
            .unwrap_or(10_000_000);
        config.dedup_window = usize::try_from(window).unwrap_or(usize::MAX);
        config.retention = self
            .retention_days
            .or(file.retention_days)
            .map(|d| std::time::Duration::from_secs(u64::from(d) * 86_400));
        Ok(Resolved {
            config,
            token: origin,
            listen,
        })
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
        let Resolved {
            config,
            token: origin,
            ..
        } = cli(&["--data-dir", data.to_str().unwrap()])
            .into_config()
            .unwrap();
        assert_eq!(config.sources, vec![Source::any_origin(DEV_WRITE_KEY)]);
        assert!(matches!(origin, TokenOrigin::Generated(_)));
        assert!(config.admin_token.starts_with("wat_") && config.admin_token.len() == 68);

        // A restart reads the same token back.
        let Resolved {
            config: again,
            token: origin,
            ..
        } = cli(&["--data-dir", data.to_str().unwrap()])
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
        let Resolved { config, .. } = cli(&[
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
        check("[[source]]\nwrite_key = \"\"", "must not be empty");
        check(
            "[[source]]\nwrite_key = \"a\"\n[[source]]\nwrite_key = \"a\"",
            "twice",
        );
        check(
            "[[source]]\nwrite_key = \"a\"\nallowed_origin = []",
            "unknown key",
        );
        check(
            "[[source]]\nwrite_key = \"a\"\nrate_limit = { requests_per_second = 0.0, burst = 1 }",
            "rate_limit",
        );
        check("[[source]", "line 1");
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
        let Resolved {
            config,
            token: origin,
            ..
        } = cli(&[
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

    #[test]
    fn public_paths_and_the_server_cookie_come_from_the_file_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("weft.toml");
        std::fs::write(
            &file,
            "script_path = \"/assets/app.js\"\ningest_path = \"/assets/s\"\nserver_cookie = \"shop.example\"\n",
        )
        .unwrap();
        let data = dir.path().to_str().unwrap();
        let from_file = |extra: &[&str]| {
            let mut args = vec!["--data-dir", data, "--config", file.to_str().unwrap()];
            args.extend_from_slice(extra);
            cli(&args).into_config().unwrap().config
        };
        let config = from_file(&[]);
        assert_eq!(config.paths.script.as_deref(), Some("/assets/app.js"));
        assert_eq!(config.paths.ingest.as_deref(), Some("/assets/s"));
        assert_eq!(
            config.server_cookie,
            crate::device_cookie::Scope::Domain("shop.example".into())
        );
        let config = from_file(&[
            "--script-path",
            "/js/x.js",
            "--ingest-path",
            "/x",
            "--server-cookie",
            "off",
        ]);
        assert_eq!(config.paths.script.as_deref(), Some("/js/x.js"));
        assert_eq!(config.paths.ingest.as_deref(), Some("/x"));
        assert_eq!(config.server_cookie, crate::device_cookie::Scope::Off);
        let defaults = cli(&["--data-dir", data]).into_config().unwrap().config;
        assert_eq!(defaults.paths, crate::config::PublicPaths::default());
        assert_eq!(defaults.server_cookie, crate::device_cookie::Scope::Auto);
    }
}
