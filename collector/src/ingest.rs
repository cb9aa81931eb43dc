//! Ingest: `POST /v1/batch` and the single-message endpoints.
//!
//! The order of checks is the order in DESIGN.md §3: size limits, write key,
//! decoding, then each message on its own. A message that fails validation
//! never fails its batch: it is kept in the rejected store with its reason
//! and counted in the response. The response is sent only after the
//! accepted messages are durable.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Read as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use bytes::BytesMut;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_LENGTH, EXPECT, ORIGIN};
use hyper::{Request, StatusCode};
use serde::Deserialize;
use serde_json::value::RawValue;
use time::OffsetDateTime;
use weft_protocol::json::Writer;
use weft_protocol::limits::{MAX_MESSAGE_BYTES, MAX_REQUEST_BYTES};
use weft_protocol::{Json, Message, MessageType};

use crate::app::App;
use crate::clock::{format_utc_millis, parse_rfc3339};
use crate::consent;
use crate::error::{ApiError, Resp, json_response};
use crate::identity::is_junk;
use crate::metrics::Metrics;
use crate::store::{AppendRequest, NewEvent, RejectedMessage};

/// Longest raw text kept for a rejected message.
const MAX_REJECTED_RAW_BYTES: usize = 64 * 1024;

/// The batch envelope, with messages left raw so each is judged alone.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawBatch<'a> {
    #[serde(borrow)]
    batch: Vec<&'a RawValue>,
    #[serde(default)]
    sent_at: Option<String>,
    #[serde(default)]
    write_key: Option<String>,
}

/// The fields of a single message read before validation.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SingleEnvelope {
    #[serde(default)]
    write_key: Option<String>,
}

/// Handles an ingest request. `single` is the type of a single-message
/// endpoint (`/v1/track` ...), `None` for `/v1/batch`.
pub async fn handle(
    app: &App,
    req: Request<Incoming>,
    peer: SocketAddr,
    single: Option<MessageType>,
) -> Result<Resp, ApiError> {
    let header_key = basic_auth_user(&req);
    let early = match &header_key {
        Some(key) if app.config.source(key).is_none() => Err(ApiError::UnknownWriteKey),
        _ => content_encoding_is_gzip(&req),
    };
    let origin = req
        .headers()
        .get(ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let gzip_header = match early {
        Ok(gzip) => gzip,
        Err(e) => {
            // Read what the client is sending anyway, so it gets the answer.
            let _ = read_body(req, app.config.body_timeout).await;
            return Err(e);
        }
    };
    let body = read_body(req, app.config.body_timeout).await?;
    let body = decode_body(body, gzip_header)?;
    let received = app.clock.now();
    let envelope = parse_envelope(&body, single)?;

    let key = header_key
        .or(envelope.write_key.clone())
        .filter(|k| !k.is_empty())
        .ok_or(ApiError::MissingWriteKey)?;
    let source = app.config.source(&key).ok_or(ApiError::UnknownWriteKey)?;
    if let Some(o) = &origin
        && !source.allows_origin(o)
    {
        return Err(ApiError::OriginNotAllowed);
    }
    if let Some(limit) = source.rate_limit {
        app.limiter
            .check(&source.write_key, limit, received)
            .map_err(|retry_after_secs| ApiError::RateLimited { retry_after_secs })?;
    }

    let ip = client_ip(peer.ip(), app.config.keep_full_ip);
    let received_text = format_utc_millis(received);
    let mut request = AppendRequest {
        source: source.write_key.clone(),
        ..Default::default()
    };
    let mut errors = Vec::new();
    let mut dropped = 0usize;
    for (index, raw) in envelope.messages.iter().enumerate() {
        match prepare(
            raw.get(),
            envelope.sent_at.as_deref(),
            received,
            &ip,
            &app.config.junk_ids,
        ) {
            Ok(mut event) => match consent::check(raw.get(), source.consent) {
                Ok(record) => {
                    Metrics::add(&app.metrics.junk_identifiers, u64::from(event.junk_ids));
                    event.consent_record = record;
                    request.events.push(event);
                }
                Err(drop) => {
                    app.metrics.events_dropped.add(drop.code(), 1);
                    dropped += 1;
                }
            },
            Err(rejection) => {
                app.metrics.events_rejected.add(rejection.code, 1);
                errors.push(serde_json::json!({
                    "index": index,
                    "error": rejection.code,
                    "reason": rejection.reason,
                }));
                request.rejected.push(RejectedMessage {
                    received_at: received_text.clone(),
                    code: rejection.code.to_owned(),
                    reason: rejection.reason,
                    raw: truncate(raw.get(), MAX_REJECTED_RAW_BYTES).to_owned(),
                });
            }
        }
    }
    Metrics::add(&app.metrics.events_received, envelope.messages.len() as u64);

    let pending = app.store.append(request)?;
    let outcome = pending.await.map_err(|_| ApiError::Unavailable)??;
    Metrics::add(&app.metrics.events_accepted, outcome.stored as u64);
    Metrics::add(&app.metrics.events_deduplicated, outcome.duplicates as u64);
    Metrics::add(&app.metrics.events_suppressed, outcome.suppressed as u64);

    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({
            "success": true,
            "accepted": outcome.stored,
            "duplicates": outcome.duplicates,
            "rejected": outcome.rejected,
            "suppressed": outcome.suppressed,
            "dropped_for_consent": dropped,
            "errors": errors,
        }),
    ))
}

