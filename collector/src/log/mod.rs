//! The event log: append-only segment files, the collector's system of
//! record (DESIGN.md §3, §8).
//!
//! Why it exists: a request is acknowledged only once its events are durable,
//! and everything derived from events (identity, profiles, segments,
//! destination outboxes) must be rebuildable from them. An append-only log
//! gives both cheaply: one writer thread groups every waiting request into
//! one [`SegmentLog::append`] (one `write`) and one [`SegmentLog::sync`] (one
//! `fdatasync`), then answers them; consumers each read it at their own
//! durable position with a [`LogReader`].
//!
//! Layout:
//! - `format`: the record frame and its checks.
//! - `segment`: file names, creation with their modes, the directory fsync,
//!   and the record walker every reader of a file uses.
//! - `writer`: [`SegmentLog`]: open with recovery, append, sync, rollover,
//!   retention ([`SegmentLog::drop_segments_before`]) and erasure
//!   ([`SegmentLog::remove_records`]).
//! - `reader`: [`LogReader`], which opens segment files by itself.
//!
//! # On disk
//!
//! A directory (mode 0700 when the log creates it) of segment files named
//! `{first_lsn:020}.log` (mode 0600), each a sequence of records:
//!
//! ```text
//! [len: u32][crc: u32][version: u8 = 1][lsn: u64][payload: len bytes]
//! ```
//!
//! little-endian, the CRC32C taken over version, LSN and payload. The framing
//! costs [`FRAMING_BYTES`] = 17 bytes per record (a 300-byte event takes 317
//! bytes). There is no file header, index or footer: a segment is exactly its
//! records, so the only state to recover after a crash is where the last one
//! ends.
//!
//! # Invariants
//!
//! - LSNs are 1-based and strictly increase through the log, across
//!   segments. Gaps are allowed (erasure leaves them); reuse never happens,
//!   not even when erasure removes the newest records.
//! - A segment holds only records with `first_lsn <= lsn < next segment's
//!   first_lsn`, is named after the first LSN it was created to hold, and
//!   never holds part of a record that continues in another file.
//! - Only the newest segment (the active one) is ever appended to. A segment
//!   is synced before the next one is created, so every older segment is
//!   complete and durable: damage there is reported as
//!   [`LogError::Corrupt`], never truncated away.
//! - After [`SegmentLog::sync`] returns `Ok`, every record appended before it
//!   survives a crash. Recovery ([`SegmentLog::open`]) cuts the active
//!   segment at its first record that is incomplete or fails its checks (a
//!   torn tail: records that were written but never synced, so never
//!   acknowledged).
//! - Files of the log are written only through this module: one
//!   [`SegmentLog`] per directory (not enforced by a lock), any number of
//!   [`LogReader`]s, in this process or others.
//!
//! # Threads
//!
//! Nothing here is shared: [`SegmentLog`] is owned by the one writer thread
//! (it is `Send`, and every method that changes the log takes `&mut self`);
//! each consumer owns its [`LogReader`]. They coordinate through the file
//! system and through the durable bound the writer hands out (its
//! [`SegmentLog::next_lsn`] right after a successful `sync`), which readers
//! pass as `until`.

mod format;
mod lookup;
mod reader;
mod segment;
mod writer;

#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::path::PathBuf;

pub use format::MAX_PAYLOAD;
pub use lookup::LogLookup;
pub use reader::{LogReader, scan};
pub use segment::{Copied, copy_records, list_segments};
pub use writer::SegmentLog;

/// The first LSN of every segment in `dir`, oldest first.
pub fn segment_starts(dir: &std::path::Path) -> Result<Vec<Lsn>, LogError> {
    Ok(segment::list_segments(dir)?
        .into_iter()
        .map(|(first, _)| first)
        .collect())
}

/// A record's log sequence number: 1-based, strictly increasing, with gaps
/// where records were erased.
pub type Lsn = u64;

/// Bytes of framing the log adds to each payload: length (4), CRC32C (4),
/// version (1) and LSN (8).
pub const FRAMING_BYTES: usize = format::HEADER_LEN;

/// How the log is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogOptions {
    /// The active segment is closed and a new one started by the first
    /// append that finds it holding at least this many bytes. A segment can
    /// therefore exceed it by one append's worth of records. Default 64 MiB.
    pub segment_bytes: u64,
}

impl Default for LogOptions {
    fn default() -> LogOptions {
        LogOptions {
            segment_bytes: 64 << 20,
        }
    }
}

/// What [`SegmentLog::open`] found and repaired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Segments in the log after opening (at least 1: a new log gets one).
    pub segments: usize,
    /// Records in the log after opening, all checked.
    pub records: u64,
    /// Bytes cut from the end of the active segment (a torn tail).
    pub truncated_bytes: u64,
    /// Leftover `*.tmp` files of an interrupted erasure, removed.
    pub tmp_files_removed: usize,
    /// The LSN the next append will get.
    pub next_lsn: Lsn,
}

/// One segment file, as [`SegmentLog::segments`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// The LSN the segment was created to hold first (its name); its
    /// records have LSNs from this up to the next segment's `first_lsn`.
    pub first_lsn: Lsn,
    /// Size in bytes, framing included.
    pub bytes: u64,
    /// The file.
    pub path: PathBuf,
}

/// Why a log operation failed.
#[derive(Debug)]
pub enum LogError {
    /// The file system refused.
    Io(io::Error),
    /// A segment holds bytes that are not a valid record where a valid
    /// record must be: anywhere in an older segment, or a record out of LSN
    /// order. Nothing was dropped; an operator has to look.
    Corrupt {
        /// The damaged file.
        segment: PathBuf,
        /// Byte offset of the record that fails.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// [`SegmentLog::append`] was given a payload above [`MAX_PAYLOAD`];
    /// nothing of that call was written.
    TooLarge {
        /// The payload's length.
        len: usize,
    },
    /// An earlier write, sync or rollover failed, so what is on disk is not
    /// known: records since the last successful sync may or may not be
    /// there. The log refuses further changes; drop it and
    /// [`SegmentLog::open`] it again, which recovers as after a crash.
    Failed,
}

impl fmt::Display for LogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogError::Io(e) => write!(f, "event log I/O error: {e}"),
            LogError::Corrupt {
                segment,
                offset,
                reason,
            } => write!(
                f,
                "event log segment {} is corrupt at byte {offset}: {reason}",
                segment.display()
            ),
            LogError::TooLarge { len } => write!(
                f,
                "event log record of {len} bytes exceeds the limit of {MAX_PAYLOAD} bytes"
            ),
            LogError::Failed => write!(
                f,
                "event log failed earlier (write or sync error); reopen it to recover"
            ),
        }
    }
}

impl std::error::Error for LogError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LogError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for LogError {
    fn from(e: io::Error) -> LogError {
        LogError::Io(e)
    }
}
