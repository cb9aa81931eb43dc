//! Segment files on disk: their names, how they are created and listed, and
//! [`RecordReader`], the one piece of code that walks records in a file
//! (recovery, erasure and [`super::LogReader`] all use it).

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::Lsn;
use super::format::{HEADER_LEN, Header};

/// Segment files end in this.
const SEGMENT_SUFFIX: &str = ".log";
/// A rewrite in progress (`NAME.log.tmp`); never read, removed on open.
pub(crate) const TMP_SUFFIX: &str = ".tmp";
/// Digits in a segment name: enough for every `u64`.
const NAME_DIGITS: usize = 20;
/// Mode of every file the log creates.
pub(crate) const FILE_MODE: u32 = 0o600;
/// Mode of the log directory when the log creates it.
pub(crate) const DIR_MODE: u32 = 0o700;

/// `{first_lsn:020}.log`.
pub(crate) fn segment_name(first_lsn: Lsn) -> String {
    format!("{first_lsn:0width$}{SEGMENT_SUFFIX}", width = NAME_DIGITS)
}

/// The first LSN a segment file name stands for, or `None` when the name is
/// not a segment's (other files in the directory are left alone).
pub(crate) fn parse_segment_name(name: &OsStr) -> Option<Lsn> {
    let digits = name.to_str()?.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&lsn| lsn > 0)
}

/// The segments in `dir` as `(first_lsn, path)`, oldest first.
pub fn list_segments(dir: &Path) -> io::Result<Vec<(Lsn, PathBuf)>> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(first_lsn) = parse_segment_name(&entry.file_name()) {
            segments.push((first_lsn, entry.path()));
        }
    }
    segments.sort_unstable_by_key(|&(first_lsn, _)| first_lsn);
    Ok(segments)
}

/// `path` with `.tmp` added to its file name.
pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(TMP_SUFFIX);
    path.with_file_name(name)
}

/// Creates a new, empty segment file for appending (mode 0600). Fails if it
/// exists: a segment name is never reused.
pub(crate) fn create_segment(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
}

/// Opens an existing segment for appending.
pub(crate) fn open_for_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().append(true).open(path)
}

/// Creates (or empties) a rewrite's temporary file, mode 0600.
pub(crate) fn create_tmp(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)
}

/// Makes the directory's entries (created, renamed, removed files) durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// What [`RecordReader::next_header`] found.
#[derive(Debug)]
pub(crate) enum Next {
    /// A complete header that passed [`Header::problem`]; the payload
    /// follows.
    Header(Header),
    /// The file ends exactly here, at a record boundary.
    End,
    /// The file ends inside the header (the reader is rewound to its start).
    Partial,
    /// The header cannot start a record (the reader is rewound to its start).
    Invalid(String),
}

/// What [`RecordReader::next_record`] found.
#[derive(Debug)]
pub(crate) enum Checked {
    /// A record that passed every check; its payload is in the caller's
    /// buffer.
    Record(Header),
    /// The file ends exactly here, at a record boundary.
    End,
    /// The bytes at [`RecordReader::offset`] are not a whole, valid record.
    Damaged(String),
}

/// Walks the records of one segment file through a large buffer, so that
/// reading costs one syscall per buffer, not per record.
///
/// [`RecordReader::offset`] is the start of the first record not yet fully
/// read: after a header is returned it stays there until the payload has
/// been read too.
#[derive(Debug)]
pub(crate) struct RecordReader {
    file: BufReader<File>,
    offset: u64,
}

impl RecordReader {
    /// Reads `file` from its start through a buffer of `buffer` bytes.
    pub fn new(file: File, buffer: usize) -> RecordReader {
        RecordReader {
            file: BufReader::with_capacity(buffer, file),
            offset: 0,
        }
    }

    /// Start of the next record not yet fully read.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Reads the next header. At the end of the data written so far this
    /// answers [`Next::End`] or [`Next::Partial`], consuming nothing, so a
    /// later call sees what has been appended since.
    pub fn next_header(&mut self) -> io::Result<Next> {
        let mut raw = [0u8; HEADER_LEN];
        let got = read_up_to(&mut self.file, &mut raw)?;
        if got == 0 {
            return Ok(Next::End);
        }
        if got < HEADER_LEN {
            self.rewind()?;
            return Ok(Next::Partial);
        }
        let header = Header::decode(raw);
        if let Some(problem) = header.problem() {
            self.rewind()?;
            return Ok(Next::Invalid(problem));
        }
        Ok(Next::Header(header))
    }

    /// Reads the payload of `header`, just returned by
    /// [`RecordReader::next_header`], into `payload` (cleared first). Returns
    /// `false`, rewound to the record's start, if the file ends first. Does
    /// not check the CRC.
    pub fn read_payload(&mut self, header: &Header, payload: &mut Vec<u8>) -> io::Result<bool> {
        payload.clear();
        let len = header.len as usize;
        payload.reserve_exact(len);
        let got = (&mut self.file)
            .take(u64::from(header.len))
            .read_to_end(payload)?;
        if got < len {
            self.rewind()?;
            return Ok(false);
        }
        self.offset += header.record_len();
        Ok(true)
    }

