//! Routing: method and path to handler, CORS, and the conversion of every
//! handler error into its response.
//!
//! CORS is decided here and nowhere else, in two rules:
//! - The SDK's files (`weft.js`, `weft.wasm`, `weft-fallback.js`,
//!   `weft.d.ts`) are readable by any origin (`Access-Control-Allow-Origin:
//!   *`, without credentials), their 404s included, so a page on any site
//!   can fetch and compile the wasm and its debug line says what failed.
//!   They are public code, the same for everyone.
//! - The ingest endpoints (`/v1/batch`, `/v1/track`, ...) answer a browser
//!   only on an origin one of the sources allows (the POST itself is then
//!   checked against its own source's list, 403 otherwise): that exact
//!   origin, with credentials (the SDK's requests carry the server cookie,
//!   [`crate::device_cookie`]).
//!
//! Everything else (admin API, dashboard, demo) gets no CORS header: only
//! the collector's own pages may read it.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    CONTENT_TYPE, HeaderName, HeaderValue, ORIGIN, VARY,
};
use hyper::{Method, Request, Response, StatusCode};
use weft_protocol::MessageType;

use crate::app::App;
use crate::error::{ApiError, Resp, json_response};
use crate::{admin, assets, ingest};

/// [`ingest_endpoint`], with the operator's own batch path
/// ([`crate::config::PublicPaths`]).
fn ingest_route(app: &App, path: &str) -> Option<Option<MessageType>> {
    if app.config.paths.ingest.as_deref() == Some(path) {
        return Some(None);
    }
    ingest_endpoint(path)
}

/// Which ingest endpoint a path is: `Some(None)` for `/v1/batch`,
/// `Some(Some(type))` for a single-message endpoint.
fn ingest_endpoint(path: &str) -> Option<Option<MessageType>> {
    let name = path.strip_prefix("/v1/")?;
    if name == "batch" || name == "import" {
        return Some(None);
    }
    MessageType::parse(name).map(Some)
}

/// Answers one request. Never fails: errors become their responses here.
pub async fn handle(app: Arc<App>, req: Request<Incoming>, peer: SocketAddr) -> Resp {
    let origin = req.headers().get(ORIGIN).cloned();
    let path = req.uri().path().to_owned();
    let is_ingest = ingest_route(&app, &path).is_some();
    let mut resp = match route(&app, req, peer).await {
        Ok(resp) => resp,
        Err(e) => {
            app.metrics.requests_failed.add(e.code(), 1);
            tracing::debug!(path = %path, status = e.status().as_u16(), error = e.code(), "request failed");
            e.into_response()
        }
    };
    if is_ingest && let Some(origin) = origin {
        allow_origin(&app, &mut resp, origin);
    } else if assets::is_sdk_path(&app.config.paths, &path) {
        allow_any_origin(&mut resp);
    }
    resp
}

