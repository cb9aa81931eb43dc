//! The index: derived state beside the event log, what the admin API reads.
//!
//! Two parts, written by one thread, the indexer ([`super::embedded`]):
//!
//! - in memory ([`super::memory`]): which events are whose, and the
//!   identity graph (links and aliases), what every read walks. Postings
//!   are rebuilt from the log at start; event bodies are read from the log
//!   by LSN ([`LogLookup`]), never copied.
//! - in SQLite (WAL mode): what must outlive retention, written by few
//!   messages (logins, aliases, consent decisions): the identity edges as
//!   append-only tables without keys (loaded into memory at start), the
//!   consent audit log, rejected messages and suppressed identifiers. The
//!   indexer applies log records in large transactions and stores the log
//!   position it has reached in the same transaction, so every record is
//!   applied exactly once; because the log replays from that position
//!   after a crash, it commits with `synchronous=NORMAL`.
//!
//! Delete the database and it is rebuilt from the log. Reads use separate
//! connections; WAL lets them run beside the writer.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, params};
use weft_protocol::MessageType;

use crate::clock::Clock;
use crate::consumer::Consumer;
use crate::hashing::Map;
use crate::identity;
use crate::log::{LogLookup, Lsn};
use crate::record::{self, RecordRef};
use crate::segments::state::{Body, Families, ProfileState, Seen};
use crate::segments::{Change, Definition, Rule, Segments, Touched};

use super::definitions::{self, Stored};
use super::memory::{self, MemoryIndex, NewEdge};
use super::profiles::{
    Resolved, View, build_state, consent_history, identifiers_to_suppress, profile, profile_events,
    profile_graph, resolve, resolve_with, resolved, walk,
};

use super::suppression::{IdHash, Suppression};
use super::{
    ConsentEntry, ErasureReport, EventCursor, EventsPage, IdentityGraph, MembersPage,
    ProfileSummary, SegmentInfo, SegmentMember, StoreError,
};

/// The index file inside the data directory.
pub const DB_FILE: &str = "weft.sqlite";
/// The index's schema version (`PRAGMA user_version`, set by [`SCHEMA`]);
/// older ones are migrated on open, newer ones refused.
pub const INDEX_VERSION: i64 = 3;
/// SQLite page size for a new database, in bytes.
const PAGE_SIZE: i64 = 16384;
/// Read connections for the admin API.
const READERS: usize = 4;

