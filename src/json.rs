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

use std::borrow::Cow;
use std::fmt;

/// Where a parser's bytes come from: `read` fills the start of `buf` and says how many bytes it
/// wrote (0 at the end), or `None` if the input cannot be read. (Not `std::io::Read`: its error
/// machinery costs the .wasm more than the parser.)
pub trait Source {
    fn read(&mut self, buf: &mut [u8]) -> Option<usize>;
}

impl Source for &[u8] {
    fn read(&mut self, buf: &mut [u8]) -> Option<usize> {
        let n = buf.len().min(self.len());
        let (head, rest) = self.split_at(n);
        buf.get_mut(..n)?.copy_from_slice(head);
        *self = rest;
        Some(n)
    }
}

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
    pub fn new() -> Map {
        Map(Vec::new())
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Sets a field (replacing one of the same name).
    pub fn insert(&mut self, key: String, value: Value) {
        match self.0.iter_mut().find(|(k, _)| *k == key.as_str()) {
            Some(slot) => slot.1 = value,
            None => self.0.push((Cow::Owned(key), value)),
        }
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
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&Vec<Value>> {
        match self {
            Value::Array(a) => Some(a),
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

/// Why the input is not JSON, and where (1-based line and column, as serde_json reports them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub message: &'static str,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at line {} column {}",
            self.message, self.line, self.column
        )
    }
}

/// Parses a whole document: one value, then only whitespace.
pub fn parse(mut bytes: &[u8]) -> Result<Value, SyntaxError> {
    let mut p = Parser::new(&mut bytes);
    let v = p.value()?;
    p.end()?;
    Ok(v)
}

/// Distinct field names of one object with the same FNV hash tolerated ([`has_duplicate_name`]).
const MAX_SAME_HASH: usize = 8;
/// Deeper nesting is refused (keygate's schema nests 5 levels; the stack is the VM's).
const MAX_DEPTH: u32 = 128;
/// Bytes asked of the source at a time.
const CHUNK: usize = 64 * 1024;

type Res<T> = Result<T, SyntaxError>;

/// A pull parser over a byte source read in chunks. [`Parser::value`] reads a whole value;
/// [`Parser::next_field`] and [`Parser::next_item`] walk the top-level object and an array one
/// element at a time, so a large array is never held whole.
pub struct Parser<'r> {
    src: &'r mut dyn Source,
    buf: Vec<u8>,
    pos: usize,
    /// Offset in the input of `buf[0]`.
    base: usize,
    eof: bool,
    /// For error positions: the current line and the offset where it starts.
    line: usize,
    line_start: usize,
    depth: u32,
    /// String bytes being collected.
    scratch: Vec<u8>,
}

