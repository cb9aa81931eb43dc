//! The embedded store: the event log and its index in one data directory.
//!
//! ```text
//! ingest --append--> [log writer thread] --group: 1 write + 1 fdatasync--> log/*.log
//!                      dedup window, suppression          | durable position
//!                      answers each request once synced   v
//!                                            [indexer thread] --batches--> weft.sqlite
//!                                                 erasure, retention      (derived, rebuildable)
//! admin reads: wait until the indexer has passed the durable position seen
//! when the read started, then read the index.
//! ```
//!
//! - The log writer is the only writer of the log. It takes every append
//!   queued while it was syncing, drops what an erasure suppressed and what
//!   its dedup window has seen (same source and messageId), frames the rest
//!   and writes them with one `write` and one `fdatasync`, then answers
//!   every request of the group. A 200 therefore means "on disk".
//! - The indexer reads the log from its own durable position (kept in the
//!   index, in the transaction that applies the records) and applies large
//!   batches. It is a consumer like the segments and destinations to come:
//!   a thread with a [`LogReader`], a position, and a way to wait for more.
//! - Erasure: suppress the identifiers (suppression file, synced; the
//!   writer admits none of them from then on), erase them in the index,
//!   then rewrite the log segments that hold their records.
//! - Retention: delete old events from the index, then drop whole log
//!   segments older than the cutoff that the indexer has passed.

use std::collections::{HashSet, VecDeque};
use std::hash::BuildHasher as _;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock, mpsc as sync_mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::clock::Clock;
use crate::consumer::{ConsumerId, Progress};
use crate::log::{LogOptions, Lsn, SegmentLog};
use crate::metrics::{Gauges, WriterStats};
use crate::record::{self, Record};

use super::sqlite::{Erasure, IndexReaders, IndexWriter, Pass, open_index};
use super::suppression::{self, IdHash, Suppression};
use super::{
    AppendOutcome, AppendRequest, AudienceChange, ConsentEntry, ErasureReport, EventCursor,
    EventStore, EventsPage, Following, IdentityGraph, MembersPage, NewEvent, Pending,
    ProfileSummary, ReadSide, SegmentInfo, StoreError, StoreListener, WriteSide,
};

/// The log's directory inside the data directory.
pub const LOG_DIR: &str = "log";
/// Most requests written in one group.
const MAX_GROUP: usize = 1024;
/// How long an admin read waits for the indexer before answering 503.
const READ_WAIT: Duration = Duration::from_secs(10);

/// Settings of the embedded store.
#[derive(Clone)]
pub struct StoreOptions {
    /// Bound of the write queue, in requests.
    pub queue_capacity: usize,
    /// How many recent (source, messageId) pairs the ack path remembers.
    pub dedup_window: usize,
    /// Log segment size before rollover, in bytes.
    pub segment_bytes: u64,
    /// Most records the index may be behind the log before the writer
    /// waits for it (backpressure: the log may not simply grow, and a read
    /// never waits long for its writes).
    pub max_index_lag: u64,
    /// The collector's clock: segment windows slide by it.
    pub clock: Arc<dyn Clock>,
}

impl StoreOptions {
    /// The options a collector's configuration asks for.
    pub fn for_config(config: &crate::Config) -> Self {
        StoreOptions {
            queue_capacity: config.write_queue_capacity,
            dedup_window: config.dedup_window,
            ..StoreOptions::default()
        }
    }
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            queue_capacity: 1024,
            dedup_window: 10_000_000,
            segment_bytes: 64 * 1024 * 1024,
            max_index_lag: 60_000,
            clock: Arc::new(crate::clock::SystemClock),
        }
    }
}

/// Work for the log writer.
enum WriterJob {
    Append {
        request: AppendRequest,
        reply: oneshot::Sender<Result<AppendOutcome, StoreError>>,
    },
    /// Admit none of these identifiers from now on.
    Suppress {
        hashes: Vec<IdHash>,
        reply: sync_mpsc::SyncSender<Result<(), StoreError>>,
    },
    /// Rewrite the segments holding these records without them.
    Remove {
        erased: Erased,
        reply: sync_mpsc::SyncSender<Result<u64, StoreError>>,
    },
    /// Drop whole segments received before a time, below a position.
    DropExpired {
        before: String,
        below: Lsn,
        reply: sync_mpsc::SyncSender<Result<usize, StoreError>>,
    },
}

/// What of an erased person the log must drop.
struct Erased {
    identifiers: HashSet<String>,
    /// The LSNs of their events the index removed (a shared device's
    /// events attributed to them carry no erased identifier).
    lsns: HashSet<Lsn>,
}

impl Erased {
    fn matches(&self, lsn: Lsn, payload: &[u8]) -> bool {
        if self.lsns.contains(&lsn) {
            return true;
        }
        match record::decode(payload) {
            // (The same-device ID too: nothing of them stays in clear, even
            // beside another ID's message.)
            Ok(Record::Event { event: e, .. }) => {
                [&e.anonymous_id, &e.user_id, &e.previous_id, &e.same_device]
                    .into_iter()
                    .flatten()
                    .any(|id| self.identifiers.contains(id))
            }
            // The same rule as the index: a rejected message naming them.
            Ok(Record::Rejected { rejected, .. }) => self.identifiers.iter().any(|id| {
                serde_json::to_string(id).is_ok_and(|quoted| rejected.raw.contains(&quoted))
            }),
            Err(_) => false,
        }
    }
}

