//! One record by its LSN: for state that keeps where an event is in the log
//! instead of a copy of it.
//!
//! The index keeps, per identifier, the LSNs of its events; a read of a
//! profile's events then reads those records here. A segment's table of
//! record offsets is built the first time one of its records is asked for
//! (one sequential pass over the segment's headers) and extended as the
//! active segment grows; a table is rebuilt when its file was replaced (an
//! erasure rewrote the segment) and forgotten when retention deleted it.
//! Every read checks the record's header LSN and CRC32C.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::format::{HEADER_LEN, Header};
use super::segment::list_segments;
use super::{LogError, Lsn};

/// A gap in a table: an LSN this segment does not hold (erased).
const NONE: u32 = u32::MAX;
/// Read buffer of a table's pass over its segment's headers.
const SCAN_BUFFER: usize = 256 * 1024;

/// Reads records of the log in one directory by LSN. Shared by any number
/// of threads.
#[derive(Debug)]
pub struct LogLookup {
    dir: PathBuf,
    tables: Mutex<BTreeMap<Lsn, Table>>,
}

/// How long a table is trusted before its file is checked again for a
/// replacement by a rewrite or a deletion by retention (callers that know
/// of either call [`LogLookup::invalidate`] at once).
const RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Where the records of one segment file are.
#[derive(Debug)]
struct Table {
    path: PathBuf,
    file: File,
    /// (device, inode) of `file`, to notice a rewrite.
    identity: (u64, u64),
    /// The segment's first LSN.
    first: Lsn,
    /// Offset of record `first + i`, or [`NONE`].
    offsets: Vec<u32>,
    /// How far the file has been scanned: the end of the last whole record.
    scanned: u64,
    /// When the file was last checked to be the one at `path`.
    checked: std::time::Instant,
}

impl LogLookup {
    /// A lookup over the log in `dir`. Reads nothing yet.
    pub fn new(dir: &Path) -> LogLookup {
        LogLookup {
            dir: dir.to_path_buf(),
            tables: Mutex::new(BTreeMap::new()),
        }
    }