/// A request body read as an envelope: the messages (left raw, so each is
/// judged alone) and the envelope's own fields.
#[derive(Debug)]
pub struct Envelope<'a> {
    /// The messages, as their JSON text.
    pub messages: Vec<Cow<'a, RawValue>>,
    /// The batch's `sentAt`.
    pub sent_at: Option<String>,
    /// A `writeKey` field, for clients that cannot set headers.
    pub write_key: Option<String>,
}

/// Parses a decoded body: a batch envelope for `/v1/batch` (`single` is
/// `None`), else one message whose `type` defaults to the endpoint's.
/// Whole-request errors only; message errors come later, per message.
pub fn parse_envelope(body: &[u8], single: Option<MessageType>) -> Result<Envelope<'_>, ApiError> {
    let malformed = |e: serde_json::Error| ApiError::MalformedJson(e.to_string());
    // serde would read a struct from a JSON array too (`[[...]]`).
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(ApiError::MalformedJson(
            "the body must be a JSON object".to_owned(),
        ));
    }
    match single {
        None => {
            let b: RawBatch<'_> = serde_json::from_slice(body).map_err(malformed)?;
            Ok(Envelope {
                messages: b.batch.into_iter().map(Cow::Borrowed).collect(),
                sent_at: b.sent_at,
                write_key: b.write_key,
            })
        }
        Some(kind) => {
            let text = single_message_text(body, kind)?;
            let env: SingleEnvelope = serde_json::from_str(text.get()).map_err(malformed)?;
            Ok(Envelope {
                messages: vec![Cow::Owned(text)],
                sent_at: None,
                write_key: env.write_key,
            })
        }
    }
}

/// The username of `Authorization: Basic base64(user:password)`.
fn basic_auth_user(req: &Request<Incoming>) -> Option<String> {
    let value = req.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let user = text.split_once(':').map(|(u, _)| u).unwrap_or(&text);
    Some(user.to_owned())
}

fn content_encoding_is_gzip(req: &Request<Incoming>) -> Result<bool, ApiError> {
    match req.headers().get(CONTENT_ENCODING) {
        None => Ok(false),
        Some(v) => match v
            .to_str()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
            .as_str()
        {
            "gzip" | "x-gzip" => Ok(true),
            "" | "identity" => Ok(false),
            other => Err(ApiError::UnsupportedEncoding(other.to_owned())),
        },
    }
}

/// How much of an oversize body is read and thrown away so that the
/// client, which may be writing its whole body before it reads anything,
/// receives the 413 instead of a connection reset (a reset looks like a
/// network error, which server SDKs retry for ever). Past this the
/// connection is closed.
const MAX_DRAINED_BYTES: u64 = 8 * 1024 * 1024;

