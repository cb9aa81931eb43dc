//! Property tests over the ingest decoder and validator: no input, however
//! hostile, may panic the server, and whatever is accepted is well-formed.
//!
//! They run briefly in `cargo xtask test` (proptest's default case count) and
//! longer by hand: `PROPTEST_CASES=200000 cargo test -p weft-collector fuzz`.

use proptest::prelude::*;
use serde_json::{Value, json};
use time::macros::datetime;
use weft_protocol::{Message, MessageType};

use crate::admission::{Facts, Outcome, admit, parse_envelope};
use crate::clock::parse_rfc3339;
use crate::consent::MissingConsent;
use crate::ingest::decode_body;

const CODES: [&str; 5] = [
    "too_large",
    "invalid_message",
    "missing_identity",
    "missing_field",
    "invalid_timestamp",
];

/// Runs a body through everything ingest does before storing and checks the
/// invariants of what comes out.
fn check_body(body: &[u8], gzip: bool, single: Option<MessageType>) {
    let Ok(decoded) = decode_body(bytes::Bytes::copy_from_slice(body), gzip) else {
        return;
    };
    let Ok(envelope) = parse_envelope(&decoded, single) else {
        return;
    };
    let facts = Facts {
        device: None,
        source: "s",
        consent: MissingConsent::Assumed,
        received: datetime!(2026-11-23 10:00:00 UTC),
        ip: None,
        junk: &[],
    };
    let admission = admit(&envelope, &facts);
    assert_eq!(admission.outcomes.len(), envelope.messages.len());
    let accepted = admission
        .outcomes
        .iter()
        .filter(|o| **o == Outcome::Accepted)
        .count();
    assert_eq!(accepted, admission.request.events.len());
    for event in &admission.request.events {
        assert!(!event.message_id.is_empty());
        assert!(
            parse_rfc3339(&event.timestamp).is_some(),
            "{}",
            event.timestamp
        );
        let stored: Message = serde_json::from_str(&event.body).expect("stored body parses");
        assert_eq!(stored.kind, event.kind);
    }
    for outcome in &admission.outcomes {
        if let Outcome::Rejected(rejection) = outcome {
            assert!(CODES.contains(&rejection.code), "{rejection:?}");
        }
    }
}

/// JSON values of any shape, small.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(".{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Values that look like messages: the real field names with values of
/// right and wrong types.
fn message_like() -> impl Strategy<Value = Value> {
    let field = |name: &'static str| (Just(name), prop::option::of(any_json()));
    let text =
        |choices: &'static [&'static str]| prop::sample::select(choices).prop_map(Value::from);
    (
        prop::option::of(prop_oneof![
            text(&[
                "track", "page", "screen", "identify", "alias", "group", "nope"
            ]),
            any_json()
        ]),
        prop::option::of(prop_oneof![text(&["a-1", "", "0"]), any_json()]),
        prop::option::of(prop_oneof![text(&["u-1", "", "null"]), any_json()]),
        prop::option::of(prop_oneof![
            text(&[
                "2026-11-23T09:00:00Z",
                "2026-11-23T09:00:00.123+02:00",
                "not a time",
                "9999-12-31T23:59:59Z",
                "0000-01-01T00:00:00Z"
            ]),
            any_json()
        ]),
        prop::collection::vec(
            prop_oneof![
                field("event"),
                field("messageId"),
                field("sentAt"),
                field("properties"),
                field("previousId"),
                field("groupId"),
                field("context"),
            ],
            0..5,
        ),
    )
        .prop_map(|(kind, anon, user, ts, extra)| {
            let mut m = serde_json::Map::new();
            for (k, v) in [
                ("type", kind),
                ("anonymousId", anon),
                ("userId", user),
                ("timestamp", ts),
            ] {
                if let Some(v) = v {
                    m.insert(k.into(), v);
                }
            }
            for (k, v) in extra {
                if let Some(v) = v {
                    m.insert(k.into(), v);
                }
            }
            Value::Object(m)
        })
}

proptest! {
    #[test]
    fn fuzz_arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512), gzip: bool) {
        check_body(&body, gzip, None);
        check_body(&body, gzip, Some(MessageType::Track));
    }

    #[test]
    fn fuzz_message_like_batches(
        messages in prop::collection::vec(message_like(), 0..6),
        sent_at in prop::option::of(prop_oneof![Just(json!("2026-11-23T10:00:05Z")), any_json()]),
    ) {
        let mut envelope = json!({"batch": messages});
        if let Some(s) = sent_at {
            envelope["sentAt"] = s;
        }
        check_body(envelope.to_string().as_bytes(), false, None);
    }

    #[test]
    fn fuzz_single_messages(message in message_like()) {
        for kind in MessageType::ALL {
            check_body(message.to_string().as_bytes(), false, Some(kind));
        }
    }
}

proptest! {
    /// The segment indexer's property scan gives what a full parse gives,
    /// for objects of any shape, pretty-printed or not.
    #[test]
    fn properties_scan_matches_a_full_parse(
        others in prop::collection::btree_map(".{0,8}", any_json(), 0..4),
        properties in prop::option::of(prop_oneof![
            prop::collection::btree_map(prop::sample::select(&["a", "b", "c", "é\"", "x"][..]), any_json(), 0..5)
                .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
            any_json(),
        ]),
        pretty: bool,
    ) {
        let mut object: serde_json::Map<String, Value> = others.into_iter().collect();
        if let Some(p) = properties {
            object.insert("properties".into(), p);
        }
        let value = Value::Object(object);
        let text = if pretty {
            serde_json::to_string_pretty(&value).unwrap()
        } else {
            value.to_string()
        };
        let wanted = ["a", "c", "é\""];
        // What a full parse of the same text reads (floats as parsed).
        let parsed: Value = serde_json::from_str(&text).unwrap();
        let expected = match parsed.get("properties") {
            None => Value::Null,
            Some(Value::Object(p)) => Value::Object(
                p.iter()
                    .filter(|(k, _)| wanted.contains(&k.as_str()))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
            Some(_) => json!({}),
        };
        let got = crate::store::sqlite::properties_only(&text, &wanted).unwrap();
        prop_assert_eq!(&got["properties"], &expected, "{}", text);
    }
}
