//! Shards: a set split by digest into blobs of ~16 sorted records, one shared-data entry each.

use super::*;

/// How many digest bits select a shard for a set of `n` keys (about 16 keys per shard).
pub fn shard_bits(n: usize) -> u8 {
    let mut bits = 0u8;
    while bits < MAX_SHARD_BITS && (n >> bits) > KEYS_PER_SHARD {
        bits += 1;
    }
    bits
}

pub fn shard_of(digest: &Digest, bits: u8) -> u32 {
    if bits == 0 {
        return 0;
    }
    let top = u32::from(u16::from_be_bytes([digest[0], digest[1]]));
    top >> (16 - u32::from(bits.min(MAX_SHARD_BITS)))
}

pub(super) const BLOB_HEADER: usize = 12;

/// Finds `digest` in a shard blob of generation `gen`.
/// `Err` if the blob is not of that generation (the reader's view is stale) or is malformed.
pub fn find_in_shard<'b>(
    blob: &'b [u8],
    gen: u64,
    digest: &Digest,
) -> Result<Option<&'b [u8]>, DecodeError> {
    let mut c = Cursor(blob);
    if c.u64()? != gen {
        return Err(DecodeError::BadValue);
    }
    let count = c.take(4)?;
    let count = u32::from_le_bytes(count.try_into().map_err(|_| DecodeError::Truncated)?) as usize;
    let table = blob
        .get(BLOB_HEADER..BLOB_HEADER + count * 4)
        .ok_or(DecodeError::Truncated)?;
    let offset = |i: usize| -> Result<usize, DecodeError> {
        let b = table.get(i * 4..i * 4 + 4).ok_or(DecodeError::Truncated)?;
        Ok(u32::from_le_bytes(b.try_into().map_err(|_| DecodeError::Truncated)?) as usize)
    };
    let (mut lo, mut hi) = (0usize, count);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let start = offset(mid)?;
        let rec_digest = blob.get(start..start + 32).ok_or(DecodeError::Truncated)?;
        match rec_digest.cmp(digest.as_slice()) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => {
                let end = if mid + 1 < count {
                    offset(mid + 1)?
                } else {
                    blob.len()
                };
                return blob.get(start..end).map(Some).ok_or(DecodeError::Truncated);
            }
        }
    }
    Ok(None)
}

/// A validated key set, encoded and already split into shards as it is parsed (so a million
/// keys are held once, compactly, never as a JSON tree or a second copy).
#[derive(Debug, Default)]
pub struct ParsedSet {
    pub version: String,
    pub(super) bits: u8,
    /// Per shard: its records in arrival order, each prefixed by its length (u32 LE).
    pub(super) shards: Vec<Vec<u8>>,
    pub(super) count: usize,
    pub(super) bytes: usize,
}

/// Answers are at least this many bytes per key (`{"id":"a","sha256":"…64…"}`), so the body
/// size bounds the key count from above and fixes the shard count before parsing.
pub(super) const MIN_ENTRY_BYTES: usize = 80;

impl ParsedSet {
    pub(super) fn for_body_size(size: usize) -> Self {
        Self::for_keys(size / MIN_ENTRY_BYTES)
    }

    pub(super) fn for_keys(n: usize) -> Self {
        let bits = shard_bits(n);
        ParsedSet {
            bits,
            shards: vec![Vec::new(); 1usize << bits],
            ..Default::default()
        }
    }

    /// Encodes a record straight into its shard (no buffer of its own).
    pub(super) fn push(&mut self, digest: &Digest, rec: &KeyRecord, roles: &[Role]) {
        let Some(buf) = self.shards.get_mut(shard_of(digest, self.bits) as usize) else {
            return;
        };
        let at = buf.len();
        buf.extend_from_slice(&[0; 4]);
        encode_record(buf, digest, rec, roles);
        let len = buf.len() - at - 4;
        if let Some(prefix) = buf.get_mut(at..at + 4) {
            prefix.copy_from_slice(&(len as u32).to_le_bytes());
        }
        self.count += 1;
        self.bytes += len;
    }

