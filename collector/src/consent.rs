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
use serde_json::value::RawValue;

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
#[serde(rename_all = "camelCase")]
struct View<'a> {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    context: Option<ContextView>,
    #[serde(default, borrow)]
    properties: Option<&'a RawValue>,
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

fn granted(v: &Value) -> bool {
    v.as_bool().unwrap_or(false) || v.as_str() == Some("granted")
}

/// Decides whether a validated message may be stored, and extracts its
/// consent record if it is one. `raw` is the message as received.
pub fn check(raw: &str, missing: MissingConsent) -> Result<Option<ConsentRecord>, Drop> {
    let Ok(view) = serde_json::from_str::<View<'_>>(raw) else {
        // Validation already accepted it; a shape this cannot read carries
        // no consent context.
        return match missing {
            MissingConsent::Assumed => Ok(None),
            MissingConsent::Required => Err(Drop::Missing),
        };
    };
    let is_record =
        view.kind.as_deref() == Some("track") && view.event.as_deref() == Some(CONSENT_EVENT);
    let consent = view.context.and_then(|c| c.consent);
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
    let props = view
        .properties
        .and_then(|p| serde_json::from_str::<RecordProperties>(p.get()).ok());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn check_case(raw: &str, missing: MissingConsent, expect: Result<bool, Drop>) {
        let got = check(raw, missing).map(|r| r.is_some());
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
    fn consent_records_are_necessary_and_extracted() {
        let denial = r#"{"type":"track","event":"Consent Updated","anonymousId":"a",
            "properties":{"categoryPreferences":{"analytics":false,"marketing":false},"policy":"opt-in","policyVersion":"2026-01"},
            "context":{"consent":{"categoryPreferences":{"analytics":false,"marketing":false}}}}"#;
        let record = check(denial, MissingConsent::Required).unwrap().unwrap();
        assert_eq!(
            record.preferences,
            r#"{"analytics":false,"marketing":false}"#
        );
        assert_eq!(record.policy.as_deref(), Some("opt-in"));
        assert_eq!(record.policy_version.as_deref(), Some("2026-01"));
    }
}
