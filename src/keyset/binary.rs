//! The compact key-set answer keygate's own key service offers by content negotiation
//! (`Accept: application/vnd.keygate.keyset.v1`): the records already in the binary form they
//! take in shared data, so a million-key set is read without a JSON parser. JSON stays the
//! default for every other key service.
//!
//! Layout (integers little-endian): the 8 bytes `KGKSET1\n`; the version (`u16` length, then
//! its bytes, the same rules as JSON's `version`); the record count (`u32`); then each record
//! as `u32` length and [`encode_record`]'s bytes (digest first). Every record is decoded and
//! held to the rules a JSON entry is ([`crate::config::check_record`]): a binary answer is
//! trusted no more than a JSON one, and any error refuses the whole answer.

use super::*;
use crate::config::check_record;
use crate::json::Source;

pub const BINARY_MEDIA_TYPE: &str = "application/vnd.keygate.keyset.v1";
const MAGIC: &[u8; 8] = b"KGKSET1\n";
/// The least a record takes (length, digest, flags, a 1-character id, no name, no tenant):
/// bounds the count an answer of a given size can claim.
const MIN_RECORD_BYTES: usize = 4 + 32 + 1 + 3 + 2 + 2;

/// The compact answer for `version` and `records` (digest, validated record).
pub fn encode_binary_set<'a>(
    version: &str,
    records: impl ExactSizeIterator<Item = (&'a Digest, &'a KeyRecord)>,
    roles: &[Role],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + version.len() + records.len() * 64);
    out.extend_from_slice(MAGIC);
    put_str16(&mut out, Some(version));
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    for (digest, rec) in records {
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        encode_record(&mut out, digest, rec, roles);
        let len = (out.len() - at - 4) as u32;
        if let Some(prefix) = out.get_mut(at..at + 4) {
            prefix.copy_from_slice(&len.to_le_bytes());
        }
    }
    out
}

/// Reads a source of known size in chunks and hands out byte runs of a requested length.
struct Chunks<'s> {
    src: &'s mut dyn Source,
    buf: Vec<u8>,
    at: usize,
    /// Bytes of the source not read yet: no run is longer than what is left (a hostile
    /// length never sizes a buffer; found by fuzzing).
    left: usize,
}

const CHUNK: usize = 256 * 1024;

impl Chunks<'_> {
    /// The next `n` bytes; `None` if the source ends first.
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let buffered = self.buf.len() - self.at;
        if buffered < n {
            if n - buffered > self.left {
                return None;
            }
            self.buf.drain(..self.at);
            self.at = 0;
            while self.buf.len() < n {
                let have = self.buf.len();
                let want = CHUNK.max(n - have).min(self.left);
                self.buf.resize(have + want, 0);
                let got = self.src.read(self.buf.get_mut(have..)?).unwrap_or(0);
                self.buf.truncate(have + got);
                self.left = self.left.saturating_sub(got);
                if got == 0 {
                    return None;
                }
            }
        }
        let run = self.buf.get(self.at..self.at + n)?;
        self.at += n;
        Some(run)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn at_end(&mut self) -> bool {
        self.take(1).is_none()
    }
}

fn fatal(message: &str) -> Vec<ConfigError> {
    vec![ConfigError {
        path: "$".into(),
        message: format!("not a valid binary key-set answer: {message}"),
    }]
}

