//! Consumers of the event log: each keeps state derived from the log, on a
//! thread of its own, from a position of its own.
//!
//! The index (profiles, identity, consent) is the first; segments,
//! destinations and exports are the next. A consumer is a type with two
//! methods ([`Consumer`]): where it is, and apply these records and move
//! there, atomically. Registering one is [`Progress::start`]; the runner
//! does the rest: it reads the log from the consumer's position with a
//! [`LogReader`], never past what the writer has synced, in batches,
//! reopens its files after an erasure rewrote segments, and runs the
//! consumer's jobs (erasure, retention...) between batches on the same
//! thread, so a job never races the consumer's own writes.
//!
//! [`Progress`] is what the log writer, the consumers and the readers
//! share: the durable position, each consumer's applied position (readers
//! wait on it to see their own writes; the writer waits on the consumers
//! that must keep up, so the log cannot outrun them).

use std::any::Any;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::log::{LogReader, Lsn};
use crate::record::{self, RecordRef};
use crate::store::StoreError;

/// Most records applied in one batch.
const BATCH: usize = 50_000;
/// How long a consumer keeps applying once the writer has stopped; the
/// rest is applied at the next start, from the consumer's position.
const SHUTDOWN_APPLYING: Duration = Duration::from_secs(5);
/// How long a caller waits for a job's answer.
const JOB_WAIT: Duration = Duration::from_secs(60);