async fn route(app: &Arc<App>, req: Request<Incoming>, peer: SocketAddr) -> Result<Resp, ApiError> {
    let path = req.uri().path();
    if let Some(single) = ingest_route(app, path) {
        return match *req.method() {
            Method::POST => {
                let started = std::time::Instant::now();
                let answer = ingest::handle(app, req, peer, single).await;
                app.metrics.ingest_seconds.0.observe(started.elapsed());
                answer
            }
            Method::OPTIONS => Ok(preflight()),
            _ => Err(ApiError::MethodNotAllowed),
        };
    }
    if let Some(rest) = path.strip_prefix("/v1/profiles/") {
        let method = req.method().clone();
        if method != Method::GET && method != Method::DELETE {
            return Err(ApiError::MethodNotAllowed);
        }
        admin::authorize(app, &req)?;
        let (raw_id, sub) = rest.split_once('/').unwrap_or((rest, ""));
        if raw_id.is_empty() {
            return Err(ApiError::NotFound("route"));
        }
        let id = admin::percent_decode(raw_id).ok_or(ApiError::NotFound("profile"))?;
        return match (method, sub) {
            (Method::DELETE, "") => admin::erase(app.clone(), id).await,
            (Method::DELETE, _) => Err(ApiError::MethodNotAllowed),
            (_, "") => admin::profile(app.clone(), id).await,
            (_, "events") => admin::events(app.clone(), id, req.uri().query()).await,
            (_, "graph") => admin::graph(app.clone(), id).await,
            (_, "consent") => admin::consent(app.clone(), id).await,
            _ => Err(ApiError::NotFound("route")),
        };
    }
    if path == "/v1/segments" || path.starts_with("/v1/segments/") {
        admin::authorize(app, &req)?;
        let rest = path.strip_prefix("/v1/segments").unwrap_or("");
        let rest = rest.strip_prefix('/').unwrap_or(rest);
        let (key, sub) = rest.split_once('/').unwrap_or((rest, ""));
        let method = req.method().clone();
        return match (method, key, sub) {
            (Method::GET, "", "") => admin::list_segments(app.clone()).await,
            (_, "", "") => Err(ApiError::MethodNotAllowed),
            (Method::PUT, _, "") => admin::put_segment(app.clone(), key.to_owned(), req).await,
            (Method::GET, _, "") => admin::get_segment(app.clone(), key.to_owned()).await,
            (Method::DELETE, _, "") => admin::delete_segment(app.clone(), key.to_owned()).await,
            (_, _, "") => Err(ApiError::MethodNotAllowed),
            (Method::GET, _, "profiles") => {
                let query = req.uri().query().map(str::to_owned);
                admin::segment_members(app.clone(), key.to_owned(), query.as_deref()).await
            }
            (_, _, "profiles") => Err(ApiError::MethodNotAllowed),
            _ => Err(ApiError::NotFound("route")),
        };
    }
    if path == "/v1/destinations" || path.starts_with("/v1/destinations/") {
        admin::authorize(app, &req)?;
        let rest = path.strip_prefix("/v1/destinations").unwrap_or("");
        let rest = rest.strip_prefix('/').unwrap_or(rest);
        let (name, sub) = rest.split_once('/').unwrap_or((rest, ""));
        let name = name.to_owned();
        let method = req.method().clone();
        return match (method, name.as_str(), sub) {
            (Method::GET, "", "") => Ok(admin::list_destinations(app)),
            (_, "", "") => Err(ApiError::MethodNotAllowed),
            (Method::PUT, _, "") => admin::put_destination(app.clone(), name, req).await,
            (Method::GET, _, "") => admin::get_destination(app, &name),
            (Method::DELETE, _, "") => admin::delete_destination(app.clone(), name).await,
            (_, _, "") => Err(ApiError::MethodNotAllowed),
            (Method::GET, _, "dead") => {
                let query = req.uri().query().map(str::to_owned);
                admin::dead_letters(app.clone(), name, query.as_deref()).await
            }
            (Method::POST, _, "replay") => admin::replay(app.clone(), name, req).await,
            (_, _, "dead" | "replay") => Err(ApiError::MethodNotAllowed),
            _ => Err(ApiError::NotFound("route")),
        };
    }
    if path == "/v1/stats" || path == "/v1/live" {
        admin::authorize(app, &req)?;
        if req.method() != Method::GET {
            return Err(ApiError::MethodNotAllowed);
        }
        if path == "/v1/stats" {
            return admin::stats(app.clone()).await;
        }
        let query = req.uri().query().map(str::to_owned);
        return admin::live(app.clone(), query.as_deref()).await;
    }
    if path == "/v1/export" {
        admin::authorize(app, &req)?;
        if req.method() != Method::GET {
            return Err(ApiError::MethodNotAllowed);
        }
        let query = req.uri().query().map(str::to_owned);
        return admin::export(app.clone(), query.as_deref()).await;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Err(ApiError::MethodNotAllowed);
    }
    match path {
        "/healthz" => Ok(text(StatusCode::OK, "ok\n", "text/plain; charset=utf-8")),
        "/readyz" => {
            let store = app.store.clone();
            tokio::task::spawn_blocking(move || store.check_ready())
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))??;
            Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({"ready": true}),
            ))
        }
        "/metrics" => {
            let mut body = app.metrics.render(app.store.gauges());
            app.destinations.render_metrics(&mut body);
            Ok(text(StatusCode::OK, body, "text/plain; version=0.0.4"))
        }
        _ => assets::serve(app, path, req.headers()).await,
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>, content_type: &'static str) -> Resp {
    let mut resp = Response::new(crate::error::full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// The answer to a CORS preflight. Which origins may then POST is decided
/// per write key when the POST arrives; the preflight only says what a
/// request may look like.
fn preflight() -> Resp {
    let mut resp = Response::new(crate::error::full(Bytes::new()));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    h.insert(
        ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, OPTIONS"),
    );
    h.insert(
        ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Content-Type, Content-Encoding, Authorization"),
    );
    h.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
    resp
}

/// Lets the browser read the response when some source accepts `origin`.
fn allow_origin(app: &App, resp: &mut Resp, origin: HeaderValue) {
    let allowed = origin
        .to_str()
        .is_ok_and(|o| app.config.sources.iter().any(|s| s.allows_origin(o)));
    let h = resp.headers_mut();
    h.append(VARY, HeaderValue::from_static("Origin"));
    if allowed {
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        // The SDK sends with credentials, for the server cookie
        // (`crate::device_cookie`; `SameSite=Lax` keeps it from other
        // sites' pages).
        h.insert(
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        // The SDK waits as long as an overloaded collector asks.
        h.insert(
            ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("Retry-After"),
        );
    }
}

/// Lets a page of any origin read the response (the SDK's public files):
/// no credentials, and loadable by cross-origin-isolated pages too.
fn allow_any_origin(resp: &mut Resp) {
    let h = resp.headers_mut();
    h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    h.insert(
        HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("cross-origin"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_paths() {
        assert_eq!(ingest_endpoint("/v1/batch"), Some(None));
        assert_eq!(ingest_endpoint("/v1/track"), Some(Some(MessageType::Track)));
        assert_eq!(ingest_endpoint("/v1/alias"), Some(Some(MessageType::Alias)));
        assert_eq!(ingest_endpoint("/v1/profiles/x"), None);
        assert_eq!(ingest_endpoint("/batch"), None);
    }
}
