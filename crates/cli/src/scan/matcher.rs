//! What counts as a key in a buffer (SPEC §15): a configured prefix, not preceded by a key
//! character, followed by a run of key characters; for a prefix with a checksum (SPEC §9) only a
//! token whose checksum holds, otherwise at least [`MIN_BODY`] characters after the prefix (so
//! documentation placeholders such as `sk_live_...` or `sk_live_xxx` are not keys). The longest
//! configured prefix wins, as in the filter. Pure: bytes in, findings out.

use aho_corasick::{AhoCorasick, Input, MatchKind};
use keygate::model::{Checksum, Prefix};

/// Characters after a prefix without a checksum for a token to count: keygate mints 32.
pub const MIN_BODY: usize = 20;
/// The most characters after the prefix a key has (keygate mints 32 or 36; the key service reads
/// no reported token over 512 characters): a longer run is no key.
pub const MAX_BODY: usize = 480;

/// The marker that skips a line.
pub const ALLOW: &[u8] = b"keygate:allow";

/// A key character: `A-Z a-z 0-9 _ -` (URL-safe base64, and base62 within it).
pub fn is_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// One configured prefix as the scanner needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    pub prefix: String,
    pub environment: Option<String>,
    pub crc32: bool,
}

impl Pattern {
    pub fn from_prefix(p: &Prefix) -> Self {
        Pattern {
            prefix: p.prefix.clone(),
            environment: p.environment.clone(),
            crc32: p.checksum == Some(Checksum::Crc32),
        }
    }
}

/// A key found in a buffer: never the key itself, only what may be shown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hit {
    /// 1-based line number.
    pub line: u64,
    /// Index into the matcher's patterns.
    pub pattern: usize,
    /// The prefix and the next 4 characters, then `…`.
    pub masked: String,
    /// Lowercase hex SHA-256 of the whole key (the key service's digest).
    pub fingerprint: String,
}

/// Every configured prefix, searched at once.
pub struct Matcher {
    patterns: Vec<Pattern>,
    automaton: AhoCorasick,
    /// Per pattern: its prefix is all key characters.
    key_prefix: Vec<bool>,
}

impl Matcher {
    pub fn new(patterns: Vec<Pattern>) -> Result<Self, String> {
        if patterns.is_empty() {
            return Err("the configuration has no prefixes: nothing to scan for".into());
        }
        let automaton = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(patterns.iter().map(|p| p.prefix.as_bytes()))
            .map_err(|e| format!("the prefixes: {e}"))?;
        let key_prefix = patterns
            .iter()
            .map(|p| p.prefix.bytes().all(is_key_byte))
            .collect();
        Ok(Matcher {
            patterns,
            automaton,
            key_prefix,
        })
    }

    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    /// The keys in `buf`, in order.
    pub fn find(&self, buf: &[u8]) -> Vec<Hit> {
        let mut hits = Vec::new();
        let mut pos = 0;
        // Line numbers are counted forward from the last hit.
        let (mut line, mut counted) = (1u64, 0usize);
        while pos < buf.len() {
            let Some(m) = self.automaton.find(Input::new(buf).span(pos..buf.len())) else {
                break;
            };
            let (start, body_start) = (m.start(), m.end());
            let body_len = buf[body_start..]
                .iter()
                .take_while(|&&b| is_key_byte(b))
                .count();
            let end = body_start + body_len;
            let pattern = &self.patterns[m.pattern().as_usize()];
            let token = &buf[start..end];
            let counts = !(start > 0 && is_key_byte(buf[start - 1]))
                && body_len <= MAX_BODY
                && if pattern.crc32 {
                    keygate::checksum::valid(token)
                } else {
                    body_len >= MIN_BODY
                };
            if !counts {
                // Another prefix may start inside this one, unless this prefix is all key
                // characters: then any match starting inside the run is preceded by a key
                // character and counts no more than this one (one pass over a long run, never
                // one per position: `xsk_sk_sk_…` stays linear).
                pos = if self.key_prefix[m.pattern().as_usize()] {
                    end.max(start + 1)
                } else {
                    start + 1
                };
                continue;
            }
            pos = end;
            let (line_start, line_end) = line_bounds(buf, start, end);
            if memchr::memmem::find(&buf[line_start..line_end], ALLOW).is_some() {
                continue;
            }
            line += memchr::memchr_iter(b'\n', &buf[counted..start]).count() as u64;
            counted = start;
            hits.push(Hit {
                line,
                pattern: m.pattern().as_usize(),
                masked: mask(token, pattern.prefix.len()),
                fingerprint: keygate::keys::digest_hex(token),
            });
        }
        hits
    }
}

/// The line around `start..end`, without its newline.
fn line_bounds(buf: &[u8], start: usize, end: usize) -> (usize, usize) {
    let line_start = memchr::memrchr(b'\n', &buf[..start]).map_or(0, |i| i + 1);
    let line_end = memchr::memchr(b'\n', &buf[end..]).map_or(buf.len(), |i| end + i);
    (line_start, line_end)
}

/// The prefix and the next 4 characters of `token`, then `…`. The token is ASCII past the prefix
/// (key characters); the prefix is printable ASCII (the configuration's rule).
pub fn mask(token: &[u8], prefix_len: usize) -> String {
    let shown = token.len().min(prefix_len + 4);
    format!("{}…", String::from_utf8_lossy(&token[..shown]))
}

