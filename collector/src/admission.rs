//! Admission: from a decoded request body to what is appended to the log
//! and what each message's outcome is, as one pure function ([`admit`]).
//!
//! The body is read once: the envelope with its messages left as raw JSON
//! ([`parse_envelope`]), then each message's top level split into its
//! fields, raw values untouched ([`Fields`]). Everything the collector
//! needs (type, identifiers, times, event name, the consent context) is
//! read from those fields; the stored body is the client's own fields in
//! their order with their bytes as sent, the collector's values
//! (`messageId` when missing, `receivedAt`, the skew-corrected
//! `timestamp`, ...) written in front of them, and a batch-level `context`
//! merged into the message's (the message's own keys winning).
//!
//! Nothing here touches the store, the network or the clock: the request's
//! facts come in as [`Facts`], so the fuzz test, the identity ground truth
//! and ingest all call the same function.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use serde_json::value::RawValue;
use time::OffsetDateTime;
use weft_protocol::json::Writer;
use weft_protocol::limits::MAX_MESSAGE_BYTES;
use weft_protocol::{Batch, Json, MessageType};

use crate::clock::{format_utc_millis, parse_rfc3339};
use crate::consent::{self, MissingConsent};
use crate::device_cookie::DeviceCookie;
use crate::error::ApiError;
use crate::identity::is_junk;
use crate::store::{AppendRequest, NewEvent, RejectedMessage};

/// Longest raw text kept for a rejected message.
const MAX_REJECTED_RAW_BYTES: usize = 64 * 1024;
/// Largest batch-level `context`: it is copied into every message.
pub const MAX_BATCH_CONTEXT_BYTES: usize = 16 * 1024;
/// Most bytes of batch context copied into the messages of one request
/// (its size times the number of messages).
const MAX_CONTEXT_COPIES_BYTES: usize = 4 * 1024 * 1024;

/// A request body read as an envelope.
#[derive(Debug)]
pub struct Envelope<'a> {
    /// The messages, as their JSON text.
    pub messages: Vec<&'a RawValue>,
    /// The batch's `sentAt`.
    pub sent_at: Option<String>,
    /// A `writeKey` field, for clients that cannot set headers.
    pub write_key: Option<String>,
    /// The batch's `context`, merged into every message's.
    pub context: Option<Json>,
    /// For a single-message endpoint: its type, the default of the
    /// message's own `type`.
    pub single: Option<MessageType>,
    /// The SDK's reset notice (a logout): the server cookie retires the
    /// device's ID ([`crate::device_cookie`]).
    pub reset: bool,
}

/// Parses a decoded body: a batch envelope for `/v1/batch` (`single` is
/// `None`), else one message. Whole-request errors only; each message is
/// judged later, alone.
pub fn parse_envelope(body: &[u8], single: Option<MessageType>) -> Result<Envelope<'_>, ApiError> {
    // serde would read a struct from a JSON array too (`[[...]]`).
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(ApiError::MalformedJson(
            "the body must be a JSON object".to_owned(),
        ));
    }
    let malformed = |e: serde_json::Error| ApiError::MalformedJson(e.to_string());
    match single {
        None => {
            let b: Batch<&RawValue> = serde_json::from_slice(body).map_err(malformed)?;
            if let Some(c) = &b.context {
                let len = c.as_str().len();
                if len > MAX_BATCH_CONTEXT_BYTES
                    || len.saturating_mul(b.batch.len()) > MAX_CONTEXT_COPIES_BYTES
                {
                    return Err(ApiError::BadRequest(format!(
                        "the batch context ({len} bytes) is copied into each of the {} messages: \
                         keep it under {MAX_BATCH_CONTEXT_BYTES} bytes and {MAX_CONTEXT_COPIES_BYTES} \
                         bytes in all",
                        b.batch.len()
                    )));
                }
            }
            Ok(Envelope {
                messages: b.batch,
                sent_at: b.sent_at,
                write_key: b.write_key,
                context: b.context,
                single: None,
                reset: b.reset,
            })
        }
        Some(kind) => {
            let raw: &RawValue = serde_json::from_slice(body).map_err(malformed)?;
            // Only the key is read here; the message is split once, later.
            #[derive(Deserialize)]
            #[serde(rename_all = "camelCase")]
            struct Key {
                #[serde(default)]
                write_key: Option<String>,
            }
            let key: Key = serde_json::from_str(raw.get()).map_err(malformed)?;
            Ok(Envelope {
                messages: vec![raw],
                sent_at: None,
                write_key: key.write_key,
                context: None,
                single: Some(kind),
                reset: false,
            })
        }
    }
}

/// What admission needs to know about the request besides its body.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The source's write key.
    pub source: &'a str,
    /// What the source's messages without consent context mean.
    pub consent: MissingConsent,
    /// When the request arrived (the collector's clock).
    pub received: OffsetDateTime,
    /// The client IP as stored (truncated unless configured otherwise).
    pub ip: Option<&'a str>,
    /// Identifier values never linked, beyond the built-in list.
    pub junk: &'a [String],
    /// The collector's server cookie as the request carried it, when the
    /// request may have one (a browser's, first-party; else `None`):
    /// [`crate::device_cookie`].
    pub device: Option<&'a DeviceCookie>,
}

/// What happened to one message at admission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Valid and allowed: appended (unless the log finds it a duplicate or
    /// suppressed).
    Accepted,
    /// Invalid: kept as a rejected message with its reason.
    Rejected(Rejection),
    /// Its consent context does not allow it: never stored.
    Dropped(consent::Drop),
}

