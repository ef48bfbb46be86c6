//! Key sets pulled from a key service (SPEC §4): parsing, validation, and the binary layout
//! they take in Envoy shared data. Pure: no proxy-wasm calls.
//!
//! Layout, once per Envoy process (shared data is per `vm_id`, shared by all workers):
//! - `keygate.ks.<slot>.<shard>`: one blob per shard, for slot 0 or 1 (double buffering). A
//!   key's shard is the top `bits` bits of its digest; a blob holds the generation it belongs
//!   to, a sorted offset table and the binary records (digest first). A request reads exactly
//!   one blob and binary-searches it.
//! - `keygate.ks.meta`: the published generation, its slot, `bits`, the version string.
//! - `keygate.ks.lease`: which VM fetches, until when, and when it last fetched.
//!
//! A new set is written into the other slot, then published by one compare-and-swap of the
//! meta entry. A reader whose cached meta is older than a blob it reads sees a generation
//! mismatch and re-reads the meta, so a request sees the old set or the new one, never a mix.

use crate::config::{read_key_entry, KeyContext};
use crate::ip::Cidr;
use crate::json_reader::{json_deserializer, q, ConfigError, Errors};
use crate::keys::{Digest, FastSet};
use crate::model::{Gate, KeyRecord, Limit, Per, Role};
use crate::path::Pattern;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::net::IpAddr;

pub const META_KEY: &str = "keygate.ks.meta";
pub const LEASE_KEY: &str = "keygate.ks.lease";
pub const VM_SEQ_KEY: &str = "keygate.ks.vmseq";
/// The fingerprint of the configuration the process runs now (see [`Lease::claim`]).
pub const CONFIG_KEY: &str = "keygate.ks.config";

pub fn shard_key(slot: u8, shard: u32) -> String {
    format!("keygate.ks.{slot}.{shard}")
}

/// At most this many errors of one fetch are kept (a broken million-key answer stays readable).
const MAX_ERRORS: usize = 20;
/// Aim for about this many keys per shard: a request copies one shard.
const KEYS_PER_SHARD: usize = 16;
const MAX_SHARD_BITS: u8 = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    Truncated,
    BadValue,
    /// The record names a role the current configuration does not define.
    UnknownRole,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DecodeError::Truncated => "record is truncated",
            DecodeError::BadValue => "record has an invalid value",
            DecodeError::UnknownRole => "record names a role this configuration does not define",
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Binary records

const F_REVOKED: u8 = 1;
const F_EXPIRES: u8 = 2;
const F_LIMITS: u8 = 4;
const F_IPS: u8 = 8;
const F_REFERERS: u8 = 16;
const F_PATHS: u8 = 32;
const F_ROLE: u8 = 64;
const F_ENV: u8 = 128;
const NONE16: u16 = u16::MAX;

fn put_str16(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => {
            let b = s.as_bytes();
            let n = b.len().min(usize::from(NONE16 - 1));
            out.extend_from_slice(&(n as u16).to_le_bytes());
            out.extend_from_slice(b.get(..n).unwrap_or_default());
        }
        None => out.extend_from_slice(&NONE16.to_le_bytes()),
    }
}

fn put_patterns(out: &mut Vec<u8>, patterns: &[Pattern]) {
    out.extend_from_slice(&(patterns.len().min(usize::from(u16::MAX)) as u16).to_le_bytes());
    for p in patterns.iter().take(usize::from(u16::MAX)) {
        match p {
            Pattern::Any => out.push(0),
            Pattern::Exact(s) => {
                out.push(1);
                put_str16(out, Some(s));
            }
            Pattern::Below(s) => {
                out.push(2);
                put_str16(out, Some(s));
            }
        }
    }
}

