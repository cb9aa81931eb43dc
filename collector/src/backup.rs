//! `weft-collector backup` and `restore`: a consistent copy of a data
//! directory, taken while a collector runs on it and ingests, and a new
//! data directory made from one.
//!
//! Why it can be done from outside the running process: the log is
//! append-only and its sealed segments never change (an erasure writes a
//! new file and renames it over the old one), and the two SQLite databases
//! can be read in a snapshot while they are written. What each piece is:
//!
//! 1. `weft.sqlite` (the index, derived) and `destinations.db` (positions,
//!    dead letters) are copied first, each with `VACUUM INTO` from a
//!    read-only connection: a transactionally consistent snapshot. Their
//!    log positions are then at most what is durable in the log.
//! 2. The log's segments are copied after them, record by record, each
//!    record checked (length, CRC). The active segment is copied up to its
//!    last whole record: one being appended right now is left out, exactly
//!    what a crash at that moment would leave. So the copy holds every
//!    record the snapshots point at, and more; the collector started on it
//!    replays the rest into the index and destinations, as after a crash.
//! 3. `suppressed.bin` (erased identities), `admin-token`, `segments.json`
//!    (segment definitions; the index is reconciled with it at start) and
//!    `FORMAT` last.
//!
//! An erasure or a retention sweep that changes the log while it is copied
//! (a segment replaced or removed, the suppression file grown) makes the
//! copy start again, up to [`ATTEMPTS`] times, so a backup never mixes a
//! person's erased and unerased states. Every file is synced, and
//! `weft-backup.json` (a manifest with each file's size and CRC32C) is
//! written last: a backup without it is incomplete and refused by
//! `restore`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::store::version;

/// The manifest's file name.
pub const MANIFEST: &str = "weft-backup.json";
/// The manifest format this build writes and reads.
const MANIFEST_FORMAT: u32 = 1;
/// Copies started again when the log changed under one, at most.
pub const ATTEMPTS: usize = 5;

const LOG_DIR: &str = crate::store::embedded::LOG_DIR;
const INDEX_DB: &str = crate::store::sqlite::DB_FILE;
const DESTINATIONS_DB: &str = crate::destinations::db::DB_FILE;
const SUPPRESSION: &str = crate::store::suppression::SUPPRESSION_FILE;
const TOKEN: &str = crate::cli::ADMIN_TOKEN_FILE;
const DEFINITIONS: &str = crate::store::definitions::FILE;

/// Why a backup or restore failed. Nothing is ever changed in the source.
#[derive(Debug)]
pub enum BackupError {
    /// A file could not be read or written.
    Io {
        /// Which.
        path: PathBuf,
        /// The error.
        error: io::Error,
    },
    /// The directory is not a weft data directory or backup, or has a
    /// format this build does not read.
    Format(String),
    /// The target directory exists and is not empty.
    NotEmpty(PathBuf),
    /// A file does not match the manifest, or a sealed segment is damaged.
    Damaged(String),
    /// The log kept changing under the copy.
    Busy,
    /// SQLite refused a snapshot.
    Sqlite(String),
}

impl std::fmt::Display for BackupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackupError::Io { path, error } => write!(f, "{}: {error}", path.display()),
            BackupError::Format(e) => f.write_str(e),
            BackupError::NotEmpty(p) => write!(
                f,
                "{} exists and is not empty: give a new or empty directory",
                p.display()
            ),
            BackupError::Damaged(e) => write!(f, "damaged: {e}"),
            BackupError::Busy => write!(
                f,
                "the log changed under the copy {ATTEMPTS} times (erasures or retention running); try again"
            ),
            BackupError::Sqlite(e) => write!(f, "sqlite snapshot: {e}"),
        }
    }
}

impl std::error::Error for BackupError {}

fn io_at(path: &Path) -> impl Fn(io::Error) -> BackupError + '_ {
    move |error| BackupError::Io {
        path: path.to_owned(),
        error,
    }
}

