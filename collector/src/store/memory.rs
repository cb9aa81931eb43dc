//! The index's working set, in memory: every identifier with the log
//! positions of its events (postings) and its identity edges (links of a
//! device to a user, aliases between users).
//!
//! Why not rows in the index database: a B-tree keyed by random
//! identifiers turns every indexed message into writes all over the tree,
//! and the indexer spent most of its time there (profiled: random leaf
//! writes and the WAL, more of them as the tables grew). Here indexing an
//! event is a hash lookup and a push (16 bytes a posting), and an identity
//! walk is a few hash lookups; the event itself stays in the log, the
//! system of record, and a read fetches it by LSN
//! ([`crate::log::LogLookup`]).
//!
//! Postings are rebuilt from the log at every start (what retention left
//! of it). Edges must outlive retention, so the indexer also appends each
//! new one to a table without keys in the index database (sequential
//! writes) and loads them here at start. Erasure removes both.

use crate::hashing::Map;

use weft_protocol::MessageType;

use crate::identity::{Alias, Link, SameDevice};
use crate::log::Lsn;
use crate::record::EventRef;

/// An identify call (its body holds traits).
pub const IDENTIFY: u8 = 1;
/// The body carries consent preferences (`categoryPreferences`).
pub const CONSENT: u8 = 2;
/// Posted under a device, the event has a userId too.
pub const WITH_USER: u8 = 4;

const LSN_BITS: u32 = 56;
const LSN_MASK: u64 = (1 << LSN_BITS) - 1;

/// One event of an identifier: when it happened and where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Posting {
    /// Event time (the corrected `timestamp`), milliseconds since the epoch.
    pub at: i64,
    /// The LSN in the low 56 bits, flags above.
    lsn_flags: u64,
    /// A track event's name, numbered ([`MemoryIndex::event_name`]); 0 for
    /// other calls. What segments' event conditions count.
    pub name: u32,
}

impl Posting {
    fn new(at: i64, lsn: Lsn, flags: u8, name: u32) -> Posting {
        Posting {
            at,
            lsn_flags: (lsn & LSN_MASK) | (u64::from(flags) << LSN_BITS),
            name,
        }
    }

    /// The record's position in the log.
    pub fn lsn(&self) -> Lsn {
        self.lsn_flags & LSN_MASK
    }

    /// Whether the posting has `flag` ([`IDENTIFY`], [`CONSENT`],
    /// [`WITH_USER`]).
    pub fn has(&self, flag: u8) -> bool {
        (self.lsn_flags >> LSN_BITS) as u8 & flag != 0
    }
}

#[derive(Debug, Default)]
struct Entry {
    /// Events whose anonymousId is this identifier.
    device: Vec<Posting>,
    /// Events whose userId is this identifier.
    user: Vec<Posting>,
    /// Links with this identifier as device or user (indexes into
    /// `MemoryIndex::links`).
    links: Vec<u32>,
    /// Aliases with this identifier as previousId or userId.
    aliases: Vec<u32>,
    /// Same-device edges with this identifier on either side.
    same: Vec<u32>,
}

/// A device seen as a user, (for an alias) two user IDs joined, or (for a
/// same-device edge) two anonymous IDs of one browser.
#[derive(Debug)]
struct Edge {
    /// The device, the alias's previousId, or the later anonymous ID.
    from: u32,
    /// The user, or the anonymous ID the server cookie carried.
    to: u32,
    /// Event time, milliseconds since the epoch.
    at: i64,
    message_id: Box<str>,
    /// Erased.
    gone: bool,
}

/// A new identity edge, as the indexer decides it: what it appends to the
/// database and then adds here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEdge {
    /// The device (a link), the previousId (an alias) or the message's
    /// anonymous ID (a same-device edge).
    pub from: String,
    /// The user, or the anonymous ID the server cookie carried.
    pub to: String,
    /// The message's timestamp, as stored.
    pub at: String,
    /// The message that made it.
    pub message_id: String,
}

/// What one identifier is, and the edges it has.
#[derive(Debug, Default)]
pub struct MemoryIndex {
    ids: Map<Box<str>, u32>,
    names: Vec<Box<str>>,
    /// Track event names, numbered from 1.
    event_names: Map<Box<str>, u32>,
    /// The names by number (index = number - 1).
    event_names_by_number: Vec<Box<str>>,
    entries: Vec<Entry>,
    links: Vec<Edge>,
    aliases: Vec<Edge>,
    same: Vec<Edge>,
    /// Events indexed and not removed.
    events: u64,
}

