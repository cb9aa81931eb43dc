//! The suppression list: identifiers of erased profiles, kept only as
//! salted SHA-256 hashes, so later messages carrying them can be dropped
//! without the store holding the identifiers in clear.
//!
//! The list is not derived state: it must outlive the log segments that
//! retention drops and a rebuild of the index. It lives in its own file,
//! [`SUPPRESSION_FILE`] in the data directory: an 8-byte magic, the 32-byte
//! salt, then one 32-byte hash per erased identifier, appended and synced
//! before an erasure goes on. A torn last hash (a crash mid-append, before
//! the erasure was answered) is cut off when the file is read.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::path::Path;
use std::sync::RwLock;

use sha2::{Digest, Sha256};

/// A salted hash of an identifier.
pub type IdHash = [u8; 32];

/// The in-memory set of suppressed identifier hashes and the salt that made
/// them. The store persists both and loads them at start.
#[derive(Debug)]
pub struct Suppression {
    salt: Vec<u8>,
    hashes: RwLock<HashSet<IdHash>>,
}

impl Suppression {
    /// A list with `salt` and the already suppressed `hashes`.
    pub fn new(salt: Vec<u8>, hashes: impl IntoIterator<Item = IdHash>) -> Self {
        Suppression {
            salt,
            hashes: RwLock::new(hashes.into_iter().collect()),
        }
    }

    /// The salted hash of `id`.
    pub fn hash(&self, id: &str) -> IdHash {
        let mut h = Sha256::new();
        h.update(&self.salt);
        h.update(id.as_bytes());
        h.finalize().into()
    }

    /// Adds hashes to the list.
    pub fn extend(&self, hashes: impl IntoIterator<Item = IdHash>) {
        self.hashes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .extend(hashes);
    }

    /// Whether any of `ids` is suppressed.
    pub fn any(&self, ids: &[Option<&str>]) -> bool {
        let set = self.hashes.read().unwrap_or_else(|e| e.into_inner());
        if set.is_empty() {
            return false;
        }
        ids.iter().flatten().any(|id| set.contains(&self.hash(id)))
    }

    /// How many identifiers are suppressed.
    pub fn len(&self) -> usize {
        self.hashes.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether nothing is suppressed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The suppression file's name in the data directory.
pub const SUPPRESSION_FILE: &str = "suppressed.bin";
const MAGIC: &[u8; 8] = b"WEFTSUP1";
const SALT_LEN: usize = 32;

/// Reads the suppression file of `data_dir`, creating it (with a new random
/// salt, synced, mode 0600) when there is none: the salt and the hashes.
pub fn load_file(data_dir: &Path) -> std::io::Result<(Vec<u8>, Vec<IdHash>)> {
    let path = data_dir.join(SUPPRESSION_FILE);
    let mut data = Vec::new();
    match File::open(&path) {
        Ok(mut f) => {
            f.read_to_end(&mut data)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut salt = [0u8; SALT_LEN];
            getrandom::fill(&mut salt).map_err(std::io::Error::other)?;
            super::write_atomically(data_dir, SUPPRESSION_FILE, &[&MAGIC[..], &salt].concat())?;
            return Ok((salt.to_vec(), Vec::new()));
        }
        Err(e) => return Err(e),
    }
    let header = MAGIC.len() + SALT_LEN;
    if data.len() < header || &data[..MAGIC.len()] != MAGIC {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{path:?} is not a weft suppression file"),
        ));
    }
    let salt = data[MAGIC.len()..header].to_vec();
    let hashes = data[header..]
        .chunks_exact(32)
        .map(|c| IdHash::try_from(c).expect("chunks of 32"))
        .collect();
    Ok((salt, hashes))
}

/// Appends `hashes` to the suppression file of `data_dir` and syncs it.
pub fn append_file(data_dir: &Path, hashes: &[IdHash]) -> std::io::Result<()> {
    let path = data_dir.join(SUPPRESSION_FILE);
    let f = OpenOptions::new().read(true).write(true).open(&path)?;
    // Cut a torn hash left by a crash mid-append, so records stay aligned.
    let len = f.metadata()?.len();
    let header = (MAGIC.len() + SALT_LEN) as u64;
    let aligned = header + (len.saturating_sub(header) / 32) * 32;
    if aligned != len {
        f.set_len(aligned)?;
    }
    let mut f = OpenOptions::new().append(true).open(&path)?;
    let mut buf = Vec::with_capacity(hashes.len() * 32);
    for h in hashes {
        buf.extend_from_slice(h);
    }
    f.write_all(&buf)?;
    f.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_depend_on_the_salt_and_match_only_their_identifier() {
        let a = Suppression::new(b"salt-a".to_vec(), []);
        let b = Suppression::new(b"salt-b".to_vec(), []);
        assert_ne!(a.hash("alice"), b.hash("alice"));
        assert_eq!(a.hash("alice"), a.hash("alice"));
        assert!(!a.any(&[Some("alice")]));
        a.extend([a.hash("alice")]);
        assert!(a.any(&[None, Some("alice")]));
        assert!(!a.any(&[Some("bob"), None]));
        assert_eq!(a.len(), 1);
    }

    #[test]
    fn the_file_keeps_salt_and_hashes_across_opens_and_cuts_a_torn_hash() {
        let dir = tempfile::tempdir().unwrap();
        let (salt, hashes) = load_file(dir.path()).unwrap();
        assert_eq!(salt.len(), 32);
        assert!(hashes.is_empty());
        append_file(dir.path(), &[[1u8; 32], [2u8; 32]]).unwrap();
        // A crash in the middle of the next append.
        let path = dir.path().join(SUPPRESSION_FILE);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[3u8; 10]).unwrap();
        let (salt2, hashes) = load_file(dir.path()).unwrap();
        assert_eq!(salt2, salt);
        assert_eq!(hashes, vec![[1u8; 32], [2u8; 32]]);
        append_file(dir.path(), &[[4u8; 32]]).unwrap();
        assert_eq!(
            load_file(dir.path()).unwrap().1,
            vec![[1u8; 32], [2u8; 32], [4u8; 32]]
        );
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
