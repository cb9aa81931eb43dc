//! Reading profiles from the index: resolving an identifier to its
//! profile (the identity walk over the memory index), and what the admin
//! API answers about it (summary, events, graph, consent history), reading
//! event bodies from the log by LSN. Also the facts a segment rule asks of
//! a profile (`ProfileFacts`).

use std::collections::BTreeMap;

use rusqlite::Connection;

use crate::identity::{self, Alias, Component, Edges, Identity, Link, device_profile_id};
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
    /// Unsorted.
    pub(super) events: Vec<Event>,
}

/// The profile `id` (a userId or anonymousId) belongs to, resolved with
/// [`crate::identity`]: the user's alias component and the devices linked to
/// it, and the events attributed to them (a shared device's anonymous-only
/// events go to the user logged in around their time).
pub(super) fn resolve(v: &View<'_>, id: &str) -> Result<Option<Resolved>, StoreError> {
    let c = match identity::resolve(&MemoryEdges(v), id, MAX_COMPONENT)? {
        Identity::Device(device) => return resolve_device(v, &device),
        Identity::Person(c) => c,
    };
    let mut events = Vec::new();
    for u in &c.users {
        events.extend(v.events.user(u).iter().map(Event::of));
    }
    for d in &c.devices {
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
}

/// A device never linked to a user: a profile of its own.
fn resolve_device(v: &View<'_>, device: &str) -> Result<Option<Resolved>, StoreError> {
    let events: Vec<Event> = v.events.device(device).iter().map(Event::of).collect();
    // A device whose events are gone (retention) still answers while its
    // consent records, proof of consent, are kept.
    if events.is_empty()
        && !exists(
            v.conn,
            "SELECT 1 FROM consent_log WHERE anonymous_id = ?1 LIMIT 1",
            device,
        )?
    {
        return Ok(None);
    }
    Ok(Some(Resolved {
        profile_id: device_profile_id(device),
        users: Vec::new(),
        devices: vec![device.to_owned()],
        links: Vec::new(),
        aliases: Vec::new(),
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

/// An identify's traits: those in `context.traits` (where RudderStack's
/// SDKs put them) overlaid by the top-level `traits` (Segment's place), so
/// a key given in both takes the top-level value.
fn identify_traits(mut body: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    let mut take = |at: &str| match body.pointer_mut(at).map(serde_json::Value::take) {
        Some(serde_json::Value::Object(t)) => t,
        _ => serde_json::Map::new(),
    };
    let mut traits = take("/context/traits");
    traits.extend(take("/traits"));
    traits
}

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
            traits.extend(identify_traits(body));
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
        });
    }
    for a in &p.aliases {
        edges.push(GraphEdge {
            kind: "alias",
            from: a.previous_id.clone(),
            to: a.user_id.clone(),
            at: a.at.clone(),
            message_id: a.message_id.clone(),
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

/// What a segment rule asks of a resolved profile at `now`: read from the
/// memory index, and from the log only when a condition needs a body
/// (identify calls for traits, the newest consent, events with property
/// filters). Each is read once per evaluation.
pub(super) struct ProfileFacts<'v, 'a> {
    view: &'v View<'a>,
    profile: &'v Resolved,
    now_ms: i64,
    traits: Option<serde_json::Map<String, serde_json::Value>>,
    consent: Option<serde_json::Value>,
}

impl<'v, 'a> ProfileFacts<'v, 'a> {
    /// Facts of `profile` (its events sorted by time) at `now_ms`.
    pub(super) fn new(view: &'v View<'a>, profile: &'v Resolved, now_ms: i64) -> Self {
        ProfileFacts {
            view,
            profile,
            now_ms,
            traits: None,
            consent: None,
        }
    }

    fn body(&self, lsn: Lsn) -> Option<serde_json::Value> {
        match event_body(self.view, lsn) {
            Ok(body) => body,
            Err(e) => {
                tracing::warn!(lsn, error = %e, "segments: an event body could not be read");
                None
            }
        }
    }

    /// When, at the earliest, a `within` window of `rule` lets one of this
    /// profile's events go (so its membership may change without a new
    /// event), in milliseconds.
    pub(super) fn next_change(&self, rule: &crate::segments::Rule) -> Option<i64> {
        let mut next: Option<i64> = None;
        let mut consider = |e: &crate::segments::rule::EventCondition| {
            let (Some(w), Some(id)) = (e.within_ms, self.view.events.event_name(&e.name)) else {
                return;
            };
            let from = self.now_ms - w;
            if let Some(oldest) = self
                .profile
                .events
                .iter()
                .filter(|ev| ev.name == id && ev.ms > from)
                .map(|ev| ev.ms)
                .min()
            {
                let due = oldest + w;
                next = Some(next.map_or(due, |n| n.min(due)));
            }
        };
        visit_events(rule, &mut consider);
        next
    }
}

fn visit_events(
    rule: &crate::segments::Rule,
    f: &mut impl FnMut(&crate::segments::rule::EventCondition),
) {
    use crate::segments::Rule;
    match rule {
        Rule::All(rs) | Rule::Any(rs) => rs.iter().for_each(|r| visit_events(r, f)),
        Rule::Not(r) => visit_events(r, f),
        Rule::Event(e) => f(e),
        _ => {}
    }
}

impl crate::segments::Facts for ProfileFacts<'_, '_> {
    fn trait_value(&mut self, name: &str) -> Option<serde_json::Value> {
        if self.traits.is_none() {
            let mut traits = serde_json::Map::new();
            for e in self.profile.events.iter().filter(|e| e.identify) {
                if let Some(body) = self.body(e.lsn) {
                    traits.extend(identify_traits(body));
                }
            }
            self.traits = Some(traits);
        }
        self.traits.as_ref().and_then(|t| t.get(name)).cloned()
    }

    fn consent_grants(&mut self, category: &str) -> bool {
        if category == "necessary" {
            return true;
        }
        if self.consent.is_none() {
            let mut prefs = serde_json::Value::Null;
            for e in self.profile.events.iter().rev().filter(|e| e.consent) {
                if let Some(body) = self.body(e.lsn) {
                    let p = &body["context"]["consent"]["categoryPreferences"];
                    if p.is_object() {
                        prefs = p.clone();
                        break;
                    }
                }
            }
            self.consent = Some(prefs);
        }
        self.consent
            .as_ref()
            .is_some_and(|p| p[category] == serde_json::Value::Bool(true))
    }

    fn count_events(&mut self, c: &crate::segments::rule::EventCondition) -> u64 {
        let Some(id) = self.view.events.event_name(&c.name) else {
            return 0;
        };
        let from = c.within_ms.map(|w| self.now_ms - w);
        let mut n = 0;
        for e in &self.profile.events {
            if e.name != id || from.is_some_and(|f| e.ms <= f) {
                continue;
            }
            if !c.filters.is_empty() {
                let Some(body) = self.body(e.lsn) else {
                    continue;
                };
                let props = &body["properties"];
                if !c.filters.iter().all(|f| f.holds(props.get(&f.name))) {
                    continue;
                }
            }
            n += 1;
        }
        n
    }

    fn member_of(&mut self, _: &str) -> bool {
        // Answered from the memberships by `Segments::evaluate`.
        false
    }
}
