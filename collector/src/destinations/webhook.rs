//! The `webhook` kind: a batch as one signed JSON POST (DESIGN.md §11),
//! signed the Standard Webhooks way so receivers verify it with any of
//! that scheme's libraries:
//! `webhook-signature: v1,<base64 HMAC-SHA256(key, id.timestamp.body)>`.

use base64::Engine as _;
use bytes::Bytes;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

use super::delivery::{Batch, Sink, SinkFuture, classify_answer, transport_failure};
use super::http::{Post, Transport};

/// How long one attempt may take (DESIGN.md §11).
pub const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// `v1,<base64 signature>` of `id.timestamp.body` under `key`.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC takes keys of any length; the error type exists for other MACs.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let sig = mac.finalize().into_bytes();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(sig)
    )
}

/// The body of a batch: `{"type":"weft.events"|"weft.audience",
/// "timestamp":..,"data":[..]}`, the items' JSON copied as stored.
pub fn body(batch: &Batch, timestamp: &str) -> Vec<u8> {
    let size: usize = batch.items.iter().map(|i| i.body.len() + 1).sum();
    let mut out = Vec::with_capacity(size + 80);
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(batch.type_name().as_bytes());
    out.extend_from_slice(b"\",\"timestamp\":\"");
    out.extend_from_slice(timestamp.as_bytes());
    out.extend_from_slice(b"\",\"data\":[");
    for (n, item) in batch.items.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item.body.as_bytes());
    }
    out.extend_from_slice(b"]}");
    out
}

/// Delivers batches to one URL.
pub struct Webhook<T> {
    /// Where.
    pub url: String,
    /// The signing key.
    pub key: Vec<u8>,
    /// How.
    pub transport: T,
}

impl<T: Transport> Sink for Webhook<T> {
    fn send<'a>(&'a mut self, batch: &'a Batch) -> SinkFuture<'a> {
        Box::pin(async move {
            let now = time::OffsetDateTime::now_utc();
            let timestamp = now.unix_timestamp();
            let body = body(batch, &crate::clock::format_utc_millis(now));
            let signature = sign(&self.key, &batch.id, timestamp, &body);
            let post = Post {
                url: self.url.clone(),
                headers: vec![
                    ("webhook-id", batch.id.clone()),
                    ("webhook-timestamp", timestamp.to_string()),
                    ("webhook-signature", signature),
                ],
                content_type: "application/json",
                body: Bytes::from(body),
            };
            match self.transport.post(post, TIMEOUT).await {
                Ok(answer) => classify_answer(&answer),
                Err(e) => transport_failure(&e),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_matches_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification.
        let key = base64::engine::general_purpose::STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap();
        let sig = sign(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}