/// Reads and validates a compact answer of `size` bytes; the same outcomes as
/// [`parse_key_set`] for a full set (`Unchanged` when its version is `current`).
pub fn parse_binary_set(
    src: &mut dyn Source,
    size: usize,
    gate: &Gate,
    current: Option<&str>,
) -> Result<Fetched, Vec<ConfigError>> {
    let mut r = Chunks {
        src,
        buf: Vec::new(),
        at: 0,
        left: size,
    };
    if r.take(MAGIC.len()) != Some(&MAGIC[..]) {
        return Err(fatal("it does not start with KGKSET1"));
    }
    let Some(version) = r.u16().and_then(|n| {
        let v = std::str::from_utf8(r.take(usize::from(n))?).ok()?;
        Some(v.to_string())
    }) else {
        return Err(fatal("its version is cut short or not UTF-8"));
    };
    if !valid_version(&version) {
        return Err(vec![ConfigError {
            path: "$.version".into(),
            message: VERSION_RULE.into(),
        }]);
    }
    if current == Some(version.as_str()) {
        return Ok(Fetched::Unchanged);
    }
    let Some(count) = r.u32().map(|n| n as usize) else {
        return Err(fatal("the record count is missing"));
    };
    if count > size / MIN_RECORD_BYTES {
        return Err(fatal("it claims more records than its size can hold"));
    }
    let inline_ids: FastSet<&str> = gate.keys.records().map(|r| r.id.as_str()).collect();
    let mut set = ParsedSet::for_keys(count);
    let mut ids: Vec<(u64, u32)> = Vec::with_capacity(count);
    let mut errors = Errors::default();
    let mut error = |i: usize, field: &str, message: String| {
        if errors.0.len() < MAX_ERRORS {
            let dot = if field.is_empty() { "" } else { "." };
            errors.push(&format!("$.keys[{i}]{dot}{field}"), message);
        }
    };
    for i in 0..count {
        let Some(rec) = r.u32().and_then(|n| r.take(n as usize)) else {
            return Err(fatal(&format!("record {i} is cut short")));
        };
        let record = match decode_record(rec, &gate.roles) {
            Ok(record) => record,
            Err(e) => {
                error(i, "", e.to_string());
                continue;
            }
        };
        if let Err((field, why)) = check_record(&record) {
            error(i, field, why);
            continue;
        }
        if inline_ids.contains(record.id.as_str()) {
            error(
                i,
                "id",
                format!("id {} is also configured inline", q(&record.id)),
            );
            continue;
        }
        let Some(digest) = rec.first_chunk::<32>() else {
            continue;
        };
        if gate.keys.get(digest).is_some() {
            error(i, "", "this key is also configured inline".into());
            continue;
        }
        ids.push((id_hash(&record.id), i as u32));
        set.push_encoded(rec);
    }
    if !r.at_end() {
        return Err(fatal("bytes follow the last record"));
    }
    if !errors.is_empty() {
        return Err(errors.0);
    }
    if let Some((first, second)) = duplicate_id(&mut ids) {
        return Err(vec![ConfigError {
            path: format!("$.keys[{second}].id"),
            message: format!("duplicate id (the same as $.keys[{first}].id)"),
        }]);
    }
    if set.has_duplicate_digest() {
        return Err(vec![ConfigError {
            path: "$.keys".into(),
            message: "duplicate key: the same key (hash) appears twice".into(),
        }]);
    }
    set.version = version;
    Ok(Fetched::Set(set))
}

#[cfg(test)]
mod tests {
    use super::super::tests::gate;
    use super::*;
    use crate::config::{read_key_entry, KeyContext};
    use crate::keys::digest;
    use serde_json::json;

    fn entries() -> serde_json::Value {
        json!([
            {"id": "a", "key": "sk_a", "name": "Ä \"quoted\"", "tenant": "org_1"},
            {"id": "b.c:d-e_f", "key": "sk_b", "role": "reader", "environment": "EU",
             "expires_at": "2030-01-01T00:00:00Z", "revoked": true},
            {"id": "lim", "key": "sk_lim", "rate_limits": [{"requests": 5, "per": "second"},
                                                          {"requests": 100, "per": "day"}]},
            {"id": "restricted", "key": "sk_r", "allowed_ips": ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"],
             "allowed_referers": ["https://app.example.com/*", "https://shop.example.com/checkout", "*"],
             "allowed_paths": ["/v1/users/*", "/v1/x", "/*"]},
            {"id": "empty_lists", "key": "sk_e", "allowed_paths": [], "rate_limits": []},
            {"id": "cr_month", "key": "sk_cm", "role": "reader", "credits": {"granted": 10000,
             "refill": {"interval": "month", "day": 31}, "top_up": {"period": 1764547200, "amount": -250},
             "serial": 4294967295u64}},
            {"id": "cr_once", "key": "sk_co", "credits": {"granted": 0}},
            {"id": "cr_day", "key": "sk_cd", "credits": {"granted": 5, "refill": {"interval": "day"},
             "top_up": {"period": 0, "amount": 9007199254740991u64}}}
        ])
    }

