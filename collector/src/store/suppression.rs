//! The suppression list: identifiers of erased profiles, kept only as
//! salted SHA-256 hashes, so later messages carrying them can be dropped
//! without the store holding the identifiers in clear.

use std::collections::HashSet;
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
}