/// Appends the binary form of a validated record (digest first) to `out`.
pub fn encode_record(out: &mut Vec<u8>, digest: &Digest, rec: &KeyRecord, roles: &[Role]) {
    let role = rec.role.and_then(|r| roles.get(r)).map(|r| r.name.as_str());
    let mut flags = 0;
    for (on, bit) in [
        (rec.revoked, F_REVOKED),
        (rec.expires_at.is_some(), F_EXPIRES),
        (rec.rate_limits.is_some(), F_LIMITS),
        (rec.allowed_ips.is_some(), F_IPS),
        (rec.allowed_referers.is_some(), F_REFERERS),
        (rec.allowed_paths.is_some(), F_PATHS),
        (role.is_some(), F_ROLE),
        (rec.environment.is_some(), F_ENV),
    ] {
        if on {
            flags |= bit;
        }
    }
    out.extend_from_slice(digest);
    out.push(flags);
    put_str16(out, Some(&rec.id));
    put_str16(out, rec.name.as_deref());
    put_str16(out, rec.tenant.as_deref());
    if let Some(t) = rec.expires_at {
        out.extend_from_slice(&t.to_le_bytes());
    }
    if role.is_some() {
        put_str16(out, role);
    }
    if rec.environment.is_some() {
        put_str16(out, rec.environment.as_deref());
    }
    if let Some(limits) = &rec.rate_limits {
        // At most MAX_LIMITS (16) by validation, so the count fits a byte and nothing is cut.
        out.push(limits.len().min(usize::from(u8::MAX)) as u8);
        for l in limits.iter().take(usize::from(u8::MAX)) {
            out.extend_from_slice(&l.requests.to_le_bytes());
            out.push(l.per as u8);
        }
    }
    if let Some(ips) = &rec.allowed_ips {
        out.extend_from_slice(&(ips.len().min(usize::from(u16::MAX)) as u16).to_le_bytes());
        for c in ips.iter().take(usize::from(u16::MAX)) {
            let (net, bits) = c.parts();
            match net {
                IpAddr::V4(a) => {
                    out.push(4);
                    out.extend_from_slice(&a.octets());
                }
                IpAddr::V6(a) => {
                    out.push(6);
                    out.extend_from_slice(&a.octets());
                }
            }
            out.push(bits);
        }
    }
    if let Some(p) = &rec.allowed_referers {
        put_patterns(out, p);
    }
    if let Some(p) = &rec.allowed_paths {
        put_patterns(out, p);
    }
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?.first().copied().unwrap_or(0))
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes(
            b.try_into().map_err(|_| DecodeError::Truncated)?,
        ))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(
            b.try_into().map_err(|_| DecodeError::Truncated)?,
        ))
    }
    fn str16(&mut self) -> Result<Option<String>, DecodeError> {
        let n = self.u16()?;
        if n == NONE16 {
            return Ok(None);
        }
        let b = self.take(usize::from(n))?;
        String::from_utf8(b.to_vec())
            .map(Some)
            .map_err(|_| DecodeError::BadValue)
    }
    fn patterns(&mut self) -> Result<Vec<Pattern>, DecodeError> {
        let n = self.u16()?;
        let mut out = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            out.push(match self.u8()? {
                0 => Pattern::Any,
                1 => Pattern::Exact(self.str16()?.ok_or(DecodeError::BadValue)?),
                2 => Pattern::Below(self.str16()?.ok_or(DecodeError::BadValue)?),
                _ => return Err(DecodeError::BadValue),
            });
        }
        Ok(out)
    }
}

/// Decodes a record written by [`encode_record`]; its role is resolved against `roles`.
pub fn decode_record(bytes: &[u8], roles: &[Role]) -> Result<KeyRecord, DecodeError> {
    let mut c = Cursor(bytes);
    c.take(32)?;
    let flags = c.u8()?;
    let id = c
        .str16()?
        .filter(|id| !id.is_empty())
        .ok_or(DecodeError::BadValue)?;
    let name = c.str16()?;
    let tenant = c.str16()?;
    let expires_at = if flags & F_EXPIRES != 0 {
        Some(c.u64()? as i64)
    } else {
        None
    };
    let role = if flags & F_ROLE != 0 {
        let name = c.str16()?.ok_or(DecodeError::BadValue)?;
        Some(
            roles
                .iter()
                .position(|r| r.name == name)
                .ok_or(DecodeError::UnknownRole)?,
        )
    } else {
        None
    };
    let environment = if flags & F_ENV != 0 {
        Some(c.str16()?.ok_or(DecodeError::BadValue)?)
    } else {
        None
    };
    let rate_limits = if flags & F_LIMITS != 0 {
        let n = c.u8()?;
        let mut v = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            let requests = c.u64()?;
            let per = *Per::ALL
                .get(usize::from(c.u8()?))
                .ok_or(DecodeError::BadValue)?;
            v.push(Limit { requests, per });
        }
        Some(v)
    } else {
        None
    };
    let allowed_ips = if flags & F_IPS != 0 {
        let n = c.u16()?;
        let mut v = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            let net: IpAddr = match c.u8()? {
                4 => {
                    let b: [u8; 4] = c.take(4)?.try_into().map_err(|_| DecodeError::Truncated)?;
                    IpAddr::from(b)
                }
                6 => {
                    let b: [u8; 16] = c.take(16)?.try_into().map_err(|_| DecodeError::Truncated)?;
                    IpAddr::from(b)
                }
                _ => return Err(DecodeError::BadValue),
            };
            v.push(Cidr::from_parts(net, c.u8()?).ok_or(DecodeError::BadValue)?);
        }
        Some(v)
    } else {
        None
    };
    let allowed_referers = if flags & F_REFERERS != 0 {
        Some(c.patterns()?)
    } else {
        None
    };
    let allowed_paths = if flags & F_PATHS != 0 {
        Some(c.patterns()?)
    } else {
        None
    };
    // One spelling per record: nothing may follow it (found by fuzzing).
    if !c.0.is_empty() {
        return Err(DecodeError::BadValue);
    }
    Ok(KeyRecord {
        id,
        name,
        tenant,
        role,
        environment,
        revoked: flags & F_REVOKED != 0,
        expires_at,
        rate_limits,
        allowed_ips,
        allowed_referers,
        allowed_paths,
    })
}