    /// The records a JSON answer's entries make (what the key service encodes).
    fn records(g: &Gate, entries: &serde_json::Value) -> Vec<(Digest, KeyRecord)> {
        let ctx = KeyContext {
            roles: &g.roles,
            prefixes: &g.prefixes,
        };
        entries
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let v = crate::json::Value::from(e.clone());
                read_key_entry("$", &v, &ctx, &mut Errors::default()).unwrap()
            })
            .collect()
    }

    fn binary(version: &str, recs: &[(Digest, KeyRecord)], roles: &[Role]) -> Vec<u8> {
        encode_binary_set(version, recs.iter().map(|(d, r)| (d, r)), roles)
    }

    fn parse(g: &Gate, body: &[u8]) -> Result<Fetched, Vec<ConfigError>> {
        parse_binary_set(&mut &body[..], body.len(), g, Some("v0"))
    }

    fn blobs(set: &ParsedSet) -> Vec<(u32, Vec<u8>)> {
        let mut out = vec![];
        set.for_each_shard::<()>(1, |i, b| {
            out.push((i, b.to_vec()));
            Ok(())
        })
        .unwrap();
        out
    }

    /// A source that hands out one byte at a time (the call body comes in chunks).
    struct Trickle<'a>(&'a [u8]);
    impl Source for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> Option<usize> {
            let (first, rest) = self.0.split_first()?;
            *buf.first_mut()? = *first;
            self.0 = rest;
            Some(1)
        }
    }

    #[test]
    fn the_compact_answer_makes_the_same_shards_as_the_json_one() {
        let g = gate();
        let json_body = json!({"version": "v7", "keys": entries()}).to_string();
        let Ok(Fetched::Set(from_json)) =
            parse_key_set(&mut json_body.as_bytes(), json_body.len(), &g, None)
        else {
            panic!("the JSON answer is valid");
        };
        let body = binary("v7", &records(&g, &entries()), &g.roles);
        assert!(body.len() < json_body.len());
        for parsed in [
            parse(&g, &body),
            parse_binary_set(&mut Trickle(&body), body.len(), &g, None),
        ] {
            let Ok(Fetched::Set(set)) = parsed else {
                panic!("the compact answer is valid: {parsed:?}");
            };
            assert_eq!(set.version, "v7");
            assert_eq!(set.len(), 8);
            assert_eq!(blobs(&set), blobs(&from_json));
        }
        // The published version again: nothing parsed.
        assert!(matches!(
            parse_binary_set(&mut &body[..], body.len(), &g, Some("v7")),
            Ok(Fetched::Unchanged)
        ));
        // An empty set is a set.
        let empty = binary("v8", &[], &g.roles);
        assert!(matches!(parse(&g, &empty), Ok(Fetched::Set(s)) if s.is_empty()));
    }

    /// Every record of a set, sorted (sets of one size may shard differently by form).
    fn all_records(set: &ParsedSet) -> Vec<Vec<u8>> {
        let mut out = vec![];
        set.for_each_shard::<()>(1, |_, blob| {
            out.extend(
                records_in_blob(blob, 1)
                    .unwrap()
                    .into_iter()
                    .map(<[u8]>::to_vec),
            );
            Ok(())
        })
        .unwrap();
        out.sort();
        out
    }

    #[test]
    fn a_larger_compact_answer_holds_the_same_records_as_the_json_one() {
        let g = gate();
        let entries: Vec<serde_json::Value> = (0..300)
            .map(|i| {
                json!({"id": format!("k{i}"), "key": format!("sk_{i}"), "tenant": format!("org_{}", i % 7),
                       "rate_limits": [{"requests": i + 1, "per": "hour"}]})
            })
            .collect();
        let entries = serde_json::Value::Array(entries);
        let json_body = json!({"version": "big", "keys": entries}).to_string();
        let Ok(Fetched::Set(from_json)) =
            parse_key_set(&mut json_body.as_bytes(), json_body.len(), &g, None)
        else {
            panic!("the JSON answer is valid");
        };
        let body = binary("big", &records(&g, &entries), &g.roles);
        let Ok(Fetched::Set(compact)) = parse(&g, &body) else {
            panic!("the compact answer is valid");
        };
        assert_eq!(compact.len(), 300);
        assert_eq!(all_records(&compact), all_records(&from_json));
    }

    fn refused(g: &Gate, body: &[u8]) -> Vec<String> {
        match parse(g, body) {
            Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
            Ok(other) => panic!("accepted: {other:?}"),
        }
    }

    fn one(id: &str, key: &str) -> (Digest, KeyRecord) {
        (
            digest(key.as_bytes()),
            KeyRecord {
                id: id.into(),
                ..Default::default()
            },
        )
    }

    #[test]
    fn a_compact_answer_is_held_to_the_rules_of_a_json_one() {
        let g = gate();
        let good = binary("v1", &[one("a", "sk_a")], &g.roles);
        let starts = |errors: Vec<String>, want: &str| {
            assert!(
                errors.iter().any(|e| e.starts_with(want)),
                "{want:?} not in {errors:?}"
            );
        };
        starts(
            refused(&g, b"{\"version\":\"v1\",\"keys\":[]}"),
            "$: not a valid binary key-set answer",
        );
        starts(
            refused(&g, &good[..good.len() - 1]),
            "$: not a valid binary key-set answer: record 0 is cut short",
        );
        let mut trailing = good.clone();
        trailing.push(0);
        starts(
            refused(&g, &trailing),
            "$: not a valid binary key-set answer: bytes follow",
        );
        let mut many = good.clone();
        let at = MAGIC.len() + 2 + 2;
        many[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        starts(
            refused(&g, &many),
            "$: not a valid binary key-set answer: it claims more",
        );
        // A record length beyond the answer: refused, no buffer of that size (fuzzing found it).
        let mut long = good.clone();
        let at = MAGIC.len() + 2 + 2 + 4;
        long[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        starts(
            refused(&g, &long),
            "$: not a valid binary key-set answer: record 0 is cut short",
        );
        starts(
            refused(&g, &binary("has space", &[one("a", "sk_a")], &g.roles)),
            "$.version",
        );

        let bad = |edit: fn(&mut KeyRecord)| {
            let (d, mut r) = one("a", "sk_a");
            edit(&mut r);
            binary("v1", &[one("ok", "sk_ok"), (d, r)], &g.roles)
        };
        starts(refused(&g, &bad(|r| r.id = "a b".into())), "$.keys[1].id");
        starts(refused(&g, &bad(|r| r.id = String::new())), "$.keys[1]");
        starts(
            refused(&g, &bad(|r| r.tenant = Some("org\n1".into()))),
            "$.keys[1].tenant",
        );
        starts(
            refused(&g, &bad(|r| r.environment = Some(" EU".into()))),
            "$.keys[1].environment",
        );
        starts(
            refused(&g, &bad(|r| r.expires_at = Some(-1))),
            "$.keys[1].expires_at",
        );
        starts(
            refused(
                &g,
                &bad(|r| {
                    r.rate_limits = Some(vec![Limit {
                        requests: 0,
                        per: Per::Day,
                    }])
                }),
            ),
            "$.keys[1].rate_limits",
        );
        starts(
            refused(
                &g,
                &bad(|r| r.allowed_paths = Some(vec![Pattern::Exact("/a/../b".into())])),
            ),
            "$.keys[1].allowed_paths",
        );
        starts(
            refused(
                &g,
                &bad(|r| r.allowed_referers = Some(vec![Pattern::Exact("/not-a-url".into())])),
            ),
            "$.keys[1].allowed_referers",
        );
        // A role this configuration does not define.
        let mut roles = g.roles.clone();
        roles.push(Role {
            name: "ghost".into(),
            ..g.roles[0].clone()
        });
        let (d, mut r) = one("a", "sk_a");
        r.role = Some(roles.len() - 1);
        starts(
            refused(&g, &binary("v1", &[(d, r)], &roles)),
            "$.keys[0]: record names a role",
        );
        // Inline ids and keys, duplicate ids and digests.
        starts(
            refused(&g, &binary("v1", &[one("inline_1", "sk_x")], &g.roles)),
            "$.keys[0].id",
        );
        starts(
            refused(&g, &binary("v1", &[one("x", "sk_inline")], &g.roles)),
            "$.keys[0]: this key is also configured inline",
        );
        starts(
            refused(
                &g,
                &binary("v1", &[one("a", "sk_a"), one("a", "sk_b")], &g.roles),
            ),
            "$.keys[1].id: duplicate id",
        );
        starts(
            refused(
                &g,
                &binary("v1", &[one("a", "sk_a"), one("b", "sk_a")], &g.roles),
            ),
            "$.keys: duplicate key",
        );
    }
}
