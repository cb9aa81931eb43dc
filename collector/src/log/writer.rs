//! [`SegmentLog`]: the writer's side of the log. Opening recovers; appends
//! go to the active (newest) segment; retention and erasure change the older
//! ones.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use super::format::{self, HEADER_LEN, Header, MAX_PAYLOAD};
use super::segment::{
    Checked, DIR_MODE, RecordReader, TMP_SUFFIX, create_segment, create_tmp, list_segments,
    open_for_append, parse_segment_name, segment_name, sync_dir, tmp_path,
};
use super::{LogError, LogOptions, Lsn, Recovery, SegmentInfo};

/// Read and write buffer for whole-segment passes (recovery, erasure).
const PASS_BUFFER: usize = 256 * 1024;

/// The append buffer is kept between appends up to this capacity; one huge
/// group does not pin its memory for ever.
const KEEP_BUFFER: usize = 8 << 20;

/// What the writer knows of one segment file.
#[derive(Debug)]
struct Segment {
    first_lsn: Lsn,
    path: PathBuf,
    /// Bytes of whole records (what has been written, synced or not).
    bytes: u64,
    /// The newest record's LSN, `None` when the segment is empty.
    last_lsn: Option<Lsn>,
}

/// The log, as its one writer sees it. See the [module docs](super) for the
/// format and invariants.
///
/// Every method that changes the log takes `&mut self`: it belongs to one
/// thread (it is `Send`). After an I/O error in [`SegmentLog::append`],
/// [`SegmentLog::sync`] or a rollover, every later call answers
/// [`LogError::Failed`]: drop the log and open it again.
#[derive(Debug)]
pub struct SegmentLog {
    dir: PathBuf,
    options: LogOptions,
    /// Oldest first; never empty; the last one is the active segment.
    segments: Vec<Segment>,
    /// Append handle on the active segment.
    active: File,
    /// Bytes of the active segment known to be durable.
    synced_bytes: u64,
    next_lsn: Lsn,
    /// The frames of one append, written with one `write_all`.
    buf: Vec<u8>,
    failed: bool,
    /// The failure was the `write` of an append (a full disk, typically):
    /// nothing was synced on top of the last sync, so cutting the active
    /// segment back makes it whole again ([`SegmentLog::recover_failed_write`]).
    write_failed: bool,
}

impl SegmentLog {
    /// Opens the log in `dir`, or creates it: the directory with mode 0700 if
    /// missing, every file with mode 0600.
    ///
    /// Recovery reads every record of every segment and checks it. The
    /// active (last) segment is cut (`set_len`, then `sync_data`) at its
    /// first record whose header is incomplete, whose version is unknown,
    /// whose length is absurd (above [`MAX_PAYLOAD`]), whose payload is
    /// incomplete or whose CRC does not match: a torn tail, written but never
    /// synced before a crash. Older segments were synced before the next one
    /// was created, so damage there is [`LogError::Corrupt`], as is a record
    /// out of LSN order anywhere. The active segment is synced, so every
    /// record found is durable once this returns. Leftover `NAME.log.tmp`
    /// files of an interrupted erasure are removed.
    ///
    /// Reading the whole log costs one sequential pass over it.
    pub fn open(dir: &Path, options: LogOptions) -> Result<(SegmentLog, Recovery), LogError> {
        create_dir(dir)?;
        let tmp_files_removed = remove_tmp_files(dir)?;
        let listed = list_segments(dir)?;
        let mut segments = Vec::with_capacity(listed.len().max(1));
        let mut records = 0;
        let mut truncated_bytes = 0;
        for (index, (first_lsn, path)) in listed.iter().enumerate() {
            let next_first = listed.get(index + 1).map(|&(next, _)| next);
            let scan = scan(path, *first_lsn, next_first)?;
            records += scan.records;
            truncated_bytes += scan.truncated;
            segments.push(Segment {
                first_lsn: *first_lsn,
                path: path.clone(),
                bytes: scan.bytes,
                last_lsn: scan.last_lsn,
            });
        }
        if segments.is_empty() {
            let path = dir.join(segment_name(1));
            create_segment(&path)?;
            sync_dir(dir)?;
            segments.push(Segment {
                first_lsn: 1,
                path,
                bytes: 0,
                last_lsn: None,
            });
        }
        let Some(last) = segments.last() else {
            unreachable!("a log always has a segment")
        };
        let next_lsn = last.last_lsn.map_or(last.first_lsn, |lsn| lsn + 1);
        let active = open_for_append(&last.path)?;
        let log = SegmentLog {
            dir: dir.to_path_buf(),
            options,
            synced_bytes: last.bytes,
            segments,
            active,
            next_lsn,
            buf: Vec::new(),
            failed: false,
            write_failed: false,
        };
        let recovery = Recovery {
            segments: log.segments.len(),
            records,
            truncated_bytes,
            tmp_files_removed,
            next_lsn,
        };
        Ok((log, recovery))
    }