// ---------------------------------------------------------------------------------------------
// Shards

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

const BLOB_HEADER: usize = 12;

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

// ---------------------------------------------------------------------------------------------
// Parsing a key-service answer

/// A validated key set, encoded and already split into shards as it is parsed (so a million
/// keys are held once, compactly, never as a JSON tree or a second copy).
#[derive(Debug, Default)]
pub struct ParsedSet {
    pub version: String,
    bits: u8,
    /// Per shard: its records in arrival order, each prefixed by its length (u32 LE).
    shards: Vec<Vec<u8>>,
    count: usize,
    bytes: usize,
}

/// Answers are at least this many bytes per key (`{"id":"a","sha256":"…64…"}`), so the body
/// size bounds the key count from above and fixes the shard count before parsing.
const MIN_ENTRY_BYTES: usize = 80;

impl ParsedSet {
    fn for_body_size(size: usize) -> Self {
        Self::for_keys(size / MIN_ENTRY_BYTES)
    }

    fn for_keys(n: usize) -> Self {
        let bits = shard_bits(n);
        ParsedSet {
            bits,
            shards: vec![Vec::new(); 1usize << bits],
            ..Default::default()
        }
    }

    fn push(&mut self, digest: &Digest, rec: &KeyRecord, roles: &[Role]) {
        let mut encoded = Vec::with_capacity(96);
        encode_record(&mut encoded, digest, rec, roles);
        self.push_encoded(&encoded);
    }

    /// Adds an encoded record (its digest first) to its shard.
    fn push_encoded(&mut self, rec: &[u8]) {
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
    fn sorted(buf: &[u8]) -> Option<Vec<&[u8]>> {
        let mut recs: Vec<&[u8]> = records_of(buf).collect();
        recs.sort_unstable_by(|a, b| a.get(..32).cmp(&b.get(..32)));
        let dup = recs
            .windows(2)
            .any(|w| w.first().and_then(|a| a.get(..32)) == w.get(1).and_then(|b| b.get(..32)));
        (!dup).then_some(recs)
    }

    fn has_duplicate_digest(&self) -> bool {
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

#[derive(Debug)]
pub enum Fetched {
    /// Same version as the one already published: nothing to do.
    Unchanged,
    Set(ParsedSet),
    /// Changes on top of the published version `since` (SPEC §4 delta answers).
    Delta(Delta),
}

/// A delta answer `{"version","since","upserts":[…],"removed":[ids…]}`, validated.
#[derive(Debug)]
pub struct Delta {
    pub version: String,
    pub since: String,
    /// The upserted entries, encoded (as a small set of their own).
    pub upserts: ParsedSet,
    /// Ids to drop: the removed ones and the upserted ones (their old records give way).
    pub drop_ids: FastSet<String>,
}

impl Delta {
    /// Starts the new set: feed it the published set's records with
    /// [`Applying::old_record`], then [`Applying::finish`].
    pub fn start(self, old_count: usize) -> Applying {
        let set = ParsedSet::for_keys(old_count + self.upserts.len());
        Applying { delta: self, set }
    }
}

/// A delta being applied to the published set.
pub struct Applying {
    delta: Delta,
    set: ParsedSet,
}

impl Applying {
    /// A record of the published set: kept unless its id is removed or upserted.
    pub fn old_record(&mut self, rec: &[u8]) {
        if record_id(rec).is_some_and(|id| !self.delta.drop_ids.contains(id)) {
            self.set.push_encoded(rec);
        }
    }

    /// The new set: the kept records and the upserts.
    pub fn finish(mut self) -> Result<ParsedSet, Vec<ConfigError>> {
        for buf in &self.delta.upserts.shards {
            for rec in records_of(buf) {
                self.set.push_encoded(rec);
            }
        }
        if self.set.has_duplicate_digest() {
            return Err(vec![ConfigError {
                path: "$.upserts".into(),
                message: "an upserted key (hash) is already in the set under another id".into(),
            }]);
        }
        self.set.version = self.delta.version;
        Ok(self.set)
    }
}

/// The id of an encoded record (after its digest and flags), without decoding the rest.
pub fn record_id(rec: &[u8]) -> Option<&str> {
    let len = u16::from_le_bytes(rec.get(33..35)?.try_into().ok()?);
    if len == NONE16 {
        return None;
    }
    std::str::from_utf8(rec.get(35..35 + usize::from(len))?).ok()
}

/// The records of a shard being built (each prefixed by its length).
fn records_of(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        let (len, tail) = rest.split_first_chunk::<4>()?;
        let (rec, tail) = tail.split_at_checked(u32::from_le_bytes(*len) as usize)?;
        rest = tail;
        Some(rec)
    })
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

struct Parse<'g> {
    gate: &'g Gate,
    ctx: KeyContext<'g>,
    inline_ids: FastSet<&'g str>,
    current: Option<&'g str>,
    version: Option<String>,
    unchanged: bool,
    saw_keys: bool,
    /// A delta answer: the version it applies to, and the ids it removes.
    since: Option<String>,
    removed: Option<Vec<String>>,
    saw_upserts: bool,
    set: ParsedSet,
    /// (hash of the id, entry index): sorted afterwards to find duplicate ids.
    ids: Vec<(u64, u32)>,
    errors: Errors,
}

fn id_hash(id: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut h);
    h.finish()
}

