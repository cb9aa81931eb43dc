//! Consent, enforced again on the server (DESIGN.md §7): an event is stored
//! only if its own `context.consent.categoryPreferences` grants the category
//! it needs. Consent records (`track` "Consent Updated") are recognised here
//! so the store can keep them in the audit log.
//!
//! The category an event needs is `context.consent.category` (weft's SDK
//! sets it; `track(..., {category})`), `analytics` by default, and
//! `necessary` for consent records themselves. A preference counts as
//! granted when it is `true` or `"granted"` (Google Consent Mode's word).
//! Messages without any consent context follow the source's setting:
//! assumed (server SDKs, the default) or required.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

/// The consent categories.
pub const CATEGORIES: [&str; 4] = ["necessary", "analytics", "marketing", "personalization"];
/// The `track` event name of a consent record.
pub const CONSENT_EVENT: &str = "Consent Updated";

/// What a source's messages without consent context mean.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MissingConsent {
    /// Consent is assumed (server-side sources that collect it themselves).
    #[default]
    Assumed,
    /// Messages without consent context are dropped.
    Required,
}

/// Why an event was dropped for consent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    /// Its category is not granted in its own context.
    Denied,
    /// It has no consent context and the source requires one.
    Missing,
}

impl Drop {
    /// The metrics label.
    pub fn code(self) -> &'static str {
        match self {
            Drop::Denied => "consent_denied",
            Drop::Missing => "consent_missing",
        }
    }
}

/// A consent decision to keep in the audit log.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsentRecord {
    /// The categories and whether each is granted, as JSON.
    pub preferences: String,
    /// `opt-in` or `opt-out`, if stated.
    pub policy: Option<String>,
    /// The site's policy version, if stated.
    pub policy_version: Option<String>,
}