    /// Forgets every table: after an erasure rewrote segments, the next
    /// reads open the files that replaced them.
    pub fn invalidate(&self) {
        self.tables
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// The payload of record `lsn`, or `None` if the log does not hold it
    /// (erased, dropped by retention, or not written yet).
    pub fn read(&self, lsn: Lsn) -> Result<Option<Vec<u8>>, LogError> {
        let mut tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        // Twice at most: a table found stale (its file replaced under it)
        // is rebuilt once.
        for _ in 0..2 {
            let Some(table) = table_for(&self.dir, &mut tables, lsn)? else {
                return Ok(None);
            };
            match table.read(lsn)? {
                Found::Record(payload) => return Ok(Some(payload)),
                Found::Missing => return Ok(None),
                Found::Stale => {
                    let first = table.first;
                    tables.remove(&first);
                }
            }
        }
        Ok(None)
    }
}

/// The table of the segment that would hold `lsn`, opened, current (not
/// replaced) and scanned far enough, or `None` if no segment holds it.
fn table_for<'t>(
    dir: &Path,
    tables: &'t mut BTreeMap<Lsn, Table>,
    lsn: Lsn,
) -> Result<Option<&'t mut Table>, LogError> {
    // The table that holds `lsn`, if known, checked now and then.
    let known = tables
        .range(..=lsn)
        .next_back()
        .map(|(first, t)| (*first, t.checked.elapsed() < RECHECK));
    if let Some((first, true)) = known
        && lsn < first + tables[&first].offsets.len() as u64
    {
        return Ok(tables.get_mut(&first));
    }
    let segments = list_segments(dir)?;
    // Forget the segments retention deleted.
    tables.retain(|first, _| segments.iter().any(|(f, _)| f == first));
    let Some((first, path)) = segments.iter().rev().find(|(first, _)| *first <= lsn) else {
        return Ok(None);
    };
    let replaced = match tables.get_mut(first) {
        Some(t) => {
            let current = t.is_current()?;
            t.checked = std::time::Instant::now();
            !current
        }
        None => true,
    };
    if replaced {
        match Table::open(path, *first) {
            Ok(t) => {
                tables.insert(*first, t);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
    let Some(table) = tables.get_mut(first) else {
        return Ok(None);
    };
    if lsn >= table.first + table.offsets.len() as u64 {
        table.scan()?;
    }
    Ok(Some(table))
}

enum Found {
    Record(Vec<u8>),
    Missing,
    Stale,
}

impl Table {
    fn open(path: &Path, first: Lsn) -> io::Result<Table> {
        let file = File::open(path)?;
        let meta = file.metadata()?;
        Ok(Table {
            path: path.to_path_buf(),
            file,
            identity: (meta.dev(), meta.ino()),
            first,
            offsets: Vec::new(),
            scanned: 0,
            checked: std::time::Instant::now(),
        })
    }

    /// Whether the path still names the file this table describes.
    fn is_current(&self) -> io::Result<bool> {
        match std::fs::metadata(&self.path) {
            Ok(m) => Ok((m.dev(), m.ino()) == self.identity),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Extends the table over the records written since the last scan,
    /// reading headers only (payloads are skipped). Stops at the end of
    /// the data or at an incomplete record (a write in progress).
    fn scan(&mut self) -> Result<(), LogError> {
        let mut file = BufReader::with_capacity(SCAN_BUFFER, self.file.try_clone()?);
        file.seek(SeekFrom::Start(self.scanned))?;
        let len = self.file.metadata()?.len();
        while self.scanned + HEADER_LEN as u64 <= len {
            let mut raw = [0u8; HEADER_LEN];
            file.read_exact(&mut raw)?;
            let header = Header::decode(raw);
            if header.problem().is_some()
                || self.scanned + header.record_len() > len
                || header.lsn < self.first + self.offsets.len() as u64
            {
                // Damage or a write in flight: readers only ask for durable
                // records, which lie before it.
                break;
            }
            let offset = u32::try_from(self.scanned).map_err(|_| LogError::Corrupt {
                segment: self.path.clone(),
                offset: self.scanned,
                reason: "segment larger than 4 GiB cannot be looked up".into(),
            })?;
            let index = (header.lsn - self.first) as usize;
            self.offsets.resize(index, NONE);
            self.offsets.push(offset);
            self.scanned += header.record_len();
            file.seek_relative(i64::from(header.len))?;
        }
        Ok(())
    }

    /// Record `lsn`: one read of the whole record when the next record's
    /// offset says how long it is (records lie back to back), else its
    /// header and then its payload.
    fn read(&self, lsn: Lsn) -> Result<Found, LogError> {
        let Some(i) = lsn.checked_sub(self.first).map(|i| i as usize) else {
            return Ok(Found::Missing);
        };
        let Some(&offset) = self.offsets.get(i) else {
            return Ok(Found::Missing);
        };
        if offset == NONE {
            return Ok(Found::Missing);
        }
        let known_len = self
            .offsets
            .get(i + 1)
            .filter(|&&next| next != NONE && next > offset)
            .map(|&next| (next - offset) as usize)
            .filter(|&len| len >= HEADER_LEN);
        let offset = u64::from(offset);
        let mut record = match known_len {
            Some(len) => {
                let mut record = vec![0u8; len];
                if self.file.read_exact_at(&mut record, offset).is_err() {
                    return Ok(Found::Stale);
                }
                record
            }
            None => {
                let mut raw = [0u8; HEADER_LEN];
                if self.file.read_exact_at(&mut raw, offset).is_err() {
                    return Ok(Found::Stale);
                }
                let header = Header::decode(raw);
                if header.problem().is_some() {
                    return Ok(Found::Stale);
                }
                let mut record = vec![0u8; HEADER_LEN + header.len as usize];
                record[..HEADER_LEN].copy_from_slice(&raw);
                if self
                    .file
                    .read_exact_at(&mut record[HEADER_LEN..], offset + HEADER_LEN as u64)
                    .is_err()
                {
                    return Ok(Found::Stale);
                }
                record
            }
        };
        let mut raw = [0u8; HEADER_LEN];
        raw.copy_from_slice(&record[..HEADER_LEN]);
        let header = Header::decode(raw);
        if header.problem().is_some()
            || header.lsn != lsn
            || header.record_len() != record.len() as u64
            || !header.matches(&record[HEADER_LEN..])
        {
            return Ok(Found::Stale);
        }
        record.drain(..HEADER_LEN);
        Ok(Found::Record(record))
    }
}
