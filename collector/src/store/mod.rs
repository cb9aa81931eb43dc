//! The event store seam.
//!
//! Handlers talk to an [`EventStore`]; the embedded default is
//! [`embedded::EmbeddedStore`]: an append-only event log ([`crate::log`])
//! written with group commit, and its derived index in SQLite
//! ([`sqlite`]), applied by a consumer thread. A distributed log and a
//! shared database can implement the same trait later.
//!
//! Appends are asynchronous by design: [`EventStore::append`] hands the rows
//! to the writer and returns a receiver that resolves once they are durable.
//! A full write queue answers [`StoreError::Overloaded`] at once, so memory
//! stays bounded and the client is told to retry.

pub mod definitions;
pub mod embedded;
pub mod memory;
pub mod profiles;
pub mod sqlite;
pub mod suppression;
pub mod version;

use tokio::sync::oneshot;
use weft_protocol::MessageType;

/// One validated, enriched message ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// The dedup key within its source.
    pub message_id: String,
    /// `track`, `page`, ...
    pub kind: MessageType,
    /// `track`: the event name.
    pub event: Option<String>,
    /// The device identifier (`None` when absent or junk).
    pub anonymous_id: Option<String>,
    /// The login identifier (`None` when absent or junk).
    pub user_id: Option<String>,
    /// `alias`: the user ID joined to `user_id` (`None` when junk).
    pub previous_id: Option<String>,
    /// How many of the message's identifiers were junk (never linked).
    pub junk_ids: u8,
    /// For a "Consent Updated" event: the decision for the audit log.
    pub consent_record: Option<crate::consent::ConsentRecord>,
    /// When it happened, skew-corrected, RFC 3339 UTC millis.
    pub timestamp: String,
    /// When the collector received it, RFC 3339 UTC millis.
    pub received_at: String,
    /// The client IP, truncated unless configured otherwise.
    pub ip: Option<String>,
    /// The whole enriched message as JSON.
    pub body: String,
    /// Where the message's `properties` value is in `body` (byte range),
    /// so consumers that filter on properties read just that.
    pub properties: Option<(u32, u32)>,
    /// The anonymous ID the collector's server cookie carried, when it is
    /// not this message's: the two are one browser (a same-device edge,
    /// [`crate::identity::SameDevice`]).
    pub same_device: Option<String>,
}

/// A message that failed validation, kept with its reason (a "bad row").
#[derive(Debug, Clone, PartialEq)]
pub struct RejectedMessage {
    /// When the collector received it.
    pub received_at: String,
    /// Why it was rejected, as a stable code.
    pub code: String,
    /// Why it was rejected, for humans.
    pub reason: String,
    /// The message as it arrived (possibly truncated if huge).
    pub raw: String,
}

/// What one request asks the writer to store.
#[derive(Debug, Clone, Default)]
pub struct AppendRequest {
    /// The write key of the source that sent it.
    pub source: String,
    /// Valid messages.
    pub events: Vec<NewEvent>,
    /// Invalid messages.
    pub rejected: Vec<RejectedMessage>,
}

/// What happened to an [`AppendRequest`] once durable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Events newly stored.
    pub stored: usize,
    /// Events already stored under the same source and messageId.
    pub duplicates: usize,
    /// Rejected messages kept.
    pub rejected: usize,
    /// Events dropped because an identifier of theirs was erased.
    pub suppressed: usize,
    /// Whether a same-device ID (the server cookie's) was erased: the edge
    /// was not kept, and the cookie must go.
    pub erased_device: bool,
    /// The log position after this request's records: a read that waits
    /// for the derived state to reach it sees them.
    pub position: u64,
}

/// What an erasure removed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ErasureReport {
    /// The profile that was erased.
    pub profile_id: String,
    /// Events deleted.
    pub events: usize,
    /// Identity links and aliases deleted.
    pub identity_edges: usize,
    /// Rejected messages deleted because they named an identifier.
    pub rejected: usize,
    /// Consent audit-log entries deleted.
    pub consent_records: usize,
    /// Identifiers added to the suppression list (as salted hashes).
    pub suppressed_identifiers: usize,
}

/// A pending append: resolves when the group holding it is committed.
pub type Pending = oneshot::Receiver<Result<AppendOutcome, StoreError>>;