/// Reads the body within the size limit and the body timeout. An oversize
/// body is drained (up to [`MAX_DRAINED_BYTES`], within the same timeout)
/// before the 413, unless the client waits for `100 Continue` and so has
/// not sent it.
async fn read_body(req: Request<Incoming>, timeout: Duration) -> Result<Bytes, ApiError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let expects_continue = req
        .headers()
        .get(EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let mut body = req.into_body();
    let too_large = ApiError::PayloadTooLarge {
        limit: MAX_REQUEST_BYTES,
    };
    if declared.is_some_and(|len| len > MAX_REQUEST_BYTES as u64) {
        if !expects_continue && declared.is_some_and(|len| len <= MAX_DRAINED_BYTES) {
            drain(&mut body, 0, timeout).await;
        }
        return Err(too_large);
    }
    let read = async {
        let mut buf = BytesMut::with_capacity(declared.unwrap_or(0) as usize);
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|e| ApiError::MalformedJson(format!("body read failed: {e}")))?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > MAX_REQUEST_BYTES {
                    return Ok(Err(buf.len() as u64 + data.len() as u64));
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(Ok(buf.freeze()))
    };
    let started = tokio::time::Instant::now();
    match tokio::time::timeout(timeout, read).await {
        Err(_) => Err(ApiError::BodyTimeout),
        Ok(Err(e)) => Err(e),
        Ok(Ok(Ok(bytes))) => Ok(bytes),
        Ok(Ok(Err(seen))) => {
            drain(&mut body, seen, timeout.saturating_sub(started.elapsed())).await;
            Err(too_large)
        }
    }
}

/// Reads and discards the rest of `body` (of which `seen` bytes were
/// read), while fewer than [`MAX_DRAINED_BYTES`] in all and within `time`.
async fn drain(body: &mut Incoming, mut seen: u64, time: Duration) {
    let _ = tokio::time::timeout(time, async {
        while seen <= MAX_DRAINED_BYTES {
            match body.frame().await {
                Some(Ok(frame)) => {
                    seen += frame.data_ref().map_or(0, |d| d.len() as u64);
                }
                _ => break,
            }
        }
    })
    .await;
}

/// Decompresses gzip bodies (by header, or by magic bytes for clients that
/// do not say), refusing more than the request limit of output so a gzip
/// bomb costs at most that much memory.
pub fn decode_body(body: Bytes, gzip_header: bool) -> Result<Bytes, ApiError> {
    let looks_gzip = body.starts_with(&[0x1f, 0x8b]);
    if !gzip_header && !looks_gzip {
        return Ok(body);
    }
    let mut out = Vec::with_capacity((body.len() * 4).min(MAX_REQUEST_BYTES));
    let decoder = flate2::read::GzDecoder::new(&body[..]);
    decoder
        .take(MAX_REQUEST_BYTES as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| ApiError::BadEncoding(e.to_string()))?;
    if out.len() > MAX_REQUEST_BYTES {
        return Err(ApiError::PayloadTooLarge {
            limit: MAX_REQUEST_BYTES,
        });
    }
    Ok(Bytes::from(out))
}

/// A single-message body with its `type` set from the endpoint.
fn single_message_text(body: &[u8], kind: MessageType) -> Result<Box<RawValue>, ApiError> {
    let mut value: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(body).map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    value.entry("type").or_insert_with(|| kind.as_str().into());
    let text = serde_json::to_string(&value).map_err(|e| ApiError::Internal(e.to_string()))?;
    RawValue::from_string(text).map_err(|e| ApiError::Internal(e.to_string()))
}

/// Why one message was rejected: a stable code (a metrics label) and a
/// sentence for the sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// `too_large`, `invalid_message`, `missing_identity`, `missing_field`
    /// or `invalid_timestamp`.
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
}

