//! Checksummed keys (SPEC §9, `prefixes[].checksum: "crc32"`): the last 6 characters of such a
//! key are the CRC-32 (IEEE, as zlib's `crc32`) of everything before them, in base62
//! (`0-9A-Za-z`, most significant digit first, left-padded with `0`). A typo or a guess fails the
//! check without any lookup, and a secret scanner can recognise real keys offline.

/// Characters of the checksum.
pub const LEN: usize = 6;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The CRC-32 lookup table (reflected polynomial 0xEDB88320), built at compile time.
const TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// CRC-32 (IEEE 802.3), as zlib's `crc32(0, data, len)`.
pub fn crc32(data: &[u8]) -> u32 {
    !data
        .iter()
        .fold(!0u32, |c, &b| TABLE[usize::from((c as u8) ^ b)] ^ (c >> 8))
}

/// `n` as 6 base62 digits.
pub fn base62(mut n: u32) -> [u8; LEN] {
    let mut out = [b'0'; LEN];
    for d in out.iter_mut().rev() {
        *d = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    out
}

/// Whether `key` ends in the checksum of what precedes it.
pub fn valid(key: &[u8]) -> bool {
    let Some(split) = key.len().checked_sub(LEN) else {
        return false;
    };
    let (body, sum) = key.split_at(split);
    !body.is_empty() && sum == base62(crc32(body))
}

/// `body` with its checksum appended.
pub fn append(body: &str) -> String {
    let mut out = String::with_capacity(body.len() + LEN);
    out.push_str(body);
    out.extend(
        base62(crc32(body.as_bytes()))
            .iter()
            .map(|&b| char::from(b)),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_zlib() {
        // zlib.crc32(b"123456789") == 0xCBF43926, the standard check value.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"mlm_live_abc"), 0x52DC_8316);
    }

    #[test]
    fn base62_is_padded_most_significant_first() {
        assert_eq!(&base62(0), b"000000");
        assert_eq!(&base62(61), b"00000z");
        assert_eq!(&base62(62), b"000010");
        assert_eq!(&base62(u32::MAX), b"4gfFC3");
    }

    #[test]
    fn keys_check() {
        // As Python computes it: the scanner recipe in docs/configuration.md.
        let k = append("mlm_live_4cTq9ZrW2yXb7Ke1");
        assert_eq!(k, "mlm_live_4cTq9ZrW2yXb7Ke105HeR0");
        assert!(valid(k.as_bytes()));
        assert_eq!(k.len(), "mlm_live_4cTq9ZrW2yXb7Ke1".len() + LEN);
        let mut typo = k.clone().into_bytes();
        typo[10] ^= 1;
        assert!(!valid(&typo));
        assert!(!valid(b"000000"));
        assert!(!valid(b"abc"));
    }
}
