//! The seams between the tracker and the page it runs in.
//!
//! The browser module implements these with its own imports; native tests implement
//! them with plain data. Each is a few methods so a fake is a few lines.

use alloc::string::String;

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
    fn now_iso(&self) -> String {
        iso_utc(self.now_ms())
    }
    /// Now, in milliseconds since the epoch (`Date.now()`).
    fn now_ms(&self) -> f64;
}

/// `ms` since the epoch as `Date#toISOString` writes it
/// (`2026-12-02T09:30:00.000Z`), for times from 1970 to 9999: the clock
/// of hosts without a `Date` (native tests, tools). The browser's
/// [`Clock`] asks its `Date` instead (fewer bytes to download).
pub fn iso_utc(ms: f64) -> String {
    // `as` saturates: NaN and negative times are the epoch.
    let ms = ms as u64;
    let (days, in_day) = (ms / 86_400_000, ms % 86_400_000);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    let mut out = *b"0000-00-00T00:00:00.000Z";
    // Each field's digits, right-aligned before its separator: (value,
    // index of its last digit, digits).
    let fields = [
        (year, 3, 4),
        (month, 6, 2),
        (day, 9, 2),
        (in_day / 3_600_000, 12, 2),
        (in_day / 60_000 % 60, 15, 2),
        (in_day / 1_000 % 60, 18, 2),
        (in_day % 1_000, 22, 3),
    ];
    for (mut value, last, digits) in fields {
        for i in 0..digits {
            if let Some(slot) = out.get_mut(last - i) {
                *slot = b'0' + (value % 10) as u8;
            }
            value /= 10;
        }
    }
    out.iter().map(|&b| char::from(b)).collect()
}

/// A source of unpredictable bytes (`crypto.getRandomValues`).
pub trait Random {
    /// Fills `buf` with random bytes.
    fn fill(&self, buf: &mut [u8]);
}

/// Everything the tracker needs from its host.
pub trait Env: Storage + Clock + Random {}

impl<T: Storage + Clock + Random> Env for T {}

#[cfg(test)]
mod tests {
    use super::iso_utc;

    #[test]
    fn iso_text_is_what_date_to_iso_string_writes() {
        for (ms, text) in [
            (0.0, "1970-01-01T00:00:00.000Z"),
            (951_782_400_000.0, "2000-02-29T00:00:00.000Z"),
            (1_764_667_800_123.0, "2025-12-02T09:30:00.123Z"),
            (1_798_761_599_999.0, "2026-12-31T23:59:59.999Z"),
            (4_107_542_400_000.0, "2100-03-01T00:00:00.000Z"),
            (-5.0, "1970-01-01T00:00:00.000Z"),
            (f64::NAN, "1970-01-01T00:00:00.000Z"),
        ] {
            assert_eq!(iso_utc(ms), text, "{ms}");
        }
    }
}
