//! `weft.toml`: the configuration file, read at start and by
//! `weft-collector check-config`.
//!
//! Why it is checked by hand rather than by serde alone: an operator who
//! mistypes a key must be told, with the line, and told every mistake at
//! once, not the first one per restart. So the file is parsed into a
//! spanned document ([`toml::de::DeTable`]), every key is checked against
//! what is allowed where it stands (an unknown key is an error that lists
//! the allowed ones), every value against its type and range, and each
//! problem is reported as `line N: key: what is wrong`. Destinations are
//! checked by their own parser ([`DestinationConfig::from_json`]), the same
//! one the API uses, and its errors are placed on the offending key's line.
//!
//! Keys at the top level mirror the command-line flags (a flag or its
//! `WEFT_*` variable wins over the file); `[[source]]` and
//! `[[destination]]` tables exist only here. The README's configuration
//! reference lists them all.

use std::net::SocketAddr;
use std::path::PathBuf;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::config::{PublicPaths, RateLimit, Source};
use crate::consent::MissingConsent;
use crate::destinations::config::DestinationConfig;
use crate::proxy::Cidr;

/// Keys allowed at the top level, with what each takes.
pub const TOP_LEVEL_KEYS: [(&str, &str); 14] = [
    ("listen", "an address and port, \"127.0.0.1:8080\""),
    ("data_dir", "a directory path"),
    ("www_dir", "a directory path (development)"),
    ("sdk_dir", "a directory path (development)"),
    (
        "allowed_origins",
        "origins for sources given by --write-key",
    ),
    ("keep_full_ip", "true or false"),
    ("junk_ids", "an array of strings"),
    ("retention_days", "a whole number of days, at least 1"),
    ("dedup_window", "a whole number of message IDs, at least 1"),
    (
        "trusted_proxies",
        "an array of addresses or ranges, \"10.0.0.0/8\"",
    ),
    (
        "script_path",
        "the SDK's path, ending in .js, \"/assets/app-4f1.js\"",
    ),
    ("ingest_path", "a batch endpoint's path, \"/assets/s\""),
    (
        "server_cookie",
        "\"auto\", \"off\" or a domain, \"shop.example\"",
    ),
    ("source", "[[source]] tables"),
];

/// Keys of a `[[source]]` table.
const SOURCE_KEYS: [&str; 5] = [
    "name",
    "write_key",
    "allowed_origins",
    "rate_limit",
    "consent",
];

/// Everything the file says. Absent keys are `None` or empty.
#[derive(Debug, Default)]
pub struct FileConfig {
    /// `listen`.
    pub listen: Option<SocketAddr>,
    /// `data_dir`.
    pub data_dir: Option<PathBuf>,
    /// `www_dir`.
    pub www_dir: Option<PathBuf>,
    /// `sdk_dir`.
    pub sdk_dir: Option<PathBuf>,
    /// `allowed_origins`: for the sources given by `--write-key`.
    pub allowed_origins: Vec<String>,
    /// `keep_full_ip`.
    pub keep_full_ip: Option<bool>,
    /// `junk_ids`.
    pub junk_ids: Vec<String>,
    /// `retention_days`.
    pub retention_days: Option<u32>,
    /// `dedup_window`.
    pub dedup_window: Option<u64>,
    /// `trusted_proxies`.
    pub trusted_proxies: Vec<Cidr>,
    /// `script_path`.
    pub script_path: Option<String>,
    /// `ingest_path`.
    pub ingest_path: Option<String>,
    /// `server_cookie`.
    pub server_cookie: Option<crate::device_cookie::Scope>,
    /// `[[source]]` tables, names defaulted to their keys.
    pub sources: Vec<Source>,
    /// `[[destination]]` tables.
    pub destinations: Vec<DestinationConfig>,
}

/// One thing wrong with the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line of the key or value at fault.
    pub line: usize,
    /// Where: `source[2].rate_limit.burst`, `destination "lake".url`.
    pub key: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.key.is_empty() {
            write!(f, "line {}: {}", self.line, self.message)
        } else {
            write!(f, "line {}: {}: {}", self.line, self.key, self.message)
        }
    }
}