    /// [`RecordReader::read_payload`], appending to `buf` instead of
    /// replacing its content; on `false`, `buf` is as it was.
    pub fn append_payload(&mut self, header: &Header, buf: &mut Vec<u8>) -> io::Result<bool> {
        let at = buf.len();
        let len = header.len as usize;
        buf.reserve(len);
        let got = (&mut self.file)
            .take(u64::from(header.len))
            .read_to_end(buf)?;
        if got < len {
            buf.truncate(at);
            self.rewind()?;
            return Ok(false);
        }
        self.offset += header.record_len();
        Ok(true)
    }

    /// Reads the next record whole and checks it (header, length, CRC), for
    /// callers that need every record valid: recovery and erasure. On
    /// [`Checked::Damaged`] the offset stays at the damaged record's start.
    pub fn next_record(&mut self, payload: &mut Vec<u8>) -> io::Result<Checked> {
        let header = match self.next_header()? {
            Next::Header(header) => header,
            Next::End => return Ok(Checked::End),
            Next::Partial => return Ok(Checked::Damaged("incomplete record header".into())),
            Next::Invalid(reason) => return Ok(Checked::Damaged(reason)),
        };
        if !self.read_payload(&header, payload)? {
            return Ok(Checked::Damaged(format!(
                "incomplete payload (header says {} bytes)",
                header.len
            )));
        }
        if !header.matches(payload) {
            // Step back so that the offset names the damaged record.
            self.offset -= header.record_len();
            self.rewind()?;
            return Ok(Checked::Damaged(format!(
                "CRC mismatch (the record claims LSN {})",
                header.lsn
            )));
        }
        Ok(Checked::Record(header))
    }

    /// The file being read (to truncate or sync it).
    pub fn file(&self) -> &File {
        self.file.get_ref()
    }

    /// Whether `path` still names the file being read (a rewrite renames a
    /// new file over it; retention deletes it).
    pub fn is_file_at(&self, path: &Path) -> io::Result<bool> {
        let ours = self.file.get_ref().metadata()?;
        match fs::metadata(path) {
            Ok(theirs) => Ok(ours.dev() == theirs.dev() && ours.ino() == theirs.ino()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Goes back to the start of the record at [`RecordReader::offset`].
    fn rewind(&mut self) -> io::Result<()> {
        self.file.seek(SeekFrom::Start(self.offset)).map(drop)
    }
}

/// What [`copy_records`] copied.
#[derive(Debug, Default)]
pub struct Copied {
    /// Bytes written: whole records only.
    pub bytes: u64,
    /// Records written.
    pub records: u64,
    /// The newest LSN written.
    pub last_lsn: Option<Lsn>,
    /// Why the copy stopped before the end of the file, if it did: a
    /// record being appended right now (in the active segment), or damage.
    pub stopped: Option<String>,
}

/// Copies the whole, valid records at the start of `file` (each checked:
/// header, length, CRC) to `out` byte for byte, stopping at the first that
/// is not one. Backups use it: the active segment may be growing while it
/// is read, and a backup must hold only records that a recovery would keep.
pub fn copy_records(file: File, out: &mut impl io::Write) -> io::Result<Copied> {
    let mut records = RecordReader::new(file, 1 << 20);
    let mut payload = Vec::new();
    let mut copied = Copied::default();
    loop {
        match records.next_record(&mut payload)? {
            Checked::Record(header) => {
                out.write_all(&header.raw)?;
                out.write_all(&payload)?;
                copied.bytes += header.record_len();
                copied.records += 1;
                copied.last_lsn = Some(header.lsn);
            }
            Checked::End => return Ok(copied),
            Checked::Damaged(reason) => {
                copied.stopped = Some(reason);
                return Ok(copied);
            }
        }
    }
}

/// Fills `buf` as far as the data goes; returns how many bytes it got.
fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip_and_nothing_else_parses() {
        assert_eq!(segment_name(1), "00000000000000000001.log");
        assert_eq!(segment_name(u64::MAX), "18446744073709551615.log");
        for lsn in [1, 42, u64::MAX] {
            assert_eq!(
                parse_segment_name(OsStr::new(&segment_name(lsn))),
                Some(lsn)
            );
        }
        for other in [
            "00000000000000000000.log",
            "1.log",
            "00000000000000000001.log.tmp",
            "0000000000000000000a.log",
            "00000000000000000001.LOG",
            "+0000000000000000001.log",
            "99999999999999999999.log",
            "lock",
        ] {
            assert_eq!(parse_segment_name(OsStr::new(other)), None, "{other}");
        }
    }

    #[test]
    fn tmp_path_adds_to_the_file_name() {
        assert_eq!(
            tmp_path(Path::new("/d/00000000000000000001.log")),
            Path::new("/d/00000000000000000001.log.tmp")
        );
    }
}
