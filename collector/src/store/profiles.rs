//! Reading profiles from the index: resolving an identifier to its
//! profile (the identity walk over the memory index), and what the admin
//! API answers about it (summary, events, graph, consent history), reading
//! event bodies from the log by LSN. Also the facts a segment rule asks of
//! a profile (`ProfileFacts`).

use std::collections::BTreeMap;

use rusqlite::Connection;

use crate::identity::{self, Alias, Component, Device, Edges, Identity, Link, SameDevice};
use crate::log::{LogLookup, Lsn};
use crate::record::{self, RecordRef};

use super::memory::{self, CONSENT, IDENTIFY, MemoryIndex, WITH_USER};
use super::sqlite::{exists, log_error};
use super::{
    ConsentEntry, EventCursor, EventsPage, GraphEdge, IdentityGraph, ProfileSummary, StoreError,
};

/// What a read holds: a connection and the event index, read-locked.
pub(super) struct View<'a> {
    pub(super) conn: &'a Connection,
    pub(super) events: &'a MemoryIndex,
    pub(super) log: &'a LogLookup,
}

/// Most user IDs one alias component may hold before the walk stops.
const MAX_COMPONENT: usize = 10_000;

/// One event of a resolved profile.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Event {
    /// Its timestamp, as stored.
    pub(super) at: String,
    pub(super) lsn: Lsn,
    /// Its timestamp in milliseconds.
    pub(super) ms: i64,
    /// Its track event name, numbered; 0 for other calls.
    pub(super) name: u32,
    /// An identify call.
    pub(super) identify: bool,
    /// Its body carries consent preferences.
    pub(super) consent: bool,
}

impl Event {
    fn of(p: &memory::Posting) -> Event {
        Event {
            at: memory::format_millis(p.at),
            lsn: p.lsn(),
            ms: p.at,
            name: p.name,
            identify: p.has(IDENTIFY),
            consent: p.has(CONSENT),
        }
    }
}

/// A profile resolved from the identity tables: who it is, how its
/// identifiers are joined, and which events are its.
pub(super) struct Resolved {
    pub(super) profile_id: String,
    pub(super) users: Vec<String>,
    pub(super) devices: Vec<String>,
    pub(super) links: Vec<Link>,
    pub(super) aliases: Vec<Alias>,
    pub(super) same_devices: Vec<SameDevice>,
    /// Unsorted.
    pub(super) events: Vec<Event>,
}

/// The profile `id` (a userId or anonymousId) belongs to, resolved with
/// [`crate::identity`]: the user's alias component and the devices linked to
/// it, and the events attributed to them (a shared device's anonymous-only
/// events go to the user logged in around their time).
pub(super) fn resolve(v: &View<'_>, id: &str) -> Result<Option<Resolved>, StoreError> {
    resolve_with(v, id, true)
}

/// [`resolve`], with the profile's events only if `with_events` (the
/// identity walk alone is much cheaper for a profile with a long history).
pub(super) fn resolve_with(
    v: &View<'_>,
    id: &str,
    with_events: bool,
) -> Result<Option<Resolved>, StoreError> {
    resolved(v, walk(v, id)?, with_events)
}

/// The identity walk alone: the person or the device `id` is part of.
pub(super) fn walk(v: &View<'_>, id: &str) -> Result<Identity, StoreError> {
    identity::resolve(&MemoryEdges(v), id, MAX_COMPONENT)
}

/// The profile a [`walk`] found, with its events only if `with_events`.
pub(super) fn resolved(
    v: &View<'_>,
    identity: Identity,
    with_events: bool,
) -> Result<Option<Resolved>, StoreError> {
    let c = match identity {
        Identity::Device(device) => return resolve_device(v, &device, with_events),
        Identity::Person(c) => c,
    };
    let mut events = Vec::new();
    for u in c.users.iter().filter(|_| with_events) {
        events.extend(v.events.user(u).iter().map(Event::of));
    }
    for d in c.devices.iter().filter(|_| with_events) {
        for p in v.events.device(d) {
            if p.has(WITH_USER) {
                continue;
            }
            let e = Event::of(p);
            if c.owns(Some(d), None, &e.at) {
                events.push(e);
            }
        }
    }
    let Component {
        profile_id,
        mut users,
        mut devices,
        mut links,
        aliases,
        same_devices,
        ..
    } = c;
    // Links of other users on shared devices explain attribution but are
    // not this profile's edges.
    links.retain(|l| users.contains(&l.user_id));
    users.sort();
    devices.sort();
    Ok(Some(Resolved {
        profile_id,
        users,
        devices,
        links,
        aliases,
        same_devices,
        events,
    }))
}

/// The memory index's identity graph, as [`identity::resolve`] reads it.
struct MemoryEdges<'v, 'a>(&'v View<'a>);

impl Edges for MemoryEdges<'_, '_> {
    type Error = StoreError;