/// The embedded [`EventStore`]: a segment log and a SQLite index.
pub struct EmbeddedStore {
    sender: RwLock<Option<mpsc::Sender<WriterJob>>>,
    capacity: usize,
    progress: Arc<Progress>,
    /// The index, the first consumer of the log.
    index: ConsumerId,
    readers: IndexReaders,
    threads: Mutex<Vec<JoinHandle<()>>>,
    log_dir: PathBuf,
    /// Told of erasures and expiries (destinations).
    listeners: RwLock<Vec<Arc<dyn StoreListener>>>,
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `data_dir` (mode 0700):
    /// recovers the log, rebuilds the dedup window from it, and starts the
    /// log writer and the indexer.
    pub fn open(
        data_dir: &Path,
        options: StoreOptions,
        stats: Arc<WriterStats>,
    ) -> Result<Self, StoreError> {
        create_private_dir(data_dir)?;
        // Before anything is opened for writing: a newer format is refused
        // untouched.
        super::version::check(data_dir)?;
        let log_dir = data_dir.join(LOG_DIR);
        let (log, recovery) = SegmentLog::open(
            &log_dir,
            LogOptions {
                segment_bytes: options.segment_bytes,
            },
        )
        .map_err(log_error)?;
        if recovery.truncated_bytes > 0 {
            tracing::warn!(
                bytes = recovery.truncated_bytes,
                "log: cut an incomplete or damaged tail (a write a crash interrupted)"
            );
        }
        let (salt, suppressed) = suppression::load_file(data_dir)?;
        let db = data_dir.join(super::sqlite::DB_FILE);
        // SQLite gives its WAL and shm files the database file's mode.
        create_private_file(&db)?;
        let (index, readers) = open_index(
            &db,
            &log_dir,
            salt.clone(),
            &suppressed,
            options.clock.clone(),
        )?;
        // The index derives from the log: one ahead of it (a copy of the
        // directory taken in the wrong order, a log restored alone) would
        // answer with events the log does not have.
        let mut index = index;
        let indexed = crate::consumer::Consumer::position(&mut index)?;
        if indexed > log.next_lsn() {
            return Err(StoreError::Corrupt(format!(
                "{} has applied the log up to {indexed}, but the log ends at {}: \
                 the index is ahead of its log (was one restored without the other?). \
                 Delete {} to rebuild the index from the log.",
                super::sqlite::DB_FILE,
                log.next_lsn(),
                db.display()
            )));
        }
        let to_recompute = index.segments_to_recompute();
        restrict_files(data_dir)?;
        let writer_suppression = Suppression::new(salt, suppressed.iter().copied());
        let window = DedupWindow::rebuild(&log_dir, log.next_lsn(), options.dedup_window)?;

        let progress = Progress::new(log.next_lsn());
        let (index, indexer) = progress.start("indexer", index, log_dir.clone(), true)?;
        let capacity = options.queue_capacity.max(1);
        let (tx, rx) = mpsc::channel(capacity);
        let writer = {
            let progress = progress.clone();
            let data_dir = data_dir.to_path_buf();
            let mut w = LogWriter {
                log,
                window,
                suppression: writer_suppression,
                data_dir,
                progress,
                stats,
                buf: Vec::new(),
                ranges: Vec::new(),
                max_index_lag: options.max_index_lag.max(1),
                disk_full_since: None,
                disk_full_warned: None,
            };
            std::thread::Builder::new()
                .name("weft-log-writer".into())
                .spawn(move || w.run(rx))?
        };
        let store = EmbeddedStore {
            sender: RwLock::new(Some(tx)),
            capacity,
            progress,
            index,
            readers,
            threads: Mutex::new(vec![writer, indexer]),
            log_dir,
            listeners: RwLock::new(Vec::new()),
        };
        // A recompute a stop interrupted starts again; segments with
        // windows are gone through once to know when each membership is
        // due again.
        for key in to_recompute {
            store.recompute_in_background(key);
        }
        Ok(store)
    }

    /// Evaluates every profile against segment `key` (and those that refer
    /// to it) on the indexer's thread, a few thousand identifiers per job
    /// so that indexing goes on between them; the segment is ready after
    /// the last. A pass whose rule is replaced meanwhile stops; the new
    /// rule's pass marks it ready.
    fn recompute_in_background(&self, key: String) {
        const STEP: u32 = 4096;
        let progress = self.progress.clone();
        let index = self.index;
        let spawned = std::thread::Builder::new()
            .name("weft-segment-recompute".into())
            .spawn(move || {
                let mut from = Some(0u32);
                let mut version: Option<String> = None;
                let pass = Arc::new(Mutex::new(Pass::default()));
                while let Some(at) = from {
                    let key = key.clone();
                    let started = version.clone();
                    let pass = pass.clone();
                    match progress.run(index, move |w: &mut IndexWriter| {
                        let mut pass = pass.lock().unwrap_or_else(|e| e.into_inner());
                        w.recompute(&key, at, STEP, started.as_deref(), &mut pass)
                    }) {
                        Ok((next, v)) => {
                            from = next;
                            version = Some(v);
                        }
                        Err(StoreError::Closed) => return,
                        Err(e) => {
                            tracing::warn!(error = %e, "segment recompute: retrying");
                            std::thread::sleep(Duration::from_secs(1));
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "segment recompute: cannot start a thread");
        }
    }

    /// Waits (blocking, at most `timeout`) until the index has applied
    /// every record that was durable when this was called: what a read
    /// started now must see. [`StoreError::Lagging`] past the bound.
    pub fn wait_indexed(&self, timeout: Duration) -> Result<(), StoreError> {
        self.progress.wait_applied(self.index, timeout)
    }

    /// The log position that is durable, and the one the index reached.
    pub fn positions(&self) -> (Lsn, Lsn) {
        (self.progress.durable(), self.progress.applied(self.index))
    }

    fn writer_job<T>(
        &self,
        job: impl FnOnce(sync_mpsc::SyncSender<Result<T, StoreError>>) -> WriterJob,
    ) -> Result<T, StoreError> {
        let (reply, done) = sync_mpsc::sync_channel(1);
        let sender = self
            .sender
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(StoreError::Closed)?;
        sender
            .blocking_send(job(reply))
            .map_err(|_| StoreError::Closed)?;
        done.recv().map_err(|_| StoreError::Closed)?
    }

    /// Rewrites the log without an erased person's records, then lets the
    /// indexer's reader and reads by LSN go of the old files (the indexer
    /// reopens on the rewrite before it runs that job), then tells the
    /// listeners (outboxes, the live view).
    fn forget_in_log(&self, erased: Erased) -> Result<(), StoreError> {
        let (identifiers, lsns) = (erased.identifiers.clone(), erased.lsns.clone());
        self.writer_job(|reply| WriterJob::Remove { erased, reply })?;
        self.log_rewritten()?;
        self.tell(|l| l.erased(&identifiers, &lsns));
        Ok(())
    }

    /// The index lets go of log files that were replaced or dropped.
    fn log_rewritten(&self) -> Result<(), StoreError> {
        self.index_job(|index| {
            index.log_rewritten();
            Ok(())
        })
    }

    /// Calls `f` with every listener.
    fn tell(&self, f: impl Fn(&dyn StoreListener)) {
        for l in self
            .listeners
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            f(l.as_ref());
        }
    }

    /// Runs `job` on the indexer's thread, between its batches.
    fn index_job<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut IndexWriter) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.progress.run(self.index, job)
    }
}

