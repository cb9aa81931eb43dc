//! Segment definitions in `segments.json`, beside the log: not derived
//! state.
//!
//! Why a file of their own: the index (`weft.sqlite`) can be deleted and
//! rebuilt from the log, but an operator's rules are not in the log. So
//! every `PUT`/`DELETE` of a segment writes this file first (whole, to a
//! temporary name, synced, renamed, directory synced), then the index.
//! At start the index is reconciled with the file: a definition the index
//! lacks (a rebuilt index, or a crash between the two writes) is added and
//! computed for everyone; one only the index has is dropped. A data
//! directory from before the file existed gets it from its index.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::StoreError;

/// The file's name in the data directory.
pub const FILE: &str = "segments.json";
/// Its format.
const FORMAT: u32 = 1;

/// One definition as kept: what the API was given, and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stored {
    /// The segment's key.
    pub key: String,
    /// Its name.
    pub name: String,
    /// The rule as given.
    pub rule: serde_json::Value,
    /// When it was put.
    pub updated_at: String,
}

#[derive(Serialize, Deserialize)]
struct Contents {
    format: u32,
    segments: Vec<Stored>,
}

/// The definitions in `data_dir`, or `None` when there is no file yet.
pub fn read(data_dir: &Path) -> Result<Option<Vec<Stored>>, StoreError> {
    let path = data_dir.join(FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let contents: Contents = serde_json::from_str(&text)
        .map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display())))?;
    if contents.format > FORMAT {
        return Err(StoreError::Format(format!(
            "{} has format {}, written by a newer weft; this weft reads up to {FORMAT}",
            path.display(),
            contents.format
        )));
    }
    Ok(Some(contents.segments))
}

/// Replaces the file with `segments`, durably (mode 0600).
pub fn write(data_dir: &Path, segments: Vec<Stored>) -> Result<(), StoreError> {
    let text = serde_json::to_string_pretty(&Contents {
        format: FORMAT,
        segments,
    })
    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(super::write_atomically(data_dir, FILE, text.as_bytes())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        let s = Stored {
            key: "vip".into(),
            name: "VIP".into(),
            rule: serde_json::json!({"trait": "plan", "op": "eq", "value": "pro"}),
            updated_at: "2026-12-02T10:00:00.000Z".into(),
        };
        write(dir.path(), vec![s.clone()]).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(vec![s]));
        std::fs::write(dir.path().join(FILE), r#"{"format": 9, "segments": []}"#).unwrap();
        assert!(matches!(read(dir.path()), Err(StoreError::Format(_))));
        std::fs::write(dir.path().join(FILE), "nope").unwrap();
        assert!(matches!(read(dir.path()), Err(StoreError::Corrupt(_))));
    }
}
