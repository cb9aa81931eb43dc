//! Raw JSON values and a lean JSON writer.
//!
//! Properties, traits and context are free-form JSON. The collector keeps them
//! as validated raw text ([`Json`]) rather than a parsed tree: it stores them,
//! it does not need to walk them. The SDK gets them already serialised by the
//! browser (`JSON.stringify`) and only splices them into a message.
//!
//! [`Writer`] exists for the SDK: serde_json's serialiser reaches `core::fmt`
//! and float printing, which cost kilobytes in every visitor's download. The
//! writer handles strings and integers only, and is checked against serde_json
//! in the tests below.

use alloc::string::String;

#[cfg(feature = "serde")]
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A JSON value kept as its text.
///
/// Built either by deserialising (the text is then valid JSON) or with
/// [`Json::from_trusted`] from text a JSON serialiser produced.
///
/// A `String` rather than a `Box<str>`: the SDK makes these from `String`s,
/// and boxing one shrinks its allocation, code that every visitor would
/// download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Json(String);

impl Json {
    /// Wraps text that is known to be JSON, such as the output of
    /// `JSON.stringify`. Nothing is checked.
    pub fn from_trusted(text: impl Into<String>) -> Self {
        Json(text.into())
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `true` for the empty object `{}`.
    pub fn is_empty_object(&self) -> bool {
        self.0.trim() == "{}"
    }
}

#[cfg(feature = "serde")]
impl Serialize for Json {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Invalid text cannot reach here through deserialisation; a trusted
        // value that is not JSON fails serialisation instead of corrupting it.
        let raw = serde_json::value::RawValue::from_string(self.0.clone())
            .map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

#[cfg(feature = "serde")]
impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<serde_json::value::RawValue>::deserialize(deserializer)?;
        Ok(Json(raw.get().into()))
    }
}

/// Appends JSON text to a `String` without `core::fmt`.
///
/// Usage: `object_start`, then `key`/value pairs, then `object_end`. The
/// writer inserts commas itself. It does not check nesting; callers are the
/// SDK's encoders, which are tested.
#[derive(Debug, Default)]
pub struct Writer {
    out: String,
    /// Whether the next value or key at the current level needs a comma.
    needs_comma: bool,
}

impl Writer {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many bytes are written so far (where the next value starts,
    /// right after a key).
    pub fn len(&self) -> usize {
        self.out.len()
    }

    /// Whether nothing is written yet.
    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }

    /// The text written so far.
    pub fn finish(self) -> String {
        self.out
    }

    fn comma(&mut self) {
        if self.needs_comma {
            self.out.push_str(",");
        }
    }

    /// `{`
    pub fn object_start(&mut self) {
        self.comma();
        self.out.push_str("{");
        self.needs_comma = false;
    }

    /// `}`
    pub fn object_end(&mut self) {
        self.out.push_str("}");
        self.needs_comma = true;
    }

    /// `[`
    pub fn array_start(&mut self) {
        self.comma();
        self.out.push_str("[");
        self.needs_comma = false;
    }

    /// `]`
    pub fn array_end(&mut self) {
        self.out.push_str("]");
        self.needs_comma = true;
    }

    /// An object key; the value must follow.
    pub fn key(&mut self, key: &str) {
        self.comma();
        push_escaped(&mut self.out, key);
        self.out.push_str(":");
        self.needs_comma = false;
    }

    /// An object key that needs no escape, copied as it is: text read from
    /// JSON without escape sequences (valid JSON has no raw quote,
    /// backslash or control character in a string), or ASCII the caller
    /// wrote. Saves the escape scan on the collector's hot path.
    pub fn key_verbatim(&mut self, key: &str) {
        debug_assert!(!needs_escape(key), "{key:?} needs escaping");
        self.comma();
        self.out.push_str("\"");
        self.out.push_str(key);
        self.out.push_str("\":");
        self.needs_comma = false;
    }

    /// A string value that needs no escape (as for
    /// [`Writer::key_verbatim`]), copied as it is.
    pub fn string_verbatim(&mut self, value: &str) {
        debug_assert!(!needs_escape(value), "{value:?} needs escaping");
        self.comma();
        self.out.push_str("\"");
        self.out.push_str(value);
        self.out.push_str("\"");
        self.needs_comma = true;
    }