impl<'r> Parser<'r> {
    pub fn new(src: &'r mut dyn Source) -> Parser<'r> {
        Parser {
            src,
            buf: Vec::new(),
            pos: 0,
            base: 0,
            eof: false,
            line: 1,
            line_start: 0,
            depth: 0,
            scratch: Vec::new(),
        }
    }

    fn error<T>(&self, message: &'static str) -> Res<T> {
        let at = self.base + self.pos;
        Err(SyntaxError {
            message,
            line: self.line,
            column: (at + 1).saturating_sub(self.line_start),
        })
    }

    /// Refills the buffer when it is used up; `false` at the end of the input.
    #[cold]
    fn fill(&mut self) -> Res<bool> {
        if self.eof {
            return Ok(false);
        }
        self.base += self.buf.len();
        self.pos = 0;
        self.buf.resize(CHUNK, 0);
        let mut n = 0;
        // A source may answer short reads; read until the chunk is full or the input ends.
        while n < CHUNK {
            match self.src.read(self.buf.get_mut(n..).unwrap_or_default()) {
                Some(0) => {
                    self.eof = true;
                    break;
                }
                Some(k) => n += k,
                None => {
                    self.buf.truncate(n);
                    return self.error("the input could not be read");
                }
            }
        }
        self.buf.truncate(n);
        Ok(n > 0)
    }

    #[inline]
    fn peek(&mut self) -> Res<Option<u8>> {
        if let Some(b) = self.buf.get(self.pos) {
            return Ok(Some(*b));
        }
        if self.fill()? {
            Ok(self.buf.get(self.pos).copied())
        } else {
            Ok(None)
        }
    }

    /// The next byte that is not whitespace (not consumed).
    fn peek_token(&mut self) -> Res<Option<u8>> {
        loop {
            match self.peek()? {
                Some(b' ' | b'\t' | b'\r') => self.pos += 1,
                Some(b'\n') => {
                    self.pos += 1;
                    self.line += 1;
                    self.line_start = self.base + self.pos;
                }
                other => return Ok(other),
            }
        }
    }

    /// Consumes `want` as the next token, or fails with `message`.
    fn expect(&mut self, want: u8, message: &'static str) -> Res<()> {
        match self.peek_token()? {
            Some(b) if b == want => {
                self.pos += 1;
                Ok(())
            }
            None => self.error("EOF while parsing a value"),
            Some(_) => self.error(message),
        }
    }

    /// After the value: only whitespace.
    pub fn end(&mut self) -> Res<()> {
        match self.peek_token()? {
            None => Ok(()),
            Some(_) => self.error("trailing characters"),
        }
    }

    /// The next value, whole.
    pub fn value(&mut self) -> Res<Value> {
        self.any(true)
    }

    /// Skips the next value (nothing is kept).
    pub fn skip(&mut self) -> Res<()> {
        self.any(false).map(drop)
    }

    /// Whether the next value is an object / array / string (not consumed).
    pub fn next_is(&mut self, open: u8) -> Res<bool> {
        Ok(self.peek_token()? == Some(open))
    }

    /// Walks an object: call with `first = true` before its first field. Consumes the `{` (on
    /// the first call), then each `,` and the field's name and `:`; `None` after the `}`.
    pub fn next_field(&mut self, first: &mut bool) -> Res<Option<Name>> {
        let object = (
            "expected `{`",
            b'{',
            b'}',
            "EOF while parsing an object",
            "expected `,` or `}`",
        );
        if !self.next_member(first, object)? {
            return Ok(None);
        }
        if self.peek_token()? != Some(b'"') {
            return self.error("key must be a string");
        }
        self.pos += 1;
        let key = self.name()?;
        self.expect(b':', "expected `:`")?;
        Ok(Some(key))
    }

    /// Walks an array: call with `first = true` before its first element. `true` when an
    /// element follows (read it with [`Parser::value`] or [`Parser::skip`]), `false` after `]`.
    pub fn next_item(&mut self, first: &mut bool) -> Res<bool> {
        let array = (
            "expected `[`",
            b'[',
            b']',
            "EOF while parsing a list",
            "expected `,` or `]`",
        );
        self.next_member(first, array)
    }

    /// The step both walks share: the opening bracket (first call), then a `,` before each
    /// further member; `false` after the closing bracket. `kind`: (message if not opened,
    /// opening, closing, message at the end of the input, message without a separator).
    fn next_member(
        &mut self,
        first: &mut bool,
        kind: (&'static str, u8, u8, &'static str, &'static str),
    ) -> Res<bool> {
        let (not_opened, open, close, eof, no_separator) = kind;
        if *first {
            self.expect(open, not_opened)?;
        }
        match self.peek_token()? {
            Some(b) if b == close => {
                self.pos += 1;
                return Ok(false);
            }
            Some(b',') if !*first => {
                self.pos += 1;
                if self.peek_token()? == Some(close) {
                    return self.error("trailing comma");
                }
            }
            None => return self.error(eof),
            Some(_) if !*first => return self.error(no_separator),
            Some(_) => {}
        }
        *first = false;
        Ok(true)
    }

    /// A value: built when `keep`, else only checked (strings and containers not stored, so a
    /// field repeated inside a skipped value goes unnoticed: its content is never used).
    fn any(&mut self, keep: bool) -> Res<Value> {
        let Some(b) = self.peek_token()? else {
            return self.error("EOF while parsing a value");
        };
        match b {
            b'{' | b'[' => {
                if self.depth >= MAX_DEPTH {
                    return self.error("recursion limit exceeded");
                }
                self.depth += 1;
                let v = if b == b'{' {
                    self.object(keep)
                } else {
                    self.array(keep)
                };
                self.depth -= 1;
                v
            }
            b'"' => {
                self.pos += 1;
                let s = self.string(keep)?;
                Ok(if keep { Value::String(s) } else { Value::Null })
            }
            b't' => self.word(b"true", Value::Bool(true)),
            b'f' => self.word(b"false", Value::Bool(false)),
            b'n' => self.word(b"null", Value::Null),
            b'-' | b'0'..=b'9' => self.number().map(Value::Number),
            _ => self.error("expected value"),
        }
    }

    fn word(&mut self, word: &'static [u8], v: Value) -> Res<Value> {
        for want in word {
            if self.peek()? != Some(*want) {
                return self.error("expected ident");
            }
            self.pos += 1;
        }
        Ok(v)
    }

    fn object(&mut self, keep: bool) -> Res<Value> {
        let mut fields: Vec<(Name, Value)> = Vec::new();
        let mut first = true;
        while let Some(key) = self.next_field(&mut first)? {
            // Small objects (all of keygate's schema) are checked here, to name the place.
            if fields.len() < 16 && fields.iter().any(|(k, _)| *k == key) {
                return self.error("an object has the same field twice");
            }
            let v = self.any(keep)?;
            if keep {
                fields.push((key, v));
            }
        }
        if fields.len() > 16 && has_duplicate_name(&fields) {
            return self.error("an object has the same field twice");
        }
        Ok(Value::Object(Map(fields)))
    }

    fn array(&mut self, keep: bool) -> Res<Value> {
        let mut items = Vec::new();
        let mut first = true;
        while self.next_item(&mut first)? {
            let v = self.any(keep)?;
            if keep {
                items.push(v);
            }
        }
        Ok(Value::Array(items))
    }

    /// A field name (its opening quote consumed): one of [`KNOWN_NAMES`] without allocating.
    fn name(&mut self) -> Res<Name> {
        self.string(false)?;
        let known = KNOWN_NAMES
            .iter()
            .find(|n| n.as_bytes() == self.scratch.as_slice());
        Ok(match known {
            Some(n) => Cow::Borrowed(n),
            None => Cow::Owned(String::from_utf8_lossy(&self.scratch).into_owned()),
        })
    }

    /// The rest of a string (its opening quote consumed), unescaped (and left in the scratch);
    /// empty unless `keep`.
    fn string(&mut self, keep: bool) -> Res<String> {
        self.scratch.clear();
        loop {
            // The plain run up to the next quote, backslash or control character.
            let rest = self.buf.get(self.pos..).unwrap_or_default();
            let run = rest
                .iter()
                .position(|b| matches!(b, b'"' | b'\\' | 0..=0x1f))
                .unwrap_or(rest.len());
            // Collected even when not kept: a skipped string must be UTF-8 too.
            self.scratch
                .extend_from_slice(rest.get(..run).unwrap_or_default());
            self.pos += run;
            match self.peek()? {
                None => return self.error("EOF while parsing a string"),
                Some(b'"') => {
                    self.pos += 1;
                    break;
                }
                Some(b'\\') => {
                    self.pos += 1;
                    self.escape()?;
                }
                Some(0..=0x1f) => {
                    return self
                        .error("control character (\\u0000-\\u001F) found while parsing a string")
                }
                Some(_) => {}
            }
        }
        if !keep {
            return match std::str::from_utf8(&self.scratch) {
                Ok(_) => Ok(String::new()),
                Err(_) => self.error("invalid unicode in a string"),
            };
        }
        let bytes = std::mem::take(&mut self.scratch);
        match String::from_utf8(bytes) {
            Ok(s) => Ok(s),
            Err(e) => {
                self.scratch = e.into_bytes();
                self.error("invalid unicode in a string")
            }
        }
    }

    /// One escape after its backslash, appended to the scratch.
    fn escape(&mut self) -> Res<()> {
        let Some(b) = self.peek()? else {
            return self.error("EOF while parsing a string");
        };
        if !matches!(
            b,
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' | b'u'
        ) {
            return self.error("invalid escape");
        }
        self.pos += 1;
        let c = match b {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let hi = self.hex4()?;
                let code = if (0xd800..0xdc00).contains(&hi) {
                    // A surrogate pair: `\uD83D\uDE00`.
                    if self.peek()? != Some(b'\\') {
                        return self.error("lone leading surrogate in hex escape");
                    }
                    self.pos += 1;
                    if self.peek()? != Some(b'u') {
                        return self.error("lone leading surrogate in hex escape");
                    }
                    self.pos += 1;
                    let lo = self.hex4()?;
                    if !(0xdc00..0xe000).contains(&lo) {
                        return self.error("lone leading surrogate in hex escape");
                    }
                    0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00)
                } else {
                    hi
                };
                match char::from_u32(code) {
                    Some(c) => c,
                    None => return self.error("invalid unicode code point"),
                }
            }
            _ => return self.error("invalid escape"),
        };
        let mut utf8 = [0u8; 4];
        self.scratch
            .extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
        Ok(())
    }

