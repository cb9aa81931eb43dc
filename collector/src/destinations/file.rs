//! The `file` kind: stored messages as NDJSON files in a directory, one
//! per period (an hour by default), what a warehouse loader picks up.
//!
//! The period's file grows as `.{name}-{start}.ndjson.partial`, synced
//! after every batch; when the period is over (a message of a later period
//! arrives, or the clock passes its end and the outbox has had `max_age`
//! to flush) it is synced and renamed to `{name}-{start}.ndjson`, and the
//! directory synced: a loader sees whole files only. A message stored
//! after its period's file was finished goes to the next file. The open
//! file and its delivered length are saved with the destination's
//! position, so after a crash the partial file is cut back to what was
//! delivered and the batch in flight is written once more: no line lost,
//! none twice.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::DestinationError;
use super::delivery::{Batch, Class, Failure, Sink, SinkFuture};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    /// The open file's period start (Unix ms), if one is open.
    open: Option<i64>,
    /// Bytes of it delivered.
    len: u64,
    /// Every period before this is finished.
    finished_until: i64,
}

/// Writes a destination's files.
pub struct Files {
    dir: PathBuf,
    name: String,
    period_ms: i64,
    grace_ms: i64,
    state: State,
    file: Option<File>,
}

/// `20261202T100000Z`: a period start in file names (sorts by time).
fn stamp(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn io_failure(e: &std::io::Error) -> Failure {
    Failure {
        class: Class::Retry,
        status: None,
        error: format!("cannot write the file: {e}"),
        retry_after: None,
        sample: String::new(),
    }
}

impl Files {
    /// The files of destination `name` in `dir` (created), resuming from
    /// `saved` state.
    pub fn open(
        dir: &Path,
        name: &str,
        period: Duration,
        max_age: Duration,
        saved: Option<&str>,
    ) -> Result<Files, DestinationError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| DestinationError::Io(format!("{}: {e}", dir.display())))?;
        let state: State = saved
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default();
        let mut files = Files {
            dir: dir.to_path_buf(),
            name: name.to_owned(),
            period_ms: (period.as_millis() as i64).max(1000),
            grace_ms: max_age.as_millis() as i64 + 1000,
            state,
            file: None,
        };
        if let Some(start) = state.open {
            let partial = files.partial(start);
            let finished = files.finished(start);
            // A crash after the rename and before the state was saved: the
            // file is reopened and cut back like a partial one.
            if !partial.exists() && finished.exists() {
                std::fs::rename(&finished, &partial)
                    .map_err(|e| DestinationError::Io(e.to_string()))?;
            }
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&partial)
                .map_err(|e| DestinationError::Io(e.to_string()))?;
            file.set_len(state.len)
                .map_err(|e| DestinationError::Io(e.to_string()))?;
            files.file = Some(file);
        }
        Ok(files)
    }

    fn partial(&self, start: i64) -> PathBuf {
        self.dir
            .join(format!(".{}-{}.ndjson.partial", self.name, stamp(start)))
    }

    fn finished(&self, start: i64) -> PathBuf {
        self.dir
            .join(format!("{}-{}.ndjson", self.name, stamp(start)))
    }

    fn period_of(&self, ms: i64) -> i64 {
        ms.div_euclid(self.period_ms) * self.period_ms
    }

    /// Syncs the open file and renames it into place.
    fn finish(&mut self) -> std::io::Result<()> {
        let Some(start) = self.state.open else {
            return Ok(());
        };
        if let Some(f) = self.file.take() {
            f.sync_data()?;
        }
        std::fs::rename(self.partial(start), self.finished(start))?;
        File::open(&self.dir)?.sync_all()?;
        self.state = State {
            open: None,
            len: 0,
            finished_until: start + self.period_ms,
        };
        Ok(())
    }

    fn open_period(&mut self, start: i64) -> std::io::Result<()> {
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(self.partial(start))?;
        self.file = Some(file);
        self.state.open = Some(start);
        self.state.len = 0;
        Ok(())
    }

    fn write(&mut self, batch: &Batch) -> std::io::Result<()> {
        // A failed attempt may have written part of the batch.
        if let Some(f) = &self.file {
            f.set_len(self.state.len)?;
        }
        let mut buf: Vec<u8> = Vec::new();
        for item in &batch.items {
            let period = self
                .period_of(item.received_ms)
                .max(self.state.finished_until);
            match self.state.open {
                Some(open) if period > open => {
                    self.flush(&mut buf)?;
                    self.finish()?;
                    self.open_period(period)?;
                }
                Some(_) => {}
                None => self.open_period(period)?,
            }
            buf.extend_from_slice(item.body.as_bytes());
            buf.push(b'\n');
        }
        self.flush(&mut buf)
    }

    fn flush(&mut self, buf: &mut Vec<u8>) -> std::io::Result<()> {
        if let Some(f) = &mut self.file {
            f.write_all(buf)?;
            f.sync_data()?;
            self.state.len += buf.len() as u64;
        }
        buf.clear();
        Ok(())
    }
}