/// Parses and checks `text`: the configuration, or every problem found.
pub fn parse(text: &str) -> Result<FileConfig, Vec<Problem>> {
    let mut c = Checker {
        text,
        problems: Vec::new(),
    };
    let (doc, syntax) = DeTable::parse_recoverable(text);
    for e in syntax {
        let at = e.span().map_or(0, |s| s.start);
        c.problem(at, "", e.message().trim().to_owned());
    }
    let mut out = FileConfig::default();
    for (key, value) in doc.get_ref().iter() {
        let name = key.get_ref().as_ref();
        let at = key.span();
        match name {
            "listen" => {
                out.listen = c.string(name, value).and_then(|s| {
                    c.parsed(
                        name,
                        value,
                        s.parse().ok(),
                        "an address and port, \"127.0.0.1:8080\"",
                    )
                })
            }
            "data_dir" => out.data_dir = c.string(name, value).map(PathBuf::from),
            "www_dir" => out.www_dir = c.string(name, value).map(PathBuf::from),
            "sdk_dir" => out.sdk_dir = c.string(name, value).map(PathBuf::from),
            "allowed_origins" => out.allowed_origins = c.origins(name, value),
            "keep_full_ip" => out.keep_full_ip = c.boolean(name, value),
            "junk_ids" => out.junk_ids = c.strings(name, value),
            "retention_days" => {
                out.retention_days = c
                    .integer(name, value, 1, i64::from(u32::MAX))
                    .map(|n| n as u32)
            }
            "dedup_window" => {
                out.dedup_window = c.integer(name, value, 1, i64::MAX).map(|n| n as u64)
            }
            "script_path" | "ingest_path" => {
                if let Some(p) = c.string(name, value) {
                    let checked = if name == "script_path" {
                        PublicPaths::check_script(p)
                    } else {
                        PublicPaths::check_ingest(p)
                    };
                    match checked {
                        Ok(()) if name == "script_path" => out.script_path = Some(p.to_owned()),
                        Ok(()) => out.ingest_path = Some(p.to_owned()),
                        Err(e) => c.problem(value.span().start, name, e),
                    }
                }
            }
            "server_cookie" => {
                if let Some(text) = c.string(name, value) {
                    match crate::device_cookie::Scope::parse(text) {
                        Ok(scope) => out.server_cookie = Some(scope),
                        Err(e) => c.problem(value.span().start, name, e),
                    }
                }
            }
            "trusted_proxies" => {
                for (i, item) in c.array(name, value).iter().enumerate() {
                    let key = format!("{name}[{i}]");
                    if let Some(s) = c.string(&key, item) {
                        match s.parse::<Cidr>() {
                            Ok(cidr) => out.trusted_proxies.push(cidr),
                            Err(e) => c.problem(item.span().start, &key, e),
                        }
                    }
                }
            }
            "source" => {
                for (i, item) in c.array(name, value).iter().enumerate() {
                    if let Some(s) = c.source(i, item) {
                        out.sources.push(s);
                    }
                }
            }
            "destination" => {
                for (i, item) in c.array(name, value).iter().enumerate() {
                    if let Some(d) = c.destination(i, item) {
                        if out.destinations.iter().any(|x| x.name == d.name) {
                            let message = format!("destination {:?} is configured twice", d.name);
                            c.problem(item.span().start, "destination", message);
                        } else {
                            out.destinations.push(d);
                        }
                    }
                }
            }
            _ => {
                let allowed: Vec<&str> = TOP_LEVEL_KEYS
                    .iter()
                    .map(|(k, _)| *k)
                    .chain(["destination"])
                    .collect();
                c.problem(
                    at.start,
                    name,
                    format!("unknown key (allowed here: {})", allowed.join(", ")),
                );
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    for s in &out.sources {
        if !seen.insert(s.write_key.clone()) {
            let at = text.find(&format!("{:?}", s.write_key)).unwrap_or(0);
            c.problem(
                at,
                "source",
                format!("write key {:?} is configured twice", s.name),
            );
        }
    }
    if c.problems.is_empty() {
        Ok(out)
    } else {
        c.problems.sort_by_key(|p| p.line);
        Err(c.problems)
    }
}

type Value<'i> = Spanned<DeValue<'i>>;

struct Checker<'t> {
    text: &'t str,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn line(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }

    fn problem(&mut self, offset: usize, key: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            line: self.line(offset),
            key: key.to_owned(),
            message: message.into(),
        });
    }

    fn wrong_type(&mut self, key: &str, value: &Value<'_>, expected: &str) {
        let found = value.get_ref().type_str();
        self.problem(
            value.span().start,
            key,
            format!("expected {expected}, found {found}"),
        );
    }

    fn string<'v>(&mut self, key: &str, value: &'v Value<'_>) -> Option<&'v str> {
        let s = value.get_ref().as_str();
        if s.is_none() {
            self.wrong_type(key, value, "a string");
        }
        s
    }

    fn boolean(&mut self, key: &str, value: &Value<'_>) -> Option<bool> {
        let b = value.get_ref().as_bool();
        if b.is_none() {
            self.wrong_type(key, value, "true or false");
        }
        b
    }

    fn integer(&mut self, key: &str, value: &Value<'_>, min: i64, max: i64) -> Option<i64> {
        let Some(i) = value.get_ref().as_integer() else {
            self.wrong_type(key, value, "a whole number");
            return None;
        };
        let n = i64::from_str_radix(i.as_str(), i.radix())
            .ok()
            .filter(|n| (min..=max).contains(n));
        if n.is_none() {
            self.problem(
                value.span().start,
                key,
                format!("must be a whole number from {min} to {max}"),
            );
        }
        n
    }

    fn number(&mut self, key: &str, value: &Value<'_>) -> Option<f64> {
        let v = value.get_ref();
        let n = match (v.as_float(), v.as_integer()) {
            (Some(f), _) => f.as_str().replace('_', "").parse::<f64>().ok(),
            (_, Some(i)) => i64::from_str_radix(i.as_str(), i.radix())
                .ok()
                .map(|n| n as f64),
            _ => {
                self.wrong_type(key, value, "a number");
                return None;
            }
        };
        n.filter(|n| n.is_finite())
    }

    fn parsed<T>(&mut self, key: &str, value: &Value<'_>, v: Option<T>, what: &str) -> Option<T> {
        if v.is_none() {
            self.problem(value.span().start, key, format!("must be {what}"));
        }
        v
    }

    fn array<'v, 'i>(&mut self, key: &str, value: &'v Value<'i>) -> &'v [Value<'i>] {
        match value.get_ref().as_array() {
            Some(a) => a,
            None => {
                self.wrong_type(key, value, "an array");
                &[]
            }
        }
    }

    fn strings(&mut self, key: &str, value: &Value<'_>) -> Vec<String> {
        let mut out = Vec::new();
        for (i, item) in self.array(key, value).iter().enumerate() {
            if let Some(s) = self.string(&format!("{key}[{i}]"), item) {
                out.push(s.to_owned());
            }
        }
        out
    }

    /// Browser origins: `scheme://host[:port]`, nothing after.
    fn origins(&mut self, key: &str, value: &Value<'_>) -> Vec<String> {
        let mut out = Vec::new();
        for (i, item) in self.array(key, value).iter().enumerate() {
            let key = format!("{key}[{i}]");
            let Some(s) = self.string(&key, item) else {
                continue;
            };
            let rest = s
                .strip_prefix("https://")
                .or_else(|| s.strip_prefix("http://"));
            match rest {
                Some(host) if !host.is_empty() && !host.contains(['/', '?', '#', ' ']) => {
                    out.push(s.to_owned())
                }
                _ => self.problem(
                    item.span().start,
                    &key,
                    format!(
                        "{s:?} is not an origin: scheme, host and port only, like \"https://www.shop.example\" (no path, no trailing /)"
                    ),
                ),
            }
        }
        out
    }

    fn table<'v, 'i>(&mut self, key: &str, value: &'v Value<'i>) -> Option<&'v DeTable<'i>> {
        let t = value.get_ref().as_table();
        if t.is_none() {
            self.wrong_type(key, value, "a table");
        }
        t
    }

    fn source(&mut self, index: usize, value: &Value<'_>) -> Option<Source> {
        let here = format!("source[{index}]");
        let table = self.table(&here, value)?;
        let before = self.problems.len();
        let mut source = Source::any_origin("");
        let mut has_key = false;
        for (k, v) in table.iter() {
            let name = k.get_ref().as_ref();
            let key = format!("{here}.{name}");
            match name {
                "name" => source.name = self.string(&key, v).unwrap_or("").to_owned(),
                "write_key" => {
                    has_key = true;
                    match self.string(&key, v) {
                        Some(s) if !s.trim().is_empty() => source.write_key = s.to_owned(),
                        Some(_) => self.problem(v.span().start, &key, "must not be empty"),
                        None => {}
                    }
                }
                "allowed_origins" => source.allowed_origins = self.origins(&key, v),
                "consent" => {
                    source.consent = match self.string(&key, v) {
                        Some("assumed") => MissingConsent::Assumed,
                        Some("required") => MissingConsent::Required,
                        Some(other) => {
                            self.problem(
                                v.span().start,
                                &key,
                                format!("{other:?}: must be \"assumed\" or \"required\""),
                            );
                            MissingConsent::Assumed
                        }
                        None => MissingConsent::Assumed,
                    }
                }
                "rate_limit" => source.rate_limit = self.rate_limit(&key, v),
                _ => self.problem(
                    k.span().start,
                    &key,
                    format!("unknown key (allowed here: {})", SOURCE_KEYS.join(", ")),
                ),
            }
        }
        if !has_key {
            self.problem(value.span().start, &here, "write_key is required");
        }
        if source.name.is_empty() {
            source.name = source.write_key.clone();
        }
        (self.problems.len() == before).then_some(source)
    }

    fn rate_limit(&mut self, key: &str, value: &Value<'_>) -> Option<RateLimit> {
        let table = self.table(key, value)?;
        let (mut rps, mut burst) = (None, None);
        for (k, v) in table.iter() {
            let name = k.get_ref().as_ref();
            let here = format!("{key}.{name}");
            match name {
                "requests_per_second" => {
                    rps = self.number(&here, v);
                    if rps.is_some_and(|r| r <= 0.0) {
                        self.problem(v.span().start, &here, "must be more than 0");
                        rps = None;
                    }
                }
                "burst" => burst = self.integer(&here, v, 1, i64::from(u32::MAX)),
                _ => self.problem(
                    k.span().start,
                    &here,
                    "unknown key (allowed here: requests_per_second, burst)",
                ),
            }
        }
        match (rps, burst) {
            (Some(requests_per_second), Some(burst)) => Some(RateLimit {
                requests_per_second,
                burst: burst as u32,
            }),
            _ => {
                self.problem(
                    value.span().start,
                    key,
                    "needs requests_per_second > 0 and burst >= 1",
                );
                None
            }
        }
    }

    fn destination(&mut self, index: usize, value: &Value<'_>) -> Option<DestinationConfig> {
        let here = format!("destination[{index}]");
        let table = self.table(&here, value)?;
        let json = to_json(value.get_ref());
        let name = json.get("name").and_then(|n| n.as_str()).unwrap_or("");
        match DestinationConfig::from_json(name, &json, None) {
            Ok(d) => Some(d),
            Err(e) => {
                // On the line of the field at fault when it is there.
                let at = table
                    .iter()
                    .find(|(k, _)| k.get_ref().as_ref() == e.field)
                    .map_or(value.span(), |(k, _)| k.span());
                let key = if e.field.is_empty() {
                    format!("destination {name:?}")
                } else {
                    format!("destination {name:?}.{}", e.field)
                };
                self.problem(at.start, &key, e.reason);
                None
            }
        }
    }
}

