//! `keygate scan`'s findings and their three formats (text, JSON, SARIF 2.1.0). Pure: no
//! finding holds a whole key, only its prefix, masked form and fingerprint.

use super::matcher::Pattern;
use serde_json::{json, Value};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The file's path as found (relative to the scanned PATH's parent when PATH was relative;
    /// in history, the path within the repository).
    pub path: String,
    pub line: u64,
    /// The commit that brought the blob in, when found in history.
    pub commit: Option<String>,
    pub prefix: String,
    pub environment: Option<String>,
    pub masked: String,
    pub fingerprint: String,
    /// With `--check`: whether the key service knows the key as live.
    pub live: Option<bool>,
}

/// Sorted by path, line, commit (then fingerprint): the same output for the same input.
pub fn sort(findings: &mut [Finding]) {
    findings.sort_by(|a, b| {
        (&a.path, a.line, &a.commit, &a.fingerprint).cmp(&(
            &b.path,
            b.line,
            &b.commit,
            &b.fingerprint,
        ))
    });
}

/// One line per finding: `path:line: masked (environment) fingerprint[ commit C][ live|not live]`.
pub fn text(findings: &[Finding]) -> String {
    let mut out = String::new();
    for f in findings {
        // A path is printed without its control characters: a file named with escape
        // sequences or a newline cannot forge lines on a terminal.
        let path: String = f
            .path
            .chars()
            .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
            .collect();
        out.push_str(&format!("{path}:{}: {}", f.line, f.masked));
        if let Some(e) = &f.environment {
            out.push_str(&format!(" ({e})"));
        }
        out.push_str(&format!(" {}", f.fingerprint));
        if let Some(c) = &f.commit {
            out.push_str(&format!(" commit {c}"));
        }
        match f.live {
            Some(true) => out.push_str(" live"),
            Some(false) => out.push_str(" not-live"),
            None => {}
        }
        out.push('\n');
    }
    out
}

/// `{"findings":[{"path","line","commit","prefix","environment","masked","fingerprint"}]}`,
/// `"live"` last with `--check`.
pub fn json(findings: &[Finding]) -> Value {
    let list: Vec<Value> = findings
        .iter()
        .map(|f| {
            let mut o = json!({
                "path": f.path,
                "line": f.line,
                "commit": f.commit,
                "prefix": f.prefix,
                "environment": f.environment,
                "masked": f.masked,
                "fingerprint": f.fingerprint,
            });
            if let (Some(live), Some(map)) = (f.live, o.as_object_mut()) {
                map.insert("live".into(), json!(live));
            }
            o
        })
        .collect();
    json!({ "findings": list })
}

/// The rule id of a prefix in SARIF.
pub fn rule_id(prefix: &str) -> String {
    format!("keygate/{prefix}")
}

/// SARIF 2.1.0: one run, one rule per configured prefix, one result per finding.
pub fn sarif(findings: &[Finding], patterns: &[Pattern]) -> Value {
    let rules: Vec<Value> = patterns
        .iter()
        .map(|p| {
            let what = match &p.environment {
                Some(e) => format!("A keygate API key with the prefix {} ({e})", p.prefix),
                None => format!("A keygate API key with the prefix {}", p.prefix),
            };
            json!({
                "id": rule_id(&p.prefix),
                "name": "KeygateApiKey",
                "shortDescription": {"text": what},
                "fullDescription": {"text": format!(
                    "{what}{}. Revoke or roll the key, then remove it from the code and its history.",
                    if p.crc32 { ", its CRC-32 checksum verified" } else { "" }
                )},
                "defaultConfiguration": {"level": "error"},
                "properties": {"tags": ["security", "secret"]},
            })
        })
        .collect();
    let results: Vec<Value> = findings
        .iter()
        .map(|f| {
            let mut message = format!(
                "A keygate API key: {} (SHA-256 {})",
                f.masked, f.fingerprint
            );
            if let Some(c) = &f.commit {
                message.push_str(&format!(" in commit {c}"));
            }
            let mut result = json!({
                "ruleId": rule_id(&f.prefix),
                "ruleIndex": patterns.iter().position(|p| p.prefix == f.prefix).unwrap_or(0),
                "level": "error",
                "message": {"text": message},
                "locations": [{"physicalLocation": {
                    "artifactLocation": {"uri": uri(&f.path)},
                    "region": {"startLine": f.line},
                }}],
                "partialFingerprints": {"keygate/v1": f.fingerprint},
            });
            let mut properties = serde_json::Map::new();
            if let Some(c) = &f.commit {
                properties.insert("commit".into(), json!(c));
            }
            if let Some(live) = f.live {
                properties.insert("live".into(), json!(live));
            }
            if let (false, Some(map)) = (properties.is_empty(), result.as_object_mut()) {
                map.insert("properties".into(), Value::Object(properties));
            }
            result
        })
        .collect();
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "keygate",
                "version": keygate::version::VERSION,
                "informationUri": "https://github.com/keygate/keygate/blob/main/docs/leaks.md",
                "rules": rules,
            }},
            "results": results,
        }],
    })
}

