//! The Segment-spec message and the batch envelope.
//!
//! Field names on the wire are Segment's camelCase (`messageId`,
//! `anonymousId`, ...), so existing Segment and RudderStack server SDKs can
//! send to weft unchanged. Timestamps travel as ISO-8601 text; the collector
//! parses them, the SDK gets them from the browser, so this crate needs no
//! time library.

#[cfg(feature = "serde")]
use serde::{Deserialize, Serialize};

#[cfg(feature = "serde")]
use crate::json::{Json, Writer};
#[cfg(feature = "serde")]
use alloc::string::String;

/// The six Segment message types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(Serialize, Deserialize),
    serde(rename_all = "lowercase")
)]
pub enum MessageType {
    /// A user action: `event` names it.
    Track,
    /// A web page view.
    Page,
    /// A mobile screen view.
    Screen,
    /// Ties a `userId` (and traits) to the sender.
    Identify,
    /// Joins `previousId` to `userId`.
    Alias,
    /// Ties the sender to a `groupId` (an account, a company).
    Group,
}

impl MessageType {
    /// Every type, in the order above.
    pub const ALL: [MessageType; 6] = [
        MessageType::Track,
        MessageType::Page,
        MessageType::Screen,
        MessageType::Identify,
        MessageType::Alias,
        MessageType::Group,
    ];

    /// The wire name (`"track"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::Track => "track",
            MessageType::Page => "page",
            MessageType::Screen => "screen",
            MessageType::Identify => "identify",
            MessageType::Alias => "alias",
            MessageType::Group => "group",
        }
    }

    /// Parses a wire name; `None` for anything else.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

#[cfg(feature = "serde")]
/// One message, as on the wire.
///
/// Every field but `type` is optional here: which ones a type requires is the
/// collector's validation, so that a message missing one is rejected with a
/// reason rather than failing to parse.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    /// `track`, `page`, ...
    #[serde(rename = "type")]
    pub kind: MessageType,
    /// Unique per message and stable across retries; the dedup key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// The device/browser identifier.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "identifier"
    )]
    pub anonymous_id: Option<String>,
    /// The site's login identifier.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "identifier"
    )]
    pub user_id: Option<String>,
    /// When the message happened (corrected for clock skew once stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    /// The client's own clock reading of when it happened (Segment spec).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_timestamp: Option<String>,
    /// The client's clock when the request was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<String>,
    /// The server's clock when the request arrived; set by the collector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_at: Option<String>,
    /// `track`: the event name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// `page`/`screen`: the page or screen name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `page`: an optional category.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// `alias`: the identifier being joined to `userId`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "identifier"
    )]
    pub previous_id: Option<String>,
    /// `group`: the group identifier.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "identifier"
    )]
    pub group_id: Option<String>,
    /// Where and how the message was made: page, library, consent, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Json>,
    /// `track`/`page`/`screen` properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<Json>,
    /// `identify`/`group` traits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traits: Option<Json>,
    /// Per-destination switches (Segment spec); kept, not interpreted yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integrations: Option<Json>,
}

#[cfg(feature = "serde")]
impl Message {
    /// A message of `kind` with every optional field empty.
    pub fn new(kind: MessageType) -> Self {
        Message {
            kind,
            message_id: None,
            anonymous_id: None,
            user_id: None,
            timestamp: None,
            original_timestamp: None,
            sent_at: None,
            received_at: None,
            event: None,
            name: None,
            category: None,
            previous_id: None,
            group_id: None,
            context: None,
            properties: None,
            traits: None,
            integrations: None,
        }
    }

    /// Writes the message as a JSON object, in the same shape serde gives.
    pub fn write_json(&self, w: &mut Writer) {
        w.object_start();
        w.key("type");
        w.string(self.kind.as_str());
        w.opt_string("messageId", self.message_id.as_deref());
        w.opt_string("anonymousId", self.anonymous_id.as_deref());
        w.opt_string("userId", self.user_id.as_deref());
        w.opt_string("timestamp", self.timestamp.as_deref());
        w.opt_string("originalTimestamp", self.original_timestamp.as_deref());
        w.opt_string("sentAt", self.sent_at.as_deref());
        w.opt_string("receivedAt", self.received_at.as_deref());
        w.opt_string("event", self.event.as_deref());
        w.opt_string("name", self.name.as_deref());
        w.opt_string("category", self.category.as_deref());
        w.opt_string("previousId", self.previous_id.as_deref());
        w.opt_string("groupId", self.group_id.as_deref());
        w.opt_raw("context", self.context.as_ref());
        w.opt_raw("properties", self.properties.as_ref());
        w.opt_raw("traits", self.traits.as_ref());
        w.opt_raw("integrations", self.integrations.as_ref());
        w.object_end();
    }

    /// The message as JSON text (see [`Message::write_json`]).
    pub fn to_json(&self) -> String {
        let mut w = Writer::new();
        self.write_json(&mut w);
        w.finish()
    }
}

#[cfg(feature = "serde")]
/// Reads an identifier: a string, or a number taken as its decimal text
/// (server SDKs pass numeric database IDs through). Anything else is an
/// error naming the field's expected type.
fn identifier<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        Text(String),
        Number(serde_json::Number),
    }
    match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => match Id::deserialize(v) {
            Ok(Id::Text(s)) => Ok(Some(s)),
            Ok(Id::Number(n)) => Ok(Some(n.to_string())),
            Err(_) => Err(serde::de::Error::custom(
                "identifiers must be strings (or numbers)",
            )),
        },
    }
}