/// Whether `data` looks binary: a NUL byte in its first 8 KiB.
pub fn looks_binary(data: &[u8]) -> bool {
    memchr::memchr(0, &data[..data.len().min(8192)]).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher() -> Matcher {
        Matcher::new(vec![
            Pattern {
                prefix: "sk_live_".into(),
                environment: Some("LIVE".into()),
                crc32: false,
            },
            Pattern {
                prefix: "sk_".into(),
                environment: None,
                crc32: false,
            },
            Pattern {
                prefix: "mf_".into(),
                environment: Some("SANDBOX".into()),
                crc32: true,
            },
        ])
        .unwrap()
    }

    const LIVE: &str = "sk_live_AbCdEfGhIjKlMnOpQrStUvWxYz012345";

    fn crc_key() -> String {
        keygate::checksum::append("mf_0123456789abcdefghijABCDEFGHIJ")
    }

    #[test]
    fn a_long_run_of_prefixes_inside_a_word_is_one_pass_and_no_key() {
        // 400,000 candidates inside one word: each would re-read the rest of the run if the
        // scan restarted one byte on; none is a key, and the key after the run is found.
        let mut buf = "x".to_string() + &"sk_".repeat(400_000) + &"mf_".repeat(1000);
        buf.push(' ');
        buf.push_str(LIVE);
        let hits = matcher().find(buf.as_bytes());
        assert_eq!(hits.len(), 1);
        assert_eq!(
            hits[0].fingerprint,
            keygate::keys::digest_hex(LIVE.as_bytes())
        );
        // Longer than any key: not one.
        let long = format!("sk_live_{}", "a".repeat(MAX_BODY + 1));
        assert!(matcher().find(long.as_bytes()).is_empty());
        let longest = format!("sk_live_{}", "a".repeat(MAX_BODY));
        assert_eq!(matcher().find(longest.as_bytes()).len(), 1);
    }

    #[test]
    fn finds_a_key_with_its_line_mask_and_fingerprint() {
        let text = format!("a = 1\nb = 2\nkey = \"{LIVE}\"\n");
        let hits = matcher().find(text.as_bytes());
        assert_eq!(
            hits,
            vec![Hit {
                line: 3,
                pattern: 0,
                masked: "sk_live_AbCd…".into(),
                fingerprint: keygate::keys::digest_hex(LIVE.as_bytes()),
            }]
        );
    }

    #[test]
    fn the_longest_prefix_wins_and_a_shorter_one_still_counts() {
        let other = "sk_ZZZZyyyyXXXXwwwwVVVVuuuu";
        let text = format!("{LIVE} {other}\n{LIVE}");
        let hits = matcher().find(text.as_bytes());
        let got: Vec<_> = hits.iter().map(|h| (h.line, h.pattern)).collect();
        assert_eq!(got, vec![(1, 0), (1, 1), (2, 0)]);
        assert_eq!(hits[1].masked, "sk_ZZZZ…");
    }

    #[test]
    fn placeholders_words_and_bad_checksums_are_not_keys() {
        let good = crc_key();
        let mut bad = good.clone().into_bytes();
        let last = bad.len() - 1;
        bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
        let bad = String::from_utf8(bad).unwrap();
        for text in [
            "sk_live_...".to_string(),
            "sk_live_xxx".into(),
            "sk_live_xxxxxxxxxxxxxxxxxxx".into(), // 19
            format!("x{LIVE}"),
            format!("risk_{}", &LIVE[3..]),
            bad,
            format!("{good}x"),
        ] {
            assert_eq!(matcher().find(text.as_bytes()), vec![], "{text}");
        }
        assert_eq!(matcher().find(good.as_bytes()).len(), 1);
        assert_eq!(
            matcher()
                .find("sk_live_xxxxxxxxxxxxxxxxxxxx".as_bytes())
                .len(),
            1
        );
    }

    #[test]
    fn a_key_after_a_rejected_one_is_found() {
        // The word `xsk_live_…` is not a key; the key after it on the same line is.
        let text = format!("xsk_live_AAAAAAAAAAAAAAAAAAAAAAA {LIVE}");
        let hits = matcher().find(text.as_bytes());
        assert_eq!(hits.len(), 1);
        assert_eq!(
            hits[0].fingerprint,
            keygate::keys::digest_hex(LIVE.as_bytes())
        );
    }

    #[test]
    fn allowed_lines_are_skipped_and_lines_still_count() {
        let text = format!("{LIVE} # keygate:allow\n\n{LIVE}\r\n# keygate:allow\n{LIVE}");
        let lines: Vec<_> = matcher()
            .find(text.as_bytes())
            .iter()
            .map(|h| h.line)
            .collect();
        assert_eq!(lines, vec![3, 5]);
    }

    #[test]
    fn bytes_that_are_not_utf8_are_fine() {
        let mut data = vec![0xff, 0xfe, b'\n'];
        data.extend_from_slice(LIVE.as_bytes());
        data.extend_from_slice(&[0xc3, 0x28]);
        assert_eq!(matcher().find(&data)[0].line, 2);
        assert!(!looks_binary(&data));
        assert!(looks_binary(b"abc\0def"));
    }

    #[test]
    fn no_prefixes_is_an_error() {
        assert!(Matcher::new(vec![]).is_err());
    }
}