impl Parse<'_> {
    fn error(&mut self, path: &str, msg: impl Into<String>) {
        if self.errors.0.len() < MAX_ERRORS {
            self.errors.push(path, msg);
        }
    }

    fn entry(&mut self, field: &str, i: usize, value: &serde_json::Value) {
        let path = format!("$.{field}[{i}]");
        let mut errors = Errors::default();
        let parsed = read_key_entry(&path, value, &self.ctx, &mut errors);
        for e in errors.0 {
            self.error(&e.path, e.message);
        }
        let Some((digest, rec)) = parsed else { return };
        if self.inline_ids.contains(rec.id.as_str()) {
            return self.error(
                &format!("{path}.id"),
                format!("id {} is also configured inline", q(&rec.id)),
            );
        }
        if self.gate.keys.get(&digest).is_some() {
            return self.error(&path, "this key is also configured inline");
        }
        self.ids.push((id_hash(&rec.id), i as u32));
        self.set.push(&digest, &rec, &self.gate.roles);
    }
}

/// Visitor methods for the JSON types a visitor does not accept. serde's defaults would build
/// an `Unexpected` error whose formatting pulls float printing (~20 KB) into the .wasm.
macro_rules! wrong_types {
    ($msg:expr) => {
        fn visit_unit<E: de::Error>(self) -> Result<(), E> {
            Err(E::custom($msg))
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
            Err(E::custom($msg))
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
            Err(E::custom($msg))
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
            Err(E::custom($msg))
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
            Err(E::custom($msg))
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
            Err(E::custom($msg))
        }
    };
}

const TOP_EXPECTED: &str = "expected an object {\"version\": …, \"keys\": […]}";
const KEYS_EXPECTED: &str = "expected an array of key entries";

struct Top<'p, 'g>(&'p mut Parse<'g>);
/// The entries of `keys` or of a delta's `upserts`.
struct Keys<'p, 'g>(&'p mut Parse<'g>, &'static str);

impl<'de> DeserializeSeed<'de> for Top<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Top<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(TOP_EXPECTED)
    }
    wrong_types!(TOP_EXPECTED);
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(TOP_EXPECTED))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let p = self.0;
        // Keys and the version are read as `Value`s: typed reads would pull serde's
        // float-formatting error paths into the .wasm.
        while let Some(k) = map.next_key::<serde_json::Value>()? {
            match k.as_str().unwrap_or_default() {
                "version" => match map.next_value::<serde_json::Value>()? {
                    // It is sent back in If-None-Match, so it must be a valid header token.
                    serde_json::Value::String(v)
                        if v.is_empty()
                            || v.len() > 256
                            || !v.bytes().all(|b| (0x21..0x7f).contains(&b) && b != b'"') =>
                    {
                        p.error(
                            "$.version",
                            "must be 1-256 printable ASCII characters without spaces or '\"'",
                        )
                    }
                    serde_json::Value::String(v) => {
                        if !p.saw_keys && p.current == Some(v.as_str()) {
                            p.unchanged = true;
                        }
                        p.version = Some(v);
                    }
                    _ => p.error("$.version", "expected a string"),
                },
                "keys" if p.unchanged => {
                    map.next_value::<IgnoredAny>()?;
                    p.saw_keys = true;
                }
                "keys" => {
                    map.next_value_seed(Keys(&mut *p, "keys"))?;
                    p.saw_keys = true;
                }
                "since" => match map.next_value::<serde_json::Value>()? {
                    serde_json::Value::String(v) => p.since = Some(v),
                    _ => p.error("$.since", "expected a string"),
                },
                "upserts" => {
                    map.next_value_seed(Keys(&mut *p, "upserts"))?;
                    p.saw_upserts = true;
                }
                "removed" => match map.next_value::<serde_json::Value>()? {
                    serde_json::Value::Array(ids) => {
                        let mut out = Vec::with_capacity(ids.len());
                        for (i, id) in ids.into_iter().enumerate() {
                            match id {
                                serde_json::Value::String(id) => out.push(id),
                                _ => p.error(&format!("$.removed[{i}]"), "expected an id"),
                            }
                        }
                        p.removed = Some(out);
                    }
                    _ => p.error("$.removed", "expected an array of ids"),
                },
                other => {
                    p.error(&format!("$.{other}"), "unknown field");
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Keys<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Keys<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(KEYS_EXPECTED)
    }
    wrong_types!(KEYS_EXPECTED);
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(KEYS_EXPECTED))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        // One entry at a time: a million-key answer is never held as a JSON tree.
        while let Some(v) = seq.next_element::<serde_json::Value>()? {
            self.0.entry(self.1, i, &v);
            i += 1;
        }
        Ok(())
    }
}

