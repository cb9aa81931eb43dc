//! The record frame: what one record looks like on disk, and the checks a
//! reader applies to it.
//!
//! `[len: u32][crc: u32][version: u8][lsn: u64][payload: len bytes]`, all
//! little-endian. The CRC32C covers the version byte, the LSN bytes and the
//! payload, which are contiguous on disk, so it is computed over one slice.
//! The length is not covered: a damaged length shows up as a CRC mismatch of
//! whatever bytes it points at, or as an absurd length.

use super::Lsn;

/// Bytes of framing in front of every payload: length 4, CRC 4, version 1,
/// LSN 8.
pub const HEADER_LEN: usize = 17;

/// The only record format version written and read.
pub const VERSION: u8 = 1;

/// The largest payload a record may carry (64 MiB). A length above it is
/// taken as damage, never as a record to allocate for.
pub const MAX_PAYLOAD: usize = 64 << 20;

/// Where the checked bytes start in the header: version and LSN.
const CHECKED_FROM: usize = 8;

/// A decoded record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// The header as read, kept for the CRC and for copying the record as is.
    pub raw: [u8; HEADER_LEN],
    /// Payload length in bytes.
    pub len: u32,
    /// The stored CRC32C.
    pub crc: u32,
    /// Format version.
    pub version: u8,
    /// The record's sequence number.
    pub lsn: Lsn,
}

impl Header {
    /// Splits a raw header into its fields; checks nothing.
    pub fn decode(raw: [u8; HEADER_LEN]) -> Header {
        let u32_at =
            |at: usize| u32::from_le_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]);
        let mut lsn = [0u8; 8];
        lsn.copy_from_slice(&raw[9..17]);
        Header {
            raw,
            len: u32_at(0),
            crc: u32_at(4),
            version: raw[8],
            lsn: Lsn::from_le_bytes(lsn),
        }
    }

    /// Why this header cannot start a record, if it cannot: an unknown
    /// version or an absurd length. Checked before the payload is read.
    pub fn problem(&self) -> Option<String> {
        if self.version != VERSION {
            return Some(format!("unknown record version {}", self.version));
        }
        if self.len as usize > MAX_PAYLOAD {
            return Some(format!("record length {} exceeds {MAX_PAYLOAD}", self.len));
        }
        None
    }

    /// Whether `payload` is the one this header's CRC was computed over.
    pub fn matches(&self, payload: &[u8]) -> bool {
        let crc = crc32c::crc32c_append(crc32c::crc32c(&self.raw[CHECKED_FROM..]), payload);
        crc == self.crc
    }

    /// Bytes the whole record takes on disk.
    pub fn record_len(&self) -> u64 {
        HEADER_LEN as u64 + u64::from(self.len)
    }
}

/// Appends one framed record to `buf`. The caller has checked that
/// `payload.len() <= MAX_PAYLOAD`.
pub(crate) fn encode(buf: &mut Vec<u8>, lsn: Lsn, payload: &[u8]) {
    debug_assert!(payload.len() <= MAX_PAYLOAD);
    let start = buf.len();
    // MAX_PAYLOAD fits in u32, so the cast is exact.
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.push(VERSION);
    buf.extend_from_slice(&lsn.to_le_bytes());
    buf.extend_from_slice(payload);
    let crc = crc32c::crc32c(&buf[start + CHECKED_FROM..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_costs_seventeen_bytes_of_framing() {
        for payload in [&b""[..], b"x", b"{\"event\":\"Signed Up\"}"] {
            let mut buf = Vec::new();
            encode(&mut buf, 7, payload);
            assert_eq!(buf.len() - payload.len(), HEADER_LEN);
            assert_eq!(HEADER_LEN, 17);
        }
    }

    #[test]
    fn encode_then_decode_checks_out_and_any_flipped_bit_does_not() {
        let payload = b"hello, log";
        let mut buf = Vec::new();
        encode(&mut buf, 0x0102_0304_0506_0708, payload);
        let mut raw = [0u8; HEADER_LEN];
        raw.copy_from_slice(&buf[..HEADER_LEN]);
        let header = Header::decode(raw);
        assert_eq!(header.len as usize, payload.len());
        assert_eq!(header.version, VERSION);
        assert_eq!(header.lsn, 0x0102_0304_0506_0708);
        assert_eq!(header.problem(), None);
        assert!(header.matches(payload));
        // The CRC32C is the one of version, LSN and payload, in that order.
        let covered = [&[VERSION][..], &header.lsn.to_le_bytes(), payload].concat();
        assert_eq!(header.crc, crc32c::crc32c(&covered));
        assert_eq!(header.record_len(), buf.len() as u64);

        // Every bit of version, LSN and payload is covered by the CRC.
        for byte in CHECKED_FROM..buf.len() {
            for bit in 0..8 {
                let mut bad = buf.clone();
                bad[byte] ^= 1 << bit;
                let mut raw = [0u8; HEADER_LEN];
                raw.copy_from_slice(&bad[..HEADER_LEN]);
                let header = Header::decode(raw);
                assert!(
                    header.problem().is_some() || !header.matches(&bad[HEADER_LEN..]),
                    "flip of byte {byte} bit {bit} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn absurd_lengths_and_unknown_versions_are_refused_before_reading() {
        let mut raw = [0u8; HEADER_LEN];
        raw[8] = VERSION;
        raw[..4].copy_from_slice(&(MAX_PAYLOAD as u32 + 1).to_le_bytes());
        assert!(Header::decode(raw).problem().unwrap().contains("length"));
        raw[..4].copy_from_slice(&(MAX_PAYLOAD as u32).to_le_bytes());
        assert_eq!(Header::decode(raw).problem(), None);
        // All zeros, as a crash can leave past the last written page.
        assert!(
            Header::decode([0; HEADER_LEN])
                .problem()
                .unwrap()
                .contains("version")
        );
    }
}
