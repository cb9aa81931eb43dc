//! Format versions of the data directory, so that an upgrade never
//! misreads data and a downgrade never damages it.
//!
//! Every file carries a version: the directory its `FORMAT` file, each log
//! record its version byte, the suppression file its magic (`WEFTSUP1`),
//! and the two SQLite databases their `user_version`. On start an older
//! version is migrated in place (and says so in the log); a newer one is
//! refused with a message that says what wrote it and what to do, before
//! anything is opened for writing.
//!
//! History of [`DATA_FORMAT`]:
//! - 0: directories made before versions were recorded (no `FORMAT` file;
//!   the log, `weft.sqlite` at `user_version` 3 or older,
//!   `destinations.db` at `user_version` 0). Migrated to 1 by stamping.
//! - 1: `FORMAT` file; `destinations.db` at `user_version` 1;
//!   `segments.json` (segment definitions, outside the derived index; made
//!   from the index at the first start without it).

use std::path::Path;

use super::StoreError;

/// The data directory format this build writes and reads.
pub const DATA_FORMAT: u32 = 1;
/// The file in the data directory that names its format.
pub const FORMAT_FILE: &str = "FORMAT";
/// What [`FORMAT_FILE`] holds before the number.
const PREFIX: &str = "weft data directory format ";

/// What [`check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// A new, empty directory: stamped with the current format.
    New,
    /// Already the current format.
    Current,
    /// An older format, migrated to the current one.
    Migrated {
        /// The format it had.
        from: u32,
    },
}

/// Checks `data_dir`'s format: stamps a new directory, migrates an older
/// one, refuses a newer one (or an unreadable `FORMAT`) with
/// [`StoreError::Format`]. Both databases' versions are checked (read-only)
/// before anything is written, so a refusal changes nothing.
pub fn check(data_dir: &Path) -> Result<Found, StoreError> {
    for (file, current) in [
        (super::sqlite::DB_FILE, super::sqlite::INDEX_VERSION),
        (
            crate::destinations::db::DB_FILE,
            crate::destinations::db::DB_VERSION,
        ),
    ] {
        let path = data_dir.join(file);
        if path.is_file() {
            let conn = rusqlite::Connection::open_with_flags(
                &path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )?;
            sqlite_version(&conn, file, current)?;
        }
    }
    let path = data_dir.join(FORMAT_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let n = text
                .trim()
                .strip_prefix(PREFIX)
                .and_then(|n| n.parse::<u32>().ok())
                .ok_or_else(|| {
                    StoreError::Format(format!(
                        "{} does not name a weft data format (it holds {:?})",
                        path.display(),
                        text.chars().take(60).collect::<String>()
                    ))
                })?;
            refuse_newer(data_dir, n)?;
            if n == DATA_FORMAT {
                return Ok(Found::Current);
            }
            migrate(data_dir, n)?;
            Ok(Found::Migrated { from: n })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let has_data = ["log", super::sqlite::DB_FILE, "suppressed.bin"]
                .iter()
                .any(|f| data_dir.join(f).exists());
            if has_data {
                migrate(data_dir, 0)?;
                Ok(Found::Migrated { from: 0 })
            } else {
                stamp(data_dir)?;
                Ok(Found::New)
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Reads the format of `data_dir` without changing anything (for backups):
/// 0 when it has no `FORMAT` file.
pub fn read(data_dir: &Path) -> Result<u32, StoreError> {
    match std::fs::read_to_string(data_dir.join(FORMAT_FILE)) {
        Ok(text) => text
            .trim()
            .strip_prefix(PREFIX)
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| StoreError::Format(format!("unreadable {FORMAT_FILE} file"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// [`StoreError::Format`] if `n` is newer than this build reads.
pub fn refuse_newer(data_dir: &Path, n: u32) -> Result<(), StoreError> {
    if n > DATA_FORMAT {
        return Err(StoreError::Format(format!(
            "the data directory {} has format {n}, written by a newer weft; this weft ({}) \
             reads formats up to {DATA_FORMAT}. Run the newer weft on it, or restore a backup \
             made by this version into an empty directory. Nothing was changed.",
            data_dir.display(),
            env!("CARGO_PKG_VERSION"),
        )));
    }
    Ok(())
}

/// Brings a directory of format `from` to [`DATA_FORMAT`]. The databases
/// migrate their own schemas when opened (see their `user_version`
/// checks); what is left is the stamp.
fn migrate(data_dir: &Path, from: u32) -> Result<(), StoreError> {
    tracing::info!(
        from,
        to = DATA_FORMAT,
        "data directory: migrating to the current format"
    );
    stamp(data_dir)
}

/// Writes `FORMAT` (mode 0600) atomically and durably.
fn stamp(data_dir: &Path) -> Result<(), StoreError> {
    let text = format!("{PREFIX}{DATA_FORMAT}\n");
    Ok(super::write_atomically(
        data_dir,
        FORMAT_FILE,
        text.as_bytes(),
    )?)
}

/// Checks a SQLite database's `user_version` against the one this build
/// writes, `current`: newer is refused, older is returned for the caller to
/// migrate (0 is a new or unversioned database).
pub fn sqlite_version(
    conn: &rusqlite::Connection,
    what: &str,
    current: i64,
) -> Result<i64, StoreError> {
    let v: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if v > current {
        return Err(StoreError::Format(format!(
            "{what} has schema version {v}, written by a newer weft; this weft ({}) reads \
             versions up to {current}. Run the newer weft on it. Nothing was changed.",
            env!("CARGO_PKG_VERSION"),
        )));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_current_older_and_newer_directories() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(check(dir.path()).unwrap(), Found::New);
        assert_eq!(read(dir.path()).unwrap(), DATA_FORMAT);
        assert_eq!(check(dir.path()).unwrap(), Found::Current);

        // Before versions: data but no FORMAT.
        let old = tempfile::tempdir().unwrap();
        std::fs::create_dir(old.path().join("log")).unwrap();
        assert_eq!(read(old.path()).unwrap(), 0);
        assert_eq!(check(old.path()).unwrap(), Found::Migrated { from: 0 });
        assert_eq!(read(old.path()).unwrap(), DATA_FORMAT);

        // Newer: refused, and left as it was.
        let newer = tempfile::tempdir().unwrap();
        let text = format!("{PREFIX}{}\n", DATA_FORMAT + 1);
        std::fs::write(newer.path().join(FORMAT_FILE), &text).unwrap();
        let err = check(newer.path()).unwrap_err().to_string();
        assert!(err.contains("written by a newer weft"), "{err}");
        assert!(err.contains("Nothing was changed"), "{err}");
        assert_eq!(
            std::fs::read_to_string(newer.path().join(FORMAT_FILE)).unwrap(),
            text
        );

        // Garbage is not guessed at.
        std::fs::write(newer.path().join(FORMAT_FILE), "hello").unwrap();
        assert!(matches!(check(newer.path()), Err(StoreError::Format(_))));
    }

    #[test]
    fn sqlite_versions() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        assert_eq!(sqlite_version(&conn, "x", 3).unwrap(), 0);
        conn.pragma_update(None, "user_version", 4).unwrap();
        let err = sqlite_version(&conn, "weft.sqlite", 3)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("schema version 4") && err.contains("newer weft"),
            "{err}"
        );
    }
}
