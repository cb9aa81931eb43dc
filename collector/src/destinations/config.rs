//! A destination's settings (DESIGN.md §11): one parser for the API's JSON
//! and `weft.toml`'s `[[destination]]` tables, the checks with the field
//! they name, and the redacted view a GET answers (secrets never leave).

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Map, Value, json};
use weft_protocol::MessageType;

/// Google's Measurement Protocol host, the `ga4` kind's default.
pub const GA4_DEFAULT_BASE_URL: &str = "https://www.google-analytics.com";

/// The consent categories a destination may require.
const CONSENT_CATEGORIES: [&str; 3] = ["analytics", "marketing", "personalization"];

/// Where a destination's delivery starts when it is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Events stored from its creation on.
    Now,
    /// The whole log.
    Earliest,
}

/// What kind of receiver, with its own fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Signed JSON batches POSTed to `url` (Standard Webhooks).
    Webhook {
        /// Where to POST.
        url: String,
        /// The signing key (the bytes after `whsec_`, decoded).
        secret: Vec<u8>,
        /// The secret as configured (`whsec_...`), kept to store it again.
        secret_text: String,
    },
    /// Google Analytics 4 Measurement Protocol.
    Ga4 {
        /// `G-...`.
        measurement_id: String,
        /// The Measurement Protocol API secret.
        api_secret: String,
        /// Scheme and host (tests point it at a local receiver).
        base_url: String,
    },
    /// NDJSON files in a directory, one per hour.
    File {
        /// The directory.
        dir: std::path::PathBuf,
        /// How much time one file covers (an hour by default).
        period: Duration,
    },
}

impl Kind {
    /// `webhook`, `ga4` or `file`.
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Webhook { .. } => "webhook",
            Kind::Ga4 { .. } => "ga4",
            Kind::File { .. } => "file",
        }
    }
}

/// One destination's settings, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationConfig {
    /// Its name (`[a-z0-9_-]{1,64}`), the API's path segment.
    pub name: String,
    /// The receiver.
    pub kind: Kind,
    /// Off: nothing is sent, the position stays where it is.
    pub enabled: bool,
    /// Where delivery starts when it is created.
    pub start: Start,
    /// Message types delivered; empty: all.
    pub types: Vec<MessageType>,
    /// `track` event names delivered; empty: all.
    pub events: Vec<String>,
    /// Segments whose enter/exit changes are delivered.
    pub audiences: Vec<String>,
    /// The category a message's own consent must grant.
    pub consent: String,
    /// Most messages per batch.
    pub batch_size: usize,
    /// How long a partial batch waits for more.
    pub max_age: Duration,
    /// How long a batch is retried before it goes to the dead letters.
    pub retry_limit: Duration,
}

/// A setting that is not valid: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The field (`url`, `batch_size`, ...).
    pub field: String,
    /// Why.
    pub reason: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

fn err(field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// A destination name: `[a-z0-9_-]{1,64}`.
pub fn valid_name(name: &str) -> bool {
    crate::segments::rule::valid_key(name)
}

const COMMON: [&str; 11] = [
    "name",
    "kind",
    "enabled",
    "start",
    "types",
    "events",
    "audiences",
    "consent",
    "batch_size",
    "max_age_ms",
    "retry_limit",
];

/// What a GET answers beyond the settings: accepted in a PUT (so a GET's
/// answer can be edited and sent back) and ignored.
const READ_ONLY: [&str; 8] = [
    "secret_set",
    "pending",
    "unread_records",
    "delivered",
    "failed",
    "dead",
    "last_error",
    "latency_ms",
];

fn kind_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "webhook" => &["url", "secret"],
        "ga4" => &["measurement_id", "api_secret", "base_url"],
        _ => &["dir", "period"],
    }
}

fn string<'a>(obj: &'a Map<String, Value>, field: &str) -> Result<Option<&'a str>, ConfigError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(err(field, "must be a string")),
    }
}

fn required<'a>(obj: &'a Map<String, Value>, field: &str) -> Result<&'a str, ConfigError> {
    match string(obj, field)? {
        Some(s) if !s.trim().is_empty() => Ok(s),
        _ => Err(err(field, "is required")),
    }
}

