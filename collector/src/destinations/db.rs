//! What destinations keep on disk, in their own SQLite file next to the
//! log (`destinations.db`): each destination's settings, its durable
//! position in the log and in the audience history, its counters, and its
//! dead letters with their messages (so erasure can remove a person's).
//!
//! A separate file from the index: destinations commit after each
//! delivered batch, and would otherwise queue behind the indexer's large
//! transactions.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension as _, params};

use super::DestinationError;
use super::outbox::Item;
use crate::log::Lsn;

/// The file in the data directory.
pub const DB_FILE: &str = "destinations.db";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS destinations (
    name         TEXT PRIMARY KEY,
    config       TEXT NOT NULL,
    position     INTEGER NOT NULL,
    audience_seq INTEGER NOT NULL,
    delivered    INTEGER NOT NULL DEFAULT 0,
    failed       INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT,
    -- The file kind's open file: its hour and how many bytes are delivered.
    file_state   TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dead (
    id               INTEGER PRIMARY KEY,
    destination      TEXT NOT NULL,
    batch_id         TEXT NOT NULL,
    audience         INTEGER NOT NULL,
    attempts         INTEGER NOT NULL,
    last_status      INTEGER,
    last_error       TEXT NOT NULL,
    first_attempt_at TEXT NOT NULL,
    last_attempt_at  TEXT NOT NULL,
    response_sample  TEXT NOT NULL,
    replay           INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS dead_by_destination ON dead (destination, id);
CREATE TABLE IF NOT EXISTS dead_items (
    dead_id     INTEGER NOT NULL,
    n           INTEGER NOT NULL,
    lsn         INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    ids         TEXT NOT NULL,
    body        TEXT NOT NULL,
    PRIMARY KEY (dead_id, n)
) WITHOUT ROWID;
";

/// The schema version (`PRAGMA user_version`): 0 before versions were
/// recorded (the same tables), 1 since.
pub const DB_VERSION: i64 = 1;

/// Opens (creating, mode 0600) the database; refuses one written by a newer
/// weft.
pub fn open(dir: &Path) -> Result<Connection, DestinationError> {
    let path = dir.join(DB_FILE);
    // 0600 from the start (the store made the files before it 0600).
    crate::store::embedded::create_private_file(&path)
        .map_err(|e| DestinationError::Io(format!("{}: {e}", path.display())))?;
    let conn = Connection::open(&path)?;
    crate::store::version::sqlite_version(&conn, DB_FILE, DB_VERSION)
        .map_err(|e| DestinationError::Db(e.to_string()))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // A crash of the process loses nothing committed; a power loss may
    // lose the last positions, and delivery repeats those batches (at
    // least once, never lost).
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "secure_delete", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.execute_batch(SCHEMA)?;
    conn.pragma_update(None, "user_version", DB_VERSION)?;
    Ok(conn)
}

/// A destination's row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Its stored settings (JSON, secrets included).
    pub config: String,
    /// Log position.
    pub position: Lsn,
    /// Audience history position.
    pub audience_seq: i64,
    /// Messages delivered.
    pub delivered: u64,
    /// Attempts that failed.
    pub failed: u64,
    /// The last failure.
    pub last_error: Option<String>,
    /// The file kind's state.
    pub file_state: Option<String>,
}

/// Every destination's name and row.
pub fn all(conn: &Connection) -> Result<Vec<(String, Row)>, DestinationError> {
    let mut stmt = conn.prepare(
        "SELECT name, config, position, audience_seq, delivered, failed, last_error, file_state
         FROM destinations ORDER BY name",
    )?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                Row {
                    config: r.get(1)?,
                    position: r.get::<_, i64>(2)? as Lsn,
                    audience_seq: r.get(3)?,
                    delivered: r.get::<_, i64>(4)? as u64,
                    failed: r.get::<_, i64>(5)? as u64,
                    last_error: r.get(6)?,
                    file_state: r.get(7)?,
                },
            ))
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// One destination's row.
pub fn get(conn: &Connection, name: &str) -> Result<Option<Row>, DestinationError> {
    Ok(all(conn)?
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, r)| r))
}

