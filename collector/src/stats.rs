//! What the dashboard draws: traffic over the last day and the live
//! stream, kept in memory by a consumer of the log (`Stats`).
//!
//! Per hour (by the time each event was stored) it counts events per
//! minute, distinct visitors (hashes of their IDs), events by name, page
//! views by path and consent decisions by category; buckets older than a
//! day are dropped, and every map is bounded. The newest stored events
//! are kept in a ring for `/v1/live`: a reader asks for what came after
//! the last event it saw and waits (bounded) for more; one that falls
//! behind the ring is told how many it missed, and nothing grows for it.
//!
//! At start the consumer reads the log from the beginning (records older
//! than a day only move it on), so the figures survive restarts.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::BuildHasher as _;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Deserialize;
use serde_json::{Value, json};
use weft_protocol::MessageType;

use crate::consumer::Consumer;
use crate::hashing;
use crate::log::Lsn;
use crate::record::RecordRef;
use crate::store::StoreError;

/// How often the figures catch up with the log (the live view shows an
/// event within this and a poll).
pub const PACE: std::time::Duration = std::time::Duration::from_millis(200);
/// Events kept for the live view.
pub const LIVE_RING: usize = 1000;
/// Distinct names (events, pages) counted per hour; the rest count as other.
const MAX_NAMES: usize = 2000;
/// Distinct visitors counted per hour.
const MAX_VISITORS: usize = 2_000_000;
const HOUR_MS: i64 = 3_600_000;
const MINUTE_MS: i64 = 60_000;

/// One hour of traffic.
#[derive(Debug)]
struct Hour {
    /// Events per minute of the hour (0..60).
    minutes: [u64; 60],
    visitors: hashing::Set<u64>,
    events: hashing::Map<String, u64>,
    pages: hashing::Map<String, u64>,
    /// Per category: (decisions granting it, decisions).
    consent: BTreeMap<String, (u64, u64)>,
}

impl Default for Hour {
    fn default() -> Self {
        Hour {
            minutes: [0; 60],
            visitors: hashing::Set::default(),
            events: hashing::Map::default(),
            pages: hashing::Map::default(),
            consent: BTreeMap::new(),
        }
    }
}

/// One stored event as the live view shows it.
#[derive(Debug, Clone)]
struct Live {
    lsn: Lsn,
    body: Arc<str>,
}

#[derive(Debug, Default)]
struct State {
    hours: BTreeMap<i64, Hour>,
    live: VecDeque<Live>,
    /// The newest stored time seen (Unix ms).
    newest_ms: i64,
}

/// The figures, shared by the consumer and the API.
#[derive(Debug, Default)]
pub struct Stats {
    state: Mutex<State>,
    hasher: foldhash::fast::RandomState,
    /// Woken when events are added (live readers wait on it).
    pub added: tokio::sync::Notify,
}

#[derive(Deserialize)]
struct PageView<'a> {
    #[serde(borrow, default)]
    context: Option<PageContext<'a>>,
    #[serde(borrow, default)]
    properties: Option<PageFields<'a>>,
}

#[derive(Deserialize)]
struct PageContext<'a> {
    #[serde(borrow, default)]
    page: Option<PageFields<'a>>,
}

#[derive(Deserialize, Default)]
struct PageFields<'a> {
    #[serde(borrow, default)]
    path: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    url: Option<std::borrow::Cow<'a, str>>,
}

/// The path of a page view: `context.page.path`, `properties.path`, or the
/// path of the URL (without query or fragment, which may carry personal data).
fn page_path(body: &str) -> Option<String> {
    let v: PageView<'_> = serde_json::from_str(body).ok()?;
    let fields = [
        v.context.and_then(|c| c.page).unwrap_or_default(),
        v.properties.unwrap_or_default(),
    ];
    for f in &fields {
        if let Some(p) = f.path.as_deref().filter(|p| !p.is_empty()) {
            return Some(strip_query(p).to_owned());
        }
    }
    for f in &fields {
        if let Some(u) = f.url.as_deref() {
            let rest = u.split_once("://").map_or(u, |(_, r)| r);
            let path = rest.find('/').map_or("/", |i| &rest[i..]);
            return Some(strip_query(path).to_owned());
        }
    }
    None
}

fn strip_query(p: &str) -> &str {
    p.split(['?', '#']).next().unwrap_or(p)
}

fn bump(map: &mut hashing::Map<String, u64>, key: &str) {
    if let Some(n) = map.get_mut(key) {
        *n += 1;
    } else if map.len() < MAX_NAMES {
        map.insert(key.to_owned(), 1);
    } else {
        *map.entry("(other)".to_owned()).or_default() += 1;
    }
}