    fn hex4(&mut self) -> Res<u32> {
        let mut n = 0;
        for _ in 0..4 {
            let d = match self.peek()? {
                Some(b @ b'0'..=b'9') => b - b'0',
                Some(b @ b'a'..=b'f') => b - b'a' + 10,
                Some(b @ b'A'..=b'F') => b - b'A' + 10,
                None => return self.error("EOF while parsing a string"),
                Some(_) => return self.error("invalid escape"),
            };
            self.pos += 1;
            n = n * 16 + u32::from(d);
        }
        Ok(n)
    }

    /// `-?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?`, its whole value kept exactly.
    fn number(&mut self) -> Res<Number> {
        let negative = self.peek()? == Some(b'-');
        if negative {
            self.pos += 1;
        }
        // The value is `mantissa × 10^(zeros - fraction_digits + exponent)`, the mantissa
        // without trailing zeros (they are counted in `zeros`); `None` once it overflows.
        let mut mantissa = Some(0u64);
        let mut zeros: i64 = 0;
        let digit = |m: Option<u64>, zeros: &mut i64, d: u8| -> Option<u64> {
            if d == 0 {
                *zeros += 1;
                return m;
            }
            let mut m = m?;
            for _ in 0..=*zeros {
                m = m.checked_mul(10)?;
            }
            *zeros = 0;
            m.checked_add(u64::from(d))
        };
        match self.peek()? {
            Some(b'0') => {
                self.pos += 1;
                if matches!(self.peek()?, Some(b'0'..=b'9')) {
                    return self.error("invalid number");
                }
            }
            Some(b'1'..=b'9') => {
                while let Some(b @ b'0'..=b'9') = self.peek()? {
                    self.pos += 1;
                    mantissa = digit(mantissa, &mut zeros, b - b'0');
                }
            }
            _ => return self.error("invalid number"),
        }
        let mut integer = true;
        let mut fraction_digits: i64 = 0;
        if self.peek()? == Some(b'.') {
            self.pos += 1;
            integer = false;
            if !matches!(self.peek()?, Some(b'0'..=b'9')) {
                return self.error("invalid number");
            }
            while let Some(b @ b'0'..=b'9') = self.peek()? {
                self.pos += 1;
                fraction_digits += 1;
                mantissa = digit(mantissa, &mut zeros, b - b'0');
            }
        }
        let mut exponent: i64 = 0;
        if matches!(self.peek()?, Some(b'e' | b'E')) {
            self.pos += 1;
            integer = false;
            let negative_exp = self.peek()? == Some(b'-');
            if matches!(self.peek()?, Some(b'-' | b'+')) {
                self.pos += 1;
            }
            if !matches!(self.peek()?, Some(b'0'..=b'9')) {
                return self.error("invalid number");
            }
            while let Some(b @ b'0'..=b'9') = self.peek()? {
                self.pos += 1;
                // Saturates beyond any digit count an input can have (which offsets it).
                exponent = (exponent * 10 + i64::from(b - b'0')).min(1_000_000_000_000_000);
            }
            if negative_exp {
                exponent = -exponent;
            }
        }
        let scale = zeros - fraction_digits + exponent;
        let magnitude = match mantissa {
            Some(0) => Some(0),
            Some(m) if scale >= 0 => (0..scale).try_fold(m, |m, _| m.checked_mul(10)),
            _ => None,
        };
        Ok(Number {
            magnitude,
            // `-0` is 0 (written as an integer, it is not one: serde_json reads it as -0.0).
            negative: negative && magnitude != Some(0),
            integer: integer && !(negative && magnitude == Some(0)),
        })
    }
}

