//! Key digests and the table they are looked up in.

use crate::model::KeyRecord;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

pub type Digest = [u8; 32];

/// SHA-256 of the whole presented key string.
pub fn digest(key: &[u8]) -> Digest {
    Sha256::digest(key).into()
}

pub fn digest_hex(key: &[u8]) -> String {
    hex::encode(digest(key))
}

/// Parses 64 lower-case hex characters.
pub fn parse_digest_hex(s: &str) -> Option<Digest> {
    if s.len() != 64 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    // Checked above: every byte is 0-9 or a-f.
    let nibble = |b: u8| if b <= b'9' { b - b'0' } else { b - b'a' + 10 };
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
        *o = (nibble(pair[0]) << 4) | nibble(pair[1]);
    }
    Some(out)
}

/// SHA-256 outputs are already uniformly distributed and cannot be chosen by a client, so the
/// table hashes a digest by its first eight bytes instead of running SipHash over all 32.
#[derive(Default)]
pub struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut buf = [0u8; 8];
        for (b, x) in buf.iter_mut().zip(bytes.iter()) {
            *b = *x;
        }
        self.0 ^= u64::from_le_bytes(buf);
    }
    fn write_usize(&mut self, _: usize) {}
}

/// FNV-1a, for maps keyed by configuration data (ids, names, metric names): the input is the
/// operator's, not the client's, so there is no flooding concern, and the .wasm does without
/// std's randomly seeded hasher.
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// FNV-1a of `bytes`.
pub fn fnv(bytes: &[u8]) -> u64 {
    let mut h = Fnv::default();
    h.write(bytes);
    h.finish()
}

/// Sorts `(hash, index)` pairs by hash, equal hashes kept in the order given: a stable LSD
/// radix sort, one byte a pass (a pass all in one bucket is skipped). Every caller numbers its
/// items in order, so this is the order `sort_unstable` gives. Linear, with no input a hostile
/// party can make slow, and the .wasm's only sort (a comparison sort's code is ~3 KB there).
pub fn sort_numbered(v: &mut [(u64, u32)]) {
    let mut from = v.to_vec();
    for shift in (0..64).step_by(8) {
        let byte = |h: u64| (h >> shift) as usize & 0xff;
        let mut at = [0usize; 256];
        for (h, _) in &from {
            if let Some(n) = at.get_mut(byte(*h)) {
                *n += 1;
            }
        }
        if at.contains(&from.len()) {
            continue;
        }
        let mut sum = 0;
        for n in at.iter_mut() {
            (*n, sum) = (sum, sum + *n);
        }
        for &(h, i) in &from {
            if let Some(n) = at.get_mut(byte(h)) {
                if let Some(slot) = v.get_mut(*n) {
                    *slot = (h, i);
                }
                *n += 1;
            }
        }
        from.copy_from_slice(v);
    }
}

pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<Fnv>>;
pub type FastSet<K> = std::collections::HashSet<K, BuildHasherDefault<Fnv>>;

/// Keys by digest.
#[derive(Debug, Default)]
pub struct KeyTable {
    by_digest: HashMap<Digest, KeyRecord, BuildHasherDefault<DigestHasher>>,
}

impl KeyTable {
    pub fn with_capacity(n: usize) -> Self {
        KeyTable {
            by_digest: HashMap::with_capacity_and_hasher(n, Default::default()),
        }
    }

    /// Inserts; returns false (and changes nothing) if the digest is already present.
    pub fn insert(&mut self, digest: Digest, record: KeyRecord) -> bool {
        if self.by_digest.contains_key(&digest) {
            return false;
        }
        self.by_digest.insert(digest, record);
        true
    }

    pub fn get(&self, digest: &Digest) -> Option<&KeyRecord> {
        self.by_digest.get(digest)
    }

    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    pub fn records(&self) -> impl Iterator<Item = &KeyRecord> {
        self.by_digest.values()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sort_numbered_is_the_tuple_order() {
        // Many ties, every byte position varied, and a run of equal hashes.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut v: Vec<(u64, u32)> = (0..5000u32)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let h = match i % 4 {
                    0 => x % 7,
                    1 => x,
                    2 => x << 56,
                    _ => 42,
                };
                (h, i)
            })
            .collect();
        let mut want = v.clone();
        want.sort_unstable();
        sort_numbered(&mut v);
        assert_eq!(v, want);
        let mut none: Vec<(u64, u32)> = vec![];
        sort_numbered(&mut none);
        let mut one = vec![(u64::MAX, 0)];
        sort_numbered(&mut one);
        assert_eq!(one, [(u64::MAX, 0)]);
    }

    use super::*;

    #[test]
    fn digests() {
        assert_eq!(
            digest_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let d = parse_digest_hex(&digest_hex(b"abc")).unwrap();
        assert_eq!(d, digest(b"abc"));
        assert!(parse_digest_hex(&digest_hex(b"abc").to_uppercase()).is_none());
        assert!(parse_digest_hex("abc").is_none());
        assert!(parse_digest_hex(&"g".repeat(64)).is_none());
    }

    #[test]
    fn table_rejects_duplicate_digest() {
        let mut t = KeyTable::default();
        let rec = KeyRecord {
            id: "a".into(),
            ..Default::default()
        };
        assert!(t.insert(digest(b"k"), rec.clone()));
        assert!(!t.insert(digest(b"k"), rec));
        assert_eq!(t.len(), 1);
        assert_eq!(t.get(&digest(b"k")).map(|r| r.id.as_str()), Some("a"));
        assert!(t.get(&digest(b"other")).is_none());
    }
}