/// A TOML value as JSON, for parsers shared with the JSON API.
fn to_json(v: &DeValue<'_>) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        DeValue::String(s) => J::String(s.to_string()),
        DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
            .map(J::from)
            .unwrap_or(J::Null),
        DeValue::Float(f) => f
            .as_str()
            .replace('_', "")
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or(J::Null, J::Number),
        DeValue::Boolean(b) => J::Bool(*b),
        DeValue::Datetime(d) => J::String(d.to_string()),
        DeValue::Array(a) => J::Array(a.iter().map(|x| to_json(x.get_ref())).collect()),
        DeValue::Table(t) => J::Object(
            t.iter()
                .map(|(k, x)| (k.get_ref().to_string(), to_json(x.get_ref())))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        parse(text)
            .expect_err("the file has problems")
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn a_full_file_parses() {
        let c = parse(
            r#"
listen = "0.0.0.0:8080"
data_dir = "/var/lib/weft"
keep_full_ip = false
retention_days = 395
dedup_window = 20_000_000
junk_ids = ["anonymous"]
trusted_proxies = ["127.0.0.1", "10.0.0.0/8", "::1"]

[[source]]
name = "shop"
write_key = "wk_shop"
allowed_origins = ["https://www.shop.example"]
rate_limit = { requests_per_second = 50, burst = 100 }
consent = "required"

[[destination]]
name = "lake"
kind = "file"
dir = "/var/lib/weft-export"
"#,
        )
        .unwrap();
        assert_eq!(c.listen, Some("0.0.0.0:8080".parse().unwrap()));
        assert_eq!(c.data_dir, Some(PathBuf::from("/var/lib/weft")));
        assert_eq!(c.retention_days, Some(395));
        assert_eq!(c.dedup_window, Some(20_000_000));
        assert_eq!(c.trusted_proxies.len(), 3);
        assert_eq!(c.sources.len(), 1);
        let s = &c.sources[0];
        assert_eq!((s.name.as_str(), s.write_key.as_str()), ("shop", "wk_shop"));
        assert_eq!(s.rate_limit.unwrap().requests_per_second, 50.0);
        assert_eq!(s.consent, MissingConsent::Required);
        assert_eq!(c.destinations[0].name, "lake");
    }

    #[test]
    fn every_problem_is_reported_with_its_line() {
        let got = problems(
            r#"listen = "localhost"
retention_day = 30
keep_full_ip = "yes"
trusted_proxies = ["10.0.0.0/40"]

[[source]]
write_key = "wk_a"
allowed_origin = ["https://a.example"]
rate_limit = { requests_per_second = 0, burst = 1 }

[[source]]
name = "no key"
allowed_origins = ["https://b.example/"]

[[destination]]
name = "hook"
kind = "webhook"
url = "ftp://nope"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
"#,
        );
        let expect = [
            "line 1: listen: must be an address and port",
            "line 2: retention_day: unknown key (allowed here: listen,",
            "line 3: keep_full_ip: expected true or false, found string",
            "line 4: trusted_proxies[0]: \"10.0.0.0/40\": the prefix length must be 0 to 32",
            "line 8: source[0].allowed_origin: unknown key (allowed here: name, write_key,",
            "line 9: source[0].rate_limit.requests_per_second: must be more than 0",
            "line 11: source[1]: write_key is required",
            "line 13: source[1].allowed_origins[0]: \"https://b.example/\" is not an origin",
            "line 18: destination \"hook\".url: must be an http:// or https:// URL",
        ];
        for e in expect {
            assert!(
                got.iter().any(|g| g.starts_with(e)),
                "missing {e:?} in {got:#?}"
            );
        }
    }

    #[test]
    fn syntax_errors_and_duplicates_are_reported() {
        let got = problems("[[source]\nwrite_key = \"a\"\n");
        assert!(got[0].starts_with("line 1: "), "{got:?}");
        let got = problems("[[source]]\nwrite_key = \"a\"\n[[source]]\nwrite_key = \"a\"\n");
        assert!(
            got.iter().any(|g| g.contains("configured twice")),
            "{got:?}"
        );
        let got = problems("dedup_window = 0\n");
        assert!(got[0].contains("from 1 to"), "{got:?}");
        let got = problems("source = 3\n");
        assert!(
            got[0].contains("expected an array, found integer"),
            "{got:?}"
        );
    }
}
