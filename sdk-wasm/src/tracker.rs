//! The tracker: turns calls into messages, keeps identity, consent and the
//! queue, and decides what to send.
//!
//! It does no I/O of its own beyond the [`Env`] seams: the API module asks
//! it for the next batch body, sends it, and reports the outcome with
//! [`Tracker::delivered`]. That keeps delivery and consent logic testable
//! natively.
//!
//! Invariants (DESIGN.md §7):
//! - Under opt-in with no decision, nothing is written to storage and
//!   nothing is queued: calls are held in memory (at most [`MAX_HELD`]).
//! - Identifiers, session and queue are stored only while `analytics` is
//!   granted; revoking it deletes them at once.
//! - A message whose category is not granted is never queued.

use alloc::borrow::ToOwned;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

use weft_protocol::json::{push_escaped, push_u64};
use weft_protocol::{Json, MessageType};

use crate::consent::{self, Category, Policy, Prefs, Signals};
use crate::delivery::{Outcome, backoff_ms};
use crate::env::Env;
use crate::ids::uuid_v4;
use crate::queue::{Item, Part, Queue, write_batch};

/// Storage keys. Prefixed so they never collide with the site's own.
pub mod keys {
    /// The anonymous (device) identifier.
    pub const ANONYMOUS_ID: &str = "weft.aid";
    /// The identified user's ID.
    pub const USER_ID: &str = "weft.uid";
    /// The persisted queue.
    pub const QUEUE: &str = "weft.queue";
    /// The session: `start.last` in milliseconds since the epoch.
    pub const SESSION: &str = "weft.session";
    /// The consent decision (necessary: kept after a denial).
    pub const CONSENT: &str = "weft.consent";
    /// Every key that exists only with `analytics` consent.
    pub const IDENTITY: [&str; 4] = [ANONYMOUS_ID, USER_ID, SESSION, QUEUE];
}

/// Calls held before an opt-in decision; later ones are dropped and counted.
pub const MAX_HELD: usize = 100;
/// Inactivity after which the next event starts a new session.
pub const SESSION_TIMEOUT_MS: f64 = 30.0 * 60.0 * 1000.0;
/// The `track` event name of a consent record.
pub const CONSENT_EVENT: &str = "Consent Updated";

/// Settings read from the script tag.
#[derive(Debug, Clone)]
pub struct Config {
    /// The source's write key.
    pub write_key: String,
    /// Messages per batch.
    pub batch_count: usize,
    /// Bytes per batch body.
    pub batch_bytes: usize,
    /// Cap of the queue, in bytes of encoded messages.
    pub queue_bytes: usize,
    /// How long a partial batch waits, in milliseconds.
    pub flush_interval_ms: f64,
    /// The site's consent policy.
    pub policy: Policy,
    /// The site's privacy policy version, sent in consent records; a stored
    /// decision made under another version is asked again.
    pub policy_version: String,
}

impl Config {
    /// Defaults for a write key: 20 messages, bodies under the keepalive
    /// budget, a 512 KB queue, 5 s interval, opt-in.
    pub fn new(write_key: String) -> Self {
        Config {
            write_key,
            batch_count: 20,
            batch_bytes: weft_protocol::limits::KEEPALIVE_BUDGET_BYTES - 1024,
            queue_bytes: 512 * 1024,
            flush_interval_ms: 5_000.0,
            policy: Policy::OptIn,
            policy_version: String::new(),
        }
    }
}

/// A call from the page, before the tracker adds identity and timing.
#[derive(Debug, Clone, Default)]
pub struct Call {
    /// `track`: the event name; `page`: the page name.
    pub name: Option<String>,
    /// `track`/`page` properties or `identify` traits, as JSON text.
    pub data: Option<Json>,
}

/// A message being made: what the call said, stamped with the user and
/// time of the call; identity and context come when it is queued.
#[derive(Debug)]
struct Draft {
    kind: MessageType,
    user_id: Option<String>,
    timestamp: String,
    /// `event` (track) or `name` (page).
    name: Option<String>,
    /// `previousId` (alias) or `groupId` (group).
    id: Option<String>,
    /// `properties` (track, page) or `traits` (identify, group).
    data: Option<Json>,
}

impl Draft {
    fn new(kind: MessageType, name: Option<String>, data: Option<Json>) -> Self {
        Draft {
            kind,
            user_id: None,
            timestamp: String::new(),
            name,
            id: None,
            data,
        }
    }

    /// The bytes [`Draft::write`] reserves: the members every message has
    /// (type, two UUIDs, the timestamp and their keys: about 190 bytes)
    /// and room for a user ID, beside its name and data. Enough that a
    /// usual message is written without growing (a `track` growing from
    /// too small a guess was copied to a block twice the size every call).
    fn room(&self) -> usize {
        256 + self.data.as_ref().map_or(0, |d| d.as_str().len())
            + self.name.as_ref().map_or(0, String::len)
    }

    /// The message's JSON (without its context), in the Segment spec's
    /// names: one writer for every kind of call.
    fn write(&self, message_id: &str, anonymous_id: Option<&str>) -> String {
        // What its kind names: its name, its other ID, its data.
        let (name, id, data) = match self.kind {
            MessageType::Track => (",\"event\":", "", ",\"properties\":"),
            MessageType::Page | MessageType::Screen => (",\"name\":", "", ",\"properties\":"),
            MessageType::Identify => ("", "", ",\"traits\":"),
            MessageType::Alias => ("", ",\"previousId\":", ""),
            MessageType::Group => ("", ",\"groupId\":", ",\"traits\":"),
        };
        // An alias without a previous ID joins this browser's.
        let id_value = match self.kind {
            MessageType::Alias => self.id.as_deref().or(anonymous_id),
            _ => self.id.as_deref(),
        };
        let mut out = String::with_capacity(self.room());
        // Each member with a value and a key; `escape`: the value is text
        // (properties and traits are JSON already).
        let mut member = |key: &str, value: Option<&str>, escape: bool| {
            if let (false, Some(value)) = (key.is_empty(), value) {
                out.push_str(key);
                if escape {
                    push_escaped(&mut out, value);
                } else {
                    out.push_str(value);
                }
            }
        };
        member("{\"type\":", Some(self.kind.as_str()), true);
        member(",\"messageId\":", Some(message_id), true);
        member(",\"anonymousId\":", anonymous_id, true);
        member(",\"userId\":", self.user_id.as_deref(), true);
        member(",\"timestamp\":", Some(&self.timestamp), true);
        member(name, self.name.as_deref(), true);
        member(id, id_value, true);
        member(data, self.data.as_ref().map(Json::as_str), false);
        out.push_str("}");
        out
    }
}

