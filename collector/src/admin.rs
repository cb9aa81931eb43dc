//! The admin API: bearer-token reads of what the collector knows.

use hyper::body::Incoming;
use hyper::header::AUTHORIZATION;
use hyper::{Request, StatusCode};

use std::sync::Arc;

use crate::app::App;
use crate::error::{ApiError, Resp, json_response};
use crate::store::{EventCursor, SegmentInfo};
use http_body_util::BodyExt as _;

/// Checks `Authorization: Bearer <admin token>` in constant time.
pub fn authorize(app: &App, req: &Request<Incoming>) -> Result<(), ApiError> {
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(ApiError::Unauthorized)?;
    if constant_time_eq(given.trim().as_bytes(), app.config.admin_token.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `GET /v1/profiles/{id}`: the profile that `id` (a userId or anonymousId)
/// belongs to.
pub async fn profile(app: Arc<App>, id: String) -> Result<Resp, ApiError> {
    let store = app.store.clone();
    let found = blocking(move || store.profile(&id)).await?;
    let p = found.ok_or(ApiError::NotFound("profile"))?;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({
            "profile_id": p.profile_id,
            "user_ids": p.user_ids,
            "anonymous_ids": p.anonymous_ids,
            "traits": p.traits,
            "consent": p.consent,
            "first_seen": p.first_seen,
            "last_seen": p.last_seen,
            "event_count": p.event_count,
            "segments": p.segments,
        }),
    ))
}

/// The `key=value` pairs of a query string, values percent-decoded (`+`
/// is a space); a bad escape is a 400 naming its key.
fn query_pairs(query: Option<&str>) -> Result<Vec<(&str, String)>, ApiError> {
    query
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(key, value)| {
            percent_decode(&value.replace('+', " "))
                .map(|v| (key, v))
                .ok_or_else(|| ApiError::BadRequest(format!("{key}: bad escape")))
        })
        .collect()
}

/// A page size `limit=`: 1..=[`MAX_LIMIT`], else a 400.
fn page_limit(value: &str) -> Result<usize, ApiError> {
    value
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=MAX_LIMIT).contains(n))
        .ok_or_else(|| ApiError::BadRequest(format!("limit must be 1..={MAX_LIMIT}")))
}

/// Default and largest page size of `/events` and segment members.
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 1000;

/// `GET /v1/profiles/{id}/events?limit=&before=`: newest first; the answer's
/// `next_before` (when present) fetches the next page.
pub async fn events(app: Arc<App>, id: String, query: Option<&str>) -> Result<Resp, ApiError> {
    let mut limit = DEFAULT_LIMIT;
    let mut before = None;
    for (key, value) in query_pairs(query)? {
        match key {
            "limit" => limit = page_limit(&value)?,
            "before" => {
                before = Some(EventCursor::decode(&value).ok_or_else(|| {
                    ApiError::BadRequest(
                        "before must be a next_before value or an RFC 3339 time".into(),
                    )
                })?);
            }
            _ => {}
        }
    }
    let store = app.store.clone();
    let page = blocking(move || store.profile_events(&id, limit, before.as_ref()))
        .await?
        .ok_or(ApiError::NotFound("profile"))?;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({
            "profile_id": page.profile_id,
            "events": page.events,
            "next_before": page.next.map(|c| c.encode()),
        }),
    ))
}

/// `DELETE /v1/profiles/{id}`: erase the profile and suppress its
/// identifiers (GDPR art. 17, PIPL art. 47). Answers what was removed.
pub async fn erase(app: Arc<App>, id: String) -> Result<Resp, ApiError> {
    let store = app.store.clone();
    let report = blocking(move || store.erase(&id))
        .await?
        .ok_or(ApiError::NotFound("profile"))?;
    tracing::info!(
        events = report.events,
        identity_edges = report.identity_edges,
        suppressed = report.suppressed_identifiers,
        "profile erased"
    );
    let body = serde_json::to_value(&report).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(json_response(StatusCode::OK, &body))
}

/// `GET /v1/profiles/{id}/consent`: the consent decisions, oldest first
/// (proof of consent).
pub async fn consent(app: Arc<App>, id: String) -> Result<Resp, ApiError> {
    let store = app.store.clone();
    let (profile_id, history) = blocking(move || {
        let history = store.consent_history(&id)?;
        let profile = store.profile(&id)?;
        Ok::<_, crate::store::StoreError>((profile.map(|p| p.profile_id), history))
    })
    .await?;
    let (Some(profile_id), Some(history)) = (profile_id, history) else {
        return Err(ApiError::NotFound("profile"));
    };
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"profile_id": profile_id, "consent": history}),
    ))
}

