//! Properties of keygate's canonical paths over generated paths (SPEC §2 "What is judged is
//! what is forwarded"): canonicalisation is idempotent, its allocation-free fast path agrees
//! with the full one, and every kind of upstream reads the forwarded (canonical) path as the
//! segments keygate judged — none climbs out of them or into another.
mod common;

use common::readers;
use keygate::path::{canonical_path, canonical_path_cow};
use std::borrow::Cow;

/// Tricky pieces of paths.
const PIECES: [&str; 24] = [
    "/", "/", "/", ".", "..", "%2e", "%2E", "%2f", "%5c", "\\", ";", "%3b", "a", "b", "%25", "2e",
    "%41", "//", "?", "x=1", "%20", "~", "#", "%",
];

/// Deterministic pseudo-random paths (xorshift), each starting with `/`.
fn generated(n: usize) -> impl Iterator<Item = String> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..n).map(move |_| {
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let len = 1 + next() % 10;
        let mut p = String::from("/");
        for _ in 0..len {
            p.push_str(PIECES[(next() % PIECES.len() as u64) as usize]);
        }
        p
    })
}

/// Every short path over an alphabet of the tricky characters, and generated ones.
#[test]
fn the_fast_path_agrees_with_the_full_one() {
    let alphabet = ['/', '.', 'a', '%', '2', 'e', 'f', '?', ';', '\\'];
    let mut paths = vec![String::new()];
    for _ in 0..6 {
        let next: Vec<String> = paths
            .iter()
            .flat_map(|p| alphabet.iter().map(move |c| format!("{p}{c}")))
            .collect();
        for p in &next {
            assert_eq!(
                canonical_path_cow(p).map(Cow::into_owned),
                canonical_path(p),
                "{p}"
            );
        }
        paths = next;
    }
    for p in generated(100_000) {
        assert_eq!(
            canonical_path_cow(&p).map(Cow::into_owned),
            canonical_path(&p),
            "{p}"
        );
    }
}

/// judged(forwarded(p)) == judged(p), forwarding is idempotent, and each reader of the
/// forwarded path sees keygate's segments: exactly (byte-literal, RFC 3986), or the same
/// number of them with none a dot segment (decoding, `;`-stripping).
#[test]
fn forwarded_paths_are_judged_paths_for_every_reader() {
    let mut accepted = 0;
    for p in generated(200_000) {
        let Ok(judged) = canonical_path(&p) else {
            continue;
        };
        accepted += 1;
        // The forwarded path is the judged one; judging it again changes nothing.
        assert_eq!(canonical_path(&judged).as_ref(), Ok(&judged), "{p}");
        let segments: Vec<String> = judged.split('/').skip(1).map(str::to_string).collect();
        for (reader, seen) in readers::all(&judged) {
            if reader.contains("literal") || reader.contains("RFC") {
                assert_eq!(
                    seen, segments,
                    "{reader} reads {judged:?} (from {p:?}) otherwise"
                );
            } else {
                assert_eq!(
                    seen.len(),
                    segments.len(),
                    "{reader}: {judged:?} from {p:?}"
                );
                assert!(
                    seen.iter().all(|s| s != "." && s != ".."),
                    "{reader}: {judged:?} from {p:?}"
                );
            }
        }
    }
    assert!(
        accepted > 10_000,
        "only {accepted} generated paths were accepted"
    );
}