/// What the session's and consent's member of a message is made of: the
/// session, the message's category and the preferences in force.
type MadeOf = (Option<u64>, Category, Prefs);

/// A message waiting for an opt-in decision, with what it was made under.
struct Held {
    message: Draft,
    category: Category,
    page: Option<Part>,
}

/// The SDK's state for one page.
pub struct Tracker<E: Env> {
    env: E,
    config: Config,
    prefs: Prefs,
    undecided: bool,
    anonymous_id: Option<String>,
    user_id: Option<String>,
    /// Session start and last activity, milliseconds since the epoch.
    session: Option<(f64, f64)>,
    held: Vec<Held>,
    /// Calls dropped because [`MAX_HELD`] were already held.
    pub held_dropped: u32,
    queue: Queue,
    /// Failed attempts in a row, and no retry before `retry_at` (ms).
    failures: u32,
    retry_at: f64,
    /// Batches the collector refused for good.
    pub refused: u32,
    /// Messages dropped for being over the collector's 32 KB limit.
    pub too_large: u32,
    /// The queue changed since it was last written to storage.
    dirty: bool,
    /// The anonymous ID was read or made and is not written back yet (it
    /// is with the queue, at the next [`Tracker::save`]: not on the way to
    /// ready, where a page's first storage writes are slow).
    identity_unsaved: bool,
    /// The library's context member, shared by every message.
    library: Part,
    /// The session's and consent's members of the last message, with what
    /// they were made of: the next message with the same shares them.
    session_part: Option<(MadeOf, Part)>,
}

impl<E: Env> Tracker<E> {
    /// Starts a tracker: works out consent, and with `analytics` granted
    /// reads or creates the identity and restores the persisted queue.
    /// Under opt-in with no decision it writes nothing.
    pub fn new(env: E, config: Config, signals: Signals) -> Self {
        let stored = env
            .get(keys::CONSENT)
            .and_then(|s| Prefs::decode(&s, &config.policy_version));
        let start = consent::at_start(config.policy, stored, signals);
        let mut t = Tracker {
            queue: Queue::new(config.queue_bytes),
            env,
            config,
            prefs: start.prefs,
            undecided: start.undecided,
            anonymous_id: None,
            user_id: None,
            session: None,
            held: Vec::new(),
            held_dropped: 0,
            failures: 0,
            retry_at: 0.0,
            refused: 0,
            too_large: 0,
            dirty: false,
            identity_unsaved: false,
            library: Arc::new(crate::LIBRARY_MEMBER.to_owned()),
            session_part: None,
        };
        if t.prefs.analytics {
            t.user_id = t.env.get(keys::USER_ID).filter(|u| !u.is_empty());
            t.session = t.env.get(keys::SESSION).and_then(|s| parse_session(&s));
            if let Some(saved) = t.env.get(keys::QUEUE) {
                t.queue.restore(&saved);
            }
            t.ensure_identity();
        } else if !t.undecided {
            // Decided without analytics: leftovers of an earlier consent go.
            t.forget();
        }
        t
    }

    /// The host environment.
    pub fn env(&self) -> &E {
        &self.env
    }

    /// The anonymous ID of this browser; `None` without `analytics`
    /// consent.
    pub fn anonymous_id(&self) -> Option<&str> {
        self.anonymous_id.as_deref()
    }

    /// The identified user, if any.
    pub fn user_id(&self) -> Option<&str> {
        self.user_id.as_deref()
    }

    /// The consent preferences in force.
    pub fn prefs(&self) -> Prefs {
        self.prefs
    }

    /// `true` under opt-in before any decision.
    pub fn undecided(&self) -> bool {
        self.undecided
    }

    /// Number of messages queued (in flight or not).
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Number of calls held for a decision.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// What was lost, counted since the page started: calls dropped past
    /// [`MAX_HELD`] before a decision, messages dropped at the queue's cap,
    /// messages over the collector's size limit, and batches the collector
    /// refused for good.
    pub fn losses(&self) -> [u32; 4] {
        [
            self.held_dropped,
            self.queue.dropped,
            self.too_large,
            self.refused,
        ]
    }

    /// `weft.debug()`'s answer as JSON: what is queued and held, and
    /// [`Tracker::losses`].
    pub fn debug_json(&self) -> String {
        let [held_dropped, queue_dropped, too_large, refused] = self.losses();
        let mut text = String::new();
        let mut count = |key: &str, n: u32| {
            text.push_str(key);
            push_u64(&mut text, n.into());
        };
        count("{\"queued\":", self.queue.len() as u32);
        count(",\"held\":", self.held.len() as u32);
        count(",\"heldDropped\":", held_dropped);
        count(",\"queueDropped\":", queue_dropped);
        count(",\"tooLarge\":", too_large);
        count(",\"refused\":", refused);
        text.push_str("}");
        text
    }

    /// Records a page view.
    pub fn page(&mut self, call: Call, page: Option<Part>) {
        let data = call.data.map(|d| d.as_str().into());
        self.call(
            MessageType::Page,
            call.name,
            data,
            Category::Analytics,
            page,
        );
    }

    /// Records a named event that needs `category`.
    pub fn track(
        &mut self,
        event: String,
        properties: Option<Json>,
        category: Category,
        page: Option<Part>,
    ) {
        let data = properties.map(|d| d.as_str().into());
        self.call(MessageType::Track, Some(event), data, category, page);
    }

    /// Ties this browser to `user_id` and remembers it for later messages.
    pub fn identify(&mut self, user_id: String, traits: Option<Json>, page: Option<Part>) {
        let data = traits.map(|d| d.as_str().into());
        let a = Category::Analytics;
        self.call(MessageType::Identify, Some(user_id), data, a, page);
    }