/// Validates one message and enriches it for storage: a messageId if it has
/// none, `receivedAt`, and `timestamp` corrected for the client's clock skew
/// (`receivedAt - (sentAt - originalTimestamp)`, DESIGN.md §4).
pub fn prepare(
    raw: &str,
    batch_sent_at: Option<&str>,
    received: OffsetDateTime,
    ip: &Option<String>,
    junk: &[String],
) -> Result<NewEvent, Rejection> {
    if raw.len() > MAX_MESSAGE_BYTES {
        return Err(Rejection::new(
            "too_large",
            format!("message is larger than {MAX_MESSAGE_BYTES} bytes"),
        ));
    }
    let m: Message = serde_json::from_str(raw)
        .map_err(|e| Rejection::new("invalid_message", format!("invalid message: {e}")))?;
    let non_empty = |s: &Option<String>| s.as_deref().is_some_and(|v| !v.is_empty());
    if !non_empty(&m.anonymous_id) && !non_empty(&m.user_id) {
        return Err(Rejection::new(
            "missing_identity",
            "anonymousId or userId is required",
        ));
    }
    let missing = match m.kind {
        MessageType::Track if !non_empty(&m.event) => Some("track needs an event"),
        MessageType::Alias if !non_empty(&m.previous_id) || !non_empty(&m.user_id) => {
            Some("alias needs previousId and userId")
        }
        MessageType::Group if !non_empty(&m.group_id) => Some("group needs a groupId"),
        _ => None,
    };
    if let Some(reason) = missing {
        return Err(Rejection::new("missing_field", reason));
    }
    let parse = |field: &str, v: &Option<String>| -> Result<Option<OffsetDateTime>, Rejection> {
        match v.as_deref() {
            None => Ok(None),
            Some(text) => parse_rfc3339(text).map(Some).ok_or_else(|| {
                Rejection::new(
                    "invalid_timestamp",
                    format!("{field} is not an RFC 3339 time"),
                )
            }),
        }
    };
    let original = match parse("timestamp", &m.timestamp)? {
        Some(t) => Some(t),
        None => parse("originalTimestamp", &m.original_timestamp)?,
    };
    let sent = match parse("sentAt", &m.sent_at)? {
        Some(t) => Some(t),
        None => parse("sentAt", &batch_sent_at.map(str::to_owned))?,
    };
    let timestamp = event_time(original, sent, received);

    let message_id = match m.message_id.as_deref() {
        Some(id) if !id.is_empty() => id.to_owned(),
        _ => server_message_id().ok_or_else(|| {
            Rejection::new(
                "internal",
                "the collector cannot make a messageId now (no randomness from the OS); send one",
            )
        })?,
    };
    let received_text = format_utc_millis(received);
    let timestamp_text = format_utc_millis(timestamp);
    let original_text = original.map(format_utc_millis);
    let sent_text = sent.map(format_utc_millis);
    let set: [(&str, Option<&str>); 10] = [
        ("type", Some(m.kind.as_str())),
        ("messageId", Some(&message_id)),
        ("anonymousId", m.anonymous_id.as_deref()),
        ("userId", m.user_id.as_deref()),
        ("previousId", m.previous_id.as_deref()),
        ("groupId", m.group_id.as_deref()),
        ("timestamp", Some(&timestamp_text)),
        ("originalTimestamp", original_text.as_deref()),
        ("sentAt", sent_text.as_deref()),
        ("receivedAt", Some(&received_text)),
    ];
    let body = stored_body(raw, &set)?;
    Ok(NewEvent {
        message_id,
        kind: m.kind,
        event: m.event,
        consent_record: None,
        junk_ids: [&m.anonymous_id, &m.user_id, &m.previous_id]
            .iter()
            .filter(|id| id.as_deref().is_some_and(|id| is_junk(id, junk)))
            .count() as u8,
        anonymous_id: m.anonymous_id.filter(|id| !is_junk(id, junk)),
        user_id: m.user_id.filter(|id| !is_junk(id, junk)),
        previous_id: m
            .previous_id
            .filter(|id| m.kind == MessageType::Alias && !is_junk(id, junk)),
        timestamp: timestamp_text,
        received_at: received_text,
        ip: ip.clone(),
        body,
    })
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

/// The message as stored: every field the client sent, unknown ones
/// included (nothing is lost), with the collector's values for
/// [`SERVER_KEYS`] (`set`, absent ones omitted) and no `writeKey`. Raw
/// values are spliced, not re-encoded.
fn stored_body(raw: &str, set: &[(&str, Option<&str>)]) -> Result<String, Rejection> {
    let fields: BTreeMap<String, &RawValue> = serde_json::from_str(raw)
        .map_err(|e| Rejection::new("invalid_message", format!("invalid message: {e}")))?;
    let mut w = Writer::new();
    w.object_start();
    for (key, value) in set {
        w.opt_string(key, *value);
    }
    for (key, value) in &fields {
        if !SERVER_KEYS.contains(&key.as_str()) {
            w.key(key);
            w.raw(&Json::from_trusted(value.get()));
        }
    }
    w.object_end();
    Ok(w.finish())
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
    corrected
        .filter(|t| *t >= MIN_EVENT_TIME && *t <= received + MAX_FUTURE)
        .unwrap_or(received)
}

/// A messageId for a message that came without one: `srv-` and a random
/// per-process prefix (from the OS, read once) and a counter. `None` when
/// the OS gave no randomness: then such messages are rejected rather than
/// all given one ID and deduplicated away.
pub fn server_message_id() -> Option<String> {
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

/// The client IP as stored: truncated to /24 (IPv4) or /48 (IPv6) unless
/// `keep_full` is set.
pub fn client_ip(ip: IpAddr, keep_full: bool) -> Option<String> {
    let ip = match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    if keep_full {
        return Some(ip.to_string());
    }
    Some(match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            std::net::Ipv4Addr::new(a, b, c, 0).to_string()
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            std::net::Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0).to_string()
        }
    })
}

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    &text[..cut]
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const RECEIVED: OffsetDateTime = datetime!(2026-11-23 10:00:00 UTC);

    fn check_rejected(raw: &str, code: &str, reason_part: &str) {
        let err = prepare(raw, None, RECEIVED, &None, &[]).expect_err(raw);
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
        let e = prepare(raw, Some("2026-11-23T11:00:00Z"), RECEIVED, &None, &[]).unwrap();
        assert_eq!(e.timestamp, "2026-11-23T09:59:50.000Z");
        assert_eq!(e.received_at, "2026-11-23T10:00:00.000Z");
        let stored: serde_json::Value = serde_json::from_str(&e.body).unwrap();
        assert_eq!(stored["originalTimestamp"], "2026-11-23T10:59:50.000Z");
        assert_eq!(stored["receivedAt"], "2026-11-23T10:00:00.000Z");

        // originalTimestamp is the spec's other name; the message's own sentAt wins.
        let raw = r#"{"type":"page","anonymousId":"a","originalTimestamp":"2026-11-23T08:00:00Z","sentAt":"2026-11-23T08:00:10Z"}"#;
        let e = prepare(raw, Some("2030-01-01T00:00:00Z"), RECEIVED, &None, &[]).unwrap();
        assert_eq!(e.timestamp, "2026-11-23T09:59:50.000Z");

        // No sentAt: the client's time is kept; no time at all: receivedAt.
        let raw = r#"{"type":"page","anonymousId":"a","timestamp":"2026-11-23T08:00:00Z"}"#;
        assert_eq!(
            prepare(raw, None, RECEIVED, &None, &[]).unwrap().timestamp,
            "2026-11-23T08:00:00.000Z"
        );
        let raw = r#"{"type":"page","anonymousId":"a"}"#;
        assert_eq!(
            prepare(raw, None, RECEIVED, &None, &[]).unwrap().timestamp,
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
        let e = prepare(raw, None, RECEIVED, &None, &[]).unwrap();
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
        assert_eq!(
            prepare(raw, None, RECEIVED, &None, &[]).unwrap().message_id,
            "m-1"
        );
        let raw = r#"{"type":"identify","userId":"u"}"#;
        let made = prepare(raw, None, RECEIVED, &None, &[]).unwrap().message_id;
        let again = prepare(raw, None, RECEIVED, &None, &[]).unwrap().message_id;
        assert!(made.starts_with("srv-") && made.len() >= 30, "{made}");
        assert_ne!(made, again, "each message gets its own ID");
    }

    #[test]
    fn ips_are_truncated_unless_configured() {
        let check = |ip: &str, keep: bool, want: &str| {
            assert_eq!(client_ip(ip.parse().unwrap(), keep).unwrap(), want, "{ip}");
        };
        check("203.0.113.77", false, "203.0.113.0");
        check("203.0.113.77", true, "203.0.113.77");
        check("2001:db8:abcd:12:1:2:3:4", false, "2001:db8:abcd::");
        check("::ffff:198.51.100.9", false, "198.51.100.0");
    }

    #[test]
    fn gzip_bodies_decode_and_bombs_are_refused() {
        use flate2::{Compression, write::GzEncoder};
        use std::io::Write;
        let gz = |data: &[u8]| {
            let mut e = GzEncoder::new(Vec::new(), Compression::default());
            e.write_all(data).unwrap();
            Bytes::from(e.finish().unwrap())
        };
        assert_eq!(
            &decode_body(gz(b"{\"batch\":[]}"), true).unwrap()[..],
            b"{\"batch\":[]}"
        );
        // Magic bytes are enough, whatever the headers said.
        assert_eq!(&decode_body(gz(b"[]"), false).unwrap()[..], b"[]");
        let bomb = gz(&vec![b' '; 50 * MAX_REQUEST_BYTES]);
        assert!(bomb.len() < 100 * 1024);
        assert!(matches!(
            decode_body(bomb, true),
            Err(ApiError::PayloadTooLarge { .. })
        ));
        assert!(matches!(
            decode_body(Bytes::from_static(b"not gzip"), true),
            Err(ApiError::BadEncoding(_))
        ));
    }
}
