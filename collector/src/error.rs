//! The collector's API errors and the one place they become HTTP responses.
//!
//! Every handler returns `Result<Response, ApiError>`. Each variant is
//! something a client can act on; [`ApiError::into_response`] gives it a
//! status and a JSON body `{"success":false,"error":CODE,"reason":TEXT}`.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Response, StatusCode};

use crate::store::StoreError;

/// A response body: buffered (nearly every answer), or streamed from a
/// channel (the NDJSON export).
pub type Body = http_body_util::Either<Full<Bytes>, ChannelBody>;

/// A response.
pub type Resp = Response<Body>;

/// A buffered body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Either::Left(Full::new(bytes.into()))
}

/// A body streamed from a bounded channel: the producer waits while the
/// client reads slowly, so memory stays bounded. Ends when the sender is
/// dropped.
#[derive(Debug)]
pub struct ChannelBody(pub tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(hyper::body::Frame::data(c))))
    }
}

/// What went wrong with a request.
#[derive(Debug)]
pub enum ApiError {
    /// The body is not the JSON the endpoint expects.
    MalformedJson(String),
    /// A query parameter or path part is not valid.
    BadRequest(String),
    /// The body claims or looks like gzip but does not decompress.
    BadEncoding(String),
    /// A `Content-Encoding` other than gzip or identity.
    UnsupportedEncoding(String),
    /// No write key in the `Authorization` header or the body.
    MissingWriteKey,
    /// A write key no source has.
    UnknownWriteKey,
    /// The browser origin is not allowed for this source.
    OriginNotAllowed,
    /// The admin API needs `Authorization: Bearer <admin token>`.
    Unauthorized,
    /// No such route, file or profile.
    NotFound(&'static str),
    /// The route exists, the method does not.
    MethodNotAllowed,
    /// The body (after decompression) is over the limit.
    PayloadTooLarge { limit: usize },
    /// The body did not arrive in time.
    BodyTimeout,
    /// The write queue is full; retry after a second.
    Overloaded,
    /// The source sent more than its rate limit allows.
    RateLimited {
        /// Seconds until a request will be accepted again.
        retry_after_secs: u64,
    },
    /// The store is closed (shutting down) or failed.
    Unavailable,
    /// The collector's disk is full; nothing of the request was stored.
    DiskFull,
    /// A destination's settings were refused: why, and which field.
    InvalidDestination {
        /// Why.
        reason: String,
        /// The field.
        field: String,
    },
    /// A segment rule was refused: why, and where (`rule.all[2].op`).
    InvalidRule {
        /// Why.
        reason: String,
        /// Where.
        path: String,
    },
    /// A bug or an I/O failure; details are logged, not sent.
    Internal(String),
}

/// `Retry-After` on a full disk: space comes back when an operator acts.
pub const DISK_FULL_RETRY_SECS: u64 = 10;

impl ApiError {
    /// The HTTP status of the error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_)
            | ApiError::BadEncoding(_)
            | ApiError::BadRequest(_)
            | ApiError::InvalidRule { .. }
            | ApiError::InvalidDestination { .. } => StatusCode::BAD_REQUEST,
            ApiError::UnsupportedEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::MissingWriteKey | ApiError::UnknownWriteKey | ApiError::Unauthorized => {
                StatusCode::UNAUTHORIZED
            }
            ApiError::OriginNotAllowed => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::Overloaded | ApiError::Unavailable | ApiError::DiskFull => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MalformedJson(_) => "malformed_json",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::BadEncoding(_) => "bad_encoding",
            ApiError::UnsupportedEncoding(_) => "unsupported_encoding",
            ApiError::MissingWriteKey => "missing_write_key",
            ApiError::UnknownWriteKey => "unknown_write_key",
            ApiError::OriginNotAllowed => "origin_not_allowed",
            ApiError::Unauthorized => "unauthorized",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::BodyTimeout => "body_timeout",
            ApiError::Overloaded => "overloaded",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Unavailable => "unavailable",
            ApiError::DiskFull => "disk_full",
            ApiError::InvalidRule { .. } => "invalid_rule",
            ApiError::InvalidDestination { .. } => "invalid_destination",
            ApiError::Internal(_) => "internal",
        }
    }

    /// A sentence for humans. Never contains message content.
    pub fn reason(&self) -> String {
        match self {
            ApiError::MalformedJson(e) => format!("body is not valid JSON for this endpoint: {e}"),
            ApiError::BadEncoding(e) => format!("body could not be decompressed: {e}"),
            ApiError::BadRequest(e) => e.clone(),
            ApiError::UnsupportedEncoding(e) => {
                format!("Content-Encoding {e:?} is not supported; use gzip or none")
            }
            ApiError::MissingWriteKey => {
                "no write key: send it as the Basic auth username or a writeKey field".into()
            }
            ApiError::UnknownWriteKey => "unknown write key".into(),
            ApiError::OriginNotAllowed => "this origin may not send with this write key".into(),
            ApiError::Unauthorized => "admin API needs Authorization: Bearer <admin token>".into(),
            ApiError::NotFound(what) => format!("{what} not found"),
            ApiError::MethodNotAllowed => "method not allowed on this path".into(),
            ApiError::PayloadTooLarge { limit } => {
                format!("body is larger than {limit} bytes (after decompression)")
            }
            ApiError::BodyTimeout => "request body not received in time".into(),
            ApiError::Overloaded => "collector is at capacity; retry after the given delay".into(),
            ApiError::RateLimited { retry_after_secs } => {
                format!("this source's rate limit is exceeded; retry in {retry_after_secs} s")
            }
            ApiError::Unavailable => "store unavailable".into(),
            ApiError::DiskFull => {
                "the collector's disk is full; nothing was stored, retry later".into()
            }
            ApiError::InvalidRule { reason, .. } => reason.clone(),
            ApiError::InvalidDestination { reason, field } => format!("{field}: {reason}"),
            ApiError::Internal(_) => "internal error".into(),
        }
    }

    /// The response for this error.
    pub fn into_response(self) -> Resp {
        if let ApiError::Internal(detail) = &self {
            tracing::error!(detail = %detail, "internal error");
        }
        let mut body = serde_json::json!({
            "success": false,
            "error": self.code(),
            "reason": self.reason(),
        });
        if let ApiError::InvalidRule { path, .. } = &self {
            body["path"] = path.clone().into();
        }
        if let ApiError::InvalidDestination { field, .. } = &self {
            body["field"] = field.clone().into();
        }
        let mut resp = json_response(self.status(), &body);
        let retry_after = match self {
            ApiError::Overloaded | ApiError::Unavailable => Some(1),
            ApiError::DiskFull => Some(DISK_FULL_RETRY_SECS),
            ApiError::RateLimited { retry_after_secs } => Some(retry_after_secs),
            _ => None,
        };
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Overloaded => ApiError::Overloaded,
            StoreError::Closed | StoreError::Lagging => ApiError::Unavailable,
            StoreError::DiskFull => ApiError::DiskFull,
            StoreError::InvalidRule(e) => ApiError::InvalidRule {
                reason: e.reason,
                path: e.path,
            },
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<crate::destinations::DestinationError> for ApiError {
    fn from(e: crate::destinations::DestinationError) -> Self {
        use crate::destinations::DestinationError as D;
        match e {
            D::Config(c) => ApiError::InvalidDestination {
                reason: c.reason,
                field: c.field,
            },
            D::Store(s) => s.into(),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// A JSON response.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Resp {
    let mut resp = Response::new(full(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overload_says_when_to_retry() {
        let resp = ApiError::Overloaded.into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[RETRY_AFTER], "1");
    }

    #[test]
    fn internal_details_are_not_sent() {
        let e = ApiError::Internal("disk /secret/path failed".into());
        assert!(!e.reason().contains("secret"));
    }
}