/// Whether two fields of a large object share a name (sorted by hash, so a hostile object cannot
/// make the check quadratic). More than [`MAX_SAME_HASH`] names with one FNV hash count as a
/// duplicate: no document has them unless they were made to collide.
fn has_duplicate_name(fields: &[(Name, Value)]) -> bool {
    // By hash (the key-set parser sorts the same pairs: one sort in the .wasm), then by name.
    let mut hashes: Vec<(u64, u32)> = (0u32..)
        .zip(fields)
        .map(|(i, (k, _))| (crate::keys::fnv(k.as_bytes()), i))
        .collect();
    hashes.sort_unstable();
    let name = |i: u32| fields.get(i as usize).map(|(k, _)| k);
    // Within each run of equal hashes, every pair (a run is one name but for a collision).
    hashes.chunk_by(|a, b| a.0 == b.0).any(|run| {
        run.len() > MAX_SAME_HASH
            || run.iter().enumerate().any(|(i, a)| {
                run.get(i + 1..)
                    .unwrap_or_default()
                    .iter()
                    .any(|b| name(a.1) == name(b.1))
            })
    })
}

/// The filter's values from serde_json's, for the native tools (the CLI, the key service and
/// tests build configurations with serde_json).
#[cfg(not(target_arch = "wasm32"))]
impl From<&serde_json::Value> for Value {
    fn from(v: &serde_json::Value) -> Value {
        match v {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => Value::Number(match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => Number::from(u),
                (None, Some(i)) => Number::from(i),
                _ => {
                    let f = n.as_f64().unwrap_or(f64::NAN);
                    let whole = f.fract() == 0.0 && f.abs() < 1.8e19;
                    Number {
                        magnitude: whole.then_some(f.abs() as u64),
                        negative: f.is_sign_negative() && f != 0.0,
                        integer: false,
                    }
                }
            }),
            serde_json::Value::String(s) => Value::String(s.clone()),
            serde_json::Value::Array(a) => Value::Array(a.iter().map(Value::from).collect()),
            serde_json::Value::Object(m) => Value::Object(Map(m
                .iter()
                .map(|(k, v)| (Cow::Owned(k.clone()), Value::from(v)))
                .collect())),
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
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
mod tests {
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
        assert!(err(&format!("{{{}}}", many.join(",")))
            .starts_with("an object has the same field twice"));
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
}