/// `GET /v1/profiles/{id}/graph`: the identifiers and the edges between
/// them, each with the message that made it.
pub async fn graph(app: Arc<App>, id: String) -> Result<Resp, ApiError> {
    let store = app.store.clone();
    let graph = blocking(move || store.profile_graph(&id))
        .await?
        .ok_or(ApiError::NotFound("profile"))?;
    let body = serde_json::to_value(&graph).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(json_response(StatusCode::OK, &body))
}

/// Most bytes of a segment definition.
const MAX_SEGMENT_BODY: usize = 64 * 1024;

fn segment_json(s: &SegmentInfo) -> serde_json::Value {
    serde_json::json!({
        "key": s.key,
        "name": s.name,
        "rule": s.rule,
        "size": s.size,
        "status": s.status,
        "updated_at": s.updated_at,
    })
}

/// Runs blocking store or destinations work off the async threads.
async fn blocking<T: Send + 'static, E: Into<ApiError> + Send + 'static>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(Into::into)
}

/// `PUT /v1/segments/{key}` with `{"name": "...", "rule": RULE}`.
pub async fn put_segment(
    app: Arc<App>,
    key: String,
    req: Request<Incoming>,
) -> Result<Resp, ApiError> {
    if !crate::segments::rule::valid_key(&key) {
        return Err(ApiError::BadRequest(
            "a segment key is 1 to 64 of a-z, 0-9, _ and -".into(),
        ));
    }
    let mut def = json_body(req, MAX_SEGMENT_BODY).await?;
    let Some(obj) = def.as_object_mut() else {
        return Err(ApiError::MalformedJson(
            r#"expected {"name": "...", "rule": {...}}"#.into(),
        ));
    };
    if let Some(k) = obj.keys().find(|k| *k != "name" && *k != "rule") {
        return Err(ApiError::BadRequest(format!(
            "unknown field {k:?} (name, rule)"
        )));
    }
    let name = match obj.get("name") {
        None => key.clone(),
        Some(serde_json::Value::String(n)) if !n.trim().is_empty() && n.len() <= 200 => n.clone(),
        Some(_) => {
            return Err(ApiError::BadRequest(
                "name must be a non-empty string of at most 200 bytes".into(),
            ));
        }
    };
    let rule = obj.remove("rule").ok_or_else(|| ApiError::InvalidRule {
        reason: "a segment needs a rule".into(),
        path: "rule".into(),
    })?;
    let store = app.store.clone();
    let info = blocking(move || store.put_segment(&key, &name, rule)).await?;
    Ok(json_response(StatusCode::OK, &segment_json(&info)))
}

/// `GET /v1/segments/{key}`.
pub async fn get_segment(app: Arc<App>, key: String) -> Result<Resp, ApiError> {
    let store = app.store.clone();
    let info = blocking(move || store.segment(&key))
        .await?
        .ok_or(ApiError::NotFound("segment"))?;
    Ok(json_response(StatusCode::OK, &segment_json(&info)))
}

/// `GET /v1/segments`: every segment with its size and status.
pub async fn list_segments(app: Arc<App>) -> Result<Resp, ApiError> {
    let store = app.store.clone();
    let all = blocking(move || store.segments()).await?;
    let segments: Vec<serde_json::Value> = all
        .iter()
        .map(|s| {
            serde_json::json!({"key": s.key, "name": s.name, "size": s.size, "status": s.status})
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({ "segments": segments }),
    ))
}

/// `DELETE /v1/segments/{key}`: 204.
pub async fn delete_segment(app: Arc<App>, key: String) -> Result<Resp, ApiError> {
    let store = app.store.clone();
    if !blocking(move || store.delete_segment(&key)).await? {
        return Err(ApiError::NotFound("segment"));
    }
    Ok(no_content())
}

/// `GET /v1/segments/{key}/profiles?limit=&cursor=`: members by profile id.
pub async fn segment_members(
    app: Arc<App>,
    key: String,
    query: Option<&str>,
) -> Result<Resp, ApiError> {
    let mut limit = DEFAULT_LIMIT;
    let mut cursor = None;
    for (key, value) in query_pairs(query)? {
        match key {
            "limit" => limit = page_limit(&value)?,
            "cursor" => cursor = Some(value),
            _ => {}
        }
    }
    let store = app.store.clone();
    let page = blocking(move || store.segment_members(&key, limit, cursor.as_deref()))
        .await?
        .ok_or(ApiError::NotFound("segment"))?;
    let profiles: Vec<serde_json::Value> = page
        .profiles
        .iter()
        .map(|m| {
            serde_json::json!({
                "profile_id": m.profile_id,
                "user_ids": m.user_ids,
                "anonymous_ids": m.anonymous_ids,
                "entered_at": m.entered_at,
            })
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"profiles": profiles, "next": page.next}),
    ))
}