    fn is_user(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.0.events.is_user(id))
    }

    fn device_links(&self, device: &str) -> Result<Vec<Link>, StoreError> {
        Ok(self.0.events.device_links(device))
    }

    fn aliases_of(&self, user: &str) -> Result<Vec<Alias>, StoreError> {
        Ok(self.0.events.aliases_of(user))
    }

    fn devices_of(&self, user: &str) -> Result<Vec<String>, StoreError> {
        Ok(self.0.events.devices_of(user))
    }

    fn same_devices(&self, device: &str) -> Result<Vec<SameDevice>, StoreError> {
        Ok(self.0.events.same_devices(device))
    }
}

/// A device never linked to a user: a profile of its own, with the events
/// of all its anonymous IDs.
fn resolve_device(
    v: &View<'_>,
    device: &Device,
    with_events: bool,
) -> Result<Option<Resolved>, StoreError> {
    let mut events: Vec<Event> = Vec::new();
    let mut any = false;
    for id in &device.ids {
        let postings = v.events.device(id);
        any |= !postings.is_empty();
        if with_events {
            events.extend(postings.iter().map(Event::of));
        }
    }
    // A device whose events are gone (retention) still answers while its
    // consent records, proof of consent, are kept.
    if !any {
        let mut consent = false;
        for id in &device.ids {
            consent = consent
                || exists(
                    v.conn,
                    "SELECT 1 FROM consent_log WHERE anonymous_id = ?1 LIMIT 1",
                    id,
                )?;
        }
        if !consent {
            return Ok(None);
        }
    }
    Ok(Some(Resolved {
        profile_id: device.profile_id(),
        users: Vec::new(),
        devices: device.ids.clone(),
        links: Vec::new(),
        aliases: Vec::new(),
        same_devices: device.edges.clone(),
        events,
    }))
}

/// The stored body of the event at `lsn`, read from the log; `None` if the
/// log no longer holds it (retention or an erasure got there first).
fn event_body(v: &View<'_>, lsn: Lsn) -> Result<Option<serde_json::Value>, StoreError> {
    let Some(payload) = v.log.read(lsn).map_err(log_error)? else {
        return Ok(None);
    };
    match record::decode_ref(&payload).map_err(|e| StoreError::Corrupt(e.to_string()))? {
        RecordRef::Event { event, .. } => serde_json::from_str(event.body)
            .map(Some)
            .map_err(|e| StoreError::Corrupt(e.to_string())),
        RecordRef::Rejected { .. } => Ok(None),
    }
}

use crate::segments::state::identify_traits;

/// The summary: identifiers, first/last seen, count, traits merged from
/// identify calls (per trait, the latest timestamp wins; within one call,
/// `traits` over `context.traits`) and the latest consent preferences.
pub(super) fn profile(v: &View<'_>, id: &str) -> Result<Option<ProfileSummary>, StoreError> {
    let Some(mut p) = resolve(v, id)? else {
        return Ok(None);
    };
    p.events.sort();
    let mut traits = serde_json::Map::new();
    let mut consent = serde_json::Value::Object(Default::default());
    // Only bodies that can matter are read and parsed: identify calls for
    // traits (chosen by type, so traits only in `context.traits` count
    // too), and (newest first, until one is found) bodies that mention
    // consent preferences.
    for e in p.events.iter().filter(|e| e.identify) {
        if let Some(body) = event_body(v, e.lsn)? {
            traits.extend(identify_traits(&body).map(|(k, v)| (k.clone(), v.clone())));
        }
    }
    for e in p.events.iter().rev().filter(|e| e.consent) {
        if let Some(body) = event_body(v, e.lsn)? {
            let prefs = &body["context"]["consent"]["categoryPreferences"];
            if prefs.is_object() {
                consent = prefs.clone();
                break;
            }
        }
    }
    Ok(Some(ProfileSummary {
        profile_id: p.profile_id,
        first_seen: p.events.first().map(|e| e.at.clone()).unwrap_or_default(),
        last_seen: p.events.last().map(|e| e.at.clone()).unwrap_or_default(),
        event_count: p.events.len() as u64,
        user_ids: p.users,
        anonymous_ids: p.devices,
        traits: serde_json::Value::Object(traits),
        consent,
        segments: Vec::new(),
    }))
}

/// A page of a profile's events, newest first, strictly before `before`.
pub(super) fn profile_events(
    v: &View<'_>,
    id: &str,
    limit: usize,
    before: Option<&EventCursor>,
) -> Result<Option<EventsPage>, StoreError> {
    let Some(mut p) = resolve(v, id)? else {
        return Ok(None);
    };
    p.events.sort_by(|a, b| b.cmp(a));
    let start = match before {
        Some(c) => p
            .events
            .partition_point(|e| (e.at.as_str(), e.lsn as i64) >= (c.timestamp.as_str(), c.seq)),
        None => 0,
    };
    let page: Vec<&Event> = p.events[start..].iter().take(limit).collect();
    let mut events = Vec::with_capacity(page.len());
    for e in &page {
        if let Some(body) = event_body(v, e.lsn)? {
            events.push(body);
        }
    }
    let next = (start + page.len() < p.events.len())
        .then(|| page.last())
        .flatten()
        .map(|e| EventCursor {
            timestamp: e.at.clone(),
            seq: e.lsn as i64,
        });
    Ok(Some(EventsPage {
        profile_id: p.profile_id,
        events,
        next,
    }))
}

