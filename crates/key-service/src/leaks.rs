//! Leak reports (SPEC §15), as plain Rust: what a partner's report body says, the public keys it
//! is signed with, whether a signature holds, what a report does to a key, and the feedback
//! answered. No I/O: the endpoints are `crate::partners`'.

use base64::Engine;
use keygate::keys::digest_hex;
use keygate::model::{Gate, LeakPolicy};
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use serde_json::{json, Value};

/// Who reports leaks, and the names of their headers and flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    GitHub,
    GitLab,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::GitHub => "github",
            Origin::GitLab => "gitlab",
        }
    }

    /// The header naming the key a report is signed with.
    pub fn identifier_header(self) -> &'static str {
        match self {
            Origin::GitHub => "github-public-key-identifier",
            Origin::GitLab => "gitlab-public-key-identifier",
        }
    }

    /// The header holding the signature (base64 DER).
    pub fn signature_header(self) -> &'static str {
        match self {
            Origin::GitHub => "github-public-key-signature",
            Origin::GitLab => "gitlab-public-key-signature",
        }
    }
}

/// Where GitHub publishes its secret-scanning keys (`--github-keys-url`'s default).
pub const GITHUB_KEYS_URL: &str = "https://api.github.com/meta/public_keys/secret_scanning";

/// Longest url or source kept from a report (longer ones are cut).
const URL_MAX: usize = 2048;
const SOURCE_MAX: usize = 64;
/// Longest token looked at (a longer one is no key of this service: a false positive).
pub const TOKEN_MAX: usize = 512;

/// One reported token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reported {
    /// The SHA-256 digest of the token (the token itself is dropped on arrival).
    pub digest: String,
    /// `type` as reported (GitHub's name of the pattern); echoed in the feedback.
    pub token_type: String,
    pub url: Option<String>,
    pub source: Option<String>,
}

/// Text from a report kept for people: control characters replaced, cut at `max` characters.
fn clean(s: &str, max: usize) -> String {
    s.chars()
        .take(max)
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect()
}

fn opt_text(
    o: &serde_json::Map<String, Value>,
    field: &str,
    i: usize,
    max: usize,
) -> Result<Option<String>, String> {
    match o.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(clean(s, max))),
        Some(_) => Err(format!("$[{i}].{field}: must be a string")),
    }
}

/// Reads a report body: a JSON array of `{"token","type","url","source"}` (GitHub and GitLab
/// partner reports) or, with `location_field`, of `{"token","type","location"}` (GitLab's
/// revocation API). Other fields are ignored (partners may add some). The error names the path.
pub fn read_report(body: &[u8], location_field: &str) -> Result<Vec<Reported>, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("$: not JSON ({e})"))?;
    let Value::Array(items) = value else {
        return Err("$: must be an array of reported tokens".into());
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let Value::Object(o) = item else {
                return Err(format!("$[{i}]: must be an object"));
            };
            let token = match o.get("token") {
                Some(Value::String(t)) if !t.is_empty() => t,
                _ => return Err(format!("$[{i}].token: must be a non-empty string")),
            };
            let token_type = opt_text(o, "type", i, 256)?.unwrap_or_default();
            Ok(Reported {
                digest: digest_hex(token.as_bytes()),
                token_type,
                url: opt_text(o, location_field, i, URL_MAX)?,
                source: opt_text(o, "source", i, SOURCE_MAX)?,
            })
        })
        .collect()
}

/// A partner's public key.
#[derive(Debug, Clone)]
pub struct PublicKey {
    pub identifier: String,
    pub key: VerifyingKey,
}

/// Reads a partner's key list, `{"public_keys":[{"key_identifier","key"(PEM),"is_current"}]}`.
/// Entries that are not P-256 public keys are skipped; no usable key at all is an error.
pub fn read_public_keys(body: &[u8]) -> Result<Vec<PublicKey>, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON ({e})"))?;
    let keys = value
        .get("public_keys")
        .and_then(Value::as_array)
        .ok_or("no \"public_keys\" array")?;
    let out: Vec<PublicKey> = keys
        .iter()
        .filter_map(|k| {
            let identifier = k.get("key_identifier")?.as_str()?;
            let pem = k.get("key")?.as_str()?;
            let key = VerifyingKey::from_public_key_pem(pem).ok()?;
            (!identifier.is_empty() && identifier.len() <= 256).then(|| PublicKey {
                identifier: identifier.to_string(),
                key,
            })
        })
        .collect();
    if out.is_empty() {
        return Err("no P-256 public key in the list".into());
    }
    Ok(out)
}

