//! The `ga4` kind: Google Analytics 4 Measurement Protocol.
//!
//! Page views become `page_view`, screens `screen_view`, tracks their
//! snake-cased names (at most 40 characters, starting with a letter);
//! properties become parameters (at most 25, names snake-cased, strings cut
//! to 100 characters, ecommerce `items` kept). `client_id` is the
//! anonymousId (else the userId), `user_id` the userId. Consent maps to
//! `ad_user_data` (marketing) and `ad_personalization` (personalization,
//! else marketing). One request holds one client's events, at most 25.
//! identify, alias and group have no GA4 event and are skipped.

use bytes::Bytes;
use serde_json::{Map, Value, json};
use weft_protocol::MessageType;

use super::delivery::{Batch, Sink, SinkFuture, classify_answer, transport_failure};
use super::http::{Post, Transport};

/// Most events in one Measurement Protocol request.
pub const MAX_EVENTS: usize = 25;
/// Most characters of an event or parameter name.
const MAX_NAME: usize = 40;
/// Most parameters of one event.
const MAX_PARAMS: usize = 25;
/// Most characters of a string parameter.
const MAX_VALUE: usize = 100;

/// `Order Completed` -> `order_completed`, `productViewed` ->
/// `product_viewed`; at most 40 characters, starting with a letter.
pub fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut prev_lower = false;
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            if c.is_ascii_uppercase() && prev_lower && !out.ends_with('_') {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
            prev_lower = c.is_ascii_lowercase();
        } else {
            if !out.is_empty() && !out.ends_with('_') {
                out.push('_');
            }
            prev_lower = false;
        }
    }
    let mut out = out.trim_matches('_').to_owned();
    if !out.starts_with(|c: char| c.is_ascii_alphabetic()) {
        out.insert_str(0, "e_");
    }
    out.truncate(MAX_NAME);
    out.trim_end_matches('_').to_owned()
}

fn cut(s: &str) -> String {
    s.chars().take(MAX_VALUE).collect()
}

fn params_of(
    properties: Option<&Map<String, Value>>,
    skip: &[&str],
    params: &mut Map<String, Value>,
) {
    let Some(props) = properties else {
        return;
    };
    for (k, v) in props {
        if skip.contains(&k.as_str()) {
            continue;
        }
        if params.len() >= MAX_PARAMS {
            break;
        }
        let key = snake_case(k);
        let value = match v {
            Value::String(s) => Value::String(cut(s)),
            Value::Number(_) => v.clone(),
            Value::Bool(b) => Value::String(b.to_string()),
            Value::Array(_) if key == "items" => v.clone(),
            _ => continue,
        };
        params.entry(key).or_insert(value);
    }
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

fn granted(v: Option<&Value>) -> Option<bool> {
    v.map(crate::consent::granted)
}

/// One stored message as a GA4 event, with its request's key (client,
/// user, consent); `None` for types GA4 has no event for.
pub fn event(message: &Value) -> Option<(RequestKey, Value)> {
    let kind = MessageType::parse(message.get("type")?.as_str()?)?;
    let props = message.get("properties").and_then(Value::as_object);
    let mut params = Map::new();
    let name = match kind {
        MessageType::Page => {
            let url = str_at(message, &["context", "page", "url"])
                .or_else(|| props.and_then(|p| p.get("url")?.as_str()));
            let title = str_at(message, &["context", "page", "title"])
                .or_else(|| props.and_then(|p| p.get("title")?.as_str()));
            let referrer = str_at(message, &["context", "page", "referrer"])
                .or_else(|| props.and_then(|p| p.get("referrer")?.as_str()));
            for (k, v) in [
                ("page_location", url),
                ("page_title", title),
                ("page_referrer", referrer),
            ] {
                if let Some(v) = v.filter(|v| !v.is_empty()) {
                    // GA4 allows 1000 characters for page_location.
                    params.insert(k.into(), Value::String(v.chars().take(1000).collect()));
                }
            }
            "page_view".to_owned()
        }
        MessageType::Screen => {
            if let Some(n) = message.get("name").and_then(Value::as_str) {
                params.insert("screen_name".into(), Value::String(cut(n)));
            }
            "screen_view".to_owned()
        }
        MessageType::Track => snake_case(message.get("event")?.as_str()?),
        _ => return None,
    };
    // A page's own fields are mapped above.
    let skip: &[&str] = if kind == MessageType::Page {
        &["url", "title", "referrer", "path", "search"]
    } else {
        &[]
    };
    params_of(props, skip, &mut params);
    let user_id = message
        .get("userId")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let client_id = message
        .get("anonymousId")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| user_id.clone())?;
    let prefs = message
        .get("context")
        .and_then(|c| c.get("consent"))
        .and_then(|c| c.get("categoryPreferences"));
    let marketing = granted(prefs.and_then(|p| p.get("marketing")));
    let personalization = granted(prefs.and_then(|p| p.get("personalization"))).or(marketing);
    let mut event = json!({ "name": name, "params": params });
    if let Some(t) = message
        .get("timestamp")
        .and_then(Value::as_str)
        .and_then(crate::clock::parse_rfc3339)
    {
        event["timestamp_micros"] = Value::from((t.unix_timestamp_nanos() / 1000) as i64);
    }
    Some((
        RequestKey {
            client_id,
            user_id,
            ad_user_data: marketing,
            ad_personalization: personalization,
        },
        event,
    ))
}

