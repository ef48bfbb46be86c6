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
//!
//! The steps, one file each: `records.rs` (a key's binary record), `shards.rs` (a set split into
//! shard blobs), `answer.rs` (a key-service answer: a full set, or a delta applied on top of the
//! published one), `binary.rs` (the compact full-set answer keygate's key service offers),
//! `lease.rs` (the meta and lease records).

use crate::config::{read_key_entry, KeyContext};
use crate::ip::Cidr;
use crate::json::{Parser, Source, SyntaxError, Value};
use crate::json_reader::{q, ConfigError, Errors};
use crate::keys::{Digest, FastMap, FastSet};
use crate::model::{Credits, Gate, KeyRecord, Limit, Per, Refill, Role};
use crate::path::Pattern;
use std::fmt;
use std::hash::{Hash, Hasher};
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

mod answer;
mod binary;
mod lease;
mod records;
mod shards;

pub use answer::*;
pub use binary::*;
pub use lease::*;
pub use records::*;
pub use shards::*;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::gate_from_value;
    use crate::keys::{digest, digest_hex};
    use serde_json::json;
    use std::collections::HashMap;

    /// A configuration with a prefix, two roles, an inline key and key_sync (the binary
    /// answer's tests use it too).
    pub(super) fn gate() -> Gate {
        gate_from_value(&crate::json::Value::from(json!({
            "prefixes": [{"prefix": "sk_", "environment": "LIVE"}],
            "roles": {"reader": {"methods": ["GET"]}, "admin": {"methods": ["*"]}},
            "keys": [{"id": "inline_1", "sha256": digest_hex(b"sk_inline")}],
            "key_sync": {"cluster": "ks", "path": "/keys"}
        })))
        .unwrap()
    }

    /// A valid key entry's record, read as inline keys and answers are.
    fn entry(g: &Gate, v: &crate::json::Value) -> KeyRecord {
        let ctx = KeyContext {
            roles: &g.roles,
            prefixes: &g.prefixes,
        };
        read_key_entry("$", v, &ctx, &mut Errors::default())
            .unwrap()
            .1
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
        // The credits section: its tag, a known refill kind, whole.
        let mut credited = Vec::new();
        let c = KeyRecord {
            credits: Some(Credits {
                granted: 1,
                refill: Some(Refill::Day),
                top_up: None,
                serial: 0,
            }),
            ..k.clone()
        };
        encode_record(&mut credited, &[7; 32], &c, &[]);
        assert_eq!(decode_record(&credited, &[]), Ok(c));
        let at = rec.len() - 1; // where the section starts (`rec` had one stray byte pushed)
                                // (tag 2, a tenant's balance, on a key without a tenant; tag 4, none; a bad refill)
        for (i, bad) in [(at, 2), (at, 4), (at + 9, 3), (at + 10, 1)] {
            let mut b = credited.clone();
            b[i] = bad;
            assert_eq!(
                decode_record(&b, &[]),
                Err(DecodeError::BadValue),
                "byte {i}"
            );
        }
        credited.pop();
        assert_eq!(decode_record(&credited, &[]), Err(DecodeError::Truncated));
        // A top-up JSON would refuse is refused here too; a partial one is truncated.
        let topped = |amount: i64| {
            let mut b = Vec::new();
            let k = KeyRecord {
                credits: Some(Credits {
                    granted: 1,
                    refill: None,
                    top_up: Some((5, amount)),
                    serial: 2,
                }),
                ..k.clone()
            };
            encode_record(&mut b, &[7; 32], &k, &[]);
            (b, k)
        };
        let (b, k2) = topped(-(1 << 52));
        assert_eq!(decode_record(&b, &[]), Ok(k2));
        assert_eq!(
            decode_record(&topped(1 << 53).0, &[]),
            Err(DecodeError::BadValue)
        );
        assert_eq!(
            decode_record(&topped(i64::MIN).0, &[]),
            Err(DecodeError::BadValue)
        );
        assert_eq!(
            decode_record(&b[..b.len() - 1], &[]),
            Err(DecodeError::Truncated)
        );
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
            "allowed_paths": ["/v1/x", "/v1/y/*", "*"],
            "credits": {"granted": 7, "refill": {"interval": "month", "day": 15},
                        "top_up": {"period": 1765756800, "amount": -2}, "serial": 3},
            "tenant_credits": {"granted": 100, "top_up": {"period": 0, "amount": 5}}
        }, {"id": "k2", "sha256": digest_hex(b"sk_min")}]),
        );
        let set = set_of(&g, &full);
        let sh = shards(&set, 7);
        let r = lookup(&g, &sh, 7, "sk_full").unwrap();
        let direct = entry(
            &g,
            &(&serde_json::from_str::<serde_json::Value>(&full).unwrap()["keys"][0]).into(),
        );
        assert_eq!(
            r, direct,
            "a record decodes to exactly what inline parsing gives"
        );
        assert_eq!(
            r.credits,
            Some(Credits {
                granted: 7,
                refill: Some(Refill::Month { day: 15 }),
                top_up: Some((1_765_756_800, -2)),
                serial: 3
            })
        );
        assert_eq!(
            r.tenant_credits,
            Some(Credits {
                granted: 100,
                refill: None,
                top_up: Some((0, 5)),
                serial: 0
            })
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
    fn digests_that_tie_in_their_first_bytes_are_still_in_order_and_found() {
        let g = gate();
        let mut set = ParsedSet::for_keys(6);
        // Pushed in descending order; all share the first 8 bytes, some the first 24 or 31.
        let mut digests: Vec<Digest> = [9u8, 7, 5, 3, 1]
            .iter()
            .map(|last| {
                let mut d = [0xab; 32];
                d[31] = *last;
                d[12] = last / 4;
                d[20] = last / 6;
                d
            })
            .collect();
        digests.push([0x01; 32]);
        for (i, d) in digests.iter().enumerate() {
            let rec = entry(
                &g,
                &crate::json::json!({"id": format!("t{i}"), "sha256": "0".repeat(64)}),
            );
            set.push(d, &rec, &g.roles);
        }
        let mut blobs = vec![];
        set.for_each_shard(3, |_, blob| {
            blobs.push(blob.to_vec());
            Ok::<(), ()>(())
        })
        .unwrap();
        assert_eq!(blobs.len(), 1);
        let in_blob: Vec<&[u8]> = records_in_blob(&blobs[0], 3)
            .unwrap()
            .into_iter()
            .map(|r| &r[..32])
            .collect();
        let mut want: Vec<&[u8]> = digests.iter().map(|d| &d[..]).collect();
        want.sort();
        assert_eq!(in_blob, want);
        for (i, d) in digests.iter().enumerate() {
            let rec = find_in_shard(&blobs[0], 3, d).unwrap().unwrap();
            assert_eq!(record_id(rec), Some(format!("t{i}").as_str()));
        }
        let mut dup = ParsedSet::for_keys(2);
        let rec = decode_record(
            find_in_shard(&blobs[0], 3, &digests[0]).unwrap().unwrap(),
            &g.roles,
        )
        .unwrap();
        dup.push(&digests[1], &rec, &g.roles);
        dup.push(&digests[1], &rec, &g.roles);
        assert!(dup.has_duplicate_digest());
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
                r#"{"version": "1", "keys": [], "version": "2"}"#.to_string(),
                "$.version",
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
