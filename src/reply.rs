//! What the client gets (SPEC §2): statuses, JSON bodies and headers, built from a verdict.

use crate::decide::{Decision, Verdict};
use crate::model::Gate;
use crate::ratelimit::RateHeaders;

pub const WWW_AUTHENTICATE: &str = "Bearer realm=\"api\"";

/// A local answer from the filter.
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u32,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// A JSON string literal (quoted and escaped), or `null`.
fn json_str(s: Option<&str>) -> String {
    match s {
        Some(s) => crate::json::quote(s),
        None => "null".to_string(),
    }
}

/// `{"error":…,"code":…}`, fields in the documented order.
fn error_body(message: &str, code: &str) -> String {
    format!(
        r#"{{"error":{},"code":{}}}"#,
        json_str(Some(message)),
        json_str(Some(code))
    )
}

/// Status, message and code of a rejection.
pub fn rejection(v: &Verdict) -> (u32, String, &'static str) {
    match v.decision {
        Decision::Missing => (401, "Missing API key".into(), "UNAUTHORIZED"),
        Decision::Invalid => (401, "Invalid API key".into(), "UNAUTHORIZED"),
        Decision::Revoked => (401, "API key has been revoked".into(), "UNAUTHORIZED"),
        Decision::Expired => (401, "API key has expired".into(), "UNAUTHORIZED"),
        Decision::Forbidden => (403, v.forbidden_message().to_string(), "FORBIDDEN"),
        Decision::RateLimited => (
            429,
            format!(
                "Rate limit exceeded. Try again in {} seconds.",
                v.retry_after.unwrap_or(1)
            ),
            "RATE_LIMITED",
        ),
        Decision::Unavailable if v.rate_service_down => {
            (503, "Rate limit service unavailable".into(), "UNAVAILABLE")
        }
        Decision::Unavailable => (503, "API key service unavailable".into(), "UNAVAILABLE"),
        Decision::BadRequest => (400, "Invalid request path".into(), "BAD_REQUEST"),
        Decision::UsageExceeded => (429, "Usage limit exceeded".into(), "USAGE_EXCEEDED"),
        // Not a rejection; answered as a fault if ever asked.
        Decision::Allowed => (500, INTERNAL.into(), "INTERNAL"),
    }
}

fn push_rate(headers: &mut Vec<(String, String)>, rate: Option<&RateHeaders>) {
    if let Some(r) = rate {
        headers.push(("x-ratelimit-limit".into(), r.limit.to_string()));
        headers.push(("x-ratelimit-remaining".into(), r.remaining.to_string()));
        headers.push(("x-ratelimit-reset".into(), r.reset.to_string()));
    }
}

/// Headers every answer about a known key or prefix carries: environment and rate limits.
pub fn identity_headers(gate: &Gate, v: &Verdict) -> Vec<(String, String)> {
    let mut headers = Vec::with_capacity(4);
    if let (Some(h), Some(env)) = (&gate.environment_header, v.environment()) {
        headers.push((h.clone(), env.to_string()));
    }
    push_rate(&mut headers, v.rate.as_ref());
    if let Some(c) = &v.credits {
        headers.push(("x-credits-remaining".into(), c.remaining.to_string()));
        if let Some(r) = c.reset {
            headers.push(("x-credits-reset".into(), r.to_string()));
        }
    }
    headers
}

/// The local answer for a rejected request.
pub fn reject(gate: &Gate, v: &Verdict) -> Reply {
    let (status, message, code) = rejection(v);
    let mut headers = identity_headers(gate, v);
    headers.push(("content-type".into(), "application/json".into()));
    if status == 401 && gate.bearer {
        headers.push(("www-authenticate".into(), WWW_AUTHENTICATE.into()));
    }
    if let Some(n) = v.retry_after.filter(|_| status == 429) {
        headers.push(("retry-after".into(), n.to_string()));
    }
    Reply {
        status,
        headers,
        body: error_body(&message, code),
    }
}

const INTERNAL: &str = "Internal error";

/// The answer when the filter cannot judge a request at all (fail closed).
pub fn internal_error() -> Reply {
    Reply {
        status: 500,
        headers: vec![("content-type".into(), "application/json".into())],
        body: error_body(INTERNAL, "INTERNAL"),
    }
}

/// The answer to a GET on `verify_path` with a good key.
pub fn verify(gate: &Gate, v: &Verdict) -> Reply {
    let key = v.key.as_deref();
    let body = format!(
        r#"{{"key":{{"id":{},"name":{},"environment":{},"role":{}}},"organization":{{"id":{}}}}}"#,
        json_str(key.map(|k| k.id.as_str())),
        json_str(key.and_then(|k| k.name.as_deref())),
        json_str(v.environment()),
        json_str(v.role.map(|r| r.name.as_str())),
        json_str(key.and_then(|k| k.tenant.as_deref())),
    );
    let mut headers = identity_headers(gate, v);
    headers.push(("content-type".into(), "application/json".into()));
    headers.push(("cache-control".into(), "no-store".into()));
    Reply {
        status: 200,
        headers,
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::Denial;

    #[test]
    fn the_error_catalogue_lists_every_error_body_and_no_other() {
        let readme = include_str!("../docs/errors.md");
        let mut produced = vec![format!("| 500 | `{}` |", internal_error().body)];
        for d in Decision::ALL
            .into_iter()
            .filter(|d| *d != Decision::Allowed)
        {
            let mut v = Verdict::new(d);
            let denials: Vec<Option<Denial>> = if d == Decision::Forbidden {
                [Denial::Ip, Denial::Referer, Denial::Method, Denial::Path]
                    .map(Some)
                    .to_vec()
            } else {
                vec![None]
            };
            for denial in denials {
                v.denial = denial;
                let (status, message, code) = rejection(&v);
                let body = error_body(&message, code).replace("in 1 seconds", "in N seconds");
                let row = format!("| {status} | `{body}` |");
                assert!(
                    readme.contains(&row),
                    "docs/errors.md lacks {status} {body}"
                );
                produced.push(row);
            }
        }
        // The two answers that need more than a decision to be produced.
        let mut down = Verdict::new(Decision::Unavailable);
        down.rate_service_down = true;
        let mut env = Verdict::new(Decision::Forbidden);
        env.denial = Some(Denial::Environment);
        env.prefix_environment = Some("LIVE");
        for v in [down, env] {
            let (status, message, code) = rejection(&v);
            produced.push(format!("| {status} | `{}` |", error_body(&message, code)));
        }
        assert!(readme.contains(&produced[0]));
        // And the other way: every body the catalogue documents is one keygate produces.
        let documented: Vec<&str> = readme
            .lines()
            .filter(|l| l.starts_with("| 4") || l.starts_with("| 5"))
            .filter_map(|l| Some(&l[..l.find("}` |")? + 4]))
            .collect();
        assert!(documented.len() >= 14, "{documented:?}");
        for row in documented {
            assert!(
                produced.iter().any(|p| p == row),
                "docs/errors.md documents an answer keygate does not give: {row}"
            );
        }
    }
}
