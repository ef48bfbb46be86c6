//! Which set is published (meta) and which VM fetches (lease).

use super::*;

/// What is published: generation 0 means nothing yet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    pub gen: u64,
    pub slot: u8,
    pub bits: u8,
    pub count: u32,
    pub published_at: u64,
    /// Shards of the other slot that still hold an older set (to be cleared).
    pub stale_shards: u32,
    /// Fingerprint of the configuration whose fetch published it: deltas are asked for only
    /// by that configuration (another may fetch from another key service).
    pub config: u64,
    pub version: String,
}

impl Meta {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.version.len());
        out.extend_from_slice(&self.gen.to_le_bytes());
        out.push(self.slot);
        out.push(self.bits);
        out.extend_from_slice(&self.count.to_le_bytes());
        out.extend_from_slice(&self.published_at.to_le_bytes());
        out.extend_from_slice(&self.stale_shards.to_le_bytes());
        out.extend_from_slice(&self.config.to_le_bytes());
        put_str16(&mut out, Some(&self.version));
        out
    }

    pub fn decode(b: &[u8]) -> Result<Meta, DecodeError> {
        let mut c = Cursor(b);
        let gen = c.u64()?;
        let slot = c.u8()?;
        let bits = c.u8()?;
        let count = u32::from_le_bytes(c.take(4)?.try_into().map_err(|_| DecodeError::Truncated)?);
        let published_at = c.u64()?;
        let stale_shards =
            u32::from_le_bytes(c.take(4)?.try_into().map_err(|_| DecodeError::Truncated)?);
        let config = c.u64()?;
        let version = c.str16()?.unwrap_or_default();
        if slot > 1 || bits > MAX_SHARD_BITS {
            return Err(DecodeError::BadValue);
        }
        Ok(Meta {
            gen,
            slot,
            bits,
            count,
            published_at,
            stale_shards,
            config,
            version,
        })
    }

    /// The meta after publishing `set` (written into the other slot) at `now`.
    pub fn next(&self, set: &ParsedSet, now: u64, config: u64) -> Meta {
        Meta {
            config,
            gen: self.gen + 1,
            slot: if self.gen == 0 { 0 } else { 1 - self.slot },
            bits: set.bits,
            count: set.len() as u32,
            published_at: now,
            stale_shards: if self.gen == 0 { 0 } else { 1u32 << self.bits },
            version: set.version.clone(),
        }
    }
}

/// Who fetches: one VM per Envoy process at a time, running the newest configuration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lease {
    pub owner: u64,
    pub expires: u64,
    pub last_fetch: u64,
    /// Fingerprint of the holder's plugin configuration.
    pub config: u64,
}

impl Lease {
    pub fn encode(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (chunk, v) in
            out.chunks_exact_mut(8)
                .zip([self.owner, self.expires, self.last_fetch, self.config])
        {
            chunk.copy_from_slice(&v.to_le_bytes());
        }
        out
    }

    pub fn decode(b: &[u8]) -> Result<Lease, DecodeError> {
        let mut c = Cursor(b);
        Ok(Lease {
            owner: c.u64()?,
            expires: c.u64()?,
            last_fetch: c.u64()?,
            config: c.u64()?,
        })
    }

    /// The lease VM `me` (running configuration `config`) should write to fetch now, or `None`
    /// if it is not its turn. `current` is the configuration the process runs now: a VM of a
    /// superseded configuration (a listener still draining after a reload) never fetches, and
    /// a lease held under a superseded configuration is taken over at once. Otherwise another
    /// VM's unexpired lease, or a fetch less than an interval ago, means wait.
    pub fn claim(
        &self,
        me: u64,
        config: u64,
        current: u64,
        now: u64,
        interval: u64,
        timeout_s: u64,
    ) -> Option<Lease> {
        if config != current {
            return None;
        }
        if self.config == current {
            if self.owner != me && self.expires > now {
                return None;
            }
            if now < self.last_fetch.saturating_add(interval) {
                return None;
            }
        }
        Some(Lease {
            owner: me,
            expires: now + interval + timeout_s + 2,
            last_fetch: now,
            config,
        })
    }
}

/// A fingerprint of a plugin configuration (the same bytes give the same value in every VM).
pub fn config_fingerprint(bytes: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}
