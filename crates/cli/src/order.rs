//! Where each JSON path of a JSON text begins, so that a configuration's errors are listed in
//! the order of the file (serde_json's maps are sorted by key, the validator follows them).

use std::collections::HashMap;

/// The byte offset of every object member (its key) and array element of a JSON text, by the
/// JSON path keygate's errors use (`$`, `$.keys[0].id`). A text that is not JSON yields the
/// paths read before the problem.
pub fn offsets(text: &str) -> HashMap<String, usize> {
    let mut scan = Scan {
        text,
        i: 0,
        out: HashMap::new(),
    };
    scan.out.insert("$".into(), 0);
    let _ = scan.value("$");
    scan.out
}

/// Where `path` is in a text with these `offsets`: its own offset, else its closest enclosing
/// path's (a missing field sorts with the object that lacks it); unknown paths sort last.
pub fn position(offsets: &HashMap<String, usize>, path: &str) -> usize {
    let mut p = path;
    loop {
        if let Some(&at) = offsets.get(p) {
            return at;
        }
        match p.rfind(['.', '[']) {
            Some(cut) => p = &p[..cut],
            None => return usize::MAX,
        }
    }
}

struct Scan<'a> {
    text: &'a str,
    i: usize,
    out: HashMap<String, usize>,
}

impl Scan<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.i).copied()
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    /// The value at `i` (at `path`), recording its members' offsets; `i` after it.
    fn value(&mut self, path: &str) -> Option<()> {
        self.skip_whitespace();
        match self.peek()? {
            b'{' => {
                self.i += 1;
                loop {
                    self.skip_whitespace();
                    match self.peek()? {
                        b'}' => {
                            self.i += 1;
                            return Some(());
                        }
                        b',' => self.i += 1,
                        b'"' => {
                            let at = self.i;
                            let member = format!("{path}.{}", self.string()?);
                            self.out.entry(member.clone()).or_insert(at);
                            self.skip_whitespace();
                            (self.peek()? == b':').then_some(())?;
                            self.i += 1;
                            self.value(&member)?;
                        }
                        _ => return None,
                    }
                }
            }
            b'[' => {
                self.i += 1;
                let mut n = 0;
                loop {
                    self.skip_whitespace();
                    match self.peek()? {
                        b']' => {
                            self.i += 1;
                            return Some(());
                        }
                        b',' => self.i += 1,
                        _ => {
                            let element = format!("{path}[{n}]");
                            self.out.entry(element.clone()).or_insert(self.i);
                            self.value(&element)?;
                            n += 1;
                        }
                    }
                }
            }
            b'"' => self.string().map(drop),
            _ => {
                let start = self.i;
                while self.peek().is_some_and(|c| !b",}] \t\n\r".contains(&c)) {
                    self.i += 1;
                }
                (self.i > start).then_some(())
            }
        }
    }

    /// The string at `i`, decoded; `i` after it.
    fn string(&mut self) -> Option<String> {
        let start = self.i;
        self.i += 1;
        loop {
            match self.peek()? {
                b'\\' => self.i += 2,
                b'"' => break,
                _ => self.i += 1,
            }
        }
        self.i += 1;
        serde_json::from_str(self.text.get(start..self.i)?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_member_and_element_is_located() {
        let text = r#"{"x": 1, "keys": [ {"sha256": "abc", "id": "a\"b"}, 7 ], "e\u0041": {}}"#;
        let at = offsets(text);
        let of = |p: &str| text[position(&at, p)..].chars().take(6).collect::<String>();
        assert_eq!(of("$"), "{\"x\": ");
        assert_eq!(of("$.x"), "\"x\": 1");
        assert_eq!(of("$.keys"), "\"keys\"");
        assert_eq!(of("$.keys[0]"), "{\"sha2");
        assert_eq!(of("$.keys[0].id"), "\"id\": ");
        assert_eq!(of("$.keys[1]"), "7 ], \"");
        assert_eq!(of("$.eA"), "\"e\\u00");
        // A missing field is where its object is; an unknown path sorts last.
        assert_eq!(of("$.keys[0].name"), "{\"sha2");
        assert_eq!(position(&at, "nothing"), usize::MAX);
        assert!(position(&at, "$.x") < position(&at, "$.keys[0].sha256"));
        assert!(position(&at, "$.keys[0].sha256") < position(&at, "$.keys[0].id"));
    }

    #[test]
    fn broken_text_yields_what_was_read() {
        for text in [
            "",
            "{",
            "[}",
            "{\"a\" 1}",
            "{\"a\": [1, }",
            "\"open",
            "{\"a\": \"\\",
        ] {
            let at = offsets(text);
            assert_eq!(at.get("$"), Some(&0), "{text:?}");
        }
        assert!(offsets("{\"a\": [1, }").contains_key("$.a[0]"));
    }
}