fn strings(obj: &Map<String, Value>, field: &str) -> Result<Vec<String>, ConfigError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) if items.len() <= 1000 => items
            .iter()
            .map(|v| match v.as_str() {
                Some(s) if !s.is_empty() && s.len() <= 200 => Ok(s.to_owned()),
                _ => Err(err(field, "must list non-empty strings")),
            })
            .collect(),
        Some(_) => Err(err(field, "must be a list of at most 1000 strings")),
    }
}

fn number(
    obj: &Map<String, Value>,
    field: &str,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Option<u64>, ConfigError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if range.contains(&n) => Ok(Some(n)),
            _ => Err(err(
                field,
                format!(
                    "must be a whole number from {} to {}",
                    range.start(),
                    range.end()
                ),
            )),
        },
    }
}

fn http_url(field: &str, url: &str) -> Result<String, ConfigError> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| err(field, "must be an http:// or https:// URL"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty()
        || url.len() > 2000
        || url.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(err(field, "must be an http:// or https:// URL with a host"));
    }
    Ok(url.to_owned())
}

impl DestinationConfig {
    /// Parses and checks a destination named `name` from its JSON body (the
    /// API's, or a `[[destination]]` table turned into JSON). `previous` is
    /// the destination being replaced: a body without its secret keeps the
    /// old one, so a GET's answer can be edited and PUT back.
    pub fn from_json(
        name: &str,
        body: &Value,
        previous: Option<&DestinationConfig>,
    ) -> Result<DestinationConfig, ConfigError> {
        if !valid_name(name) {
            return Err(err(
                "name",
                "a destination name is 1 to 64 of a-z, 0-9, _ and -",
            ));
        }
        let obj = body
            .as_object()
            .ok_or_else(|| err("", "a destination is a JSON object"))?;
        let kind_name = required(obj, "kind")?;
        if !["webhook", "ga4", "file"].contains(&kind_name) {
            return Err(err("kind", "must be webhook, ga4 or file"));
        }
        if let Some(field) = obj.keys().find(|k| {
            !COMMON.contains(&k.as_str())
                && !READ_ONLY.contains(&k.as_str())
                && !kind_fields(kind_name).contains(&k.as_str())
        }) {
            return Err(err(
                field,
                format!(
                    "unknown field for a {kind_name} destination (fields: {}, {})",
                    COMMON.join(", "),
                    kind_fields(kind_name).join(", ")
                ),
            ));
        }
        if let Some(n) = string(obj, "name")?
            && n != name
        {
            return Err(err("name", "differs from the name in the path"));
        }
        let kept = |field: &str| -> Option<String> {
            match (previous.map(|p| &p.kind), field) {
                (Some(Kind::Webhook { secret_text, .. }), "secret") => Some(secret_text.clone()),
                (Some(Kind::Ga4 { api_secret, .. }), "api_secret") => Some(api_secret.clone()),
                _ => None,
            }
        };
        let secret_field = |field: &str| -> Result<String, ConfigError> {
            match string(obj, field)? {
                Some(s) if !s.is_empty() => Ok(s.to_owned()),
                _ => kept(field).ok_or_else(|| err(field, "is required")),
            }
        };
        let kind = match kind_name {
            "webhook" => {
                let url = http_url("url", required(obj, "url")?)?;
                let secret_text = secret_field("secret")?;
                let secret = secret_text
                    .strip_prefix("whsec_")
                    .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                    .filter(|k| (16..=64).contains(&k.len()))
                    .ok_or_else(|| {
                        err(
                            "secret",
                            "must be whsec_ followed by the base64 of 16 to 64 random bytes",
                        )
                    })?;
                Kind::Webhook {
                    url,
                    secret,
                    secret_text,
                }
            }
            "ga4" => {
                let measurement_id = required(obj, "measurement_id")?.to_owned();
                if measurement_id.len() > 64
                    || !measurement_id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                {
                    return Err(err("measurement_id", "must look like G-XXXXXXXXXX"));
                }
                let api_secret = secret_field("api_secret")?;
                if api_secret.len() > 200 || api_secret.bytes().any(|b| !b.is_ascii_graphic()) {
                    return Err(err("api_secret", "must be printable ASCII"));
                }
                let base_url = http_url(
                    "base_url",
                    string(obj, "base_url")?.unwrap_or(GA4_DEFAULT_BASE_URL),
                )?;
                Kind::Ga4 {
                    measurement_id,
                    api_secret,
                    base_url: base_url.trim_end_matches('/').to_owned(),
                }
            }
            _ => {
                let dir = required(obj, "dir")?;
                let period = match obj.get("period") {
                    None | Some(Value::Null) => Duration::from_secs(3600),
                    Some(v) => crate::segments::rule::window(v)
                        .filter(|ms| (1000..=86_400_000).contains(ms))
                        .map(|ms| Duration::from_millis(ms as u64))
                        .ok_or_else(|| err("period", "a duration from 1s to 1d, like 1h"))?,
                };
                Kind::File {
                    dir: dir.into(),
                    period,
                }
            }
        };
        let enabled = match obj.get("enabled") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(err("enabled", "must be true or false")),
        };
        let start = match string(obj, "start")? {
            None | Some("now") => Start::Now,
            Some("earliest") => Start::Earliest,
            Some(_) => return Err(err("start", "must be now or earliest")),
        };
        let types = strings(obj, "types")?
            .iter()
            .map(|t| {
                MessageType::parse(t).ok_or_else(|| {
                    err(
                        "types",
                        "lists track, page, screen, identify, alias or group",
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let events = strings(obj, "events")?;
        let audiences = strings(obj, "audiences")?;
        if let Some(a) = audiences
            .iter()
            .find(|a| !crate::segments::rule::valid_key(a))
        {
            return Err(err("audiences", format!("{a:?} is not a segment key")));
        }
        let consent = string(obj, "consent")?.unwrap_or("analytics").to_owned();
        if !CONSENT_CATEGORIES.contains(&consent.as_str()) {
            return Err(err(
                "consent",
                "must be analytics, marketing or personalization",
            ));
        }
        let batch_size = number(obj, "batch_size", 1..=1000)?.unwrap_or(100) as usize;
        let max_age =
            Duration::from_millis(number(obj, "max_age_ms", 0..=3_600_000)?.unwrap_or(1000));
        let retry_limit = match obj.get("retry_limit") {
            None | Some(Value::Null) => Duration::from_secs(24 * 3600),
            Some(v) => crate::segments::rule::window(v)
                .map(|ms| Duration::from_millis(ms as u64))
                .ok_or_else(|| err("retry_limit", "a duration like 24h, 30m or 90s"))?,
        };
        Ok(DestinationConfig {
            name: name.to_owned(),
            kind,
            enabled,
            start,
            types,
            events,
            audiences,
            consent,
            batch_size,
            max_age,
            retry_limit,
        })
    }

    /// The whole configuration as JSON, secrets included: what is stored.
    pub fn to_stored_json(&self) -> Value {
        let mut v = self.to_public_json();
        match &self.kind {
            Kind::Webhook { secret_text, .. } => v["secret"] = secret_text.clone().into(),
            Kind::Ga4 { api_secret, .. } => v["api_secret"] = api_secret.clone().into(),
            Kind::File { .. } => {}
        }
        if let Some(obj) = v.as_object_mut() {
            obj.remove("secret_set");
        }
        v
    }

    /// The configuration as a GET answers it: secrets left out (a
    /// `secret_set` flag says one is configured).
    pub fn to_public_json(&self) -> Value {
        let mut v = json!({
            "name": self.name,
            "kind": self.kind.name(),
            "enabled": self.enabled,
            "start": match self.start { Start::Now => "now", Start::Earliest => "earliest" },
            "types": self.types.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
            "events": self.events,
            "audiences": self.audiences,
            "consent": self.consent,
            "batch_size": self.batch_size,
            "max_age_ms": self.max_age.as_millis() as u64,
            "retry_limit": format!("{}s", self.retry_limit.as_secs()),
        });
        match &self.kind {
            Kind::Webhook { url, .. } => {
                v["url"] = url.clone().into();
                v["secret_set"] = true.into();
            }
            Kind::Ga4 {
                measurement_id,
                base_url,
                ..
            } => {
                v["measurement_id"] = measurement_id.clone().into();
                v["base_url"] = base_url.clone().into();
                v["secret_set"] = true.into();
            }
            Kind::File { dir, period } => {
                v["dir"] = dir.display().to_string().into();
                v["period"] = format!("{}s", period.as_secs()).into();
            }
        }
        v
    }

    /// Whether a message of this type and event name goes here (before
    /// consent).
    pub fn wants(&self, kind: MessageType, event: Option<&str>) -> bool {
        if !self.types.is_empty() && !self.types.contains(&kind) {
            return false;
        }
        if kind == MessageType::Track && !self.events.is_empty() {
            return event.is_some_and(|e| self.events.iter().any(|x| x == e));
        }
        true
    }

    /// Whether this destination delivers ads (it requires `marketing`):
    /// consent records never go to one.
    pub fn is_ad_destination(&self) -> bool {
        self.consent == "marketing"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn webhook(extra: Value) -> Value {
        let mut v = json!({"kind": "webhook", "url": "http://127.0.0.1:9/hook", "secret": SECRET});
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        v
    }

    #[test]
    fn defaults_follow_the_design() {
        let c = DestinationConfig::from_json("hook", &webhook(json!({})), None).unwrap();
        assert!(c.enabled);
        assert_eq!(c.start, Start::Now);
        assert_eq!(c.consent, "analytics");
        assert_eq!((c.batch_size, c.max_age), (100, Duration::from_secs(1)));
        assert_eq!(c.retry_limit, Duration::from_secs(86_400));
        assert!(c.wants(MessageType::Identify, None));
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases = [
            (json!({"url": "ftp://x"}), "url"),
            (json!({"url": "http:///x"}), "url"),
            (json!({"secret": "nope"}), "secret"),
            (json!({"secret": "whsec_c2hvcnQ="}), "secret"),
            (json!({"batch_size": 0}), "batch_size"),
            (json!({"batch_size": 5000}), "batch_size"),
            (json!({"max_age_ms": -1}), "max_age_ms"),
            (json!({"types": ["click"]}), "types"),
            (json!({"consent": "ads"}), "consent"),
            (json!({"audiences": ["Not A Key"]}), "audiences"),
            (json!({"retry_limit": "1y"}), "retry_limit"),
            (json!({"start": "yesterday"}), "start"),
            (json!({"enabled": "yes"}), "enabled"),
            (json!({"dir": "/tmp"}), "dir"),
            (json!({"kind": "s3"}), "kind"),
        ];
        for (extra, field) in cases {
            let e =
                DestinationConfig::from_json("hook", &webhook(extra.clone()), None).unwrap_err();
            assert_eq!(e.field, field, "{extra}: {e}");
        }
        assert_eq!(
            DestinationConfig::from_json("Bad Name", &webhook(json!({})), None)
                .unwrap_err()
                .field,
            "name"
        );
        let ga4 = json!({"kind": "ga4", "api_secret": "s"});
        assert_eq!(
            DestinationConfig::from_json("g", &ga4, None)
                .unwrap_err()
                .field,
            "measurement_id"
        );
    }

    #[test]
    fn secrets_are_never_in_the_public_view_and_a_put_without_one_keeps_it() {
        let c = DestinationConfig::from_json("hook", &webhook(json!({})), None).unwrap();
        let public = c.to_public_json();
        assert!(!public.to_string().contains("MfKQ9"), "{public}");
        assert_eq!(public["secret_set"], true);
        let mut edited = public.clone();
        edited["batch_size"] = 7.into();
        let again = DestinationConfig::from_json("hook", &edited, Some(&c)).unwrap();
        assert_eq!(again.kind, c.kind);
        assert_eq!(again.batch_size, 7);
        let stored = c.to_stored_json();
        assert_eq!(
            DestinationConfig::from_json("hook", &stored, None).unwrap(),
            c
        );
    }

    #[test]
    fn filters_on_type_and_event_name() {
        let c = DestinationConfig::from_json(
            "hook",
            &webhook(json!({"types": ["track", "identify"], "events": ["Order Completed"]})),
            None,
        )
        .unwrap();
        assert!(c.wants(MessageType::Track, Some("Order Completed")));
        assert!(!c.wants(MessageType::Track, Some("Product Viewed")));
        assert!(c.wants(MessageType::Identify, None));
        assert!(!c.wants(MessageType::Page, None));
    }
}
