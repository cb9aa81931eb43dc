//! [`LogReader`]: a consumer's side of the log. It opens segment files by
//! itself and shares nothing with the writer but the directory and the
//! durable bound the writer hands out.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::format::Header;
use super::segment::{Next, RecordReader, list_segments};
use super::{LogError, Lsn};

/// Read buffer: one `read` syscall per 256 KiB, not per record.
const READ_BUFFER: usize = 256 * 1024;

/// How often a reader retries when the segment it picked is deleted under it.
const OPEN_ATTEMPTS: usize = 8;

/// The segment being read.
#[derive(Debug)]
struct Current {
    first_lsn: Lsn,
    path: PathBuf,
    records: RecordReader,
    /// A header already read whose record is at or past the last `until`.
    pending: Option<Header>,
    /// A newer segment seen in the directory after this one was last found
    /// to end: once this one ends again, it is complete.
    successor: Option<Lsn>,
}

/// Reads records in LSN order, up to a bound the caller knows to be durable.
///
/// Each consumer owns one (it is `Send`). It tolerates the writer's retention
/// (segments deleted before its position are skipped) and, after
/// [`LogReader::reopen`], its erasure.
#[derive(Debug)]
pub struct LogReader {
    dir: PathBuf,
    position: Lsn,
    current: Option<Current>,
    /// Payloads of records skipped on the way to `position`.
    scratch: Vec<u8>,
}

impl LogReader {
    /// A reader of the log in `dir` positioned at the first record with
    /// LSN >= `from`. Fails if the directory cannot be read; an empty one is
    /// fine.
    pub fn open(dir: &Path, from: Lsn) -> Result<LogReader, LogError> {
        let mut reader = LogReader {
            dir: dir.to_path_buf(),
            position: from.max(1),
            current: None,
            scratch: Vec::new(),
        };
        reader.locate()?;
        Ok(reader)
    }

    /// Appends to `out` up to `max` records with LSN < `until`, in LSN
    /// order, as `(lsn, payload)`, and returns how many it added (0: nothing
    /// below `until` is left to read).
    ///
    /// `until` is a durable bound from the writer (its
    /// [`next_lsn`](super::SegmentLog::next_lsn) after a successful sync):
    /// every record below it is whole on disk. A record at or past it is
    /// never returned nor checked, even if it is half written. A record that
    /// ends the newest segment incomplete is taken to be still in flight and
    /// ends the batch, so `until = Lsn::MAX` reads whatever is whole, without
    /// a durability promise. A record that fails its checks, or is cut short
    /// in an older segment, is [`LogError::Corrupt`].
    ///
    /// Moves on to the next segment when one ends, and skips segments that
    /// retention deleted before it got to them. Costs one `read` per 256 KiB
    /// and a directory listing per segment change.
    pub fn next_batch(
        &mut self,
        until: Lsn,
        max: usize,
        out: &mut Vec<(Lsn, Vec<u8>)>,
    ) -> Result<usize, LogError> {
        let mut buf = Vec::new();
        let mut ranges = Vec::new();
        let added = self.next_batch_into(until, max, &mut buf, &mut ranges)?;
        out.extend(ranges.into_iter().map(|(lsn, r)| (lsn, buf[r].to_vec())));
        Ok(added)
    }

    /// [`LogReader::next_batch`] without an allocation per record: appends
    /// the payloads to `buf`, back to back, and `(lsn, where in buf)` to
    /// `out`. For consumers, which decode records in place.
    pub fn next_batch_into(
        &mut self,
        until: Lsn,
        max: usize,
        buf: &mut Vec<u8>,
        out: &mut Vec<(Lsn, Range<usize>)>,
    ) -> Result<usize, LogError> {
        let mut added = 0;
        while added < max && self.position < until {
            let Some(current) = self.current.as_mut() else {
                if self.locate()? {
                    continue;
                }
                break; // No segment at all yet.
            };
            let start = current.records.offset();
            let header = match current.pending.take() {
                Some(header) => header,
                None => match current.records.next_header()? {
                    Next::Header(header) => header,
                    Next::End => {
                        if self.segment_ended()? {
                            continue;
                        }
                        break;
                    }
                    Next::Partial => {
                        if self.ended_inside_record("incomplete record header")? {
                            continue;
                        }
                        break;
                    }
                    Next::Invalid(reason) => {
                        return Err(corrupt(&current.path, start, reason));
                    }
                },
            };
            if header.lsn >= until {
                current.pending = Some(header);
                // Every record left is at or past `until`.
                self.position = until;
                break;
            }
            if header.lsn < self.position {
                // Before where we start (or already returned): skip unchecked.
                if current.records.read_payload(&header, &mut self.scratch)?
                    || self.ended_inside_record("incomplete payload")?
                {
                    continue;
                }
                break;
            }
            let at = buf.len();
            if !current.records.append_payload(&header, buf)? {
                if self.ended_inside_record("incomplete payload")? {
                    continue;
                }
                break;
            }
            if !header.matches(&buf[at..]) {
                buf.truncate(at);
                let reason = format!("CRC mismatch (the record claims LSN {})", header.lsn);
                return Err(corrupt(&current.path, start, reason));
            }
            out.push((header.lsn, at..buf.len()));
            self.position = header.lsn + 1;
            added += 1;
        }
        Ok(added)
    }

