//! Delivery: one destination's loop from its outbox to its receiver.
//!
//! Batches go out one at a time, in log order, so a profile's messages
//! arrive in the order they were stored. A batch is retried on network
//! errors, timeouts, 408, 429 and 5xx, with exponential backoff and jitter
//! from 1 s to 10 min (or what `Retry-After` asks), until its retry limit;
//! then, or at once on another 4xx, it moves to the dead letters and the
//! next batch goes. 410 disables the destination. After each batch the
//! position is saved: a crash repeats at most the batch in flight (same
//! `webhook-id`), never loses one. Each destination has its own thread and
//! runtime: none waits for another.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::db;
use super::http::{Answer, TransportError};
use super::outbox::{Flight, Item, Shared};
use super::status::Status;
use crate::clock::format_utc_millis;
use crate::store::EventStore;

/// A batch being delivered.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Its id (`webhook-id`): the same on every attempt.
    pub id: String,
    /// Audience changes (else stored messages).
    pub audience: bool,
    /// Its items, in order.
    pub items: Vec<Arc<Item>>,
}

impl Batch {
    /// `weft.events` or `weft.audience`.
    pub fn type_name(&self) -> &'static str {
        if self.audience {
            "weft.audience"
        } else {
            "weft.events"
        }
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Try again later.
    Retry,
    /// Give up on this batch: dead letters.
    Dead,
    /// The receiver is gone for good (410): disable the destination.
    Disable,
}

/// A failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What next.
    pub class: Class,
    /// The HTTP status, if one came.
    pub status: Option<u16>,
    /// What went wrong, for operators.
    pub error: String,
    /// What the receiver asked for.
    pub retry_after: Option<Duration>,
    /// The start of its answer.
    pub sample: String,
}

/// Delivered, or why not.
pub type Outcome = Result<(), Failure>;

/// A boxed future of an outcome.
pub type SinkFuture<'a> = Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

/// A receiver of batches (one per kind).
pub trait Sink: Send {
    /// One attempt at delivering `batch`.
    fn send<'a>(&'a mut self, batch: &'a Batch) -> SinkFuture<'a>;

    /// State to save with the position after a delivery (the file kind's
    /// open file).
    fn state(&self) -> Option<String> {
        None
    }

    /// Called when nothing is ready to send; answers new state to save if
    /// it did something (the file kind finishes a file whose period is over).
    fn idle(&mut self, _now_ms: i64) -> Option<String> {
        None
    }
}

/// What an HTTP status means for a batch (DESIGN.md §11).
pub fn classify_answer(answer: &Answer) -> Outcome {
    let s = answer.status;
    let class = match s {
        200..=299 => return Ok(()),
        408 | 429 | 500..=599 => Class::Retry,
        410 => Class::Disable,
        _ => Class::Dead,
    };
    Err(Failure {
        class,
        status: Some(s),
        error: format!("the receiver answered {s}"),
        retry_after: answer.retry_after,
        sample: answer.sample.clone(),
    })
}

/// No answer: retried.
pub fn transport_failure(e: &TransportError) -> Outcome {
    Err(Failure {
        class: Class::Retry,
        status: None,
        error: e.to_string(),
        retry_after: None,
        sample: String::new(),
    })
}

/// Shortest and longest wait between attempts.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(600);

/// The wait after the `failures`-th failed attempt (1, 2, ...): 1 s
/// doubling to 10 min, the upper quarter jittered (`jitter` in 0..1) so
/// destinations that failed together do not retry together.
pub fn backoff(failures: u32, jitter: f64) -> Duration {
    let base = BACKOFF_MIN.as_secs_f64() * 2f64.powi(failures.saturating_sub(1).min(20) as i32);
    let base = base.min(BACKOFF_MAX.as_secs_f64());
    let wait = base * (0.75 + 0.25 * jitter.clamp(0.0, 1.0));
    Duration::from_secs_f64(wait.max(BACKOFF_MIN.as_secs_f64()))
}

/// A number in 0..1 from the OS.
fn jitter() -> f64 {
    let mut b = [0u8; 4];
    if getrandom::fill(&mut b).is_err() {
        return 0.5;
    }
    f64::from(u32::from_le_bytes(b)) / f64::from(u32::MAX)
}

/// What is in flight.
#[derive(Debug, Clone, Copy)]
enum What {
    /// Events of the outbox.
    Events,
    /// Audience changes up to this `seq`.
    Audience(i64),
    /// A dead letter (this id) again; audience changes or not.
    Replay(i64, bool),
}

