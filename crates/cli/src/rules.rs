//! `keygate rules` (SPEC §15): the configured prefixes as detection rules other scanners load —
//! a gitleaks 8 configuration (TOML, RE2 regexes) or a detect-secrets 1.x plugin (Python) —
//! each with sample keys an operator sends GitHub when registering the pattern. Pure: the
//! patterns and the samples in, the file's text out.

use crate::scan::matcher::{Pattern, MIN_BODY};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RulesFormat {
    Gitleaks,
    DetectSecrets,
}

/// Samples minted per prefix.
pub const SAMPLES: usize = 3;

/// `prefix` as a regex literal that RE2 (gitleaks), Python's `re` and Rust's `regex` all read
/// the same: ASCII punctuation escaped, except `_` (never special) and `<` `>` (which Rust's
/// `regex` reads as word boundaries when escaped).
pub fn regex_literal(prefix: &str) -> String {
    let mut out = String::new();
    for c in prefix.chars() {
        if c.is_ascii_punctuation() && !matches!(c, '_' | '<' | '>') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The RE2 regex of a prefix (no lookaround, no backreferences): group 1 is the key. A
/// checksummed prefix's keys are exactly 36 base62 characters after it (30 random and 6 of
/// checksum, SPEC §9); others at least 20 key characters (keygate mints 32).
pub fn re2_regex(p: &Pattern) -> String {
    let prefix = regex_literal(&p.prefix);
    if p.crc32 {
        format!("(?:^|[^A-Za-z0-9_-])({prefix}[0-9A-Za-z]{{36}})(?:[^A-Za-z0-9_-]|$)")
    } else {
        format!("(?:^|[^A-Za-z0-9_-])({prefix}[A-Za-z0-9_-]{{{MIN_BODY},}})")
    }
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04X}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A Python string literal (ASCII in, as the configuration's prefixes are).
fn py_str(s: &str) -> String {
    let mut out = String::from("'");
    for c in s.chars() {
        match c {
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A rule id or class-name part: the prefix with anything outside `A-Za-z0-9_` as `_`.
fn ident(prefix: &str) -> String {
    prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn describe(p: &Pattern) -> String {
    let mut d = format!("keygate API key, prefix {}", p.prefix);
    if let Some(e) = &p.environment {
        d.push_str(&format!(" ({e})"));
    }
    if p.crc32 {
        d.push_str(", CRC-32 checksummed");
    }
    d
}

/// The sample keys as comment lines (`comment` is `#` in both formats). Each line carries
/// `keygate:allow`, so a file holding the rules does not trip the scanners it configures.
fn sample_comments(patterns: &[Pattern], samples: &[Vec<String>]) -> String {
    let mut out = String::from(
        "# Sample keys for GitHub's secret scanning partner program (freshly minted for this file,\n\
         # never issued, so no key service knows them): send the regex and these with your pattern.\n",
    );
    for (p, keys) in patterns.iter().zip(samples) {
        out.push_str(&format!("#   {}:\n", p.prefix));
        for k in keys {
            out.push_str(&format!(
                "#     {k}  (keygate:allow, pragma: allowlist secret)\n"
            ));
        }
    }
    out
}

/// A gitleaks 8 configuration: one rule per prefix and an allowlist for `keygate:allow` lines.
pub fn gitleaks(patterns: &[Pattern], samples: &[Vec<String>]) -> String {
    let mut out = String::from(
        "# keygate's API keys for gitleaks 8 (keygate rules --format gitleaks).\n\
         # gitleaks detect --config keygate-gitleaks.toml (or [extend] it from your own config).\n\
         # The regexes are RE2: they cannot verify a CRC-32 checksum, so a checksummed prefix's rule\n\
         # matches any 36 base62 characters after it; `keygate scan` verifies the checksum.\n\
         # Where prefixes nest (sk_ and sk_live_), a key can match both rules.\n",
    );
    out.push_str(&sample_comments(patterns, samples));
    out.push_str("\ntitle = \"keygate API keys\"\n");
    for p in patterns {
        out.push_str(&format!(
            "\n[[rules]]\nid = {}\ndescription = {}\nregex = {}\nsecretGroup = 1\nkeywords = [{}]\ntags = [{}]\n",
            toml_str(&keygate_key_service::leaks::rule_id(&p.prefix)),
            toml_str(&describe(p)),
            toml_str(&re2_regex(p)),
            toml_str(&p.prefix),
            [Some("keygate"), Some("api-key"), p.environment.as_deref()]
                .iter()
                .flatten()
                .map(|t| toml_str(t))
                .collect::<Vec<_>>()
                .join(", "),
        ));
    }
    out.push_str(
        "\n# A line holding keygate:allow is not a finding (as with keygate scan).\n\
         [allowlist]\n\
         description = \"lines marked keygate:allow\"\n\
         regexTarget = \"line\"\n\
         regexes = [\"keygate:allow\"]\n",
    );
    out
}

const DETECT_SECRETS_HEAD: &str = r#"
import re
import zlib

from detect_secrets.plugins.base import RegexBasedDetector

_ALPHABET = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz'


def _checksum_holds(token):
    """Whether token ends in the base62 CRC-32 (zlib's) of what precedes it (6 characters)."""
    body, check = token[:-6], token[-6:]
    if not body:
        return False
    n = zlib.crc32(body.encode('ascii')) & 0xFFFFFFFF
    digits = ''
    for _ in range(6):
        digits = _ALPHABET[n % 62] + digits
        n //= 62
    return digits == check


class _KeygateDetector(RegexBasedDetector):
    """A keygate prefix: a line holding keygate:allow is skipped; checksums are verified."""

    crc32 = False

    def analyze_line(self, filename, line, line_number=0, context=None, **kwargs):
        if 'keygate:allow' in line:
            return set()
        return super().analyze_line(
            filename=filename, line=line, line_number=line_number, context=context, **kwargs
        )

    def analyze_string(self, string):
        for match in super().analyze_string(string):
            if not self.crc32 or _checksum_holds(match):
                yield match
"#;

/// A detect-secrets 1.x plugin file (`detect-secrets scan --plugin FILE`): one detector class
/// per prefix, as keygate scan matches (longest prefix first, checksums verified).
pub fn detect_secrets(patterns: &[Pattern], samples: &[Vec<String>]) -> String {
    let mut out = String::from(
        "# keygate's API keys for detect-secrets 1.x (keygate rules --format detect-secrets).\n\
         # detect-secrets scan --plugin keygate_detect_secrets.py [--disable-plugin …] PATH\n",
    );
    out.push_str(&sample_comments(patterns, samples));
    out.push_str(DETECT_SECRETS_HEAD);
    for (i, p) in patterns.iter().enumerate() {
        // A longer configured prefix that starts with this one takes its keys.
        let longer: Vec<String> = patterns
            .iter()
            .filter(|q| q.prefix.len() > p.prefix.len() && q.prefix.starts_with(&p.prefix))
            .map(|q| regex_literal(&q.prefix[p.prefix.len()..]))
            .collect();
        let not_longer = if longer.is_empty() {
            String::new()
        } else {
            format!("(?!{})", longer.join("|"))
        };
        let body = if p.crc32 {
            "[A-Za-z0-9_-]+".to_string()
        } else {
            format!("[A-Za-z0-9_-]{{{MIN_BODY},}}")
        };
        let regex = format!(
            "(?<![A-Za-z0-9_-])({}{not_longer}{body})(?![A-Za-z0-9_-])",
            regex_literal(&p.prefix)
        );
        out.push_str(&format!(
            "\n\nclass Keygate{i}_{}(_KeygateDetector):\n    \"\"\"{}\"\"\"\n\n    secret_type = {}\n    crc32 = {}\n    denylist = (re.compile({}),)\n",
            ident(&p.prefix),
            describe(p).replace('\\', "\\\\").replace('"', "\\\""),
            py_str(&format!("keygate API key ({})", p.prefix)),
            if p.crc32 { "True" } else { "False" },
            py_str(&regex),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns() -> Vec<Pattern> {
        vec![
            Pattern {
                prefix: "sk_live_".into(),
                environment: Some("LIVE".into()),
                crc32: false,
            },
            Pattern {
                prefix: "sk.".into(),
                environment: None,
                crc32: true,
            },
        ]
    }

    #[test]
    fn prefixes_are_escaped_for_every_engine() {
        assert_eq!(regex_literal("sk_live_"), "sk_live_");
        assert_eq!(regex_literal("a.b-c<"), "a\\.b\\-c<");
        assert_eq!(
            re2_regex(&patterns()[1]),
            "(?:^|[^A-Za-z0-9_-])(sk\\.[0-9A-Za-z]{36})(?:[^A-Za-z0-9_-]|$)"
        );
    }

    #[test]
    fn gitleaks_has_a_rule_per_prefix_samples_and_the_allowlist() {
        let samples = vec![vec!["sk_live_S1".into()], vec!["sk.S2".into()]];
        let t = gitleaks(&patterns(), &samples);
        assert_eq!(t.matches("[[rules]]").count(), 2);
        assert!(t.contains("id = \"keygate-sk-live\""));
        assert!(t.contains("regex = \"(?:^|[^A-Za-z0-9_-])(sk\\\\.[0-9A-Za-z]{36})"));
        assert!(t.contains("keywords = [\"sk.\"]"));
        assert!(t.contains("#     sk_live_S1  (keygate:allow"));
        assert!(t.contains("regexTarget = \"line\""));
    }

    #[test]
    fn detect_secrets_has_a_class_per_prefix() {
        let nested = vec![
            Pattern {
                prefix: "sk_live_".into(),
                environment: None,
                crc32: false,
            },
            Pattern {
                prefix: "sk_".into(),
                environment: None,
                crc32: true,
            },
        ];
        let t = detect_secrets(&nested, &[vec![], vec![]]);
        assert!(t.contains("class Keygate0_sk_live_(_KeygateDetector):"));
        assert!(t.contains("secret_type = 'keygate API key (sk_)'"));
        assert!(t.contains("(sk_(?!live_)[A-Za-z0-9_-]+)"));
        assert!(t.contains("crc32 = True"));
    }
}
