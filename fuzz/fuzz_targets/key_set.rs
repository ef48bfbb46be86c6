//! Key-service answers (full sets, JSON): whatever the bytes, parsing never panics, and an
//! accepted set holds the invariants of `sets.rs`.
#![no_main]
#[path = "sets.rs"]
mod sets;
use keygate::keyset::{parse_key_set, Fetched};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let g = sets::gate();
    if let Ok(Fetched::Set(set)) = parse_key_set(&mut &data[..], data.len(), g, None) {
        sets::check(&set, g);
    }
});