/// The profile view the admin API answers.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ProfileSummary {
    /// A stable identifier of the profile.
    pub profile_id: String,
    /// Login identifiers, sorted.
    pub user_ids: Vec<String>,
    /// Device identifiers, sorted.
    pub anonymous_ids: Vec<String>,
    /// First event time.
    pub first_seen: String,
    /// Last event time.
    pub last_seen: String,
    /// Events stored for the profile.
    pub event_count: u64,
    /// Traits merged from identify calls; per trait, the latest wins.
    pub traits: serde_json::Value,
    /// The latest `context.consent.categoryPreferences` seen.
    pub consent: serde_json::Value,
    /// The segments it is in, by key.
    pub segments: Vec<String>,
}

/// A segment as the API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentInfo {
    /// Its key.
    pub key: String,
    /// Its display name.
    pub name: String,
    /// Its rule, as given.
    pub rule: serde_json::Value,
    /// Profiles in it now.
    pub size: usize,
    /// `computing` until every profile was evaluated against the rule,
    /// then `ready`.
    pub status: &'static str,
    /// When it was last put.
    pub updated_at: String,
}

/// A member of a segment.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentMember {
    /// The profile.
    pub profile_id: String,
    /// Its user IDs.
    pub user_ids: Vec<String>,
    /// Its device IDs.
    pub anonymous_ids: Vec<String>,
    /// When it entered.
    pub entered_at: String,
}

/// A page of a segment's members.
#[derive(Debug, Clone, PartialEq)]
pub struct MembersPage {
    /// The members, by profile id.
    pub profiles: Vec<SegmentMember>,
    /// The cursor of the next page, if there is one.
    pub next: Option<String>,
}

/// Where a page of events ends: the last event's timestamp and sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventCursor {
    /// The event's timestamp.
    pub timestamp: String,
    /// Its storage sequence number (breaks timestamp ties).
    pub seq: i64,
}

impl EventCursor {
    /// The cursor as an opaque `before=` value.
    pub fn encode(&self) -> String {
        format!("{}~{}", self.timestamp, self.seq)
    }

    /// Reads a `before=` value: a cursor, or a bare RFC 3339 time.
    pub fn decode(text: &str) -> Option<Self> {
        match text.rsplit_once('~') {
            Some((t, seq)) => Some(EventCursor {
                timestamp: t.to_owned(),
                seq: seq.parse().ok()?,
            }),
            None => {
                let t = crate::clock::parse_rfc3339(text)?;
                Some(EventCursor {
                    timestamp: crate::clock::format_utc_millis(t),
                    seq: 0,
                })
            }
        }
    }
}

/// A page of a profile's events, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct EventsPage {
    /// The profile.
    pub profile_id: String,
    /// Stored messages as JSON, each with its `messageId`.
    pub events: Vec<serde_json::Value>,
    /// Where the next page starts, if there is one.
    pub next: Option<EventCursor>,
}

/// An edge of the identity graph, with the message that made it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GraphEdge {
    /// `link` (a device seen as a user), `alias` (two IDs joined) or
    /// `same_device` (two anonymous IDs of one browser).
    pub kind: &'static str,
    /// The device, the alias's previousId, or the later anonymous ID.
    pub from: String,
    /// The user, or the anonymous ID the server cookie carried.
    pub to: String,
    /// When.
    pub at: String,
    /// The message that created the edge.
    pub message_id: String,
    /// Why, where the kind does not say it all: `server_cookie` for a
    /// same-device edge.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
}

/// One entry of the consent audit log.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ConsentEntry {
    /// When the decision was made (the event's time).
    pub at: String,
    /// When the collector received it.
    pub received_at: String,
    /// The device it was made on.
    pub anonymous_id: Option<String>,
    /// The user, if logged in.
    pub user_id: Option<String>,
    /// The categories and whether each was granted.
    pub preferences: serde_json::Value,
    /// `opt-in` or `opt-out`.
    pub policy: Option<String>,
    /// The site's policy version.
    pub policy_version: Option<String>,
    /// The consent event's messageId.
    pub message_id: String,
}

/// A profile's identifiers and the edges between them.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct IdentityGraph {
    /// The profile.
    pub profile_id: String,
    /// Its user IDs.
    pub user_ids: Vec<String>,
    /// Its devices.
    pub anonymous_ids: Vec<String>,
    /// Why they are one profile.
    pub edges: Vec<GraphEdge>,
}