/// Creates a destination at a position, or replaces its settings (its
/// positions and counters stay).
pub fn upsert(
    conn: &Connection,
    name: &str,
    config: &str,
    position: Lsn,
    audience_seq: i64,
) -> Result<(), DestinationError> {
    conn.execute(
        "INSERT INTO destinations (name, config, position, audience_seq) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (name) DO UPDATE SET config = excluded.config",
        params![name, config, position as i64, audience_seq],
    )?;
    Ok(())
}

/// Removes a destination and its dead letters.
pub fn delete(conn: &mut Connection, name: &str) -> Result<bool, DestinationError> {
    let tx = conn.transaction()?;
    tx.execute(
        "DELETE FROM dead_items WHERE dead_id IN (SELECT id FROM dead WHERE destination = ?1)",
        [name],
    )?;
    tx.execute("DELETE FROM dead WHERE destination = ?1", [name])?;
    let n = tx.execute("DELETE FROM destinations WHERE name = ?1", [name])?;
    tx.commit()?;
    Ok(n > 0)
}

/// What a finished batch changes.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// New log position, if it moved.
    pub position: Option<Lsn>,
    /// New audience position, if it moved.
    pub audience_seq: Option<i64>,
    /// Messages delivered.
    pub delivered: u64,
    /// Attempts failed.
    pub failed: u64,
    /// The last failure, if any since the last save.
    pub last_error: Option<String>,
    /// The file kind's state, if it changed.
    pub file_state: Option<String>,
}

fn save_in(tx: &Connection, name: &str, p: &Progress) -> Result<(), DestinationError> {
    tx.prepare_cached(
        "UPDATE destinations SET
            position = coalesce(?2, position),
            audience_seq = coalesce(?3, audience_seq),
            delivered = delivered + ?4,
            failed = failed + ?5,
            last_error = coalesce(?6, last_error),
            file_state = coalesce(?7, file_state)
         WHERE name = ?1",
    )?
    .execute(params![
        name,
        p.position.map(|l| l as i64),
        p.audience_seq,
        p.delivered as i64,
        p.failed as i64,
        p.last_error,
        p.file_state,
    ])?;
    Ok(())
}

/// Saves progress.
pub fn save(conn: &Connection, name: &str, p: &Progress) -> Result<(), DestinationError> {
    save_in(conn, name, p)
}

/// A dead batch as it is moved to the dead letters.
#[derive(Debug, Clone)]
pub struct DeadBatch<'a> {
    /// Its `webhook-id`.
    pub batch_id: &'a str,
    /// Audience changes (else events).
    pub audience: bool,
    /// Attempts made.
    pub attempts: u32,
    /// The last HTTP status.
    pub last_status: Option<u16>,
    /// The last error.
    pub last_error: &'a str,
    /// RFC 3339.
    pub first_attempt_at: &'a str,
    /// RFC 3339.
    pub last_attempt_at: &'a str,
    /// The start of the last response.
    pub response_sample: &'a str,
    /// Its messages.
    pub items: &'a [std::sync::Arc<Item>],
}