/// One file of a backup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileEntry {
    /// Path under the backup directory (`log/00000000000000000001.log`).
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
    /// CRC32C of the content.
    pub crc32c: u32,
}

/// `weft-backup.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// The manifest's own format.
    pub manifest_format: u32,
    /// The data directory format of the copy.
    pub data_format: u32,
    /// The weft version that made it.
    pub weft_version: String,
    /// When it was made (Unix milliseconds).
    pub created_unix_ms: u64,
    /// Log records in the copy.
    pub log_records: u64,
    /// The newest LSN in the copy.
    pub last_lsn: Option<u64>,
    /// The log position the copied index had applied up to (the next LSN
    /// it would apply): never past the copied log.
    pub index_position: Option<u64>,
    /// Every file.
    pub files: Vec<FileEntry>,
}

/// What a backup or restore did.
#[derive(Debug)]
pub struct Report {
    /// `backup` or `restore`.
    pub action: &'static str,
    /// The directory written.
    pub dir: PathBuf,
    /// Files written.
    pub files: usize,
    /// Bytes written.
    pub bytes: u64,
    /// Log records.
    pub log_records: u64,
    /// The newest LSN.
    pub last_lsn: Option<u64>,
    /// Copies started again because the log changed.
    pub restarts: usize,
    /// Time taken.
    pub elapsed: Duration,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(1e-6);
        write!(
            f,
            "{} to {}: {} files, {:.1} MB, {} log records (last LSN {}) in {:.2} s ({:.0} MB/s){}",
            self.action,
            self.dir.display(),
            self.files,
            self.bytes as f64 / 1e6,
            self.log_records,
            self.last_lsn.map_or("none".into(), |l| l.to_string()),
            secs,
            self.bytes as f64 / 1e6 / secs,
            if self.restarts > 0 {
                format!(", started again {} times", self.restarts)
            } else {
                String::new()
            }
        )
    }
}

/// Copies `data_dir` into `to` (new or empty), consistently, also while a
/// collector runs on it.
pub fn backup(data_dir: &Path, to: &Path) -> Result<Report, BackupError> {
    let started = Instant::now();
    if !data_dir.join(LOG_DIR).is_dir() {
        return Err(BackupError::Format(format!(
            "{} is not a weft data directory (it has no {LOG_DIR}/)",
            data_dir.display()
        )));
    }
    let format = version::read(data_dir).map_err(|e| BackupError::Format(e.to_string()))?;
    version::refuse_newer(data_dir, format).map_err(|e| BackupError::Format(e.to_string()))?;
    prepare_empty_dir(to)?;
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            // Let the erasure or sweep that moved the log finish.
            std::thread::sleep(Duration::from_millis(200 * attempt as u64));
            clear_dir(to)?;
        }
        if let Some(manifest) = copy_once(data_dir, to, format)? {
            let bytes = manifest.files.iter().map(|f| f.bytes).sum();
            write_manifest(to, &manifest)?;
            return Ok(Report {
                action: "backup",
                dir: to.to_owned(),
                files: manifest.files.len(),
                bytes,
                log_records: manifest.log_records,
                last_lsn: manifest.last_lsn,
                restarts: attempt,
                elapsed: started.elapsed(),
            });
        }
    }
    Err(BackupError::Busy)
}

/// A segment as listed before the copy: name and inode.
type Listed = Vec<(String, u64)>;