    /// Joins `previous_id` (default: the current user, else this browser's
    /// anonymous ID) to `user_id`.
    pub fn alias(&mut self, user_id: String, previous_id: Option<String>, page: Option<Part>) {
        let a = Category::Analytics;
        self.call(MessageType::Alias, Some(user_id), previous_id, a, page);
    }

    /// Associates the user with a group (company, team, account).
    pub fn group(&mut self, group_id: String, traits: Option<Json>, page: Option<Part>) {
        let data = traits.map(|d| d.as_str().into());
        let a = Category::Analytics;
        self.call(MessageType::Group, Some(group_id), data, a, page);
    }

    /// Records any call, as the JavaScript API passes it (one function for
    /// every kind, so the message building is in the wasm once): `a` is the
    /// page's name, the track's event, the identified or aliased user or
    /// the group; `b` the properties or traits as JSON text, or for an
    /// alias the previous ID (default: the current user, else this
    /// browser's anonymous ID). An identify also remembers its user for
    /// later messages.
    pub fn call(
        &mut self,
        kind: MessageType,
        a: Option<String>,
        b: Option<String>,
        category: Category,
        page: Option<Part>,
    ) {
        let mut m = Draft::new(kind, None, None);
        match kind {
            MessageType::Alias => {
                m.id = b.or_else(|| self.user_id.clone());
                m.user_id = a;
            }
            _ => {
                m.data = b.map(Json::from_trusted);
                match kind {
                    MessageType::Identify => {
                        if let (Some(user), Some(_)) = (&a, &self.anonymous_id) {
                            self.env.set(keys::USER_ID, user);
                        }
                        self.user_id = a;
                    }
                    MessageType::Group => m.id = a,
                    _ => m.name = a,
                }
            }
        }
        self.record(m, category, page);
    }

    /// Forgets the user (logout, next person on a shared device): a new
    /// anonymous ID, no user ID, a new session. Queued messages keep the
    /// identity they were made with. Returns the reset notice to send at
    /// once when there was an identity: an empty batch marked `reset`, on
    /// which the collector's server cookie retires the old ID, so the next
    /// person is not joined to the last one.
    pub fn reset(&mut self) -> Option<String> {
        self.user_id = None;
        self.session = None;
        self.anonymous_id.take()?;
        for key in [keys::ANONYMOUS_ID, keys::USER_ID, keys::SESSION] {
            self.env.remove(key);
        }
        self.ensure_identity();
        // An empty batch's body (see `write_batch`), marked.
        let mut body = String::from("{\"batch\":[],\"reset\":true,\"sentAt\":");
        push_escaped(&mut body, &self.env.now_iso());
        body.push_str(",\"writeKey\":");
        push_escaped(&mut body, &self.config.write_key);
        body.push_str("}");
        Some(body)
    }

    /// Applies a consent decision. Returns a batch body to send at once,
    /// without the queue (which is gone): the record of a withdrawal, made
    /// with the identity that is being deleted (`extra`: the batch-level
    /// context members, see [`write_batch`]).
    pub fn set_consent(&mut self, prefs: Prefs, page: Option<Part>, extra: &str) -> Option<String> {
        let stored = prefs.encode(&self.config.policy_version);
        let changed = self.undecided || self.env.get(keys::CONSENT).as_deref() != Some(&stored);
        self.prefs = prefs;
        self.undecided = false;
        if !changed {
            return None;
        }
        self.env.set(keys::CONSENT, &stored);
        let record = self.consent_record(prefs);
        let held = core::mem::take(&mut self.held);
        if prefs.analytics {
            self.ensure_identity();
            self.record(record, Category::Necessary, page);
            for h in held {
                self.admit(h.message, h.category, h.page);
            }
            return None;
        }
        let body = self.anonymous_id.clone().map(|_| {
            let mut record = record;
            record.user_id = self.user_id.clone();
            record.timestamp = self.env.now_iso();
            let item = self.finish(record, Category::Necessary, page);
            write_batch(&[item], extra, &self.env.now_iso(), &self.config.write_key)
        });
        self.forget();
        body
    }

    fn consent_record(&self, prefs: Prefs) -> Draft {
        let mut text = String::from("{\"categoryPreferences\":");
        prefs.to_wire().push_json(&mut text);
        text.push_str(",\"policy\":\"");
        text.push_str(self.config.policy.as_str());
        text.push_str("\"");
        if !self.config.policy_version.is_empty() {
            text.push_str(",\"policyVersion\":");
            push_escaped(&mut text, &self.config.policy_version);
        }
        text.push_str("}");
        Draft::new(
            MessageType::Track,
            Some(CONSENT_EVENT.into()),
            Some(Json::from_trusted(text)),
        )
    }

    /// Deletes every identifier, the session and the queue, in storage and
    /// in memory.
    fn forget(&mut self) {
        for key in keys::IDENTITY {
            self.env.remove(key);
        }
        self.anonymous_id = None;
        self.user_id = None;
        self.session = None;
        self.queue.clear();
        self.held.clear();
        self.dirty = false;
    }

    /// Reads or creates the anonymous ID (with `analytics` granted only).
    fn ensure_identity(&mut self) {
        if self.anonymous_id.is_some() || !self.prefs.analytics {
            return;
        }
        let id = match self.env.get(keys::ANONYMOUS_ID) {
            Some(id) if !id.is_empty() => id,
            _ => uuid_v4(&self.env),
        };
        // Written even when read (with the queue, see `save`): refreshes
        // the cookie's expiry and mirrors a cookie-only ID into
        // localStorage.
        self.identity_unsaved = true;
        self.persist();
        if let Some(user) = &self.user_id {
            self.env.set(keys::USER_ID, user);
        }
        self.anonymous_id = Some(id);
    }