/// Errors of the store.
#[derive(Debug)]
pub enum StoreError {
    /// The write queue is full; retry later.
    Overloaded,
    /// The store is shutting down or its writer stopped.
    Closed,
    /// SQLite said no.
    Sqlite(rusqlite::Error),
    /// The file system said no.
    Io(std::io::Error),
    /// The event log said no.
    Log(String),
    /// The index did not catch up with the log in time.
    Lagging,
    /// Stored data could not be read back.
    Corrupt(String),
    /// A segment rule was refused.
    InvalidRule(crate::segments::RuleError),
    /// The disk is full (`ENOSPC`, `EDQUOT`): nothing of the request was
    /// stored; retry once space is freed.
    DiskFull,
    /// A file has a format this build does not read (written by a newer
    /// weft, or not weft's): nothing was changed.
    Format(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Overloaded => f.write_str("write queue full"),
            StoreError::Closed => f.write_str("store closed"),
            StoreError::Sqlite(e) => write!(f, "sqlite: {e}"),
            StoreError::Io(e) => write!(f, "io: {e}"),
            StoreError::Log(e) => write!(f, "event log: {e}"),
            StoreError::Lagging => f.write_str("the index is behind the log; retry"),
            StoreError::Corrupt(e) => write!(f, "stored data unreadable: {e}"),
            StoreError::InvalidRule(e) => write!(f, "invalid rule: {e}"),
            StoreError::Format(e) => f.write_str(e),
            StoreError::DiskFull => f.write_str("the disk is full"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DiskFull) => StoreError::DiskFull,
            _ => StoreError::Sqlite(e),
        }
    }
}

/// Replaces `dir/name` with `data` so that a crash leaves the old file or
/// the new one, never a mix: written to `name.tmp` (mode 0600), synced,
/// renamed over, and the directory synced. The small files of the data
/// directory (`FORMAT`, `segments.json`, a new `suppressed.bin`, a backup's
/// manifest) are all written this way.
pub(crate) fn write_atomically(
    dir: &std::path::Path,
    name: &str,
    data: &[u8],
) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

/// Whether an I/O error means the disk (or the user's quota) is full.
pub fn is_disk_full(e: &std::io::Error) -> bool {
    // ENOSPC, EDQUOT on Linux.
    e.kind() == std::io::ErrorKind::StorageFull || matches!(e.raw_os_error(), Some(28 | 122))
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        StoreError::Io(e)
    }
}

/// The write side: where ingest appends. The embedded store writes its
/// segment log; a distributed one will publish to a stream.
pub trait WriteSide: Send + Sync + 'static {
    /// Queues a request's records. Returns at once; the receiver resolves
    /// when they are durable, with the log position after them.
    /// [`StoreError::Overloaded`] when the queue is full.
    fn append(&self, request: AppendRequest) -> Result<Pending, StoreError>;

    /// The log position below which everything is durable.
    fn durable_position(&self) -> u64;

    /// Stops taking writes, makes what is queued durable and stops the
    /// writer and the consumers. Blocking.
    fn close(&self);
}

/// The read side: what the admin API reads, derived from the log. Each read
/// sees every append answered before it started. All blocking: call from a
/// blocking context.
pub trait ReadSide: Send + Sync + 'static {
    /// The profile that `id` (a userId or anonymousId) belongs to.
    fn profile(&self, id: &str) -> Result<Option<ProfileSummary>, StoreError>;

    /// A page of the profile's events, newest first.
    fn profile_events(
        &self,
        id: &str,
        limit: usize,
        before: Option<&EventCursor>,
    ) -> Result<Option<EventsPage>, StoreError>;

    /// The profile's identifiers and the edges that joined them.
    fn profile_graph(&self, id: &str) -> Result<Option<IdentityGraph>, StoreError>;

    /// The consent decisions of the profile `id` belongs to, oldest first.
    fn consent_history(&self, id: &str) -> Result<Option<Vec<ConsentEntry>>, StoreError>;
}