/// Why one message was rejected: a stable code (a metrics label) and a
/// sentence for the sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// `too_large`, `invalid_message`, `missing_identity`, `missing_field`,
    /// `invalid_timestamp` or `internal`.
    pub code: &'static str,
    /// What is wrong, for humans.
    pub reason: String,
}

impl Rejection {
    fn new(code: &'static str, reason: impl Into<String>) -> Self {
        Rejection {
            code,
            reason: reason.into(),
        }
    }

    fn invalid(reason: impl fmt::Display) -> Self {
        Rejection::new("invalid_message", format!("invalid message: {reason}"))
    }
}

/// The result of admitting a request's messages.
#[derive(Debug, Clone)]
pub struct Admission {
    /// What to append: accepted events and rejected messages.
    pub request: AppendRequest,
    /// Each message's outcome, in order.
    pub outcomes: Vec<Outcome>,
    /// Junk identifiers seen (never linked).
    pub junk_ids: u64,
    /// The server cookie after the batch (with [`Facts::device`]).
    pub device: Option<DeviceCookie>,
}

/// Admits every message of `envelope`: validates, enriches, checks consent.
pub fn admit(envelope: &Envelope<'_>, facts: &Facts<'_>) -> Admission {
    let received_text = format_utc_millis(facts.received);
    let batch_text = envelope.context.as_ref().map(Json::as_str);
    // Split once for the whole batch; a context that is not an object is
    // stored as it is in messages without their own.
    let batch_fields = batch_text.and_then(|t| serde_json::from_str::<Fields<'_>>(t).ok());
    let batch_context = batch_text.map(|text| BatchContext {
        text,
        fields: batch_fields.as_ref(),
    });
    let mut admission = Admission {
        request: AppendRequest {
            source: facts.source.to_owned(),
            events: Vec::with_capacity(envelope.messages.len()),
            rejected: Vec::new(),
        },
        outcomes: Vec::with_capacity(envelope.messages.len()),
        junk_ids: 0,
        device: facts.device.cloned(),
    };
    if envelope.reset
        && let Some(cookie) = &mut admission.device
    {
        cookie.reset();
    }
    for raw in &envelope.messages {
        let outcome = match admit_one(
            raw.get(),
            envelope,
            batch_context.as_ref(),
            facts,
            &received_text,
        ) {
            Ok(Admitted {
                event,
                junk,
                analytics,
            }) => {
                admission.junk_ids += u64::from(junk);
                let mut event = event;
                // The server cookie: a denial of analytics (stored or
                // dropped) ends it; a stored message granting it moves it.
                if let Some(cookie) = admission.device.as_mut() {
                    match (analytics, &mut event) {
                        (Some(false), _) => *cookie = DeviceCookie::default(),
                        (Some(true), Ok(e)) => {
                            if let Some(anonymous_id) = &e.anonymous_id {
                                e.same_device = cookie.observe(anonymous_id);
                            }
                        }
                        _ => {}
                    }
                }
                match event {
                    Ok(event) => {
                        admission.request.events.push(event);
                        Outcome::Accepted
                    }
                    Err(drop) => Outcome::Dropped(drop),
                }
            }
            Err(rejection) => {
                admission.request.rejected.push(RejectedMessage {
                    received_at: received_text.clone(),
                    code: rejection.code.to_owned(),
                    reason: rejection.reason.clone(),
                    raw: truncate(raw.get(), MAX_REJECTED_RAW_BYTES).to_owned(),
                });
                Outcome::Rejected(rejection)
            }
        };
        admission.outcomes.push(outcome);
    }
    admission
}

/// A valid message.
struct Admitted {
    /// The event, or why consent drops it.
    event: Result<NewEvent, consent::Drop>,
    /// How many of its identifiers are junk.
    junk: u8,
    /// Whether its consent preferences grant analytics (`None`: it has
    /// none), read only for a request that may carry the server cookie.
    analytics: Option<bool>,
}

/// A batch-level `context`: its text, and its fields when it is an object.
struct BatchContext<'b, 'a> {
    text: &'a str,
    fields: Option<&'b Fields<'a>>,
}

fn admit_one(
    raw: &str,
    envelope: &Envelope<'_>,
    batch_context: Option<&BatchContext<'_, '_>>,
    facts: &Facts<'_>,
    received_text: &str,
) -> Result<Admitted, Rejection> {
    if raw.len() > MAX_MESSAGE_BYTES {
        return Err(Rejection::new(
            "too_large",
            format!("message is larger than {MAX_MESSAGE_BYTES} bytes"),
        ));
    }
    let fields: Fields<'_> = serde_json::from_str(raw).map_err(Rejection::invalid)?;
    let kind = match fields.get("type") {
        Some(v) => {
            let name = string(v, "type")?;
            MessageType::parse(&name).ok_or_else(|| {
                Rejection::invalid(format!(
                    "unknown type {name:?} (track, page, screen, identify, alias or group)"
                ))
            })?
        }
        None => envelope
            .single
            .ok_or_else(|| Rejection::invalid("missing field `type`"))?,
    };
    let anonymous_id = identifier(&fields, "anonymousId")?;
    let user_id = identifier(&fields, "userId")?;
    let previous_id = identifier(&fields, "previousId")?;
    let group_id = identifier(&fields, "groupId")?;
    let event = optional_string(&fields, "event")?;
    let message_id = optional_string(&fields, "messageId")?;
    let non_empty = |s: &Option<Cow<'_, str>>| s.as_deref().is_some_and(|v| !v.is_empty());
    if !non_empty(&anonymous_id) && !non_empty(&user_id) {
        return Err(Rejection::new(
            "missing_identity",
            "anonymousId or userId is required",
        ));
    }
    let missing = match kind {
        MessageType::Track if !non_empty(&event) => Some("track needs an event"),
        MessageType::Alias if !non_empty(&previous_id) || !non_empty(&user_id) => {
            Some("alias needs previousId and userId")
        }
        MessageType::Group if !non_empty(&group_id) => Some("group needs a groupId"),
        _ => None,
    };
    if let Some(reason) = missing {
        return Err(Rejection::new("missing_field", reason));
    }
    let time = |field: &str| -> Result<Option<OffsetDateTime>, Rejection> {
        match optional_string(&fields, field)? {
            None => Ok(None),
            Some(text) => parse_rfc3339(&text).map(Some).ok_or_else(|| {
                Rejection::new(
                    "invalid_timestamp",
                    format!("{field} is not an RFC 3339 time"),
                )
            }),
        }
    };
    let original = match time("timestamp")? {
        Some(t) => Some(t),
        None => time("originalTimestamp")?,
    };
    let sent = match time("sentAt")? {
        Some(t) => Some(t),
        None => match &envelope.sent_at {
            None => None,
            Some(text) => Some(parse_rfc3339(text).ok_or_else(|| {
                Rejection::new("invalid_timestamp", "sentAt is not an RFC 3339 time")
            })?),
        },
    };
    let timestamp = event_time(original, sent, facts.received);

    // The context as stored: the batch's merged under the message's own.
    let own_context = fields.get("context");
    let merged_context: Option<Cow<'_, str>> = match (own_context, batch_context) {
        (own, None) => own.map(|c| Cow::Borrowed(c.get())),
        (None, Some(batch)) => Some(Cow::Borrowed(batch.text)),
        (Some(own), Some(batch)) => Some(match batch.fields {
            Some(fields) => merge_objects(own.get(), fields),
            None => Cow::Borrowed(own.get()),
        }),
    };
    let merged_len = raw.len() + merged_context.as_ref().map_or(0, |c| c.len())
        - own_context.map_or(0, |c| c.get().len());
    if merged_len > MAX_MESSAGE_BYTES {
        return Err(Rejection::new(
            "too_large",
            format!("message with the batch context is larger than {MAX_MESSAGE_BYTES} bytes"),
        ));
    }
    let parts = consent::Parts {
        kind,
        event: event.as_deref(),
        context: merged_context.as_deref(),
        properties: fields.get("properties").map(|p| p.get()),
    };
    let junk = [&anonymous_id, &user_id, &previous_id]
        .iter()
        .filter(|id| id.as_deref().is_some_and(|id| is_junk(id, facts.junk)))
        .count() as u8;
    let analytics = match (facts.device, merged_context.as_deref()) {
        (Some(_), Some(context)) => consent::context_grants(context, "analytics"),
        _ => None,
    };
    let consent_record = match consent::check(parts, facts.consent) {
        Ok(record) => record,
        Err(drop) => {
            return Ok(Admitted {
                event: Err(drop),
                junk,
                analytics,
            });
        }
    };

    // A value read from the JSON text without escapes, or written here,
    // goes into the stored body as it is; one that had escapes is escaped
    // again.
    let message_id_verbatim = !matches!(&message_id, Some(Cow::Owned(id)) if !id.is_empty());
    let message_id = match message_id {
        Some(id) if !id.is_empty() => id.into_owned(),
        _ => server_message_id().ok_or_else(|| {
            Rejection::new(
                "internal",
                "the collector cannot make a messageId now (no randomness from the OS); send one",
            )
        })?,
    };
    let timestamp_text = format_utc_millis(timestamp);
    let original_text = original.map(format_utc_millis);
    let sent_text = sent.map(format_utc_millis);
    let set: [(&str, Option<(&str, bool)>); 10] = [
        ("type", ours(kind.as_str())),
        ("messageId", Some((&message_id, message_id_verbatim))),
        ("anonymousId", verbatim(&anonymous_id)),
        ("userId", verbatim(&user_id)),
        ("previousId", verbatim(&previous_id)),
        ("groupId", verbatim(&group_id)),
        ("timestamp", ours(&timestamp_text)),
        ("originalTimestamp", original_text.as_deref().and_then(ours)),
        ("sentAt", sent_text.as_deref().and_then(ours)),
        ("receivedAt", ours(received_text)),
    ];
    let (body, properties) = stored_body(&fields, &set, merged_context.as_deref());
    let keep = |id: Option<Cow<'_, str>>| {
        id.filter(|id| !is_junk(id, facts.junk))
            .map(Cow::into_owned)
    };
    Ok(Admitted {
        event: Ok(NewEvent {
            message_id,
            kind,
            event: event.map(Cow::into_owned),
            consent_record,
            junk_ids: junk,
            anonymous_id: keep(anonymous_id),
            user_id: keep(user_id),
            previous_id: keep(previous_id.filter(|_| kind == MessageType::Alias)),
            timestamp: timestamp_text,
            received_at: received_text.to_owned(),
            ip: facts.ip.map(str::to_owned),
            body,
            properties,
            same_device: None,
        }),
        junk,
        analytics,
    })
}