impl Sink for Files {
    fn send<'a>(&'a mut self, batch: &'a Batch) -> SinkFuture<'a> {
        Box::pin(async move { self.write(batch).map_err(|e| io_failure(&e)) })
    }

    fn state(&self) -> Option<String> {
        serde_json::to_string(&self.state).ok()
    }

    fn idle(&mut self, now_ms: i64) -> Option<String> {
        let open = self.state.open?;
        if now_ms < open + self.period_ms + self.grace_ms {
            return None;
        }
        match self.finish() {
            Ok(()) => self.state(),
            Err(e) => {
                tracing::warn!(destination = %self.name, error = %e, "cannot finish the file");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::destinations::outbox::Item;
    use std::sync::Arc;

    fn batch(times: &[i64]) -> Batch {
        Batch {
            id: "b".into(),
            audience: false,
            items: times
                .iter()
                .map(|t| {
                    Arc::new(Item {
                        lsn: 1,
                        received_ms: *t,
                        ids: vec![],
                        kind: weft_protocol::MessageType::Track,
                        body: format!("{{\"t\":{t}}}"),
                    })
                })
                .collect(),
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    const H: i64 = 3_600_000;
    const T0: i64 = 1_796_205_600_000; // 2026-12-02T10:00:00Z

    #[test]
    fn one_file_per_hour_renamed_when_the_hour_is_over() {
        let dir = tempfile::tempdir().unwrap();
        let hour = Duration::from_secs(3600);
        let mut f = Files::open(dir.path(), "wh", hour, Duration::from_secs(1), None).unwrap();
        f.write(&batch(&[T0 + 1, T0 + 2])).unwrap();
        assert_eq!(names(dir.path()), [".wh-20261202T100000Z.ndjson.partial"]);
        f.write(&batch(&[T0 + 3, T0 + H + 1])).unwrap();
        assert_eq!(
            names(dir.path()),
            [
                ".wh-20261202T110000Z.ndjson.partial",
                "wh-20261202T100000Z.ndjson"
            ]
        );
        let first = std::fs::read_to_string(dir.path().join("wh-20261202T100000Z.ndjson")).unwrap();
        assert_eq!(
            first,
            "{\"t\":1796205600001}\n{\"t\":1796205600002}\n{\"t\":1796205600003}\n"
        );
        // A late message goes to the open file, not a finished one.
        f.write(&batch(&[T0 + 5])).unwrap();
        assert_eq!(f.idle(T0 + 2 * H), None, "the grace period is not over");
        assert!(f.idle(T0 + 2 * H + 2000).is_some());
        assert_eq!(
            names(dir.path()),
            ["wh-20261202T100000Z.ndjson", "wh-20261202T110000Z.ndjson"]
        );
        let second =
            std::fs::read_to_string(dir.path().join("wh-20261202T110000Z.ndjson")).unwrap();
        assert_eq!(second.lines().count(), 2);
    }

    #[test]
    fn a_restart_cuts_the_partial_file_back_to_what_was_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let hour = Duration::from_secs(3600);
        let mut f = Files::open(dir.path(), "wh", hour, Duration::ZERO, None).unwrap();
        f.write(&batch(&[T0 + 1])).unwrap();
        let saved = f.state().unwrap();
        // Written but never saved as delivered: a crash came first.
        f.write(&batch(&[T0 + 2])).unwrap();
        drop(f);
        let mut f = Files::open(dir.path(), "wh", hour, Duration::ZERO, Some(&saved)).unwrap();
        f.write(&batch(&[T0 + 2])).unwrap();
        assert!(f.idle(T0 + H + 1000).is_some());
        let text = std::fs::read_to_string(dir.path().join("wh-20261202T100000Z.ndjson")).unwrap();
        assert_eq!(text, "{\"t\":1796205600001}\n{\"t\":1796205600002}\n");
    }
}