/// Why a signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadSignature {
    /// Not base64, or not a DER ECDSA signature.
    Malformed,
    /// Well formed, and does not verify.
    Mismatch,
}

/// A signature header's value: base64 of a DER ECDSA P-256 signature.
pub fn parse_signature(header: &str) -> Result<Signature, BadSignature> {
    let der = base64::engine::general_purpose::STANDARD
        .decode(header.trim())
        .map_err(|_| BadSignature::Malformed)?;
    Signature::from_der(&der).map_err(|_| BadSignature::Malformed)
}

/// Whether `signature` signs SHA-256 of `body` (the raw bytes, as received) with `key`.
pub fn verify(key: &VerifyingKey, body: &[u8], signature: &Signature) -> Result<(), BadSignature> {
    key.verify(body, signature)
        .map_err(|_| BadSignature::Mismatch)
}

/// Whether a live key of `prefix` with `environment` (the key's effective one) is revoked when
/// reported: the prefix's `leak_policy`, else the default for the environment.
pub fn revokes(gate: &Gate, prefix: &str, environment: Option<&str>) -> bool {
    let policy = gate
        .prefixes
        .iter()
        .find(|p| p.prefix == prefix)
        .and_then(|p| p.leak_policy)
        .unwrap_or_else(|| LeakPolicy::default_for(environment));
    policy == LeakPolicy::Revoke
}

/// GitHub's feedback for each reported token, in order: `true_positive` for a key the service
/// knows, `false_positive` otherwise (the token's SHA-256, never the token).
pub fn feedback(reported: &[Reported], known: &dyn Fn(&str) -> bool) -> Value {
    Value::Array(
        reported
            .iter()
            .map(|r| {
                let label = if known(&r.digest) {
                    "true_positive"
                } else {
                    "false_positive"
                };
                json!({"token_hash": r.digest, "token_type": r.token_type, "label": label})
            })
            .collect(),
    )
}

/// The token types GitLab's revocation API is told about (`GET /v1/revocable_token_types`):
/// the secrets analyzer's identifier of `keygate rules --format gitleaks`' rule for each prefix
/// (`gitleaks_rule_id_` and the rule id, lowercase, every other character `_`).
pub fn revocable_types(gate: &Gate) -> Vec<String> {
    gate.prefixes
        .iter()
        .map(|p| format!("gitleaks_rule_id_{}", slug(&rule_id(&p.prefix))))
        .collect()
}

/// The gitleaks rule id of a prefix.
pub fn rule_id(prefix: &str) -> String {
    format!(
        "keygate-{}",
        slug(prefix).trim_matches('_').replace('_', "-")
    )
}

