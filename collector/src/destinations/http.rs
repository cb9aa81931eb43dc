//! The transport seam of destinations: one POST and what came back.
//!
//! [`Transport`] is what delivery calls; [`HttpTransport`] is the real one:
//! HTTP/1.1 over TCP, or TLS (rustls with the Mozilla roots compiled in,
//! so no system library is needed), one kept-alive connection per
//! destination (a destination has one request in flight at a time), a
//! timeout on the whole exchange. Tests use the real one against real
//! local receivers.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// Most bytes of a response body kept (the dead letters' sample).
pub const RESPONSE_SAMPLE: usize = 1024;
/// Most bytes of a response body read; a longer one closes the connection.
const MAX_RESPONSE: usize = 64 * 1024;

/// One POST.
#[derive(Debug, Clone)]
pub struct Post {
    /// `http://` or `https://` URL.
    pub url: String,
    /// Headers beyond Host, Content-Length and Content-Type (JSON).
    pub headers: Vec<(&'static str, String)>,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: Bytes,
}

/// What a receiver answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// `Retry-After`, if given (seconds or an HTTP date).
    pub retry_after: Option<Duration>,
    /// The start of the body, as text.
    pub sample: String,
}

/// Why no answer came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportError {
    /// The URL cannot be used.
    Url(String),
    /// No connection (refused, DNS, TLS handshake...).
    Connect(String),
    /// The connection broke during the exchange.
    Io(String),
    /// No answer within the timeout.
    Timeout,
}

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransportError::Url(e) => write!(f, "invalid URL: {e}"),
            TransportError::Connect(e) => write!(f, "cannot connect: {e}"),
            TransportError::Io(e) => write!(f, "connection failed: {e}"),
            TransportError::Timeout => f.write_str("no answer within the timeout"),
        }
    }
}

/// A boxed future of an answer.
pub type Sending<'a> = Pin<Box<dyn Future<Output = Result<Answer, TransportError>> + Send + 'a>>;

/// Sends POSTs.
pub trait Transport: Send + Sync {
    /// Sends `post` and waits for the answer, at most `timeout`.
    fn post(&self, post: Post, timeout: Duration) -> Sending<'_>;
}

/// A URL taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    tls: bool,
    host: String,
    port: u16,
    /// Path and query.
    path: String,
}

fn parse_url(url: &str) -> Result<Target, TransportError> {
    let bad = || TransportError::Url("expected http(s)://host[:port]/path".into());
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(bad());
    };
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    let path = match path {
        "" => "/".to_owned(),
        p if p.starts_with('?') => format!("/{p}"),
        p => p.to_owned(),
    };
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let default_port = if tls { 443 } else { 80 };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, rest) = v6.split_once(']').ok_or_else(bad)?;
        let port = match rest.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad())?,
            None => default_port,
        };
        (h.to_owned(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse().map_err(|_| bad())?),
            None => (authority.to_owned(), default_port),
        }
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok(Target {
        tls,
        host,
        port,
        path,
    })
}

/// `Retry-After`: delta seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: time::OffsetDateTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let at = time::PrimitiveDateTime::parse(value, format)
        .ok()?
        .assume_utc();
    Some(Duration::try_from(at - now).unwrap_or(Duration::ZERO))
}

type Connection = SendRequest<Full<Bytes>>;

/// HTTP/1.1 with TLS when the URL says so; one connection kept alive.
pub struct HttpTransport {
    tls: tokio_rustls::TlsConnector,
    /// The open connection and where it goes.
    conn: Mutex<Option<(String, u16, bool, Connection)>>,
}

impl Default for HttpTransport {
    fn default() -> Self {
        let mut roots = tokio_rustls::rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth());
        let config = match config {
            Ok(c) => c,
            // The ring provider supports the default versions; this is
            // unreachable, but a destination must not bring the server down.
            Err(e) => {
                tracing::error!(error = %e, "TLS setup failed; https destinations will fail");
                tokio_rustls::rustls::ClientConfig::builder()
                    .with_root_certificates(tokio_rustls::rustls::RootCertStore::empty())
                    .with_no_client_auth()
            }
        };
        HttpTransport {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            conn: Mutex::new(None),
        }
    }
}