    /// Stamps a call with the user and time of now, then holds, queues or
    /// drops it by consent.
    fn record(&mut self, mut m: Draft, category: Category, page: Option<Part>) {
        if m.user_id.is_none() {
            m.user_id = self.user_id.clone();
        }
        m.timestamp = self.env.now_iso();
        if self.undecided {
            if self.held.len() < MAX_HELD {
                self.held.push(Held {
                    message: m,
                    category,
                    page,
                });
            } else {
                self.held_dropped += 1;
            }
            return;
        }
        self.admit(m, category, page);
    }

    /// Queues a message if its category is granted (and `analytics`, which
    /// every stored identity needs).
    fn admit(&mut self, m: Draft, category: Category, page: Option<Part>) {
        if !(self.prefs.analytics && self.prefs.allows(category)) {
            return;
        }
        self.ensure_identity();
        let item = self.finish(m, category, page);
        // The collector refuses messages over 32 KB; one would also block
        // the queue behind it, retried for ever.
        if item.wire_len() > weft_protocol::limits::MAX_MESSAGE_BYTES {
            self.too_large += 1;
            return;
        }
        self.queue.push(item);
        self.persist();
    }

    /// Adds identity, encodes, and gives the message its context: the
    /// page's part, the library's, and the session's and consent's.
    fn finish(&mut self, m: Draft, category: Category, page: Option<Part>) -> Item {
        let body = m.write(&uuid_v4(&self.env), self.anonymous_id.as_deref());
        let session = self.session_id();
        let made_of = (session, category, self.prefs);
        let part = match &self.session_part {
            Some((of, part)) if *of == made_of => part.clone(),
            _ => {
                let mut text = String::new();
                if let Some(id) = session {
                    text.push_str("\"sessionId\":");
                    push_u64(&mut text, id);
                    text.push_str(",");
                }
                text.push_str("\"consent\":{\"category\":\"");
                text.push_str(category.as_str());
                text.push_str("\",\"categoryPreferences\":");
                self.prefs.to_wire().push_json(&mut text);
                text.push_str("}");
                let part = Arc::new(text);
                self.session_part = Some((made_of, part.clone()));
                part
            }
        };
        let mut parts = Vec::with_capacity(3);
        if let Some(page) = page.filter(|p| !p.is_empty()) {
            parts.push(page);
        }
        parts.push(self.library.clone());
        parts.push(part);
        Item { body, parts }
    }

    /// The current session's ID (its start), starting a new one after
    /// [`SESSION_TIMEOUT_MS`] without events; `None` without an identity.
    fn session_id(&mut self) -> Option<u64> {
        self.anonymous_id.as_ref()?;
        let now = self.env.now_ms();
        let start = match self.session {
            Some((start, last)) if now - last < SESSION_TIMEOUT_MS && now >= last => start,
            _ => now,
        };
        self.session = Some((start, now));
        // Written with the queue, once per burst.
        self.persist();
        Some(start as u64)
    }

    /// `true` when a full batch is waiting and should go now rather than at
    /// the next interval.
    pub fn batch_ready(&self) -> bool {
        self.queue.len() >= self.config.batch_count
    }

    /// How long until the next request should go, in milliseconds: `None`
    /// when nothing waits or a request is in flight.
    pub fn send_delay(&self) -> Option<f64> {
        if self.queue.is_empty() || self.queue.in_flight() {
            return None;
        }
        if self.failures > 0 {
            return Some((self.retry_at - self.env.now_ms()).max(0.0));
        }
        Some(if self.batch_ready() {
            0.0
        } else {
            self.config.flush_interval_ms
        })
    }

    /// The body of the next request, or `None` when nothing is queued, a
    /// request is already in flight, or a retry is not due yet (`force`
    /// overrides that: the page is going away). The caller must answer
    /// with [`Tracker::delivered`]. `extra`: context members for the batch
    /// level (see [`write_batch`]).
    pub fn next_batch(&mut self, force: bool, extra: &str) -> Option<String> {
        if !force && self.failures > 0 && self.env.now_ms() < self.retry_at {
            return None;
        }
        let sent_at = self.env.now_iso();
        let messages = self
            .queue
            .take_batch(self.config.batch_count, self.config.batch_bytes);
        if messages.is_empty() {
            return None;
        }
        Some(write_batch(
            messages,
            extra,
            &sent_at,
            &self.config.write_key,
        ))
    }

    /// The outcome of the request from [`Tracker::next_batch`].
    pub fn delivered(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Accepted | Outcome::Refused => {
                if matches!(outcome, Outcome::Refused) {
                    self.refused += 1;
                }
                self.queue.ack();
                self.failures = 0;
                self.persist();
            }
            Outcome::Retry(after) => {
                self.queue.nack();
                self.failures = self.failures.saturating_add(1);
                let mut r = [0u8; 1];
                self.env.fill(&mut r);
                let delay =
                    after.unwrap_or_else(|| backoff_ms(self.failures, f64::from(r[0]) / 256.0));
                self.retry_at = self.env.now_ms() + delay;
            }
        }
    }

    /// The body of a last request as the page goes away: the messages not
    /// in flight, within `max_bytes` of messages. Answer with
    /// [`Tracker::beacon_sent`] once the browser has taken it.
    pub fn beacon_batch(&self, max_bytes: usize, extra: &str) -> Option<(String, usize)> {
        let messages = self.queue.peek_unsent(max_bytes);
        let n = messages.len();
        (n > 0).then(|| {
            let body = write_batch(messages, extra, &self.env.now_iso(), &self.config.write_key);
            (body, n)
        })
    }

    /// The browser queued the beacon of `n` messages: they are gone.
    pub fn beacon_sent(&mut self, n: usize) {
        self.queue.drop_unsent(n);
        self.persist();
    }

    /// Marks the queue and session as changed; [`Tracker::save`] writes
    /// them. A burst of calls then costs one write, not one per call.
    fn persist(&mut self) {
        self.dirty = true;
    }

    /// `true` when the queue changed since it was last written.
    pub fn unsaved(&self) -> bool {
        self.dirty
    }

    /// Writes the queue to storage if it changed (and identity is allowed).
    pub fn save(&mut self) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        let Some(id) = &self.anonymous_id else {
            return;
        };
        if core::mem::take(&mut self.identity_unsaved) {
            self.env.set(keys::ANONYMOUS_ID, id);
        }
        if let Some((start, last)) = self.session {
            let mut text = String::new();
            weft_protocol::json::push_u64(&mut text, start as u64);
            text.push_str(".");
            weft_protocol::json::push_u64(&mut text, last as u64);
            self.env.set(keys::SESSION, &text);
        }
        if self.queue.is_empty() {
            self.env.remove(keys::QUEUE);
        } else {
            self.env.set(keys::QUEUE, &self.queue.serialize());
        }
    }
}

