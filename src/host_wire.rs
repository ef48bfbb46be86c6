//! The proxy-wasm ABI's byte formats that keygate reads and writes (pure, no host calls): header
//! maps as the host serialises them, and property paths. Decoding never panics: a malformed host
//! answer is `None`, and the caller fails closed.

/// One header as the core reads it: its name and value, borrowed from the host's answer.
pub type Header<'a> = (&'a str, &'a [u8]);

/// A header map: `count: u32`, then `count` × (`name_len: u32`, `value_len: u32`), then each
/// name and value followed by a NUL byte; all integers little-endian. The headers borrow
/// `bytes`: one allocation for the whole map, not two per header.
pub fn decode_pairs(bytes: &[u8]) -> Option<Vec<Header<'_>>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let u32_at = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes(b.try_into().ok()?) as usize)
    };
    let count = u32_at(0)?;
    let mut data = count.checked_mul(8)?.checked_add(4)?;
    let mut out = Vec::with_capacity(count.min(bytes.len() / 8));
    for i in 0..count {
        let name_len = u32_at(4 + i * 8)?;
        let value_len = u32_at(8 + i * 8)?;
        let name = bytes.get(data..data.checked_add(name_len)?)?;
        data = data.checked_add(name_len)?.checked_add(1)?;
        let value = bytes.get(data..data.checked_add(value_len)?)?;
        data = data.checked_add(value_len)?.checked_add(1)?;
        out.push((std::str::from_utf8(name).ok()?, value));
    }
    Some(out)
}

/// The serialised form of `pairs` (for local replies and HTTP calls).
pub fn encode_pairs(pairs: &[(&str, &str)]) -> Vec<u8> {
    let size = 4 + pairs
        .iter()
        .map(|(k, v)| k.len() + v.len() + 10)
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// A property path (`["source", "address"]`): the parts joined by NUL bytes.
pub fn property_path(parts: &[&str]) -> Vec<u8> {
    parts.join("\0").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip() {
        let pairs = [(":path", "/a?b"), ("x-api-key", ""), ("a", "b")];
        let bytes = encode_pairs(&pairs);
        let back = decode_pairs(&bytes).unwrap();
        let want: Vec<Header> = pairs.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
        assert_eq!(back, want);
        assert_eq!(decode_pairs(&[]), Some(vec![]));
        assert_eq!(decode_pairs(&encode_pairs(&[])), Some(vec![]));
    }

    #[test]
    fn malformed_maps_are_none_never_a_panic() {
        let good = encode_pairs(&[("name", "value")]);
        for cut in 1..good.len() - 1 {
            assert_eq!(decode_pairs(&good[..cut]), None, "cut at {cut}");
        }
        let mut huge = good.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_pairs(&huge), None);
        let mut long = good.clone();
        long[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_pairs(&long), None);
        let mut bad_name = good;
        bad_name[12] = 0xff;
        assert_eq!(decode_pairs(&bad_name), None);
    }

    #[test]
    fn property_paths() {
        assert_eq!(property_path(&["source", "address"]), b"source\0address");
        assert_eq!(property_path(&["keygate.key_id"]), b"keygate.key_id");
    }
}
