//! The clock the collector reads `receivedAt` from, replaceable so tests
//! control time (skew correction, retention).

use time::OffsetDateTime;

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    /// Now, in UTC.
    fn now(&self) -> OffsetDateTime;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that always answers the same instant.
#[derive(Debug, Clone, Copy)]
pub struct FixedClock(pub OffsetDateTime);

impl Clock for FixedClock {
    fn now(&self) -> OffsetDateTime {
        self.0
    }
}

/// A clock that tests move by hand.
#[derive(Debug)]
pub struct ManualClock(std::sync::Mutex<OffsetDateTime>);

impl ManualClock {
    /// A clock showing `start`.
    pub fn new(start: OffsetDateTime) -> Self {
        ManualClock(std::sync::Mutex::new(start))
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: time::Duration) {
        let mut now = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// RFC 3339 in UTC with milliseconds, the form every stored time takes
/// (`2026-11-23T10:00:00.000Z`), so stored times sort as text.
pub fn format_utc_millis(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let year = t.year();
    if (0..=9999).contains(&year) {
        // Fixed width: written by hand, it is several times faster than
        // the general formatter, and it runs for every stored message.
        fn num(out: &mut String, n: u32, width: u32) {
            for i in (0..width).rev() {
                let digit = (n / 10u32.pow(i)) % 10;
                out.push(char::from(b'0' + digit as u8));
            }
        }
        let mut out = String::with_capacity(24);
        num(&mut out, year as u32, 4);
        out.push('-');
        num(&mut out, u32::from(u8::from(t.month())), 2);
        out.push('-');
        num(&mut out, u32::from(t.day()), 2);
        out.push('T');
        num(&mut out, u32::from(t.hour()), 2);
        out.push(':');
        num(&mut out, u32::from(t.minute()), 2);
        out.push(':');
        num(&mut out, u32::from(t.second()), 2);
        out.push('.');
        num(&mut out, u32::from(t.millisecond()), 3);
        out.push('Z');
        return out;
    }
    format_general(t)
}

/// [`format_utc_millis`] through `time`'s formatter, for years outside
/// 0..=9999.
fn format_general(t: OffsetDateTime) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(FORMAT)
        .unwrap_or_else(|_| "1970-01-01T00:00:00.000Z".to_owned())
}

/// The Unix milliseconds of `2026-12-02T10:00:00.123Z`, the form every
/// stored time and the SDK's timestamps take, read by hand; `None` for any
/// other form (the general parser takes those).
fn fixed_millis(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let fixed = b.len() == 24
        && [4, 7].iter().all(|&i| b[i] == b'-')
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && b[23] == b'Z';
    if !fixed {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        b[r].iter().try_fold(0i64, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + i64::from(d - b'0'))
        })
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s, ms) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..23)?);
    let days_in_month = match mo {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => return None,
    };
    if !(1..=days_in_month).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    // A leap second reads as the last millisecond before it, as `time` has it.
    let (s, ms) = if s == 60 { (59, 999) } else { (s, ms) };
    // Days since 1970-01-01 of the civil date (proleptic Gregorian).
    let (y, m) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + (153 * m + 2) / 5 + d - 1;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + h) * 60 + mi) * 60_000 + s * 1000 + ms)
}

/// The Unix milliseconds of an RFC 3339 time (destinations read every
/// stored message's this way).
pub fn unix_millis(text: &str) -> Option<i64> {
    fixed_millis(text)
        .or_else(|| parse_general(text).map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64))
}

/// Parses an RFC 3339 timestamp (`Z` or an offset). The common fixed form
/// is read by hand (it runs for nearly every message at ingest).
pub fn parse_rfc3339(text: &str) -> Option<OffsetDateTime> {
    match fixed_millis(text) {
        Some(ms) => OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok(),
        None => parse_general(text),
    }
}

fn parse_general(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn stored_times_read_back_as_the_general_parser_reads_them() {
        for text in [
            "1970-01-01T00:00:00.000Z",
            "2026-12-02T10:00:00.123Z",
            "2024-02-29T23:59:59.999Z",
            "1999-12-31T23:59:60.000Z",
            "2026-12-02T11:00:00.5+01:00",
            "0001-01-01T00:00:00.000Z",
        ] {
            let general =
                super::parse_rfc3339(text).map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64);
            assert_eq!(super::unix_millis(text), general, "{text}");
        }
        for bad in [
            "2026-13-02T10:00:00.000Z",
            "2026-02-30T10:00:00.000Z",
            "2025-02-29T10:00:00.000Z",
        ] {
            assert_eq!(super::unix_millis(bad), None, "{bad}");
            assert_eq!(super::parse_rfc3339(bad), None, "{bad}");
        }
        assert_eq!(super::unix_millis("soon"), None);
    }

    #[test]
    fn the_fast_formatter_agrees_with_the_general_one() {
        use time::macros::datetime;
        for t in [
            datetime!(2026-11-23 10:00:00 UTC),
            datetime!(1970-01-01 00:00:00 UTC),
            datetime!(0001-02-03 04:05:06.007 UTC),
            datetime!(9999-12-31 23:59:59.999 UTC),
            datetime!(2026-12-02 05:06:07.089 +02:00),
            datetime!(2024-02-29 23:59:59.9999 UTC),
        ] {
            let t = t.to_offset(time::UtcOffset::UTC);
            assert_eq!(super::format_utc_millis(t), super::format_general(t), "{t}");
        }
    }

    use super::*;

    #[test]
    fn formats_and_parses_utc_millis() {
        let t = parse_rfc3339("2026-11-23T11:00:00.1234+01:00").unwrap();
        assert_eq!(format_utc_millis(t), "2026-11-23T10:00:00.123Z");
        assert!(parse_rfc3339("yesterday").is_none());
        assert!(parse_rfc3339("2026-11-23").is_none());
    }
}