/// What one request shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestKey {
    /// `client_id`.
    pub client_id: String,
    /// `user_id`.
    pub user_id: Option<String>,
    /// `consent.ad_user_data`.
    pub ad_user_data: Option<bool>,
    /// `consent.ad_personalization`.
    pub ad_personalization: Option<bool>,
}

/// A batch's request bodies: per key, in order of first appearance, at
/// most 25 events each (each client's events stay in order).
pub fn requests(batch: &Batch) -> Vec<Value> {
    let mut groups: Vec<(RequestKey, Vec<Value>)> = Vec::new();
    for item in &batch.items {
        let Ok(message) = serde_json::from_str::<Value>(&item.body) else {
            continue;
        };
        let Some((key, event)) = event(&message) else {
            continue;
        };
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, events)) => events.push(event),
            None => groups.push((key, vec![event])),
        }
    }
    let mut out = Vec::new();
    for (key, events) in groups {
        for chunk in events.chunks(MAX_EVENTS) {
            let mut body = json!({ "client_id": key.client_id, "events": chunk });
            if let Some(u) = &key.user_id {
                body["user_id"] = u.clone().into();
            }
            let word = |g: Option<bool>| g.map(|g| if g { "GRANTED" } else { "DENIED" });
            let mut consent = Map::new();
            if let Some(w) = word(key.ad_user_data) {
                consent.insert("ad_user_data".into(), w.into());
            }
            if let Some(w) = word(key.ad_personalization) {
                consent.insert("ad_personalization".into(), w.into());
            }
            if !consent.is_empty() {
                body["consent"] = Value::Object(consent);
            }
            out.push(body);
        }
    }
    out
}

/// Delivers to the Measurement Protocol endpoint.
pub struct Ga4<T> {
    /// `{base}/mp/collect?measurement_id=..&api_secret=..`.
    pub url: String,
    /// How.
    pub transport: T,
}

impl<T: Transport> Sink for Ga4<T> {
    fn send<'a>(&'a mut self, batch: &'a Batch) -> SinkFuture<'a> {
        Box::pin(async move {
            // A retry sends every request of the batch again; GA4 has no
            // deduplication key, so a partial failure may count some twice.
            for body in requests(batch) {
                let post = Post {
                    url: self.url.clone(),
                    headers: Vec::new(),
                    content_type: "application/json",
                    body: Bytes::from(body.to_string()),
                };
                match self.transport.post(post, super::webhook::TIMEOUT).await {
                    Ok(answer) => classify_answer(&answer)?,
                    Err(e) => transport_failure(&e)?,
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::destinations::outbox::Item;
    use std::sync::Arc;

    #[test]
    fn names_are_snake_case_and_at_most_40_characters() {
        assert_eq!(snake_case("Order Completed"), "order_completed");
        assert_eq!(snake_case("productViewed"), "product_viewed");
        assert_eq!(snake_case("Add-to-Cart!"), "add_to_cart");
        assert_eq!(snake_case("  spaced   out "), "spaced_out");
        assert_eq!(snake_case("3D View"), "e_3d_view");
        let long = snake_case(&"Very Long Event Name ".repeat(5));
        assert!(long.len() <= 40 && !long.ends_with('_'), "{long}");
    }

    fn item(body: Value) -> Arc<Item> {
        Arc::new(Item {
            lsn: 1,
            received_ms: 0,
            ids: vec![],
            kind: MessageType::Track,
            body: body.to_string(),
        })
    }

    #[test]
    fn a_batch_becomes_requests_per_client_of_at_most_25_events() {
        let mut items = Vec::new();
        for n in 0..30 {
            items.push(item(json!({"type":"track","event":"Product Viewed","anonymousId":"a1","userId":"u1",
                "timestamp":"2026-12-02T10:00:00.000Z","properties":{"productId":n,"nested":{"x":1}},
                "context":{"consent":{"categoryPreferences":{"analytics":true,"marketing":true}}}})));
        }
        items.push(item(
            json!({"type":"page","anonymousId":"a2","properties":{"title":"Home"},
            "context":{"page":{"url":"https://shop.example/"}}}),
        ));
        items.push(item(
            json!({"type":"identify","anonymousId":"a2","traits":{"plan":"pro"}}),
        ));
        let batch = Batch {
            id: "b".into(),
            audience: false,
            items,
        };
        let reqs = requests(&batch);
        assert_eq!(reqs.len(), 3);
        assert_eq!(reqs[0]["events"].as_array().unwrap().len(), 25);
        assert_eq!(reqs[1]["events"].as_array().unwrap().len(), 5);
        assert_eq!(reqs[0]["client_id"], "a1");
        assert_eq!(reqs[0]["user_id"], "u1");
        assert_eq!(
            reqs[0]["consent"],
            json!({"ad_user_data":"GRANTED","ad_personalization":"GRANTED"})
        );
        let e = &reqs[0]["events"][0];
        assert_eq!(e["name"], "product_viewed");
        assert_eq!(e["params"], json!({"product_id": 0}));
        assert_eq!(e["timestamp_micros"], 1_796_205_600_000_000i64);
        assert_eq!(reqs[2]["client_id"], "a2");
        assert_eq!(reqs[2]["events"][0]["name"], "page_view");
        assert_eq!(
            reqs[2]["events"][0]["params"],
            json!({"page_location":"https://shop.example/","page_title":"Home"})
        );
        assert!(reqs[2].get("consent").is_none());
    }
}