/// A client's value for the stored body, and whether it can be written as
/// it is: read from the JSON text without escapes.
fn verbatim<'s>(v: &'s Option<Cow<'_, str>>) -> Option<(&'s str, bool)> {
    v.as_ref()
        .map(|v| (v.as_ref(), matches!(v, Cow::Borrowed(_))))
}

/// A value the collector wrote (ASCII that needs no escape) for the stored
/// body.
fn ours(v: &str) -> Option<(&str, bool)> {
    Some((v, true))
}

/// Keys of a message that are never stored as the client sent them: the
/// collector's own values replace them, and a `writeKey` is dropped.
const SERVER_KEYS: [&str; 11] = [
    "type",
    "messageId",
    "anonymousId",
    "userId",
    "previousId",
    "groupId",
    "timestamp",
    "originalTimestamp",
    "sentAt",
    "receivedAt",
    "writeKey",
];

/// The message as stored: the collector's values for [`SERVER_KEYS`]
/// (`set`: each value with whether it can be written as it is; absent ones
/// omitted), then every other field the client sent, in its order and as
/// its bytes (unknown ones included: nothing is lost), with `context`
/// replaced by the merged one.
fn stored_body(
    fields: &Fields<'_>,
    set: &[(&str, Option<(&str, bool)>)],
    context: Option<&str>,
) -> (String, Option<(u32, u32)>) {
    let mut properties = None;
    let mut w = Writer::new();
    w.object_start();
    for (key, value) in set {
        if let Some((v, verbatim)) = *value {
            w.key_verbatim(key);
            if verbatim {
                w.string_verbatim(v);
            } else {
                w.string(v);
            }
        }
    }
    let mut context_written = false;
    for (key, value) in &fields.0 {
        if SERVER_KEYS.contains(&key.as_ref()) {
            continue;
        }
        match key {
            Cow::Borrowed(k) => w.key_verbatim(k),
            Cow::Owned(k) => w.key(k),
        }
        if key == "context" {
            context_written = true;
            w.raw(&Json::from_trusted(context.unwrap_or(value.get())));
        } else {
            let start = w.len();
            w.raw(&Json::from_trusted(value.get()));
            if key == "properties" && properties.is_none() {
                properties = Some((start as u32, w.len() as u32));
            }
        }
    }
    if let (false, Some(c)) = (context_written, context) {
        w.key_verbatim("context");
        w.raw(&Json::from_trusted(c));
    }
    w.object_end();
    (w.finish(), properties)
}

