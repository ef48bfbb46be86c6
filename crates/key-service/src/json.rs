//! serde_json's values (the service's answers and stored entries are built with them) as the
//! filter's [`keygate::json::Value`], so an entry is checked by the filter's own readers.

use keygate::json::{Map, Number, Value};
use std::borrow::Cow;

/// The same value, field for field, in the filter's types.
pub fn core_value(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => Value::Number(match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => Number::from(u),
            (None, Some(i)) => Number::from(i),
            _ => Number::from(n.as_f64().unwrap_or(f64::NAN)),
        }),
        serde_json::Value::String(s) => Value::String(s.clone()),
        serde_json::Value::Array(a) => Value::Array(a.iter().map(core_value).collect()),
        // serde_json's objects hold each name once.
        serde_json::Value::Object(m) => Value::Object(Map::from_distinct(
            m.iter()
                .map(|(k, v)| (Cow::Owned(k.clone()), core_value(v)))
                .collect(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::core_value;
    use serde_json::json;

    #[test]
    fn the_same_value_as_the_filter_reads_from_text() {
        let v = json!({"id": "k", "n": [1, -2, 1.5, 5000.0, 1e300, null, true], "o": {"x": "y"}});
        let read = keygate::json::parse(v.to_string().as_bytes()).unwrap();
        assert_eq!(core_value(&v), read);
        for doc in [
            r#"{"a":[1,-2,3.5,true,false,null,"x\"y\\z\/\n\t\u00e9\ud83d\ude00"],"b":{"c":{}},"d":[]}"#,
            r#"  [ 0 , 1e3 , 2E-2 , -7, 12345678901234567890, "" ] "#,
            "\"caf\u{e9} \u{1F600}\"",
        ] {
            let theirs: serde_json::Value = serde_json::from_str(doc).unwrap();
            let ours = keygate::json::parse(doc.as_bytes()).unwrap();
            assert_eq!(core_value(&theirs), ours, "{doc}");
        }
    }
}