impl MemoryIndex {
    /// Indexes the event at `lsn` under its anonymousId and userId.
    pub fn add(&mut self, lsn: Lsn, e: &EventRef<'_>) {
        self.add_at(
            lsn,
            e,
            timestamp_millis(e.timestamp),
            mentions_consent(e.body),
        );
    }

    /// [`MemoryIndex::add`] given the event's time in ms and whether its
    /// body [`mentions_consent`] (the indexer reads both once per event,
    /// for this and for segments).
    pub fn add_at(&mut self, lsn: Lsn, e: &EventRef<'_>, at: i64, consent: bool) {
        let mut flags = 0;
        if e.kind == MessageType::Identify {
            flags |= IDENTIFY;
        }
        if consent {
            flags |= CONSENT;
        }
        let name = match (e.kind, e.event) {
            (MessageType::Track, Some(n)) => self.intern_event_name(n),
            _ => 0,
        };
        if let Some(a) = e.anonymous_id {
            let with_user = if e.user_id.is_some() { WITH_USER } else { 0 };
            let i = self.intern(a);
            self.entries[i as usize]
                .device
                .push(Posting::new(at, lsn, flags | with_user, name));
        }
        if let Some(u) = e.user_id {
            let i = self.intern(u);
            self.entries[i as usize]
                .user
                .push(Posting::new(at, lsn, flags, name));
        }
        if e.anonymous_id.is_some() || e.user_id.is_some() {
            self.events += 1;
        }
    }

    /// The number of `id`, giving it one if it has none.
    pub fn intern(&mut self, id: &str) -> u32 {
        if let Some(&i) = self.ids.get(id) {
            return i;
        }
        let i = u32::try_from(self.entries.len()).unwrap_or(u32::MAX);
        self.ids.insert(id.into(), i);
        self.names.push(id.into());
        self.entries.push(Entry::default());
        i
    }

    fn intern_event_name(&mut self, name: &str) -> u32 {
        if let Some(&i) = self.event_names.get(name) {
            return i;
        }
        let i = self.event_names.len() as u32 + 1;
        self.event_names.insert(name.into(), i);
        self.event_names_by_number.push(name.into());
        i
    }

    /// The track event name numbered `i`.
    pub fn event_name_of(&self, i: u32) -> Option<&str> {
        let at = usize::try_from(i.checked_sub(1)?).ok()?;
        self.event_names_by_number.get(at).map(|n| &**n)
    }

    /// The number of a track event name, if any event had it.
    pub fn event_name(&self, name: &str) -> Option<u32> {
        self.event_names.get(name).copied()
    }

    /// Every identifier with its number, for a pass over all profiles.
    pub fn identifier(&self, i: u32) -> Option<&str> {
        self.names.get(i as usize).map(|n| &**n)
    }

    /// The number of identifier `id`, if it has one.
    pub fn number(&self, id: &str) -> Option<u32> {
        self.ids.get(id).copied()
    }

    /// How many identifiers are numbered.
    pub fn identifiers(&self) -> u32 {
        self.names.len() as u32
    }

    fn name(&self, i: u32) -> &str {
        &self.names[i as usize]
    }

    /// Whether a link of `device` to `user` exists: at time `at`, or (with
    /// `None`) at all.
    pub fn has_link(&self, device: &str, user: &str, at: Option<&str>) -> bool {
        let (Some(&d), Some(&u)) = (self.ids.get(device), self.ids.get(user)) else {
            return false;
        };
        let at = at.map(timestamp_millis);
        self.entries[d as usize].links.iter().any(|&l| {
            let l = &self.links[l as usize];
            !l.gone && l.from == d && l.to == u && at.is_none_or(|t| t == l.at)
        })
    }

    /// Whether an alias joins `previous` to `user`.
    pub fn has_alias(&self, previous: &str, user: &str) -> bool {
        let (Some(&p), Some(&u)) = (self.ids.get(previous), self.ids.get(user)) else {
            return false;
        };
        self.entries[p as usize].aliases.iter().any(|&a| {
            let a = &self.aliases[a as usize];
            !a.gone && a.from == p && a.to == u
        })
    }

    /// Adds a link of a device (`edge.from`) to a user (`edge.to`).
    pub fn add_link(&mut self, edge: &NewEdge) {
        let e = self.edge(edge);
        let i = self.links.len() as u32;
        self.entries[e.from as usize].links.push(i);
        if e.to != e.from {
            self.entries[e.to as usize].links.push(i);
        }
        self.links.push(e);
    }