/// Decodes `%XX` escapes in a path segment; `None` if they are malformed
/// or the result is not UTF-8.
pub fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = segment.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Most bytes of a destination's settings.
const MAX_DESTINATION_BODY: usize = 64 * 1024;

/// A request's JSON body, at most `limit` bytes.
async fn json_body(req: Request<Incoming>, limit: usize) -> Result<serde_json::Value, ApiError> {
    let body = http_body_util::Limited::new(req.into_body(), limit)
        .collect()
        .await
        .map_err(|_| ApiError::PayloadTooLarge { limit })?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| ApiError::MalformedJson(e.to_string()))
}

/// 204, with no body and no content type.
fn no_content() -> Resp {
    let mut resp = json_response(StatusCode::NO_CONTENT, &serde_json::Value::Null);
    *resp.body_mut() = crate::error::full(hyper::body::Bytes::new());
    resp.headers_mut().remove(hyper::header::CONTENT_TYPE);
    resp
}

/// `PUT /v1/destinations/{name}`: creates or replaces a destination.
pub async fn put_destination(
    app: Arc<App>,
    name: String,
    req: Request<Incoming>,
) -> Result<Resp, ApiError> {
    let body = json_body(req, MAX_DESTINATION_BODY).await?;
    let d = app.destinations.clone();
    let view = blocking(move || d.put(&name, &body)).await?;
    Ok(json_response(StatusCode::OK, &view))
}

/// `GET /v1/destinations/{name}`: settings (secrets left out) and status.
pub fn get_destination(app: &App, name: &str) -> Result<Resp, ApiError> {
    let view = app
        .destinations
        .get(name)
        .ok_or(ApiError::NotFound("destination"))?;
    Ok(json_response(StatusCode::OK, &view))
}

/// `GET /v1/destinations`: every destination's status.
pub fn list_destinations(app: &App) -> Resp {
    json_response(StatusCode::OK, &app.destinations.list())
}

/// `DELETE /v1/destinations/{name}`: 204.
pub async fn delete_destination(app: Arc<App>, name: String) -> Result<Resp, ApiError> {
    let d = app.destinations.clone();
    if !blocking(move || d.delete(&name)).await? {
        return Err(ApiError::NotFound("destination"));
    }
    Ok(no_content())
}

/// `GET /v1/destinations/{name}/dead?limit=&cursor=`.
pub async fn dead_letters(
    app: Arc<App>,
    name: String,
    query: Option<&str>,
) -> Result<Resp, ApiError> {
    let mut limit = DEFAULT_LIMIT;
    let mut after = 0i64;
    for (key, value) in query_pairs(query)? {
        match key {
            "limit" => limit = page_limit(&value)?,
            "cursor" => {
                after = value
                    .parse()
                    .map_err(|_| ApiError::BadRequest("cursor is not one this API gave".into()))?;
            }
            _ => {}
        }
    }
    let d = app.destinations.clone();
    let page = blocking(move || d.dead(&name, after, limit))
        .await?
        .ok_or(ApiError::NotFound("destination"))?;
    Ok(json_response(StatusCode::OK, &page))
}

/// `POST /v1/destinations/{name}/replay` with `{"ids": [...]}` or `{}`
/// (every dead letter).
pub async fn replay(app: Arc<App>, name: String, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let body = json_body(req, MAX_DESTINATION_BODY).await?;
    let bad = || ApiError::BadRequest(r#"expected {"ids": [id, ...]} or {}"#.into());
    let obj = body.as_object().ok_or_else(bad)?;
    if obj.keys().any(|k| k != "ids") {
        return Err(bad());
    }
    let ids: Vec<i64> = match obj.get("ids") {
        None => Vec::new(),
        Some(serde_json::Value::Array(ids)) if !ids.is_empty() && ids.len() <= 10_000 => ids
            .iter()
            .map(|v| {
                v.as_i64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                    .ok_or_else(bad)
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad()),
    };
    let d = app.destinations.clone();
    let n = blocking(move || d.replay(&name, &ids))
        .await?
        .ok_or(ApiError::NotFound("destination"))?;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({ "requeued": n }),
    ))
}

