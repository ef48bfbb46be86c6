//! Plugin configurations: the filter's reader (`parse_config`, bytes) and `keygate check`'s
//! (`gate_from_value`, a parsed document) agree, and a configuration that validates validates
//! again after a round trip through its JSON text (what `keygate check` prints and reads).
#![no_main]
use keygate::config::{gate_from_value, parse_config};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let filter = parse_config(data);
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        assert!(filter.is_err(), "the filter accepted what is not JSON");
        return;
    };
    let check = gate_from_value(&value);
    assert_eq!(filter.is_ok(), check.is_ok(), "filter and check disagree");
    if check.is_ok() {
        let text = value.to_string();
        assert!(
            parse_config(text.as_bytes()).is_ok(),
            "no round trip: {text}"
        );
    }
});