    /// Frames `payloads` as records with consecutive LSNs from
    /// [`SegmentLog::next_lsn`] and hands them to the OS with one
    /// `write_all` of one buffer. Not durable until [`SegmentLog::sync`].
    ///
    /// If the active segment already holds at least
    /// [`LogOptions::segment_bytes`], it first rolls over: syncs the active
    /// segment, creates the next one (named by the first LSN it will hold)
    /// and fsyncs the directory. Returns the LSN of the last record, or
    /// `next_lsn() - 1` when `payloads` is empty. A payload above
    /// [`MAX_PAYLOAD`] fails the whole call with [`LogError::TooLarge`]
    /// before anything is written.
    pub fn append(&mut self, payloads: &[&[u8]]) -> Result<Lsn, LogError> {
        self.usable()?;
        if payloads.is_empty() {
            return Ok(self.next_lsn - 1);
        }
        if let Some(payload) = payloads.iter().find(|p| p.len() > MAX_PAYLOAD) {
            return Err(LogError::TooLarge { len: payload.len() });
        }
        let active = self.active_segment();
        if active.bytes > 0 && active.bytes >= self.options.segment_bytes {
            self.roll_over()?;
        }

        self.buf.clear();
        self.buf
            .reserve(payloads.iter().map(|p| HEADER_LEN + p.len()).sum());
        let mut lsn = self.next_lsn;
        for payload in payloads {
            format::encode(&mut self.buf, lsn, payload);
            lsn += 1;
        }
        if let Err(e) = self.active.write_all(&self.buf) {
            self.fail();
            self.write_failed = self.active_segment().bytes == self.synced_bytes;
            return Err(e.into());
        }
        let written = self.buf.len() as u64;
        let last = lsn - 1;
        let active = self.active_segment_mut();
        active.bytes += written;
        active.last_lsn = Some(last);
        self.next_lsn = lsn;
        if self.buf.capacity() > KEEP_BUFFER {
            self.buf = Vec::new();
        }
        Ok(last)
    }

    /// `fdatasync`s the active segment: after `Ok`, every appended record is
    /// durable. Costs nothing when nothing was appended since the last sync.
    pub fn sync(&mut self) -> Result<(), LogError> {
        self.usable()?;
        let bytes = self.active_segment().bytes;
        if bytes == self.synced_bytes {
            return Ok(());
        }
        if let Err(e) = self.active.sync_data() {
            self.fail();
            return Err(e.into());
        }
        self.synced_bytes = bytes;
        Ok(())
    }

    /// Ends the active segment now (if it holds anything): the next append
    /// goes to a new one. Retention calls it when every record of the
    /// active segment has expired, so that a quiet log, which never fills
    /// a segment, still lets its old records go.
    pub fn roll(&mut self) -> Result<(), LogError> {
        self.usable()?;
        if self.active_segment().bytes == 0 {
            return Ok(());
        }
        self.roll_over()
    }

    /// The LSN the next appended record will get. Right after a successful
    /// [`SegmentLog::sync`] it is the durable bound readers may read up to
    /// (exclusive).
    pub fn next_lsn(&self) -> Lsn {
        self.next_lsn
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// First LSN, size in bytes and path of each segment, oldest first; the
    /// last one is the active segment.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        self.segments
            .iter()
            .map(|s| SegmentInfo {
                first_lsn: s.first_lsn,
                bytes: s.bytes,
                path: s.path.clone(),
            })
            .collect()
    }

