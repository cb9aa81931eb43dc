//! Ingest: `POST /v1/batch` and the single-message endpoints.
//!
//! The order of checks is the order in DESIGN.md §3: size limits, write key,
//! decoding, then each message on its own ([`crate::admission`], a pure
//! function of the body and the request's facts). A message that fails
//! validation never fails its batch: it is kept in the rejected store with
//! its reason and counted in the response. The response is sent only after
//! the accepted messages are durable in the event log.

use std::io::Read as _;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{
    AUTHORIZATION, CONTENT_ENCODING, CONTENT_LENGTH, EXPECT, HOST, ORIGIN, SET_COOKIE,
};
use hyper::{Request, StatusCode};
use weft_protocol::MessageType;
use weft_protocol::limits::MAX_REQUEST_BYTES;

use crate::admission::{Admission, Facts, Outcome, admit, parse_envelope};
use crate::app::App;
use crate::device_cookie::DeviceCookie;
use crate::error::{ApiError, Resp, json_response};
use crate::metrics::Metrics;

/// Handles an ingest request. `single` is the type of a single-message
/// endpoint (`/v1/track` ...), `None` for `/v1/batch`.
pub async fn handle(
    app: &App,
    req: Request<Incoming>,
    peer: SocketAddr,
    single: Option<MessageType>,
) -> Result<Resp, ApiError> {
    // An empty username (`Basic Og==`) is no key: the body may carry one.
    let header_key = basic_auth_user(&req).filter(|k| !k.is_empty());
    let early = match &header_key {
        Some(key) if app.config.source(key).is_none() => Err(ApiError::UnknownWriteKey),
        _ => content_encoding_is_gzip(&req),
    };
    let client = crate::proxy::client_addr(peer.ip(), req.headers(), &app.config.trusted_proxies);
    let origin = req
        .headers()
        .get(ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let cookie = origin.as_deref().and_then(|o| server_cookie(app, &req, o));
    let gzip_header = match early {
        Ok(gzip) => gzip,
        Err(e) => {
            discard_body(req, app.config.body_timeout).await;
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

    let ip = client_ip(client, app.config.keep_full_ip);
    let facts = Facts {
        source: &source.write_key,
        consent: source.consent,
        received,
        ip: ip.as_deref(),
        junk: &app.config.junk_ids,
        device: cookie.as_ref().map(|c| &c.before),
    };
    let Admission {
        request,
        outcomes,
        junk_ids,
        device,
    } = admit(&envelope, &facts);
    Metrics::add(&app.metrics.events_received, outcomes.len() as u64);
    Metrics::add(&app.metrics.junk_identifiers, junk_ids);
    let mut errors = Vec::new();
    let mut dropped = 0usize;
    for (index, outcome) in outcomes.iter().enumerate() {
        match outcome {
            Outcome::Accepted => {}
            Outcome::Dropped(drop) => {
                app.metrics.events_dropped.add(drop.code(), 1);
                dropped += 1;
            }
            Outcome::Rejected(rejection) => {
                app.metrics.events_rejected.add(rejection.code, 1);
                errors.push(serde_json::json!({
                    "index": index,
                    "error": rejection.code,
                    "reason": rejection.reason,
                }));
            }
        }
    }

    let pending = app.store.append(request)?;
    let outcome = pending.await.map_err(|_| ApiError::Unavailable)??;
    Metrics::add(&app.metrics.events_accepted, outcome.stored as u64);
    Metrics::add(&app.metrics.events_deduplicated, outcome.duplicates as u64);
    Metrics::add(&app.metrics.events_suppressed, outcome.suppressed as u64);

    let mut resp = json_response(
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
    );
    if let (Some(cookie), Some(mut after)) = (cookie, device) {
        // A batch naming an erased person or device ends the cookie.
        if outcome.suppressed > 0 || outcome.erased_device {
            after = DeviceCookie::default();
        }
        // Only a change is sent, never a renewal of the same value: a
        // batch still in flight when the SDK's reset notice retired the ID
        // carries the old cookie, and renewing it would undo the reset.
        if after != cookie.before {
            let header = after.set_cookie(cookie.domain.as_deref(), &cookie.path, cookie.secure);
            resp.headers_mut().append(SET_COOKIE, header);
        }
    }
    Ok(resp)
}

/// A browser request that may carry the server cookie
/// ([`crate::device_cookie`]): what it carried and where a new one goes.
struct ServerCookie {
    before: DeviceCookie,
    /// `Domain`, or `None` for a host-only cookie.
    domain: Option<String>,
    /// The ingest path the request came to.
    path: String,
    /// The page is https (so the collector is too).
    secure: bool,
}

/// The server cookie of a request from a page on `origin`, when the
/// configuration and the two hosts allow one.
fn server_cookie(app: &App, req: &Request<Incoming>, origin: &str) -> Option<ServerCookie> {
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))?;
    let domain = app.config.server_cookie.domain_for(host, origin)?;
    Some(ServerCookie {
        before: DeviceCookie::from_headers(req.headers()),
        domain,
        path: req.uri().path().to_owned(),
        secure: origin.starts_with("https://"),
    })
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
    let too_large = ApiError::PayloadTooLarge {
        limit: MAX_REQUEST_BYTES,
    };
    let declared = declared_length(&req);
    if declared.is_some_and(|len| len > MAX_REQUEST_BYTES as u64) {
        discard_body(req, timeout).await;
        return Err(too_large);
    }
    let mut body = req.into_body();
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

/// Reads what the client sends and throws it away (bounded like an
/// oversize body), so a client refused before its body was read gets the
/// answer rather than a reset; nothing when it waits for `100 Continue`.
async fn discard_body(req: Request<Incoming>, timeout: Duration) {
    if expects_continue(&req) || declared_length(&req).is_some_and(|len| len > MAX_DRAINED_BYTES) {
        return;
    }
    drain(&mut req.into_body(), 0, timeout).await;
}

/// The request's `Content-Length`, if it has a valid one.
fn declared_length(req: &Request<Incoming>) -> Option<u64> {
    req.headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Whether the client waits for `100 Continue` before it sends its body.
fn expects_continue(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
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

/// The client IP as stored: truncated to /24 (IPv4) or /48 (IPv6) unless
/// `keep_full` is set.
pub fn client_ip(ip: IpAddr, keep_full: bool) -> Option<String> {
    let ip = crate::proxy::canonical(ip);
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

#[cfg(test)]
mod tests {
    use super::*;

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