impl WriteSide for EmbeddedStore {
    fn append(&self, request: AppendRequest) -> Result<Pending, StoreError> {
        let (reply, pending) = oneshot::channel();
        let guard = self.sender.read().unwrap_or_else(|e| e.into_inner());
        let sender = guard.as_ref().ok_or(StoreError::Closed)?;
        sender
            .try_send(WriterJob::Append { request, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => StoreError::Overloaded,
                mpsc::error::TrySendError::Closed(_) => StoreError::Closed,
            })?;
        Ok(pending)
    }

    fn durable_position(&self) -> u64 {
        self.progress.durable()
    }

    fn close(&self) {
        // Dropping the last sender lets the writer finish the queue and
        // stop; the indexer then applies what is durable and stops.
        self.progress.closing();
        self.sender
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

impl ReadSide for EmbeddedStore {
    fn profile(&self, id: &str) -> Result<Option<ProfileSummary>, StoreError> {
        self.wait_indexed(READ_WAIT)?;
        self.readers.profile(id)
    }

    fn profile_events(
        &self,
        id: &str,
        limit: usize,
        before: Option<&EventCursor>,
    ) -> Result<Option<EventsPage>, StoreError> {
        self.wait_indexed(READ_WAIT)?;
        self.readers.profile_events(id, limit, before)
    }

    fn profile_graph(&self, id: &str) -> Result<Option<IdentityGraph>, StoreError> {
        self.wait_indexed(READ_WAIT)?;
        self.readers.profile_graph(id)
    }

    fn consent_history(&self, id: &str) -> Result<Option<Vec<ConsentEntry>>, StoreError> {
        self.wait_indexed(READ_WAIT)?;
        self.readers.consent_history(id)
    }
}

impl EventStore for EmbeddedStore {
    fn erase(&self, id: &str) -> Result<Option<ErasureReport>, StoreError> {
        self.wait_indexed(READ_WAIT)?;
        let id = id.to_owned();
        let identifiers = {
            let id = id.clone();
            // With their salted hashes, made by the index's suppression list.
            self.index_job(move |index| {
                Ok(index.erasure_identifiers(&id)?.map(|ids| {
                    let hashes: Vec<IdHash> = ids.iter().map(|i| index.hash(i)).collect();
                    (ids, hashes)
                }))
            })?
        };
        let Some((identifiers, hashes)) = identifiers else {
            // Erased before, but a crash or a failure may have stopped the
            // log rewrite half way: a repeated DELETE finishes it.
            let suppressed = {
                let id = id.clone();
                self.index_job(move |index| Ok(index.is_suppressed(&id)))?
            };
            if suppressed {
                self.forget_in_log(Erased {
                    identifiers: [id].into_iter().collect(),
                    lsns: HashSet::new(),
                })?;
            }
            return Ok(None);
        };
        // 1. From now on the log admits none of them.
        self.writer_job(|reply| WriterJob::Suppress { hashes, reply })?;
        // 2. The index forgets them (and drops any record of theirs it
        //    applies later: admitted before step 1, read after step 2), the
        //    same identifiers as step 1 even if links arrived in between.
        let erased = {
            let identifiers = identifiers.clone();
            self.index_job(move |index| index.erase(&id, &identifiers))?
        };
        let Some(Erasure { report, lsns }) = erased else {
            return Ok(None);
        };
        // 3. The log, and what follows it, forget them.
        self.forget_in_log(Erased {
            identifiers: identifiers.into_iter().collect(),
            lsns: lsns.into_iter().collect(),
        })?;
        Ok(Some(report))
    }

    /// Expires everything received before `before` at once: `limit` does
    /// not apply (the index's part is a pass over the expired head of the
    /// log and over postings in memory).
    fn expire(&self, before: &str, _limit: usize) -> Result<usize, StoreError> {
        // What is durable now is indexed first (a job runs before the log
        // it has not applied yet), so no expired record lands afterwards.
        self.wait_indexed(READ_WAIT)?;
        let n = {
            let before = before.to_owned();
            self.index_job(move |index| index.expire(&before))?
        };
        let below = self.positions().1;
        let cutoff = before.to_owned();
        let dropped = self.writer_job(|reply| WriterJob::DropExpired {
            before: cutoff,
            below,
            reply,
        })?;
        if dropped > 0 {
            tracing::info!(segments = dropped, "retention dropped log segments");
            self.log_rewritten()?;
        }
        self.tell(|l| l.expired(before));
        if n > 0 {
            // Events counted by segment rules are gone: every segment is
            // evaluated again for everyone, in the background.
            let keys = self.index_job(|index| Ok(index.segment_keys()))?;
            for key in keys {
                self.recompute_in_background(key);
            }
        }
        Ok(n)
    }

    fn check_ready(&self) -> Result<(), StoreError> {
        if self
            .sender
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
            || self.progress.stopped(self.index)
        {
            return Err(StoreError::Closed);
        }
        self.readers.check()
    }

    fn put_segment(
        &self,
        key: &str,
        name: &str,
        rule: serde_json::Value,
    ) -> Result<SegmentInfo, StoreError> {
        let (k, n) = (key.to_owned(), name.to_owned());
        self.index_job(move |index| index.put_segment(&k, &n, rule))?;
        self.recompute_in_background(key.to_owned());
        self.readers.segment(key).ok_or(StoreError::Closed)
    }

    fn segment(&self, key: &str) -> Result<Option<SegmentInfo>, StoreError> {
        self.wait_indexed(READ_WAIT)?;
        Ok(self.readers.segment(key))
    }

    fn segments(&self) -> Result<Vec<SegmentInfo>, StoreError> {
        self.wait_indexed(READ_WAIT)?;
        Ok(self.readers.segments())
    }

    fn delete_segment(&self, key: &str) -> Result<bool, StoreError> {
        let key = key.to_owned();
        self.index_job(move |index| index.delete_segment(&key))
    }

    fn segment_members(
        &self,
        key: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Option<MembersPage>, StoreError> {
        self.wait_indexed(READ_WAIT)?;
        self.readers.segment_members(key, limit, cursor)
    }

    fn tick_segments(&self) -> Result<(), StoreError> {
        self.index_job(|index| index.tick())
    }

    fn follow(
        &self,
        name: &str,
        consumer: Box<dyn crate::consumer::Consumer>,
        pace: Duration,
    ) -> Result<Following, StoreError> {
        let (id, thread) =
            self.progress
                .start_paced(name, consumer, self.log_dir.clone(), false, pace)?;
        Ok(Following::new(self.progress.clone(), id, thread))
    }

    fn audience_changes(
        &self,
        after: i64,
        limit: usize,
    ) -> Result<Vec<AudienceChange>, StoreError> {
        self.readers.audience_changes(after, limit)
    }

    fn last_audience_change(&self) -> Result<i64, StoreError> {
        self.readers.last_audience_change()
    }

    fn export(
        &self,
        from: &str,
        to: &str,
        each: &mut dyn FnMut(&str) -> bool,
    ) -> Result<u64, StoreError> {
        let until = self.progress.durable();
        let mut n = 0;
        crate::log::scan(
            &self.log_dir,
            0,
            until,
            |_, payload| match record::decode_ref(payload) {
                Ok(record::RecordRef::Event { event, .. })
                    if event.received_at >= from && event.received_at < to =>
                {
                    n += 1;
                    each(event.body)
                }
                _ => true,
            },
        )
        .map_err(log_error)?;
        Ok(n)
    }

    fn listen(&self, listener: Arc<dyn StoreListener>) {
        self.listeners
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(listener);
    }

    fn gauges(&self) -> Gauges {
        let queue_depth = self
            .sender
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|s| self.capacity - s.capacity())
            .unwrap_or(0);
        let (log_position, index_position) = self.positions();
        Gauges {
            queue_depth,
            log_position,
            index_position,
        }
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        self.close();
    }
}

/// The (source, messageId) pairs the ack path has stored recently, bounded
/// by count: the oldest is forgotten first. Keys are 64-bit hashes under a
/// per-process random key (the window is rebuilt from the log at start).
/// Hashes the window's keys, which are already SipHash values under a
/// per-process random key: hashing them again would only cost time (it was
/// 3% of the writer's CPU), and they are as unpredictable as SipHash.
#[derive(Default)]
struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

struct DedupWindow {
    hasher: std::collections::hash_map::RandomState,
    set: HashSet<u64, std::hash::BuildHasherDefault<KeyHasher>>,
    order: VecDeque<u64>,
    capacity: usize,
}

impl DedupWindow {
    fn new(capacity: usize) -> Self {
        DedupWindow {
            hasher: Default::default(),
            set: HashSet::default(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// The window as the log's last `capacity` events leave it.
    fn rebuild(log_dir: &Path, until: Lsn, capacity: usize) -> Result<Self, StoreError> {
        let mut window = DedupWindow::new(capacity);
        // Only the tail can be in the window: the last `capacity` records.
        let from = until.saturating_sub(capacity as u64);
        crate::log::scan(log_dir, from, until, |_, payload| {
            if let Some((source, id)) = record::event_key(payload) {
                let key = window.key(source, id);
                window.insert(key);
            }
            true
        })
        .map_err(log_error)?;
        Ok(window)
    }

    fn key(&self, source: &str, message_id: &str) -> u64 {
        self.hasher.hash_one((source, message_id))
    }

    fn contains(&self, key: u64) -> bool {
        self.set.contains(&key)
    }

    fn insert(&mut self, key: u64) {
        if self.set.insert(key) {
            self.order.push_back(key);
            while self.order.len() > self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

/// The log's only writer: admission (suppression, dedup), framing, group
/// commit.
struct LogWriter {
    log: SegmentLog,
    window: DedupWindow,
    suppression: Suppression,
    data_dir: PathBuf,
    progress: Arc<Progress>,
    stats: Arc<WriterStats>,
    /// The group's encoded records, and where each one is in `buf`.
    buf: Vec<u8>,
    ranges: Vec<Range<usize>>,
    max_index_lag: u64,
    /// Since when writes fail for a full disk (for one warning a minute).
    disk_full_since: Option<Instant>,
    disk_full_warned: Option<Instant>,
}

type Group = Vec<(
    AppendRequest,
    oneshot::Sender<Result<AppendOutcome, StoreError>>,
)>;

/// Tells the consumers the writer stopped, however its thread ends (a
/// panic included).
struct WriterStopped(Arc<Progress>);

impl Drop for WriterStopped {
    fn drop(&mut self) {
        self.0.writer_stopped();
    }
}

impl LogWriter {
    fn run(&mut self, mut rx: mpsc::Receiver<WriterJob>) {
        let _stopped = WriterStopped(self.progress.clone());
        let mut group: Group = Vec::with_capacity(MAX_GROUP);
        let mut next: Option<WriterJob> = None;
        loop {
            let first = match next.take() {
                Some(job) => job,
                None => match rx.blocking_recv() {
                    Some(job) => job,
                    None => break,
                },
            };
            match first {
                WriterJob::Append { request, reply } => group.push((request, reply)),
                WriterJob::Suppress { hashes, reply } => {
                    let _ = reply.send(self.suppress(&hashes));
                    continue;
                }
                WriterJob::Remove { erased, reply } => {
                    let _ = reply.send(self.remove(&erased));
                    continue;
                }
                WriterJob::DropExpired {
                    before,
                    below,
                    reply,
                } => {
                    let _ = reply.send(self.drop_expired(&before, below));
                    continue;
                }
            }
            self.wait_for_index();
            // Everything that queued while the last group was syncing.
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(WriterJob::Append { request, reply }) => group.push((request, reply)),
                    Ok(other) => {
                        next = Some(other);
                        break;
                    }
                    Err(_) => break,
                }
            }
            if let Err(e) = self.commit(&mut group) {
                // A full disk: the write failed before anything was synced,
                // so the log is cut back and goes on (the requests were
                // answered 503); each later group tries again, and the
                // collector resumes by itself once there is space.
                if matches!(e, StoreError::DiskFull) && self.log.recover_failed_write().is_ok() {
                    self.disk_full_warning();
                    continue;
                }
                // After a failed sync the file's state is unknown: stop
                // taking writes rather than acknowledge on top of it.
                tracing::error!(error = %e, "log write failed; the collector stops taking events");
                break;
            }
            if let Some(since) = self.disk_full_since.take() {
                self.disk_full_warned = None;
                tracing::warn!(
                    after_secs = since.elapsed().as_secs(),
                    "disk space is back: ingest resumed"
                );
            }
        }
        // Answer whatever is still queued (the receiver is closing).
        rx.close();
        while let Ok(job) = rx.try_recv() {
            if let WriterJob::Append { reply, .. } = job {
                let _ = reply.send(Err(StoreError::Closed));
            }
        }
    }

    /// Admits, writes and syncs a group, then answers each request.
    fn commit(&mut self, group: &mut Group) -> Result<(), StoreError> {
        let started = Instant::now();
        self.buf.clear();
        self.ranges.clear();
        let mut outcomes = Vec::with_capacity(group.len());
        let mut keys = Vec::new();
        let mut in_group: HashSet<u64, std::hash::BuildHasherDefault<KeyHasher>> =
            HashSet::default();
        for (r, _) in group.iter() {
            let mut outcome = AppendOutcome::default();
            for e in &r.events {
                let ids = [
                    e.anonymous_id.as_deref(),
                    e.user_id.as_deref(),
                    e.previous_id.as_deref(),
                ];
                if self.suppression.any(&ids) {
                    outcome.suppressed += 1;
                    continue;
                }
                let key = self.window.key(&r.source, &e.message_id);
                if self.window.contains(key) || !in_group.insert(key) {
                    outcome.duplicates += 1;
                    continue;
                }
                keys.push(key);
                let at = self.buf.len();
                if self.suppression.any(&[e.same_device.as_deref()]) {
                    // The cookie names an erased device: no edge to it.
                    outcome.erased_device = true;
                    let e = NewEvent {
                        same_device: None,
                        ..e.clone()
                    };
                    record::encode_event(&mut self.buf, &r.source, &e);
                } else {
                    record::encode_event(&mut self.buf, &r.source, e);
                }
                self.ranges.push(at..self.buf.len());
                outcome.stored += 1;
            }
            for b in &r.rejected {
                // A rejected message naming an erased person is not kept
                // either (best effort: its identifiers, if it parses).
                if !self.suppression.is_empty() && names_suppressed(&b.raw, &self.suppression) {
                    outcome.suppressed += 1;
                    continue;
                }
                let at = self.buf.len();
                record::encode_rejected(&mut self.buf, &r.source, b);
                self.ranges.push(at..self.buf.len());
                outcome.rejected += 1;
            }
            outcomes.push(outcome);
        }
        let written = if self.ranges.is_empty() {
            Ok(())
        } else {
            let payloads: Vec<&[u8]> = self.ranges.iter().map(|r| &self.buf[r.clone()]).collect();
            self.log
                .append(&payloads)
                .and_then(|_| self.log.sync())
                .map_err(|e| match e {
                    crate::log::LogError::Io(io) if super::is_disk_full(&io) => {
                        StoreError::DiskFull
                    }
                    e => log_error(e),
                })
        };
        if let Err(e) = written {
            let message = e.to_string();
            for (_, reply) in group.drain(..) {
                let _ = reply.send(Err(match e {
                    StoreError::DiskFull => StoreError::DiskFull,
                    _ => StoreError::Io(std::io::Error::other(message.clone())),
                }));
            }
            return Err(e);
        }
        for key in keys {
            self.window.insert(key);
        }
        self.publish_durable();
        let framed = self.buf.len() + self.ranges.len() * crate::log::FRAMING_BYTES;
        self.stats
            .log_bytes
            .fetch_add(framed as u64, Ordering::Relaxed);
        self.stats.commit_seconds.observe(started.elapsed());
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.stats
            .committed_requests
            .fetch_add(group.len() as u64, Ordering::Relaxed);
        let position = self.log.next_lsn();
        for ((_, reply), mut outcome) in group.drain(..).zip(outcomes) {
            outcome.position = position;
            let _ = reply.send(Ok(outcome));
        }
        Ok(())
    }

    /// Backpressure: while the index is more than `max_index_lag` records
    /// behind, wait for it (requests queue meanwhile; a full queue answers
    /// 503). Reads never wait for more than that much indexing.
    fn wait_for_index(&self) {
        self.progress.wait_to_keep_up(self.max_index_lag);
    }

    /// Logs a full disk when it starts and once a minute while it lasts.
    fn disk_full_warning(&mut self) {
        let since = *self.disk_full_since.get_or_insert_with(Instant::now);
        if self
            .disk_full_warned
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
        {
            self.disk_full_warned = Some(Instant::now());
            tracing::error!(
                for_secs = since.elapsed().as_secs(),
                data_dir = %self.data_dir.display(),
                "the disk is full: ingest answers 503 until space is freed; nothing acknowledged is lost"
            );
        }
    }

    fn publish_durable(&self) {
        self.progress.set_durable(self.log.next_lsn());
    }

    fn suppress(&mut self, hashes: &[IdHash]) -> Result<(), StoreError> {
        suppression::append_file(&self.data_dir, hashes)?;
        self.suppression.extend(hashes.iter().copied());
        Ok(())
    }

    fn remove(&mut self, erased: &Erased) -> Result<u64, StoreError> {
        let n = self
            .log
            .remove_records(|lsn, payload| erased.matches(lsn, payload))
            .map_err(log_error)?;
        self.progress.segments_rewritten();
        Ok(n)
    }

    /// Drops the oldest segments while every record in them was received
    /// before `before` and is below `below` (applied by the index). Each
    /// candidate is read whole: receipt time need not rise with log order
    /// (requests race to the queue; clocks step back).
    ///
    /// The active segment goes too (rolled over first) when all of it is
    /// old and applied: a quiet log may never fill a segment, and its old
    /// records must not outlive retention for that.
    fn drop_expired(&mut self, before: &str, below: Lsn) -> Result<usize, StoreError> {
        let segments = self.log.segments();
        let next_lsn = self.log.next_lsn();
        let mut cut = 0;
        for (i, segment) in segments.iter().enumerate() {
            let end = segments.get(i + 1).map_or(next_lsn, |s| s.first_lsn);
            if end > below || segment.bytes == 0 {
                break;
            }
            let mut all_old = true;
            crate::log::scan(self.log.dir(), segment.first_lsn, end, |_, p| {
                all_old = match record::decode(p) {
                    Ok(Record::Event { event, .. }) => event.received_at.as_str() < before,
                    Ok(Record::Rejected { rejected, .. }) => rejected.received_at.as_str() < before,
                    Err(_) => false,
                };
                all_old
            })
            .map_err(log_error)?;
            if !all_old {
                break;
            }
            cut = end;
        }
        if cut == 0 {
            return Ok(0);
        }
        if cut == next_lsn {
            // Everything is old, the active segment included.
            self.log.roll().map_err(log_error)?;
        }
        self.log.drop_segments_before(cut).map_err(log_error)
    }
}

/// Whether a rejected message's raw text carries an erased identifier.
fn names_suppressed(raw: &str, suppression: &Suppression) -> bool {
    let [a, u, p] = crate::admission::raw_identifiers(raw);
    suppression.any(&[a.as_deref(), u.as_deref(), p.as_deref()])
}

fn log_error(e: crate::log::LogError) -> StoreError {
    StoreError::Log(e.to_string())
}

/// Creates `dir` (and its parents) if missing, and makes it private to the
/// collector's user: events and identifiers are personal data.
fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(())
}

/// Creates `path` empty with mode 0600 unless it exists (SQLite gives its
/// WAL and shm files the database file's mode).
pub(crate) fn create_private_file(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Makes the files of the data directory 0600 (a data directory made by
/// an older version, or files made with a loose umask).
fn restrict_files(data_dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt as _;
    for entry in std::fs::read_dir(data_dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::DB_FILE;
    use crate::store::{NewEvent, RejectedMessage};
    use weft_protocol::MessageType;

    fn open(dir: &Path, queue_capacity: usize, stats: Arc<WriterStats>) -> EmbeddedStore {
        EmbeddedStore::open(
            dir,
            StoreOptions {
                queue_capacity,
                ..StoreOptions::default()
            },
            stats,
        )
        .unwrap()
    }

    fn request(source: &str, n: usize, tag: &str) -> AppendRequest {
        AppendRequest {
            source: source.into(),
            events: (0..n)
                .map(|i| NewEvent {
                    properties: None,
                    same_device: None,
                    message_id: format!("{tag}-{i}"),
                    kind: MessageType::Track,
                    event: Some("E".into()),
                    anonymous_id: Some(format!("a-{}", i % 50)),
                    user_id: None,
                    previous_id: None,
                    junk_ids: 0,
                    consent_record: None,
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
        let store = open(dir.path(), 1, stats.clone());
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
        let store = open(dir.path(), 8, Arc::default());
        let a = append_one(&store, request("s1", 3, "m"));
        let b = append_one(&store, request("s1", 3, "m"));
        let c = append_one(&store, request("s2", 3, "m"));
        assert_eq!((a.stored, a.duplicates), (3, 0));
        assert_eq!((b.stored, b.duplicates), (0, 3));
        assert_eq!(
            (c.stored, c.duplicates),
            (3, 0),
            "same messageId, other source"
        );
    }

    /// A stored identify of user `u` on device `d` at `at` with `body`.
    fn identify(n: usize, at: &str, body: serde_json::Value) -> NewEvent {
        NewEvent {
            properties: None,
            same_device: None,
            message_id: format!("identify-{n}"),
            kind: MessageType::Identify,
            event: None,
            anonymous_id: Some("d".into()),
            user_id: Some("u".into()),
            previous_id: None,
            junk_ids: 0,
            consent_record: None,
            timestamp: at.into(),
            received_at: at.into(),
            ip: None,
            body: body.to_string(),
        }
    }

    #[test]
    fn identify_traits_come_from_traits_and_context_traits_the_newest_call_winning() {
        use serde_json::json;
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 8, Arc::default());
        // Out of time order, so arrival order is not what decides.
        let events = vec![
            // Both places: the top-level value wins a shared key.
            identify(
                3,
                "2026-11-23T12:00:00.000Z",
                json!({"type": "identify", "userId": "u",
                       "traits": {"name": "Ada", "tier": "gold"},
                       "context": {"traits": {"tier": "silver", "vip": true}}}),
            ),
            // Only in context.traits (RudderStack's SDKs): newer than the
            // first call, so its plan replaces that one.
            identify(
                2,
                "2026-11-23T11:00:00.000Z",
                json!({"type": "identify", "userId": "u",
                       "context": {"traits": {"plan": "pro", "city": "Oslo"}}}),
            ),
            // Only top level (Segment's SDKs), the oldest.
            identify(
                1,
                "2026-11-23T10:00:00.000Z",
                json!({"type": "identify", "userId": "u",
                       "traits": {"plan": "free", "email": "ada@example.com"}}),
            ),
            // Traits that are not objects are no traits.
            identify(
                4,
                "2026-11-23T13:00:00.000Z",
                json!({"type": "identify", "userId": "u", "traits": "x",
                       "context": {"traits": ["y"]}}),
            ),
        ];
        let request = AppendRequest {
            source: "s".into(),
            events,
            rejected: Vec::new(),
        };
        let outcome = store.append(request).unwrap().blocking_recv().unwrap();
        assert_eq!(outcome.unwrap().stored, 4);
        let profile = store.profile("u").unwrap().expect("a profile for u");
        assert_eq!(
            profile.traits,
            json!({"name": "Ada", "tier": "gold", "vip": true, "plan": "pro",
                   "city": "Oslo", "email": "ada@example.com"})
        );
    }

    #[test]
    fn closing_commits_what_is_queued() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 64, Arc::default());
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
        let (log, index) = store.positions();
        drop(store);
        assert_eq!(logged_events(dir.path()).len(), 200);
        assert_eq!(index, log, "the index applied all of it before closing");
    }

    /// The event records in the log of the store in `dir`.
    fn logged_events(dir: &Path) -> Vec<NewEvent> {
        let mut events = Vec::new();
        crate::log::scan(&dir.join(LOG_DIR), 0, Lsn::MAX, |_, payload| {
            if let Ok(Record::Event { event, .. }) = record::decode(payload) {
                events.push(event);
            }
            true
        })
        .unwrap();
        events
    }

    /// A history of two people and a device they share.
    fn history() -> Vec<AppendRequest> {
        let event = |n: usize, kind: MessageType, a: Option<&str>, u: Option<&str>, at: &str| {
            let body = serde_json::json!({
                "type": kind.as_str(), "anonymousId": a, "userId": u,
                "traits": {"n": n, "who": u},
            });
            NewEvent {
                properties: None,
                same_device: None,
                message_id: format!("h-{n}"),
                kind,
                event: (kind == MessageType::Track).then(|| "E".to_owned()),
                anonymous_id: a.map(str::to_owned),
                user_id: u.map(str::to_owned),
                previous_id: None,
                junk_ids: 0,
                consent_record: None,
                timestamp: at.into(),
                received_at: at.into(),
                ip: None,
                body: body.to_string(),
            }
        };
        let t = MessageType::Track;
        let i = MessageType::Identify;
        let batches = [
            vec![
                event(1, t, Some("dev-1"), None, "2026-11-01T10:00:00.000Z"),
                event(
                    2,
                    i,
                    Some("dev-1"),
                    Some("ana-7q"),
                    "2026-11-01T10:01:00.000Z",
                ),
            ],
            vec![
                event(3, t, Some("dev-2"), None, "2026-11-01T11:00:00.000Z"),
                event(4, i, Some("dev-2"), Some("bo"), "2026-11-01T11:01:00.000Z"),
                event(5, i, Some("dev-1"), Some("bo"), "2026-11-01T12:00:00.000Z"),
                event(6, t, Some("dev-1"), None, "2026-11-01T12:30:00.000Z"),
            ],
        ];
        batches
            .into_iter()
            .map(|events| AppendRequest {
                source: "s".into(),
                events,
                rejected: Vec::new(),
            })
            .collect()
    }

    /// Appends and waits until the request is durable.
    fn append_one(store: &EmbeddedStore, request: AppendRequest) -> AppendOutcome {
        store
            .append(request)
            .unwrap()
            .blocking_recv()
            .unwrap()
            .unwrap()
    }

    fn append_all(store: &EmbeddedStore, requests: Vec<AppendRequest>) {
        for r in requests {
            append_one(store, r);
        }
    }

    fn profiles(store: &EmbeddedStore) -> Vec<Option<ProfileSummary>> {
        ["ana-7q", "bo", "dev-1", "dev-2", "nobody"]
            .iter()
            .map(|id| store.profile(id).unwrap())
            .collect()
    }

    #[test]
    fn the_index_is_derived_delete_it_and_the_log_rebuilds_the_same_profiles() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 8, Arc::default());
        append_all(&store, history());
        let before = profiles(&store);
        assert!(before[0].is_some() && before[1].is_some());
        store.close();
        drop(store);
        for name in [DB_FILE, "weft.sqlite-wal", "weft.sqlite-shm"] {
            let _ = std::fs::remove_file(dir.path().join(name));
        }
        let store = open(dir.path(), 8, Arc::default());
        assert_eq!(profiles(&store), before);
        // Retries of what the log holds are still duplicates.
        let again = append_one(&store, history().remove(0));
        assert_eq!((again.stored, again.duplicates), (0, 2));
    }

    #[test]
    fn a_torn_tail_is_cut_at_start_and_every_acknowledged_record_stays() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 8, Arc::default());
        append_all(&store, history());
        let before = profiles(&store);
        store.close();
        drop(store);
        // A crash in the middle of the next write: half a record at the end.
        let log_dir = dir.path().join(LOG_DIR);
        let last = std::fs::read_dir(&log_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .max()
            .unwrap();
        let mut half = Vec::new();
        record::encode_event(&mut half, "s", &history()[0].events[0]);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&last)
            .unwrap();
        use std::io::Write as _;
        let len = (half.len() as u32).to_le_bytes();
        f.write_all(&len).unwrap();
        f.write_all(&[0xAB; 9]).unwrap();
        f.write_all(&half[..half.len() / 2]).unwrap();
        drop(f);
        let size_torn = std::fs::metadata(&last).unwrap().len();

        let store = open(dir.path(), 8, Arc::default());
        assert!(std::fs::metadata(&last).unwrap().len() < size_torn, "cut");
        assert_eq!(profiles(&store), before);
        // The log goes on after the cut.
        let more = AppendRequest {
            source: "s".into(),
            events: vec![NewEvent {
                message_id: "after-crash".into(),
                ..history()[0].events[0].clone()
            }],
            rejected: Vec::new(),
        };
        append_all(&store, vec![more]);
        let count = |p: &Option<ProfileSummary>| p.as_ref().unwrap().event_count;
        assert_eq!(
            count(&store.profile("ana-7q").unwrap()),
            count(&before[0]) + 1
        );
    }

    #[test]
    fn erasure_leaves_nothing_of_the_person_in_the_log_or_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 8, Arc::default());
        append_all(&store, history());
        let report = store.erase("ana-7q").unwrap().expect("known");
        assert_eq!(report.events, 2, "{report:?}");
        assert!(store.profile("ana-7q").unwrap().is_none());
        assert!(store.profile("bo").unwrap().is_some(), "others stay");
        // Later events of ana are dropped at the door.
        let late = AppendRequest {
            source: "s".into(),
            events: vec![NewEvent {
                message_id: "late".into(),
                user_id: Some("ana-7q".into()),
                ..history()[0].events[0].clone()
            }],
            rejected: Vec::new(),
        };
        let outcome = append_one(&store, late);
        assert_eq!((outcome.stored, outcome.suppressed), (0, 1));
        // So are invalid messages that name them (they would be kept as
        // rejected messages, raw text and all).
        let invalid = AppendRequest {
            source: "s".into(),
            events: Vec::new(),
            rejected: vec![RejectedMessage {
                received_at: "2026-11-02T00:00:00.000Z".into(),
                code: "missing_field".into(),
                reason: "track needs an event".into(),
                raw: r#"{"type":"track","userId":"ana-7q"}"#.into(),
            }],
        };
        let outcome = append_one(&store, invalid);
        assert_eq!((outcome.rejected, outcome.suppressed), (0, 1));
        // A repeated DELETE is harmless (and would finish a log rewrite a
        // crash interrupted).
        assert!(store.erase("ana-7q").unwrap().is_none());
        store.close();
        drop(store);
        let mut scanned = 0;
        let mut stack = vec![dir.path().to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let bytes = std::fs::read(&path).unwrap();
                scanned += 1;
                assert!(
                    !bytes.windows(6).any(|w| w == b"ana-7q"),
                    "{path:?} still holds the erased user"
                );
            }
        }
        assert!(scanned >= 3);
        // And a rebuild does not bring them back.
        let store = open(dir.path(), 8, Arc::default());
        assert!(store.profile("ana-7q").unwrap().is_none());
        assert!(store.profile("bo").unwrap().is_some());
    }

    #[test]
    fn the_data_directory_is_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("data");
        let store = open(&dir, 8, Arc::default());
        append_all(&store, history());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        let mut files = 0;
        let mut stack = vec![dir.clone()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    assert_eq!(mode(&path), 0o700, "{path:?}");
                    stack.push(path);
                } else {
                    assert_eq!(mode(&path), 0o600, "{path:?}");
                    files += 1;
                }
            }
        }
        assert!(files >= 4, "index, WAL, suppression file, a segment");
    }

    #[test]
    fn retention_drops_whole_old_segments_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(
            dir.path(),
            StoreOptions {
                segment_bytes: 1024,
                ..StoreOptions::default()
            },
            Arc::default(),
        )
        .unwrap();
        let at = |day: u32| format!("2026-11-{day:02}T10:00:00.000Z");
        // Ten days, a few segments each.
        for day in 1..=10 {
            let mut r = request("s", 30, &format!("d{day}"));
            for e in &mut r.events {
                e.received_at = at(day);
                e.timestamp = at(day);
            }
            append_one(&store, r);
        }
        let segments = |d: &Path| {
            std::fs::read_dir(d.join(LOG_DIR))
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .path()
                        .extension()
                        .is_some_and(|x| x == "log")
                })
                .count()
        };
        let before = segments(dir.path());
        assert!(before >= 10, "{before} segments");
        let deleted = store.expire(&at(6), 1_000_000).unwrap();
        assert_eq!(deleted, 5 * 30, "days 1..=5 leave the index");
        let after = segments(dir.path());
        assert!(after < before, "old segments dropped: {before} -> {after}");
        // What is left of the log still holds days 6..=10, whole: delete
        // the index and rebuild it from the log. (A segment that mixes
        // expired records with the boundary is kept until it is all old;
        // the retention sweep, which runs at every start, removes its
        // expired records from the index again.)
        store.close();
        drop(store);
        for name in [DB_FILE, "weft.sqlite-wal", "weft.sqlite-shm"] {
            let _ = std::fs::remove_file(dir.path().join(name));
        }
        let store = open(dir.path(), 8, Arc::default());
        store.expire(&at(6), 1_000_000).unwrap();
        let mut days = std::collections::BTreeSet::new();
        for i in 0..50 {
            if let Some(p) = store.profile(&format!("a-{i}")).unwrap() {
                days.insert(p.first_seen[..10].to_owned());
            }
        }
        assert!(!days.contains("2026-11-05"), "{days:?}");
        assert!(days.contains("2026-11-06"), "{days:?}");
        let kept = logged_events(dir.path())
            .into_iter()
            .filter(|e| e.received_at >= at(6))
            .count();
        assert_eq!(kept, 5 * 30, "every event of days 6..=10 survives");
    }

    #[test]
    fn the_dedup_window_is_bounded_and_rebuilt_from_the_log_tail() {
        let dir = tempfile::tempdir().unwrap();
        let options = || StoreOptions {
            dedup_window: 5,
            ..StoreOptions::default()
        };
        let one = |tag: &str| {
            let mut r = request("s", 1, tag);
            r.events[0].message_id = tag.to_owned();
            r
        };
        let store = EmbeddedStore::open(dir.path(), options(), Arc::default()).unwrap();
        for i in 0..10 {
            append_all(&store, vec![one(&format!("m{i}"))]);
        }
        store.close();
        drop(store);
        let store = EmbeddedStore::open(dir.path(), options(), Arc::default()).unwrap();
        let recent = append_one(&store, one("m9"));
        assert_eq!(
            (recent.stored, recent.duplicates),
            (0, 1),
            "in the window after restart"
        );
        let old = append_one(&store, one("m0"));
        assert_eq!(
            (old.stored, old.duplicates),
            (1, 0),
            "beyond the window of 5"
        );
    }
}
