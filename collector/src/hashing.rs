//! The hash maps the indexer keys by identifiers, profile IDs, event names
//! and segment keys: looked up several times for every stored event.
//!
//! With std's SipHash, hashing alone was about 4% of the indexer thread's
//! samples (perf, `bench segments` with 50 segments). These maps use
//! foldhash instead, seeded at random per map: several times
//! faster on short strings, and still not predictable by a sender who
//! picks identifiers to make them collide (the seed never leaves the
//! process). Keys that are not hashed here: the dedup window hashes
//! messageIds with std's keyed hasher once and keeps only that.

/// A hash map with the indexer's hasher.
pub type Map<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// A hash set with the indexer's hasher.
pub type Set<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