fn list_log(dir: &Path) -> Result<Listed, BackupError> {
    let segments = crate::log::list_segments(dir).map_err(io_at(dir))?;
    let mut out = Vec::new();
    for (_, path) in segments {
        match fs::metadata(&path) {
            Ok(m) => out.push((file_name(&path), m.ino())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_at(&path)(e)),
        }
    }
    Ok(out)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// One attempt for a directory of `format`: `None` when the log changed
/// under it.
fn copy_once(data_dir: &Path, to: &Path, format: u32) -> Result<Option<Manifest>, BackupError> {
    let log_dir = data_dir.join(LOG_DIR);
    let suppression_before = read_optional(&data_dir.join(SUPPRESSION))?;
    let listed = list_log(&log_dir)?;
    let mut files = Vec::new();

    for db in [INDEX_DB, DESTINATIONS_DB] {
        let src = data_dir.join(db);
        if src.is_file() {
            snapshot_sqlite(&src, &to.join(db))?;
            files.push(entry(to, db)?);
        }
    }
    let index_position = index_position(&to.join(INDEX_DB))?;

    let out_log = to.join(LOG_DIR);
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&out_log)
        .map_err(io_at(&out_log))?;
    let (mut records, mut last_lsn) = (0, None);
    for (index, (name, ino)) in listed.iter().enumerate() {
        let src = log_dir.join(name);
        let file = match File::open(&src) {
            Ok(f) => f,
            // Retention removed it: start again without it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_at(&src)(e)),
        };
        if file.metadata().map_err(io_at(&src))?.ino() != *ino {
            return Ok(None);
        }
        let dst = out_log.join(name);
        let mut out = BufWriter::with_capacity(1 << 20, private_file(&dst)?);
        let copied = crate::log::copy_records(file, &mut out).map_err(io_at(&src))?;
        let file = out.into_inner().map_err(|e| io_at(&dst)(e.into_error()))?;
        file.sync_all().map_err(io_at(&dst))?;
        let is_active = index + 1 == listed.len();
        if let Some(reason) = copied.stopped
            && !is_active
        {
            return Err(BackupError::Damaged(format!(
                "{} at byte {}: {reason}",
                src.display(),
                copied.bytes
            )));
        }
        records += copied.records;
        last_lsn = copied.last_lsn.or(last_lsn);
        files.push(entry(to, &format!("{LOG_DIR}/{name}"))?);
    }
    sync_dir(&out_log)?;

    // Erasure rewrites and retention removals during the copy.
    let listed_after = list_log(&log_dir)?;
    let rewritten = listed
        .iter()
        .any(|(name, ino)| listed_after.iter().any(|(n, i)| n == name && i != ino));
    let suppression_after = read_optional(&data_dir.join(SUPPRESSION))?;
    if rewritten || suppression_after != suppression_before {
        return Ok(None);
    }

    for name in [SUPPRESSION, TOKEN, DEFINITIONS] {
        if let Some(data) = read_optional(&data_dir.join(name))? {
            write_file(&to.join(name), &data)?;
            files.push(entry(to, name)?);
        }
    }
    if format > 0 {
        let data = fs::read(data_dir.join(version::FORMAT_FILE))
            .map_err(io_at(&data_dir.join(version::FORMAT_FILE)))?;
        write_file(&to.join(version::FORMAT_FILE), &data)?;
        files.push(entry(to, version::FORMAT_FILE)?);
    }
    sync_dir(to)?;
    Ok(Some(Manifest {
        manifest_format: MANIFEST_FORMAT,
        data_format: format,
        weft_version: env!("CARGO_PKG_VERSION").to_owned(),
        created_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        log_records: records,
        last_lsn,
        index_position,
        files,
    }))
}

/// The position a copied index has applied the log up to.
fn index_position(db: &Path) -> Result<Option<u64>, BackupError> {
    if !db.is_file() {
        return Ok(None);
    }
    let sqlite = |e: rusqlite::Error| BackupError::Sqlite(format!("{}: {e}", db.display()));
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(sqlite)?;
    let v: Option<i64> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'log_position'",
            [],
            |r| r.get(0),
        )
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })
        .map_err(sqlite)?;
    Ok(v.map(|v| v.max(0) as u64))
}