/// State derived from the log.
pub trait Consumer: Send + 'static {
    /// The position its state has reached: every record below it is
    /// applied (durably, in the consumer's own store).
    fn position(&mut self) -> Result<Lsn, StoreError>;

    /// Applies `records` (in log order) and moves the position to `next`,
    /// atomically: after a crash it either has both or neither.
    /// The records borrow the log's bytes: a consumer copies what it keeps.
    fn apply(&mut self, records: &[(Lsn, RecordRef<'_>)], next: Lsn) -> Result<(), StoreError>;
}

/// A consumer chosen at run time (destinations are configured, not
/// compiled in). Jobs address the box's type, `Box<dyn Consumer>`.
impl Consumer for Box<dyn Consumer> {
    fn position(&mut self) -> Result<Lsn, StoreError> {
        (**self).position()
    }

    fn apply(&mut self, records: &[(Lsn, RecordRef<'_>)], next: Lsn) -> Result<(), StoreError> {
        (**self).apply(records, next)
    }
}

/// A registered consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerId(usize);

type Job = Box<dyn FnOnce(&mut dyn Any) + Send>;

struct Slot {
    name: String,
    /// Asked to stop (its owner let go of it).
    stop: bool,
    applied: Lsn,
    jobs: VecDeque<Job>,
    /// Stopped (or failed to start).
    done: bool,
    /// The writer waits while this one lags too far...
    keeps_up: bool,
    /// ...once it has caught up after start (a rebuild from the whole log
    /// does not stop ingest).
    caught_up: bool,
}

#[derive(Default)]
struct State {
    durable: Lsn,
    generation: u64,
    writer_done: bool,
    /// The store is closing: the writer no longer waits for consumers.
    closing: bool,
    slots: Vec<Slot>,
}

/// The log's progress and its consumers'.
#[derive(Default)]
pub struct Progress {
    state: Mutex<State>,
    /// Wakes consumers: more durable records, a job, or the end.
    wake: Condvar,
    /// Wakes whoever waits for a consumer: readers and the writer.
    applied: Condvar,
}

impl Progress {
    /// Progress of a log whose records below `durable` are synced.
    pub fn new(durable: Lsn) -> Arc<Progress> {
        let p = Progress::default();
        p.lock().durable = durable;
        Arc::new(p)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts `consumer` on a thread of its own, reading the log in
    /// `log_dir` from the consumer's position. With `keeps_up`, the writer
    /// waits while it is too far behind ([`Progress::wait_to_keep_up`]).
    pub fn start<C: Consumer>(
        self: &Arc<Self>,
        name: &str,
        consumer: C,
        log_dir: PathBuf,
        keeps_up: bool,
    ) -> Result<(ConsumerId, JoinHandle<()>), StoreError> {
        self.start_paced(name, consumer, log_dir, keeps_up, Duration::ZERO)
    }

    /// [`Progress::start`] for a consumer that need not see each commit at
    /// once: it reads at most once per `pace`, in larger batches, instead of
    /// waking for every group the writer syncs (a thousand times a second
    /// under load; the wake-ups cost more than the work).
    pub fn start_paced<C: Consumer>(
        self: &Arc<Self>,
        name: &str,
        mut consumer: C,
        log_dir: PathBuf,
        keeps_up: bool,
        pace: Duration,
    ) -> Result<(ConsumerId, JoinHandle<()>), StoreError> {
        let from = consumer.position()?;
        let id = {
            let mut state = self.lock();
            if from > state.durable {
                tracing::error!(
                    consumer = name,
                    position = from,
                    log = state.durable,
                    "the consumer is ahead of the log (was the log replaced?): delete its state to rebuild it"
                );
            }
            let applied = from.min(state.durable);
            let caught_up = applied >= state.durable;
            state.slots.push(Slot {
                name: name.to_owned(),
                stop: false,
                applied,
                jobs: VecDeque::new(),
                done: false,
                keeps_up,
                caught_up,
            });
            ConsumerId(state.slots.len() - 1)
        };
        let progress = self.clone();
        let thread = std::thread::Builder::new()
            .name(format!("weft-{name}"))
            .spawn(move || run(&progress, id, &mut consumer, &log_dir, from, pace))?;
        Ok((id, thread))
    }

    /// Every record below this is synced.
    pub fn durable(&self) -> Lsn {
        self.lock().durable
    }

    /// Where consumer `id` is.
    pub fn applied(&self, id: ConsumerId) -> Lsn {
        self.lock().slots.get(id.0).map_or(0, |s| s.applied)
    }

    /// The writer synced every record below `lsn`.
    pub fn set_durable(&self, lsn: Lsn) {
        self.lock().durable = lsn;
        self.wake.notify_all();
    }

    /// The writer rewrote segments (erasure): readers must reopen them.
    pub fn segments_rewritten(&self) {
        self.lock().generation += 1;
        self.wake.notify_all();
    }

    /// The store is closing: the writer stops waiting for consumers.
    pub fn closing(&self) {
        self.lock().closing = true;
        self.applied.notify_all();
    }

    /// The writer stopped: consumers apply what is durable (for a while)
    /// and stop.
    pub fn writer_stopped(&self) {
        self.lock().writer_done = true;
        self.wake.notify_all();
    }

    /// Asks consumer `id` to stop after its current batch (its thread
    /// ends; join it to know when).
    pub fn stop(&self, id: ConsumerId) {
        if let Some(slot) = self.lock().slots.get_mut(id.0) {
            slot.stop = true;
        }
        self.wake.notify_all();
    }

    /// Whether consumer `id` stopped.
    pub fn stopped(&self, id: ConsumerId) -> bool {
        self.lock().slots.get(id.0).is_none_or(|s| s.done)
    }

    /// Waits (at most `timeout`) until consumer `id` has applied everything
    /// durable now: what a read started now must see.
    /// [`StoreError::Lagging`] past the bound.
    pub fn wait_applied(&self, id: ConsumerId, timeout: Duration) -> Result<(), StoreError> {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        let target = state.durable;
        loop {
            let Some(slot) = state.slots.get(id.0) else {
                return Err(StoreError::Closed);
            };
            if slot.applied >= target {
                return Ok(());
            }
            if slot.done {
                return Err(StoreError::Closed);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(StoreError::Lagging);
            }
            state = self
                .applied
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Backpressure for the writer: waits while a consumer that must keep
    /// up is more than `max_lag` records behind.
    pub fn wait_to_keep_up(&self, max_lag: u64) {
        let mut state = self.lock();
        loop {
            let durable = state.durable;
            let behind = state.slots.iter().any(|s| {
                s.keeps_up && s.caught_up && !s.done && durable.saturating_sub(s.applied) > max_lag
            });
            if !behind || state.closing {
                return;
            }
            state = self
                .applied
                .wait_timeout(state, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Runs `job` on consumer `id`'s thread, between its batches, and
    /// waits for its answer. Blocking.
    pub fn run<C: Consumer, T: Send + 'static>(
        &self,
        id: ConsumerId,
        job: impl FnOnce(&mut C) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, answer) = mpsc::sync_channel(1);
        {
            let mut state = self.lock();
            let slot = state.slots.get_mut(id.0).ok_or(StoreError::Closed)?;
            if slot.done {
                return Err(StoreError::Closed);
            }
            slot.jobs.push_back(Box::new(move |any: &mut dyn Any| {
                // A job for another type of consumer is dropped: its
                // caller gets Closed, never a panic.
                if let Some(consumer) = any.downcast_mut::<C>() {
                    let _ = reply.send(job(consumer));
                }
            }));
        }
        self.wake.notify_all();
        match answer.recv_timeout(JOB_WAIT) {
            Ok(result) => result,
            Err(mpsc::RecvTimeoutError::Timeout) => Err(StoreError::Lagging),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(StoreError::Closed),
        }
    }

    fn publish(&self, id: ConsumerId, to: Lsn) {
        let mut state = self.lock();
        let durable = state.durable;
        if let Some(slot) = state.slots.get_mut(id.0)
            && to > slot.applied
        {
            slot.applied = to;
            slot.caught_up |= to >= durable;
        }
        drop(state);
        self.applied.notify_all();
    }

    fn finish(&self, id: ConsumerId) {
        let mut state = self.lock();
        if let Some(slot) = state.slots.get_mut(id.0) {
            slot.done = true;
            // Dropping the jobs answers their callers (Closed).
            slot.jobs.clear();
        }
        drop(state);
        self.applied.notify_all();
    }
}

/// What a consumer's thread does next.
enum Next {
    Job(Job),
    Read { until: Lsn },
    Reopen,
    Stop,
}

/// Marks the consumer stopped however its thread ends (a panic included),
/// so no caller waits on it for ever.
struct Finish<'a>(&'a Progress, ConsumerId);

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        self.0.finish(self.1);
    }
}

/// A consumer's thread: jobs first, then the log up to what is durable,
/// else wait.
fn run<C: Consumer>(
    progress: &Progress,
    id: ConsumerId,
    consumer: &mut C,
    log_dir: &std::path::Path,
    from: Lsn,
    pace: Duration,
) {
    let _finish = Finish(progress, id);
    let mut last_read: Option<Instant> = None;
    let name = progress
        .lock()
        .slots
        .get(id.0)
        .map_or_else(|| "consumer".to_owned(), |s| s.name.clone());
    let name = name.as_str();
    let mut reader = match LogReader::open(log_dir, from) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(consumer = name, error = %e, "cannot read the log");
            return;
        }
    };
    let mut generation = progress.lock().generation;
    let mut stop_by: Option<Instant> = None;
    // The batch's payloads back to back, and where each one is.
    let mut buf: Vec<u8> = Vec::new();
    let mut raw = Vec::with_capacity(BATCH);
    loop {
        let next = {
            let mut state = progress.lock();
            loop {
                // After an erasure rewrote segments, let go of the old files
                // first, even when idle (they hold the erased records).
                if state.generation != generation {
                    generation = state.generation;
                    break Next::Reopen;
                }
                let writer_done = state.writer_done;
                let Some(slot) = state.slots.get_mut(id.0) else {
                    break Next::Stop;
                };
                if slot.stop {
                    break Next::Stop;
                }
                // Once the writer has stopped (the store is closing), no new
                // job starts: a long background pass (a segment recompute
                // posts one job after another) must not hold up the stop;
                // it resumes at the next start. Their callers get Closed.
                if !writer_done && let Some(job) = slot.jobs.pop_front() {
                    break Next::Job(job);
                }
                let applied = slot.applied;
                if state.writer_done && stop_by.is_none() {
                    stop_by = Some(Instant::now() + SHUTDOWN_APPLYING);
                }
                let out_of_time = stop_by.is_some_and(|t| Instant::now() >= t);
                if applied < state.durable && !out_of_time {
                    break Next::Read {
                        until: state.durable,
                    };
                }
                if state.writer_done {
                    break Next::Stop;
                }
                state = progress.wake.wait(state).unwrap_or_else(|e| e.into_inner());
            }
        };
        let until = match next {
            Next::Job(job) => {
                job(consumer);
                continue;
            }
            Next::Stop => break,
            Next::Reopen => {
                if let Err(e) = reader.reopen() {
                    tracing::error!(consumer = name, error = %e, "cannot reopen the log");
                }
                continue;
            }
            Next::Read { until } => until,
        };
        // Paced, and the last read had caught up: let more records gather,
        // then read up to what is durable by then. A backlog is read at once.
        if let Some(wait) = last_read.and_then(|t| pace.checked_sub(t.elapsed()))
            && !wait.is_zero()
        {
            std::thread::sleep(wait);
            continue;
        }
        raw.clear();
        buf.clear();
        let n = match reader.next_batch_into(until, BATCH, &mut buf, &mut raw) {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(consumer = name, error = %e, "cannot read the log; retrying");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        last_read = (n < BATCH).then(Instant::now);
        if n == 0 {
            // Everything below `until` is applied (gaps are erased records).
            progress.publish(id, until);
            continue;
        }
        let mut records = Vec::with_capacity(raw.len());
        for (lsn, range) in &raw {
            match record::decode_ref(&buf[range.clone()]) {
                Ok(r) => records.push((*lsn, r)),
                Err(e) => {
                    tracing::error!(consumer = name, lsn, error = %e, "skipping an undecodable record");
                }
            }
        }
        let next = reader.position();
        while let Err(e) = consumer.apply(&records, next) {
            let stopping = {
                let state = progress.lock();
                state.writer_done || state.slots.get(id.0).is_none_or(|s| s.stop)
            };
            if stopping {
                // Stopping: the next start retries from the position.
                return;
            }
            tracing::error!(consumer = name, error = %e, "could not apply a batch; retrying");
            std::thread::sleep(Duration::from_secs(1));
        }
        drop(records);
        progress.publish(id, next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{LogOptions, SegmentLog};
    use crate::store::NewEvent;
    use weft_protocol::MessageType;

    /// A consumer in a few lines: counts the events per source, in memory.
    #[derive(Default)]
    struct Counter {
        position: Lsn,
        events: std::collections::BTreeMap<String, usize>,
    }

    impl Consumer for Counter {
        fn position(&mut self) -> Result<Lsn, StoreError> {
            Ok(self.position)
        }

        fn apply(&mut self, records: &[(Lsn, RecordRef<'_>)], next: Lsn) -> Result<(), StoreError> {
            for (_, r) in records {
                if let RecordRef::Event { source, .. } = r {
                    *self.events.entry(source.to_string()).or_default() += 1;
                }
            }
            self.position = next;
            Ok(())
        }
    }

    fn event(id: usize) -> NewEvent {
        NewEvent {
            properties: None,
            same_device: None,
            message_id: format!("m-{id}"),
            kind: MessageType::Track,
            event: Some("E".into()),
            anonymous_id: Some("a".into()),
            user_id: None,
            previous_id: None,
            junk_ids: 0,
            consent_record: None,
            timestamp: "2026-12-02T10:00:00.000Z".into(),
            received_at: "2026-12-02T10:00:00.000Z".into(),
            ip: None,
            body: "{}".into(),
        }
    }

    fn append(log: &mut SegmentLog, source: &str, ids: std::ops::Range<usize>) {
        let payloads: Vec<Vec<u8>> = ids
            .map(|i| {
                let mut buf = Vec::new();
                record::encode_event(&mut buf, source, &event(i));
                buf
            })
            .collect();
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        log.append(&refs).unwrap();
        log.sync().unwrap();
    }

    #[test]
    fn a_registered_consumer_follows_the_log_and_runs_jobs_between_batches() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentLog::open(dir.path(), LogOptions::default()).unwrap();
        append(&mut log, "a", 0..100);
        let progress = Progress::new(log.next_lsn());
        let (id, thread) = progress
            .start(
                "counter",
                Counter::default(),
                dir.path().to_path_buf(),
                false,
            )
            .unwrap();
        progress.wait_applied(id, Duration::from_secs(10)).unwrap();
        append(&mut log, "b", 100..130);
        // Nothing new is read before the writer says it is durable...
        let count = |p: &Progress| p.run(id, |c: &mut Counter| Ok(c.events.clone())).unwrap();
        assert_eq!(count(&progress).get("b"), None);
        // ...and then all of it, before a read that waits sees it.
        progress.set_durable(log.next_lsn());
        progress.wait_applied(id, Duration::from_secs(10)).unwrap();
        let counts = count(&progress);
        assert_eq!((counts["a"], counts["b"]), (100, 30));
        assert_eq!(progress.applied(id), log.next_lsn());
        progress.writer_stopped();
        thread.join().unwrap();
        assert!(progress.stopped(id));
        assert!(matches!(
            progress.run(id, |c: &mut Counter| Ok(c.position)),
            Err(StoreError::Closed)
        ));
    }
}
