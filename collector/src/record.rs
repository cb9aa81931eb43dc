//! What one record of the event log holds, and its binary encoding.
//!
//! The event log ([`crate::log`]) stores opaque payloads; this module gives
//! them meaning. Two kinds of record exist:
//!
//! - an accepted event, with the collector's own values (source,
//!   messageId, identifiers, corrected timestamp, receivedAt, truncated IP,
//!   and the server cookie's anonymous ID when it differs from the
//!   message's) beside the stored JSON body;
//! - a rejected message (a "bad row") with its reason.
//!
//! (Erased identifiers are not log records: retention drops old segments,
//! and a suppression must outlive them; see [`crate::store::suppression`].)
//!
//! The encoding is a small hand-written one (length-prefixed strings, a tag
//! byte a record) because it runs on the ack path for every message: no
//! JSON re-encoding, no allocation beyond the output buffer. The log's
//! framing carries the format version.

use weft_protocol::MessageType;

use crate::consent::ConsentRecord;
use crate::store::{NewEvent, RejectedMessage};

/// Why a payload could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub &'static str);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "undecodable log record: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

const TAG_EVENT: u8 = 1;
const TAG_REJECTED: u8 = 2;

/// One log record, decoded.
// Records are decoded and used one at a time: boxing the event would cost
// an allocation per record for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// An accepted event of `source`.
    Event {
        /// The source's write key.
        source: String,
        /// The event.
        event: NewEvent,
    },
    /// A message that failed validation.
    Rejected {
        /// The source's write key.
        source: String,
        /// The message and its reason.
        rejected: RejectedMessage,
    },
}

/// Appends the encoding of an event record to `out`.
pub fn encode_event(out: &mut Vec<u8>, source: &str, e: &NewEvent) {
    out.push(TAG_EVENT);
    put_str(out, source);
    put_str(out, &e.message_id);
    put_str(out, e.kind.as_str());
    put_opt(out, e.event.as_deref());
    put_opt(out, e.anonymous_id.as_deref());
    put_opt(out, e.user_id.as_deref());
    put_opt(out, e.previous_id.as_deref());
    out.push(e.junk_ids);
    match &e.consent_record {
        None => out.push(0),
        Some(c) => {
            out.push(1);
            put_str(out, &c.preferences);
            put_opt(out, c.policy.as_deref());
            put_opt(out, c.policy_version.as_deref());
        }
    }
    put_str(out, &e.timestamp);
    put_str(out, &e.received_at);
    put_opt(out, e.ip.as_deref());
    put_str(out, &e.body);
    // Optional fields last, each a tag and its value, only when present:
    // records written before they existed read the same.
    if let Some(same) = &e.same_device {
        out.push(FIELD_SAME_DEVICE);
        put_str(out, same);
    }
    if let Some((start, end)) = e.properties {
        out.push(FIELD_PROPERTIES);
        out.extend_from_slice(&start.to_le_bytes());
        out.extend_from_slice(&end.to_le_bytes());
    }
}

/// Tag of an event record's optional same-device ID.
const FIELD_SAME_DEVICE: u8 = 1;
/// Tag of an event record's optional `properties` range in its body.
const FIELD_PROPERTIES: u8 = 2;

/// Appends the encoding of a rejected-message record to `out`.
pub fn encode_rejected(out: &mut Vec<u8>, source: &str, r: &RejectedMessage) {
    out.push(TAG_REJECTED);
    put_str(out, source);
    put_str(out, &r.received_at);
    put_str(out, &r.code);
    put_str(out, &r.reason);
    put_str(out, &r.raw);
}

/// The source and messageId of an event record, without decoding the rest
/// (for the dedup window, rebuilt from the log at start).
pub fn event_key(payload: &[u8]) -> Option<(&str, &str)> {
    let mut r = Reader(payload);
    if r.u8().ok()? != TAG_EVENT {
        return None;
    }
    Some((r.str().ok()?, r.str().ok()?))
}

/// A record decoded in place: every text borrows the payload. What
/// consumers read (no allocation per field); [`RecordRef::to_owned`] gives
/// a [`Record`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RecordRef<'a> {
    /// An accepted event of `source`.
    Event {
        /// The source's write key.
        source: &'a str,
        /// The event.
        event: EventRef<'a>,
    },
    /// A message that failed validation.
    Rejected {
        /// The source's write key.
        source: &'a str,
        /// The message and its reason.
        rejected: RejectedRef<'a>,
    },
}