#[derive(Deserialize)]
struct ContextView {
    #[serde(default)]
    consent: Option<ConsentView>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConsentView {
    #[serde(default)]
    category: Option<String>,
    #[serde(default)]
    category_preferences: Option<BTreeMap<String, Value>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RecordProperties {
    #[serde(default)]
    category_preferences: Option<BTreeMap<String, Value>>,
    #[serde(default)]
    policy: Option<String>,
    #[serde(default)]
    policy_version: Option<String>,
}

/// Whether a preference's value grants: `true`, or Consent Mode's `"granted"`.
pub fn granted(v: &Value) -> bool {
    v.as_bool().unwrap_or(false) || v.as_str() == Some("granted")
}

/// The parts of a message consent is decided on: its type and event name,
/// and the raw JSON of its `context` (merged with the batch's) and
/// `properties`.
#[derive(Debug, Clone, Copy)]
pub struct Parts<'a> {
    /// `type`.
    pub kind: weft_protocol::MessageType,
    /// `event`, for a `track`.
    pub event: Option<&'a str>,
    /// `context`, as JSON text.
    pub context: Option<&'a str>,
    /// `properties`, as JSON text.
    pub properties: Option<&'a str>,
}

/// Decides whether a validated message may be stored, and extracts its
/// consent record if it is one.
pub fn check(parts: Parts<'_>, missing: MissingConsent) -> Result<Option<ConsentRecord>, Drop> {
    // A context this cannot read carries no consent context; one that does
    // not name it is not parsed at all (most server messages).
    let context = parts
        .context
        .filter(|c| c.contains("consent"))
        .and_then(|c| serde_json::from_str::<ContextView>(c).ok());
    let is_record =
        parts.kind == weft_protocol::MessageType::Track && parts.event == Some(CONSENT_EVENT);
    let consent = context.and_then(|c| c.consent);
    let (category, prefs) = match consent {
        Some(c) => (c.category, c.category_preferences),
        None => (None, None),
    };
    let category = if is_record {
        "necessary".to_owned()
    } else {
        category.unwrap_or_else(|| "analytics".to_owned())
    };
    if category != "necessary" {
        match &prefs {
            None if missing == MissingConsent::Required => return Err(Drop::Missing),
            None => {}
            Some(p) if !p.get(&category).is_some_and(granted) => return Err(Drop::Denied),
            Some(_) => {}
        }
    }
    if !is_record {
        return Ok(None);
    }
    let props = parts
        .properties
        .and_then(|p| serde_json::from_str::<RecordProperties>(p).ok());
    let preferences = props
        .as_ref()
        .and_then(|p| p.category_preferences.clone())
        .or(prefs)
        .unwrap_or_default();
    Ok(Some(ConsentRecord {
        preferences: serde_json::to_string(&preferences).unwrap_or_else(|_| "{}".into()),
        policy: props.as_ref().and_then(|p| p.policy.clone()),
        policy_version: props.and_then(|p| p.policy_version),
    }))
}

#[derive(Deserialize)]
struct MessageView {
    #[serde(default)]
    context: Option<ContextView>,
}

/// Whether a message's `context` (its JSON text) grants `category` in its
/// `consent.categoryPreferences`; `None` when it has none.
pub fn context_grants(context: &str, category: &str) -> Option<bool> {
    if !context.contains("categoryPreferences") {
        return None;
    }
    let view: ContextView = serde_json::from_str(context).ok()?;
    let prefs = view.consent?.category_preferences?;
    Some(prefs.get(category).is_some_and(granted))
}

/// Whether a stored message's own `context.consent.categoryPreferences`
/// grants `category`; `None` when it has none (the source's setting then
/// decides). What destinations filter on.
pub fn grants(message: &str, category: &str) -> Option<bool> {
    // Most messages of server SDKs carry no preferences: skip the parse.
    if !message.contains("categoryPreferences") {
        return None;
    }
    let view: MessageView = serde_json::from_str(message).ok()?;
    let prefs = view.context?.consent?.category_preferences?;
    Some(prefs.get(category).is_some_and(granted))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `check` on a whole message's text.
    fn check_raw(raw: &str, missing: MissingConsent) -> Result<Option<ConsentRecord>, Drop> {
        let v: Value = serde_json::from_str(raw).unwrap();
        let kind = weft_protocol::MessageType::parse(v["type"].as_str().unwrap()).unwrap();
        let context = v.get("context").map(Value::to_string);
        let properties = v.get("properties").map(Value::to_string);
        let parts = Parts {
            kind,
            event: v["event"].as_str(),
            context: context.as_deref(),
            properties: properties.as_deref(),
        };
        check(parts, missing)
    }

    fn check_case(raw: &str, missing: MissingConsent, expect: Result<bool, Drop>) {
        let got = check_raw(raw, missing).map(|r| r.is_some());
        assert_eq!(got, expect, "{raw}");
    }

    #[test]
    fn events_need_their_category_granted_in_their_own_context() {
        use MissingConsent::{Assumed, Required};
        let granted = r#"{"type":"page","context":{"consent":{"categoryPreferences":{"analytics":true,"marketing":false}}}}"#;
        check_case(granted, Required, Ok(false));
        let denied =
            r#"{"type":"page","context":{"consent":{"categoryPreferences":{"analytics":false}}}}"#;
        check_case(denied, Assumed, Err(Drop::Denied));
        let marketing = r#"{"type":"track","event":"Ad","context":{"consent":{"category":"marketing","categoryPreferences":{"analytics":true,"marketing":false}}}}"#;
        check_case(marketing, Assumed, Err(Drop::Denied));
        let gcm = r#"{"type":"track","event":"Ad","context":{"consent":{"category":"marketing","categoryPreferences":{"marketing":"granted"}}}}"#;
        check_case(gcm, Required, Ok(false));
        let unlisted = r#"{"type":"page","context":{"consent":{"categoryPreferences":{}}}}"#;
        check_case(unlisted, Assumed, Err(Drop::Denied));
        let none = r#"{"type":"page","userId":"u"}"#;
        check_case(none, Assumed, Ok(false));
        check_case(none, Required, Err(Drop::Missing));
        let necessary = r#"{"type":"track","event":"X","context":{"consent":{"category":"necessary","categoryPreferences":{"analytics":false}}}}"#;
        check_case(necessary, Required, Ok(false));
    }

    #[test]
    fn a_stored_message_grants_what_its_own_preferences_say() {
        let m = r#"{"type":"track","event":"E","context":{"consent":{"categoryPreferences":{"analytics":true,"marketing":"denied"}}}}"#;
        assert_eq!(grants(m, "analytics"), Some(true));
        assert_eq!(grants(m, "marketing"), Some(false));
        assert_eq!(grants(m, "personalization"), Some(false));
        assert_eq!(grants(r#"{"type":"page","context":{}}"#, "analytics"), None);
        let gcm = r#"{"properties":{"categoryPreferences":1},"context":{"consent":{"categoryPreferences":{"marketing":"granted"}}}}"#;
        assert_eq!(grants(gcm, "marketing"), Some(true));
    }

    #[test]
    fn consent_records_are_necessary_and_extracted() {
        let denial = r#"{"type":"track","event":"Consent Updated","anonymousId":"a",
            "properties":{"categoryPreferences":{"analytics":false,"marketing":false},"policy":"opt-in","policyVersion":"2026-01"},
            "context":{"consent":{"categoryPreferences":{"analytics":false,"marketing":false}}}}"#;
        let record = check_raw(denial, MissingConsent::Required)
            .unwrap()
            .unwrap();
        assert_eq!(
            record.preferences,
            r#"{"analytics":false,"marketing":false}"#
        );
        assert_eq!(record.policy.as_deref(), Some("opt-in"));
        assert_eq!(record.policy_version.as_deref(), Some("2026-01"));
    }
}
