//! A destination's outbox: what its intake (a consumer of the log) has
//! picked for it and its delivery has not finished, in log order.
//!
//! The intake runs on its own thread as a consumer of the log ([`Intake`]):
//! it keeps the records the destination wants (type, event name, consent)
//! and waits while the outbox is full, so a destination that is down holds
//! a bounded amount of memory and reads the rest of its backlog from the
//! log later. Delivery takes batches from the front. Nothing here is
//! durable: the destination's position in its database is, and after a
//! restart the intake reads the log again from there.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use weft_protocol::MessageType;

use super::config::{DestinationConfig, Kind};
use crate::consent::MissingConsent;
use crate::consumer::Consumer;
use crate::log::Lsn;
use crate::record::RecordRef;
use crate::store::StoreError;

/// Most items an outbox holds before its intake waits.
pub const CAPACITY: usize = 20_000;

/// One message (or audience change) for a destination.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// Its log position (0 for an audience change).
    pub lsn: Lsn,
    /// When the collector stored it (Unix ms): end-to-end latency starts here.
    pub received_ms: i64,
    /// The identifiers it carries (erasure removes items by them).
    pub ids: Vec<String>,
    /// Its type (`track`, ...; an audience change counts as `track`).
    pub kind: MessageType,
    /// The stored message, or the audience change, as JSON.
    pub body: String,
}

/// What a destination is delivering.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Flight {
    /// Events from its outbox, in log order.
    #[default]
    Events,
    /// Segment membership changes.
    Audience,
    /// A dead batch an operator replays.
    Replay,
}

/// The outbox proper.
#[derive(Debug, Default)]
pub struct Queue {
    /// Picked, not yet being delivered.
    pub items: VecDeque<Arc<Item>>,
    /// Being delivered (erasure may remove some between attempts).
    pub in_flight: Vec<Arc<Item>>,
    /// What `in_flight` holds.
    pub flight: Flight,
    /// The intake has looked at every record below this.
    pub scanned: Lsn,
    /// When the oldest of `items` arrived.
    pub oldest: Option<Instant>,
    /// Bumped whenever erasure or expiry removed something.
    pub epoch: u64,
}

impl Queue {
    /// The destination's position: every record below it is delivered,
    /// dead, or not for it.
    pub fn position(&self) -> Lsn {
        let flying = match self.flight {
            Flight::Events => self.in_flight.first(),
            Flight::Audience | Flight::Replay => None,
        };
        flying
            .or(self.items.front())
            .map_or(self.scanned, |i| i.lsn)
    }

    fn remove_where(&mut self, gone: impl Fn(&Item) -> bool) -> usize {
        let before = self.items.len() + self.in_flight.len();
        self.items.retain(|i| !gone(i));
        self.in_flight.retain(|i| !gone(i));
        let removed = before - self.items.len() - self.in_flight.len();
        if removed > 0 {
            self.epoch += 1;
        }
        removed
    }
}

/// What the intake, the delivery and the API share about one destination.
#[derive(Debug, Default)]
pub struct Shared {
    queue: Mutex<Queue>,
    /// The intake waits here for room.
    room: Condvar,
    /// Delivery waits here for items, replays or a stop.
    pub wake: tokio::sync::Notify,
    /// Stop: the destination is removed, changed or the collector stops.
    pub stop: AtomicBool,
}

impl Shared {
    /// An outbox whose intake starts at `position`.
    pub fn new(position: Lsn) -> Arc<Shared> {
        let s = Shared::default();
        s.lock().scanned = position;
        Arc::new(s)
    }