    /// Adds an encoded record (its digest first) to its shard.
    pub(super) fn push_encoded(&mut self, rec: &[u8]) {
        let Some(digest) = rec.first_chunk::<32>() else {
            return;
        };
        let Some(buf) = self.shards.get_mut(shard_of(digest, self.bits) as usize) else {
            return;
        };
        buf.extend_from_slice(&(rec.len() as u32).to_le_bytes());
        buf.extend_from_slice(rec);
        self.count += 1;
        self.bytes += rec.len();
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes of encoded records.
    pub fn encoded_bytes(&self) -> usize {
        self.bytes
    }

    pub fn bits(&self) -> u8 {
        self.bits
    }

    /// One shard's records, sorted by digest; `None` if two have the same digest.
    pub(super) fn sorted(buf: &[u8]) -> Option<Vec<&[u8]>> {
        let mut recs: Vec<&[u8]> = records_of(buf).collect();
        sort_by_digest(&mut recs, 0);
        let dup = recs
            .windows(2)
            .any(|w| w.first().and_then(|a| a.get(..32)) == w.get(1).and_then(|b| b.get(..32)));
        (!dup).then_some(recs)
    }

    pub(super) fn has_duplicate_digest(&self) -> bool {
        self.shards.iter().any(|b| Self::sorted(b).is_none())
    }

    /// The shards of generation `gen`, in order: `emit(shard, blob)`.
    pub fn for_each_shard<E>(
        &self,
        gen: u64,
        mut emit: impl FnMut(u32, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut blob = Vec::new();
        for (shard, buf) in self.shards.iter().enumerate() {
            let recs = Self::sorted(buf).unwrap_or_default();
            blob.clear();
            blob.extend_from_slice(&gen.to_le_bytes());
            blob.extend_from_slice(&(recs.len() as u32).to_le_bytes());
            let mut off = BLOB_HEADER + recs.len() * 4;
            for r in &recs {
                blob.extend_from_slice(&(off as u32).to_le_bytes());
                off += r.len();
            }
            for r in &recs {
                blob.extend_from_slice(r);
            }
            emit(shard as u32, &blob)?;
        }
        Ok(())
    }
}

/// The records of a published shard blob of generation `gen` (see [`find_in_shard`]).
pub fn records_in_blob(blob: &[u8], gen: u64) -> Result<Vec<&[u8]>, DecodeError> {
    let mut c = Cursor(blob);
    if c.u64()? != gen {
        return Err(DecodeError::BadValue);
    }
    let count = u32::from_le_bytes(c.take(4)?.try_into().map_err(|_| DecodeError::Truncated)?);
    let offsets = c.take(count as usize * 4)?;
    let mut starts: Vec<usize> = offsets
        .chunks_exact(4)
        .map(|b| <[u8; 4]>::try_from(b).map_or(0, u32::from_le_bytes) as usize)
        .collect();
    starts.push(blob.len());
    starts
        .windows(2)
        .map(|w| match w {
            [start, end] => blob.get(*start..*end).ok_or(DecodeError::Truncated),
            _ => Err(DecodeError::Truncated),
        })
        .collect()
}

/// Sorts records by their digest, 8 bytes at a time from `word` on: by (that word, big-endian;
/// record index) with the same (u64, u32) sort the id check uses (one sort instance in the
/// .wasm), then each run that ties on it by the next word. O(n log n) per word whatever the
/// digests (an answer chooses them: a tie-breaking insertion pass would be quadratic).
fn sort_by_digest(recs: &mut [&[u8]], word: usize) {
    if recs.len() < 2 || word >= 4 {
        return;
    }
    let at = |r: &[u8]| {
        r.get(word * 8..word * 8 + 8)
            .and_then(|w| <[u8; 8]>::try_from(w).ok())
            .map_or(0, u64::from_be_bytes)
    };
    let mut order: Vec<(u64, u32)> = (0u32..).zip(recs.iter()).map(|(i, r)| (at(r), i)).collect();
    crate::keys::sort_numbered(&mut order);
    let sorted: Vec<&[u8]> = order
        .iter()
        .filter_map(|(_, i)| recs.get(*i as usize).copied())
        .collect();
    if sorted.len() != recs.len() {
        return;
    }
    recs.copy_from_slice(&sorted);
    let mut start = 0;
    for run in order.chunk_by(|a, b| a.0 == b.0) {
        if let Some(tied) = recs.get_mut(start..start + run.len()) {
            sort_by_digest(tied, word + 1);
        }
        start += run.len();
    }
}