/// `own` with the keys of `batch` it lacks added (if `own` is not a JSON
/// object, `own` as it is).
fn merge_objects<'a>(own: &'a str, batch_fields: &Fields<'_>) -> Cow<'a, str> {
    let Ok(own_fields) = serde_json::from_str::<Fields<'_>>(own) else {
        return Cow::Borrowed(own);
    };
    let mut w = Writer::new();
    w.object_start();
    for (key, value) in &own_fields.0 {
        w.key(key);
        w.raw(&Json::from_trusted(value.get()));
    }
    for (key, value) in &batch_fields.0 {
        if own_fields.get(key).is_none() {
            w.key(key);
            w.raw(&Json::from_trusted(value.get()));
        }
    }
    w.object_end();
    Cow::Owned(w.finish())
}

/// A JSON object's fields in their order, values left raw. A key given
/// twice is an error (which one would count is anyone's guess).
#[derive(Debug)]
pub struct Fields<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'a> Fields<'a> {
    /// The raw value of `key`.
    pub fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Fields<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields: Vec<(Cow<'de, str>, &'de RawValue)> =
                    Vec::with_capacity(map.size_hint().unwrap_or(12));
                // A linear check is fastest for the usual dozen keys; a
                // set keeps a hostile object of thousands linear.
                let mut seen: Option<std::collections::HashSet<Cow<'de, str>>> = None;
                while let Some(Key(key)) = map.next_key()? {
                    let duplicate = match &mut seen {
                        Some(set) => !set.insert(key.clone()),
                        None if fields.len() >= 32 => {
                            let mut set: std::collections::HashSet<Cow<'de, str>> =
                                fields.iter().map(|(k, _)| k.clone()).collect();
                            let dup = !set.insert(key.clone());
                            seen = Some(set);
                            dup
                        }
                        None => fields.iter().any(|(k, _)| *k == key),
                    };
                    if duplicate {
                        return Err(de::Error::custom(format_args!("duplicate field `{key}`")));
                    }
                    let value: &'de RawValue = map.next_value()?;
                    fields.push((key, value));
                }
                Ok(Fields(fields))
            }
        }
        d.deserialize_map(FieldsVisitor)
    }
}

/// An object key, borrowed from the input unless it has escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// A string field's value; `null` counts as absent.
fn optional_string<'a>(fields: &Fields<'a>, name: &str) -> Result<Option<Cow<'a, str>>, Rejection> {
    match fields.get(name) {
        None => Ok(None),
        Some(v) if v.get() == "null" => Ok(None),
        Some(v) => string(v, name).map(Some),
    }
}

/// A JSON string value's text: borrowed when it has no escape (a valid
/// JSON string without a backslash is its content between the quotes).
fn string<'a>(v: &'a RawValue, name: &str) -> Result<Cow<'a, str>, Rejection> {
    let text = v.get();
    if let Some(inner) = text.strip_prefix('"').and_then(|t| t.strip_suffix('"'))
        && !inner.contains('\\')
        && !inner.contains('"')
    {
        return Ok(Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(text)
        .map(Cow::Owned)
        .map_err(|_| Rejection::invalid(format!("`{name}` must be a string")))
}

/// The identifiers (`anonymousId`, `userId`, `previousId`) a message's raw
/// text carries, read as admission reads them; best effort, for messages
/// that failed validation (each unreadable one is `None`).
pub fn raw_identifiers(raw: &str) -> [Option<String>; 3] {
    let Ok(fields) = serde_json::from_str::<Fields<'_>>(raw) else {
        return [None, None, None];
    };
    ["anonymousId", "userId", "previousId"].map(|name| {
        identifier(&fields, name)
            .ok()
            .flatten()
            .map(Cow::into_owned)
    })
}

