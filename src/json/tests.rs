//! The JSON module against serde_json, and its error messages.

use super::*;

fn err(s: &str) -> String {
    parse(s.as_bytes()).unwrap_err().to_string()
}

/// A source that hands out one byte per read: every buffer boundary is exercised.
struct Trickle<'a>(&'a [u8]);
impl Source for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> Option<usize> {
        match (self.0.split_first(), buf.first_mut()) {
            (Some((b, rest)), Some(slot)) => {
                *slot = *b;
                self.0 = rest;
                Some(1)
            }
            _ => Some(0),
        }
    }
}

#[test]
fn values_match_serde_json() {
    for doc in [
        r#"{"a":[1,-2,3.5,true,false,null,"x\"y\\z\/\n\t\u00e9\ud83d\ude00"],"b":{"c":{}},"d":[]}"#,
        r#"  [ 0 , 1e3 , 2E-2 , -7, 12345678901234567890, "" ] "#,
        "\"caf\u{e9} \u{1F600}\"",
    ] {
        let ours = parse(doc.as_bytes()).unwrap();
        let theirs: serde_json::Value = serde_json::from_str(doc).unwrap();
        assert_eq!(ours, Value::from(&theirs), "{doc}");
        let mut src = Trickle(doc.as_bytes());
        let mut p = Parser::new(&mut src);
        assert_eq!(p.value().unwrap(), ours);
        p.end().unwrap();
    }
}

#[test]
fn whole_numbers_are_exact_in_every_spelling() {
    let n = |s: &str| match parse(s.as_bytes()).unwrap() {
        Value::Number(n) => n,
        other => panic!("{other:?}"),
    };
    for (s, whole) in [
        ("5000", Some(5000)),
        ("5000.0", Some(5000)),
        ("5e3", Some(5000)),
        ("50000e-1", Some(5000)),
        ("0.5e1", Some(5)),
        ("0.0", Some(0)),
        ("1.5", None),
        ("1e-1", None),
        ("18446744073709551615", Some(u64::MAX)),
        ("18446744073709551616", None),
        ("1e19", Some(10_000_000_000_000_000_000)),
        ("1e20", None),
        ("1e999999999999", None),
        ("100000000000000000000e-2", Some(1_000_000_000_000_000_000)),
    ] {
        assert_eq!(n(s).as_whole_u64(), whole, "{s}");
    }
    assert_eq!(n("-0").as_whole_u64(), Some(0));
    assert_eq!(n("-0").as_u64(), None);
    assert_eq!(n("-0.0").as_whole_u64(), Some(0));
    // Digits beyond any exponent clamp still offset it exactly: 0.5 is not whole.
    let long = format!("5{}e-{}", "0".repeat(1_000_001), 1_000_002);
    assert_eq!(n(&long).as_whole_u64(), None);
    let long = format!("5{}e-{}", "0".repeat(1_000_001), 1_000_000);
    assert_eq!(n(&long).as_whole_u64(), Some(50));
    assert_eq!(n("42").as_u64(), Some(42));
    assert_eq!(n("42.0").as_u64(), None);
    assert_eq!(n("-42").as_u64(), None);
    assert_eq!(n("-42").as_i64(), Some(-42));
    assert_eq!(n("-42").as_whole_u64(), None);
    assert_eq!(n("-9223372036854775808").as_i64(), Some(i64::MIN));
    assert_eq!(n("-9223372036854775809").as_i64(), None);
    assert_eq!(n("9223372036854775808").as_i64(), None);
    assert_eq!(n("1e3").as_i64(), None);
}

#[test]
fn syntax_errors_say_what_and_where() {
    assert_eq!(err(""), "EOF while parsing a value at line 1 column 1");
    assert_eq!(
        err("{\n  \"a\": 1,\n}"),
        "trailing comma at line 3 column 1"
    );
    assert_eq!(
        err("{\n  \"a\": 1,\n  b: 2}"),
        "key must be a string at line 3 column 3"
    );
    assert_eq!(err("[1 2]"), "expected `,` or `]` at line 1 column 4");
    assert_eq!(err("{\"a\" 1}"), "expected `:` at line 1 column 6");
    assert_eq!(
        err("{\"a\":1 \"b\":2}"),
        "expected `,` or `}` at line 1 column 8"
    );
    assert_eq!(err("[1] x"), "trailing characters at line 1 column 5");
    assert_eq!(err("tru"), "expected ident at line 1 column 4");
    assert_eq!(err("01"), "invalid number at line 1 column 2");
    assert_eq!(err("1."), "invalid number at line 1 column 3");
    assert_eq!(err("-"), "invalid number at line 1 column 2");
    assert_eq!(err("1e+"), "invalid number at line 1 column 4");
    assert_eq!(
        err("\"a\nb\""),
        "control character (\\u0000-\\u001F) found while parsing a string at line 1 column 3"
    );
    assert_eq!(err("\"\\x\""), "invalid escape at line 1 column 3");
    assert_eq!(
        err("\"\\ud800\""),
        "lone leading surrogate in hex escape at line 1 column 8"
    );
    assert_eq!(
        err("\"\\udc00\""),
        "invalid unicode code point at line 1 column 8"
    );
    assert_eq!(err("\"ab"), "EOF while parsing a string at line 1 column 4");
    assert_eq!(err("[1,"), "EOF while parsing a value at line 1 column 4");
    assert_eq!(
        err("{\"a\":1,\"a\":2}"),
        "an object has the same field twice at line 1 column 12"
    );
    assert_eq!(
        err(&"[".repeat(200)),
        "recursion limit exceeded at line 1 column 129"
    );
    assert!(parse(&[b'"', 0xff, b'"']).is_err());
    let distinct: Vec<String> = (0..1000).map(|i| format!("\"f{i}\":1")).collect();
    assert!(parse(format!("{{{}}}", distinct.join(",")).as_bytes()).is_ok());
    // A skipped value is checked as strictly as a kept one (but for repeated fields).
    let mut bad: &[u8] = b"[\"\xff\"]";
    assert!(Parser::new(&mut bad).skip().is_err());
    let many: Vec<String> = (0..100).map(|i| format!("\"f{}\":1", i % 99)).collect();
    assert!(
        err(&format!("{{{}}}", many.join(","))).starts_with("an object has the same field twice")
    );
}

#[test]
fn walking_an_object_and_an_array_one_element_at_a_time() {
    let doc = br#"{"version": "v1", "keys": [{"id": "a"}, {"id": "b"}], "x": [1, {"y": 2}]}"#;
    let mut src = Trickle(doc);
    let mut p = Parser::new(&mut src);
    let mut first = true;
    let mut seen = vec![];
    while let Some(k) = p.next_field(&mut first).unwrap() {
        match k.as_ref() {
            "keys" => {
                let mut first = true;
                while p.next_item(&mut first).unwrap() {
                    seen.push(p.value().unwrap());
                }
            }
            "x" => p.skip().unwrap(),
            _ => seen.push(p.value().unwrap()),
        }
    }
    p.end().unwrap();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[2].get("id").and_then(Value::as_str), Some("b"));
}

#[test]
fn quoting_escapes_what_json_requires() {
    for s in [
        "plain",
        "a\"b\\c",
        "line\nbreak\ttab\r",
        "\u{1}\u{1f}",
        "café ☕",
    ] {
        let q = quote(s);
        assert_eq!(serde_json::from_str::<String>(&q).unwrap(), s);
        assert_eq!(q, serde_json::Value::from(s).to_string());
    }
}