    /// Adds an alias joining `edge.from` (previousId) to `edge.to`.
    pub fn add_alias(&mut self, edge: &NewEdge) {
        let e = self.edge(edge);
        let i = self.aliases.len() as u32;
        self.entries[e.from as usize].aliases.push(i);
        if e.to != e.from {
            self.entries[e.to as usize].aliases.push(i);
        }
        self.aliases.push(e);
    }

    /// Whether a same-device edge joins `a` and `b` (either way round).
    pub fn has_same_device(&self, a: &str, b: &str) -> bool {
        let (Some(&a), Some(&b)) = (self.ids.get(a), self.ids.get(b)) else {
            return false;
        };
        self.entries[a as usize].same.iter().any(|&s| {
            let s = &self.same[s as usize];
            !s.gone && ((s.from == a && s.to == b) || (s.from == b && s.to == a))
        })
    }

    /// Adds a same-device edge: `edge.from` (a message's anonymous ID) is
    /// the browser `edge.to` (the server cookie's) named.
    pub fn add_same_device(&mut self, edge: &NewEdge) {
        let e = self.edge(edge);
        let i = self.same.len() as u32;
        self.entries[e.from as usize].same.push(i);
        if e.to != e.from {
            self.entries[e.to as usize].same.push(i);
        }
        self.same.push(e);
    }

    /// The same-device edges with `device` on either side.
    pub fn same_devices(&self, device: &str) -> Vec<SameDevice> {
        let Some(&d) = self.ids.get(device) else {
            return Vec::new();
        };
        self.entries[d as usize]
            .same
            .iter()
            .map(|&s| &self.same[s as usize])
            .filter(|s| !s.gone)
            .map(|s| SameDevice {
                at: format_millis(s.at),
                anonymous_id: self.name(s.from).to_owned(),
                same_as: self.name(s.to).to_owned(),
                message_id: s.message_id.to_string(),
            })
            .collect()
    }

    fn edge(&mut self, edge: &NewEdge) -> Edge {
        Edge {
            from: self.intern(&edge.from),
            to: self.intern(&edge.to),
            at: timestamp_millis(&edge.at),
            message_id: edge.message_id.as_str().into(),
            gone: false,
        }
    }

    fn link(&self, e: &Edge) -> Link {
        Link {
            at: format_millis(e.at),
            anonymous_id: self.name(e.from).to_owned(),
            user_id: self.name(e.to).to_owned(),
            message_id: e.message_id.to_string(),
        }
    }

    /// Every link of a device: the users seen on it, and aliases that named
    /// it as their previousId (as links).
    pub fn device_links(&self, device: &str) -> Vec<Link> {
        let Some(&d) = self.ids.get(device) else {
            return Vec::new();
        };
        let entry = &self.entries[d as usize];
        let links = entry.links.iter().map(|&l| &self.links[l as usize]);
        let aliases = entry.aliases.iter().map(|&a| &self.aliases[a as usize]);
        links
            .chain(aliases)
            .filter(|e| !e.gone && e.from == d)
            .map(|e| self.link(e))
            .collect()
    }

    /// The aliases with `user` as previousId or userId.
    pub fn aliases_of(&self, user: &str) -> Vec<Alias> {
        let Some(&u) = self.ids.get(user) else {
            return Vec::new();
        };
        self.entries[u as usize]
            .aliases
            .iter()
            .map(|&a| &self.aliases[a as usize])
            .filter(|a| !a.gone)
            .map(|a| Alias {
                at: format_millis(a.at),
                previous_id: self.name(a.from).to_owned(),
                user_id: self.name(a.to).to_owned(),
                message_id: a.message_id.to_string(),
            })
            .collect()
    }

    /// The devices linked to `user`, each once.
    pub fn devices_of(&self, user: &str) -> Vec<String> {
        let Some(&u) = self.ids.get(user) else {
            return Vec::new();
        };
        let mut devices: Vec<u32> = self.entries[u as usize]
            .links
            .iter()
            .map(|&l| &self.links[l as usize])
            .filter(|l| !l.gone && l.to == u)
            .map(|l| l.from)
            .collect();
        devices.sort_unstable();
        devices.dedup();
        devices.iter().map(|&d| self.name(d).to_owned()).collect()
    }