    /// A string value.
    pub fn string(&mut self, value: &str) {
        self.comma();
        push_escaped(&mut self.out, value);
        self.needs_comma = true;
    }

    /// An unsigned integer value.
    pub fn uint(&mut self, value: u64) {
        self.comma();
        push_u64(&mut self.out, value);
        self.needs_comma = true;
    }

    /// A non-negative decimal with at most three decimals (`1.5`, `2`);
    /// negative and non-finite values are written as `0`.
    pub fn decimal(&mut self, value: f64) {
        self.comma();
        // `as` saturates: negative and NaN give 0.
        let thousandths = (value * 1000.0 + 0.5) as u64;
        push_u64(&mut self.out, thousandths / 1000);
        let mut frac = thousandths % 1000;
        if frac > 0 {
            self.out.push_str(".");
            let mut unit = 100;
            while frac > 0 {
                push_hex(&mut self.out, (frac / unit) as u8);
                frac %= unit;
                unit /= 10;
            }
        }
        self.needs_comma = true;
    }

    /// A boolean value.
    pub fn bool(&mut self, value: bool) {
        self.comma();
        self.out.push_str(if value { "true" } else { "false" });
        self.needs_comma = true;
    }

    /// A raw JSON value, spliced as it is.
    pub fn raw(&mut self, value: &Json) {
        self.comma();
        self.out.push_str(value.as_str());
        self.needs_comma = true;
    }

    /// `"key":"value"` when `value` is present.
    pub fn opt_string(&mut self, key: &str, value: Option<&str>) {
        if let Some(v) = value {
            self.key(key);
            self.string(v);
        }
    }

    /// `"key":<raw>` when `value` is present.
    pub fn opt_raw(&mut self, key: &str, value: Option<&Json>) {
        if let Some(v) = value {
            self.key(key);
            self.raw(v);
        }
    }
}

/// Appends `s` as a quoted, escaped JSON string.
///
/// Byte by byte, copying the runs that need no escape at once: no `char`
/// decoding or encoding (less code in the SDK's wasm, and faster).
pub fn push_escaped(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push_str("\"");
    let bytes = s.as_bytes();
    // Where the run not yet copied starts.
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let (escape, len) = match b {
            b'"' => ("\\\"", 1),
            b'\\' => ("\\\\", 1),
            b'\n' => ("\\n", 1),
            b'\r' => ("\\r", 1),
            b'\t' => ("\\t", 1),
            0..0x20 => ("\\u00", 1),
            // U+2028/2029 (E2 80 A8/A9) are valid JSON but break JavaScript
            // string literals in older engines; escaping them costs nothing.
            0xE2 if bytes.get(i + 1) == Some(&0x80) => match bytes.get(i + 2) {
                Some(0xA8) => ("\\u2028", 3),
                Some(0xA9) => ("\\u2029", 3),
                _ => continue,
            },
            _ => continue,
        };
        // `run` and `i` are at ASCII bytes or a sequence's first byte: char
        // boundaries.
        out.push_str(s.get(run..i).unwrap_or_default());
        out.push_str(escape);
        if len == 1 && b < 0x20 && !matches!(b, b'\n' | b'\r' | b'\t') {
            push_hex(out, b >> 4);
            push_hex(out, b & 0xf);
        }
        run = i + len;
    }
    out.push_str(s.get(run..).unwrap_or_default());
    out.push_str("\"");
}

/// Whether `s` has a byte a JSON string must escape (quote, backslash,
/// control character).
pub fn needs_escape(s: &str) -> bool {
    s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20)
}

/// Appends the hexadecimal digit `d` (`0`..=`f`; `0` above 15), without
/// `char` encoding.
pub fn push_hex(out: &mut String, d: u8) {
    let i = usize::from(d.min(15));
    out.push_str("0123456789abcdef".get(i..=i).unwrap_or_default());
}