fn slug(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Signer;
    use p256::ecdsa::SigningKey;
    use p256::pkcs8::EncodePublicKey;

    fn signing_key() -> SigningKey {
        SigningKey::from_slice(&[7u8; 32]).unwrap()
    }

    fn sign(key: &SigningKey, body: &[u8]) -> String {
        let sig: Signature = key.sign(body);
        base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes())
    }

    #[test]
    fn a_signature_over_the_raw_body_verifies_and_nothing_else_does() {
        let key = signing_key();
        let body =
            br#"[{"token":"sk_live_x","type":"keygate","url":"https://x","source":"content"}]"#;
        let sig = sign(&key, body);
        let verifying = *key.verifying_key();
        let check = |body: &[u8], sig: &str| verify(&verifying, body, &parse_signature(sig)?);
        assert_eq!(check(body, &sig), Ok(()));
        let mut other = body.to_vec();
        other[3] ^= 1;
        assert_eq!(check(&other, &sig), Err(BadSignature::Mismatch));
        assert_eq!(check(body, "not base64!"), Err(BadSignature::Malformed));
        assert_eq!(check(body, "AAAA"), Err(BadSignature::Malformed));
        let stranger = SigningKey::from_slice(&[9u8; 32]).unwrap();
        assert_eq!(
            check(body, &sign(&stranger, body)),
            Err(BadSignature::Mismatch)
        );
    }

    #[test]
    fn key_lists_are_read_as_github_publishes_them() {
        let pem = signing_key()
            .verifying_key()
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .unwrap();
        let body = json!({"public_keys": [
            {"key_identifier": "abc", "key": pem, "is_current": true},
            {"key_identifier": "rsa", "key": "-----BEGIN PUBLIC KEY-----\nMFk=\n-----END PUBLIC KEY-----", "is_current": false}
        ]});
        let keys = read_public_keys(body.to_string().as_bytes()).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].identifier, "abc");
        assert!(read_public_keys(b"{\"public_keys\":[]}").is_err());
        assert!(read_public_keys(b"[]").is_err());
    }

    #[test]
    fn reports_are_read_to_digests_and_bad_ones_name_the_path() {
        let r = read_report(
            br#"[{"token":"sk_live_a","type":"keygate_sk_live","url":"https://github.com/o/r/blob/x/f#L1","source":"content","extra":1},{"token":"b"}]"#,
            "url",
        )
        .unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].digest, digest_hex(b"sk_live_a"));
        assert_eq!(r[0].source.as_deref(), Some("content"));
        assert_eq!(r[1].url, None);
        assert_eq!(
            read_report(b"{}", "url").unwrap_err(),
            "$: must be an array of reported tokens"
        );
        assert_eq!(
            read_report(br#"[{"token":""}]"#, "url").unwrap_err(),
            "$[0].token: must be a non-empty string"
        );
        assert_eq!(
            read_report(br#"[1]"#, "url").unwrap_err(),
            "$[0]: must be an object"
        );
        assert_eq!(
            read_report(br#"[{"token":"a","url":5}]"#, "url").unwrap_err(),
            "$[0].url: must be a string"
        );
        let r = read_report(
            br#"[{"token":"a","location":"https://gitlab/x\u0007"}]"#,
            "location",
        )
        .unwrap();
        assert_eq!(r[0].url.as_deref(), Some("https://gitlab/x\u{FFFD}"));
    }

    #[test]
    fn feedback_holds_digests_and_labels() {
        let r = read_report(
            br#"[{"token":"a","type":"t"},{"token":"b","type":"t"}]"#,
            "url",
        )
        .unwrap();
        let a = digest_hex(b"a");
        let f = feedback(&r, &|d| d == a);
        assert_eq!(
            f,
            json!([
                {"token_hash": a, "token_type": "t", "label": "true_positive"},
                {"token_hash": digest_hex(b"b"), "token_type": "t", "label": "false_positive"}
            ])
        );
    }

    #[test]
    fn policies_default_by_environment() {
        let gate = keygate::config::gate_from_value(&crate::json::core_value(&json!({
            "key_sources": [{"header": "x-api-key"}],
            "prefixes": [{"prefix": "sk_live_", "environment": "LIVE"},
                         {"prefix": "sk_test_", "environment": "TEST"},
                         {"prefix": "pk_live_", "environment": "LIVE", "leak_policy": "notify"}]
        })))
        .unwrap();
        assert!(revokes(&gate, "sk_live_", Some("LIVE")));
        assert!(!revokes(&gate, "sk_test_", Some("TEST")));
        assert!(
            revokes(&gate, "sk_test_", Some("production")),
            "a key's own environment counts"
        );
        assert!(!revokes(&gate, "pk_live_", Some("LIVE")));
        assert_eq!(rule_id("sk_live_"), "keygate-sk-live");
        assert_eq!(
            revocable_types(&gate),
            vec![
                "gitleaks_rule_id_keygate_sk_live",
                "gitleaks_rule_id_keygate_sk_test",
                "gitleaks_rule_id_keygate_pk_live"
            ]
        );
    }
}