/// `GET /v1/export?from=&to=` (RFC 3339; by the time each event was
/// stored, `from` included, `to` excluded; both optional): the stored
/// events as NDJSON, streamed.
pub async fn export(app: Arc<App>, query: Option<&str>) -> Result<Resp, ApiError> {
    let mut from = String::new();
    let mut to = String::from("~");
    for (key, value) in query_pairs(query)? {
        let bound = || {
            crate::clock::parse_rfc3339(&value)
                .map(crate::clock::format_utc_millis)
                .ok_or_else(|| ApiError::BadRequest(format!("{key} is not an RFC 3339 time")))
        };
        match key {
            "from" => from = bound()?,
            "to" => to = bound()?,
            _ => {}
        }
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<hyper::body::Bytes>(16);
    let store = app.store.clone();
    tokio::task::spawn_blocking(move || {
        let mut chunk: Vec<u8> = Vec::with_capacity(64 * 1024);
        let mut open = true;
        let result = store.export(&from, &to, &mut |body| {
            chunk.extend_from_slice(body.as_bytes());
            chunk.push(b'\n');
            if chunk.len() >= 60 * 1024 {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(64 * 1024));
                // The client went away: stop reading the log.
                open = tx.blocking_send(full.into()).is_ok();
            }
            open
        });
        if let Err(e) = result {
            tracing::warn!(error = %e, "export stopped");
            return;
        }
        if open && !chunk.is_empty() {
            let _ = tx.blocking_send(chunk.into());
        }
    });
    let mut resp =
        hyper::Response::new(http_body_util::Either::Right(crate::error::ChannelBody(rx)));
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(resp)
}

/// `GET /v1/stats`: the dashboard overview: traffic of the last hour and
/// day, visitors, top pages and events, consent decisions, what was
/// refused since start, and latencies since start.
pub async fn stats(app: Arc<App>) -> Result<Resp, ApiError> {
    let now = app.clock.now();
    let now_ms = (now.unix_timestamp_nanos() / 1_000_000) as i64;
    let mut body = app.stats.overview(now_ms);
    let labeled = |c: &crate::metrics::LabeledCounter| -> serde_json::Value {
        c.snapshot()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), serde_json::Value::from(v)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let ms = |h: &crate::metrics::Histogram| {
        serde_json::json!({
            "p50": h.quantile(0.5).map(|s| s * 1e3),
            "p95": h.quantile(0.95).map(|s| s * 1e3),
            "count": h.count(),
        })
    };
    let m = &app.metrics;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    body["since_start"] = serde_json::json!({
        "received": load(&m.events_received),
        "accepted": load(&m.events_accepted),
        "deduplicated": load(&m.events_deduplicated),
        "rejected": labeled(&m.events_rejected),
        "dropped": labeled(&m.events_dropped),
        "suppressed": load(&m.events_suppressed),
        "failed_requests": labeled(&m.requests_failed),
    });
    body["latency_ms"] = serde_json::json!({
        "ingest": ms(&m.ingest_seconds.0),
        "commit": ms(&m.writer.commit_seconds),
    });
    body["now"] = crate::clock::format_utc_millis(now).into();
    Ok(json_response(StatusCode::OK, &body))
}

/// `GET /v1/live?after=&limit=&wait=`: the stored events after `after` (a
/// position this answered before; 0: the newest), oldest first; waits up to
/// `wait` seconds (default 20, at most 25) for one. `missed`: events the
/// reader fell too far behind to get (the ring keeps the newest 1000).
pub async fn live(app: Arc<App>, query: Option<&str>) -> Result<Resp, ApiError> {
    let mut after = 0u64;
    let mut limit = 100usize;
    let mut wait = 20u64;
    for (key, value) in query_pairs(query)? {
        let n = || {
            value
                .parse::<u64>()
                .map_err(|_| ApiError::BadRequest(format!("{key} must be a whole number")))
        };
        match key {
            "after" => after = n()?,
            "limit" => limit = page_limit(&value)?,
            "wait" => wait = n()?.min(25),
            _ => {}
        }
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(wait);
    loop {
        let added = app.stats.added.notified();
        tokio::pin!(added);
        added.as_mut().enable();
        if let Some((events, next, missed)) = app.stats.live_after(after, limit) {
            return Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({"events": events, "next": next, "missed": missed}),
            ));
        }
        if tokio::time::timeout_at(deadline, added).await.is_err() {
            return Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({"events": [], "next": after, "missed": 0}),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%40b.c").as_deref(), Some("a@b.c"));
        assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
        assert_eq!(percent_decode("%E2%9C%93").as_deref(), Some("✓"));
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%ff"), None);
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