impl HttpTransport {
    async fn connect(&self, t: &Target) -> Result<Connection, TransportError> {
        let connect = |e: &dyn std::fmt::Display| TransportError::Connect(e.to_string());
        let tcp = tokio::net::TcpStream::connect((t.host.as_str(), t.port))
            .await
            .map_err(|e| connect(&e))?;
        let _ = tcp.set_nodelay(true);
        if t.tls {
            let name = tokio_rustls::rustls::pki_types::ServerName::try_from(t.host.clone())
                .map_err(|e| connect(&e))?;
            let stream = self.tls.connect(name, tcp).await.map_err(|e| connect(&e))?;
            let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| connect(&e))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(send)
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| connect(&e))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(send)
        }
    }

    async fn exchange(&self, post: Post) -> Result<Answer, TransportError> {
        let t = parse_url(&post.url)?;
        let cached = {
            let mut slot = self.conn.lock().unwrap_or_else(|e| e.into_inner());
            match slot.take() {
                Some((h, p, tls, c))
                    if h == t.host && p == t.port && tls == t.tls && !c.is_closed() =>
                {
                    Some(c)
                }
                _ => None,
            }
        };
        let mut send = match cached {
            Some(c) => c,
            None => self.connect(&t).await?,
        };
        send.ready()
            .await
            .map_err(|e| TransportError::Io(e.to_string()))?;
        let host = if (t.tls && t.port == 443) || (!t.tls && t.port == 80) {
            t.host.clone()
        } else {
            format!("{}:{}", t.host, t.port)
        };
        let mut req = hyper::Request::post(&t.path)
            .header(hyper::header::HOST, host)
            .header(hyper::header::CONTENT_TYPE, post.content_type)
            .header(
                hyper::header::USER_AGENT,
                concat!("weft/", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in &post.headers {
            req = req.header(*name, value);
        }
        let req = req
            .body(Full::new(post.body))
            .map_err(|e| TransportError::Url(e.to_string()))?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| TransportError::Io(e.to_string()))?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(hyper::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, time::OffsetDateTime::now_utc()));
        let mut keep = true;
        let body = match http_body_util::Limited::new(resp.into_body(), MAX_RESPONSE)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                keep = false;
                Bytes::new()
            }
        };
        let sample =
            crate::admission::truncate(&String::from_utf8_lossy(&body), RESPONSE_SAMPLE).to_owned();
        if keep {
            *self.conn.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((t.host, t.port, t.tls, send));
        }
        Ok(Answer {
            status,
            retry_after,
            sample,
        })
    }
}

impl Transport for HttpTransport {
    fn post(&self, post: Post, timeout: Duration) -> Sending<'_> {
        Box::pin(async move {
            match tokio::time::timeout(timeout, self.exchange(post)).await {
                Ok(answer) => answer,
                Err(_) => {
                    // The connection is mid-exchange: never reuse it.
                    self.conn.lock().unwrap_or_else(|e| e.into_inner()).take();
                    Err(TransportError::Timeout)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_taken_apart() {
        let t = parse_url("https://hooks.example.com/in?x=1").unwrap();
        assert_eq!(
            (t.tls, t.host.as_str(), t.port, t.path.as_str()),
            (true, "hooks.example.com", 443, "/in?x=1")
        );
        let t = parse_url("http://127.0.0.1:8099").unwrap();
        assert_eq!((t.port, t.path.as_str()), (8099, "/"));
        let t = parse_url("http://[::1]:81/a").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 81));
        assert!(parse_url("ftp://x/").is_err());
        assert!(parse_url("http://:80/").is_err());
        assert!(parse_url("http://h:port/").is_err());
    }

    #[test]
    fn retry_after_is_seconds_or_a_date() {
        let now = time::macros::datetime!(2026-12-02 10:00:00 UTC);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 02 Dec 2026 10:01:30 GMT", now),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            parse_retry_after("Wed, 02 Dec 2026 09:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