pub(super) fn consent_history(
    v: &View<'_>,
    id: &str,
) -> Result<Option<Vec<ConsentEntry>>, StoreError> {
    let Some(p) = resolve(v, id)? else {
        return Ok(None);
    };
    let mut stmt = v.conn.prepare_cached(
        "SELECT seq, at, received_at, anonymous_id, user_id, preferences, policy, policy_version, message_id
         FROM consent_log WHERE user_id = ?1 OR anonymous_id = ?1",
    )?;
    let mut rows: BTreeMap<i64, ConsentEntry> = BTreeMap::new();
    for ident in p.users.iter().chain(&p.devices) {
        for row in stmt.query_map([ident], |r| {
            let prefs: String = r.get(5)?;
            Ok((
                r.get::<_, i64>(0)?,
                ConsentEntry {
                    at: r.get(1)?,
                    received_at: r.get(2)?,
                    anonymous_id: r.get(3)?,
                    user_id: r.get(4)?,
                    preferences: serde_json::from_str(&prefs).unwrap_or_default(),
                    policy: r.get(6)?,
                    policy_version: r.get(7)?,
                    message_id: r.get(8)?,
                },
            ))
        })? {
            let (seq, entry) = row?;
            rows.insert(seq, entry);
        }
    }
    let mut entries: Vec<ConsentEntry> = rows.into_values().collect();
    entries.sort_by(|a, b| (&a.at, &a.received_at).cmp(&(&b.at, &b.received_at)));
    Ok(Some(entries))
}

/// The identifiers of a profile and the edges that joined them.
pub(super) fn profile_graph(v: &View<'_>, id: &str) -> Result<Option<IdentityGraph>, StoreError> {
    let Some(p) = resolve(v, id)? else {
        return Ok(None);
    };
    let mut edges = Vec::new();
    for l in &p.links {
        edges.push(GraphEdge {
            kind: "link",
            from: l.anonymous_id.clone(),
            to: l.user_id.clone(),
            at: l.at.clone(),
            message_id: l.message_id.clone(),
            reason: None,
        });
    }
    for a in &p.aliases {
        edges.push(GraphEdge {
            kind: "alias",
            from: a.previous_id.clone(),
            to: a.user_id.clone(),
            at: a.at.clone(),
            message_id: a.message_id.clone(),
            reason: None,
        });
    }
    for d in &p.same_devices {
        edges.push(GraphEdge {
            kind: "same_device",
            from: d.anonymous_id.clone(),
            to: d.same_as.clone(),
            at: d.at.clone(),
            message_id: d.message_id.clone(),
            reason: Some(identity::SAME_DEVICE_REASON),
        });
    }
    edges.sort_by(|a, b| (&a.at, &a.message_id).cmp(&(&b.at, &b.message_id)));
    Ok(Some(IdentityGraph {
        profile_id: p.profile_id,
        user_ids: p.users,
        anonymous_ids: p.devices,
        edges,
    }))
}

/// The identifiers of `p` an erasure suppresses: its users, and its devices
/// that no one else used.
pub(super) fn identifiers_to_suppress(
    v: &View<'_>,
    p: &Resolved,
) -> Result<Vec<String>, StoreError> {
    let mut identifiers: Vec<String> = p.users.clone();
    for d in &p.devices {
        let others = v
            .events
            .device_links(d)
            .iter()
            .any(|l| !p.users.contains(&l.user_id));
        if !others {
            identifiers.push(d.clone());
        }
    }
    Ok(identifiers)
}

/// A profile's segment state at `now_ms` built from its whole history (its
/// events sorted by time): what an incremental update would have reached.
pub(super) fn build_state(
    view: &View<'_>,
    profile: &Resolved,
    families: &crate::segments::state::Families,
    now_ms: i64,
) -> crate::segments::state::ProfileState {
    use crate::segments::state::{ProfileState, Seen};
    let mut state = ProfileState::new(families);
    for e in &profile.events {
        let track = (e.name != 0)
            .then(|| view.events.event_name_of(e.name))
            .flatten();
        let seen = Seen {
            when: (e.ms, e.lsn),
            track,
            identify: e.identify,
            consent: e.consent,
        };
        state.add(families, &seen, now_ms, &mut || match event_body(view, e.lsn) {
            Ok(body) => body.map(crate::segments::state::Body::Full),
            Err(err) => {
                tracing::warn!(lsn = e.lsn, error = %err, "segments: an event body could not be read");
                None
            }
        });
    }
    state
}