/// Reads the stored session, `start.last`.
fn parse_session(text: &str) -> Option<(f64, f64)> {
    let (start, last) = weft_protocol::json::cut(text, b'.')?;
    let start = weft_protocol::json::parse_u64(start)?;
    let last = weft_protocol::json::parse_u64(last)?;
    Some((start as f64, last as f64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::{Clock, Random, Storage};
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;
    use std::rc::Rc;
    use weft_protocol::Message;

    #[test]
    fn a_usual_message_is_written_without_growing() {
        let uuid = "0b6f3c8e-2f4d-4a7e-9c1b-5d8e7f6a4b3c";
        for (kind, user) in [
            (MessageType::Track, None),
            (
                MessageType::Track,
                Some("user_0123456789abcdef0123456789abcdef"),
            ),
            (MessageType::Page, Some("42")),
        ] {
            let mut m = Draft::new(
                kind,
                Some("Product Viewed".into()),
                Some(Json::from_trusted(
                    r#"{"product_id":"sku_48213","price":49.9,"in_stock":true}"#,
                )),
            );
            m.user_id = user.map(str::to_owned);
            m.timestamp = "2026-12-02T17:56:53.123Z".into();
            let text = m.write(uuid, Some(uuid));
            assert_eq!(text.capacity(), m.room(), "{text}");
        }
    }

    /// An in-memory host: shared storage (so a second tracker sees what the
    /// first stored, like a reload) that counts writes, a clock the test
    /// moves, and counting randomness.
    #[derive(Clone, Default)]
    struct FakeEnv {
        storage: Rc<RefCell<HashMap<String, String>>>,
        writes: Rc<Cell<u32>>,
        now: Rc<Cell<f64>>,
        counter: Rc<Cell<u8>>,
    }

    impl FakeEnv {
        fn keys(&self) -> Vec<String> {
            let mut k: Vec<String> = self.storage.borrow().keys().cloned().collect();
            k.sort();
            k
        }
        fn advance(&self, ms: f64) {
            self.now.set(self.now.get() + ms);
        }
    }

    impl Storage for FakeEnv {
        fn get(&self, key: &str) -> Option<String> {
            self.storage.borrow().get(key).cloned()
        }
        fn set(&self, key: &str, value: &str) {
            self.writes.set(self.writes.get() + 1);
            self.storage.borrow_mut().insert(key.into(), value.into());
        }
        fn remove(&self, key: &str) {
            if self.storage.borrow_mut().remove(key).is_some() {
                self.writes.set(self.writes.get() + 1);
            }
        }
    }
    impl Clock for FakeEnv {
        fn now_iso(&self) -> String {
            "2026-11-23T10:00:00.000Z".into()
        }
        fn now_ms(&self) -> f64 {
            1_795_000_000_000.0 + self.now.get()
        }
    }
    impl Random for FakeEnv {
        fn fill(&self, buf: &mut [u8]) {
            self.counter.set(self.counter.get().wrapping_add(1));
            buf.fill(self.counter.get());
        }
    }

    fn ctx() -> Option<Part> {
        Some(Arc::new(r#""page":{"path":"/"}"#.to_owned()))
    }

    /// The messages of a batch body as the collector stores them: the
    /// batch-level context merged into each one's, its own members winning.
    fn body_messages(body: &str) -> Vec<Message> {
        let batch: weft_protocol::Batch<serde_json::Value> =
            serde_json::from_str(body).expect("batch parses");
        assert_eq!(batch.write_key.as_deref(), Some("wk_test"));
        assert!(batch.sent_at.is_some());
        let shared: serde_json::Value = batch.context.map_or(serde_json::json!({}), |c| {
            serde_json::from_str(c.as_str()).unwrap()
        });
        batch
            .batch
            .into_iter()
            .map(|mut m| {
                let mut context = shared.as_object().unwrap().clone();
                if let Some(own) = m.get("context").and_then(|c| c.as_object()) {
                    context.extend(own.clone());
                }
                m["context"] = context.into();
                serde_json::from_value(m).unwrap()
            })
            .collect()
    }

    fn context_of(m: &Message) -> serde_json::Value {
        serde_json::from_str(m.context.as_ref().unwrap().as_str()).unwrap()
    }

    fn config(policy: Policy) -> Config {
        Config {
            policy,
            policy_version: "v1".into(),
            ..Config::new("wk_test".into())
        }
    }

    /// An opt-out tracker: everything granted, as the older tests assume.
    fn tracker(env: &FakeEnv) -> Tracker<FakeEnv> {
        Tracker::new(env.clone(), config(Policy::OptOut), Signals::default())
    }

    fn opt_in(env: &FakeEnv) -> Tracker<FakeEnv> {
        Tracker::new(env.clone(), config(Policy::OptIn), Signals::default())
    }

    fn track(t: &mut Tracker<FakeEnv>, event: &str) {
        t.track(event.into(), None, Category::Analytics, ctx());
    }

    fn sent(t: &mut Tracker<FakeEnv>) -> Vec<Message> {
        let msgs = body_messages(&t.next_batch(false, "").expect("a batch"));
        t.delivered(Outcome::Accepted);
        msgs
    }

    #[test]
    fn anonymous_id_is_created_once_and_survives_a_reload() {
        let env = FakeEnv::default();
        let mut t = tracker(&env);
        let first = t.anonymous_id().unwrap().to_owned();
        assert_eq!(first.len(), 36);
        // Not written on the way to ready: with the queue, at the next
        // idle moment or page hide.
        assert_eq!(env.get(keys::ANONYMOUS_ID), None);
        assert!(t.unsaved(), "the saver is due");
        t.save();
        assert_eq!(env.get(keys::ANONYMOUS_ID), Some(first.clone()));
        let mut again = tracker(&env);
        assert_eq!(again.anonymous_id(), Some(first.as_str()));
        // Written back once per page (the cookie's expiry), not per save.
        again.save();
        env.set(keys::ANONYMOUS_ID, "changed by another tab");
        track(&mut again, "Later");
        again.save();
        assert_eq!(
            env.get(keys::ANONYMOUS_ID).as_deref(),
            Some("changed by another tab")
        );
    }

    #[test]
    fn messages_carry_identity_timing_session_and_consent_context() {
        let env = FakeEnv::default();
        let mut t = tracker(&env);
        t.page(Call::default(), ctx());
        t.identify(
            "user-1".into(),
            Some(Json::from_trusted(r#"{"plan":"pro"}"#)),
            ctx(),
        );
        track(&mut t, "Bought");
        t.alias("user-2".into(), None, ctx());
        t.group("acme".into(), None, ctx());
        let msgs = sent(&mut t);
        assert_eq!(msgs.len(), 5);
        assert_eq!(msgs[0].kind, MessageType::Page);
        assert_eq!(msgs[0].user_id, None);
        assert_eq!(msgs[1].kind, MessageType::Identify);
        assert_eq!(
            msgs[1].traits.as_ref().unwrap().as_str(),
            r#"{"plan":"pro"}"#
        );
        assert_eq!(msgs[2].event.as_deref(), Some("Bought"));
        assert_eq!(msgs[2].user_id.as_deref(), Some("user-1"));
        assert_eq!(msgs[3].kind, MessageType::Alias);
        assert_eq!(msgs[3].previous_id.as_deref(), Some("user-1"));
        assert_eq!(msgs[3].user_id.as_deref(), Some("user-2"));
        assert_eq!(msgs[4].group_id.as_deref(), Some("acme"));
        for m in &msgs {
            assert_eq!(m.anonymous_id.as_deref(), t.anonymous_id());
            assert!(m.message_id.is_some());
            let ctx = context_of(m);
            assert_eq!(ctx["page"]["path"], "/");
            assert_eq!(ctx["library"]["name"], "weft.js");
            assert_eq!(ctx["sessionId"], 1_795_000_000_000u64);
            assert_eq!(ctx["consent"]["category"], "analytics");
            assert_eq!(
                ctx["consent"]["categoryPreferences"],
                serde_json::json!({"necessary": true, "analytics": true, "marketing": true, "personalization": true})
            );
        }
        assert_ne!(msgs[0].message_id, msgs[1].message_id);
        assert_eq!(env.get(keys::USER_ID).as_deref(), Some("user-1"));
    }

    #[test]
    fn alias_defaults_to_the_anonymous_id_without_a_user() {
        let env = FakeEnv::default();
        let mut t = tracker(&env);
        t.alias("user-9".into(), None, ctx());
        let m = &sent(&mut t)[0];
        assert_eq!(m.previous_id.as_deref(), t.anonymous_id());
        assert_eq!(m.user_id.as_deref(), Some("user-9"));
    }

    #[test]
    fn sessions_end_after_thirty_idle_minutes() {
        let env = FakeEnv::default();
        let mut t = tracker(&env);
        track(&mut t, "A");
        env.advance(29.0 * 60_000.0);
        track(&mut t, "B");
        t.save();
        env.advance(29.0 * 60_000.0);
        // A reload keeps the session (and the queue, once saved).
        let mut t = tracker(&env);
        track(&mut t, "C");
        env.advance(31.0 * 60_000.0);
        track(&mut t, "D");
        let sessions: Vec<u64> = sent(&mut t)
            .iter()
            .map(|m| context_of(m)["sessionId"].as_u64().unwrap())
            .collect();
        let start = 1_795_000_000_000;
        let later = start + 3 * 29 * 60_000 + 2 * 60_000;
        assert_eq!(sessions, [start, start, start, later]);
    }

    #[test]
    fn reset_starts_a_new_identity_and_keeps_queued_messages_as_they_were() {
        let env = FakeEnv::default();
        let mut t = tracker(&env);
        t.identify("alice".into(), None, ctx());
        let before = t.anonymous_id().unwrap().to_owned();
        let notice = t.reset().expect("a reset notice");
        let batch: serde_json::Value = serde_json::from_str(&notice).unwrap();
        assert_eq!(batch["batch"], serde_json::json!([]));
        assert_eq!(batch["reset"], true);
        assert_eq!(batch["writeKey"], "wk_test");
        let after = t.anonymous_id().unwrap().to_owned();
        assert_ne!(before, after);
        assert_eq!(t.user_id(), None);
        assert_eq!(env.get(keys::USER_ID), None);
        t.save();
        assert_eq!(env.get(keys::ANONYMOUS_ID), Some(after.clone()));
        track(&mut t, "Next person");
        let msgs = sent(&mut t);
        assert_eq!(msgs[0].user_id.as_deref(), Some("alice"));
        assert_eq!(msgs[0].anonymous_id.as_deref(), Some(before.as_str()));
        assert_eq!(msgs[1].user_id, None);
        assert_eq!(msgs[1].anonymous_id.as_deref(), Some(after.as_str()));
        assert_eq!(tracker(&env).user_id(), None, "a reload stays reset");
    }

    #[test]
    fn opt_in_before_a_decision_writes_nothing_and_queues_nothing() {
        let env = FakeEnv::default();
        let mut t = opt_in(&env);
        t.page(Call::default(), ctx());
        track(&mut t, "A");
        t.identify("u".into(), None, ctx());
        assert!(t.undecided());
        assert_eq!(t.anonymous_id(), None);
        assert_eq!(t.held(), 3);
        assert_eq!(t.queued(), 0);
        assert!(t.next_batch(true, "").is_none());
        assert_eq!(env.writes.get(), 0, "no storage write before a decision");
        for _ in 0..MAX_HELD {
            track(&mut t, "more");
        }
        assert_eq!(t.held(), MAX_HELD);
        assert_eq!(t.held_dropped, 3);
        assert_eq!(env.writes.get(), 0);
    }

    #[test]
    fn a_grant_sends_the_held_calls_once_with_the_new_identity() {
        let env = FakeEnv::default();
        let mut t = opt_in(&env);
        t.page(Call::default(), ctx());
        t.identify("u".into(), None, ctx());
        t.track("Ad".into(), None, Category::Marketing, ctx());
        t.set_consent(
            Prefs {
                analytics: true,
                ..Prefs::default()
            },
            ctx(),
            "",
        );
        let aid = t.anonymous_id().unwrap().to_owned();
        let msgs = sent(&mut t);
        let names: Vec<_> = msgs.iter().map(|m| (m.kind, m.event.clone())).collect();
        assert_eq!(
            names,
            [
                (MessageType::Track, Some(CONSENT_EVENT.to_owned())),
                (MessageType::Page, None),
                (MessageType::Identify, None),
            ],
            "the marketing event is not granted and never queued"
        );
        for m in &msgs {
            assert_eq!(m.anonymous_id.as_deref(), Some(aid.as_str()));
            assert_eq!(
                context_of(m)["consent"]["categoryPreferences"]["analytics"],
                true
            );
        }
        assert_eq!(context_of(&msgs[0])["consent"]["category"], "necessary");
        let record: serde_json::Value =
            serde_json::from_str(msgs[0].properties.as_ref().unwrap().as_str()).unwrap();
        assert_eq!(record["policy"], "opt-in");
        assert_eq!(record["policyVersion"], "v1");
        assert_eq!(record["categoryPreferences"]["marketing"], false);
        assert_eq!(env.get(keys::CONSENT).as_deref(), Some("100:v1"));
        assert_eq!(env.get(keys::USER_ID).as_deref(), Some("u"));
        assert_eq!(t.held(), 0);
        t.save();
        // The decision survives a reload; the same decision again is not a
        // new record.
        let mut again = opt_in(&env);
        assert!(!again.undecided());
        assert_eq!(again.anonymous_id(), Some(aid.as_str()));
        assert!(again.set_consent(again.prefs(), ctx(), "").is_none());
        assert_eq!(again.queued(), 0);
    }

    #[test]
    fn a_first_denial_sends_nothing_and_keeps_only_the_decision() {
        let env = FakeEnv::default();
        let mut t = opt_in(&env);
        track(&mut t, "A");
        assert!(t.set_consent(Prefs::default(), ctx(), "").is_none());
        track(&mut t, "B");
        assert!(t.next_batch(true, "").is_none());
        assert_eq!(env.keys(), [keys::CONSENT]);
        let t = opt_in(&env);
        assert!(!t.undecided());
        assert_eq!(t.anonymous_id(), None);
    }

    #[test]
    fn withdrawal_deletes_identity_and_queue_and_returns_its_record() {
        let env = FakeEnv::default();
        let mut t = opt_in(&env);
        t.set_consent(Prefs::ALL, ctx(), "");
        t.identify("u".into(), None, ctx());
        track(&mut t, "queued, never sent");
        let old = t.anonymous_id().unwrap().to_owned();
        let body = t
            .set_consent(
                Prefs {
                    marketing: true,
                    ..Prefs::default()
                },
                ctx(),
                "",
            )
            .expect("the withdrawal's record");
        let record = &body_messages(&body)[0];
        assert_eq!(record.event.as_deref(), Some(CONSENT_EVENT));
        assert_eq!(record.anonymous_id.as_deref(), Some(old.as_str()));
        assert_eq!(record.user_id.as_deref(), Some("u"));
        assert_eq!(env.keys(), [keys::CONSENT]);
        assert_eq!(t.anonymous_id(), None);
        assert_eq!(t.queued(), 0);
        t.track("M".into(), None, Category::Marketing, ctx());
        assert!(
            t.next_batch(true, "").is_none(),
            "nothing without analytics"
        );
        // Granting again starts a new identity.
        t.set_consent(Prefs::ALL, ctx(), "");
        assert_ne!(t.anonymous_id(), Some(old.as_str()));
        assert_eq!(t.user_id(), None);
    }

    #[test]
    fn opt_out_follows_gpc_and_a_new_policy_version_asks_again() {
        let env = FakeEnv::default();
        let gpc = Signals {
            gpc: true,
            dnt: false,
        };
        let mut t = Tracker::new(env.clone(), config(Policy::OptOut), gpc);
        t.track("Ad".into(), None, Category::Marketing, ctx());
        track(&mut t, "Seen");
        let msgs = sent(&mut t);
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].event.as_deref(), Some("Seen"));
        assert_eq!(
            context_of(&msgs[0])["consent"]["categoryPreferences"]["marketing"],
            false
        );

        let env = FakeEnv::default();
        opt_in(&env).set_consent(Prefs::ALL, ctx(), "");
        let v2 = Config {
            policy_version: "v2".into(),
            ..config(Policy::OptIn)
        };
        assert!(Tracker::new(env.clone(), v2, Signals::default()).undecided());
    }

    #[test]
    fn failed_delivery_resends_the_same_messages_and_queue_survives_reload() {
        let env = FakeEnv::default();
        let mut t = tracker(&env);
        track(&mut t, "A");
        let first = body_messages(&t.next_batch(false, "").unwrap());
        assert!(
            t.next_batch(false, "").is_none(),
            "one request in flight at a time"
        );
        t.delivered(Outcome::Retry(None));
        assert!(t.unsaved());
        t.save();
        assert!(!t.unsaved());

        // A reload before the retry: the queue comes back from storage.
        let mut t2 = tracker(&env);
        let again = body_messages(&t2.next_batch(false, "").unwrap());
        assert_eq!(first, again, "same messageIds on retry");
        t2.delivered(Outcome::Accepted);
        assert_eq!(t2.queued(), 0);
        t2.save();
        assert!(env.get(keys::QUEUE).is_none());
    }

    #[test]
    fn retries_back_off_honour_retry_after_and_refusals_drop() {
        let env = FakeEnv::default();
        let mut t = tracker(&env);
        track(&mut t, "A");
        assert_eq!(t.send_delay(), Some(5_000.0), "a partial batch waits");
        let body = t.next_batch(false, "").unwrap();
        assert_eq!(t.send_delay(), None, "nothing while a request is in flight");
        t.delivered(Outcome::Retry(Some(7_000.0)));
        assert_eq!(t.send_delay(), Some(7_000.0));
        assert!(t.next_batch(false, "").is_none(), "not before Retry-After");
        env.advance(7_000.0);
        assert_eq!(t.next_batch(false, "").unwrap(), body);
        t.delivered(Outcome::Retry(None));
        // The second failure in a row: 1 s doubled, with jitter.
        let second = t.send_delay().unwrap();
        assert!((1000.0..2000.0).contains(&second), "{second}");
        env.advance(second);
        t.next_batch(false, "").unwrap();
        t.delivered(Outcome::Retry(None));
        let third = t.send_delay().unwrap();
        assert!((2000.0..4000.0).contains(&third), "{third}");
        // The page going away does not wait.
        assert_eq!(t.next_batch(true, "").unwrap(), body);
        t.delivered(Outcome::Refused);
        assert_eq!(t.refused, 1);
        assert_eq!(t.queued(), 0);
        assert_eq!(t.send_delay(), None);
    }

    #[test]
    fn the_beacon_carries_what_is_not_in_flight() {
        let env = FakeEnv::default();
        let mut t = Tracker::new(
            env.clone(),
            Config {
                batch_count: 1,
                ..config(Policy::OptOut)
            },
            Signals::default(),
        );
        for e in ["A", "B", "C"] {
            track(&mut t, e);
        }
        let in_flight = body_messages(&t.next_batch(false, "").unwrap());
        let (body, n) = t.beacon_batch(60_000, "").unwrap();
        assert_eq!(n, 2);
        let beaconed = body_messages(&body);
        assert_eq!(
            beaconed
                .iter()
                .map(|m| m.event.as_deref())
                .collect::<Vec<_>>(),
            [Some("B"), Some("C")]
        );
        t.beacon_sent(n);
        assert_eq!(t.queued(), 1);
        t.delivered(Outcome::Accepted);
        assert_eq!(t.queued(), 0);
        assert_eq!(in_flight[0].event.as_deref(), Some("A"));
        assert!(t.beacon_batch(60_000, "").is_none());
    }

    #[test]
    fn a_full_batch_is_due_at_once_and_carries_its_shared_context_once() {
        let env = FakeEnv::default();
        let mut t = tracker(&env);
        for i in 0..19 {
            t.track(
                "Product Viewed".into(),
                Some(Json::from_trusted(format!(r#"{{"i":{i}}}"#))),
                Category::Analytics,
                ctx(),
            );
        }
        assert_eq!(t.send_delay(), Some(5_000.0));
        // Another page's context (a new part), and another category.
        let other = Some(Arc::new(r#""page":{"path":"/other"}"#.to_owned()));
        t.track("Ad".into(), None, Category::Marketing, other);
        assert_eq!(t.send_delay(), Some(0.0), "a full batch goes at once");
        let body = t
            .next_batch(false, r#""timezone":"Europe/Berlin""#)
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        // Shared by all 20: the library, and the batch's own time zone.
        assert_eq!(
            v["context"],
            serde_json::json!({"library": {"name": "weft.js", "version": crate::LIBRARY_VERSION},
                               "timezone": "Europe/Berlin"})
        );
        assert_eq!(v["batch"][0]["context"]["page"]["path"], "/");
        assert_eq!(v["batch"][19]["context"]["page"]["path"], "/other");
        assert_eq!(
            v["batch"][19]["context"]["consent"]["category"],
            "marketing"
        );
        assert!(v["batch"][0]["context"].get("library").is_none());
        // As stored: every message with its whole context.
        for m in body_messages(&body) {
            let c = context_of(&m);
            assert_eq!(c["library"]["name"], "weft.js");
            assert_eq!(c["timezone"], "Europe/Berlin");
            assert!(c["sessionId"].is_u64() && c["page"]["path"].is_string());
        }
        // Without the odd one out, the page and consent go at the batch level.
        t.delivered(Outcome::Accepted);
        for _ in 0..3 {
            track(&mut t, "Same");
        }
        let v: serde_json::Value = serde_json::from_str(&t.next_batch(false, "").unwrap()).unwrap();
        assert_eq!(v["context"]["page"]["path"], "/");
        assert_eq!(v["context"]["consent"]["category"], "analytics");
        assert!(v["batch"][2].get("context").is_none(), "{v}");
    }

    #[test]
    fn debug_counts_what_was_lost() {
        let env = FakeEnv::default();
        let mut t = opt_in(&env);
        for _ in 0..MAX_HELD + 2 {
            track(&mut t, "held");
        }
        assert_eq!(t.losses(), [2, 0, 0, 0]);
        let v: serde_json::Value = serde_json::from_str(&t.debug_json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"queued": 0, "held": MAX_HELD, "heldDropped": 2,
                               "queueDropped": 0, "tooLarge": 0, "refused": 0})
        );
    }

    #[test]
    fn a_message_over_the_collectors_limit_is_dropped_not_queued() {
        let env = FakeEnv::default();
        let mut t = tracker(&env);
        let huge = format!(r#"{{"x":"{}"}}"#, "x".repeat(40_000));
        t.track(
            "Huge".into(),
            Some(Json::from_trusted(huge)),
            Category::Analytics,
            ctx(),
        );
        track(&mut t, "Behind");
        assert_eq!(t.too_large, 1);
        let msgs = sent(&mut t);
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].event.as_deref(), Some("Behind"));
    }

    #[test]
    fn batch_ready_at_count() {
        let env = FakeEnv::default();
        let mut t = Tracker::new(
            env.clone(),
            Config {
                batch_count: 2,
                ..config(Policy::OptOut)
            },
            Signals::default(),
        );
        track(&mut t, "A");
        assert!(!t.batch_ready());
        track(&mut t, "B");
        assert!(t.batch_ready());
        assert_eq!(body_messages(&t.next_batch(false, "").unwrap()).len(), 2);
    }
}