/// Reads and validates a key-service answer `{"version":"…","keys":[…]}` from `reader`,
/// entries exactly as inline `keys`. `current` is the published version: if the answer has the
/// same version (and says so before its keys), the keys are skipped, not parsed.
/// Any error rejects the whole answer.
pub fn parse_key_set(
    reader: &mut dyn Read,
    size: usize,
    gate: &Gate,
    current: Option<&str>,
) -> Result<Fetched, Vec<ConfigError>> {
    let mut p = Parse {
        gate,
        ctx: KeyContext {
            roles: &gate.roles,
            prefixes: &gate.prefixes,
        },
        inline_ids: gate.keys.records().map(|r| r.id.as_str()).collect(),
        current,
        version: None,
        unchanged: false,
        saw_keys: false,
        since: None,
        removed: None,
        saw_upserts: false,
        set: ParsedSet::for_body_size(size),
        ids: Vec::new(),
        errors: Errors::default(),
    };
    let mut de = json_deserializer(reader);
    let parsed = Top(&mut p).deserialize(&mut de).and_then(|()| de.end());
    if let Err(e) = parsed {
        let mut errors = vec![ConfigError {
            path: "$".into(),
            message: format!("not a valid key-set answer: {e}"),
        }];
        errors.extend(p.errors.0);
        return Err(errors);
    }
    if p.version.is_none() {
        p.errors.push("$.version", "is required");
    }
    let delta = p.since.is_some() || p.saw_upserts || p.removed.is_some();
    match (delta, p.saw_keys) {
        (true, true) => p
            .errors
            .push("$", "has both \"keys\" and delta fields; give one"),
        (true, false) if p.since.is_none() => p.errors.push("$.since", "is required in a delta"),
        (false, false) => p.errors.push("$.keys", "is required"),
        _ => {}
    }
    if !p.errors.is_empty() {
        return Err(p.errors.0);
    }
    let version = p.version.unwrap_or_default();
    if current == Some(version.as_str()) {
        return Ok(Fetched::Unchanged);
    }
    // Ids are compared by a 64-bit hash: two different ids colliding (odds ~3e-8 for a
    // million ids) would be reported as a duplicate and the answer refused, never merged.
    p.ids.sort_unstable();
    if let Some(w) = p
        .ids
        .windows(2)
        .find(|w| w.first().map(|x| x.0) == w.get(1).map(|x| x.0))
    {
        let (first, second) = (w.first().map_or(0, |x| x.1), w.get(1).map_or(0, |x| x.1));
        let field = if delta { "upserts" } else { "keys" };
        return Err(vec![ConfigError {
            path: format!("$.{field}[{second}].id"),
            message: format!("duplicate id (the same as $.{field}[{first}].id)"),
        }]);
    }
    if p.set.has_duplicate_digest() {
        return Err(vec![ConfigError {
            path: "$.keys".into(),
            message: "duplicate key: the same key (hash) appears twice".into(),
        }]);
    }
    if delta {
        let mut drop_ids: FastSet<String> = p.removed.unwrap_or_default().into_iter().collect();
        for buf in &p.set.shards {
            drop_ids.extend(records_of(buf).filter_map(record_id).map(str::to_string));
        }
        return Ok(Fetched::Delta(Delta {
            version,
            since: p.since.unwrap_or_default(),
            upserts: p.set,
            drop_ids,
        }));
    }
    let mut set = p.set;
    set.version = version;
    Ok(Fetched::Set(set))
}