/// A path as a SARIF artifact URI: `/` separators, a relative reference for a relative path,
/// `file://` for an absolute one, everything but unreserved characters and `/` percent-encoded.
pub fn uri(path: &str) -> String {
    let path = path.replace('\\', "/");
    let mut out = String::new();
    if path.starts_with('/') {
        out.push_str("file://");
    }
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(path: &str, line: u64, commit: Option<&str>) -> Finding {
        Finding {
            path: path.into(),
            line,
            commit: commit.map(str::to_string),
            prefix: "sk_live_".into(),
            environment: Some("LIVE".into()),
            masked: "sk_live_AbCd…".into(),
            fingerprint: "ab".repeat(32),
            live: None,
        }
    }

    #[test]
    fn findings_sort_by_path_line_commit() {
        let mut f = vec![
            finding("b", 1, None),
            finding("a", 10, None),
            finding("a", 2, Some("2")),
            finding("a", 2, Some("1")),
        ];
        sort(&mut f);
        let got: Vec<_> = f
            .iter()
            .map(|f| (f.path.as_str(), f.line, f.commit.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a", 2, Some("1".into())),
                ("a", 2, Some("2".into())),
                ("a", 10, None),
                ("b", 1, None)
            ]
        );
    }

    #[test]
    fn json_has_exactly_the_documented_fields_in_order() {
        let v = json(&[finding("src/a.rs", 3, None)]);
        assert_eq!(
            v.to_string(),
            format!(
                r#"{{"findings":[{{"path":"src/a.rs","line":3,"commit":null,"prefix":"sk_live_","environment":"LIVE","masked":"sk_live_AbCd…","fingerprint":"{}"}}]}}"#,
                "ab".repeat(32)
            )
        );
        let mut checked = finding("a", 1, Some("c0ffee"));
        checked.live = Some(true);
        let v = json(&[checked]);
        assert_eq!(v["findings"][0]["live"], true);
        assert_eq!(v["findings"][0]["commit"], "c0ffee");
    }

    #[test]
    fn text_names_path_line_environment_and_commit() {
        let mut f = finding("a.env", 7, Some("c0ffee"));
        f.live = Some(false);
        assert_eq!(
            text(&[f]),
            format!(
                "a.env:7: sk_live_AbCd… (LIVE) {} commit c0ffee not-live\n",
                "ab".repeat(32)
            )
        );
    }

    #[test]
    fn sarif_has_the_required_fields() {
        let patterns = vec![Pattern {
            prefix: "sk_live_".into(),
            environment: Some("LIVE".into()),
            crc32: false,
        }];
        let v = sarif(&[finding("dir/my file.rs", 4, Some("c0ffee"))], &patterns);
        assert_eq!(v["version"], "2.1.0");
        let run = &v["runs"][0];
        assert_eq!(run["tool"]["driver"]["name"], "keygate");
        assert_eq!(run["tool"]["driver"]["rules"][0]["id"], "keygate/sk_live_");
        let r = &run["results"][0];
        assert_eq!(r["ruleId"], "keygate/sk_live_");
        assert_eq!(r["level"], "error");
        let loc = &r["locations"][0]["physicalLocation"];
        assert_eq!(loc["artifactLocation"]["uri"], "dir/my%20file.rs");
        assert_eq!(loc["region"]["startLine"], 4);
        assert_eq!(r["partialFingerprints"]["keygate/v1"], "ab".repeat(32));
        assert_eq!(r["properties"]["commit"], "c0ffee");
        assert_eq!(uri("/abs/x"), "file:///abs/x");
    }
}