/// An identifier: a string, or a number taken as its text; `null` is none.
fn identifier<'a>(fields: &Fields<'a>, name: &str) -> Result<Option<Cow<'a, str>>, Rejection> {
    let Some(v) = fields.get(name) else {
        return Ok(None);
    };
    let text = v.get();
    if text == "null" {
        return Ok(None);
    }
    if text.starts_with('"') {
        return string(v, name).map(Some);
    }
    match serde_json::from_str::<serde_json::Number>(text) {
        Ok(n) => Ok(Some(Cow::Owned(n.to_string()))),
        Err(_) => Err(Rejection::invalid(format!(
            "`{name}`: identifiers must be strings (or numbers)"
        ))),
    }
}

/// A messageId for a message that came without one: `srv-` and a random
/// per-process prefix (from the OS, read once) and a counter. `None` when
/// the OS gave no randomness: then such messages are rejected rather than
/// all given one ID and deduplicated away.
pub fn server_message_id() -> Option<String> {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static PREFIX: OnceLock<Option<String>> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX
        .get_or_init(|| {
            let mut b = [0u8; 12];
            getrandom::fill(&mut b).ok()?;
            let mut out = String::from("srv-");
            for x in b {
                out.push(char::from_digit(u32::from(x >> 4), 16)?);
                out.push(char::from_digit(u32::from(x & 15), 16)?);
            }
            Some(out)
        })
        .as_deref()?;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    Some(format!("{prefix}-{n:x}"))
}

/// Latest accepted event time, relative to `receivedAt`.
const MAX_FUTURE: time::Duration = time::Duration::days(1);
/// Earliest accepted event time.
const MIN_EVENT_TIME: OffsetDateTime = time::macros::datetime!(1970-01-01 00:00:00 UTC);