const SCHEMA: &str = "
-- Events are not here: the log holds them and the in-memory event index
-- says whose they are. (An index of an older version had an `events`
-- table; it is dropped at open.)
DROP TABLE IF EXISTS events;
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
-- Append-only and without keys (appends stay sequential however random
-- the identifiers): the indexer keeps the graph in memory, deduplicates
-- there, and loads these rows at start.
CREATE TABLE IF NOT EXISTS link_log (
    anonymous_id TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    at           TEXT NOT NULL,
    message_id   TEXT NOT NULL,
    source       TEXT NOT NULL
);
-- Identity: two user IDs joined by alias(previousId, userId), once a pair.
CREATE TABLE IF NOT EXISTS alias_log (
    previous_id TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    at          TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    source      TEXT NOT NULL
);
-- Identity: two anonymous IDs of one browser, joined by the collector's
-- server cookie (`same_as` is the cookie's), once a pair.
CREATE TABLE IF NOT EXISTS device_log (
    anonymous_id TEXT NOT NULL,
    same_as      TEXT NOT NULL,
    at           TEXT NOT NULL,
    message_id   TEXT NOT NULL,
    source       TEXT NOT NULL
);
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
-- Segments (DESIGN.md §10): definitions, current members, and every
-- entering and leaving (what destinations receive next).
CREATE TABLE IF NOT EXISTS segments (
    key        TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    rule       TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    ready      INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS segment_members (
    segment    TEXT NOT NULL,
    profile_id TEXT NOT NULL,
    entered_at TEXT NOT NULL,
    PRIMARY KEY (segment, profile_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS segment_changes (
    seq        INTEGER PRIMARY KEY,
    segment    TEXT NOT NULL,
    profile_id TEXT NOT NULL,
    at         TEXT NOT NULL,
    entered    INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS segment_changes_by_profile ON segment_changes (profile_id);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;
PRAGMA user_version = 3; -- INDEX_VERSION
";

/// The index's position in the event log: every record below it is
/// applied. Kept in `meta`, written in the transaction that applies them.
/// A batch with nothing for the database (events without new identity
/// edges, consent records or rejected messages: most of them) does not
/// write it unless [`POSITION_EVERY`] has passed: after a restart such
/// records replay, which is harmless (they add nothing to the database, and
/// the memory index is rebuilt from the log anyway) and spares a commit per
/// batch.
const POSITION_KEY: &str = "log_position";
/// How often, at least, the position is written while batches have nothing
/// else for the database.
const POSITION_EVERY: Duration = Duration::from_secs(1);

/// What an erasure removed from the index.
pub struct Erasure {
    /// The counts, for the admin API.
    pub report: ErasureReport,
    /// The LSNs of the events it removed, so the log can drop them too.
    pub lsns: Vec<Lsn>,
}

/// The writing half of the index, used by the indexer thread only: applies
/// log records in large transactions and runs erasures and retention
/// between them.
pub struct IndexWriter {
    conn: Connection,
    suppression: Suppression,
    events: Arc<RwLock<MemoryIndex>>,
    log_dir: PathBuf,
    /// Where `segments.json` is ([`super::definitions`]).
    data_dir: PathBuf,
    /// Records by LSN, shared with the readers.
    log: Arc<LogLookup>,
    /// Every record below this is applied (in memory; the database's
    /// position may be behind it, see [`POSITION_EVERY`]).
    applied: Lsn,
    /// When the database's position was last written.
    position_written: Instant,
    segments: Arc<RwLock<Segments>>,
    clock: Arc<dyn Clock>,
    /// profile -> when (ms) its memberships of segments with windows must
    /// be evaluated again: a `within` window moves past one of its events
    /// then.
    due: DueTimes,
    /// What the segments' rules need of each profile evaluated so far,
    /// kept up to date event by event ([`ProfileState`]).
    engine: Engine,
}

/// A pass over every profile ([`IndexWriter::recompute`]), carried from
/// one part to the next, by identifier number: those whose profile it has
/// evaluated, and those that name a profile it evaluated (the canonical
/// user, or the device).
#[derive(Debug, Default)]
pub struct Pass {
    reached: Bits,
    named: Bits,
}

/// A set of identifier numbers.
#[derive(Debug, Default)]
struct Bits(Vec<u64>);

impl Bits {
    fn has(&self, i: u32) -> bool {
        self.0
            .get(i as usize / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    fn set(&mut self, i: u32) {
        let word = i as usize / 64;
        if word >= self.0.len() {
            self.0.resize(word + 1, 0);
        }
        self.0[word] |= 1 << (i % 64);
    }
}

/// The segments' event-condition families and the profiles' states.
#[derive(Default)]
struct Engine {
    families: Families,
    states: Map<String, ProfileState>,
}

impl Engine {
    /// After the segment definitions changed: new families, states
    /// rebuilt when next needed.
    fn reset(&mut self, segments: &Segments) {
        self.families = segments.families().clone();
        self.states.clear();
    }

    /// The segments decided `profile_id`'s memberships outside a batch (a
    /// recompute, the tick): the copy its state keeps is stale.
    fn memberships_changed(&mut self, profile_id: &str) {
        if let Some(state) = self.states.get_mut(profile_id) {
            state.member = None;
        }
    }

    /// Makes sure `p` (its events sorted) has a state at `now_ms`: built
    /// from its history unless already known (and `fresh` is not asked).
    fn ensure(&mut self, view: &View<'_>, p: &Resolved, fresh: bool, now_ms: i64) {
        if fresh || !self.states.contains_key(&p.profile_id) {
            let state = build_state(view, p, &self.families, now_ms);
            self.states.insert(p.profile_id.clone(), state);
        }
    }
}

/// The reading half: connections for the admin API, the event index and
/// the log's records by LSN.
pub struct IndexReaders {
    readers: Vec<Mutex<Connection>>,
    events: Arc<RwLock<MemoryIndex>>,
    segments: Arc<RwLock<Segments>>,
    log: Arc<LogLookup>,
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
    // Identity lookups touch pages all over the links and aliases tables
    // (random identifiers): 16 MB of cache per connection keeps them.
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
/// beside the log, not in this derived store. The event index is rebuilt
/// from the log in `log_dir` up to the database's position (the indexer
/// applies the rest).
pub fn open_index(
    path: &Path,
    log_dir: &Path,
    salt: Vec<u8>,
    suppressed: &[IdHash],
    clock: Arc<dyn Clock>,
) -> Result<(IndexWriter, IndexReaders), StoreError> {
    let conn = open(path)?;
    // The index is derived: after a crash it replays the log from its
    // position, so its commits need not wait for the disk.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // A newer index is refused before the schema below could touch it.
    super::version::sqlite_version(&conn, DB_FILE, INDEX_VERSION)?;
    conn.execute_batch(SCHEMA)?;
    migrate_edges(&conn)?;
    let suppression = load_suppression(&conn, salt)?;
    suppression.extend(suppressed.iter().copied());
    let readers = (0..READERS)
        .map(|_| open(path).map(Mutex::new))
        .collect::<Result<Vec<_>, _>>()?;
    let events = Arc::new(RwLock::new(MemoryIndex::default()));
    let segments = Arc::new(RwLock::new(Segments::default()));
    let log = Arc::new(LogLookup::new(log_dir));
    let mut writer = IndexWriter {
        conn,
        suppression,
        events: events.clone(),
        log_dir: log_dir.to_path_buf(),
        data_dir: path
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
        log: log.clone(),
        applied: 0,
        position_written: Instant::now(),
        segments: segments.clone(),
        clock,
        due: DueTimes::default(),
        engine: Engine::default(),
    };
    let until = writer.position()?;
    writer.load(until)?;
    writer.reconcile_definitions()?;
    writer.load_segments()?;
    let readers = IndexReaders {
        readers,
        events,
        segments,
        log,
    };
    Ok((writer, readers))
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

    /// One transaction for the records, the segment changes they cause and
    /// the position: exactly once, whatever crashes when. The memory index
    /// and memberships change inside it; if it then fails, both are rebuilt
    /// (edges and memberships from the database, postings from the log up
    /// to where this batch starts) before the batch is retried.
    fn apply(&mut self, records: &[(Lsn, RecordRef<'_>)], next: Lsn) -> Result<(), StoreError> {
        let (skipped, edges) = {
            let events = self.events.read().unwrap_or_else(|e| e.into_inner());
            plan(&events, records, &self.suppression)
        };
        let from = self.applied;
        match self.apply_batch(records, next, &skipped, &edges) {
            Ok(()) => {
                self.applied = next;
                Ok(())
            }
            Err(e) => {
                if let Err(reload) = self.load(from).and_then(|()| self.load_segments()) {
                    tracing::error!(error = %reload, "index: cannot rebuild its memory after a failed batch");
                }
                Err(e)
            }
        }
    }
}

impl IndexWriter {
    fn apply_batch(
        &mut self,
        records: &[(Lsn, RecordRef<'_>)],
        next: Lsn,
        skipped: &[usize],
        edges: &[(usize, Edge)],
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        // 1. The database's part of the records.
        let mut wrote = write_records(&tx, records, skipped, edges)?;
        // 2. The memory index. Each event's time is read once, for it and
        // for the segments.
        let (times, mentions): (Vec<i64>, Vec<bool>) = records
            .iter()
            .map(|(_, r)| match r {
                RecordRef::Event { event: e, .. } => (
                    memory::timestamp_millis(e.timestamp),
                    memory::mentions_consent(e.body),
                ),
                _ => (0, false),
            })
            .unzip();
        {
            let mut events = write_lock(&self.events);
            for (i, (lsn, record)) in records.iter().enumerate() {
                if let RecordRef::Event { event: e, .. } = record
                    && skipped.binary_search(&i).is_err()
                {
                    events.add_at(*lsn, e, times[i], mentions[i]);
                }
            }
            for (_, edge) in edges {
                match edge {
                    Edge::Link(e) => events.add_link(e),
                    Edge::Alias(e) => events.add_alias(e),
                    Edge::SameDevice(e) => events.add_same_device(e),
                }
            }
        }
        // 3. Segments: the profiles the batch touched.
        let has_segments = !read_lock(&self.segments).is_empty();
        if has_segments {
            let (touched, absorbed, consent) = touched(records, &mentions, skipped, edges);
            let now_ms = now_millis(&*self.clock);
            let events = self.events.read().unwrap_or_else(|e| e.into_inner());
            let log = &*self.log;
            let view = View {
                conn: &tx,
                events: &events,
                log,
            };
            let mut segments = write_lock(&self.segments);
            let changes = evaluate(
                &view,
                &mut segments,
                &mut self.engine,
                Batch {
                    records,
                    times: &times,
                    consent,
                    touched,
                    absorbed: &absorbed,
                },
                now_ms,
                &mut self.due,
            )?;
            if !changes.is_empty() {
                write_changes(&tx, &changes)?;
                wrote = true;
            }
        }
        // 4. The position, with anything written (or once a second).
        if wrote || self.position_written.elapsed() >= POSITION_EVERY {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![POSITION_KEY, next as i64],
            )?;
            tx.commit()?;
            self.position_written = Instant::now();
        }
        Ok(())
    }

    /// Makes the index's segment definitions those of `segments.json`
    /// (the file wins: the index is derived); a directory without the file
    /// gets it from the index. An added or changed definition is not ready,
    /// so it is computed for everyone at start.
    fn reconcile_definitions(&mut self) -> Result<(), StoreError> {
        let in_index: Vec<Stored> = {
            let mut stmt = self
                .conn
                .prepare("SELECT key, name, rule, updated_at FROM segments ORDER BY key")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (key, name, rule, updated_at) = row?;
                let rule = serde_json::from_str(&rule)
                    .map_err(|e| StoreError::Corrupt(format!("segment {key}: {e}")))?;
                out.push(Stored {
                    key,
                    name,
                    rule,
                    updated_at,
                });
            }
            out
        };
        let Some(file) = definitions::read(&self.data_dir)? else {
            return definitions::write(&self.data_dir, in_index);
        };
        let tx = self.conn.transaction()?;
        for s in &file {
            if !in_index.contains(s) {
                tracing::info!(segment = %s.key, "segment definition restored from segments.json; computing it");
                tx.execute(
                    "INSERT INTO segments (key, name, rule, updated_at, ready) VALUES (?1, ?2, ?3, ?4, 0)
                     ON CONFLICT (key) DO UPDATE SET name = excluded.name, rule = excluded.rule,
                         updated_at = excluded.updated_at, ready = 0",
                    params![s.key, s.name, s.rule.to_string(), s.updated_at],
                )?;
            }
        }
        for s in &in_index {
            if !file.iter().any(|f| f.key == s.key) {
                tracing::info!(segment = %s.key, "segment not in segments.json; dropped from the index");
                tx.execute("DELETE FROM segments WHERE key = ?1", [&s.key])?;
                tx.execute("DELETE FROM segment_members WHERE segment = ?1", [&s.key])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// `segments.json` with every current definition, `change`d first.
    fn write_definitions(&self, change: impl FnOnce(&mut Vec<Stored>)) -> Result<(), StoreError> {
        let mut all: Vec<Stored> = read_lock(&self.segments)
            .all()
            .map(|d| Stored {
                key: d.key.clone(),
                name: d.name.clone(),
                rule: d.rule_json.clone(),
                updated_at: d.updated_at.clone(),
            })
            .collect();
        change(&mut all);
        all.sort_by(|a, b| a.key.cmp(&b.key));
        definitions::write(&self.data_dir, all)
    }

    /// Segments and memberships from the database, afresh.
    fn load_segments(&mut self) -> Result<(), StoreError> {
        let mut segments = Segments::default();
        {
            let mut stmt = self
                .conn
                .prepare("SELECT key, name, rule, updated_at, ready FROM segments")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, bool>(4)?,
                ))
            })?;
            for row in rows {
                let (key, name, rule_text, updated_at, ready) = row?;
                let rule_json: serde_json::Value = serde_json::from_str(&rule_text)
                    .map_err(|e| StoreError::Corrupt(format!("segment {key}: {e}")))?;
                match Rule::parse(&rule_json) {
                    Ok(rule) => segments.load(Definition {
                        key,
                        name,
                        rule_json,
                        rule,
                        updated_at,
                        ready,
                    }),
                    Err(e) => {
                        tracing::error!(segment = %key, error = %e, "segment rule no longer valid; skipped")
                    }
                }
            }
            let mut stmt = self
                .conn
                .prepare("SELECT segment, profile_id, entered_at FROM segment_members")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })?;
            for row in rows {
                let (segment, profile, at) = row?;
                segments.load_member(&segment, profile, at);
            }
        }
        self.engine.reset(&segments);
        *write_lock(&self.segments) = segments;
        Ok(())
    }

    /// Creates or replaces a segment (not ready until
    /// [`IndexWriter::recompute`] has been through every profile).
    pub fn put_segment(
        &mut self,
        key: &str,
        name: &str,
        rule_json: serde_json::Value,
    ) -> Result<Definition, StoreError> {
        let rule = Rule::parse(&rule_json).map_err(StoreError::InvalidRule)?;
        read_lock(&self.segments)
            .check(key, &rule)
            .map_err(StoreError::InvalidRule)?;
        let def = Definition {
            key: key.to_owned(),
            name: name.to_owned(),
            rule_json,
            rule,
            updated_at: crate::clock::format_utc_millis(self.clock.now()),
            ready: false,
        };
        // The file first: a crash before the index is written is repaired
        // from it at start.
        let stored = Stored {
            key: def.key.clone(),
            name: def.name.clone(),
            rule: def.rule_json.clone(),
            updated_at: def.updated_at.clone(),
        };
        self.write_definitions(|all| {
            all.retain(|s| s.key != stored.key);
            all.push(stored);
        })?;
        self.conn.execute(
            "INSERT INTO segments (key, name, rule, updated_at, ready) VALUES (?1, ?2, ?3, ?4, 0)
             ON CONFLICT (key) DO UPDATE SET name = excluded.name, rule = excluded.rule,
                 updated_at = excluded.updated_at, ready = 0",
            params![def.key, def.name, def.rule_json.to_string(), def.updated_at],
        )?;
        let mut segments = write_lock(&self.segments);
        segments.put(def.clone());
        self.engine.reset(&segments);
        Ok(def)
    }

    /// Deletes a segment; every member leaves it. `Ok(false)` if unknown.
    pub fn delete_segment(&mut self, key: &str) -> Result<bool, StoreError> {
        let now = crate::clock::format_utc_millis(self.clock.now());
        let segments = write_lock(&self.segments);
        if segments.get(key).is_none() {
            return Ok(false);
        }
        if let Some(other) = segments.dependents(key).first() {
            return Err(StoreError::InvalidRule(crate::segments::RuleError {
                reason: format!("segment {other:?} refers to {key:?}; change or delete it first"),
                path: "key".into(),
            }));
        }
        let leaving: Vec<Change> = segments
            .members(key, None, usize::MAX)
            .into_iter()
            .map(|(profile_id, _)| Change {
                segment: key.to_owned(),
                profile_id,
                entered: false,
                at: now.clone(),
            })
            .collect();
        drop(segments);
        self.write_definitions(|all| all.retain(|s| s.key != key))?;
        let mut segments = write_lock(&self.segments);
        let tx = self.conn.transaction()?;
        write_changes(&tx, &leaving)?;
        tx.execute("DELETE FROM segments WHERE key = ?1", [key])?;
        tx.commit()?;
        segments.remove(key);
        self.engine.reset(&segments);
        Ok(true)
    }

    /// Every segment's key.
    pub fn segment_keys(&self) -> Vec<String> {
        read_lock(&self.segments)
            .all()
            .map(|d| d.key.clone())
            .collect()
    }

    /// The segments whose memberships a pass over every profile must
    /// settle: those not ready (a new or changed rule), and those with
    /// windows (their due times live in memory only).
    pub fn segments_to_recompute(&self) -> Vec<String> {
        let segments = read_lock(&self.segments);
        segments
            .all()
            .filter(|d| !d.ready || !d.rule.windows().is_empty())
            .map(|d| d.key.clone())
            .collect()
    }

    /// Part of a pass over every profile for segment `key` (and those that
    /// refer to it): the identifiers numbered `from..from + limit`. The
    /// profile of each is evaluated, unless `pass` says an earlier part
    /// evaluated it already (through another of its identifiers): one
    /// identity walk per profile, not one per identifier. `version` is the
    /// definition's `updated_at` the pass started with (`None` for its
    /// first part): a pass whose rule has since been replaced stops (the
    /// new rule's own pass goes on). Answers where the next part starts, or
    /// `None` once done (the segment is then ready), and the version.
    pub fn recompute(
        &mut self,
        key: &str,
        from: u32,
        limit: u32,
        version: Option<&str>,
        pass: &mut Pass,
    ) -> Result<(Option<u32>, String), StoreError> {
        let (keys, current) = {
            let segments = read_lock(&self.segments);
            let Some(def) = segments.get(key) else {
                return Ok((None, String::new()));
            };
            (segments.with_dependents(key), def.updated_at.clone())
        };
        if version.is_some_and(|v| v != current) {
            return Ok((None, current));
        }
        let now_ms = now_millis(&*self.clock);
        let now = memory::format_millis(now_ms);
        let tx = self.conn.transaction()?;
        let (changes, next) = {
            let events = self.events.read().unwrap_or_else(|e| e.into_inner());
            let log = &*self.log;
            let view = View {
                conn: &tx,
                events: &events,
                log,
            };
            let mut segments = write_lock(&self.segments);
            let end = from.saturating_add(limit).min(events.identifiers());
            let mut changes = Vec::new();
            for i in from..end {
                if pass.reached.has(i) {
                    continue;
                }
                let Some(id) = events.identifier(i) else {
                    continue;
                };
                let Some(mut p) = resolved(&view, walk(&view, id)?, true)? else {
                    continue;
                };
                // Once a profile: its other identifiers are not walked
                // again. (A shared device is in the component of every user
                // seen on it, but its own walk finds one of them, which is
                // evaluated through its own user ID if not through this.)
                for other in p.users.iter().chain(&p.devices) {
                    if let Some(n) = events.number(other) {
                        pass.reached.set(n);
                    }
                }
                if let Some(n) = events.number(identity::profile_identifier(&p.profile_id)) {
                    pass.named.set(n);
                }
                p.events.sort();
                self.engine.ensure(&view, &p, false, now_ms);
                let (state, families) = (&self.engine.states[&p.profile_id], &self.engine.families);
                let mut facts = state.facts(families, now_ms);
                changes.extend(segments.evaluate(&p.profile_id, &keys, &mut facts, &now));
                schedule(
                    &segments,
                    keys.iter().any(|k| segments.has_windows(k)),
                    state,
                    now_ms,
                    &p.profile_id,
                    &mut self.due,
                );
                self.engine.memberships_changed(&p.profile_id);
            }
            let next = (end < events.identifiers()).then_some(end);
            if next.is_none() {
                // Members whose profile no longer exists as such (its events
                // expired, or it was merged) leave. One this pass evaluated
                // exists (a merge or an erasure since then took it out).
                for key in &keys {
                    for (profile_id, _) in segments.members(key, None, usize::MAX) {
                        let id = identity::profile_identifier(&profile_id);
                        if events.number(id).is_some_and(|n| pass.named.has(n)) {
                            continue;
                        }
                        let exists = resolve_with(&view, id, false)?
                            .is_some_and(|p| p.profile_id == profile_id);
                        if !exists {
                            changes.extend(segments.remove_profile(&profile_id, &now));
                            self.engine.states.remove(&profile_id);
                        }
                    }
                }
            }
            (changes, next)
        };
        write_changes(&tx, &changes)?;
        if next.is_none() {
            tx.execute("UPDATE segments SET ready = 1 WHERE key = ?1", [key])?;
        }
        tx.commit()?;
        if next.is_none() {
            write_lock(&self.segments).set_ready(key);
        }
        Ok((next, current))
    }

    /// Evaluates again the memberships whose windows moved on by now.
    pub fn tick(&mut self) -> Result<(), StoreError> {
        let now_ms = now_millis(&*self.clock);
        let due: Vec<String> = self
            .due
            .iter()
            .filter(|(_, at)| **at <= now_ms)
            .map(|(p, _)| p.clone())
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        for p in &due {
            self.due.remove(p);
            if let Some(state) = self.engine.states.get(p) {
                state.scheduled.set(None);
            }
        }
        let now = memory::format_millis(now_ms);
        let tx = self.conn.transaction()?;
        let changes = {
            let events = self.events.read().unwrap_or_else(|e| e.into_inner());
            let log = &*self.log;
            let view = View {
                conn: &tx,
                events: &events,
                log,
            };
            let mut segments = write_lock(&self.segments);
            let mut changes = Vec::new();
            // Every segment with a window, and those that refer to them.
            let mut keys: Vec<String> = Vec::new();
            for k in segments.ordered() {
                if segments.has_windows(&k)
                    || keys
                        .iter()
                        .any(|w| segments.with_dependents(w).contains(&k))
                {
                    keys.push(k);
                }
            }
            for profile_id in due {
                let id = identity::profile_identifier(&profile_id);
                match resolve(&view, id)? {
                    Some(mut p) if p.profile_id == profile_id => {
                        p.events.sort();
                        self.engine.ensure(&view, &p, false, now_ms);
                        let (state, families) =
                            (&self.engine.states[&profile_id], &self.engine.families);
                        let mut facts = state.facts(families, now_ms);
                        changes.extend(segments.evaluate(&profile_id, &keys, &mut facts, &now));
                        schedule(
                            &segments,
                            keys.iter().any(|k| segments.has_windows(k)),
                            state,
                            now_ms,
                            &profile_id,
                            &mut self.due,
                        );
                        self.engine.memberships_changed(&profile_id);
                    }
                    // Merged into another profile, or gone.
                    _ => {
                        changes.extend(segments.remove_profile(&profile_id, &now));
                        self.engine.states.remove(&profile_id);
                    }
                }
            }
            changes
        };
        write_changes(&tx, &changes)?;
        tx.commit()?;
        Ok(())
    }
}

/// A new identity edge of a batch.
enum Edge {
    Link(NewEdge),
    Alias(NewEdge),
    SameDevice(NewEdge),
}

/// The indexes (sorted) of the batch's event records whose identifiers are
/// erased (an erasure came between their admission and now), and the
/// identity edges the others add, by record index: a link for every
/// identify (once per device, user and time) and for the first message
/// with a device/user pair, an alias once per pair, a same-device edge
/// once per pair of anonymous IDs.
fn plan<'r>(
    known: &MemoryIndex,
    records: &[(Lsn, RecordRef<'r>)],
    suppression: &Suppression,
) -> (Vec<usize>, Vec<(usize, Edge)>) {
    let mut skipped = Vec::new();
    let mut edges = Vec::new();
    // Edges added earlier in this batch.
    let mut pairs: HashSet<(&str, &str)> = HashSet::new();
    let mut linked: HashSet<(&str, &str, &str)> = HashSet::new();
    let mut aliased: HashSet<(&str, &str)> = HashSet::new();
    let mut same: HashSet<(&str, &str)> = HashSet::new();
    for (i, (_, record)) in records.iter().enumerate() {
        let RecordRef::Event { event: e, .. } = record else {
            continue;
        };
        let ids = [e.anonymous_id, e.user_id, e.previous_id];
        if suppression.any(&ids) {
            skipped.push(i);
            continue;
        }
        let edge = |from: &str, to: &str| NewEdge {
            from: from.to_owned(),
            to: to.to_owned(),
            at: e.timestamp.to_owned(),
            message_id: e.message_id.to_owned(),
        };
        if let (Some(a), Some(u)) = (e.anonymous_id, e.user_id) {
            let at = e.timestamp;
            let new = if e.kind == MessageType::Identify {
                !linked.contains(&(a, u, at)) && !known.has_link(a, u, Some(at))
            } else {
                !pairs.contains(&(a, u)) && !known.has_link(a, u, None)
            };
            if new {
                pairs.insert((a, u));
                linked.insert((a, u, at));
                edges.push((i, Edge::Link(edge(a, u))));
            }
        }
        if let (Some(p), Some(u)) = (e.previous_id, e.user_id)
            && !known.has_alias(p, u)
            && aliased.insert((p, u))
        {
            edges.push((i, Edge::Alias(edge(p, u))));
        }
        // An erasure between admission and now may have taken the device
        // the cookie named: then no edge.
        if let (Some(a), Some(d)) = (e.anonymous_id, e.same_device)
            && a != d
            && !suppression.any(&[Some(d)])
            && !known.has_same_device(a, d)
            && same.insert((a, d))
            && !same.contains(&(d, a))
        {
            edges.push((i, Edge::SameDevice(edge(a, d))));
        }
    }
    (skipped, edges)
}

impl IndexWriter {
    fn write_events(&self) -> RwLockWriteGuard<'_, MemoryIndex> {
        write_lock(&self.events)
    }

    fn view(&self) -> (RwLockReadGuard<'_, MemoryIndex>, &LogLookup) {
        (
            self.events.read().unwrap_or_else(|e| e.into_inner()),
            &self.log,
        )
    }

    /// After the log writer rewrote segments (erasure): reads open the new
    /// files from now on.
    pub fn log_rewritten(&self) {
        self.log.invalidate();
    }

    /// At open (and after a failed batch): the memory index afresh, with
    /// the identity edges from the database and the postings from the log
    /// up to `until` (the records after it are the indexer's).
    fn load(&mut self, until: Lsn) -> Result<(), StoreError> {
        self.applied = until;
        let mut events = self.events.write().unwrap_or_else(|e| e.into_inner());
        *events = MemoryIndex::default();
        for (sql, kind) in [
            (
                "SELECT anonymous_id, user_id, at, message_id FROM link_log ORDER BY rowid",
                0,
            ),
            (
                "SELECT previous_id, user_id, at, message_id FROM alias_log ORDER BY rowid",
                1,
            ),
            (
                "SELECT anonymous_id, same_as, at, message_id FROM device_log ORDER BY rowid",
                2,
            ),
        ] {
            let mut stmt = self.conn.prepare(sql)?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let edge = NewEdge {
                    from: row.get(0)?,
                    to: row.get(1)?,
                    at: row.get(2)?,
                    message_id: row.get(3)?,
                };
                match kind {
                    0 => events.add_link(&edge),
                    1 => events.add_alias(&edge),
                    _ => events.add_same_device(&edge),
                }
            }
        }
        if until == 0 {
            return Ok(());
        }
        let suppression = &self.suppression;
        crate::log::scan(&self.log_dir, 0, until, |lsn, payload| {
            if let Ok(RecordRef::Event { event: e, .. }) = record::decode_ref(payload)
                && !suppression.any(&[e.anonymous_id, e.user_id, e.previous_id])
            {
                events.add(lsn, &e);
            }
            true
        })
        .map_err(log_error)?;
        tracing::info!(events = events.events(), "event index rebuilt from the log");
        Ok(())
    }

    /// The identifiers an erasure of `id` would suppress (a device also used
    /// by someone else stays theirs), or `None` if `id` is unknown.
    pub fn erasure_identifiers(&self, id: &str) -> Result<Option<Vec<String>>, StoreError> {
        let (events, log) = self.view();
        let view = View {
            conn: &self.conn,
            events: &events,
            log,
        };
        let Some(p) = resolve(&view, id)? else {
            return Ok(None);
        };
        identifiers_to_suppress(&view, &p).map(Some)
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
        let resolved = {
            let (events, log) = self.view();
            resolve(
                &View {
                    conn: &self.conn,
                    events: &events,
                    log,
                },
                id,
            )?
        };
        let Some(p) = resolved else {
            return Ok(None);
        };
        // Its profile, and the profiles of its own devices, leave every
        // segment; their membership history goes too (profile ids carry
        // identifiers in clear).
        let mut profile_ids = vec![p.profile_id.clone()];
        profile_ids.extend(
            identifiers
                .iter()
                .filter(|i| !p.users.contains(i))
                .map(|d| identity::device_profile_id(d)),
        );
        let report = erase(
            &mut self.conn,
            &p,
            identifiers,
            &self.suppression,
            &profile_ids,
        )?;
        {
            let mut segments = write_lock(&self.segments);
            for id in &profile_ids {
                segments.remove_profile(id, "");
                self.engine.states.remove(id);
            }
            self.due.retain(|pid, _| !profile_ids.contains(pid));
        }
        let mut lsns: Vec<Lsn> = p.events.iter().map(|e| e.lsn).collect();
        lsns.sort_unstable();
        let mut events = write_lock(&self.events);
        let mut ids: Vec<String> = p.users.clone();
        ids.extend(p.devices.iter().cloned());
        ids.extend(identifiers.iter().cloned());
        events.remove(&ids, &lsns);
        let devices: Vec<String> = identifiers
            .iter()
            .filter(|i| !p.users.contains(i))
            .cloned()
            .collect();
        events.remove_edges(&p.users, &devices);
        Ok(Some(Erasure { report, lsns }))
    }

    /// Whether `id` is an erased identifier.
    pub fn is_suppressed(&self, id: &str) -> bool {
        self.suppression.any(&[Some(id)])
    }

    /// Retention: removes from the index the events received before
    /// `before` in the oldest segments of the log (segment by segment,
    /// until one has none), and the rejected messages received before it.
    /// Answers how many events left the index. The log then drops the
    /// segments that hold only such records.
    pub fn expire(&mut self, before: &str) -> Result<usize, StoreError> {
        let until = self.applied;
        let starts = crate::log::segment_starts(&self.log_dir).map_err(log_error)?;
        let mut expired = Vec::new();
        for (i, &first) in starts.iter().enumerate() {
            let end = starts.get(i + 1).copied().unwrap_or(until).min(until);
            if first >= end {
                break;
            }
            let mut any = false;
            crate::log::scan(&self.log_dir, first, end, |lsn, payload| {
                if let Ok(RecordRef::Event { event: e, .. }) = record::decode_ref(payload)
                    && e.received_at < before
                {
                    expired.push(lsn);
                    any = true;
                }
                true
            })
            .map_err(log_error)?;
            if !any {
                break;
            }
        }
        let first = starts.first().copied().unwrap_or(0);
        let n = self.write_events().retain_log(first, &expired);
        if n > 0 {
            // Segment states counted those events: rebuilt when next needed.
            self.engine.states.clear();
        }
        self.conn
            .execute("DELETE FROM rejected WHERE received_at < ?1", [before])?;
        Ok(n as usize)
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

    fn read<T>(&self, f: impl FnOnce(&View<'_>) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let conn = self.reader();
        let events = self.events.read().unwrap_or_else(|e| e.into_inner());
        f(&View {
            conn: &conn,
            events: &events,
            log: &self.log,
        })
    }

    /// See [`crate::store::EventStore::profile`].
    pub fn profile(&self, id: &str) -> Result<Option<ProfileSummary>, StoreError> {
        let mut found = self.read(|v| profile(v, id))?;
        if let Some(p) = &mut found {
            p.segments = read_lock(&self.segments).of_profile(&p.profile_id);
        }
        Ok(found)
    }

    /// See [`crate::store::EventStore::segment`].
    pub fn segment(&self, key: &str) -> Option<SegmentInfo> {
        let segments = read_lock(&self.segments);
        segments.get(key).map(|d| info(&segments, d))
    }

    /// See [`crate::store::EventStore::segments`].
    pub fn segments(&self) -> Vec<SegmentInfo> {
        let segments = read_lock(&self.segments);
        segments.all().map(|d| info(&segments, d)).collect()
    }

    /// See [`crate::store::EventStore::segment_members`].
    pub fn segment_members(
        &self,
        key: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Option<MembersPage>, StoreError> {
        let page = {
            let segments = read_lock(&self.segments);
            if segments.get(key).is_none() {
                return Ok(None);
            }
            segments.members(key, cursor, limit + 1)
        };
        let more = page.len() > limit;
        let mut profiles = Vec::with_capacity(page.len().min(limit));
        for (profile_id, entered_at) in page.into_iter().take(limit) {
            let id = identity::profile_identifier(&profile_id).to_owned();
            let graph = self.read(|v| profile_graph(v, &id))?;
            let (user_ids, anonymous_ids) = graph
                .map(|g| (g.user_ids, g.anonymous_ids))
                .unwrap_or_default();
            profiles.push(SegmentMember {
                profile_id,
                user_ids,
                anonymous_ids,
                entered_at,
            });
        }
        let next = more
            .then(|| profiles.last().map(|p| p.profile_id.clone()))
            .flatten();
        Ok(Some(MembersPage { profiles, next }))
    }

    /// See [`crate::store::EventStore::profile_events`].
    pub fn profile_events(
        &self,
        id: &str,
        limit: usize,
        before: Option<&EventCursor>,
    ) -> Result<Option<EventsPage>, StoreError> {
        self.read(|v| profile_events(v, id, limit, before))
    }

    /// See [`crate::store::EventStore::profile_graph`].
    pub fn profile_graph(&self, id: &str) -> Result<Option<IdentityGraph>, StoreError> {
        self.read(|v| profile_graph(v, id))
    }

    /// See [`crate::store::EventStore::consent_history`].
    pub fn consent_history(&self, id: &str) -> Result<Option<Vec<ConsentEntry>>, StoreError> {
        self.read(|v| consent_history(v, id))
    }

    /// See [`crate::store::EventStore::audience_changes`].
    pub fn audience_changes(
        &self,
        after: i64,
        limit: usize,
    ) -> Result<Vec<crate::store::AudienceChange>, StoreError> {
        let rows: Vec<(i64, String, String, String, bool)> = {
            let conn = self.reader();
            let mut stmt = conn.prepare_cached(
                "SELECT seq, segment, profile_id, at, entered FROM segment_changes
                 WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?;
            stmt.query_map(params![after, limit as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect::<Result<_, _>>()?
        };
        let mut changes = Vec::with_capacity(rows.len());
        for (seq, segment, profile_id, at, entered) in rows {
            let id = identity::profile_identifier(&profile_id).to_owned();
            let found = self.read(|v| profile(v, &id))?;
            let (user_ids, anonymous_ids, consent) = found
                .map(|p| (p.user_ids, p.anonymous_ids, p.consent))
                .unwrap_or_default();
            changes.push(crate::store::AudienceChange {
                seq,
                segment,
                profile_id,
                user_ids,
                anonymous_ids,
                at,
                entered,
                consent,
            });
        }
        Ok(changes)
    }

    /// See [`crate::store::EventStore::last_audience_change`].
    pub fn last_audience_change(&self) -> Result<i64, StoreError> {
        Ok(self.reader().query_row(
            "SELECT coalesce(max(seq), 0) FROM segment_changes",
            [],
            |r| r.get(0),
        )?)
    }

    /// Whether the index answers.
    pub fn check(&self) -> Result<(), StoreError> {
        self.reader()
            .query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))?;
        Ok(())
    }
}

/// The event index, write-locked. A panic while holding the lock cannot
/// leave a posting list half pushed; keep serving.
fn write_lock<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

fn info(segments: &Segments, d: &Definition) -> SegmentInfo {
    SegmentInfo {
        key: d.key.clone(),
        name: d.name.clone(),
        rule: d.rule_json.clone(),
        size: segments.size(&d.key),
        status: if d.ready { "ready" } else { "computing" },
        updated_at: d.updated_at.clone(),
    }
}

/// A lock read; see [`write_lock`].
fn read_lock<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn now_millis(clock: &dyn Clock) -> i64 {
    (clock.now().unix_timestamp_nanos() / 1_000_000) as i64
}

/// What a batch changed, by identifier (for [`Segments::relevant`]) with
/// the indexes of its records, and the profile ids its new edges may have
/// absorbed into others.
fn touched<'r>(
    records: &[(Lsn, RecordRef<'r>)],
    mentions_consent: &[bool],
    skipped: &[usize],
    edges: &'r [(usize, Edge)],
) -> (TouchedIds<'r>, Vec<String>, Vec<bool>) {
    let mut touched = TouchedIds::default();
    let mut consent = vec![false; records.len()];
    for (i, (_, record)) in records.iter().enumerate() {
        let RecordRef::Event { event: e, .. } = record else {
            continue;
        };
        if skipped.binary_search(&i).is_ok() {
            continue;
        }
        consent[i] = e.consent_record.is_some() || mentions_consent[i];
        for id in [e.anonymous_id, e.user_id, e.previous_id]
            .into_iter()
            .flatten()
        {
            let (t, at) = touched.entry(id).or_default();
            if let (weft_protocol::MessageType::Track, Some(name)) = (e.kind, e.event)
                && !t.events.contains(&name)
            {
                t.events.push(name);
            }
            t.traits |= e.kind == weft_protocol::MessageType::Identify;
            t.consent |= consent[i];
            at.push(i);
        }
    }
    let mut absorbed = Vec::new();
    for (_, edge) in edges {
        let (Edge::Link(e) | Edge::Alias(e) | Edge::SameDevice(e)) = edge;
        for id in [&e.from, &e.to] {
            touched.entry(id.as_str()).or_default().0.merged = true;
        }
        match edge {
            Edge::Link(e) => {
                absorbed.push(identity::device_profile_id(&e.from));
                absorbed.push(identity::user_profile_id(&e.to));
            }
            Edge::Alias(e) => {
                absorbed.push(identity::user_profile_id(&e.from));
                absorbed.push(identity::user_profile_id(&e.to));
            }
            Edge::SameDevice(e) => {
                absorbed.push(identity::device_profile_id(&e.from));
                absorbed.push(identity::device_profile_id(&e.to));
            }
        }
    }
    (touched, absorbed, consent)
}

/// What a batch changed per identifier (borrowed from its records), with
/// the indexes of its records.
type TouchedIds<'r> = Map<&'r str, (Touched<'r>, Vec<usize>)>;

/// When each profile with windowed memberships is due to be evaluated
/// again (a randomly seeded hash: senders choose the identifiers; see
/// [`crate::hashing`]).
type DueTimes = Map<String, i64>;

/// A batch as segment evaluation sees it.
struct Batch<'b, 'r> {
    records: &'b [(Lsn, RecordRef<'r>)],
    /// Per record: its event's time in ms.
    times: &'b [i64],
    /// Per record: its body mentions consent preferences.
    consent: Vec<bool>,
    touched: TouchedIds<'b>,
    absorbed: &'b [String],
}

/// Evaluates the profiles of the batch's touched identifiers against the
/// segments their changes make relevant, updating each known profile state
/// with the batch's events (a merged profile, or one with a shared device,
/// is rebuilt from its history); profiles absorbed into another leave every
/// segment. Answers the changes.
fn evaluate(
    view: &View<'_>,
    segments: &mut Segments,
    engine: &mut Engine,
    batch: Batch<'_, '_>,
    now_ms: i64,
    due: &mut DueTimes,
) -> Result<Vec<Change>, StoreError> {
    let now = memory::format_millis(now_ms);
    let mut profiles: Map<String, (Touched<'_>, Vec<usize>)> = Map::default();
    for (id, (t, at)) in batch.touched {
        // Who it is: most identifiers have no edge at all, and need no walk.
        let (profile_id, shared) = match view.events.lone_profile(id) {
            Some(profile_id) => (profile_id, false),
            None => {
                let Some(p) = resolve_with(view, id, false)? else {
                    continue;
                };
                // An anonymous event of a device several people used
                // counts for whoever was logged in then: a full rebuild
                // settles that.
                let shared = view
                    .events
                    .device_links(id)
                    .iter()
                    .map(|l| &l.user_id)
                    .collect::<BTreeSet<_>>()
                    .len()
                    > 1;
                (p.profile_id, shared)
            }
        };
        match profiles.get_mut(&profile_id) {
            Some((seen, records)) => {
                for name in t.events {
                    if !seen.events.contains(&name) {
                        seen.events.push(name);
                    }
                }
                seen.traits |= t.traits;
                seen.consent |= t.consent;
                seen.merged |= t.merged || shared;
                records.extend(at);
            }
            None => {
                let mut t = t;
                t.merged |= shared;
                profiles.insert(profile_id, (t, at));
            }
        }
    }
    let mut changes = Vec::new();
    let gone: BTreeSet<&String> = batch
        .absorbed
        .iter()
        .filter(|id| !profiles.contains_key(*id))
        .collect();
    for id in gone {
        changes.extend(segments.remove_profile(id, &now));
        due.remove(id.as_str());
        engine.states.remove(id);
    }
    let mut member = Vec::new();
    let mut scratch = crate::segments::Scratch::default();
    for (profile_id, (t, mut records)) in profiles {
        // In log order, each once (a record names several identifiers of
        // one profile).
        records.sort_unstable();
        records.dedup();
        // One lookup of the profile's state whatever happens next; its
        // memberships from there when it has them.
        let Engine { families, states } = &mut *engine;
        let entry = states.entry(profile_id.clone());
        let cached = match &entry {
            Entry::Occupied(o) if !t.merged => o.get().member.as_deref(),
            _ => None,
        };
        match cached {
            Some(m) => {
                member.clear();
                member.extend_from_slice(m);
            }
            None => segments.member_mask_into(Some(&profile_id), &mut member),
        }
        segments.relevant_into(&member, &t, &mut scratch);
        let places = &scratch.places;
        let state = match entry {
            Entry::Occupied(known) if !t.merged => {
                // Known: the batch's events added to it.
                let state = known.into_mut();
                for &i in &records {
                    let (lsn, RecordRef::Event { event: e, .. }) = &batch.records[i] else {
                        continue;
                    };
                    let seen = Seen {
                        when: (batch.times.get(i).copied().unwrap_or(0), *lsn),
                        track: (e.kind == weft_protocol::MessageType::Track)
                            .then_some(e.event)
                            .flatten(),
                        identify: e.kind == weft_protocol::MessageType::Identify,
                        consent: batch.consent.get(i).copied().unwrap_or(false),
                    };
                    let only_properties = !seen.identify && !seen.consent;
                    let wanted = seen
                        .track
                        .map_or(&[][..], |n| families.filtered_properties(n));
                    let mut body = || match (only_properties, e.properties) {
                        (true, Some(range)) => Some(Body::Properties(properties_in(
                            e.body.get(range.0 as usize..range.1 as usize)?,
                            0,
                            wanted,
                        ))),
                        (true, None) => properties_only(e.body, wanted).map(Body::Full),
                        _ => serde_json::from_str(e.body).ok().map(Body::Full),
                    };
                    state.add(families, &seen, now_ms, &mut body);
                }
                state
            }
            // Unknown and not asked about, no state to build.
            Entry::Vacant(_) if places.is_empty() && !t.merged => continue,
            entry => {
                // Merged, or first needed: built from the history (which
                // holds this batch already).
                let id = identity::profile_identifier(&profile_id);
                let Some(mut p) = resolve_with(view, id, true)? else {
                    continue;
                };
                p.events.sort();
                let built = build_state(view, &p, families, now_ms);
                match entry {
                    Entry::Occupied(mut o) => {
                        *o.get_mut() = built;
                        o.into_mut()
                    }
                    Entry::Vacant(v) => v.insert(built),
                }
            }
        };
        if !places.is_empty() {
            let mut facts = state.facts(families, now_ms);
            changes.extend(segments.evaluate_with(
                &profile_id,
                places,
                &mut member,
                &mut facts,
                &now,
            ));
            schedule(
                segments,
                segments.any_windows(places),
                state,
                now_ms,
                &profile_id,
                due,
            );
        }
        // `member` holds the memberships as they stand now.
        state
            .member
            .get_or_insert_with(Vec::new)
            .clone_from(&member);
    }
    Ok(changes)
}

/// Remembers when the profile's memberships of segments with windows must
/// be evaluated again: the earliest time one of its events leaves one of
/// their windows. (`windows`: whether one of the segments just evaluated
/// has a window; nothing to do otherwise.)
fn schedule(
    segments: &Segments,
    windows: bool,
    state: &ProfileState,
    now_ms: i64,
    profile_id: &str,
    due: &mut DueTimes,
) {
    if !windows {
        return;
    }
    let next = state.next_change_of(segments.window_pairs(), now_ms);
    // Mostly the same oldest event leaves first: nothing to write.
    if state.scheduled.get() == next {
        return;
    }
    state.scheduled.set(next);
    match next {
        Some(at) => match due.get_mut(profile_id) {
            Some(when) => *when = at,
            None => {
                due.insert(profile_id.to_owned(), at);
            }
        },
        None => {
            due.remove(profile_id);
        }
    }
}

/// `{"properties": {...}}` of a stored body with only the `wanted`
/// properties. A scan, not a parse: stored bodies are valid JSON (the
/// collector wrote them), so the top-level keys are walked by skipping
/// values byte by byte (strings, nesting), without building or checking
/// anything, and only the wanted property values are parsed. It stops at
/// `properties` (a body's `context`, often most of it, is never read
/// when it comes after). Property filters need nothing else; with serde's
/// `IgnoredAny` this was a fifth of the indexer's time with 50 segments.
/// No `properties`, or text that is not an object: `null`; properties that
/// are not an object: `{}`.
pub(crate) fn properties_only<W: AsRef<str>>(
    body: &str,
    wanted: &[W],
) -> Option<serde_json::Value> {
    use serde_json::{Map, Value};
    let wrap = |found: Option<Map<String, Value>>| {
        let mut object = Map::new();
        object.insert(
            "properties".into(),
            found.map_or(Value::Null, Value::Object),
        );
        Some(Value::Object(object))
    };
    let Some(mut members) = json_scan::Members::new(body, 0) else {
        return wrap(None);
    };
    while let Some((key, value)) = members.next() {
        if key == "properties" {
            let picked = properties_in(body, value.start, wanted)
                .into_iter()
                .map(|(name, v)| (name.into_owned(), v))
                .collect();
            return wrap(Some(picked));
        }
    }
    wrap(None)
}

/// The `wanted` members of the object at `start` in `text` (a body's
/// `properties`, as admission located it or a scan found it), parsed, by
/// name, in their order: no map is built.
pub(crate) fn properties_in<'t, W: AsRef<str>>(
    text: &'t str,
    start: usize,
    wanted: &[W],
) -> Vec<(std::borrow::Cow<'t, str>, serde_json::Value)> {
    let mut picked = Vec::new();
    if let Some(mut props) = json_scan::Members::new(text, start) {
        while let Some((name, v)) = props.next() {
            if wanted.iter().any(|w| w.as_ref() == name.as_ref())
                && let Ok(parsed) = serde_json::from_str(&text[v])
            {
                picked.push((name, parsed));
            }
        }
    }
    picked
}

/// Walking the members of JSON objects in text known to be valid, without
/// a parser ([`properties_only`]).
mod json_scan {
    use std::borrow::Cow;
    use std::ops::Range;

    /// The members of the object that starts at `at` (after whitespace).
    pub struct Members<'t> {
        text: &'t str,
        at: usize,
        done: bool,
    }

    impl<'t> Members<'t> {
        /// `None` when no object starts there.
        pub fn new(text: &'t str, at: usize) -> Option<Members<'t>> {
            let at = ws(text.as_bytes(), at);
            (text.as_bytes().get(at) == Some(&b'{')).then_some(Members {
                text,
                at: at + 1,
                done: false,
            })
        }

        /// The next key (unescaped) and the range of its value.
        #[allow(clippy::should_implement_trait)]
        pub fn next(&mut self) -> Option<(Cow<'t, str>, Range<usize>)> {
            if self.done {
                return None;
            }
            let b = self.text.as_bytes();
            let mut i = ws(b, self.at);
            if b.get(i) == Some(&b',') {
                i = ws(b, i + 1);
            }
            if b.get(i) != Some(&b'"') {
                self.done = true;
                return None;
            }
            let key_end = string_end(b, i)?;
            let raw = &self.text[i + 1..key_end - 1];
            let key = if raw.contains('\\') {
                Cow::Owned(serde_json::from_str::<String>(&self.text[i..key_end]).ok()?)
            } else {
                Cow::Borrowed(raw)
            };
            i = ws(b, key_end);
            if b.get(i) != Some(&b':') {
                self.done = true;
                return None;
            }
            let start = ws(b, i + 1);
            let end = value_end(b, start)?;
            self.at = end;
            Some((key, start..end))
        }
    }

    fn ws(b: &[u8], mut i: usize) -> usize {
        while matches!(b.get(i), Some(b' ' | b'\n' | b'\r' | b'\t')) {
            i += 1;
        }
        i
    }

    /// `i` at an opening quote: the index after the closing one.
    fn string_end(b: &[u8], i: usize) -> Option<usize> {
        let mut j = i + 1;
        loop {
            match b.get(j)? {
                b'"' => return Some(j + 1),
                b'\\' => j += 2,
                _ => j += 1,
            }
        }
    }

    /// The index after the value that starts at `i`.
    fn value_end(b: &[u8], i: usize) -> Option<usize> {
        match b.get(i)? {
            b'"' => string_end(b, i),
            b'{' | b'[' => {
                let mut depth = 0usize;
                let mut j = i;
                loop {
                    match b.get(j)? {
                        b'"' => {
                            j = string_end(b, j)?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                return Some(j + 1);
                            }
                        }
                        _ => {}
                    }
                    j += 1;
                }
            }
            _ => {
                let mut j = i;
                while let Some(c) = b.get(j) {
                    if matches!(c, b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t') {
                        break;
                    }
                    j += 1;
                }
                (j > i).then_some(j)
            }
        }
    }
}

/// Stores membership changes: the members table and the history.
fn write_changes(tx: &Connection, changes: &[Change]) -> Result<(), StoreError> {
    if changes.is_empty() {
        return Ok(());
    }
    let mut enter = tx.prepare_cached(
        "INSERT OR REPLACE INTO segment_members (segment, profile_id, entered_at) VALUES (?1, ?2, ?3)",
    )?;
    let mut leave =
        tx.prepare_cached("DELETE FROM segment_members WHERE segment = ?1 AND profile_id = ?2")?;
    let mut history = tx.prepare_cached(
        "INSERT INTO segment_changes (segment, profile_id, at, entered) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for c in changes {
        if c.entered {
            enter.execute(params![c.segment, c.profile_id, c.at])?;
        } else {
            leave.execute(params![c.segment, c.profile_id])?;
        }
        history.execute(params![c.segment, c.profile_id, c.at, c.entered])?;
    }
    Ok(())
}

pub(super) fn log_error(e: crate::log::LogError) -> StoreError {
    StoreError::Log(e.to_string())
}

/// The database's part of a batch: the new identity edges, consent
/// records and rejected messages of the records not `skipped`. Answers
/// whether it wrote anything.
fn write_records(
    tx: &Connection,
    records: &[(Lsn, RecordRef<'_>)],
    skipped: &[usize],
    edges: &[(usize, Edge)],
) -> Result<bool, StoreError> {
    let mut wrote = !edges.is_empty();
    {
        let mut insert_link = tx.prepare_cached(
            "INSERT INTO link_log (anonymous_id, user_id, at, message_id, source)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        let mut insert_alias = tx.prepare_cached(
            "INSERT INTO alias_log (previous_id, user_id, at, message_id, source)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        let mut insert_same = tx.prepare_cached(
            "INSERT INTO device_log (anonymous_id, same_as, at, message_id, source)
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
        let source_of = |i: usize| match records[i].1 {
            RecordRef::Event { source, .. } | RecordRef::Rejected { source, .. } => source,
        };
        for (i, edge) in edges {
            match edge {
                Edge::Link(e) => {
                    insert_link.execute(params![e.from, e.to, e.at, e.message_id, source_of(*i)])?
                }
                Edge::Alias(e) => insert_alias.execute(params![
                    e.from,
                    e.to,
                    e.at,
                    e.message_id,
                    source_of(*i)
                ])?,
                Edge::SameDevice(e) => {
                    insert_same.execute(params![e.from, e.to, e.at, e.message_id, source_of(*i)])?
                }
            };
        }
        for (i, (_, record)) in records.iter().enumerate() {
            match record {
                RecordRef::Event { source, event: e } => {
                    if skipped.binary_search(&i).is_ok() {
                        continue;
                    }
                    if let Some(c) = &e.consent_record {
                        wrote = true;
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
                RecordRef::Rejected {
                    source,
                    rejected: b,
                } => {
                    wrote = true;
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
    }
    Ok(wrote)
}

/// An index made before the edge tables were append-only kept them keyed
/// (`links`, `aliases`): their rows move to `link_log` and `alias_log`.
fn migrate_edges(conn: &Connection) -> Result<(), StoreError> {
    for (old, new, columns, order) in [
        (
            "links",
            "link_log",
            "anonymous_id, user_id, at, message_id, source",
            "at",
        ),
        (
            "aliases",
            "alias_log",
            "previous_id, user_id, at, message_id, source",
            "at",
        ),
    ] {
        let present = exists(
            conn,
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
            old,
        )?;
        if present {
            conn.execute_batch(&format!(
                "BEGIN;
                 INSERT INTO {new} ({columns}) SELECT {columns} FROM {old} ORDER BY {order};
                 DROP TABLE {old};
                 COMMIT;"
            ))?;
        }
    }
    Ok(())
}

pub(super) fn exists(conn: &Connection, sql: &str, arg: &str) -> Result<bool, StoreError> {
    Ok(conn.query_row(sql, [arg], |_| Ok(())).optional()?.is_some())
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

/// Erases profile `p` from the database on the writer connection, then
/// truncates the WAL so no earlier copy of the erased rows stays on disk.
/// Answers the report (its events are `p`'s, which the caller removes from
/// the event index).
fn erase(
    conn: &mut Connection,
    p: &Resolved,
    identifiers: &[String],
    suppression: &Suppression,
    profile_ids: &[String],
) -> Result<ErasureReport, StoreError> {
    let tx = conn.transaction()?;
    for id in profile_ids {
        tx.execute("DELETE FROM segment_members WHERE profile_id = ?1", [id])?;
        tx.execute("DELETE FROM segment_changes WHERE profile_id = ?1", [id])?;
    }
    let mut report = ErasureReport {
        profile_id: p.profile_id.clone(),
        events: p.events.len(),
        identity_edges: 0,
        rejected: 0,
        consent_records: 0,
        suppressed_identifiers: identifiers.len(),
    };
    {
        let mut delete_links =
            tx.prepare_cached("DELETE FROM link_log WHERE user_id = ?1 OR anonymous_id = ?2")?;
        let mut delete_aliases =
            tx.prepare_cached("DELETE FROM alias_log WHERE user_id = ?1 OR previous_id = ?1")?;
        let mut delete_same =
            tx.prepare_cached("DELETE FROM device_log WHERE anonymous_id = ?1 OR same_as = ?1")?;
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
                report.identity_edges += delete_same.execute([ident])?;
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
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_with_keyed_edge_tables_is_migrated_and_its_graph_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let log_dir = dir.path().join("log");
        std::fs::create_dir(&log_dir).unwrap();
        {
            // The edge tables as an older version made them.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE links (anonymous_id TEXT NOT NULL, user_id TEXT NOT NULL,
                     at TEXT NOT NULL, message_id TEXT NOT NULL, source TEXT NOT NULL,
                     PRIMARY KEY (anonymous_id, user_id, at)) WITHOUT ROWID;
                 CREATE TABLE aliases (previous_id TEXT NOT NULL, user_id TEXT NOT NULL,
                     at TEXT NOT NULL, message_id TEXT NOT NULL, source TEXT NOT NULL,
                     PRIMARY KEY (previous_id, user_id)) WITHOUT ROWID;
                 INSERT INTO links VALUES ('d1', 'u1', '2026-01-01T00:00:00.000Z', 'm1', 's');
                 INSERT INTO aliases VALUES ('u0', 'u1', '2026-01-02T00:00:00.000Z', 'm2', 's');",
            )
            .unwrap();
        }
        let clock = Arc::new(crate::clock::SystemClock);
        let (_, readers) = open_index(&path, &log_dir, vec![7; 16], &[], clock).unwrap();
        let graph = readers.profile_graph("d1").unwrap().expect("d1 is known");
        assert_eq!(graph.user_ids, ["u0", "u1"]);
        assert_eq!(graph.anonymous_ids, ["d1"]);
        assert_eq!(graph.edges.len(), 2);
        let conn = Connection::open(&path).unwrap();
        let tables: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(!tables.contains(&"links".to_owned()), "{tables:?}");
        assert!(!tables.contains(&"aliases".to_owned()), "{tables:?}");
    }

    #[test]
    fn properties_are_read_alone_wherever_they_are_in_the_body() {
        let p =
            |body: &str| properties_only(body, &["a", "b", "yes"]).unwrap()["properties"].clone();
        assert_eq!(
            p(
                r#"{"type":"track","properties":{"a":1,"z":2,"b":{"c":"x"}},"context":{"big":[1,2,3]}}"#
            ),
            serde_json::json!({"a": 1, "b": {"c": "x"}}),
            "only the wanted properties"
        );
        assert_eq!(p(r#"{"properties":[1,2]}"#), serde_json::json!({}));
        assert_eq!(
            p(r#"{"context":{"properties":{"no":1}},"properties":{"yes":"\u00e9"}}"#),
            serde_json::json!({"yes": "é"})
        );
        assert_eq!(p(r#"{"type":"track"}"#), serde_json::Value::Null);
        assert_eq!(p("not json"), serde_json::Value::Null);
        // Strings holding brackets and quotes, escaped keys, whitespace.
        assert_eq!(
            p(
                r#" { "x" : "}{\"]" , "n": [1, {"properties": 2}], "propert\u0069es" : { "z" : "]" , "a" : [1,{"b":"}"}], "b":-1.5e3 } } "#
            ),
            serde_json::json!({"a": [1, {"b": "}"}], "b": -1500.0})
        );
        assert_eq!(
            p(r#"{"a":true,"properties":{"yes":null}}"#),
            serde_json::json!({"yes": null})
        );
    }
}
