//! JSON for the filter: the value tree the configuration is read from, a pull parser that reads
//! from any [`Source`] (a key-service answer arrives from Envoy in chunks, one entry at a time), and
//! string quoting for the bodies keygate writes.
//!
//! Written for this crate instead of serde_json: the filter needs a small part of JSON's
//! tooling, and serde_json's generic machinery cost ~30% of the .wasm and most of the time of a
//! million-key parse. Stricter than serde_json where that fails closed: an object with a
//! repeated field is refused (which copy would an operator expect to win?), as is any byte
//! after the value. Numbers keep their exact whole value when they have one (`5000`, `5000.0`,
//! `5e3`); keygate's schema has no fractional numbers.

//!
//! The steps, one file each: this file (the values, quoting), `parse.rs` (the parser and its
//! byte source), `tests.rs`.

use std::borrow::Cow;

mod parse;
pub use parse::*;

/// A JSON value. Objects keep their fields in document order.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Number(Number),
    String(String),
    Array(Vec<Value>),
    Object(Map),
}

/// A JSON number, as far as keygate reads numbers: its exact whole value, if it has one that
/// fits 64 bits, and whether it was written as an integer (no fraction, no exponent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Number {
    /// The magnitude of the whole value (`None`: fractional, or too large).
    magnitude: Option<u64>,
    negative: bool,
    integer: bool,
}

impl Number {
    /// A number written as an integer, ≥ 0 (as serde_json's `as_u64`).
    pub fn as_u64(&self) -> Option<u64> {
        match self.negative {
            false if self.integer => self.magnitude,
            _ => None,
        }
    }

    /// A number written as an integer (as serde_json's `as_i64`).
    pub fn as_i64(&self) -> Option<i64> {
        if !self.integer {
            return None;
        }
        let m = self.magnitude?;
        if self.negative {
            // -2^63 is the one negative value whose magnitude is not an i64.
            (m <= 1 << 63).then(|| 0i64.wrapping_sub_unsigned(m))
        } else {
            i64::try_from(m).ok()
        }
    }

    /// Any spelling of a whole number ≥ 0: `5000`, `5000.0`, `5e3` (YAML and protobuf
    /// `Struct` tooling, as Istio's, write whole numbers as floats).
    pub fn as_whole_u64(&self) -> Option<u64> {
        self.magnitude.filter(|m| !self.negative || *m == 0)
    }
}

impl From<u64> for Number {
    fn from(n: u64) -> Number {
        Number {
            magnitude: Some(n),
            negative: false,
            integer: true,
        }
    }
}

/// A number that is not an integer (serde_json's `f64`): its whole value if it has one.
impl From<f64> for Number {
    fn from(f: f64) -> Number {
        let whole = f.fract() == 0.0 && f.abs() < 1.8e19;
        Number {
            magnitude: whole.then_some(f.abs() as u64),
            negative: f.is_sign_negative() && f != 0.0,
            integer: false,
        }
    }
}

impl From<i64> for Number {
    fn from(n: i64) -> Number {
        Number {
            magnitude: Some(n.unsigned_abs()),
            negative: n < 0,
            integer: true,
        }
    }
}

/// A field name: borrowed from [`KNOWN_NAMES`] when it is one (no allocation: a million-key
/// answer has three per entry), else owned.
pub type Name = Cow<'static, str>;

/// The field names of keygate's key entries and key-service answers.
const KNOWN_NAMES: [&str; 20] = [
    "id",
    "sha256",
    "key",
    "name",
    "tenant",
    "role",
    "environment",
    "revoked",
    "expires_at",
    "rate_limits",
    "allowed_ips",
    "allowed_referers",
    "allowed_paths",
    "requests",
    "per",
    "version",
    "keys",
    "since",
    "upserts",
    "removed",
];

/// A JSON object: its fields in document order, each name once.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Map(Vec<(Name, Value)>);

impl Map {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_ref())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(k, v)| (k.as_ref(), v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// An object from fields already known to be distinct (the key service builds small objects
/// while reading a report one entry at a time).
impl Map {
    pub fn from_distinct(fields: Vec<(Name, Value)>) -> Map {
        Map(fields)
    }
}

impl<'a> IntoIterator for &'a Map {
    type Item = (&'a str, &'a Value);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (Name, Value)>,
        fn(&'a (Name, Value)) -> (&'a str, &'a Value),
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k.as_ref(), v))
    }
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Number(n) => n.as_u64(),
            _ => None,
        }
    }
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Number(n) => n.as_i64(),
            _ => None,
        }
    }
    pub fn as_object(&self) -> Option<&Map> {
        match self {
            Value::Object(m) => Some(m),
            _ => None,
        }
    }
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
    /// A field of an object (`None` for a missing field or a value that is not an object).
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_object()?.get(key)
    }
}

/// Appends `s` as a JSON string literal: quoted, with `"`, `\` and control characters escaped.
pub fn write_str(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    let mut from = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(s.get(from..i).unwrap_or_default());
        if esc.is_empty() {
            out.push_str("\\u00");
            for nibble in [b >> 4, b & 15] {
                out.push(char::from(
                    HEX.get(usize::from(nibble)).copied().unwrap_or(b'0'),
                ));
            }
        } else {
            out.push_str(esc);
        }
        from = i + 1;
    }
    out.push_str(s.get(from..).unwrap_or_default());
    out.push('"');
}

/// `s` as a JSON string literal.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    write_str(&mut out, s);
    out
}

/// The filter's values from serde_json's: test support (the unit tests write configurations
/// with serde_json's `json!`). Printed and read back with [`parse`], as Envoy hands the filter
/// its configuration; this crate depends on nothing but the filter's dependencies. The key
/// service converts field for field (`core_value`) and tests that against this parser.
#[cfg(test)]
impl From<&serde_json::Value> for Value {
    fn from(v: &serde_json::Value) -> Value {
        match parse(v.to_string().as_bytes()) {
            Ok(v) => v,
            Err(e) => panic!("serde_json printed what the parser refuses: {e}"),
        }
    }
}

#[cfg(test)]
impl From<serde_json::Value> for Value {
    fn from(v: serde_json::Value) -> Value {
        Value::from(&v)
    }
}

/// Test support: serde_json's `json!`, as the filter's [`Value`].
#[cfg(test)]
macro_rules! json {
    ($($t:tt)+) => {
        $crate::json::Value::from(::serde_json::json!($($t)+))
    };
}
#[cfg(test)]
pub(crate) use json;
#[cfg(test)]
mod tests;