impl Stats {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts the stored events of a batch of records.
    pub fn add(&self, records: &[(Lsn, RecordRef<'_>)]) {
        let mut state = self.lock();
        let tail_from = records.len().saturating_sub(LIVE_RING);
        // The messages of one request share their receivedAt: parsed once.
        let mut received: (&str, i64) = ("", 0);
        for (n, (lsn, r)) in records.iter().enumerate() {
            let RecordRef::Event { event: e, .. } = r else {
                continue;
            };
            if received.0 != e.received_at {
                received = (
                    e.received_at,
                    crate::clock::unix_millis(e.received_at).unwrap_or(0),
                );
            }
            let at = received.1;
            state.newest_ms = state.newest_ms.max(at);
            if at < state.newest_ms - 24 * HOUR_MS {
                continue;
            }
            let hour_start = at.div_euclid(HOUR_MS) * HOUR_MS;
            let hour = state.hours.entry(hour_start).or_default();
            hour.minutes[((at - hour_start) / MINUTE_MS) as usize % 60] += 1;
            if let Some(id) = e.anonymous_id.or(e.user_id)
                && hour.visitors.len() < MAX_VISITORS
            {
                hour.visitors.insert(self.hasher.hash_one(id));
            }
            match e.kind {
                MessageType::Track => {
                    if let Some(name) = e.event {
                        bump(&mut hour.events, name);
                    }
                }
                MessageType::Page => {
                    if let Some(path) = page_path(e.body) {
                        bump(&mut hour.pages, &path);
                    }
                }
                _ => {}
            }
            if let Some(c) = &e.consent_record
                && let Ok(prefs) = serde_json::from_str::<BTreeMap<String, Value>>(c.preferences)
            {
                for (category, v) in prefs.into_iter().take(20) {
                    let granted = crate::consent::granted(&v);
                    let slot = hour.consent.entry(category).or_default();
                    slot.0 += u64::from(granted);
                    slot.1 += 1;
                }
            }
            if n >= tail_from {
                if state.live.len() == LIVE_RING {
                    state.live.pop_front();
                }
                state.live.push_back(Live {
                    lsn: *lsn,
                    body: Arc::from(e.body),
                });
            }
        }
        let keep_from = (state.newest_ms - 24 * HOUR_MS).div_euclid(HOUR_MS) * HOUR_MS;
        state.hours.retain(|h, _| *h >= keep_from);
        drop(state);
        self.added.notify_waiters();
    }

    /// Empties the live ring (an erasure: it may hold the person's events;
    /// the counts keep only numbers and hashes).
    pub fn forget_live(&self) {
        self.lock().live.clear();
    }

    /// The overview's figures at `now_ms`.
    pub fn overview(&self, now_ms: i64) -> Value {
        let state = self.lock();
        let this_minute = now_ms.div_euclid(MINUTE_MS) * MINUTE_MS;
        let this_hour = now_ms.div_euclid(HOUR_MS) * HOUR_MS;
        let count_at = |minute: i64| -> u64 {
            let h = minute.div_euclid(HOUR_MS) * HOUR_MS;
            state.hours.get(&h).map_or(0, |hour| {
                hour.minutes[((minute - h) / MINUTE_MS) as usize % 60]
            })
        };
        let per_minute: Vec<Value> = (0..60)
            .rev()
            .map(|i| {
                let t = this_minute - i * MINUTE_MS;
                json!({"t": t, "n": count_at(t)})
            })
            .collect();
        let per_hour: Vec<Value> = (0..24)
            .rev()
            .map(|i| {
                let t = this_hour - i * HOUR_MS;
                let n: u64 = state.hours.get(&t).map_or(0, |h| h.minutes.iter().sum());
                json!({"t": t, "n": n})
            })
            .collect();
        let day = state
            .hours
            .range(this_hour - 23 * HOUR_MS..=this_hour)
            .map(|(_, h)| h);
        let mut visitors: HashSet<u64> = HashSet::new();
        let mut events: HashMap<&str, u64> = HashMap::new();
        let mut pages: HashMap<&str, u64> = HashMap::new();
        let mut consent: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        let mut total = 0;
        for h in day {
            total += h.minutes.iter().sum::<u64>();
            visitors.extend(h.visitors.iter().copied());
            for (k, v) in &h.events {
                *events.entry(k).or_default() += v;
            }
            for (k, v) in &h.pages {
                *pages.entry(k).or_default() += v;
            }
            for (k, (g, t)) in &h.consent {
                let slot = consent.entry(k).or_default();
                slot.0 += g;
                slot.1 += t;
            }
        }
        let top = |map: HashMap<&str, u64>, key: &str| -> Vec<Value> {
            let mut v: Vec<(&str, u64)> = map.into_iter().collect();
            v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            v.into_iter()
                .take(10)
                .map(|(k, n)| json!({ key: k, "n": n }))
                .collect()
        };
        let consent: serde_json::Map<String, Value> = consent
            .into_iter()
            .map(|(k, (g, t))| (k.to_owned(), json!({"granted": g, "decisions": t})))
            .collect();
        json!({
            "events_per_minute": per_minute,
            "events_per_hour": per_hour,
            "events_24h": total,
            "visitors_24h": visitors.len(),
            "top_events": top(events, "event"),
            "top_pages": top(pages, "page"),
            "consent_24h": consent,
        })
    }

    /// Stored events after `after` (oldest first, at most `limit`), the
    /// position to ask from next, and how many were missed because the
    /// reader fell behind the ring (`None` if it has nothing new).
    pub fn live_after(&self, after: Lsn, limit: usize) -> Option<(Vec<Value>, Lsn, u64)> {
        let state = self.lock();
        let newer: Vec<&Live> = state.live.iter().filter(|l| l.lsn > after).collect();
        if newer.is_empty() {
            return None;
        }
        let oldest = state.live.front().map_or(0, |l| l.lsn);
        // A reader that asked before the ring's start lost what fell out
        // (its first call, after = 0, only wants the newest).
        let missed = if after > 0 && oldest > after + 1 {
            oldest - after - 1
        } else {
            0
        };
        let skip = newer.len().saturating_sub(limit);
        let events: Vec<Value> = newer[skip..].iter().map(|l| summary(l)).collect();
        let next = newer.last().map_or(after, |l| l.lsn);
        Some((events, next, missed + skip as u64))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LiveView<'a> {
    #[serde(borrow, default)]
    r#type: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    event: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    anonymous_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    user_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    message_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    received_at: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    context: Option<LiveContext>,
}

#[derive(Deserialize)]
struct LiveContext {
    #[serde(default)]
    consent: Option<LiveConsent>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LiveConsent {
    #[serde(default)]
    category_preferences: Option<BTreeMap<String, Value>>,
}

/// What the live view shows of an event: no properties or traits.
fn summary(l: &Live) -> Value {
    let Ok(v) = serde_json::from_str::<LiveView<'_>>(&l.body) else {
        return json!({"lsn": l.lsn});
    };
    let consent = v
        .context
        .and_then(|c| c.consent)
        .and_then(|c| c.category_preferences);
    json!({
        "lsn": l.lsn,
        "type": v.r#type,
        "event": v.event,
        "anonymousId": v.anonymous_id,
        "userId": v.user_id,
        "messageId": v.message_id,
        "receivedAt": v.received_at,
        "page": page_path(&l.body),
        "consent": consent,
    })
}

/// Clears the live ring when a person is erased (it may hold their
/// events); the counts keep only hashes and numbers.
pub struct ForgetOnErasure(pub std::sync::Weak<Stats>);

impl crate::store::StoreListener for ForgetOnErasure {
    fn erased(&self, _: &HashSet<String>, _: &HashSet<Lsn>) {
        if let Some(s) = self.0.upgrade() {
            s.forget_live();
        }
    }

    fn expired(&self, _: &str) {}
}

/// The consumer that keeps [`Stats`].
pub struct StatsConsumer {
    /// The figures.
    pub stats: Arc<Stats>,
    /// Where it is.
    pub position: Lsn,
}

impl Consumer for StatsConsumer {
    fn position(&mut self) -> Result<Lsn, StoreError> {
        Ok(self.position)
    }

    fn apply(&mut self, records: &[(Lsn, RecordRef<'_>)], next: Lsn) -> Result<(), StoreError> {
        self.stats.add(records);
        self.position = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_paths_come_without_query_or_fragment() {
        assert_eq!(
            page_path(r#"{"context":{"page":{"path":"/p/1?email=a@b"}}}"#).as_deref(),
            Some("/p/1")
        );
        assert_eq!(
            page_path(r#"{"properties":{"url":"https://shop.example/cart#x"}}"#).as_deref(),
            Some("/cart")
        );
        assert_eq!(
            page_path(r#"{"properties":{"url":"https://shop.example"}}"#).as_deref(),
            Some("/")
        );
        assert_eq!(page_path(r#"{"type":"page"}"#), None);
    }
}