/// When the event happened: the client's time corrected for its clock skew
/// (`receivedAt - (sentAt - originalTimestamp)`), the client's time as is
/// when it sent no `sentAt`, and `receivedAt` when it sent no time or one
/// outside 1970 .. receivedAt + 1 day (a broken clock). The client's own
/// time is kept in `originalTimestamp` either way.
pub fn event_time(
    original: Option<OffsetDateTime>,
    sent: Option<OffsetDateTime>,
    received: OffsetDateTime,
) -> OffsetDateTime {
    let corrected = match (original, sent) {
        (Some(o), Some(s)) => received.checked_sub(s - o),
        (Some(o), None) => Some(o),
        (None, _) => None,
    };
    match corrected {
        Some(t) if t >= MIN_EVENT_TIME && t <= received + MAX_FUTURE => t,
        _ => received,
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a char
/// boundary.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const RECEIVED: OffsetDateTime = datetime!(2026-11-23 10:00:00 UTC);

    /// Admits one message sent in a batch with `sent_at`.
    fn prepare(raw: &str, sent_at: Option<&str>) -> Result<NewEvent, Rejection> {
        let envelope = Envelope {
            reset: false,
            messages: vec![serde_json::from_str(raw).expect("test messages are JSON")],
            sent_at: sent_at.map(str::to_owned),
            write_key: None,
            context: None,
            single: None,
        };
        let mut a = admit(&envelope, &facts());
        match a.outcomes.remove(0) {
            Outcome::Accepted => Ok(a.request.events.remove(0)),
            Outcome::Rejected(r) => Err(r),
            Outcome::Dropped(d) => panic!("dropped for consent: {d:?}"),
        }
    }

    fn facts() -> Facts<'static> {
        Facts {
            device: None,
            source: "s",
            consent: MissingConsent::Assumed,
            received: RECEIVED,
            ip: None,
            junk: &[],
        }
    }

    fn check_rejected(raw: &str, code: &str, reason_part: &str) {
        let err = prepare(raw, None).expect_err(raw);
        assert_eq!(err.code, code, "{raw}: {err:?}");
        assert!(err.reason.contains(reason_part), "{raw}: {err:?}");
    }

    #[test]
    fn invalid_messages_are_rejected_with_a_reason() {
        for (raw, code, reason) in [
            (
                r#"{"type":"track","event":"A"}"#,
                "missing_identity",
                "anonymousId or userId",
            ),
            (
                r#"{"type":"track","anonymousId":"a"}"#,
                "missing_field",
                "track needs an event",
            ),
            (
                r#"{"type":"alias","userId":"u"}"#,
                "missing_field",
                "alias needs previousId",
            ),
            (
                r#"{"type":"group","userId":"u"}"#,
                "missing_field",
                "groupId",
            ),
            (
                r#"{"type":"launch","userId":"u"}"#,
                "invalid_message",
                "invalid message",
            ),
            (r#"{"userId":"u"}"#, "invalid_message", "invalid message"),
            (
                r#"{"type":"page","userId":["u"]}"#,
                "invalid_message",
                "identifiers must be strings",
            ),
            (
                r#"{"type":"page","userId":"u","timestamp":"soon"}"#,
                "invalid_timestamp",
                "timestamp",
            ),
            (
                r#"{"type":"page","userId":"u","sentAt":"2026-13-01T00:00:00Z"}"#,
                "invalid_timestamp",
                "sentAt",
            ),
        ] {
            check_rejected(raw, code, reason);
        }
        let big = format!(
            r#"{{"type":"track","userId":"u","event":"e","properties":{{"x":"{}"}}}}"#,
            "a".repeat(MAX_MESSAGE_BYTES)
        );
        check_rejected(&big, "too_large", "larger than");
    }

    #[test]
    fn timestamp_is_corrected_for_client_clock_skew() {
        // The client clock runs 1 h fast: it says the event happened at 10:59:50
        // and the batch was sent at 11:00:00; the server received it at 10:00:00.
        let raw =
            r#"{"type":"track","event":"A","anonymousId":"a","timestamp":"2026-11-23T10:59:50Z"}"#;
        let e = prepare(raw, Some("2026-11-23T11:00:00Z")).unwrap();
        assert_eq!(e.timestamp, "2026-11-23T09:59:50.000Z");
        assert_eq!(e.received_at, "2026-11-23T10:00:00.000Z");
        let stored: serde_json::Value = serde_json::from_str(&e.body).unwrap();
        assert_eq!(stored["originalTimestamp"], "2026-11-23T10:59:50.000Z");
        assert_eq!(stored["receivedAt"], "2026-11-23T10:00:00.000Z");

        // originalTimestamp is the spec's other name; the message's own sentAt wins.
        let raw = r#"{"type":"page","anonymousId":"a","originalTimestamp":"2026-11-23T08:00:00Z","sentAt":"2026-11-23T08:00:10Z"}"#;
        let e = prepare(raw, Some("2030-01-01T00:00:00Z")).unwrap();
        assert_eq!(e.timestamp, "2026-11-23T09:59:50.000Z");

        // No sentAt: the client's time is kept; no time at all: receivedAt.
        let raw = r#"{"type":"page","anonymousId":"a","timestamp":"2026-11-23T08:00:00Z"}"#;
        assert_eq!(
            prepare(raw, None).unwrap().timestamp,
            "2026-11-23T08:00:00.000Z"
        );
        let raw = r#"{"type":"page","anonymousId":"a"}"#;
        assert_eq!(
            prepare(raw, None).unwrap().timestamp,
            "2026-11-23T10:00:00.000Z"
        );
    }

    #[test]
    fn broken_client_clocks_fall_back_to_received_at() {
        let t = |s: &str| parse_rfc3339(s);
        let fallback = [
            // Corrected time before 1970.
            (t("0000-01-01T00:00:00Z"), t("9999-12-31T23:59:59Z")),
            // No sentAt and a clock a year ahead.
            (t("2027-11-23T10:00:00Z"), None),
            // An event "after" it was sent would land in the future.
            (t("2026-11-30T10:00:00Z"), t("2026-11-23T10:00:00Z")),
            (t("1969-12-31T23:59:59Z"), None),
        ];
        for (original, sent) in fallback {
            assert_eq!(
                event_time(original, sent, RECEIVED),
                RECEIVED,
                "{original:?} {sent:?}"
            );
        }
        let ok = t("2026-11-23T09:00:00Z");
        assert_eq!(event_time(ok, None, RECEIVED), ok.unwrap());
    }

    #[test]
    fn stored_body_keeps_every_client_field_and_drops_the_write_key() {
        let raw = r#"{"type":"track","event":"E","userId":42,"writeKey":"wk_secret","channel":"server",
            "_metadata":{"nodeVersion":"20"},"properties":{"a":[1,2.5,null]},"timestamp":"2026-11-23T09:00:00Z"}"#;
        let e = prepare(raw, None).unwrap();
        let stored: serde_json::Value = serde_json::from_str(&e.body).unwrap();
        assert_eq!(stored["channel"], "server");
        assert_eq!(stored["_metadata"]["nodeVersion"], "20");
        assert_eq!(stored["properties"], serde_json::json!({"a":[1,2.5,null]}));
        assert_eq!(stored["userId"], "42", "identifiers are stored as text");
        assert_eq!(stored["timestamp"], "2026-11-23T09:00:00.000Z");
        assert_eq!(stored["originalTimestamp"], "2026-11-23T09:00:00.000Z");
        assert_eq!(stored["receivedAt"], "2026-11-23T10:00:00.000Z");
        assert_eq!(stored["messageId"], e.message_id.as_str());
        assert!(stored.get("writeKey").is_none(), "{stored}");
        assert!(!e.body.contains("wk_secret"));
    }

    #[test]
    fn message_ids_are_kept_or_made() {
        let raw = r#"{"type":"identify","userId":"u","messageId":"m-1"}"#;
        assert_eq!(prepare(raw, None).unwrap().message_id, "m-1");
        let raw = r#"{"type":"identify","userId":"u"}"#;
        let made = prepare(raw, None).unwrap().message_id;
        let again = prepare(raw, None).unwrap().message_id;
        assert!(made.starts_with("srv-") && made.len() >= 30, "{made}");
        assert_ne!(made, again, "each message gets its own ID");
    }

    #[test]
    fn a_batch_context_is_merged_under_each_message_own() {
        let body = br#"{"batch":[
            {"type":"page","anonymousId":"a","context":{"locale":"de-DE","page":{"path":"/own"}}},
            {"type":"page","anonymousId":"b"}
          ],
          "context":{"locale":"en-US","library":{"name":"weft"},
                     "consent":{"categoryPreferences":{"analytics":false}}}}"#;
        let envelope = parse_envelope(body, None).unwrap();
        let a = admit(&envelope, &facts());
        // The batch's consent applies to both: analytics is denied.
        assert_eq!(
            a.outcomes,
            vec![
                Outcome::Dropped(consent::Drop::Denied),
                Outcome::Dropped(consent::Drop::Denied)
            ]
        );
        let body = String::from_utf8_lossy(body).replace("false", "true");
        let envelope = parse_envelope(body.as_bytes(), None).unwrap();
        let a = admit(&envelope, &facts());
        let stored: Vec<serde_json::Value> = a
            .request
            .events
            .iter()
            .map(|e| serde_json::from_str(&e.body).unwrap())
            .collect();
        assert_eq!(
            stored[0]["context"]["locale"], "de-DE",
            "the message's own wins"
        );
        assert_eq!(stored[0]["context"]["page"]["path"], "/own");
        assert_eq!(stored[0]["context"]["library"]["name"], "weft");
        assert_eq!(stored[1]["context"]["locale"], "en-US");
        assert_eq!(
            stored[1]["context"]["consent"]["categoryPreferences"]["analytics"],
            true
        );
    }

    #[test]
    fn client_values_are_kept_byte_for_byte_in_their_order() {
        let raw = r#"{"type":"track","event":"E","anonymousId":"a","properties":{"price":1.50,"tags":["x"],"u":"\u00e9"},"zeta":1,"alpha":{"b":2}}"#;
        let e = prepare(raw, None).unwrap();
        assert!(
            e.body
                .contains(r#""properties":{"price":1.50,"tags":["x"],"u":"\u00e9"}"#),
            "{}",
            e.body
        );
        let zeta = e.body.find("\"zeta\"").unwrap();
        let alpha = e.body.find("\"alpha\"").unwrap();
        assert!(zeta < alpha, "the client's order: {}", e.body);
    }

    #[test]
    fn values_and_keys_with_escapes_are_escaped_again_and_the_rest_copied() {
        // Identifiers, a messageId and a key with escape sequences (a quote,
        // a backslash, a control character), beside plain ones.
        let raw = r#"{"type":"track","event":"E","anonymousId":"a\"b","userId":"u\\1","messageId":"m\u0001","q\"k":1,"plain":"x\u2028y"}"#;
        let e = prepare(raw, None).unwrap();
        let body: serde_json::Value =
            serde_json::from_str(&e.body).expect("the stored body is JSON");
        assert_eq!(body["anonymousId"], "a\"b");
        assert_eq!(body["userId"], "u\\1");
        assert_eq!(body["messageId"], "m\u{1}");
        assert_eq!(body["q\"k"], 1);
        assert_eq!(body["plain"], "x\u{2028}y");
        assert_eq!(e.anonymous_id.as_deref(), Some("a\"b"));
        // Plain ones are copied as they came.
        let plain = prepare(
            r#"{"type":"track","event":"E","anonymousId":"dev-1","messageId":"m-1"}"#,
            None,
        )
        .unwrap();
        assert!(
            plain
                .body
                .contains(r#""messageId":"m-1","anonymousId":"dev-1""#),
            "{}",
            plain.body
        );
    }

    #[test]
    fn a_single_message_endpoint_gives_the_type_and_duplicate_keys_are_refused() {
        let envelope = parse_envelope(
            br#"{"userId":"u","event":"E","writeKey":"wk"}"#,
            Some(MessageType::Track),
        )
        .unwrap();
        assert_eq!(envelope.write_key.as_deref(), Some("wk"));
        let a = admit(&envelope, &facts());
        assert_eq!(a.outcomes, vec![Outcome::Accepted]);
        assert_eq!(a.request.events[0].kind, MessageType::Track);
        assert!(!a.request.events[0].body.contains("wk"));
        let err = prepare(r#"{"type":"page","userId":"u","userId":"v"}"#, None).unwrap_err();
        assert_eq!(err.code, "invalid_message");
        assert!(err.reason.contains("duplicate field `userId`"), "{err:?}");
    }

    #[test]
    fn a_batch_context_cannot_multiply_a_request() {
        let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(MAX_BATCH_CONTEXT_BYTES));
        let body = format!(r#"{{"batch":[{{"type":"page","anonymousId":"a"}}],"context":{big}}}"#);
        assert!(matches!(
            parse_envelope(body.as_bytes(), None),
            Err(ApiError::BadRequest(_))
        ));
        // Under the per-context cap, but copied into 1,000 messages.
        let ctx = format!(r#"{{"pad":"{}"}}"#, "x".repeat(8 * 1024));
        let messages = vec![r#"{"type":"page","anonymousId":"a"}"#; 1000].join(",");
        let body = format!(r#"{{"batch":[{messages}],"context":{ctx}}}"#);
        assert!(matches!(
            parse_envelope(body.as_bytes(), None),
            Err(ApiError::BadRequest(_))
        ));
        // A message that the batch context makes too large is rejected alone.
        let ctx = format!(r#"{{"pad":"{}"}}"#, "x".repeat(15 * 1024));
        let fat = format!(
            r#"{{"type":"page","anonymousId":"b","properties":{{"p":"{}"}}}}"#,
            "y".repeat(20 * 1024)
        );
        let body =
            format!(r#"{{"batch":[{{"type":"page","anonymousId":"a"}},{fat}],"context":{ctx}}}"#);
        let envelope = parse_envelope(body.as_bytes(), None).unwrap();
        let a = admit(&envelope, &facts());
        assert_eq!(a.outcomes[0], Outcome::Accepted);
        assert!(
            matches!(&a.outcomes[1], Outcome::Rejected(r) if r.code == "too_large"),
            "{:?}",
            a.outcomes[1]
        );
    }

    #[test]
    fn duplicate_keys_are_found_among_many() {
        let keys: Vec<String> = (0..100).map(|i| format!(r#""k{i}":{i}"#)).collect();
        let raw = format!(
            r#"{{"type":"page","userId":"u",{},"k7":0}}"#,
            keys.join(",")
        );
        let err = prepare(&raw, None).unwrap_err();
        assert!(err.reason.contains("duplicate field `k7`"), "{err:?}");
        let raw = format!(r#"{{"type":"page","userId":"u",{}}}"#, keys.join(","));
        assert!(prepare(&raw, None).is_ok());
    }

    #[test]
    fn string_values_are_borrowed_unless_they_carry_escapes() {
        let raw = |t: &'static str| serde_json::from_str::<&RawValue>(t).unwrap();
        let plain = string(raw("\"anon-1 é\""), "x").unwrap();
        assert!(matches!(plain, Cow::Borrowed("anon-1 é")), "{plain:?}");
        let escaped = string(raw(r#""a\"b\u00e9\n""#), "x").unwrap();
        assert!(matches!(escaped, Cow::Owned(_)));
        assert_eq!(escaped, "a\"bé\n");
        assert!(string(raw("12"), "x").is_err());
        assert_eq!(string(raw(r#""""#), "x").unwrap(), "");
    }

    /// A browser message of `anon` whose preferences say `analytics`.
    fn browser(anon: &str, analytics: bool) -> String {
        format!(
            r#"{{"type":"track","event":"E","anonymousId":"{anon}","context":{{"consent":{{"categoryPreferences":{{"analytics":{analytics}}}}}}}}}"#
        )
    }

    /// Admits `messages` as one batch from a page that sent `cookie`.
    fn with_cookie(messages: &[String], reset: bool, cookie: &DeviceCookie) -> Admission {
        let body = format!(r#"{{"batch":[{}],"reset":{reset}}}"#, messages.join(","));
        let envelope = parse_envelope(body.as_bytes(), None).unwrap();
        let facts = Facts {
            device: Some(cookie),
            ..facts()
        };
        // The envelope borrows `body`; the admission does not.
        admit(&envelope, &facts)
    }

    #[test]
    fn the_server_cookie_joins_wiped_storage_and_goes_with_a_withdrawal() {
        let none = DeviceCookie::default();
        // First batch after consent: the cookie is made, nothing joined.
        let a = with_cookie(&[browser("a1", true)], false, &none);
        assert_eq!(a.device.as_ref().unwrap().value(), "a1");
        assert_eq!(a.request.events[0].same_device, None);
        // Storage wiped: a new ID with the old cookie is joined to it.
        let cookie = DeviceCookie::parse("a1");
        let a = with_cookie(&[browser("a2", true), browser("a2", true)], false, &cookie);
        assert_eq!(a.request.events[0].same_device.as_deref(), Some("a1"));
        assert_eq!(a.request.events[1].same_device, None, "once");
        assert_eq!(a.device.as_ref().unwrap().value(), "a2");
        // A withdrawal (analytics denied) ends it; so does a dropped
        // message denying it.
        let record = r#"{"type":"track","event":"Consent Updated","anonymousId":"a1","context":{"consent":{"categoryPreferences":{"analytics":false}}}}"#;
        let a = with_cookie(&[record.to_owned()], false, &cookie);
        assert_eq!(a.outcomes, [Outcome::Accepted]);
        assert!(a.device.as_ref().unwrap().is_empty());
        let a = with_cookie(&[browser("a1", false)], false, &cookie);
        assert!(matches!(a.outcomes[0], Outcome::Dropped(_)));
        assert!(a.device.as_ref().unwrap().is_empty());
        // A reset retires the ID: the next person is not joined, and a late
        // message of the retired ID does not bring it back.
        let a = with_cookie(&[], true, &cookie);
        assert_eq!(a.device.as_ref().unwrap().value(), "~a1");
        let retired = DeviceCookie::parse("~a1");
        let a = with_cookie(&[browser("a1", true), browser("b1", true)], false, &retired);
        assert!(a.request.events.iter().all(|e| e.same_device.is_none()));
        assert_eq!(a.device.as_ref().unwrap().value(), "b1~a1");
        // Without a cookie to consider (a server's request), nothing.
        let envelope = parse_envelope(br#"{"batch":[]}"#, None).unwrap();
        assert!(admit(&envelope, &facts()).device.is_none());
    }

    #[test]
    fn the_stored_body_says_where_its_properties_are() {
        let e = prepare(
            r#"{"type":"track","event":"E","anonymousId":"a","context":{"properties":{"no":1}},"properties":{"price":42,"tag":"x"},"extra":{"properties":2}}"#,
            None,
        )
        .unwrap();
        let (start, end) = e.properties.expect("a range");
        let text = &e.body[start as usize..end as usize];
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(text).unwrap(),
            serde_json::json!({"price": 42, "tag": "x"})
        );
        let picked = crate::store::sqlite::properties_in(text, 0, &["price"]);
        assert_eq!(picked.len(), 1);
        assert_eq!(
            (picked[0].0.as_ref(), &picked[0].1),
            (
                "price",
                &crate::store::sqlite::properties_only(&e.body, &["price"]).unwrap()["properties"]
                    ["price"]
            ),
        );
        let none = prepare(r#"{"type":"page","anonymousId":"a"}"#, None).unwrap();
        assert_eq!(none.properties, None);
    }
}
