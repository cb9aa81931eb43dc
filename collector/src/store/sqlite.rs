//! The embedded store: SQLite in WAL mode in the data directory.
//!
//! One writer thread owns the write connection. It takes the first waiting
//! request, drains whatever else is queued (up to a bound), writes them all
//! in one transaction and commits once: one fsync for the whole group
//! (`synchronous=FULL`, so a commit is on disk when it returns). Only then
//! are the requests answered. Reads use a separate connection; WAL lets them
//! run beside the writer.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::WriterStats;

use super::{AppendOutcome, AppendRequest, EventStore, Pending, ProfileSummary, StoreError};

/// The database file inside the data directory.
pub const DB_FILE: &str = "weft.sqlite";
/// Most requests committed in one transaction.
const MAX_GROUP: usize = 512;
/// Most identifiers one profile lookup walks before stopping.
const MAX_PROFILE_IDS: usize = 1000;

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
    body         TEXT NOT NULL,
    UNIQUE (source, message_id)
);
CREATE INDEX IF NOT EXISTS events_by_anonymous_id ON events (anonymous_id, timestamp);
CREATE INDEX IF NOT EXISTS events_by_user_id ON events (user_id, timestamp);
CREATE TABLE IF NOT EXISTS rejected (
    seq         INTEGER PRIMARY KEY,
    source      TEXT NOT NULL,
    received_at TEXT NOT NULL,
    code        TEXT NOT NULL,
    reason      TEXT NOT NULL,
    raw         TEXT NOT NULL
);
PRAGMA user_version = 1;
";

struct Job {
    request: AppendRequest,
    reply: oneshot::Sender<Result<AppendOutcome, StoreError>>,
}

/// SQLite-backed [`EventStore`].
pub struct SqliteStore {
    sender: RwLock<Option<mpsc::Sender<Job>>>,
    capacity: usize,
    writer: Mutex<Option<JoinHandle<()>>>,
    reader: Mutex<Connection>,
}

fn open(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a commit returns only after the WAL is synced.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `data_dir` and starts the
    /// writer with a queue of `queue_capacity` requests.
    pub fn open(
        data_dir: &Path,
        queue_capacity: usize,
        stats: Arc<WriterStats>,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir)?;
        let path = data_dir.join(DB_FILE);
        let mut writer_conn = open(&path)?;
        writer_conn.execute_batch(SCHEMA)?;
        let reader = open(&path)?;
        let (tx, rx) = mpsc::channel(queue_capacity.max(1));
        let writer = std::thread::Builder::new()
            .name("weft-writer".into())
            .spawn(move || writer_loop(&mut writer_conn, rx, &stats))?;
        Ok(SqliteStore {
            sender: RwLock::new(Some(tx)),
            capacity: queue_capacity.max(1),
            writer: Mutex::new(Some(writer)),
            reader: Mutex::new(reader),
        })
    }

    fn reader(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave the connection in a
        // state worse than SQLite's own rollback; keep serving.
        self.reader.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn writer_loop(conn: &mut Connection, mut rx: mpsc::Receiver<Job>, stats: &WriterStats) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while let Some(first) = rx.blocking_recv() {
        group.push(first);
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        match commit_group(conn, &group) {
            Ok(outcomes) => {
                stats.commit_seconds.observe(started.elapsed());
                stats.commits.fetch_add(1, Ordering::Relaxed);
                stats
                    .committed_requests
                    .fetch_add(group.len() as u64, Ordering::Relaxed);
                tracing::debug!(
                    requests = group.len(),
                    micros = started.elapsed().as_micros() as u64,
                    "group committed"
                );
                for (job, outcome) in group.drain(..).zip(outcomes) {
                    let _ = job.reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, requests = group.len(), "group commit failed");
                for job in group.drain(..) {
                    let _ = job.reply.send(Err(StoreError::Closed));
                }
            }
        }
    }
}

