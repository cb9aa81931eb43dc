//! Ingest: `POST /v1/batch` and the single-message endpoints.
//!
//! The order of checks is the order in DESIGN.md §3: size limits, write key,
//! decoding, then each message on its own. A message that fails validation
//! never fails its batch: it is kept in the rejected store with its reason
//! and counted in the response. The response is sent only after the
//! accepted messages are durable.

use std::io::Read as _;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_LENGTH, ORIGIN};
use hyper::{Request, StatusCode};
use serde::Deserialize;
use serde_json::value::RawValue;
use time::OffsetDateTime;
use weft_protocol::limits::{MAX_MESSAGE_BYTES, MAX_REQUEST_BYTES};
use weft_protocol::{Message, MessageType};

use crate::app::App;
use crate::clock::{format_utc_millis, parse_rfc3339};
use crate::error::{ApiError, Resp, json_response};
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
    if let Some(key) = &header_key
        && app.config.source(key).is_none()
    {
        return Err(ApiError::UnknownWriteKey);
    }
    let origin = req
        .headers()
        .get(ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let gzip_header = content_encoding_is_gzip(&req)?;
    let body = read_body(req, app.config.body_timeout).await?;
    let body = decode(body, gzip_header)?;
    let received = app.clock.now();

    // Parse the envelope; for single endpoints the body is the message.
    let single_text;
    let (raw_messages, sent_at, body_key): (Vec<&RawValue>, Option<String>, Option<String>) =
        match single {
            None => {
                let b: RawBatch<'_> = serde_json::from_slice(&body)
                    .map_err(|e| ApiError::MalformedJson(e.to_string()))?;
                (b.batch, b.sent_at, b.write_key)
            }
            Some(kind) => {
                single_text = single_message_text(&body, kind)?;
                let env: SingleEnvelope = serde_json::from_str(single_text.get())
                    .map_err(|e| ApiError::MalformedJson(e.to_string()))?;
                (vec![&*single_text], None, env.write_key)
            }
        };

    let key = header_key
        .or(body_key)
        .filter(|k| !k.is_empty())
        .ok_or(ApiError::MissingWriteKey)?;
    let source = app.config.source(&key).ok_or(ApiError::UnknownWriteKey)?;
    if let Some(o) = &origin
        && !source.allows_origin(o)
    {
        return Err(ApiError::OriginNotAllowed);
    }

    let ip = client_ip(peer.ip(), app.config.keep_full_ip);
    let received_text = format_utc_millis(received);
    let mut request = AppendRequest {
        source: source.write_key.clone(),
        ..Default::default()
    };
    let mut errors = Vec::new();
    for (index, raw) in raw_messages.iter().enumerate() {
        match prepare(raw.get(), sent_at.as_deref(), received, &ip) {
            Ok(event) => request.events.push(event),
            Err(reason) => {
                errors.push(serde_json::json!({"index": index, "reason": reason}));
                request.rejected.push(RejectedMessage {
                    received_at: received_text.clone(),
                    reason,
                    raw: truncate(raw.get(), MAX_REJECTED_RAW_BYTES).to_owned(),
                });
            }
        }
    }
    Metrics::add(&app.metrics.events_received, raw_messages.len() as u64);

    let pending = app.store.append(request).inspect_err(|e| {
        if matches!(e, crate::store::StoreError::Overloaded) {
            Metrics::add(&app.metrics.requests_overloaded, 1);
        }
    })?;
    let outcome = pending.await.map_err(|_| ApiError::Unavailable)??;
    Metrics::add(&app.metrics.events_accepted, outcome.stored as u64);
    Metrics::add(&app.metrics.events_deduplicated, outcome.duplicates as u64);
    Metrics::add(&app.metrics.events_rejected, outcome.rejected as u64);

    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({
            "success": true,
            "accepted": outcome.stored,
            "duplicates": outcome.duplicates,
            "rejected": outcome.rejected,
            "errors": errors,
        }),
    ))
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

