//! Plugin configurations: the filter's reader (`parse_config`, bytes) and `keygate check`'s
//! (serde_json's document, converted as `keygate check` converts it, and the filter's own parse
//! of the text) agree; the
//! filter's JSON parser reads what serde_json reads, refusing only an object with a field
//! twice (or nesting past its limit), accepting beyond it only numbers too large for an f64;
//! and a configuration that validates validates again after a round trip through its JSON text.
#![no_main]
use keygate::config::{gate_from_value, parse_config};
use keygate_key_service::json::core_value;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let filter = parse_config(data);
    let ours = keygate::json::parse(data);
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        if let Err(e) = serde_json::from_slice::<serde_json::Value>(data) {
            assert!(
                ours.is_err() || e.to_string().contains("number out of range"),
                "our parser accepted what serde_json refuses: {e}"
            );
        }
        assert!(filter.is_err() || ours.is_ok(), "the filter accepted what is not JSON");
        return;
    };
    match &ours {
        Ok(v) => assert!(
            same(v, &core_value(&value)),
            "our parser read another value: {v:?}"
        ),
        Err(e) => assert!(
            e.message == "an object has the same field twice"
                || e.message == "recursion limit exceeded",
            "our parser refused what serde_json reads: {e}"
        ),
    }
    let check = ours.as_ref().ok().map(|_| gate_from_value(&core_value(&value)));
    assert_eq!(
        filter.is_ok(),
        matches!(check, Some(Ok(_))),
        "filter and check disagree"
    );
    if filter.is_ok() {
        let text = value.to_string();
        assert!(
            parse_config(text.as_bytes()).is_ok(),
            "no round trip: {text}"
        );
    }
});

/// The same document; numbers compared where an f64 (serde_json's reading of large or
/// fractional numbers) is exact.
fn same(a: &keygate::json::Value, b: &keygate::json::Value) -> bool {
    use keygate::json::Value as V;
    match (a, b) {
        (V::Number(x), V::Number(y)) => {
            let exact = |n: &keygate::json::Number| n.as_whole_u64().is_some_and(|m| m < 1 << 53);
            !(exact(x) && exact(y)) || x.as_whole_u64() == y.as_whole_u64()
        }
        (V::Array(x), V::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b)),
        (V::Object(x), V::Object(y)) => {
            x.len() == y.len()
                && x.iter().zip(y.iter()).all(|((ka, va), (kb, vb))| ka == kb && same(va, vb))
        }
        _ => a == b,
    }
}