/// Moves a batch to the dead letters and saves progress, atomically.
/// `replayed`: the dead row it came from (replaced).
pub fn bury(
    conn: &mut Connection,
    name: &str,
    dead: &DeadBatch<'_>,
    replayed: Option<i64>,
    p: &Progress,
) -> Result<(), DestinationError> {
    let tx = conn.transaction()?;
    if let Some(id) = replayed {
        tx.execute(
            "UPDATE dead SET replay = 0, attempts = attempts + ?2, last_status = ?3,
                last_error = ?4, last_attempt_at = ?5, response_sample = ?6 WHERE id = ?1",
            params![
                id,
                dead.attempts,
                dead.last_status,
                dead.last_error,
                dead.last_attempt_at,
                dead.response_sample
            ],
        )?;
    } else {
        tx.execute(
            "INSERT INTO dead (destination, batch_id, audience, attempts, last_status, last_error,
                first_attempt_at, last_attempt_at, response_sample)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                name,
                dead.batch_id,
                dead.audience,
                dead.attempts,
                dead.last_status,
                dead.last_error,
                dead.first_attempt_at,
                dead.last_attempt_at,
                dead.response_sample
            ],
        )?;
        let id = tx.last_insert_rowid();
        let mut insert = tx.prepare_cached(
            "INSERT INTO dead_items (dead_id, n, lsn, received_ms, kind, ids, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for (n, item) in dead.items.iter().enumerate() {
            insert.execute(params![
                id,
                n as i64,
                item.lsn as i64,
                item.received_ms,
                item.kind.as_str(),
                item.ids.join("\n"),
                item.body
            ])?;
        }
    }
    save_in(&tx, name, p)?;
    tx.commit()?;
    Ok(())
}

/// A dead letter as the API lists it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DeadLetter {
    /// Its id (for replay).
    pub id: i64,
    /// Attempts made.
    pub attempts: u32,
    /// The last HTTP status.
    pub last_status: Option<u16>,
    /// The last error.
    pub last_error: String,
    /// RFC 3339.
    pub first_attempt_at: String,
    /// RFC 3339.
    pub last_attempt_at: String,
    /// The start of the request's body, as it would be sent now.
    pub request_sample: String,
    /// The start of the last response.
    pub response_sample: String,
}

/// Most bytes of a request sample.
const REQUEST_SAMPLE: usize = 1024;

/// A page of dead letters after `cursor` (an id), oldest first.
pub fn dead_page(
    conn: &Connection,
    name: &str,
    after: i64,
    limit: usize,
) -> Result<Vec<DeadLetter>, DestinationError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, attempts, last_status, last_error, first_attempt_at, last_attempt_at,
                response_sample, audience
         FROM dead WHERE destination = ?1 AND id > ?2 AND replay = 0 ORDER BY id LIMIT ?3",
    )?;
    let rows: Vec<(DeadLetter, bool)> = stmt
        .query_map(params![name, after, limit as i64], |r| {
            Ok((
                DeadLetter {
                    id: r.get(0)?,
                    attempts: r.get(1)?,
                    last_status: r.get(2)?,
                    last_error: r.get(3)?,
                    first_attempt_at: r.get(4)?,
                    last_attempt_at: r.get(5)?,
                    request_sample: String::new(),
                    response_sample: r.get(6)?,
                },
                r.get(7)?,
            ))
        })?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::with_capacity(rows.len());
    for (mut d, audience) in rows {
        let items = dead_items(conn, d.id)?;
        let batch = super::delivery::Batch {
            id: String::new(),
            audience,
            items,
        };
        let body = super::webhook::body(&batch, &d.last_attempt_at);
        let body = String::from_utf8_lossy(&body);
        d.request_sample = crate::admission::truncate(&body, REQUEST_SAMPLE).to_owned();
        out.push(d);
    }
    Ok(out)
}

/// A dead batch's messages.
pub fn dead_items(
    conn: &Connection,
    id: i64,
) -> Result<Vec<std::sync::Arc<Item>>, DestinationError> {
    let mut stmt = conn.prepare_cached(
        "SELECT lsn, received_ms, kind, ids, body FROM dead_items WHERE dead_id = ?1 ORDER BY n",
    )?;
    let items = stmt
        .query_map([id], |r| {
            let kind: String = r.get(2)?;
            let ids: String = r.get(3)?;
            Ok(std::sync::Arc::new(Item {
                lsn: r.get::<_, i64>(0)? as Lsn,
                received_ms: r.get(1)?,
                kind: weft_protocol::MessageType::parse(&kind)
                    .unwrap_or(weft_protocol::MessageType::Track),
                ids: ids
                    .split('\n')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
                body: r.get(4)?,
            }))
        })?
        .collect::<Result<_, _>>()?;
    Ok(items)
}