/// Reads the body within the size limit and the body timeout.
async fn read_body(req: Request<Incoming>, timeout: Duration) -> Result<Bytes, ApiError> {
    let too_large = ApiError::PayloadTooLarge {
        limit: MAX_REQUEST_BYTES,
    };
    if let Some(len) = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > MAX_REQUEST_BYTES as u64
    {
        return Err(too_large);
    }
    let limited = Limited::new(req.into_body(), MAX_REQUEST_BYTES);
    match tokio::time::timeout(timeout, limited.collect()).await {
        Err(_) => Err(ApiError::BodyTimeout),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large),
        Ok(Err(e)) => Err(ApiError::MalformedJson(format!("body read failed: {e}"))),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// Decompresses gzip bodies (by header, or by magic bytes for clients that
/// do not say), refusing more than the request limit of output so a gzip
/// bomb costs at most that much memory.
fn decode(body: Bytes, gzip_header: bool) -> Result<Bytes, ApiError> {
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

/// Validates one message and enriches it for storage: a messageId if it has
/// none, `receivedAt`, and `timestamp` corrected for the client's clock skew
/// (`receivedAt - (sentAt - originalTimestamp)`, DESIGN.md §4).
pub fn prepare(
    raw: &str,
    batch_sent_at: Option<&str>,
    received: OffsetDateTime,
    ip: &Option<String>,
) -> Result<NewEvent, String> {
    if raw.len() > MAX_MESSAGE_BYTES {
        return Err(format!("message is larger than {MAX_MESSAGE_BYTES} bytes"));
    }
    let mut m: Message = serde_json::from_str(raw).map_err(|e| format!("invalid message: {e}"))?;
    let non_empty = |s: &Option<String>| s.as_deref().is_some_and(|v| !v.is_empty());
    if !non_empty(&m.anonymous_id) && !non_empty(&m.user_id) {
        return Err("anonymousId or userId is required".into());
    }
    match m.kind {
        MessageType::Track if !non_empty(&m.event) => return Err("track needs an event".into()),
        MessageType::Alias if !non_empty(&m.previous_id) || !non_empty(&m.user_id) => {
            return Err("alias needs previousId and userId".into());
        }
        MessageType::Group if !non_empty(&m.group_id) => {
            return Err("group needs a groupId".into());
        }
        _ => {}
    }
    let parse = |field: &str, v: &Option<String>| -> Result<Option<OffsetDateTime>, String> {
        match v.as_deref() {
            None => Ok(None),
            Some(text) => parse_rfc3339(text)
                .map(Some)
                .ok_or_else(|| format!("{field} is not an RFC 3339 time")),
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
    let timestamp = match (original, sent) {
        (Some(o), Some(s)) => received - (s - o),
        (Some(o), None) => o,
        (None, _) => received,
    };

    let message_id = match m.message_id.as_deref() {
        Some(id) if !id.is_empty() => id.to_owned(),
        _ => server_message_id(),
    };
    let received_text = format_utc_millis(received);
    let timestamp_text = format_utc_millis(timestamp);
    m.message_id = Some(message_id.clone());
    if let Some(o) = original {
        m.original_timestamp = Some(format_utc_millis(o));
    }
    if let Some(s) = sent {
        m.sent_at = Some(format_utc_millis(s));
    }
    m.timestamp = Some(timestamp_text.clone());
    m.received_at = Some(received_text.clone());
    let body = serde_json::to_string(&m).map_err(|e| format!("message cannot be stored: {e}"))?;
    Ok(NewEvent {
        message_id,
        kind: m.kind,
        event: m.event,
        anonymous_id: m.anonymous_id.filter(|s| !s.is_empty()),
        user_id: m.user_id.filter(|s| !s.is_empty()),
        timestamp: timestamp_text,
        received_at: received_text,
        ip: ip.clone(),
        body,
    })
}

fn server_message_id() -> String {
    let mut b = [0u8; 16];
    let _ = getrandom::fill(&mut b);
    let mut out = String::from("srv-");
    for x in b {
        out.push_str(&format!("{x:02x}"));
    }
    out
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

    fn check_rejected(raw: &str, reason_part: &str) {
        let err = prepare(raw, None, RECEIVED, &None).expect_err(raw);
        assert!(err.contains(reason_part), "{raw}: {err}");
    }

    #[test]
    fn invalid_messages_are_rejected_with_a_reason() {
        check_rejected(r#"{"type":"track","event":"A"}"#, "anonymousId or userId");
        check_rejected(
            r#"{"type":"track","anonymousId":"a"}"#,
            "track needs an event",
        );
        check_rejected(r#"{"type":"alias","userId":"u"}"#, "alias needs previousId");
        check_rejected(r#"{"type":"group","userId":"u"}"#, "groupId");
        check_rejected(r#"{"type":"launch","userId":"u"}"#, "invalid message");
        check_rejected(r#"{"userId":"u"}"#, "invalid message");
        check_rejected(
            r#"{"type":"page","userId":["u"]}"#,
            "identifiers must be strings",
        );
        check_rejected(
            r#"{"type":"page","userId":"u","timestamp":"soon"}"#,
            "timestamp",
        );
        let big = format!(
            r#"{{"type":"track","userId":"u","event":"e","properties":{{"x":"{}"}}}}"#,
            "a".repeat(MAX_MESSAGE_BYTES)
        );
        check_rejected(&big, "larger than");
    }

    #[test]
    fn timestamp_is_corrected_for_client_clock_skew() {
        // The client clock runs 1 h fast: it says the event happened at 10:59:50
        // and the batch was sent at 11:00:00; the server received it at 10:00:00.
        let raw =
            r#"{"type":"track","event":"A","anonymousId":"a","timestamp":"2026-11-23T10:59:50Z"}"#;
        let e = prepare(raw, Some("2026-11-23T11:00:00Z"), RECEIVED, &None).unwrap();
        assert_eq!(e.timestamp, "2026-11-23T09:59:50.000Z");
        assert_eq!(e.received_at, "2026-11-23T10:00:00.000Z");
        let stored: serde_json::Value = serde_json::from_str(&e.body).unwrap();
        assert_eq!(stored["originalTimestamp"], "2026-11-23T10:59:50.000Z");
        assert_eq!(stored["receivedAt"], "2026-11-23T10:00:00.000Z");

        // originalTimestamp is the spec's other name; the message's own sentAt wins.
        let raw = r#"{"type":"page","anonymousId":"a","originalTimestamp":"2026-11-23T08:00:00Z","sentAt":"2026-11-23T08:00:10Z"}"#;
        let e = prepare(raw, Some("2030-01-01T00:00:00Z"), RECEIVED, &None).unwrap();
        assert_eq!(e.timestamp, "2026-11-23T09:59:50.000Z");

        // No sentAt: the client's time is kept; no time at all: receivedAt.
        let raw = r#"{"type":"page","anonymousId":"a","timestamp":"2026-11-23T08:00:00Z"}"#;
        assert_eq!(
            prepare(raw, None, RECEIVED, &None).unwrap().timestamp,
            "2026-11-23T08:00:00.000Z"
        );
        let raw = r#"{"type":"page","anonymousId":"a"}"#;
        assert_eq!(
            prepare(raw, None, RECEIVED, &None).unwrap().timestamp,
            "2026-11-23T10:00:00.000Z"
        );
    }

    #[test]
    fn message_ids_are_kept_or_made() {
        let raw = r#"{"type":"identify","userId":"u","messageId":"m-1"}"#;
        assert_eq!(
            prepare(raw, None, RECEIVED, &None).unwrap().message_id,
            "m-1"
        );
        let raw = r#"{"type":"identify","userId":"u"}"#;
        let made = prepare(raw, None, RECEIVED, &None).unwrap().message_id;
        assert!(made.starts_with("srv-") && made.len() == 36);
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
            &decode(gz(b"{\"batch\":[]}"), true).unwrap()[..],
            b"{\"batch\":[]}"
        );
        // Magic bytes are enough, whatever the headers said.
        assert_eq!(&decode(gz(b"[]"), false).unwrap()[..], b"[]");
        let bomb = gz(&vec![b' '; 50 * MAX_REQUEST_BYTES]);
        assert!(bomb.len() < 100 * 1024);
        assert!(matches!(
            decode(bomb, true),
            Err(ApiError::PayloadTooLarge { .. })
        ));
        assert!(matches!(
            decode(Bytes::from_static(b"not gzip"), true),
            Err(ApiError::BadEncoding(_))
        ));
    }
}