    /// The next record returned will have an LSN >= this: one past the last
    /// record returned, or further when the reader knows nothing lies
    /// between.
    pub fn position(&self) -> Lsn {
        self.position
    }

    /// Closes the file being read and opens the segment that holds
    /// [`LogReader::position`] afresh. Call it after
    /// [`SegmentLog::remove_records`](super::SegmentLog::remove_records):
    /// until then the reader keeps the old, unlinked file (removed records
    /// included) open and readable.
    pub fn reopen(&mut self) -> Result<(), LogError> {
        self.current = None;
        self.scratch = Vec::new();
        self.locate()?;
        Ok(())
    }

    /// Opens the newest segment starting at or before `position` (or the
    /// oldest one, if retention deleted everything before `position`).
    /// Returns `false` when the directory holds no segment.
    fn locate(&mut self) -> Result<bool, LogError> {
        self.current = None;
        let mut attempt = 1;
        loop {
            let segments = list_segments(&self.dir)?;
            let Some(index) = segments
                .iter()
                .rposition(|&(first_lsn, _)| first_lsn <= self.position)
                .or(if segments.is_empty() { None } else { Some(0) })
            else {
                return Ok(false);
            };
            let (first_lsn, path) = &segments[index];
            match File::open(path) {
                Ok(file) => {
                    self.current = Some(Current {
                        first_lsn: *first_lsn,
                        path: path.clone(),
                        records: RecordReader::new(file, READ_BUFFER),
                        pending: None,
                        successor: None,
                    });
                    return Ok(true);
                }
                // Deleted by retention between the listing and the open.
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < OPEN_ATTEMPTS => {
                    attempt += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The current segment has no more data right now. Returns `true` when
    /// the reader moved (to the next segment, or to the file that replaced
    /// this one) and should read on, `false` when it is caught up.
    fn segment_ended(&mut self) -> Result<bool, LogError> {
        let Some(current) = self.current.as_mut() else {
            return Ok(false);
        };
        if let Some(successor) = current.successor {
            // The newer segment existed before this read found the end, and
            // the writer finishes a segment before creating the next: all of
            // this one has been read. Nothing lies between.
            self.position = self.position.max(successor);
            return self.locate();
        }
        if let Some(successor) = newer_segment(&self.dir, current.first_lsn)? {
            // Records may have landed between the end and the listing: read
            // once more before moving on.
            current.successor = Some(successor);
            return Ok(true);
        }
        if !current.records.is_file_at(&current.path)? {
            // An erasure replaced the active segment: follow the name.
            return self.locate();
        }
        Ok(false)
    }

    /// The current segment ends inside a record (the reader is rewound to
    /// its start). In the newest segment that is a write in progress:
    /// returns `false`, stop for now. Once a newer segment exists this one is
    /// complete, so after one more read (`true`: records may have landed
    /// meanwhile) it is damage: [`LogError::Corrupt`].
    fn ended_inside_record(&mut self, reason: &str) -> Result<bool, LogError> {
        let Some(current) = self.current.as_mut() else {
            return Ok(false);
        };
        if current.successor.is_some() {
            let offset = current.records.offset();
            return Err(corrupt(&current.path, offset, reason.to_string()));
        }
        if let Some(successor) = newer_segment(&self.dir, current.first_lsn)? {
            current.successor = Some(successor);
            return Ok(true);
        }
        Ok(false)
    }
}

/// Calls `each(lsn, payload)` with every record of the log in `dir` from
/// `from` up to (not including) `until`, in order, until it answers
/// `false`: one pass for start-up rebuilds, retention and tests.
pub fn scan(
    dir: &Path,
    from: Lsn,
    until: Lsn,
    mut each: impl FnMut(Lsn, &[u8]) -> bool,
) -> Result<(), LogError> {
    let mut reader = LogReader::open(dir, from)?;
    let (mut buf, mut records) = (Vec::new(), Vec::new());
    loop {
        buf.clear();
        records.clear();
        if reader.next_batch_into(until, 8192, &mut buf, &mut records)? == 0 {
            return Ok(());
        }
        for (lsn, range) in &records {
            if !each(*lsn, &buf[range.clone()]) {
                return Ok(());
            }
        }
    }
}

/// The first LSN of the oldest segment newer than the one from `first_lsn`.
fn newer_segment(dir: &Path, first_lsn: Lsn) -> Result<Option<Lsn>, LogError> {
    Ok(list_segments(dir)?
        .into_iter()
        .map(|(first, _)| first)
        .find(|&first| first > first_lsn))
}

fn corrupt(path: &Path, offset: u64, reason: String) -> LogError {
    LogError::Corrupt {
        segment: path.to_path_buf(),
        offset,
        reason,
    }
}