/// Marks dead letters for replay (`ids` empty: all of them); answers how many.
pub fn mark_replay(conn: &Connection, name: &str, ids: &[i64]) -> Result<usize, DestinationError> {
    if ids.is_empty() {
        return Ok(conn.execute(
            "UPDATE dead SET replay = 1 WHERE destination = ?1 AND replay = 0",
            [name],
        )?);
    }
    let mut n = 0;
    for id in ids {
        n += conn.execute(
            "UPDATE dead SET replay = 1 WHERE destination = ?1 AND id = ?2 AND replay = 0",
            params![name, id],
        )?;
    }
    Ok(n)
}

/// A dead letter marked for replay.
#[derive(Debug, Clone)]
pub struct Replay {
    /// Its id.
    pub id: i64,
    /// Its `webhook-id`.
    pub batch_id: String,
    /// Audience changes (else events).
    pub audience: bool,
    /// Its messages.
    pub items: Vec<std::sync::Arc<Item>>,
}

/// The next dead letter marked for replay.
pub fn next_replay(conn: &Connection, name: &str) -> Result<Option<Replay>, DestinationError> {
    let row: Option<(i64, String, bool)> = conn
        .query_row(
            "SELECT id, batch_id, audience FROM dead WHERE destination = ?1 AND replay = 1
             ORDER BY id LIMIT 1",
            [name],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((id, batch_id, audience)) = row else {
        return Ok(None);
    };
    let items = dead_items(conn, id)?;
    Ok(Some(Replay {
        id,
        batch_id,
        audience,
        items,
    }))
}

/// A replayed dead letter was delivered: it goes, and progress is saved.
pub fn resolve(
    conn: &mut Connection,
    name: &str,
    id: i64,
    p: &Progress,
) -> Result<(), DestinationError> {
    let tx = conn.transaction()?;
    tx.execute("DELETE FROM dead_items WHERE dead_id = ?1", [id])?;
    tx.execute("DELETE FROM dead WHERE id = ?1", [id])?;
    save_in(&tx, name, p)?;
    tx.commit()?;
    Ok(())
}

/// How many messages are in a destination's dead letters.
pub fn dead_count(conn: &Connection, name: &str) -> Result<u64, DestinationError> {
    Ok(conn.query_row(
        "SELECT count(*) FROM dead_items
         WHERE dead_id IN (SELECT id FROM dead WHERE destination = ?1 AND replay = 0)",
        [name],
        |r| r.get::<_, i64>(0),
    )? as u64)
}

/// Removes dead messages that match (erasure, retention), and dead
/// batches left empty; the response samples of batches that lost a
/// message are blanked (a receiver may have echoed it). Answers how many
/// messages went.
pub fn remove_dead(
    conn: &mut Connection,
    gone: impl Fn(Lsn, i64, &[&str]) -> bool,
) -> Result<usize, DestinationError> {
    let tx = conn.transaction()?;
    let doomed: Vec<(i64, i64)> = {
        let mut stmt = tx.prepare("SELECT dead_id, n, lsn, received_ms, ids FROM dead_items")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)? as Lsn,
                r.get::<_, i64>(3)?,
                r.get::<_, String>(4)?,
            ))
        })?;
        let mut doomed = Vec::new();
        for row in rows {
            let (dead_id, n, lsn, received_ms, ids) = row?;
            let ids: Vec<&str> = ids.split('\n').filter(|s| !s.is_empty()).collect();
            if gone(lsn, received_ms, &ids) {
                doomed.push((dead_id, n));
            }
        }
        doomed
    };
    for (dead_id, n) in &doomed {
        tx.execute(
            "DELETE FROM dead_items WHERE dead_id = ?1 AND n = ?2",
            params![dead_id, n],
        )?;
        tx.execute(
            "UPDATE dead SET response_sample = '' WHERE id = ?1",
            [dead_id],
        )?;
    }
    tx.execute(
        "DELETE FROM dead WHERE id NOT IN (SELECT DISTINCT dead_id FROM dead_items)",
        [],
    )?;
    tx.commit()?;
    Ok(doomed.len())
}
