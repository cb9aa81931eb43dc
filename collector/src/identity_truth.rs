//! Identity resolution checked against ground truth, through the real
//! ingest validation and the real SQLite store.
//!
//! A generator makes people with their own devices and user IDs, some
//! shared devices used by several people in turn, aliases, junk IDs and
//! anonymous browsing before each login; the messages are delivered
//! shuffled, in random batches. Then every person's profile must hold
//! exactly their user IDs and devices, and exactly their events: no wrong
//! merge, no missed link. The same history delivered in another order must
//! give identical profiles.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::json;
use time::macros::datetime;

use crate::admission::{Facts, Outcome, admit, parse_envelope};
use crate::consent::MissingConsent;
use crate::store::embedded::{EmbeddedStore, StoreOptions};
use crate::store::{ProfileSummary, ReadSide, WriteSide};

/// One person's truth.
#[derive(Debug, Clone, Default)]
struct Person {
    users: BTreeSet<String>,
    devices: BTreeSet<String>,
    events: usize,
}

/// A generated history: messages and the truth they encode.
#[derive(Debug, Clone)]
struct History {
    messages: Vec<String>,
    people: Vec<Person>,
}

fn at(minute: u32) -> String {
    format!("2026-11-23T{:02}:{:02}:00Z", 8 + minute / 60, minute % 60)
}

/// `people` people with 1-3 own devices each, an optional second user ID
/// joined by alias, and `shared` devices each used by 2-3 people in turn.
fn history() -> impl Strategy<Value = History> {
    (2usize..6, 0usize..3, any::<u64>()).prop_map(|(n_people, n_shared, seed)| {
        let mut rng = seed;
        let mut next = move |n: u64| {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (rng >> 33) % n
        };
        let mut messages = Vec::new();
        let mut people = vec![Person::default(); n_people];
        let mut minute = 0u32;
        let msg = |m: serde_json::Value, minute: &mut u32| {
            *minute += 1;
            let mut m = m;
            m["timestamp"] = at(*minute).into();
            m["messageId"] = format!("m{}", *minute).into();
            m.to_string()
        };
        for (p, person) in people.iter_mut().enumerate() {
            let user = format!("user-{p}");
            person.users.insert(user.clone());
            for d in 0..=next(3) {
                let device = format!("dev-{p}-{d}");
                person.devices.insert(device.clone());
                // Browse anonymously, log in, browse logged in.
                for _ in 0..next(3) {
                    messages.push(msg(
                        json!({"type": "page", "anonymousId": device}),
                        &mut minute,
                    ));
                    person.events += 1;
                }
                messages.push(msg(
                    json!({"type": "identify", "anonymousId": device, "userId": user}),
                    &mut minute,
                ));
                person.events += 1;
                messages.push(msg(
                    json!({"type": "track", "event": "E", "anonymousId": device, "userId": user}),
                    &mut minute,
                ));
                person.events += 1;
            }
            if next(2) == 0 {
                let email = format!("user-{p}@example.com");
                person.users.insert(email.clone());
                messages.push(msg(
                    json!({"type": "alias", "previousId": user, "userId": email}),
                    &mut minute,
                ));
                messages.push(msg(
                    json!({"type": "track", "event": "E", "userId": email}),
                    &mut minute,
                ));
                person.events += 2;
            }
            // Junk IDs on the person's messages link nothing.
            messages.push(msg(
                json!({"type": "track", "event": "E", "anonymousId": "undefined", "userId": user}),
                &mut minute,
            ));
            person.events += 1;
        }
        for s in 0..n_shared {
            let device = format!("shared-{s}");
            let mut turns: Vec<usize> = (0..n_people).collect();
            let take = 2 + next(2) as usize;
            for turn in 0..take.min(n_people) {
                let i = next((turns.len()) as u64) as usize;
                let p = turns.remove(i);
                let _ = turn;
                people[p].devices.insert(device.clone());
                // This person browses, then logs in on the shared device.
                for _ in 0..1 + next(2) {
                    messages.push(msg(
                        json!({"type": "page", "anonymousId": device}),
                        &mut minute,
                    ));
                    people[p].events += 1;
                }
                let user = format!("user-{p}");
                messages.push(msg(
                    json!({"type": "identify", "anonymousId": device, "userId": user}),
                    &mut minute,
                ));
                people[p].events += 1;
            }
        }
        History { messages, people }
    })
}

/// Delivers `messages` in batches of the given sizes to a fresh store and
/// reads back the profile of every identifier.
fn deliver(
    messages: &[String],
    batch_sizes: &[usize],
    ids: &BTreeSet<String>,
) -> BTreeMap<String, ProfileSummary> {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(
        dir.path(),
        StoreOptions {
            queue_capacity: 64,
            ..StoreOptions::default()
        },
        Arc::default(),
    )
    .unwrap();
    let received = datetime!(2026-11-24 00:00:00 UTC);
    let mut rest = messages;
    let mut sizes = batch_sizes.iter().cycle();
    while !rest.is_empty() {
        let n = (*sizes.next().unwrap()).clamp(1, rest.len());
        let (batch, tail) = rest.split_at(n);
        rest = tail;
        // The same admission as ingest, on the batch's body.
        let body = format!("{{\"batch\":[{}]}}", batch.join(","));
        let envelope = parse_envelope(body.as_bytes(), None).expect("a batch");
        let facts = Facts {
            device: None,
            source: "s",
            consent: MissingConsent::Assumed,
            received,
            ip: None,
            junk: &[],
        };
        let admission = admit(&envelope, &facts);
        assert!(
            admission.outcomes.iter().all(|o| *o == Outcome::Accepted),
            "generated messages are valid: {:?}",
            admission.outcomes
        );
        let request = admission.request;
        store
            .append(request)
            .unwrap()
            .blocking_recv()
            .unwrap()
            .unwrap();
    }
    ids.iter()
        .filter_map(|id| store.profile(id).unwrap().map(|p| (id.clone(), p)))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn profiles_match_ground_truth_in_any_delivery_order(
        h in history(),
        order_seed in any::<u64>(),
        sizes in prop::collection::vec(1usize..8, 1..4),
    ) {
        let mut shuffled = h.messages.clone();
        let mut rng = order_seed;
        for i in (1..shuffled.len()).rev() {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(i, (rng >> 33) as usize % (i + 1));
        }
        let ids: BTreeSet<String> = h
            .people
            .iter()
            .flat_map(|p| p.users.iter().chain(&p.devices).cloned())
            .collect();
        let in_order = deliver(&h.messages, &[50], &ids);
        let shuffled_profiles = deliver(&shuffled, &sizes, &ids);
        prop_assert_eq!(&in_order, &shuffled_profiles, "delivery order changed the profiles");

        for person in &h.people {
            for user in &person.users {
                let p = &in_order[user];
                let users: BTreeSet<String> = p.user_ids.iter().cloned().collect();
                let devices: BTreeSet<String> = p.anonymous_ids.iter().cloned().collect();
                prop_assert_eq!(&users, &person.users, "user IDs of {}", user);
                prop_assert_eq!(&devices, &person.devices, "devices of {}", user);
                prop_assert_eq!(p.event_count as usize, person.events, "events of {}", user);
            }
        }
    }
}
