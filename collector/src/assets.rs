//! Static files: the SDK (`/weft.js`, `/weft.wasm`) and the demo site and
//! dashboard from `www/`.
//!
//! Each comes from the binary itself (embedded by `build.rs` when built by
//! `cargo xtask dist` or `run`) unless `--sdk-dir`/`--www-dir` name a
//! directory to serve instead, for development: an override replaces the
//! embedded set of its kind entirely, so a file missing there is a 404 and
//! never an older embedded copy.
//!
//! The SDK build writes `.br` and `.gz` twins of each file; the one the
//! browser accepts is sent, so visitors download the compressed size. HTML
//! pages get `%WEFT_WRITE_KEY%` replaced by the first configured key, so the
//! demo works with whatever key the collector runs with.

use std::path::Path;

use bytes::Bytes;
use hyper::header::{
    ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_TYPE, HeaderMap, HeaderValue, VARY,
};
use hyper::{Response, StatusCode};

use crate::app::App;
use crate::error::{ApiError, Resp};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/embedded.rs"));
}

/// Files of the SDK build that the collector serves from its SDK directory.
const SDK_FILES: [&str; 4] = ["weft.js", "weft.wasm", "weft.d.ts", "weft-fallback.js"];

/// Whether `path` names one of the SDK's files (`/weft.wasm`, a copy
/// under a folder of the site directory such as `/v2/weft.wasm`, or one
/// under the operator's script path), which pages of any origin may read
/// (see [`crate::routes`]).
pub fn is_sdk_path(paths: &crate::config::PublicPaths, path: &str) -> bool {
    paths.sdk_file(path).is_some()
        || path
            .rsplit('/')
            .next()
            .is_some_and(|name| SDK_FILES.contains(&name))
}

/// Serves `path` (a GET) from the SDK or www directory.
pub async fn serve(app: &App, path: &str, headers: &HeaderMap) -> Result<Resp, ApiError> {
    let not_found = ApiError::NotFound("file");
    if let Some(file) = app.config.paths.sdk_file(path) {
        return serve_file(app, Kind::Sdk, file, headers).await;
    }
    let name = match path {
        "/" => "index.html",
        "/dashboard" | "/dashboard/" => "dashboard.html",
        p => p.strip_prefix('/').ok_or(ApiError::NotFound("file"))?,
    };
    if !is_safe_name(name) {
        return Err(not_found);
    }
    let kind = if SDK_FILES.contains(&name) {
        Kind::Sdk
    } else {
        Kind::Www
    };
    serve_file(app, kind, name, headers).await
}

/// Serves file `name` of `kind`: HTML filled in, others in the encoding the
/// client takes.
async fn serve_file(
    app: &App,
    kind: Kind,
    name: &str,
    headers: &HeaderMap,
) -> Result<Resp, ApiError> {
    let not_found = ApiError::NotFound("file");
    let content_type = content_type(name);

    if content_type.starts_with("text/html") {
        let data = read(app, kind, name).await.ok_or(not_found)?;
        let text = String::from_utf8(data.to_vec()).map_err(|_| ApiError::NotFound("file"))?;
        let key = app
            .config
            .sources
            .first()
            .map(|s| s.write_key.as_str())
            .unwrap_or("");
        let body = text.replace("%WEFT_WRITE_KEY%", key);
        return Ok(response(Bytes::from(body), content_type, None, "no-cache"));
    }

    let accepts = headers
        .get(ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    for (encoding, ext) in [("br", "br"), ("gzip", "gz")] {
        if accepts_encoding(accepts, encoding)
            && let Some(data) = read(app, kind, &format!("{name}.{ext}")).await
        {
            return Ok(response(
                data,
                content_type,
                Some(encoding),
                "public, max-age=300",
            ));
        }
    }
    let data = read(app, kind, name).await.ok_or(not_found)?;
    Ok(response(data, content_type, None, "public, max-age=300"))
}

/// Which set a file belongs to: each has its own override directory.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Sdk,
    Www,
}

/// The file `name` of `kind`: from the override directory when one is
/// configured, else from the binary.
async fn read(app: &App, kind: Kind, name: &str) -> Option<Bytes> {
    let (dir, prefix) = match kind {
        Kind::Sdk => (app.config.sdk_dir.as_deref(), "sdk/"),
        Kind::Www => (app.config.www_dir.as_deref(), "www/"),
    };
    match dir {
        Some(dir) => tokio::fs::read(dir.join(name)).await.ok().map(Bytes::from),
        None => embedded_file(&format!("{prefix}{name}")).map(Bytes::from_static),
    }
}

/// An embedded file by its staged path (`sdk/weft.js`).
fn embedded_file(path: &str) -> Option<&'static [u8]> {
    let files = embedded::FILES;
    files
        .binary_search_by(|(name, _)| (*name).cmp(path))
        .ok()
        .map(|i| files[i].1)
}

/// Whether this collector serves the demo site and dashboard (from
/// `--www-dir` or from the binary), for the start-up banner.
pub fn serves_site(sdk_dir: Option<&Path>, www_dir: Option<&Path>) -> (bool, bool) {
    let sdk = sdk_dir.is_some() || embedded_file("sdk/weft.js").is_some();
    let www = www_dir.is_some() || embedded_file("www/dashboard.html").is_some();
    (sdk, www)
}

fn accepts_encoding(header: &str, encoding: &str) -> bool {
    header.split(',').any(|part| {
        let mut it = part.split(';');
        let name = it.next().unwrap_or("").trim();
        let refused = it.any(|p| {
            let p = p.trim();
            p == "q=0" || p == "q=0.0" || p == "q=0.00" || p == "q=0.000"
        });
        name.eq_ignore_ascii_case(encoding) && !refused
    })
}

fn response(
    body: Bytes,
    content_type: &'static str,
    encoding: Option<&'static str>,
    cache: &'static str,
) -> Resp {
    let mut resp = Response::new(crate::error::full(body));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(VARY, HeaderValue::from_static("Accept-Encoding"));
    if let Some(e) = encoding {
        h.insert(CONTENT_ENCODING, HeaderValue::from_static(e));
    }
    resp
}

/// Only plain relative names: letters, digits, `-_.` and `/` between
/// segments; no `..`, no hidden files.
fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.split('/').all(|seg| {
            !seg.is_empty()
                && !seg.starts_with('.')
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        })
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "wasm" => "application/wasm",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ts" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_escape_are_refused() {
        for bad in [
            "",
            "../etc/passwd",
            "a/../b",
            ".env",
            "a//b",
            "x%2e%2e",
            "a\\b",
        ] {
            assert!(!is_safe_name(bad), "{bad}");
        }
        for good in ["index.html", "img/logo.svg", "weft.js"] {
            assert!(is_safe_name(good), "{good}");
        }
    }

    #[test]
    fn encoding_negotiation() {
        assert!(accepts_encoding("gzip, deflate, br", "br"));
        assert!(accepts_encoding("gzip;q=0.8", "gzip"));
        assert!(!accepts_encoding("gzip;q=0", "gzip"));
        assert!(!accepts_encoding("identity", "gzip"));
    }
}
