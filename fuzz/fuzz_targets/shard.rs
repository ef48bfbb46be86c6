//! Binary shard records and blobs: decoding arbitrary bytes never panics, and a record that
//! decodes re-encodes to exactly the same bytes (the format has one spelling per record).
#![no_main]
use keygate::keyset::{decode_record, encode_record, find_in_shard};
use keygate::model::Role;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let roles = [Role {
        name: "reader".into(),
        methods: Some(vec!["GET".into()]),
        paths: None,
        forbidden_message: None,
    }];
    if let Ok(rec) = decode_record(data, &roles) {
        let digest: [u8; 32] = data[..32].try_into().unwrap();
        let mut again = Vec::new();
        encode_record(&mut again, &digest, &rec, &roles);
        assert_eq!(again, data, "re-encoding differs: {rec:?}");
    }
    let digest = [data.first().copied().unwrap_or(0); 32];
    let _ = find_in_shard(data, u64::from(data.len() as u8), &digest);
});