/// A consumer following the log on its own thread ([`EventStore::follow`]);
/// dropping it stops the consumer and waits for its thread.
pub struct Following {
    progress: std::sync::Arc<crate::consumer::Progress>,
    id: crate::consumer::ConsumerId,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Following {
    /// A consumer started on `progress`.
    pub fn new(
        progress: std::sync::Arc<crate::consumer::Progress>,
        id: crate::consumer::ConsumerId,
        thread: std::thread::JoinHandle<()>,
    ) -> Self {
        Following {
            progress,
            id,
            thread: Some(thread),
        }
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        self.progress.stop(self.id);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One segment membership change (DESIGN.md §10), as destinations deliver
/// it (`weft.audience`).
#[derive(Debug, Clone, PartialEq)]
pub struct AudienceChange {
    /// Its place in the history, increasing.
    pub seq: i64,
    /// The segment's key.
    pub segment: String,
    /// The profile.
    pub profile_id: String,
    /// Its login identifiers now.
    pub user_ids: Vec<String>,
    /// Its device identifiers now.
    pub anonymous_ids: Vec<String>,
    /// When it entered or left.
    pub at: String,
    /// Entered (`true`) or left.
    pub entered: bool,
    /// The profile's current `categoryPreferences`.
    pub consent: serde_json::Value,
}

/// Told what the store removed, so state kept outside it (destinations'
/// outboxes) forgets the same.
pub trait StoreListener: Send + Sync {
    /// A person was erased: their identifiers, and the LSNs of the events
    /// the index attributed to them.
    fn erased(
        &self,
        identifiers: &std::collections::HashSet<String>,
        lsns: &std::collections::HashSet<crate::log::Lsn>,
    );
    /// Events received before `before` (RFC 3339 UTC millis) expired.
    fn expired(&self, before: &str);
}

/// A whole store: both sides, and the maintenance that spans them.
pub trait EventStore: WriteSide + ReadSide {
    /// Starts `consumer` on a thread of its own, reading the stored records
    /// from its position (never past what is durable); it runs until the
    /// answer is dropped or the store closes.
    /// Reads at most once per `pace` once caught up (zero: at every commit).
    fn follow(
        &self,
        name: &str,
        consumer: Box<dyn crate::consumer::Consumer>,
        pace: std::time::Duration,
    ) -> Result<Following, StoreError>;

    /// Segment membership changes after `after` (by `seq`), oldest first,
    /// at most `limit`. Blocking.
    fn audience_changes(&self, after: i64, limit: usize)
    -> Result<Vec<AudienceChange>, StoreError>;

    /// The `seq` of the latest membership change (0: none). Blocking.
    fn last_audience_change(&self) -> Result<i64, StoreError>;

    /// Calls `each` with every stored event (as JSON) received in
    /// `[from, to)` (RFC 3339 UTC millis; compared as text), in log order,
    /// until it answers `false`; answers how many it was given. Blocking.
    fn export(
        &self,
        from: &str,
        to: &str,
        each: &mut dyn FnMut(&str) -> bool,
    ) -> Result<u64, StoreError>;

    /// Tells `listener` of every erasure and expiry from now on.
    fn listen(&self, listener: std::sync::Arc<dyn StoreListener>);

    /// Erases the profile `id` belongs to: its events, identity edges and
    /// the rejected messages naming its identifiers, in the log and the
    /// derived state; suppresses its identifiers (those of devices shared
    /// with other people excepted) so later messages carrying them are
    /// dropped. `None` if unknown. Blocking.
    fn erase(&self, id: &str) -> Result<Option<ErasureReport>, StoreError>;

    /// Deletes events and rejected messages received before `before` (RFC
    /// 3339 UTC millis), at most `limit` events per call; answers how many
    /// events went. Blocking.
    fn expire(&self, before: &str, limit: usize) -> Result<usize, StoreError>;

    /// Whether the store can take writes and answer reads now. Blocking.
    fn check_ready(&self) -> Result<(), StoreError>;

    /// Requests waiting for the writer, and how far the log and the
    /// derived state have got.
    fn gauges(&self) -> crate::metrics::Gauges;

    /// Creates or replaces segment `key` (`[a-z0-9_-]{1,64}`, checked by
    /// the caller) with `rule` (DESIGN.md §10); every profile is evaluated
    /// against it in the background (`status` `computing` until then).
    /// [`StoreError::InvalidRule`] names what is wrong. Blocking.
    fn put_segment(
        &self,
        key: &str,
        name: &str,
        rule: serde_json::Value,
    ) -> Result<SegmentInfo, StoreError>;

    /// One segment, if it exists. Blocking.
    fn segment(&self, key: &str) -> Result<Option<SegmentInfo>, StoreError>;

    /// Every segment, by key. Blocking.
    fn segments(&self) -> Result<Vec<SegmentInfo>, StoreError>;

    /// Deletes a segment and its memberships; `false` if unknown. A
    /// segment other segments refer to is refused
    /// ([`StoreError::InvalidRule`]). Blocking.
    fn delete_segment(&self, key: &str) -> Result<bool, StoreError>;

    /// A page of a segment's members by profile id, after `cursor`; `None`
    /// if the segment is unknown. Blocking.
    fn segment_members(
        &self,
        key: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Option<MembersPage>, StoreError>;

    /// Re-evaluates the memberships whose `within` windows have moved on
    /// since they were last evaluated (profiles leave, or enter, without a
    /// new event). Blocking; the server calls it periodically.
    fn tick_segments(&self) -> Result<(), StoreError>;
}