/// [`NewEvent`], borrowed.
#[derive(Debug, Clone, Copy, PartialEq)]
#[allow(missing_docs)]
pub struct EventRef<'a> {
    pub message_id: &'a str,
    pub kind: MessageType,
    pub event: Option<&'a str>,
    pub anonymous_id: Option<&'a str>,
    pub user_id: Option<&'a str>,
    pub previous_id: Option<&'a str>,
    pub junk_ids: u8,
    pub consent_record: Option<ConsentRef<'a>>,
    pub timestamp: &'a str,
    pub received_at: &'a str,
    pub ip: Option<&'a str>,
    pub body: &'a str,
    pub properties: Option<(u32, u32)>,
    pub same_device: Option<&'a str>,
}

/// [`ConsentRecord`], borrowed.
#[derive(Debug, Clone, Copy, PartialEq)]
#[allow(missing_docs)]
pub struct ConsentRef<'a> {
    pub preferences: &'a str,
    pub policy: Option<&'a str>,
    pub policy_version: Option<&'a str>,
}

/// [`RejectedMessage`], borrowed.
#[derive(Debug, Clone, Copy, PartialEq)]
#[allow(missing_docs)]
pub struct RejectedRef<'a> {
    pub received_at: &'a str,
    pub code: &'a str,
    pub reason: &'a str,
    pub raw: &'a str,
}

impl RecordRef<'_> {
    /// The record with owned fields.
    pub fn to_owned(&self) -> Record {
        let own = |s: Option<&str>| s.map(str::to_owned);
        match *self {
            RecordRef::Event { source, event: e } => Record::Event {
                source: source.to_owned(),
                event: NewEvent {
                    message_id: e.message_id.to_owned(),
                    kind: e.kind,
                    event: own(e.event),
                    anonymous_id: own(e.anonymous_id),
                    user_id: own(e.user_id),
                    previous_id: own(e.previous_id),
                    junk_ids: e.junk_ids,
                    consent_record: e.consent_record.map(|c| ConsentRecord {
                        preferences: c.preferences.to_owned(),
                        policy: own(c.policy),
                        policy_version: own(c.policy_version),
                    }),
                    timestamp: e.timestamp.to_owned(),
                    received_at: e.received_at.to_owned(),
                    ip: own(e.ip),
                    body: e.body.to_owned(),
                    properties: e.properties,
                    same_device: own(e.same_device),
                },
            },
            RecordRef::Rejected {
                source,
                rejected: r,
            } => Record::Rejected {
                source: source.to_owned(),
                rejected: RejectedMessage {
                    received_at: r.received_at.to_owned(),
                    code: r.code.to_owned(),
                    reason: r.reason.to_owned(),
                    raw: r.raw.to_owned(),
                },
            },
        }
    }
}

/// Decodes a payload.
pub fn decode(payload: &[u8]) -> Result<Record, DecodeError> {
    decode_ref(payload).map(|r| r.to_owned())
}