    /// Retention: deletes the oldest segments all of whose records have
    /// LSN < `before` (those whose next segment starts at or below
    /// `before`), never the active one, then fsyncs the directory. Returns
    /// how many were deleted. A reader in the middle of a deleted segment
    /// finishes it (its open file stays readable); one that has not reached
    /// it skips to the oldest remaining segment.
    pub fn drop_segments_before(&mut self, before: Lsn) -> Result<usize, LogError> {
        self.usable()?;
        let expired = self
            .segments
            .windows(2)
            .take_while(|pair| pair[1].first_lsn <= before)
            .count();
        let mut dropped = 0;
        let mut failure = None;
        for segment in &self.segments[..expired] {
            match fs::remove_file(&segment.path) {
                Ok(()) => dropped += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => dropped += 1,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        self.segments.drain(..dropped);
        if dropped > 0 {
            sync_dir(&self.dir)?;
        }
        match failure {
            Some(e) => Err(e.into()),
            None => Ok(dropped),
        }
    }

    /// Erasure: asks `remove(lsn, payload)` about every record, oldest first,
    /// exactly once each, then rewrites every segment (the active one
    /// included) that holds a record it answered `true` for, without those
    /// records. The others keep their LSNs, and the segment its name: the
    /// new content is written to `NAME.log.tmp` (0600), synced, renamed over
    /// the old file (so the old content is no longer in the directory), and
    /// the directory fsynced. Returns how many records were removed.
    ///
    /// If the newest record of the log is removed, the log first rolls over,
    /// so that the next LSN stays in a file name and is never handed out
    /// again. Readers keep the old files open until
    /// [`LogReader::reopen`](super::LogReader::reopen): call it on each one
    /// afterwards, or the removed records stay readable (and on disk) through
    /// them.
    ///
    /// Unsynced appends in the active segment become durable here.
    pub fn remove_records(
        &mut self,
        mut remove: impl FnMut(Lsn, &[u8]) -> bool,
    ) -> Result<u64, LogError> {
        self.usable()?;
        // First pass: decide, reading every record once.
        let mut plan: Vec<(usize, Vec<Lsn>)> = Vec::new();
        let mut payload = Vec::new();
        for (index, segment) in self.segments.iter().enumerate() {
            let mut records = RecordReader::new(File::open(&segment.path)?, PASS_BUFFER);
            let mut doomed = Vec::new();
            while records.offset() < segment.bytes {
                let header = read_valid(&mut records, &segment.path, &mut payload)?;
                if remove(header.lsn, &payload) {
                    doomed.push(header.lsn);
                }
            }
            if !doomed.is_empty() {
                plan.push((index, doomed));
            }
        }
        let removed = plan.iter().map(|(_, doomed)| doomed.len() as u64).sum();
        if removed == 0 {
            return Ok(0);
        }

        // A reopened log takes its next LSN from the newest record, or from
        // the newest file name when that file is empty. Removing the newest
        // record would hand its LSN out again: start a new segment first.
        let active = self.segments.len() - 1;
        let newest = self.segments[active].last_lsn;
        if plan
            .last()
            .is_some_and(|(index, doomed)| *index == active && doomed.last().copied() == newest)
        {
            self.roll_over()?;
        }

        for (index, doomed) in &plan {
            self.rewrite(*index, doomed)?;
        }
        Ok(removed)
    }

    /// Ends the active segment and starts the next, named `next_lsn`.
    fn roll_over(&mut self) -> Result<(), LogError> {
        if let Err(e) = self.active.sync_data() {
            self.fail();
            return Err(e.into());
        }
        self.synced_bytes = self.active_segment().bytes;
        let path = self.dir.join(segment_name(self.next_lsn));
        let created = create_segment(&path).and_then(|file| sync_dir(&self.dir).map(|()| file));
        match created {
            Ok(file) => self.active = file,
            Err(e) => {
                self.fail();
                return Err(e.into());
            }
        }
        self.synced_bytes = 0;
        self.segments.push(Segment {
            first_lsn: self.next_lsn,
            path,
            bytes: 0,
            last_lsn: None,
        });
        Ok(())
    }

    /// Rewrites segment `index` without the records `doomed` (in LSN order).
    fn rewrite(&mut self, index: usize, doomed: &[Lsn]) -> Result<(), LogError> {
        let is_active = index + 1 == self.segments.len();
        let segment = &self.segments[index];
        let path = segment.path.clone();
        let tmp = tmp_path(&path);
        let (bytes, last_lsn) = match copy_without(&path, segment.bytes, &tmp, doomed) {
            Ok(kept) => kept,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        if let Err(e) = fs::rename(&tmp, &path) {
            let _ = fs::remove_file(&tmp);
            return Err(e.into());
        }
        if is_active {
            // The handle still points at the old, now unlinked, file.
            match open_for_append(&path) {
                Ok(file) => self.active = file,
                Err(e) => {
                    self.failed = true;
                    return Err(e.into());
                }
            }
            // `copy_without` synced the new file.
            self.synced_bytes = bytes;
        }
        let segment = &mut self.segments[index];
        segment.bytes = bytes;
        segment.last_lsn = last_lsn;
        sync_dir(&self.dir)?;
        Ok(())
    }

    /// Marks the log failed and, best effort, cuts what was never synced,
    /// so that records whose requests are answered with an error do not turn
    /// up after reopening.
    fn fail(&mut self) {
        self.failed = true;
        let _ = self.active.set_len(self.synced_bytes);
    }

    /// Makes the log usable again after an append whose `write` failed
    /// (`ENOSPC`): the active segment is cut back to its last synced record
    /// and synced, and appends continue from the same LSN, which no reader
    /// was ever allowed to see. After a failed sync or rollover, what is on
    /// disk is not known: that stays [`LogError::Failed`] (reopen to
    /// recover as after a crash).
    pub fn recover_failed_write(&mut self) -> Result<(), LogError> {
        if !self.failed {
            return Ok(());
        }
        if !self.write_failed {
            return Err(LogError::Failed);
        }
        self.active.set_len(self.synced_bytes)?;
        self.active.sync_data()?;
        self.failed = false;
        self.write_failed = false;
        Ok(())
    }

    fn usable(&self) -> Result<(), LogError> {
        if self.failed {
            Err(LogError::Failed)
        } else {
            Ok(())
        }
    }

    fn active_segment(&self) -> &Segment {
        let Some(active) = self.segments.last() else {
            unreachable!("a log always has a segment")
        };
        active
    }

    fn active_segment_mut(&mut self) -> &mut Segment {
        let Some(active) = self.segments.last_mut() else {
            unreachable!("a log always has a segment")
        };
        active
    }
}

/// Creates the log directory (0700) if it is missing, and makes its entry
/// durable in the parent.
fn create_dir(dir: &Path) -> io::Result<()> {
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => return Ok(()),
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{} is not a directory", dir.display()),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => sync_dir(Path::new(".")),
    }
}

/// Removes `NAME.log.tmp` files left by an interrupted rewrite; the file
/// they were to replace is intact. Other files are left alone.
fn remove_tmp_files(dir: &Path) -> io::Result<usize> {
    let mut removed = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let is_ours = name
            .to_str()
            .and_then(|name| name.strip_suffix(TMP_SUFFIX))
            .and_then(|name| parse_segment_name(name.as_ref()))
            .is_some();
        if is_ours && entry.file_type()?.is_file() {
            fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    if removed > 0 {
        sync_dir(dir)?;
    }
    Ok(removed)
}

/// What a recovery pass found in one segment.
struct Scan {
    bytes: u64,
    last_lsn: Option<Lsn>,
    records: u64,
    truncated: u64,
}

/// Checks every record of one segment. `next_first` is the next segment's
/// first LSN; `None` means this is the active segment, whose damaged tail is
/// cut off rather than reported.
fn scan(path: &Path, first_lsn: Lsn, next_first: Option<Lsn>) -> Result<Scan, LogError> {
    let is_active = next_first.is_none();
    let file = OpenOptions::new().read(true).write(is_active).open(path)?;
    let len = file.metadata()?.len();
    let mut records = RecordReader::new(file, PASS_BUFFER);
    let mut payload = Vec::new();
    let mut last_lsn: Option<Lsn> = None;
    let mut count = 0;
    let damage = loop {
        let start = records.offset();
        let header = match records.next_record(&mut payload)? {
            Checked::Record(header) => header,
            Checked::End => break None,
            Checked::Damaged(reason) => break Some(reason),
        };
        let lsn = header.lsn;
        let in_order = lsn >= first_lsn
            && last_lsn.is_none_or(|last| lsn > last)
            && next_first.is_none_or(|next| lsn < next);
        if !in_order {
            let reason = format!(
                "LSN {lsn} out of order (segment from {first_lsn}, previous record {last_lsn:?}, next segment from {next_first:?})"
            );
            return Err(corrupt(path, start, reason));
        }
        last_lsn = Some(lsn);
        count += 1;
    };
    let bytes = records.offset();
    let mut truncated = 0;
    if let Some(reason) = damage {
        // A whole record of a newer format is not a torn tail: cutting it
        // would silently drop what a newer weft acknowledged.
        if let Some(version) = newer_record_at(path, bytes)? {
            return Err(corrupt(
                path,
                bytes,
                format!(
                    "a record of format version {version}, written by a newer weft; this weft \
                     reads version {}. Run the newer weft on this data directory. Nothing was cut.",
                    format::VERSION
                ),
            ));
        }
        if !is_active {
            return Err(corrupt(path, bytes, reason));
        }
        truncated = len.saturating_sub(bytes);
        records.file().set_len(bytes)?;
    }
    if is_active {
        records.file().sync_data()?;
    }
    Ok(Scan {
        bytes,
        last_lsn,
        records: count,
        truncated,
    })
}

/// The version of the record at `offset` of `path` if it is a whole record
/// with a valid CRC but a version newer than [`format::VERSION`].
fn newer_record_at(path: &Path, offset: u64) -> Result<Option<u8>, LogError> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut raw = [0u8; HEADER_LEN];
    if file.read_exact(&mut raw).is_err() {
        return Ok(None);
    }
    let header = Header::decode(raw);
    if header.version <= format::VERSION || header.len as usize > MAX_PAYLOAD {
        return Ok(None);
    }
    let mut payload = Vec::new();
    let got = file.take(u64::from(header.len)).read_to_end(&mut payload)?;
    Ok((got == header.len as usize && header.matches(&payload)).then_some(header.version))
}

/// Writes the records of `src` (its first `bytes` bytes) except `doomed` to
/// `tmp`, synced. Returns the new size and newest LSN.
fn copy_without(
    src: &Path,
    bytes: u64,
    tmp: &Path,
    doomed: &[Lsn],
) -> Result<(u64, Option<Lsn>), LogError> {
    let mut records = RecordReader::new(File::open(src)?, PASS_BUFFER);
    let mut out = BufWriter::with_capacity(PASS_BUFFER, create_tmp(tmp)?);
    let mut payload = Vec::new();
    let mut doomed = doomed.iter().copied().peekable();
    let mut written = 0;
    let mut last_lsn = None;
    while records.offset() < bytes {
        let header = read_valid(&mut records, src, &mut payload)?;
        if doomed.next_if_eq(&header.lsn).is_some() {
            continue;
        }
        out.write_all(&header.raw)?;
        out.write_all(&payload)?;
        written += header.record_len();
        last_lsn = Some(header.lsn);
    }
    if let Some(lsn) = doomed.next() {
        let reason = format!("record of LSN {lsn} to remove is no longer there");
        return Err(corrupt(src, bytes, reason));
    }
    let file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
    file.sync_data()?;
    Ok((written, last_lsn))
}

/// The next record of a file that must hold only valid records up to where
/// the writer knows it ends.
fn read_valid(
    records: &mut RecordReader,
    path: &Path,
    payload: &mut Vec<u8>,
) -> Result<Header, LogError> {
    let start = records.offset();
    match records.next_record(payload)? {
        Checked::Record(header) => Ok(header),
        Checked::End => Err(corrupt(
            path,
            start,
            "the file is shorter than the log wrote".into(),
        )),
        Checked::Damaged(reason) => Err(corrupt(path, start, reason)),
    }
}

fn corrupt(path: &Path, offset: u64, reason: String) -> LogError {
    LogError::Corrupt {
        segment: path.to_path_buf(),
        offset,
        reason,
    }
}
