//! The JSON parser: a pull parser over a byte source read in chunks, every problem a
//! [`SyntaxError`] with its line and column.

use super::{Map, Name, Number, Value, KNOWN_NAMES};
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
            // UTF-8 already (`string` checks every string, kept or not).
            None => Cow::Owned(
                std::str::from_utf8(&self.scratch)
                    .unwrap_or_default()
                    .to_string(),
            ),
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
    // By hash (`sort_numbered`, the .wasm's one sort), then by name.
    let mut hashes: Vec<(u64, u32)> = (0u32..)
        .zip(fields)
        .map(|(i, (k, _))| (crate::keys::fnv(k.as_bytes()), i))
        .collect();
    crate::keys::sort_numbered(&mut hashes);
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