// ---------------------------------------------------------------------------------------------
// Meta and lease records

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::gate_from_value;
    use crate::keys::{digest, digest_hex};
    use serde_json::json;
    use std::collections::HashMap;

    fn gate() -> Gate {
        gate_from_value(&json!({
            "prefixes": [{"prefix": "sk_", "environment": "LIVE"}],
            "roles": {"reader": {"methods": ["GET"]}, "admin": {"methods": ["*"]}},
            "keys": [{"id": "inline_1", "sha256": digest_hex(b"sk_inline")}],
            "key_sync": {"cluster": "ks", "path": "/keys"}
        }))
        .unwrap()
    }

    fn answer(version: &str, keys: serde_json::Value) -> String {
        json!({"version": version, "keys": keys}).to_string()
    }

    fn set_of(g: &Gate, body: &str) -> ParsedSet {
        match parse_key_set(&mut body.as_bytes(), body.len(), g, None).unwrap() {
            Fetched::Set(s) => s,
            other => panic!("not a full set: {other:?}"),
        }
    }

    /// All shards of a set as a map, as they would sit in shared data.
    fn shards(set: &ParsedSet, gen: u64) -> (u8, HashMap<u32, Vec<u8>>) {
        let mut m = HashMap::new();
        set.for_each_shard::<()>(gen, |i, b| {
            m.insert(i, b.to_vec());
            Ok(())
        })
        .unwrap();
        (set.bits(), m)
    }

    fn lookup(
        g: &Gate,
        shards: &(u8, HashMap<u32, Vec<u8>>),
        gen: u64,
        key: &str,
    ) -> Option<KeyRecord> {
        let d = digest(key.as_bytes());
        let blob = &shards.1[&shard_of(&d, shards.0)];
        find_in_shard(blob, gen, &d)
            .unwrap()
            .map(|b| decode_record(b, &g.roles).unwrap())
    }

    fn delta_of(g: &Gate, body: &str) -> Delta {
        match parse_key_set(&mut body.as_bytes(), body.len(), g, Some("v1")).unwrap() {
            Fetched::Delta(d) => d,
            other => panic!("not a delta: {other:?}"),
        }
    }

    /// The set a delta makes of `old` (published as generation 1).
    fn applied(old: &ParsedSet, delta: Delta) -> Result<ParsedSet, Vec<ConfigError>> {
        let mut applying = delta.start(old.len());
        old.for_each_shard::<()>(1, |_, blob| {
            for rec in records_in_blob(blob, 1).unwrap() {
                applying.old_record(rec);
            }
            Ok(())
        })
        .unwrap();
        applying.finish()
    }

    #[test]
    fn delta_answers_apply_on_top_of_the_published_set() {
        let g = gate();
        let v1 = set_of(
            &g,
            &answer(
                "v1",
                json!([
                    {"id": "a", "key": "sk_a"},
                    {"id": "b", "key": "sk_b"},
                    {"id": "c", "key": "sk_c", "role": "reader"}
                ]),
            ),
        );
        let d = delta_of(
            &g,
            &json!({"version": "v2", "since": "v1",
                    "upserts": [{"id": "b", "key": "sk_b2"}, {"id": "a", "key": "sk_a", "revoked": true},
                                {"id": "d", "key": "sk_d"}],
                    "removed": ["c", "never-there"]})
            .to_string(),
        );
        assert_eq!(d.since, "v1");
        let v2 = applied(&v1, d).unwrap();
        assert_eq!((v2.version.as_str(), v2.len()), ("v2", 3));
        let sh = shards(&v2, 1);
        assert!(
            lookup(&g, &sh, 1, "sk_a").unwrap().revoked,
            "upsert replaces"
        );
        assert_eq!(
            lookup(&g, &sh, 1, "sk_b"),
            None,
            "a rolled key's old digest is gone"
        );
        assert_eq!(lookup(&g, &sh, 1, "sk_b2").unwrap().id, "b");
        assert_eq!(lookup(&g, &sh, 1, "sk_c"), None, "removed");
        assert_eq!(lookup(&g, &sh, 1, "sk_d").unwrap().id, "d");

        // An upsert whose key another id already holds is refused.
        let clash = delta_of(
            &g,
            &json!({"version": "v3", "since": "v1", "upserts": [{"id": "z", "key": "sk_a"}]})
                .to_string(),
        );
        assert!(applied(&v1, clash).is_err());
        // A delta with only removals, and malformed deltas.
        let only = delta_of(&g, r#"{"version":"v4","since":"v1","removed":["a"]}"#);
        assert_eq!(applied(&v1, only).unwrap().len(), 2);
        for bad in [
            r#"{"version":"v5","since":"v1","keys":[],"removed":[]}"#,
            r#"{"version":"v5","upserts":[]}"#,
            r#"{"version":"v5","since":"v1","removed":[1]}"#,
            r#"{"version":"v5","since":"v1","upserts":[{"id":"x","key":"sk_x"},{"id":"x","key":"sk_y"}]}"#,
            r#"{"version":"v5","since":"v1","upserts":[{"id":"inline_1","key":"sk_q"}]}"#,
        ] {
            assert!(
                parse_key_set(&mut bad.as_bytes(), bad.len(), &g, Some("v1")).is_err(),
                "{bad}"
            );
        }
    }

    /// Found by `make fuzz` (target `shard`): a record followed by a stray byte decoded, a
    /// record with an empty id decoded, and so did one flagged as having an environment that
    /// had none; none re-encodes to its bytes.
    #[test]
    fn records_have_one_spelling() {
        let mut crash = vec![8u8, 0, 0, 252, 252, 252, 1, 0, 0, 0, 0, 0, 0, 29];
        crash.extend([252u8; 18]);
        crash.extend([0u8; 8]);
        assert_eq!(decode_record(&crash, &[]), Err(DecodeError::BadValue));
        let mut rec = Vec::new();
        let k = KeyRecord {
            id: "k".into(),
            ..Default::default()
        };
        encode_record(&mut rec, &[7; 32], &k, &[]);
        assert_eq!(decode_record(&rec, &[]), Ok(k.clone()));
        rec.push(0);
        assert_eq!(decode_record(&rec, &[]), Err(DecodeError::BadValue));
        let mut empty_id = Vec::new();
        encode_record(
            &mut empty_id,
            &[7; 32],
            &KeyRecord {
                id: String::new(),
                ..k.clone()
            },
            &[],
        );
        assert_eq!(decode_record(&empty_id, &[]), Err(DecodeError::BadValue));
        // Flagged as having an environment (F_ENV), then the absent-string marker where it goes.
        let mut flagged = Vec::new();
        encode_record(&mut flagged, &[7; 32], &k, &[]);
        flagged[32] |= F_ENV;
        flagged.extend([255, 255]);
        assert_eq!(decode_record(&flagged, &[]), Err(DecodeError::BadValue));
    }

    #[test]
    fn records_round_trip() {
        let g = gate();
        let full = answer(
            "v1",
            json!([{
            "id": "k1", "key": "sk_full", "name": "Full", "tenant": "org", "role": "admin", "environment": "STAGING",
            "revoked": true, "expires_at": "2027-01-01T00:00:00Z",
            "rate_limits": [{"requests": 5, "per": "second"}, {"requests": 100, "per": "day"}],
            "allowed_ips": ["10.0.0.0/8", "2001:db8::/32"], "allowed_referers": ["https://a.example/*"],
            "allowed_paths": ["/v1/x", "/v1/y/*", "*"]
        }, {"id": "k2", "sha256": digest_hex(b"sk_min")}]),
        );
        let set = set_of(&g, &full);
        let sh = shards(&set, 7);
        let r = lookup(&g, &sh, 7, "sk_full").unwrap();
        let direct = read_key_entry(
            "$",
            &serde_json::from_str::<serde_json::Value>(&full).unwrap()["keys"][0],
            &KeyContext {
                roles: &g.roles,
                prefixes: &g.prefixes,
            },
            &mut Errors::default(),
        )
        .unwrap()
        .1;
        assert_eq!(
            r, direct,
            "a record decodes to exactly what inline parsing gives"
        );
        let m = lookup(&g, &sh, 7, "sk_min").unwrap();
        assert_eq!(
            (m.id.as_str(), m.name, m.role, m.rate_limits),
            ("k2", None, None, None)
        );
        assert!(lookup(&g, &sh, 7, "sk_other").is_none());
        // A role the configuration no longer defines fails closed.
        let other_roles = vec![];
        let d = digest(b"sk_full");
        let blob = &sh.1[&shard_of(&d, sh.0)];
        let rec = find_in_shard(blob, 7, &d).unwrap().unwrap();
        assert_eq!(
            decode_record(rec, &other_roles),
            Err(DecodeError::UnknownRole)
        );
        // A stale reader (another generation) is told so.
        assert_eq!(find_in_shard(blob, 8, &d), Err(DecodeError::BadValue));
        assert_eq!(
            find_in_shard(&blob[..5], 7, &d),
            Err(DecodeError::Truncated)
        );
    }

    #[test]
    fn large_sets_shard_and_every_key_is_found() {
        let g = gate();
        let keys: Vec<serde_json::Value> = (0..5000).map(|i| json!({"id": format!("k{i}"), "sha256": digest_hex(format!("sk_{i}").as_bytes())})).collect();
        let body = answer("big", json!(keys));
        let set = set_of(&g, &body);
        let sh = shards(&set, 1);
        assert_eq!(sh.0, shard_bits(body.len() / MIN_ENTRY_BYTES));
        assert!(sh.0 >= 8, "5000 keys spread over many shards");
        assert_eq!(
            sh.1.len(),
            1 << sh.0,
            "every shard is written, empty ones too"
        );
        for i in (0..5000).step_by(7) {
            assert_eq!(
                lookup(&g, &sh, 1, &format!("sk_{i}")).unwrap().id,
                format!("k{i}")
            );
        }
        assert!(lookup(&g, &sh, 1, "sk_nope").is_none());
        assert_eq!(shard_bits(10), 0);
        assert_eq!(shard_bits(1_000_000), 16);
    }

    #[test]
    fn bad_answers_are_rejected_whole() {
        let g = gate();
        let cases: Vec<(String, &str)> = vec![
            ("{not json".into(), "$"),
            (json!({"keys": []}).to_string(), "$.version"),
            (json!({"version": "1"}).to_string(), "$.keys"),
            (
                json!({"version": "1", "keys": [], "extra": 1}).to_string(),
                "$.extra",
            ),
            (
                answer("1", json!([{"id": "a", "sha256": "zz"}])),
                "$.keys[0].sha256",
            ),
            (
                answer(
                    "1",
                    json!([{"id": "a", "sha256": digest_hex(b"sk_a"), "role": "ghost"}]),
                ),
                "$.keys[0].role",
            ),
            (
                answer(
                    "1",
                    json!([{"id": "a", "sha256": digest_hex(b"sk_a")}, {"id": "a", "sha256": digest_hex(b"sk_b")}]),
                ),
                "$.keys[1].id",
            ),
            (
                answer(
                    "1",
                    json!([{"id": "a", "sha256": digest_hex(b"sk_a")}, {"id": "b", "sha256": digest_hex(b"sk_a")}]),
                ),
                "$.keys",
            ),
            (
                answer(
                    "1",
                    json!([{"id": "inline_1", "sha256": digest_hex(b"sk_z")}]),
                ),
                "$.keys[0].id",
            ),
            (
                answer(
                    "1",
                    json!([{"id": "z", "sha256": digest_hex(b"sk_inline")}]),
                ),
                "$.keys[0]",
            ),
        ];
        for (body, path) in cases {
            let errs = parse_key_set(&mut body.as_bytes(), body.len(), &g, None).unwrap_err();
            assert!(
                errs.iter().any(|e| e.path == path),
                "{body}: expected an error at {path}, got {errs:?}"
            );
        }
    }

    #[test]
    fn an_unchanged_version_is_not_parsed() {
        let g = gate();
        // Version first: the (invalid!) keys are skipped, not parsed.
        let body = r#"{"version":"v7","keys":[{"bogus":true}]}"#;
        assert!(matches!(
            parse_key_set(&mut body.as_bytes(), body.len(), &g, Some("v7")),
            Ok(Fetched::Unchanged)
        ));
        assert!(parse_key_set(&mut body.as_bytes(), body.len(), &g, Some("v6")).is_err());
        let body = answer("v7", json!([]));
        assert!(matches!(
            parse_key_set(&mut body.as_bytes(), body.len(), &g, Some("v7")),
            Ok(Fetched::Unchanged)
        ));
    }

    #[test]
    fn meta_and_lease() {
        let m0 = Meta::default();
        let set = ParsedSet {
            version: "v1".into(),
            ..Default::default()
        };
        let m1 = m0.next(&set, 100, 7);
        assert_eq!((m1.gen, m1.slot, m1.stale_shards), (1, 0, 0));
        let set3 = ParsedSet {
            bits: 3,
            ..Default::default()
        };
        let m2 = m1.next(&set3, 110, 7);
        assert_eq!((m2.gen, m2.slot, m2.bits, m2.stale_shards), (2, 1, 3, 1));
        assert_eq!(Meta::decode(&m2.encode()), Ok(m2.clone()));
        assert_eq!(m2.next(&set, 120, 7).slot, 0);

        let free = Lease::default();
        let (a, b) = (11, 22); // two configurations
        let mine = free.claim(1, a, a, 1000, 10, 2).unwrap();
        assert_eq!(
            mine,
            Lease {
                owner: 1,
                expires: 1014,
                last_fetch: 1000,
                config: a
            }
        );
        assert_eq!(mine.claim(2, a, a, 1005, 10, 2), None, "held by another VM");
        assert_eq!(
            mine.claim(1, a, a, 1005, 10, 2),
            None,
            "not yet an interval"
        );
        assert_eq!(
            mine.claim(1, a, a, 1010, 10, 2).map(|l| l.last_fetch),
            Some(1010),
            "the holder renews"
        );
        assert_eq!(
            mine.claim(2, a, a, 1014, 10, 2).map(|l| l.owner),
            Some(2),
            "an expired lease is taken over"
        );
        // After a reload to configuration b: the old configuration's VMs stop fetching, and a
        // VM of the new one takes over at once.
        assert_eq!(mine.claim(1, a, b, 1010, 10, 2), None);
        assert_eq!(
            mine.claim(3, b, b, 1001, 10, 2)
                .map(|l| (l.owner, l.config)),
            Some((3, b))
        );
        assert_eq!(Lease::decode(&mine.encode()), Ok(mine));
    }
}
