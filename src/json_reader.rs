//! A small typed reader over [`crate::json::Value`] that records every problem with its JSON path.
//!
//! The configuration is read field by field so that *all* errors are reported at once (for
//! `keygate check`) and each one names the exact place (`$.keys[3].allowed_ips[0]`).

use crate::json::{Map, Value};
use std::fmt;

/// A string in double quotes with `"`, `\\` and control characters escaped, for messages.
/// (`{:?}` would do the same but pulls the Unicode-aware `Debug` machinery into the .wasm.)
pub struct Quoted<'a>(pub &'a str);

pub fn q(s: &str) -> Quoted<'_> {
    Quoted(s)
}

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        for c in self.0.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                c if c.is_control() => write!(f, "\\u{{{:x}}}", u32::from(c))?,
                c => write!(f, "{c}")?,
            }
        }
        f.write_str("\"")
    }
}

/// One configuration problem: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Test support: every field the parser asks for, as a generic path (`keys[].id`), so a test
/// can check that the README documents each of them.
#[cfg(test)]
pub mod fields_read {
    use std::cell::RefCell;

    thread_local! {
        static READ: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    }

    /// `$.keys[3].rate_limits[0]` + `per` → `keys[].rate_limits[].per`; role names → `<name>`.
    pub fn record(path: &str, field: &str) {
        let mut generic = String::new();
        let mut in_index = false;
        for c in path.trim_start_matches('$').trim_start_matches('.').chars() {
            match c {
                '[' => {
                    in_index = true;
                    generic.push_str("[]");
                }
                ']' => in_index = false,
                c if !in_index => generic.push(c),
                _ => {}
            }
        }
        for map in ["roles", "tenants"] {
            if let Some(rest) = generic.strip_prefix(&format!("{map}.")) {
                generic = format!(
                    "{map}.<name>{}",
                    rest.find('.').map(|i| &rest[i..]).unwrap_or("")
                );
            }
        }
        let full = if generic.is_empty() {
            field.to_string()
        } else {
            format!("{generic}.{field}")
        };
        READ.with(|r| r.borrow_mut().push(full));
    }

    pub fn take() -> Vec<String> {
        READ.with(|r| std::mem::take(&mut *r.borrow_mut()))
    }
}

/// Collects errors while reading.
#[derive(Debug, Default)]
pub struct Errors(pub Vec<ConfigError>);

impl Errors {
    pub fn push(&mut self, path: &str, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.to_string(),
            message: message.into(),
        });
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A JSON object being read; `finish` reports the fields nobody asked for.
pub struct Obj<'a, 'p> {
    path: &'p str,
    map: &'a Map,
    /// The fields asked for (no object of the schema has more than a few dozen).
    seen: [&'static str; MAX_FIELDS],
    n_seen: usize,
}

const MAX_FIELDS: usize = 32;

pub fn child(path: &str, field: &str) -> String {
    format!("{path}.{field}")
}

pub fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl<'a, 'p> Obj<'a, 'p> {
    /// Starts reading `value` as an object; reports and returns `None` if it is not one.
    pub fn new(path: &'p str, value: &'a Value, errors: &mut Errors) -> Option<Self> {
        match value {
            Value::Object(map) => Some(Obj {
                path,
                map,
                seen: [""; MAX_FIELDS],
                n_seen: 0,
            }),
            other => {
                errors.push(
                    path,
                    format!("expected an object, found {}", type_name(other)),
                );
                None
            }
        }
    }

    fn mark_seen(&mut self, field: &'static str) {
        if let Some(slot) = self.seen.get_mut(self.n_seen) {
            *slot = field;
            self.n_seen += 1;
        }
    }

    pub fn field_path(&self, field: &str) -> String {
        child(self.path, field)
    }

    /// The raw value of an optional field (JSON `null` counts as absent).
    pub fn get(&mut self, field: &'static str) -> Option<&'a Value> {
        self.mark_seen(field);
        #[cfg(test)]
        fields_read::record(self.path, field);
        match self.map.get(field) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }

    pub fn has(&self, field: &str) -> bool {
        matches!(self.map.get(field), Some(v) if !v.is_null())
    }

    pub fn opt_str(&mut self, field: &'static str, errors: &mut Errors) -> Option<&'a str> {
        match self.get(field) {
            None => None,
            Some(Value::String(s)) => Some(s.as_str()),
            Some(other) => {
                errors.push(
                    &self.field_path(field),
                    format!("expected a string, found {}", type_name(other)),
                );
                None
            }
        }
    }

    pub fn req_str(&mut self, field: &'static str, errors: &mut Errors) -> Option<&'a str> {
        if !self.has(field) {
            self.mark_seen(field);
            errors.push(&self.field_path(field), "is required");
            return None;
        }
        self.opt_str(field, errors)
    }

    pub fn opt_bool(&mut self, field: &'static str, errors: &mut Errors) -> Option<bool> {
        match self.get(field) {
            None => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(other) => {
                errors.push(
                    &self.field_path(field),
                    format!("expected a boolean, found {}", type_name(other)),
                );
                None
            }
        }
    }

    pub fn opt_u64(&mut self, field: &'static str, errors: &mut Errors) -> Option<u64> {
        match self.get(field) {
            None => None,
            // Whole floats too (`5000.0`): YAML and protobuf Struct tooling (Istio) emit them.
            Some(v) => match v.as_u64().or_else(|| match v {
                Value::Number(n) => n.as_whole_u64().filter(|n| *n < 9_000_000_000_000_000),
                _ => None,
            }) {
                Some(n) => Some(n),
                None => {
                    errors.push(
                        &self.field_path(field),
                        format!("expected a whole number ≥ 0, found {}", type_name(v)),
                    );
                    None
                }
            },
        }
    }

    pub fn opt_array(&mut self, field: &'static str, errors: &mut Errors) -> Option<&'a [Value]> {
        match self.get(field) {
            None => None,
            Some(Value::Array(a)) => Some(a.as_slice()),
            Some(other) => {
                errors.push(
                    &self.field_path(field),
                    format!("expected an array, found {}", type_name(other)),
                );
                None
            }
        }
    }

    /// An optional array of strings, each passed to `parse` with its own path.
    pub fn opt_str_list<T>(
        &mut self,
        field: &'static str,
        errors: &mut Errors,
        mut parse: impl FnMut(&str, &str, &mut Errors) -> Option<T>,
    ) -> Option<Vec<T>> {
        let items = self.opt_array(field, errors)?;
        let path = self.field_path(field);
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let p = index(&path, i);
            match item {
                Value::String(s) => {
                    if let Some(v) = parse(&p, s, errors) {
                        out.push(v);
                    }
                }
                other => errors.push(&p, format!("expected a string, found {}", type_name(other))),
            }
        }
        Some(out)
    }

    /// Reports every field that was not read: unknown fields are errors, never ignored.
    pub fn finish(self, errors: &mut Errors) {
        let seen = self.seen.get(..self.n_seen).unwrap_or_default();
        for key in self.map.keys() {
            if !seen.contains(&key) {
                errors.push(&child(self.path, key), "unknown field");
            }
        }
    }
}
