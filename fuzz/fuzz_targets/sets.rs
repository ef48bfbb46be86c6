//! What both key-set targets hold an accepted set to: every record once in its shard, sorted,
//! found by its digest, decoding to a record that passes the rules of a JSON entry and
//! re-encodes to the same bytes. Included by `key_set.rs` and `binary_set.rs`.
use keygate::config::{check_record, gate_from_value};
use keygate::keyset::{decode_record, encode_record, find_in_shard, ParsedSet};
use std::sync::OnceLock;

pub fn gate() -> &'static keygate::model::Gate {
    static GATE: OnceLock<keygate::model::Gate> = OnceLock::new();
    GATE.get_or_init(|| {
        gate_from_value(&keygate::json::Value::from(serde_json::json!({
            "prefixes": [{"prefix": "sk_", "environment": "LIVE", "role": "reader"}],
            "roles": {"reader": {"methods": ["GET"]}, "admin": {"methods": ["*"]}},
            "keys": [{"id": "inline", "key": "sk_inline"}]
        })))
        .unwrap_or_else(|e| panic!("fuzz gate: {e:?}"))
    })
}

/// Panics if an accepted set breaks an invariant.
pub fn check(set: &ParsedSet, g: &keygate::model::Gate) {
    let mut seen = 0usize;
    let _ = set.for_each_shard(7, |_, blob| -> Result<(), ()> {
        let count = u32::from_le_bytes(blob[8..12].try_into().unwrap()) as usize;
        let offsets: Vec<usize> = (0..count)
            .map(|i| u32::from_le_bytes(blob[12 + 4 * i..16 + 4 * i].try_into().unwrap()) as usize)
            .chain([blob.len()])
            .collect();
        for w in offsets.windows(2) {
            let rec = &blob[w[0]..w[1]];
            let digest: [u8; 32] = rec[..32].try_into().unwrap();
            assert_eq!(find_in_shard(blob, 7, &digest), Ok(Some(rec)));
            let decoded = decode_record(rec, &g.roles).expect("an encoded record decodes");
            assert_eq!(check_record(&decoded), Ok(()), "an accepted record breaks a rule");
            let mut again = Vec::new();
            encode_record(&mut again, &digest, &decoded, &g.roles);
            assert_eq!(again, rec, "re-encoding differs");
            seen += 1;
        }
        Ok(())
    });
    assert_eq!(seen, set.len());
}
