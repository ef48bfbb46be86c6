//! Minting new keys (native only: the OS random generator). Used by `keygate new` and the key
//! service, so both make keys of the same shape.

use keygate::checksum;

/// 24 bytes from the OS CSPRNG, URL-safe base64 without padding: 192 bits in 32 characters.
pub fn random_secret() -> Result<String, String> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|e| format!("the OS random generator failed: {e}"))?;
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(32);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b));
        for shift in [18, 12, 6, 0] {
            out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
        }
    }
    Ok(out)
}

/// `n` characters of `0-9A-Za-z` from the OS CSPRNG (rejection sampling: no bias).
pub fn random_base62(n: usize) -> Result<String, String> {
    const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = String::with_capacity(n);
    while out.len() < n {
        let mut bytes = [0u8; 64];
        getrandom::fill(&mut bytes).map_err(|e| format!("the OS random generator failed: {e}"))?;
        for b in bytes.iter().filter(|&&b| b < 248).take(n - out.len()) {
            out.push(char::from(ALPHABET[usize::from(b % 62)]));
        }
    }
    Ok(out)
}

/// A new key of `prefix`: 192 random bits, or, with `crc32`, 30 base62 characters (178 bits)
/// and the 6-character checksum (SPEC §9).
pub fn new_key(prefix: &str, crc32: bool) -> Result<String, String> {
    Ok(if crc32 {
        checksum::append(&format!("{prefix}{}", random_base62(30)?))
    } else {
        format!("{prefix}{}", random_secret()?)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_have_their_prefix_and_enough_randomness() {
        let a = super::new_key("sk_live_", false).unwrap();
        let b = super::new_key("sk_live_", false).unwrap();
        assert!(a.starts_with("sk_live_") && a.len() == 8 + 32 && a != b);
        let c = super::new_key("mf_", true).unwrap();
        assert!(keygate::checksum::valid(c.as_bytes()) && c.len() == 3 + 36);
    }
}
