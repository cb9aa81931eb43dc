//! The index: derived state in SQLite (WAL mode) beside the event log.
//!
//! The event log is the system of record; this database is what the admin
//! API reads: events by profile, the identity graph (links and aliases),
//! the consent audit log, rejected messages, suppressed identifiers. It is
//! written by one thread, the indexer ([`super::embedded`]), which applies
//! log records in large transactions and stores the log position it has
//! reached in the same transaction, so every record is applied exactly
//! once. Because the log replays from that position after a crash, the
//! index commits with `synchronous=NORMAL`. Delete the file and it is
//! rebuilt from the log. Reads use separate connections; WAL lets them run
//! beside the writer.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};
use weft_protocol::MessageType;

use crate::consumer::Consumer;
use crate::identity::{self, Alias, Component, Edges, Identity, Link, device_profile_id};
use crate::log::Lsn;
use crate::record::Record;

use super::suppression::{IdHash, Suppression};
use super::{
    ConsentEntry, ErasureReport, EventCursor, EventsPage, GraphEdge, IdentityGraph, ProfileSummary,
    StoreError,
};

/// The index file inside the data directory.
pub const DB_FILE: &str = "weft.sqlite";
/// SQLite page size for a new database, in bytes.
const PAGE_SIZE: i64 = 16384;
/// Read connections for the admin API.
const READERS: usize = 4;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    seq          INTEGER PRIMARY KEY,
    source       TEXT NOT NULL,
    message_id   TEXT NOT NULL,
    type         TEXT NOT NULL,
    event        TEXT,
    anonymous_id TEXT,
    user_id      TEXT,
    timestamp    TEXT NOT NULL,
    received_at  TEXT NOT NULL,
    ip           TEXT,
    body         TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_anonymous_id ON events (anonymous_id)
    WHERE anonymous_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_by_user_id ON events (user_id) WHERE user_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS rejected (
    seq         INTEGER PRIMARY KEY,
    source      TEXT NOT NULL,
    received_at TEXT NOT NULL,
    code        TEXT NOT NULL,
    reason      TEXT NOT NULL,
    raw         TEXT NOT NULL
);
-- Identity: a device seen as a user. Every identify is a row; other
-- messages carrying both IDs add a row only for a pair not seen before.
CREATE TABLE IF NOT EXISTS links (
    anonymous_id TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    at           TEXT NOT NULL,
    message_id   TEXT NOT NULL,
    source       TEXT NOT NULL,
    PRIMARY KEY (anonymous_id, user_id, at)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS links_by_user ON links (user_id);
-- Identity: two user IDs joined by alias(previousId, userId).
CREATE TABLE IF NOT EXISTS aliases (
    previous_id TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    at          TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    source      TEXT NOT NULL,
    PRIMARY KEY (previous_id, user_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS aliases_by_user ON aliases (user_id);
-- The consent audit log: append-only, untouched by retention; rows go only
-- with an explicit erasure of the person.
CREATE TABLE IF NOT EXISTS consent_log (
    seq            INTEGER PRIMARY KEY,
    source         TEXT NOT NULL,
    anonymous_id   TEXT,
    user_id        TEXT,
    at             TEXT NOT NULL,
    received_at    TEXT NOT NULL,
    preferences    TEXT NOT NULL,
    policy         TEXT,
    policy_version TEXT,
    message_id     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS consent_by_anonymous_id ON consent_log (anonymous_id);
CREATE INDEX IF NOT EXISTS consent_by_user_id ON consent_log (user_id);
-- Erased identifiers, as salted SHA-256 hashes only.
CREATE TABLE IF NOT EXISTS suppressed (
    hash BLOB PRIMARY KEY,
    at   TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;
PRAGMA user_version = 1;
";

/// The index's position in the event log: every record below it is
/// applied. Kept in `meta`, written in the transaction that applies them.
const POSITION_KEY: &str = "log_position";

/// What an erasure removed from the index.
pub struct Erasure {
    /// The counts, for the admin API.
    pub report: ErasureReport,
    /// (source, messageId) of every event deleted, so the log can drop
    /// them too.
    pub event_keys: Vec<(String, String)>,
}

/// The writing half of the index: one connection, used by the indexer
/// thread only, that applies log records in large transactions and runs
/// erasures and retention between them.
pub struct IndexWriter {
    conn: Connection,
    suppression: Suppression,
}

/// The reading half: connections for the admin API.
pub struct IndexReaders {
    readers: Vec<Mutex<Connection>>,
}

fn open(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    // Every dirty page is written to the WAL at commit. The indexer commits
    // batches of thousands of rows, so bigger pages mean fewer pages
    // (shallower B-trees, fewer frames) per batch: 16 KB measured 45k ->
    // 71k messages/s on `bench identity` and +5-20% on `bench collector`
    // against 4 KB (64 KB: no better). Takes effect only at creation.
    conn.pragma_update(None, "page_size", PAGE_SIZE)?;
    // Deleted content is overwritten with zeros, so an erased identifier
    // does not linger in free space.
    conn.pragma_update(None, "secure_delete", "ON")?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a commit returns only after the WAL is synced.
    conn.pragma_update(None, "synchronous", "FULL")?;
    // Index pages stay in memory: inserts with random messageIds touch
    // pages all over the dedup index (16 MB of cache per connection; 64 MB
    // measured no faster).
    conn.pragma_update(None, "cache_size", -16384)?;
    // Checkpoint less often: each checkpoint copies the WAL into the
    // database and syncs it, inside a commit (64 MB of WAL between them).
    conn.pragma_update(None, "wal_autocheckpoint", 16384)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

/// Opens (creating if needed) the index at `path`: its writer and readers.
/// `salt` and `suppressed` come from the suppression file, which lives
/// beside the log, not in this derived store.
pub fn open_index(
    path: &Path,
    salt: Vec<u8>,
    suppressed: &[IdHash],
) -> Result<(IndexWriter, IndexReaders), StoreError> {
    let conn = open(path)?;
    // The index is derived: after a crash it replays the log from its
    // position, so its commits need not wait for the disk.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // Fewer checkpoints: each copies every page the WAL touched since the
    // last one, and the index's hot pages are touched by every batch.
    conn.pragma_update(None, "wal_autocheckpoint", 65536)?;
    // The indexer touches index pages all over (random identifiers): a
    // larger page cache (128 MB) saves a read syscall per page miss
    // (profiled: a third of its time with 16 MB).
    conn.pragma_update(None, "cache_size", -131_072)?;
    conn.execute_batch(SCHEMA)?;
    let suppression = load_suppression(&conn, salt)?;
    suppression.extend(suppressed.iter().copied());
    let readers = (0..READERS)
        .map(|_| open(path).map(Mutex::new))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((IndexWriter { conn, suppression }, IndexReaders { readers }))
}

impl Consumer for IndexWriter {
    fn position(&mut self) -> Result<Lsn, StoreError> {
        let v: Option<i64> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = ?1",
                [POSITION_KEY],
                |r| r.get(0),
            )
            .optional()?;
        Ok(v.unwrap_or(0).max(0) as Lsn)
    }

    /// One transaction for the records and the position: exactly once,
    /// whatever crashes when.
    fn apply(&mut self, records: &[(Lsn, Record)], next: Lsn) -> Result<(), StoreError> {
        apply(&mut self.conn, records, next, &self.suppression)
    }
}

impl IndexWriter {
    /// The identifiers an erasure of `id` would suppress (a device also used
    /// by someone else stays theirs), or `None` if `id` is unknown.
    pub fn erasure_identifiers(&self, id: &str) -> Result<Option<Vec<String>>, StoreError> {
        let Some(p) = resolve(&self.conn, id)? else {
            return Ok(None);
        };
        identifiers_to_suppress(&self.conn, &p).map(Some)
    }

    /// Erases the profile `id` belongs to.
    /// `identifiers` are the ones the log side suppressed (from
    /// [`IndexWriter::erasure_identifiers`]), so both sides erase the same
    /// set even if links arrived in between.
    pub fn erase(
        &mut self,
        id: &str,
        identifiers: &[String],
    ) -> Result<Option<Erasure>, StoreError> {
        erase(&mut self.conn, id, identifiers, &self.suppression)
    }

    /// Whether `id` is an erased identifier.
    pub fn is_suppressed(&self, id: &str) -> bool {
        self.suppression.any(&[Some(id)])
    }

    /// Deletes up to `limit` events, and the rejected messages, received
    /// before `before`.
    pub fn expire(&mut self, before: &str, limit: usize) -> Result<usize, StoreError> {
        expire(&mut self.conn, before, limit)
    }

    /// The salted hash of an identifier.
    pub fn hash(&self, id: &str) -> IdHash {
        self.suppression.hash(id)
    }
}

impl IndexReaders {
    /// A free read connection, or (all busy) the first one to free up.
    fn reader(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding a lock cannot leave a connection in a state
        // worse than SQLite's own rollback; keep serving.
        for r in &self.readers {
            if let Ok(conn) = r.try_lock() {
                return conn;
            }
        }
        self.readers[0].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// See [`crate::store::EventStore::profile`].
    pub fn profile(&self, id: &str) -> Result<Option<ProfileSummary>, StoreError> {
        profile(&self.reader(), id)
    }

    /// See [`crate::store::EventStore::profile_events`].
    pub fn profile_events(
        &self,
        id: &str,
        limit: usize,
        before: Option<&EventCursor>,
    ) -> Result<Option<EventsPage>, StoreError> {
        profile_events(&self.reader(), id, limit, before)
    }

    /// See [`crate::store::EventStore::profile_graph`].
    pub fn profile_graph(&self, id: &str) -> Result<Option<IdentityGraph>, StoreError> {
        profile_graph(&self.reader(), id)
    }

    /// See [`crate::store::EventStore::consent_history`].
    pub fn consent_history(&self, id: &str) -> Result<Option<Vec<ConsentEntry>>, StoreError> {
        consent_history(&self.reader(), id)
    }

    /// Whether the index answers.
    pub fn check(&self) -> Result<(), StoreError> {
        self.reader()
            .query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))?;
        Ok(())
    }
}

fn apply(
    conn: &mut Connection,
    records: &[(Lsn, Record)],
    next: Lsn,
    suppression: &Suppression,
) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    {
        // No unique key on (source, messageId) in a new index: the log
        // writer deduplicates before appending, and each record is applied
        // exactly once. (An index made by an older version has the key;
        // OR IGNORE keeps a retry of one of its messages from failing.)
        let mut insert_event = tx.prepare_cached(
            "INSERT OR IGNORE INTO events
             (source, message_id, type, event, anonymous_id, user_id, timestamp, received_at, ip, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        let mut insert_identify_link = tx.prepare_cached(
            "INSERT OR IGNORE INTO links (anonymous_id, user_id, at, message_id, source)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        let mut insert_first_link = tx.prepare_cached(
            "INSERT INTO links (anonymous_id, user_id, at, message_id, source)
             SELECT ?1, ?2, ?3, ?4, ?5
             WHERE NOT EXISTS (SELECT 1 FROM links WHERE anonymous_id = ?1 AND user_id = ?2)",
        )?;
        let mut insert_alias = tx.prepare_cached(
            "INSERT OR IGNORE INTO aliases (previous_id, user_id, at, message_id, source)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        let mut insert_consent = tx.prepare_cached(
            "INSERT INTO consent_log (source, anonymous_id, user_id, at, received_at,
                                      preferences, policy, policy_version, message_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        let mut insert_rejected = tx.prepare_cached(
            "INSERT INTO rejected (source, received_at, code, reason, raw) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for (_, record) in records {
            match record {
                Record::Event { source, event: e } => {
                    // An erasure may have come between this record's
                    // admission and now: its identifiers stay erased.
                    let ids = [
                        e.anonymous_id.as_deref(),
                        e.user_id.as_deref(),
                        e.previous_id.as_deref(),
                    ];
                    if suppression.any(&ids) {
                        continue;
                    }
                    insert_event.execute(params![
                        source,
                        e.message_id,
                        e.kind.as_str(),
                        e.event,
                        e.anonymous_id,
                        e.user_id,
                        e.timestamp,
                        e.received_at,
                        e.ip,
                        e.body,
                    ])?;
                    if let (Some(a), Some(u)) = (&e.anonymous_id, &e.user_id) {
                        let link = params![a, u, e.timestamp, e.message_id, source];
                        if e.kind == MessageType::Identify {
                            insert_identify_link.execute(link)?;
                        } else {
                            insert_first_link.execute(link)?;
                        }
                    }
                    if let (Some(p), Some(u)) = (&e.previous_id, &e.user_id) {
                        insert_alias.execute(params![p, u, e.timestamp, e.message_id, source])?;
                    }
                    if let Some(c) = &e.consent_record {
                        insert_consent.execute(params![
                            source,
                            e.anonymous_id,
                            e.user_id,
                            e.timestamp,
                            e.received_at,
                            c.preferences,
                            c.policy,
                            c.policy_version,
                            e.message_id,
                        ])?;
                    }
                }
                Record::Rejected {
                    source,
                    rejected: b,
                } => {
                    insert_rejected.execute(params![
                        source,
                        b.received_at,
                        b.code,
                        b.reason,
                        b.raw
                    ])?;
                }
            }
        }
        tx.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![POSITION_KEY, next as i64],
        )?;
    }
    tx.commit()?;
    Ok(())
}

/// Most user IDs one alias component may hold before the walk stops.
const MAX_COMPONENT: usize = 10_000;

fn strings(conn: &Connection, sql: &str, arg: &str) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map([arg], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn exists(conn: &Connection, sql: &str, arg: &str) -> Result<bool, StoreError> {
    Ok(conn.query_row(sql, [arg], |_| Ok(())).optional()?.is_some())
}

/// A profile resolved from the identity tables: who it is, how its
/// identifiers are joined, and which events are its.
struct Resolved {
    profile_id: String,
    users: Vec<String>,
    devices: Vec<String>,
    links: Vec<Link>,
    aliases: Vec<Alias>,
    /// (timestamp, seq), unsorted.
    events: Vec<(String, i64)>,
}

/// The profile `id` (a userId or anonymousId) belongs to, resolved with
/// [`crate::identity`]: the user's alias component and the devices linked to
/// it, and the events attributed to them (a shared device's anonymous-only
/// events go to the user logged in around their time).
fn resolve(conn: &Connection, id: &str) -> Result<Option<Resolved>, StoreError> {
    let c = match identity::resolve(&SqlEdges(conn), id, MAX_COMPONENT)? {
        Identity::Device(device) => return resolve_device(conn, &device),
        Identity::Person(c) => c,
    };
    let mut events = Vec::new();
    let mut by_user =
        conn.prepare_cached("SELECT timestamp, seq FROM events WHERE user_id = ?1")?;
    for u in &c.users {
        for row in by_user.query_map([u], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
            events.push(row?);
        }
    }
    let mut anonymous_only = conn.prepare_cached(
        "SELECT timestamp, seq FROM events WHERE anonymous_id = ?1 AND user_id IS NULL",
    )?;
    for d in &c.devices {
        for row in
            anonymous_only.query_map([d], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
        {
            let (t, seq) = row?;
            if c.owns(Some(d), None, &t) {
                events.push((t, seq));
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

/// The index's identity tables, as [`identity::resolve`] reads them.
struct SqlEdges<'c>(&'c Connection);

impl Edges for SqlEdges<'_> {
    type Error = StoreError;

    fn is_user(&self, id: &str) -> Result<bool, StoreError> {
        is_user(self.0, id)
    }

    fn device_links(&self, device: &str) -> Result<Vec<Link>, StoreError> {
        device_links(self.0, device)
    }

    fn aliases_of(&self, user: &str) -> Result<Vec<Alias>, StoreError> {
        let mut stmt = self.0.prepare_cached(
            "SELECT previous_id, user_id, at, message_id FROM aliases
             WHERE user_id = ?1 OR previous_id = ?1",
        )?;
        let rows = stmt
            .query_map([user], |r| {
                Ok(Alias {
                    previous_id: r.get(0)?,
                    user_id: r.get(1)?,
                    at: r.get(2)?,
                    message_id: r.get(3)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    fn devices_of(&self, user: &str) -> Result<Vec<String>, StoreError> {
        strings(
            self.0,
            "SELECT DISTINCT anonymous_id FROM links WHERE user_id = ?1",
            user,
        )
    }
}

/// A device never linked to a user: a profile of its own.
fn resolve_device(conn: &Connection, device: &str) -> Result<Option<Resolved>, StoreError> {
    let events: Vec<(String, i64)> = conn
        .prepare_cached("SELECT timestamp, seq FROM events WHERE anonymous_id = ?1")?
        .query_map([device], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    // A device whose events are gone (retention) still answers while its
    // consent records, proof of consent, are kept.
    if events.is_empty()
        && !exists(
            conn,
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

fn event_body(conn: &Connection, seq: i64) -> Result<serde_json::Value, StoreError> {
    let text: String = conn.query_row("SELECT body FROM events WHERE seq = ?1", [seq], |r| {
        r.get(0)
    })?;
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(e.to_string()))
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
fn profile(conn: &Connection, id: &str) -> Result<Option<ProfileSummary>, StoreError> {
    let Some(mut p) = resolve(conn, id)? else {
        return Ok(None);
    };
    p.events.sort();
    let mut traits = serde_json::Map::new();
    let mut consent = serde_json::Value::Object(Default::default());
    // Only bodies that can matter are read and parsed: identify calls for
    // traits (chosen by type, so traits only in `context.traits` count
    // too), and (newest first, until one is found) bodies that mention
    // consent preferences.
    let mut identify_body =
        conn.prepare_cached("SELECT body FROM events WHERE seq = ?1 AND type = 'identify'")?;
    let mut consent_body = conn.prepare_cached(
        "SELECT body FROM events WHERE seq = ?1 AND instr(body, '\"categoryPreferences\"') > 0",
    )?;
    let parse = |text: String| {
        serde_json::from_str::<serde_json::Value>(&text)
            .map_err(|e| StoreError::Corrupt(e.to_string()))
    };
    for (_, seq) in &p.events {
        if let Some(text) = identify_body
            .query_row([seq], |r| r.get::<_, String>(0))
            .optional()?
        {
            traits.extend(identify_traits(parse(text)?));
        }
    }
    for (_, seq) in p.events.iter().rev() {
        if let Some(text) = consent_body
            .query_row([seq], |r| r.get::<_, String>(0))
            .optional()?
        {
            let prefs = &parse(text)?["context"]["consent"]["categoryPreferences"];
            if prefs.is_object() {
                consent = prefs.clone();
                break;
            }
        }
    }
    Ok(Some(ProfileSummary {
        profile_id: p.profile_id,
        first_seen: p.events.first().map(|e| e.0.clone()).unwrap_or_default(),
        last_seen: p.events.last().map(|e| e.0.clone()).unwrap_or_default(),
        event_count: p.events.len() as u64,
        user_ids: p.users,
        anonymous_ids: p.devices,
        traits: serde_json::Value::Object(traits),
        consent,
    }))
}

/// A page of a profile's events, newest first, strictly before `before`.
fn profile_events(
    conn: &Connection,
    id: &str,
    limit: usize,
    before: Option<&EventCursor>,
) -> Result<Option<EventsPage>, StoreError> {
    let Some(mut p) = resolve(conn, id)? else {
        return Ok(None);
    };
    p.events.sort_by(|a, b| b.cmp(a));
    let start = match before {
        Some(c) => p
            .events
            .partition_point(|(t, seq)| (t.as_str(), *seq) >= (c.timestamp.as_str(), c.seq)),
        None => 0,
    };
    let page: Vec<&(String, i64)> = p.events[start..].iter().take(limit).collect();
    let mut events = Vec::with_capacity(page.len());
    for (_, seq) in &page {
        events.push(event_body(conn, *seq)?);
    }
    let next = (start + page.len() < p.events.len())
        .then(|| page.last())
        .flatten()
        .map(|(t, seq)| EventCursor {
            timestamp: t.clone(),
            seq: *seq,
        });
    Ok(Some(EventsPage {
        profile_id: p.profile_id,
        events,
        next,
    }))
}

/// The consent decisions made on the profile's devices or by its users.
fn consent_history(conn: &Connection, id: &str) -> Result<Option<Vec<ConsentEntry>>, StoreError> {
    let Some(p) = resolve(conn, id)? else {
        return Ok(None);
    };
    let mut stmt = conn.prepare_cached(
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
fn profile_graph(conn: &Connection, id: &str) -> Result<Option<IdentityGraph>, StoreError> {
    let Some(p) = resolve(conn, id)? else {
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

/// Whether `id` is a user ID: seen as a `userId`, or as an alias's
/// `previousId` while never seen as a device.
fn is_user(conn: &Connection, id: &str) -> Result<bool, StoreError> {
    let seen_as_user = exists(conn, "SELECT 1 FROM links WHERE user_id = ?1 LIMIT 1", id)?
        || exists(conn, "SELECT 1 FROM events WHERE user_id = ?1 LIMIT 1", id)?
        || exists(conn, "SELECT 1 FROM aliases WHERE user_id = ?1 LIMIT 1", id)?;
    if seen_as_user {
        return Ok(true);
    }
    let seen_as_device = exists(
        conn,
        "SELECT 1 FROM links WHERE anonymous_id = ?1 LIMIT 1",
        id,
    )? || exists(
        conn,
        "SELECT 1 FROM events WHERE anonymous_id = ?1 LIMIT 1",
        id,
    )?;
    Ok(!seen_as_device
        && exists(
            conn,
            "SELECT 1 FROM aliases WHERE previous_id = ?1 LIMIT 1",
            id,
        )?)
}

/// Every link of a device: the users seen on it, and aliases that named it
/// as their `previousId`.
fn device_links(conn: &Connection, device: &str) -> Result<Vec<Link>, StoreError> {
    let mut out = Vec::new();
    for sql in [
        "SELECT anonymous_id, user_id, at, message_id FROM links WHERE anonymous_id = ?1",
        "SELECT previous_id, user_id, at, message_id FROM aliases WHERE previous_id = ?1",
    ] {
        let mut stmt = conn.prepare_cached(sql)?;
        for l in stmt.query_map([device], |r| {
            Ok(Link {
                anonymous_id: r.get(0)?,
                user_id: r.get(1)?,
                at: r.get(2)?,
                message_id: r.get(3)?,
            })
        })? {
            out.push(l?);
        }
    }
    Ok(out)
}

/// Deletes up to `limit` events, and all rejected messages, received
/// before `before`.
fn expire(conn: &mut Connection, before: &str, limit: usize) -> Result<usize, StoreError> {
    let tx = conn.transaction()?;
    let n = tx.execute(
        "DELETE FROM events WHERE seq IN
           (SELECT seq FROM events WHERE received_at < ?1 ORDER BY seq LIMIT ?2)",
        params![before, limit as i64],
    )?;
    tx.execute("DELETE FROM rejected WHERE received_at < ?1", [before])?;
    tx.commit()?;
    Ok(n)
}

/// The suppressed hashes, under `salt`.
fn load_suppression(conn: &Connection, salt: Vec<u8>) -> Result<Suppression, StoreError> {
    let mut stmt = conn.prepare("SELECT hash FROM suppressed")?;
    let hashes = stmt
        .query_map([], |r| r.get::<_, Vec<u8>>(0))?
        .filter_map(|h| h.ok().and_then(|h| IdHash::try_from(h.as_slice()).ok()))
        .collect::<Vec<_>>();
    Ok(Suppression::new(salt, hashes))
}

/// The identifiers of `p` an erasure suppresses: its users, and its devices
/// that no one else used.
fn identifiers_to_suppress(conn: &Connection, p: &Resolved) -> Result<Vec<String>, StoreError> {
    let mut identifiers: Vec<String> = p.users.clone();
    for d in &p.devices {
        let others = device_links(conn, d)?
            .iter()
            .any(|l| !p.users.contains(&l.user_id));
        if !others {
            identifiers.push(d.clone());
        }
    }
    Ok(identifiers)
}

/// Erases a profile on the writer connection, then truncates the WAL so no
/// earlier copy of the erased rows stays on disk. Answers the report and
/// the (source, messageId) of the deleted events.
fn erase(
    conn: &mut Connection,
    id: &str,
    identifiers: &[String],
    suppression: &Suppression,
) -> Result<Option<Erasure>, StoreError> {
    let tx = conn.transaction()?;
    let Some(p) = resolve(&tx, id)? else {
        return Ok(None);
    };
    let mut keys = Vec::with_capacity(p.events.len());
    let mut report = ErasureReport {
        profile_id: p.profile_id.clone(),
        events: 0,
        identity_edges: 0,
        rejected: 0,
        consent_records: 0,
        suppressed_identifiers: identifiers.len(),
    };
    {
        let mut delete_event =
            tx.prepare_cached("DELETE FROM events WHERE seq = ?1 RETURNING source, message_id")?;
        for (_, seq) in &p.events {
            if let Some(key) = delete_event
                .query_row([seq], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?
            {
                keys.push(key);
                report.events += 1;
            }
        }
        let mut delete_links =
            tx.prepare_cached("DELETE FROM links WHERE user_id = ?1 OR anonymous_id = ?2")?;
        let mut delete_aliases =
            tx.prepare_cached("DELETE FROM aliases WHERE user_id = ?1 OR previous_id = ?1")?;
        let mut delete_rejected =
            tx.prepare_cached("DELETE FROM rejected WHERE instr(raw, ?1) > 0")?;
        let mut delete_consent =
            tx.prepare_cached("DELETE FROM consent_log WHERE user_id = ?1 OR anonymous_id = ?1")?;
        let mut suppress = tx.prepare_cached(
            "INSERT OR IGNORE INTO suppressed (hash, at) VALUES (?1, datetime('now'))",
        )?;
        for u in &p.users {
            report.identity_edges += delete_links.execute(params![u, ""])?;
            report.identity_edges += delete_aliases.execute([u])?;
        }
        for ident in identifiers {
            if !p.users.contains(ident) {
                report.identity_edges += delete_links.execute(params!["", ident])?;
                report.identity_edges += delete_aliases.execute([ident])?;
            }
            let quoted =
                serde_json::to_string(ident).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            report.rejected += delete_rejected.execute([quoted])?;
            report.consent_records += delete_consent.execute([ident])?;
            suppress.execute([suppression.hash(ident).to_vec()])?;
        }
    }
    tx.commit()?;
    suppression.extend(identifiers.iter().map(|i| suppression.hash(i)));
    // The WAL still holds the erased rows until a checkpoint copies the
    // database and truncates it; a reader in the middle of a query makes
    // it answer "busy", so retry for a while, then fail the erasure.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
        if busy == 0 {
            break;
        }
        if std::time::Instant::now() >= deadline {
            return Err(StoreError::Corrupt(
                "erasure: the index's WAL could not be truncated (busy readers); retry the DELETE"
                    .into(),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(Some(Erasure {
        report,
        event_keys: keys,
    }))
}