/// `VACUUM INTO`: a consistent, compact copy of a live database.
fn snapshot_sqlite(src: &Path, dst: &Path) -> Result<(), BackupError> {
    let sqlite = |e: rusqlite::Error| BackupError::Sqlite(format!("{}: {e}", src.display()));
    let conn = rusqlite::Connection::open_with_flags(
        src,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sqlite)?;
    conn.busy_timeout(Duration::from_secs(30)).map_err(sqlite)?;
    // The copy is created by SQLite; make it private first.
    private_file(dst)?;
    fs::remove_file(dst).map_err(io_at(dst))?;
    let target = dst
        .to_str()
        .ok_or_else(|| BackupError::Format(format!("{} is not UTF-8", dst.display())))?;
    conn.execute("VACUUM INTO ?1", [target]).map_err(sqlite)?;
    restrict(dst)?;
    File::open(dst)
        .and_then(|f| f.sync_all())
        .map_err(io_at(dst))?;
    Ok(())
}

/// Checks `from` against its manifest and copies it into `data_dir` (new
/// or empty), every file synced, modes 0700/0600.
pub fn restore(from: &Path, data_dir: &Path) -> Result<Report, BackupError> {
    let started = Instant::now();
    let manifest = verify(from)?;
    prepare_empty_dir(data_dir)?;
    let out_log = data_dir.join(LOG_DIR);
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&out_log)
        .map_err(io_at(&out_log))?;
    let mut bytes = 0;
    for f in &manifest.files {
        let data = fs::read(from.join(&f.name)).map_err(io_at(&from.join(&f.name)))?;
        write_file(&data_dir.join(&f.name), &data)?;
        bytes += data.len() as u64;
    }
    sync_dir(&out_log)?;
    sync_dir(data_dir)?;
    Ok(Report {
        action: "restore",
        dir: data_dir.to_owned(),
        files: manifest.files.len(),
        bytes,
        log_records: manifest.log_records,
        last_lsn: manifest.last_lsn,
        restarts: 0,
        elapsed: started.elapsed(),
    })
}

/// Reads a backup's manifest and checks every file against it, and every
/// log record.
pub fn verify(dir: &Path) -> Result<Manifest, BackupError> {
    let path = dir.join(MANIFEST);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(BackupError::Format(format!(
                "{} has no {MANIFEST}: not a backup, or one that did not finish",
                dir.display()
            )));
        }
        Err(e) => return Err(io_at(&path)(e)),
    };
    let manifest: Manifest = serde_json::from_str(&text)
        .map_err(|e| BackupError::Format(format!("{}: {e}", path.display())))?;
    if manifest.manifest_format > MANIFEST_FORMAT {
        return Err(BackupError::Format(format!(
            "{} was made by a newer weft ({}); this one ({}) cannot restore it",
            dir.display(),
            manifest.weft_version,
            env!("CARGO_PKG_VERSION")
        )));
    }
    version::refuse_newer(dir, manifest.data_format)
        .map_err(|e| BackupError::Format(e.to_string()))?;
    for f in &manifest.files {
        if f.name
            .split('/')
            .any(|part| part.is_empty() || part == "..")
        {
            return Err(BackupError::Damaged(format!("bad file name {:?}", f.name)));
        }
        let got = entry(dir, &f.name)?;
        if got != *f {
            return Err(BackupError::Damaged(format!(
                "{} is {} bytes with CRC32C {:08x}; the manifest says {} bytes, {:08x}",
                f.name, got.bytes, got.crc32c, f.bytes, f.crc32c
            )));
        }
        if f.name.starts_with(&format!("{LOG_DIR}/")) {
            let p = dir.join(&f.name);
            let copied =
                crate::log::copy_records(File::open(&p).map_err(io_at(&p))?, &mut io::sink())
                    .map_err(io_at(&p))?;
            if let Some(reason) = copied.stopped {
                return Err(BackupError::Damaged(format!("{}: {reason}", f.name)));
            }
        }
    }
    Ok(manifest)
}

