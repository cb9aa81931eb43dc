//! Identifiers: random (version 4) UUIDs, formatted without `core::fmt`.

use alloc::string::String;

use weft_protocol::json::push_hex;

use crate::env::Random;

/// A new random UUID in its canonical lowercase text form.
pub fn uuid_v4(random: &impl Random) -> String {
    let mut b = [0u8; 16];
    random.fill(&mut b);
    format_uuid_v4(b)
}

/// Formats 16 bytes as a version-4, RFC 4122 variant UUID.
pub fn format_uuid_v4(mut b: [u8; 16]) -> String {
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut out = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push_str("-");
        }
        push_hex(&mut out, byte >> 4);
        push_hex(&mut out, byte & 0xf);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_canonical_v4() {
        assert_eq!(
            format_uuid_v4([0; 16]),
            "00000000-0000-4000-8000-000000000000"
        );
        assert_eq!(
            format_uuid_v4([0xff; 16]),
            "ffffffff-ffff-4fff-bfff-ffffffffffff"
        );
        let u = format_uuid_v4([
            0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
            0xcd, 0xef,
        ]);
        assert_eq!(u, "12345678-9abc-4ef0-8123-456789abcdef");
    }
}