    /// The queue.
    pub fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks the intake and the delivery to stop.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.room.notify_all();
        self.wake.notify_one();
    }

    /// Whether a stop was asked.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Moves up to `max` items to `in_flight` (empty before), when there
    /// are `max`, or the oldest has waited `max_age`, or `flush`. Else
    /// answers how long until the oldest is old enough (`None`: empty).
    pub fn take_batch(
        &self,
        max: usize,
        max_age: Duration,
        flush: bool,
    ) -> Result<usize, Option<Duration>> {
        let mut q = self.lock();
        let Some(oldest) = q.oldest else {
            return Err(None);
        };
        let waited = oldest.elapsed();
        if q.items.len() < max && waited < max_age && !flush {
            return Err(Some(max_age - waited));
        }
        let n = q.items.len().min(max);
        let taken: Vec<Arc<Item>> = q.items.drain(..n).collect();
        q.in_flight = taken;
        q.flight = Flight::Events;
        q.oldest = (!q.items.is_empty()).then(Instant::now);
        drop(q);
        self.room.notify_all();
        Ok(n)
    }

    /// Erasure: drops the items carrying one of `ids` or at one of `lsns`.
    pub fn erase(&self, ids: &HashSet<String>, lsns: &HashSet<Lsn>) -> usize {
        let removed = self.lock().remove_where(|i| {
            (i.lsn > 0 && lsns.contains(&i.lsn)) || i.ids.iter().any(|x| ids.contains(x))
        });
        self.room.notify_all();
        removed
    }

    /// Retention: drops the items stored before `before_ms`.
    pub fn expire(&self, before_ms: i64) -> usize {
        let removed = self.lock().remove_where(|i| i.received_ms < before_ms);
        self.room.notify_all();
        removed
    }

    /// Items picked and not delivered yet.
    pub fn pending(&self) -> usize {
        let q = self.lock();
        q.items.len() + q.in_flight.len()
    }
}

/// Reads the log for one destination: keeps what it wants.
pub struct Intake {
    /// The outbox.
    pub shared: Arc<Shared>,
    /// Where it starts (the destination's durable position).
    pub position: Lsn,
    /// What it wants.
    pub config: Arc<DestinationConfig>,
    /// Each source's rule for messages without consent context.
    pub sources: Arc<HashMap<String, MissingConsent>>,
}

/// The Unix ms of an RFC 3339 time (0 if it is not one).
pub fn unix_ms(text: &str) -> i64 {
    crate::clock::unix_millis(text).unwrap_or(0)
}

impl Intake {
    fn wants(&self, source: &str, e: &crate::record::EventRef<'_>) -> bool {
        let c = &self.config;
        if !c.wants(e.kind, e.event) {
            return false;
        }
        let is_consent_record = e.consent_record.is_some();
        if is_consent_record {
            // Consent decisions reach analytics tools, never ad tools.
            return !c.is_ad_destination() && !matches!(c.kind, Kind::Ga4 { .. });
        }
        let missing = self.sources.get(source).copied().unwrap_or_default();
        crate::consent::grants(e.body, &c.consent).unwrap_or(missing == MissingConsent::Assumed)
    }
}

impl Consumer for Intake {
    fn position(&mut self) -> Result<Lsn, StoreError> {
        Ok(self.position)
    }

    fn apply(&mut self, records: &[(Lsn, RecordRef<'_>)], next: Lsn) -> Result<(), StoreError> {
        let mut picked = Vec::new();
        for (lsn, r) in records {
            let RecordRef::Event { source, event: e } = r else {
                continue;
            };
            if !self.wants(source, e) {
                continue;
            }
            let ids = [e.anonymous_id, e.user_id, e.previous_id]
                .into_iter()
                .flatten()
                .map(str::to_owned)
                .collect();
            picked.push((
                *lsn,
                Arc::new(Item {
                    lsn: *lsn,
                    received_ms: unix_ms(e.received_at),
                    ids,
                    kind: e.kind,
                    body: e.body.to_owned(),
                }),
            ));
        }
        let mut picked = picked.into_iter().peekable();
        loop {
            let mut q = self.shared.lock();
            while q.items.len() < CAPACITY {
                let Some((lsn, item)) = picked.next() else {
                    break;
                };
                if q.oldest.is_none() {
                    q.oldest = Some(Instant::now());
                }
                q.items.push_back(item);
                // Records before this one are looked at.
                q.scanned = q.scanned.max(lsn);
            }
            if picked.peek().is_none() {
                q.scanned = q.scanned.max(next);
                drop(q);
                self.shared.wake.notify_one();
                return Ok(());
            }
            drop(q);
            self.shared.wake.notify_one();
            let q = self.shared.lock();
            if self.shared.stopping() {
                return Err(StoreError::Closed);
            }
            let _ = self
                .shared
                .room
                .wait_timeout(q, Duration::from_millis(200))
                .unwrap_or_else(|e| e.into_inner());
            if self.shared.stopping() {
                return Err(StoreError::Closed);
            }
        }
    }
}