fn entry(dir: &Path, name: &str) -> Result<FileEntry, BackupError> {
    let path = dir.join(name);
    let mut file = File::open(&path).map_err(io_at(&path))?;
    let mut buf = vec![0u8; 1 << 20];
    let (mut crc, mut bytes) = (0u32, 0u64);
    loop {
        let n = file.read(&mut buf).map_err(io_at(&path))?;
        if n == 0 {
            break;
        }
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        bytes += n as u64;
    }
    Ok(FileEntry {
        name: name.to_owned(),
        bytes,
        crc32c: crc,
    })
}

fn write_manifest(to: &Path, manifest: &Manifest) -> Result<(), BackupError> {
    let text =
        serde_json::to_string_pretty(manifest).map_err(|e| BackupError::Format(e.to_string()))?;
    crate::store::write_atomically(to, MANIFEST, text.as_bytes()).map_err(io_at(&to.join(MANIFEST)))
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, BackupError> {
    match fs::read(path) {
        Ok(d) => Ok(Some(d)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_at(path)(e)),
    }
}

/// Creates `dir` (0700) or checks that it is empty.
fn prepare_empty_dir(dir: &Path) -> Result<(), BackupError> {
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(BackupError::NotEmpty(dir.to_owned()));
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_at(dir)),
        Err(e) => Err(io_at(dir)(e)),
    }
}

/// Empties a directory this module filled (a failed attempt).
fn clear_dir(dir: &Path) -> Result<(), BackupError> {
    for entry in fs::read_dir(dir).map_err(io_at(dir))? {
        let path = entry.map_err(io_at(dir))?.path();
        if path.is_dir() {
            fs::remove_dir_all(&path).map_err(io_at(&path))?;
        } else {
            fs::remove_file(&path).map_err(io_at(&path))?;
        }
    }
    Ok(())
}

fn private_file(path: &Path) -> Result<File, BackupError> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_at(path))
}

fn restrict(path: &Path) -> Result<(), BackupError> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io_at(path))
}

fn write_file(path: &Path, data: &[u8]) -> Result<(), BackupError> {
    let mut f = private_file(path)?;
    f.write_all(data).map_err(io_at(path))?;
    f.sync_all().map_err(io_at(path))
}

fn sync_dir(dir: &Path) -> Result<(), BackupError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_at(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_needs_a_data_directory_and_an_empty_target() {
        let tmp = tempfile::tempdir().unwrap();
        let err = backup(tmp.path(), &tmp.path().join("b")).unwrap_err();
        assert!(
            err.to_string().contains("not a weft data directory"),
            "{err}"
        );
        fs::create_dir(tmp.path().join("log")).unwrap();
        fs::write(tmp.path().join("x"), "x").unwrap();
        let err = backup(tmp.path(), tmp.path()).unwrap_err();
        assert!(matches!(err, BackupError::NotEmpty(_)), "{err}");
    }

    #[test]
    fn restore_refuses_an_unfinished_or_altered_backup() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        fs::create_dir_all(data.join("log")).unwrap();
        fs::write(data.join(SUPPRESSION), b"WEFTSUP1 and a salt of 32 bytes.").unwrap();
        let b = tmp.path().join("b");
        backup(&data, &b).unwrap();
        // Unfinished: no manifest.
        let unfinished = tmp.path().join("u");
        fs::create_dir(&unfinished).unwrap();
        let err = restore(&unfinished, &tmp.path().join("r1")).unwrap_err();
        assert!(err.to_string().contains("no weft-backup.json"), "{err}");
        // Altered: a byte changed.
        let mut bytes = fs::read(b.join(SUPPRESSION)).unwrap();
        bytes[10] ^= 1;
        fs::write(b.join(SUPPRESSION), bytes).unwrap();
        let err = restore(&b, &tmp.path().join("r2")).unwrap_err();
        assert!(matches!(err, BackupError::Damaged(_)), "{err}");
        assert!(!tmp.path().join("r2").join(SUPPRESSION).exists());
    }
}
