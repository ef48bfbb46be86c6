//! The key service's HTTP client under `keygate keys` (SPEC §7): one call with the admin token
//! from `KEYGATE_ADMIN_TOKEN`, answers read into the service's own types, why a command failed
//! (its exit status), and the tables people read.

use serde::de::DeserializeOwned;
use serde_json::Value;
use std::time::Duration;

/// Why a `keys` command failed, and so its exit status: `Usage` (2) for what the command line
/// or the environment gets wrong (a flag's value, no admin token), `Refused` (1) for what the
/// service refused or could not answer.
#[derive(Debug)]
pub enum Fail {
    Usage(String),
    Refused(String),
}

impl From<String> for Fail {
    fn from(e: String) -> Self {
        Fail::Refused(e)
    }
}

impl Fail {
    pub fn exit_code(&self) -> u8 {
        match self {
            Fail::Usage(_) => 2,
            Fail::Refused(_) => 1,
        }
    }
    pub fn message(self) -> String {
        match self {
            Fail::Usage(m) | Fail::Refused(m) => m,
        }
    }
}

/// An answer read into the service's own answer types (a field missing or of another type is
/// an error, never a silent "-").
pub fn typed<T: DeserializeOwned>(answer: Value, what: &str) -> Result<T, String> {
    serde_json::from_value(answer)
        .map_err(|e| format!("the key service's answer to {what} is not the documented one: {e}"))
}

pub fn json_text(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

pub fn or_dash(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "-".into())
}

/// A call's outcome: the answer's JSON, or a message for stderr.
pub fn call(server: &str, method: &str, path: &str, body: Option<&Value>) -> Result<Value, Fail> {
    let token = std::env::var("KEYGATE_ADMIN_TOKEN").map_err(|_| {
        Fail::Usage("set KEYGATE_ADMIN_TOKEN to the key service's admin token".to_string())
    })?;
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build(),
    );
    let url = format!("{}{path}", server.trim_end_matches('/'));
    let auth = format!("Bearer {token}");
    let response = match (method, body) {
        ("GET", _) => agent.get(&url).header("authorization", &auth).call(),
        ("DELETE", _) => agent.delete(&url).header("authorization", &auth).call(),
        ("PATCH", body) => agent
            .patch(&url)
            .header("authorization", &auth)
            .header("content-type", "application/json")
            .send(body.map(Value::to_string).unwrap_or_default()),
        (_, body) => agent
            .post(&url)
            .header("authorization", &auth)
            .header("content-type", "application/json")
            .send(body.map(Value::to_string).unwrap_or_default()),
    };
    let mut response = response.map_err(|e| Fail::Refused(format!("{url}: {e}")))?;
    let status = response.status().as_u16();
    // A list of many keys is large: no 10 MiB cap here.
    let text = response
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .read_to_string()
        .map_err(|e| Fail::Refused(format!("{url}: reading the answer: {e}")))?;
    let value: Value = serde_json::from_str(&text).map_err(|_| {
        Fail::Refused(format!(
            "{url}: answered {status} with a body that is not JSON"
        ))
    })?;
    if (200..300).contains(&status) {
        return Ok(value);
    }
    Err(Fail::Refused(format!(
        "{status} {}: {}",
        value["code"].as_str().unwrap_or("ERROR"),
        value["error"].as_str().unwrap_or("(no message)")
    )))
}

/// Percent-encodes a query value.
pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Prints rows as a left-aligned table.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (cell, w) in cells.iter().zip(&widths) {
            out.push_str(&format!("{cell:<w$}  "));
        }
        println!("{}", out.trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}