fn commit_group(conn: &mut Connection, group: &[Job]) -> Result<Vec<AppendOutcome>, StoreError> {
    let tx = conn.transaction()?;
    let mut outcomes = Vec::with_capacity(group.len());
    {
        let mut insert_event = tx.prepare_cached(
            "INSERT OR IGNORE INTO events
             (source, message_id, type, event, anonymous_id, user_id, timestamp, received_at, ip, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        let mut insert_rejected = tx.prepare_cached(
            "INSERT INTO rejected (source, received_at, code, reason, raw) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for job in group {
            let r = &job.request;
            let mut outcome = AppendOutcome::default();
            for e in &r.events {
                let n = insert_event.execute(params![
                    r.source,
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
                if n == 1 {
                    outcome.stored += 1;
                } else {
                    outcome.duplicates += 1;
                }
            }
            for b in &r.rejected {
                insert_rejected.execute(params![
                    r.source,
                    b.received_at,
                    b.code,
                    b.reason,
                    b.raw
                ])?;
                outcome.rejected += 1;
            }
            outcomes.push(outcome);
        }
    }
    tx.commit()?;
    Ok(outcomes)
}

impl EventStore for SqliteStore {
    fn append(&self, request: AppendRequest) -> Result<Pending, StoreError> {
        let (reply, pending) = oneshot::channel();
        let guard = self.sender.read().unwrap_or_else(|e| e.into_inner());
        let sender = guard.as_ref().ok_or(StoreError::Closed)?;
        sender
            .try_send(Job { request, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => StoreError::Overloaded,
                mpsc::error::TrySendError::Closed(_) => StoreError::Closed,
            })?;
        Ok(pending)
    }

    fn profile(&self, id: &str) -> Result<Option<ProfileSummary>, StoreError> {
        let conn = self.reader();
        profile(&conn, id)
    }

    fn check_ready(&self) -> Result<(), StoreError> {
        if self
            .sender
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
        {
            return Err(StoreError::Closed);
        }
        let conn = self.reader();
        conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))?;
        Ok(())
    }

    fn queue_depth(&self) -> usize {
        let guard = self.sender.read().unwrap_or_else(|e| e.into_inner());
        guard
            .as_ref()
            .map(|s| self.capacity - s.capacity())
            .unwrap_or(0)
    }

    fn close(&self) {
        // Dropping the last sender lets the writer drain the queue and stop.
        self.sender
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let handle = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.close();
    }
}

/// Walks the identifiers linked to `id` through events that carry both an
/// anonymousId and a userId, and sums up their events.
///
/// This is the walking skeleton's identity resolution (any shared link
/// joins); the identity graph replaces it.
fn profile(conn: &Connection, id: &str) -> Result<Option<ProfileSummary>, StoreError> {
    let mut anonymous: Vec<String> = Vec::new();
    let mut users: Vec<String> = Vec::new();
    let known_as_anonymous: bool = conn
        .query_row(
            "SELECT 1 FROM events WHERE anonymous_id = ?1 LIMIT 1",
            [id],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    let known_as_user: bool = conn
        .query_row(
            "SELECT 1 FROM events WHERE user_id = ?1 LIMIT 1",
            [id],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if known_as_anonymous {
        anonymous.push(id.to_owned());
    }
    if known_as_user {
        users.push(id.to_owned());
    }
    if anonymous.is_empty() && users.is_empty() {
        return Ok(None);
    }
    let mut users_of = conn.prepare_cached(
        "SELECT DISTINCT user_id FROM events WHERE anonymous_id = ?1 AND user_id IS NOT NULL",
    )?;
    let mut anonymous_of = conn.prepare_cached(
        "SELECT DISTINCT anonymous_id FROM events WHERE user_id = ?1 AND anonymous_id IS NOT NULL",
    )?;
    let (mut a_done, mut u_done) = (0, 0);
    while (a_done < anonymous.len() || u_done < users.len())
        && anonymous.len() + users.len() < MAX_PROFILE_IDS
    {
        while a_done < anonymous.len() {
            let a = anonymous[a_done].clone();
            a_done += 1;
            for u in users_of.query_map([&a], |r| r.get::<_, String>(0))? {
                let u = u?;
                if !users.contains(&u) {
                    users.push(u);
                }
            }
        }
        while u_done < users.len() {
            let u = users[u_done].clone();
            u_done += 1;
            for a in anonymous_of.query_map([&u], |r| r.get::<_, String>(0))? {
                let a = a?;
                if !anonymous.contains(&a) {
                    anonymous.push(a);
                }
            }
        }
    }
    anonymous.sort();
    users.sort();

    // An event carrying a linked anonymousId and a linked userId is found
    // twice; keying by seq counts it once.
    let mut events = std::collections::HashMap::new();
    let mut rows = conn.prepare_cached(
        "SELECT seq, timestamp FROM events WHERE anonymous_id = ?1
         UNION ALL SELECT seq, timestamp FROM events WHERE user_id = ?1",
    )?;
    for id in anonymous.iter().chain(users.iter()) {
        for row in rows.query_map([id], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))? {
            let (seq, ts) = row?;
            events.insert(seq, ts);
        }
    }
    let first = events.values().min().cloned().unwrap_or_default();
    let last = events.values().max().cloned().unwrap_or_default();
    let profile_id = users
        .first()
        .map(|u| format!("user:{u}"))
        .unwrap_or_else(|| format!("anon:{}", anonymous[0]));
    Ok(Some(ProfileSummary {
        profile_id,
        user_ids: users,
        anonymous_ids: anonymous,
        first_seen: first,
        last_seen: last,
        event_count: events.len() as u64,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NewEvent;
    use weft_protocol::MessageType;

    fn request(source: &str, n: usize, tag: &str) -> AppendRequest {
        AppendRequest {
            source: source.into(),
            events: (0..n)
                .map(|i| NewEvent {
                    message_id: format!("{tag}-{i}"),
                    kind: MessageType::Track,
                    event: Some("E".into()),
                    anonymous_id: Some(format!("a-{}", i % 50)),
                    user_id: None,
                    timestamp: "2026-11-23T10:00:00.000Z".into(),
                    received_at: "2026-11-23T10:00:00.000Z".into(),
                    ip: None,
                    body: "{}".into(),
                })
                .collect(),
            rejected: Vec::new(),
        }
    }

    #[test]
    fn a_full_write_queue_answers_overloaded_and_loses_nothing_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(WriterStats::default());
        let store = SqliteStore::open(dir.path(), 1, stats.clone()).unwrap();
        // A large first request keeps the writer busy for a while...
        let first = store.append(request("s", 100_000, "big")).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        // ...so one more fills the queue of one, and the next is refused.
        let second = store.append(request("s", 1, "second")).unwrap();
        assert!(matches!(
            store.append(request("s", 1, "third")),
            Err(StoreError::Overloaded)
        ));
        assert_eq!(first.blocking_recv().unwrap().unwrap().stored, 100_000);
        assert_eq!(second.blocking_recv().unwrap().unwrap().stored, 1);
        // Once drained, the refused request goes through on retry.
        let third = store.append(request("s", 1, "third")).unwrap();
        assert_eq!(third.blocking_recv().unwrap().unwrap().stored, 1);
        assert_eq!(stats.committed_requests.load(Ordering::Relaxed), 3);
        assert_eq!(
            stats.commit_seconds.count(),
            stats.commits.load(Ordering::Relaxed)
        );
    }

    #[test]
    fn duplicates_are_counted_per_source() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), 8, Arc::default()).unwrap();
        let a = store
            .append(request("s1", 3, "m"))
            .unwrap()
            .blocking_recv()
            .unwrap()
            .unwrap();
        let b = store
            .append(request("s1", 3, "m"))
            .unwrap()
            .blocking_recv()
            .unwrap()
            .unwrap();
        let c = store
            .append(request("s2", 3, "m"))
            .unwrap()
            .blocking_recv()
            .unwrap()
            .unwrap();
        assert_eq!((a.stored, a.duplicates), (3, 0));
        assert_eq!((b.stored, b.duplicates), (0, 3));
        assert_eq!(
            (c.stored, c.duplicates),
            (3, 0),
            "same messageId, other source"
        );
    }

    #[test]
    fn closing_commits_what_is_queued() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), 64, Arc::default()).unwrap();
        let pending: Vec<_> = (0..20)
            .map(|i| store.append(request("s", 10, &format!("r{i}"))).unwrap())
            .collect();
        store.close();
        assert!(matches!(
            store.append(request("s", 1, "late")),
            Err(StoreError::Closed)
        ));
        for p in pending {
            assert_eq!(p.blocking_recv().unwrap().unwrap().stored, 10);
        }
        drop(store);
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 200);
    }
}
