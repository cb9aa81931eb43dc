//! Whose events are where: for every identifier, the log positions of its
//! events, in memory.
//!
//! Why not rows in the index database: a B-tree keyed by random
//! identifiers turns every indexed event into writes all over the tree,
//! and the indexer spent most of its time there (profiled: random leaf
//! writes and the WAL). Here indexing an event is a hash lookup and a push
//! (16 bytes a posting); the event itself stays in the log, the system of
//! record, and a read fetches it by LSN ([`crate::log::LogLookup`]).
//!
//! The index is derived and kept only in memory: it is rebuilt from the
//! log at every start (what retention left of it), and follows erasure
//! (postings removed with the records) and retention (postings below the
//! log's first record dropped).

use std::collections::HashMap;

use weft_protocol::MessageType;

use crate::log::Lsn;

use super::NewEvent;

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
}

impl Posting {
    fn new(at: i64, lsn: Lsn, flags: u8) -> Posting {
        Posting {
            at,
            lsn_flags: (lsn & LSN_MASK) | (u64::from(flags) << LSN_BITS),
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
}

/// The postings of every identifier. Written by the indexer only.
#[derive(Debug, Default)]
pub struct EventIndex {
    ids: HashMap<Box<str>, u32>,
    entries: Vec<Entry>,
    /// Events indexed and not removed.
    events: u64,
}

impl EventIndex {
    /// Indexes the event at `lsn` under its anonymousId and userId.
    pub fn add(&mut self, lsn: Lsn, e: &NewEvent) {
        let at = timestamp_millis(&e.timestamp);
        let mut flags = 0;
        if e.kind == MessageType::Identify {
            flags |= IDENTIFY;
        }
        if e.body.contains("\"categoryPreferences\"") {
            flags |= CONSENT;
        }
        if let Some(a) = &e.anonymous_id {
            let with_user = if e.user_id.is_some() { WITH_USER } else { 0 };
            let i = self.intern(a);
            self.entries[i as usize]
                .device
                .push(Posting::new(at, lsn, flags | with_user));
        }
        if let Some(u) = &e.user_id {
            let i = self.intern(u);
            self.entries[i as usize]
                .user
                .push(Posting::new(at, lsn, flags));
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
        self.entries.push(Entry::default());
        i
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

    fn event(anonymous: Option<&str>, user: Option<&str>, kind: MessageType) -> NewEvent {
        NewEvent {
            message_id: "m".into(),
            kind,
            event: None,
            anonymous_id: anonymous.map(Into::into),
            user_id: user.map(Into::into),
            previous_id: None,
            junk_ids: 0,
            consent_record: None,
            timestamp: "2026-11-23T09:59:50.000Z".into(),
            received_at: "2026-11-23T09:59:50.000Z".into(),
            ip: None,
            body: r#"{"context":{"consent":{"categoryPreferences":{}}}}"#.into(),
        }
    }

    #[test]
    fn postings_are_kept_per_identifier_with_their_flags_and_removed_by_lsn() {
        let mut index = EventIndex::default();
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

        assert_eq!(index.remove(&["u".into(), "a".into()], &[2]), 1);
        assert_eq!(index.events(), 2);
        assert_eq!(index.device("a").len(), 1);
        assert_eq!(index.retain_log(2, &[3]), 2);
        assert_eq!(index.events(), 0);
        assert!(index.device("a").is_empty() && index.user("u").is_empty());
    }
}