/// Decodes a payload in place.
pub fn decode_ref(payload: &[u8]) -> Result<RecordRef<'_>, DecodeError> {
    let mut r = Reader(payload);
    let record = match r.u8()? {
        TAG_EVENT => {
            let source = r.str()?;
            let message_id = r.str()?;
            let kind = MessageType::parse(r.str()?).ok_or(DecodeError("message type"))?;
            let event = r.opt()?;
            let anonymous_id = r.opt()?;
            let user_id = r.opt()?;
            let previous_id = r.opt()?;
            let junk_ids = r.u8()?;
            let consent_record = match r.u8()? {
                0 => None,
                1 => Some(ConsentRef {
                    preferences: r.str()?,
                    policy: r.opt()?,
                    policy_version: r.opt()?,
                }),
                _ => return Err(DecodeError("consent flag")),
            };
            let mut event = EventRef {
                message_id,
                kind,
                event,
                anonymous_id,
                user_id,
                previous_id,
                junk_ids,
                consent_record,
                timestamp: r.str()?,
                received_at: r.str()?,
                ip: r.opt()?,
                body: r.str()?,
                properties: None,
                same_device: None,
            };
            // The optional fields, in the order they are written.
            if r.0.first() == Some(&FIELD_SAME_DEVICE) {
                r.u8()?;
                event.same_device = Some(r.str()?);
            }
            if r.0.first() == Some(&FIELD_PROPERTIES) {
                r.u8()?;
                let (start, end) = (r.u32()?, r.u32()?);
                if start > end || end as usize > event.body.len() {
                    return Err(DecodeError("properties range"));
                }
                event.properties = Some((start, end));
            }
            RecordRef::Event { source, event }
        }
        TAG_REJECTED => RecordRef::Rejected {
            source: r.str()?,
            rejected: RejectedRef {
                received_at: r.str()?,
                code: r.str()?,
                reason: r.str()?,
                raw: r.str()?,
            },
        },
        _ => return Err(DecodeError("unknown tag")),
    };
    if !r.0.is_empty() {
        return Err(DecodeError("trailing bytes"));
    }
    Ok(record)
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_opt(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn str(&mut self) -> Result<&'a str, DecodeError> {
        let n = self.u32()? as usize;
        std::str::from_utf8(self.take(n)?).map_err(|_| DecodeError("utf-8"))
    }

    fn opt(&mut self) -> Result<Option<&'a str>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => self.str().map(Some),
            _ => Err(DecodeError("option flag")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> NewEvent {
        NewEvent {
            properties: None,
            same_device: None,
            message_id: "m-1".into(),
            kind: MessageType::Identify,
            event: None,
            anonymous_id: Some("a-1".into()),
            user_id: Some("u-\u{e9}".into()),
            previous_id: None,
            junk_ids: 1,
            consent_record: Some(ConsentRecord {
                preferences: r#"{"analytics":true}"#.into(),
                policy: Some("opt-in".into()),
                policy_version: None,
            }),
            timestamp: "2026-12-02T10:00:00.000Z".into(),
            received_at: "2026-12-02T10:00:01.000Z".into(),
            ip: Some("10.0.0.0".into()),
            body: r#"{"type":"identify","traits":{"plan":"pro"}}"#.into(),
        }
    }

    #[test]
    fn every_kind_round_trips() {
        let mut buf = Vec::new();
        encode_event(&mut buf, "wk", &event());
        assert_eq!(event_key(&buf), Some(("wk", "m-1")));
        assert_eq!(
            decode(&buf),
            Ok(Record::Event {
                source: "wk".into(),
                event: event()
            })
        );

        let rejected = RejectedMessage {
            received_at: "t".into(),
            code: "missing_identity".into(),
            reason: "anonymousId or userId is required".into(),
            raw: "{}".into(),
        };
        buf.clear();
        encode_rejected(&mut buf, "wk", &rejected);
        assert_eq!(event_key(&buf), None);
        assert_eq!(
            decode(&buf),
            Ok(Record::Rejected {
                source: "wk".into(),
                rejected
            })
        );
    }

    #[test]
    fn truncated_or_padded_payloads_are_errors_not_panics() {
        let mut buf = Vec::new();
        encode_event(&mut buf, "wk", &event());
        for n in 0..buf.len() {
            assert!(decode(&buf[..n]).is_err(), "{n}");
        }
        buf.push(0);
        assert_eq!(decode(&buf), Err(DecodeError("trailing bytes")));
        // With the optional last field, too.
        buf.clear();
        let joined = NewEvent {
            same_device: Some("a-0".into()),
            properties: Some((10, 20)),
            ..event()
        };
        encode_event(&mut buf, "wk", &joined);
        assert_eq!(
            decode(&buf),
            Ok(Record::Event {
                source: "wk".into(),
                event: joined
            })
        );
        let without = {
            let mut b = Vec::new();
            encode_event(&mut b, "wk", &event());
            b.len()
        };
        // (A cut at the boundary of an optional field reads as a record
        // without the fields after it: the log's framing, its length and
        // CRC, is what detects a cut record.)
        for n in without + 1..buf.len() {
            assert!(
                decode(&buf[..n]).is_err() || n == without + 1 + 4 + 3,
                "{n}"
            );
        }
        // A range outside the body is refused, not trusted.
        let outside = NewEvent {
            properties: Some((0, 10_000)),
            ..event()
        };
        buf.clear();
        encode_event(&mut buf, "wk", &outside);
        assert_eq!(decode(&buf), Err(DecodeError("properties range")));
        assert_eq!(decode(&[42]), Err(DecodeError("unknown tag")));
    }
}