impl What {
    fn audience(self) -> bool {
        matches!(self, What::Audience(_) | What::Replay(_, true))
    }
}

/// How a batch ended.
enum Ended {
    /// Delivered (or emptied by erasure).
    Delivered,
    /// Moved to the dead letters.
    Dead,
    /// 410: the destination is disabled.
    Disabled,
    /// The destination stops; the batch stays where it is.
    Stopped,
}

/// One destination's delivery.
pub struct Delivery {
    /// Its name.
    pub name: String,
    /// Its settings.
    pub config: Arc<super::config::DestinationConfig>,
    /// The outbox.
    pub shared: Arc<Shared>,
    /// Counters and latencies.
    pub status: Arc<Status>,
    /// Where batches go.
    pub sink: Box<dyn Sink>,
    /// Its own connection to the destinations database.
    pub db: rusqlite::Connection,
    /// For audience changes.
    pub store: Arc<dyn EventStore>,
    /// Where it is in the audience history.
    pub audience_seq: i64,
    /// Called when 410 disabled it (saves `enabled: false`).
    pub on_disable: Box<dyn Fn() + Send>,
}

/// How often audience changes are looked for.
const AUDIENCE_POLL: Duration = Duration::from_millis(500);
/// How often the position is saved while only filtered records pass.
const IDLE_SAVE: Duration = Duration::from_secs(1);

impl Delivery {
    /// Runs until the outbox says stop.
    pub async fn run(mut self) {
        let mut saved = self.shared.lock().position();
        let mut last_save = Instant::now();
        let mut next_audience = Instant::now();
        while !self.shared.stopping() {
            // 1. Dead letters an operator replays.
            match db::next_replay(&self.db, &self.name) {
                Ok(Some(r)) => {
                    {
                        let mut q = self.shared.lock();
                        q.in_flight = r.items;
                        q.flight = Flight::Replay;
                    }
                    if let Ended::Stopped | Ended::Disabled = self
                        .deliver(r.batch_id, What::Replay(r.id, r.audience))
                        .await
                    {
                        break;
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(destination = %self.name, error = %e, "cannot read replays")
                }
            }
            // 2. Audience changes.
            if !self.config.audiences.is_empty() && Instant::now() >= next_audience {
                next_audience = Instant::now() + AUDIENCE_POLL;
                match self.audience_batch().await {
                    Some(Ended::Stopped | Ended::Disabled) => break,
                    Some(_) => continue,
                    None => {}
                }
            }
            // 3. Events.
            let max_age = self.config.max_age;
            let wait = match self
                .shared
                .take_batch(self.config.batch_size, max_age, false)
            {
                Ok(_) => {
                    let id = {
                        let q = self.shared.lock();
                        let first = q.in_flight.first().map_or(0, |i| i.lsn);
                        let last = q.in_flight.last().map_or(0, |i| i.lsn);
                        format!("msg_{}_{first}_{last}", self.name)
                    };
                    match self.deliver(id, What::Events).await {
                        Ended::Stopped | Ended::Disabled => break,
                        _ => {
                            saved = self.shared.lock().position();
                            last_save = Instant::now();
                            continue;
                        }
                    }
                }
                Err(wait) => wait,
            };
            // Idle: the sink may have work of its own.
            let now_ms =
                (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
            if let Some(state) = self.sink.idle(now_ms) {
                let p = db::Progress {
                    file_state: Some(state),
                    ..db::Progress::default()
                };
                if let Err(e) = db::save(&self.db, &self.name, &p) {
                    tracing::warn!(destination = %self.name, error = %e, "cannot save the file state");
                }
            }
            // Records the destination does not want move it on too.
            let position = self.shared.lock().position();
            if position > saved && last_save.elapsed() >= IDLE_SAVE {
                let p = db::Progress {
                    position: Some(position),
                    ..db::Progress::default()
                };
                match db::save(&self.db, &self.name, &p) {
                    Ok(()) => saved = position,
                    Err(e) => {
                        tracing::warn!(destination = %self.name, error = %e, "cannot save the position")
                    }
                }
                last_save = Instant::now();
            }
            let mut nap = wait.unwrap_or(IDLE_SAVE).min(IDLE_SAVE);
            if !self.config.audiences.is_empty() {
                nap = nap.min(next_audience.saturating_duration_since(Instant::now()));
            }
            let _ = tokio::time::timeout(nap, self.shared.wake.notified()).await;
        }
    }

    /// Delivers the next audience changes, if any (`None`: none waiting).
    async fn audience_batch(&mut self) -> Option<Ended> {
        let store = self.store.clone();
        let after = self.audience_seq;
        let limit = self.config.batch_size;
        let changes = match tokio::task::spawn_blocking(move || {
            store.audience_changes(after, limit)
        })
        .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::debug!(destination = %self.name, error = %e, "cannot read audience changes");
                return None;
            }
            Err(_) => return None,
        };
        let last = changes.last()?.seq;
        let first = changes.first().map_or(0, |c| c.seq);
        let items: Vec<Arc<Item>> = changes
            .into_iter()
            .filter(|c| self.config.audiences.contains(&c.segment))
            .filter(|c| {
                // An ad destination hears of a profile only with its consent.
                self.config.consent == "analytics"
                    || c.consent
                        .get(&self.config.consent)
                        .is_some_and(crate::consent::granted)
            })
            .map(|c| {
                let body = serde_json::json!({
                    "audience": c.segment,
                    "action": if c.entered { "entered" } else { "exited" },
                    "profile_id": c.profile_id,
                    "user_ids": c.user_ids,
                    "anonymous_ids": c.anonymous_ids,
                    "at": c.at,
                });
                let mut ids = c.user_ids;
                ids.extend(c.anonymous_ids);
                Arc::new(Item {
                    lsn: 0,
                    received_ms: super::outbox::unix_ms(&c.at),
                    ids,
                    kind: weft_protocol::MessageType::Track,
                    body: body.to_string(),
                })
            })
            .collect();
        if items.is_empty() {
            self.audience_seq = last;
            let p = db::Progress {
                audience_seq: Some(last),
                ..db::Progress::default()
            };
            if let Err(e) = db::save(&self.db, &self.name, &p) {
                tracing::warn!(destination = %self.name, error = %e, "cannot save the audience position");
            }
            return Some(Ended::Delivered);
        }
        {
            let mut q = self.shared.lock();
            q.in_flight = items;
            q.flight = Flight::Audience;
        }
        let ended = self
            .deliver(
                format!("aud_{}_{first}_{last}", self.name),
                What::Audience(last),
            )
            .await;
        if matches!(ended, Ended::Delivered | Ended::Dead) {
            self.audience_seq = last;
        }
        Some(ended)
    }