    /// Whether `id` is a user ID: seen as a userId (of an event, a link or
    /// an alias), or as an alias's previousId while never seen as a device.
    pub fn is_user(&self, id: &str) -> bool {
        let Some(&i) = self.ids.get(id) else {
            return false;
        };
        let entry = &self.entries[i as usize];
        let links = || entry.links.iter().map(|&l| &self.links[l as usize]);
        let aliases = || entry.aliases.iter().map(|&a| &self.aliases[a as usize]);
        let seen_as_user = !entry.user.is_empty()
            || links().any(|l| !l.gone && l.to == i)
            || aliases().any(|a| !a.gone && a.to == i);
        if seen_as_user {
            return true;
        }
        let seen_as_device = !entry.device.is_empty()
            || links().any(|l| !l.gone && l.from == i)
            || entry.same.iter().any(|&s| !self.same[s as usize].gone);
        !seen_as_device && aliases().any(|a| !a.gone && a.from == i)
    }

    /// The profile of an identifier no edge touches, without a walk:
    /// `anon:<id>` for one seen only as an anonymousId, `user:<id>` for one
    /// seen only as a userId; `None` when it has edges (or was seen as
    /// both, or never), which [`crate::identity::resolve`] settles.
    pub fn lone_profile(&self, id: &str) -> Option<String> {
        let entry = self.entry(id)?;
        if !(entry.links.is_empty() && entry.aliases.is_empty() && entry.same.is_empty()) {
            return None;
        }
        match (entry.device.is_empty(), entry.user.is_empty()) {
            (false, true) => Some(crate::identity::device_profile_id(id)),
            (true, false) => Some(crate::identity::user_profile_id(id)),
            _ => None,
        }
    }

    /// Erasure of identity edges: removes the links with one of `users` as
    /// user or one of `devices` as device, and the aliases and same-device
    /// edges naming any of them. Answers how many edges went.
    pub fn remove_edges(&mut self, users: &[String], devices: &[String]) -> usize {
        let users: Vec<u32> = users
            .iter()
            .filter_map(|u| self.ids.get(u.as_str()).copied())
            .collect();
        let devices: Vec<u32> = devices
            .iter()
            .filter_map(|d| self.ids.get(d.as_str()).copied())
            .collect();
        let mut removed = 0;
        for &i in users.iter().chain(&devices) {
            for l in std::mem::take(&mut self.entries[i as usize].links) {
                let link = &mut self.links[l as usize];
                if !link.gone && (users.contains(&link.to) || devices.contains(&link.from)) {
                    link.gone = true;
                    removed += 1;
                }
            }
            for a in std::mem::take(&mut self.entries[i as usize].aliases) {
                let alias = &mut self.aliases[a as usize];
                if !alias.gone {
                    alias.gone = true;
                    removed += 1;
                }
            }
            for s in std::mem::take(&mut self.entries[i as usize].same) {
                let same = &mut self.same[s as usize];
                if !same.gone {
                    same.gone = true;
                    removed += 1;
                }
            }
        }
        removed
    }

    fn entry(&self, id: &str) -> Option<&Entry> {
        self.ids.get(id).map(|&i| &self.entries[i as usize])
    }

    /// The events whose anonymousId is `id`, in log order.
    pub fn device(&self, id: &str) -> &[Posting] {
        self.entry(id).map_or(&[], |e| &e.device)
    }

    /// The events whose userId is `id`, in log order.
    pub fn user(&self, id: &str) -> &[Posting] {
        self.entry(id).map_or(&[], |e| &e.user)
    }

    /// How many events are indexed.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Removes, under each of `ids`, the postings of records in `lsns`
    /// (sorted); answers how many events left the index.
    pub fn remove(&mut self, ids: &[String], lsns: &[Lsn]) -> u64 {
        let mut removed = std::collections::HashSet::new();
        for id in ids {
            let Some(&i) = self.ids.get(id.as_str()) else {
                continue;
            };
            let entry = &mut self.entries[i as usize];
            for list in [&mut entry.device, &mut entry.user] {
                list.retain(|p| {
                    let gone = lsns.binary_search(&p.lsn()).is_ok();
                    if gone {
                        removed.insert(p.lsn());
                    }
                    !gone
                });
            }
        }
        let n = removed.len() as u64;
        self.events = self.events.saturating_sub(n);
        n
    }

