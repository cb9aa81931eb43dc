//! The seams between the tracker and the page it runs in.
//!
//! The browser module implements these with its own imports; native tests implement
//! them with plain data. Each is a few methods so a fake is a few lines.

/// Key-value storage that survives a reload (localStorage in a browser).
pub trait Storage {
    /// The stored value, if any.
    fn get(&self, key: &str) -> Option<String>;
    /// Stores a value. Failures (quota, disabled storage) are ignored: the
    /// SDK keeps working in memory.
    fn set(&self, key: &str, value: &str);
    /// Removes a value.
    fn remove(&self, key: &str);
}

/// The wall clock.
pub trait Clock {
    /// Now, as ISO-8601 UTC text with milliseconds (`Date#toISOString`).
    fn now_iso(&self) -> String;
    /// Now, in milliseconds since the epoch (`Date.now()`).
    fn now_ms(&self) -> f64;
}

/// A source of unpredictable bytes (`crypto.getRandomValues`).
pub trait Random {
    /// Fills `buf` with random bytes.
    fn fill(&self, buf: &mut [u8]);
}

/// Everything the tracker needs from its host.
pub trait Env: Storage + Clock + Random {}

impl<T: Storage + Clock + Random> Env for T {}