/// Reads a decimal `u64` (ASCII digits only, at least one, no sign or
/// space); `None` otherwise or on overflow. One small function instead of
/// `str::parse`'s generic one per integer type, for the SDK's wasm.
pub fn parse_u64(text: &str) -> Option<u64> {
    if text.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for b in text.bytes() {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(v)
}

/// `text` cut at its first `sep`, an ASCII byte (left out); `None` when it
/// has none. Bytes rather than `char`s: no UTF-8 decoding (the SDK's
/// wasm), and a cut at an ASCII byte is always a char boundary.
pub fn cut(text: &str, sep: u8) -> Option<(&str, &str)> {
    let i = text.bytes().position(|b| b == sep)?;
    Some((text.get(..i)?, text.get(i + 1..)?))
}

/// Appends the decimal digits of `v`.
pub fn push_u64(out: &mut String, mut v: u64) {
    // Iterators rather than indexing: no bounds check, so no panic path
    // (and its formatting code) in the SDK's wasm.
    let mut digits = [0u8; 20];
    let mut n = 0;
    for slot in digits.iter_mut() {
        *slot = (v % 10) as u8;
        v /= 10;
        n += 1;
        if v == 0 {
            break;
        }
    }
    for &d in digits.iter().take(n).rev() {
        push_hex(out, d);
    }
}

// The tests check the writer against serde_json.
#[cfg(all(test, feature = "serde"))]
mod tests {
    use super::*;

    fn check_string(input: &str) {
        let mut out = String::new();
        push_escaped(&mut out, input);
        let back: String = serde_json::from_str(&out).expect("writer output is JSON");
        assert_eq!(back, input, "round trip of {out}");
    }

    #[test]
    fn unsigned_integers_parse_like_std() {
        for text in [
            "0",
            "7",
            "0042",
            "18446744073709551615",
            "18446744073709551616",
            "",
            "-1",
            "+1",
            " 1",
            "1a",
            "٣",
        ] {
            assert_eq!(
                parse_u64(text),
                text.parse::<u64>().ok().filter(|_| !text.starts_with('+')),
                "{text:?}"
            );
        }
    }

    #[test]
    fn decimals_are_json_numbers_rounded_to_thousandths() {
        for (v, text) in [
            (0.0, "0"),
            (1.0, "1"),
            (1.5, "1.5"),
            (2.625, "2.625"),
            (1.05, "1.05"),
            (0.001, "0.001"),
            (1.9996, "2"),
            (3.33333, "3.333"),
            (-1.0, "0"),
            (f64::NAN, "0"),
        ] {
            let mut w = Writer::new();
            w.decimal(v);
            assert_eq!(w.finish(), text, "{v}");
        }
    }

    #[test]
    fn strings_round_trip_through_serde_json() {
        for s in [
            "",
            "plain",
            "quote \" backslash \\ slash /",
            "line\nreturn\rtab\t",
            "\u{0}\u{1}\u{1f}",
            "\u{2028}\u{2029}",
            "héllo wörld ✓ 🎉",
        ] {
            check_string(s);
        }
    }

    #[test]
    fn cut_splits_at_the_first_separator_like_split_once() {
        for (text, sep) in [
            ("a.b", '.'),
            ("a.b.c", '.'),
            (".", '.'),
            ("", '.'),
            ("ab", '.'),
            ("é:ü", ':'),
            ("\t", '\t'),
        ] {
            assert_eq!(cut(text, sep as u8), text.split_once(sep), "{text:?}");
        }
    }

    #[test]
    fn integers_match_std() {
        for v in [0u64, 1, 9, 10, 99, 100, 12345, u32::MAX as u64, u64::MAX] {
            let mut out = String::new();
            push_u64(&mut out, v);
            assert_eq!(out, v.to_string());
        }
    }

    #[test]
    fn writer_builds_nested_structures_with_commas() {
        let mut w = Writer::new();
        w.object_start();
        w.key("a");
        w.uint(1);
        w.key("b");
        w.array_start();
        w.string("x");
        w.bool(true);
        w.object_start();
        w.object_end();
        w.array_end();
        w.opt_string("c", None);
        w.opt_string("d", Some("y"));
        w.opt_raw("e", Some(&Json::from_trusted(r#"{"n":[1,2.5]}"#)));
        w.object_end();
        let text = w.finish();
        let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(
            v,
            serde_json::json!({"a":1,"b":["x",true,{}],"d":"y","e":{"n":[1,2.5]}})
        );
    }

    #[test]
    fn json_deserialises_as_raw_text_and_serialises_back() {
        let j: Json = serde_json::from_str(r#" {"k": [1, "two"]} "#).unwrap();
        assert_eq!(j.as_str(), r#"{"k": [1, "two"]}"#);
        assert_eq!(serde_json::to_string(&j).unwrap(), r#"{"k": [1, "two"]}"#);
        assert!(serde_json::from_str::<Json>("{").is_err());
    }
}