    /// Removes the postings of records in `lsns` (sorted) and of every
    /// record below `below` (the log's first record after retention), under
    /// every identifier; answers how many events left the index.
    pub fn retain_log(&mut self, below: Lsn, lsns: &[Lsn]) -> u64 {
        let mut removed = std::collections::HashSet::new();
        for entry in &mut self.entries {
            for list in [&mut entry.device, &mut entry.user] {
                list.retain(|p| {
                    let gone = p.lsn() < below || lsns.binary_search(&p.lsn()).is_ok();
                    if gone {
                        removed.insert(p.lsn());
                    }
                    !gone
                });
            }
        }
        let n = removed.len() as u64;
        self.events = self.events.saturating_sub(n);
        n
    }
}

/// Whether a stored body carries consent preferences (a consent record,
/// or any message with a consent context).
pub fn mentions_consent(body: &str) -> bool {
    body.contains("\"categoryPreferences\"")
}

/// Milliseconds since the epoch of an RFC 3339 time: the collector's own
/// `YYYY-MM-DDTHH:MM:SS.mmmZ` quickly, anything else through the full
/// parser; 0 if it is none.
pub fn timestamp_millis(text: &str) -> i64 {
    canonical_millis(text)
        .or_else(|| {
            crate::clock::parse_rfc3339(text).map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        })
        .unwrap_or(0)
}

/// [`crate::clock::format_utc_millis`] of a time in milliseconds: the text
/// the collector stored.
pub fn format_millis(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map(crate::clock::format_utc_millis)
        .unwrap_or_default()
}

fn canonical_millis(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() != 24
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'.'
        || b[23] != b'Z'
    {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<i64> {
        b[from..to].iter().try_fold(0i64, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0'))
        })
    };
    let (y, m, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hh, mm, ss, ms) = (num(11, 13)?, num(14, 16)?, num(17, 19)?, num(20, 23)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from the civil date (proleptic Gregorian), Howard Hinnant's
    // well-known algorithm.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + hh) * 60 + mm) * 60_000 + ss * 1000 + ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_collectors_timestamps_round_trip_through_millis() {
        for text in [
            "1970-01-01T00:00:00.000Z",
            "2026-11-23T09:59:50.000Z",
            "2024-02-29T23:59:59.999Z",
            "2000-03-01T00:00:00.001Z",
            "1969-12-31T23:59:59.999Z",
            "2099-12-31T12:34:56.789Z",
        ] {
            let ms = timestamp_millis(text);
            assert_eq!(format_millis(ms), text);
            let full = crate::clock::parse_rfc3339(text).unwrap();
            assert_eq!(i128::from(ms), full.unix_timestamp_nanos() / 1_000_000);
        }
        // Other RFC 3339 spellings go through the full parser.
        assert_eq!(
            timestamp_millis("2026-11-23T10:59:50+01:00"),
            timestamp_millis("2026-11-23T09:59:50.000Z")
        );
        assert_eq!(timestamp_millis("soon"), 0);
    }

    fn event<'a>(
        anonymous: Option<&'a str>,
        user: Option<&'a str>,
        kind: MessageType,
    ) -> EventRef<'a> {
        EventRef {
            properties: None,
            same_device: None,
            message_id: "m",
            kind,
            event: None,
            anonymous_id: anonymous,
            user_id: user,
            previous_id: None,
            junk_ids: 0,
            consent_record: None,
            timestamp: "2026-11-23T09:59:50.000Z",
            received_at: "2026-11-23T09:59:50.000Z",
            ip: None,
            body: r#"{"context":{"consent":{"categoryPreferences":{}}}}"#,
        }
    }

    #[test]
    fn postings_are_kept_per_identifier_with_their_flags_and_removed_by_lsn() {
        let mut index = MemoryIndex::default();
        index.add(1, &event(Some("a"), None, MessageType::Page));
        index.add(2, &event(Some("a"), Some("u"), MessageType::Identify));
        index.add(3, &event(None, Some("u"), MessageType::Track));
        assert_eq!(index.events(), 3);
        let device: Vec<Lsn> = index.device("a").iter().map(Posting::lsn).collect();
        assert_eq!(device, [1, 2]);
        assert!(!index.device("a")[0].has(WITH_USER));
        assert!(index.device("a")[1].has(WITH_USER) && index.device("a")[1].has(IDENTIFY));
        assert!(index.user("u").iter().all(|p| p.has(CONSENT)));
        assert_eq!(index.user("a"), &[]);
        assert_eq!(index.device("nobody"), &[]);

        // "a" and "u" were seen together (no edge here, but both kinds of
        // posting on neither): a lone profile only for a one-sided ID.
        index.add(4, &event(Some("solo"), None, MessageType::Page));
        index.add(5, &event(None, Some("ann"), MessageType::Track));
        assert_eq!(index.lone_profile("solo").as_deref(), Some("anon:solo"));
        assert_eq!(index.lone_profile("ann").as_deref(), Some("user:ann"));
        assert_eq!(index.lone_profile("nobody"), None);
        index.add_link(&NewEdge {
            from: "solo".into(),
            to: "ann".into(),
            at: "2026-11-23T10:00:00.000Z".into(),
            message_id: "m".into(),
        });
        assert_eq!(index.lone_profile("solo"), None, "an edge: walk");
        assert_eq!(index.lone_profile("ann"), None);
        assert_eq!(index.remove(&["solo".into(), "ann".into()], &[4, 5]), 2);

        assert_eq!(index.remove(&["u".into(), "a".into()], &[2]), 1);
        assert_eq!(index.events(), 2);
        assert_eq!(index.device("a").len(), 1);
        assert_eq!(index.retain_log(2, &[3]), 2);
        assert_eq!(index.events(), 0);
        assert!(index.device("a").is_empty() && index.user("u").is_empty());
    }
}