#[cfg(feature = "serde")]
/// The body of `POST /v1/batch`: `{"batch":[...], "sentAt": ..}`.
///
/// Generic over the message representation: the SDK builds it from encoded
/// messages, the collector reads each element as raw JSON first so that one
/// bad message cannot fail its neighbours.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Batch<M = Message> {
    /// The messages.
    pub batch: Vec<M>,
    /// The client's clock when the request was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<String>,
    /// The source's write key, for clients that cannot set headers
    /// (`sendBeacon`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_key: Option<String>,
    /// Context shared by every message of the batch (Segment spec).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Json>,
    /// weft's browser SDK was reset (a logout): the collector's server
    /// cookie stops naming the device's anonymous ID, so the next person
    /// on a shared browser is not joined to the last one.
    #[serde(default, skip_serializing_if = "is_false")]
    pub reset: bool,
}

#[cfg(feature = "serde")]
fn is_false(b: &bool) -> bool {
    !*b
}

#[cfg(feature = "serde")]
/// Writes a batch body from messages already encoded as JSON objects.
///
/// This is the SDK's path: its queue holds encoded messages, so a batch is a
/// concatenation, not a re-encoding.
pub fn write_batch<'a>(
    messages: impl IntoIterator<Item = &'a str>,
    sent_at: &str,
    write_key: &str,
) -> String {
    let mut w = Writer::new();
    w.object_start();
    w.key("batch");
    w.array_start();
    for m in messages {
        w.raw(&Json::from_trusted(m));
    }
    w.array_end();
    w.key("sentAt");
    w.string(sent_at);
    w.key("writeKey");
    w.string(write_key);
    w.object_end();
    w.finish()
}

#[cfg(all(test, feature = "serde"))]
mod tests {
    use super::*;

    fn full_message() -> Message {
        Message {
            message_id: Some("m-1".into()),
            anonymous_id: Some("a-1".into()),
            user_id: Some("u \"1\"".into()),
            timestamp: Some("2026-11-23T10:00:00.000Z".into()),
            original_timestamp: Some("2026-11-23T10:00:00.000Z".into()),
            sent_at: Some("2026-11-23T10:00:01.000Z".into()),
            received_at: Some("2026-11-23T10:00:02.000Z".into()),
            event: Some("Signed Up".into()),
            name: Some("Home".into()),
            category: Some("Docs".into()),
            previous_id: Some("old".into()),
            group_id: Some("g".into()),
            context: Some(Json::from_trusted(r#"{"page":{"path":"/"}}"#)),
            properties: Some(Json::from_trusted(r#"{"plan":"pro","n":1.5}"#)),
            traits: Some(Json::from_trusted(r#"{"email":"x@example.com"}"#)),
            integrations: Some(Json::from_trusted(r#"{"All":true}"#)),
            ..Message::new(MessageType::Track)
        }
    }

    #[test]
    fn lean_writer_and_serde_agree_on_every_field() {
        for m in [full_message(), Message::new(MessageType::Page)] {
            let lean = m.to_json();
            let by_serde = serde_json::to_string(&m).unwrap();
            assert_eq!(lean, by_serde);
            let back: Message = serde_json::from_str(&lean).unwrap();
            assert_eq!(back, m);
        }
    }

    #[test]
    fn type_names_round_trip() {
        for t in MessageType::ALL {
            assert_eq!(MessageType::parse(t.as_str()), Some(t));
            let json = format!("\"{}\"", t.as_str());
            assert_eq!(serde_json::from_str::<MessageType>(&json).unwrap(), t);
        }
        assert_eq!(MessageType::parse("Track"), None);
    }

    #[test]
    fn segment_spec_message_parses() {
        let text = r#"{"type":"identify","userId":"97980cfea0067","anonymousId":"507f",
            "traits":{"name":"Peter Gibbons","email":"peter@example.com"},
            "context":{"ip":"24.5.68.47"},"timestamp":"2012-12-02T00:30:08.276Z",
            "messageId":"022bb90c-bbac-11e4-8dfc-aa07a5b093db","unknownField":1}"#;
        let m: Message = serde_json::from_str(text).unwrap();
        assert_eq!(m.kind, MessageType::Identify);
        assert_eq!(m.user_id.as_deref(), Some("97980cfea0067"));
        assert!(m.traits.unwrap().as_str().contains("Peter Gibbons"));
    }

    #[test]
    fn identifiers_may_be_numbers_but_not_other_types() {
        let m: Message = serde_json::from_str(
            r#"{"type":"alias","userId":42,"previousId":"old","anonymousId":null}"#,
        )
        .unwrap();
        assert_eq!(m.user_id.as_deref(), Some("42"));
        assert_eq!(m.anonymous_id, None);
        for bad in [
            r#"{"type":"page","userId":true}"#,
            r#"{"type":"page","anonymousId":{"a":1}}"#,
        ] {
            let err = serde_json::from_str::<Message>(bad)
                .unwrap_err()
                .to_string();
            assert!(err.contains("identifiers must be strings"), "{err}");
        }
    }

    #[test]
    fn batch_from_encoded_messages_parses_as_batch() {
        let a = full_message().to_json();
        let b = Message::new(MessageType::Page).to_json();
        let body = write_batch([a.as_str(), b.as_str()], "2026-11-23T10:00:01.000Z", "wk_1");
        let batch: Batch = serde_json::from_str(&body).unwrap();
        assert_eq!(
            batch.batch,
            vec![full_message(), Message::new(MessageType::Page)]
        );
        assert_eq!(batch.write_key.as_deref(), Some("wk_1"));
        assert_eq!(batch.sent_at.as_deref(), Some("2026-11-23T10:00:01.000Z"));
    }
}