    /// Delivers what is in flight, retrying as the design says, and saves
    /// the outcome with the new position.
    async fn deliver(&mut self, id: String, what: What) -> Ended {
        let audience = what.audience();
        let first_attempt = Instant::now();
        let first_attempt_at = format_utc_millis(time::OffsetDateTime::now_utc());
        let mut attempts: u32 = 0;
        let mut failed: u64 = 0;
        let mut last: Option<Failure> = None;
        let ended = loop {
            let items = self.shared.lock().in_flight.clone();
            if items.is_empty() {
                // Nothing left (erasure took it all).
                break Ended::Delivered;
            }
            let batch = Batch {
                id: id.clone(),
                audience,
                items,
            };
            attempts += 1;
            let outcome = tokio::select! {
                o = self.sink.send(&batch) => o,
                () = stopped(&self.shared) => break Ended::Stopped,
            };
            match outcome {
                Ok(()) => {
                    let now = time::OffsetDateTime::now_utc();
                    let now_ms = (now.unix_timestamp_nanos() / 1_000_000) as i64;
                    self.status.delivered(&batch.items, now_ms);
                    break Ended::Delivered;
                }
                Err(f) => {
                    failed += 1;
                    self.status.failed(&f.error);
                    tracing::debug!(destination = %self.name, error = %f.error, "delivery attempt failed");
                    let class = f.class;
                    let retry_after = f.retry_after;
                    last = Some(f);
                    match class {
                        Class::Dead => break Ended::Dead,
                        Class::Disable => break Ended::Disabled,
                        Class::Retry => {}
                    }
                    let wait = retry_after.unwrap_or_else(|| backoff(attempts, jitter()));
                    if first_attempt.elapsed() + wait > self.config.retry_limit {
                        break Ended::Dead;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = stopped(&self.shared) => break Ended::Stopped,
                    }
                }
            }
        };
        let last_error = last.as_ref().map(|f| f.error.clone());
        match ended {
            Ended::Stopped => return ended,
            Ended::Disabled => {
                tracing::warn!(destination = %self.name, "the receiver answered 410 Gone: destination disabled");
                let p = db::Progress {
                    failed,
                    last_error: Some("the receiver answered 410 Gone: disabled".into()),
                    ..db::Progress::default()
                };
                let _ = db::save(&self.db, &self.name, &p);
                (self.on_disable)();
                return ended;
            }
            _ => {}
        }
        let (delivered, in_flight) = {
            let mut q = self.shared.lock();
            let in_flight = std::mem::take(&mut q.in_flight);
            q.flight = Flight::Events;
            (in_flight.len() as u64, in_flight)
        };
        let position = matches!(what, What::Events).then(|| self.shared.lock().position());
        let audience_seq = match what {
            What::Audience(last) => Some(last),
            _ => None,
        };
        let replayed = match what {
            What::Replay(id, _) => Some(id),
            _ => None,
        };
        let result = match (&ended, replayed) {
            (Ended::Delivered, Some(dead_id)) => db::resolve(
                &mut self.db,
                &self.name,
                dead_id,
                &db::Progress {
                    delivered,
                    failed,
                    last_error,
                    ..db::Progress::default()
                },
            ),
            (Ended::Delivered, None) => db::save(
                &self.db,
                &self.name,
                &db::Progress {
                    position,
                    audience_seq,
                    delivered,
                    failed,
                    last_error,
                    file_state: self.sink.state(),
                },
            ),
            _ => {
                let f = last.unwrap_or(Failure {
                    class: Class::Dead,
                    status: None,
                    error: "unknown".into(),
                    retry_after: None,
                    sample: String::new(),
                });
                let now = format_utc_millis(time::OffsetDateTime::now_utc());
                tracing::warn!(destination = %self.name, error = %f.error, messages = in_flight.len(), "batch moved to the dead letters");
                let dead = db::DeadBatch {
                    batch_id: &id,
                    audience,
                    attempts,
                    last_status: f.status,
                    last_error: &f.error,
                    first_attempt_at: &first_attempt_at,
                    last_attempt_at: &now,
                    response_sample: &f.sample,
                    items: &in_flight,
                };
                self.status.dead(in_flight.len() as u64);
                db::bury(
                    &mut self.db,
                    &self.name,
                    &dead,
                    replayed,
                    &db::Progress {
                        position,
                        audience_seq,
                        failed,
                        last_error: Some(f.error.clone()),
                        ..db::Progress::default()
                    },
                )
            }
        };
        if let Err(e) = result {
            tracing::error!(destination = %self.name, error = %e, "cannot save delivery progress");
        }
        ended
    }
}