#[cfg(test)]
mod edge_tests {
    use super::*;

    fn edge(from: &str, to: &str, at: &str, m: &str) -> NewEdge {
        NewEdge {
            from: from.into(),
            to: to.into(),
            at: format!("2026-01-0{at}T00:00:00.000Z"),
            message_id: m.into(),
        }
    }

    #[test]
    fn the_graph_answers_the_identity_walks_questions_and_forgets_erased_edges() {
        let mut g = MemoryIndex::default();
        g.add_link(&edge("d1", "u1", "1", "m1"));
        g.add_link(&edge("d1", "u1", "3", "m3"));
        g.add_link(&edge("d1", "u2", "2", "m2"));
        g.add_link(&edge("d2", "u1", "4", "m4"));
        g.add_alias(&edge("u0", "u1", "5", "m5"));
        assert!(g.has_link("d1", "u1", None));
        assert!(g.has_link("d1", "u1", Some("2026-01-03T00:00:00.000Z")));
        assert!(!g.has_link("d1", "u1", Some("2026-01-02T00:00:00.000Z")));
        assert!(!g.has_link("u1", "d1", None));
        assert!(g.has_alias("u0", "u1") && !g.has_alias("u1", "u0"));
        assert_eq!(g.devices_of("u1"), ["d1", "d2"]);
        assert_eq!(g.device_links("d1").len(), 3);
        assert_eq!(g.device_links("u0").len(), 1, "an alias naming it");
        assert_eq!(g.aliases_of("u1").len(), 1);
        assert_eq!(g.aliases_of("u0")[0].user_id, "u1");
        assert!(g.is_user("u1") && g.is_user("u0"));
        assert!(!g.is_user("d1") && !g.is_user("nobody"));

        // Erase u1 with its own device d2; d1 is shared with u2 and stays.
        let removed = g.remove_edges(&["u1".into()], &["d2".into()]);
        assert_eq!(removed, 4, "three links of u1 and the alias");
        assert_eq!(g.devices_of("u1"), Vec::<String>::new());
        assert_eq!(g.device_links("d1").len(), 1);
        assert_eq!(g.device_links("d1")[0].user_id, "u2");
        assert!(g.aliases_of("u0").is_empty());
        assert!(!g.has_link("d1", "u1", None));
    }

    #[test]
    fn same_device_edges_are_found_from_either_end_and_erased() {
        let mut g = MemoryIndex::default();
        g.add_same_device(&edge("d2", "d1", "1", "m1"));
        assert!(g.has_same_device("d2", "d1") && g.has_same_device("d1", "d2"));
        assert!(!g.has_same_device("d1", "d3"));
        for d in ["d1", "d2"] {
            let found = g.same_devices(d);
            assert_eq!(found.len(), 1, "{d}");
            assert_eq!(
                (found[0].anonymous_id.as_str(), found[0].same_as.as_str()),
                ("d2", "d1")
            );
            assert_eq!(found[0].message_id, "m1");
            assert!(!g.is_user(d), "an anonymous ID of a device is no user");
        }
        assert_eq!(g.remove_edges(&[], &["d1".into()]), 1);
        assert!(g.same_devices("d2").is_empty() && !g.has_same_device("d2", "d1"));
    }
}