/// Resolves once the destination is asked to stop.
async fn stopped(shared: &Shared) {
    loop {
        if shared.stopping() {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), shared.wake.notified()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16) -> Answer {
        Answer {
            status,
            retry_after: None,
            sample: String::new(),
        }
    }

    #[test]
    fn statuses_mean_what_the_design_says() {
        assert_eq!(classify_answer(&answer(200)), Ok(()));
        assert_eq!(classify_answer(&answer(204)), Ok(()));
        for s in [408, 429, 500, 502, 503, 504] {
            assert_eq!(
                classify_answer(&answer(s)).unwrap_err().class,
                Class::Retry,
                "{s}"
            );
        }
        for s in [400, 401, 403, 404, 413, 422, 301] {
            assert_eq!(
                classify_answer(&answer(s)).unwrap_err().class,
                Class::Dead,
                "{s}"
            );
        }
        assert_eq!(
            classify_answer(&answer(410)).unwrap_err().class,
            Class::Disable
        );
        assert_eq!(
            transport_failure(&TransportError::Timeout)
                .unwrap_err()
                .class,
            Class::Retry
        );
    }

    #[test]
    fn backoff_doubles_from_one_second_to_ten_minutes_with_jitter() {
        assert_eq!(backoff(1, 0.0), Duration::from_secs(1));
        assert_eq!(backoff(1, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(2, 1.0), Duration::from_secs(2));
        assert_eq!(backoff(2, 0.0), Duration::from_secs_f64(1.5));
        assert_eq!(backoff(5, 1.0), Duration::from_secs(16));
        assert_eq!(backoff(11, 1.0), Duration::from_secs(600));
        assert_eq!(backoff(40, 1.0), Duration::from_secs(600));
        assert_eq!(backoff(40, 0.0), Duration::from_secs(450));
        let spread: std::collections::HashSet<u128> =
            (0..20).map(|_| backoff(8, jitter()).as_millis()).collect();
        assert!(spread.len() > 1, "jitter varies the wait");
    }
}
