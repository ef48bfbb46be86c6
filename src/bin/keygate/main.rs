//! `keygate`: mint, hash and check API keys and keygate configurations.
//!
//! Exit codes: 0 success (warnings, if any, on stderr); 1 the input is invalid (each error on
//! stderr with its JSON path); 2 usage error or unreadable input.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod found;
mod hardening;
mod order;

use clap::{Parser, Subcommand};
use found::{configs_in, Found};
use keygate::config::{check_prefix, gate_from_value, read_key_entry, KeyContext};
use keygate::json_reader::Errors;
use keygate::keys::digest_hex;
use keygate::model::{Checksum, Prefix, Role};
use serde_json::{json, Value};
use std::io::Read;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "keygate",
    version,
    about = "Mint, hash and check API keys and keygate configurations"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Mint a new key: prints the key (line 1, shown once) and its config entry (line 2, JSON)
    New {
        /// Key prefix, e.g. mlm_live_ (it selects the environment and role classes)
        #[arg(long)]
        prefix: String,
        /// Non-secret key id, used in headers, logs and metrics
        #[arg(long)]
        id: String,
        /// Organisation/account the key belongs to
        #[arg(long)]
        tenant: Option<String>,
        /// Human-readable name
        #[arg(long)]
        name: Option<String>,
        /// Role (must exist in the configuration's "roles")
        #[arg(long)]
        role: Option<String>,
        /// Expiry, RFC 3339 (2027-01-01T00:00:00Z)
        #[arg(long)]
        expires: Option<String>,
        /// End the key in its CRC-32 checksum, for a prefix with "checksum": "crc32"
        /// (30 random base62 characters, then 6 of checksum)
        #[arg(long)]
        checksum: bool,
    },
    /// Read one key on stdin (never from arguments) and print its SHA-256 hex
    Hash,
    /// Validate keygate configurations: plugin JSON, Envoy YAML/JSON, or Istio WasmPlugin;
    /// warn (exit 0) about unhardened proxy settings and plaintext keys
    Check {
        /// Files to check
        #[arg(required = true)]
        files: Vec<String>,
    },
}

/// 24 bytes from the OS CSPRNG, URL-safe base64 without padding: 192 bits in 32 characters.
fn random_secret() -> Result<String, String> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|e| format!("the OS random generator failed: {e}"))?;
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(32);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b));
        for shift in [18, 12, 6, 0] {
            out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
        }
    }
    Ok(out)
}

/// `n` characters of `0-9A-Za-z` from the OS CSPRNG (rejection sampling: no bias).
fn random_base62(n: usize) -> Result<String, String> {
    const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = String::with_capacity(n);
    while out.len() < n {
        let mut bytes = [0u8; 64];
        getrandom::fill(&mut bytes).map_err(|e| format!("the OS random generator failed: {e}"))?;
        for b in bytes.iter().filter(|&&b| b < 248).take(n - out.len()) {
            out.push(char::from(ALPHABET[usize::from(b % 62)]));
        }
    }
    Ok(out)
}

fn new_key(
    prefix: &str,
    id: &str,
    tenant: Option<String>,
    name: Option<String>,
    role: Option<String>,
    expires: Option<String>,
    checksum: bool,
) -> Result<(), String> {
    check_prefix(prefix).map_err(|e| format!("--prefix {e}"))?;
    let key = if checksum {
        keygate::checksum::append(&format!("{prefix}{}", random_base62(30)?))
    } else {
        format!("{prefix}{}", random_secret()?)
    };
    let mut entry = serde_json::Map::new();
    entry.insert("id".into(), json!(id));
    entry.insert("sha256".into(), json!(digest_hex(key.as_bytes())));
    for (field, value) in [
        ("name", name),
        ("tenant", tenant),
        ("role", role.clone()),
        ("expires_at", expires),
    ] {
        if let Some(v) = value {
            entry.insert(field.into(), json!(v));
        }
    }
    let entry = Value::Object(entry);
    // The same validation the filter applies to a key entry.
    let roles: Vec<Role> = role
        .iter()
        .map(|r| Role {
            name: r.clone(),
            methods: None,
            paths: None,
            forbidden_message: None,
        })
        .collect();
    let prefixes = vec![Prefix {
        prefix: prefix.to_string(),
        environment: None,
        role: None,
        rate_limits: None,
        checksum: checksum.then_some(Checksum::Crc32),
    }];
    let mut errors = Errors::default();
    read_key_entry(
        "$",
        &entry,
        &KeyContext {
            roles: &roles,
            prefixes: &prefixes,
        },
        &mut errors,
    );
    if !errors.is_empty() {
        return Err(errors
            .0
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n"));
    }
    eprintln!("keygate: this key is shown once; store it now. Only its SHA-256 goes into the configuration.");
    println!("{key}");
    println!("{entry}");
    Ok(())
}

fn hash_stdin() -> Result<(), String> {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .map_err(|e| format!("reading stdin: {e}"))?;
    let key = input.strip_suffix('\n').unwrap_or(&input);
    let key = key.strip_suffix('\r').unwrap_or(key);
    if key.is_empty() {
        return Err("no key on stdin".into());
    }
    if key.contains('\n') {
        return Err("stdin holds more than one line; give exactly one key".into());
    }
    println!("{}", digest_hex(key.as_bytes()));
    Ok(())
}

/// The errors of a found configuration (none: it is valid), in the order of its text.
fn config_errors(f: &Found) -> Vec<String> {
    match f.config.as_ref().map(gate_from_value) {
        Ok(Ok(_)) => vec![],
        Ok(Err(mut errors)) => {
            if let Some(source) = &f.source {
                let offsets = order::offsets(source);
                errors.sort_by_key(|e| order::position(&offsets, &e.path));
            }
            errors.iter().map(|e| e.to_string()).collect()
        }
        Err(e) => vec![e.clone()],
    }
}

/// Checks each file: errors (exit 1) and warnings (exit 0) on stderr, `ok` per valid
/// configuration on stdout.
fn check(files: &[String]) -> Result<bool, String> {
    let mut ok = true;
    for file in files {
        let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
        let found = match configs_in(file, &text) {
            Ok(found) => found,
            Err(syntax) => {
                eprintln!("{file}: {syntax}");
                ok = false;
                continue;
            }
        };
        if found.is_empty() {
            eprintln!("{file}: no keygate configuration found");
            ok = false;
        }
        for f in &found {
            let at = if f.location.is_empty() {
                file.to_string()
            } else {
                format!("{file}: {}", f.location)
            };
            let errors = config_errors(f);
            if errors.is_empty() {
                println!("{at}: ok");
            }
            for e in errors {
                ok = false;
                eprintln!("{at}: {e}");
            }
        }
        for w in hardening::warnings(&found) {
            eprintln!("{file}: warning: {w}");
        }
    }
    Ok(ok)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::New {
            prefix,
            id,
            tenant,
            name,
            role,
            expires,
            checksum,
        } => new_key(&prefix, &id, tenant, name, role, expires, checksum)
            .map(|()| true)
            .map_err(|e| (1, e)),
        Command::Hash => hash_stdin().map(|()| true).map_err(|e| (2, e)),
        Command::Check { files } => check(&files).map_err(|e| (2, e)),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err((code, e)) => {
            eprintln!("keygate: {e}");
            ExitCode::from(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors_of(file: &str, text: &str) -> Vec<String> {
        configs_in(file, text)
            .unwrap()
            .iter()
            .flat_map(config_errors)
            .collect()
    }

    #[test]
    fn errors_are_listed_in_file_order() {
        // serde_json sorts object keys; the errors follow the text instead.
        let plugin = r#"{"x": 1, "rate_limits": [{"per": "day", "requests": 0}],
            "keys": [{"sha256": "abc", "id": "a b"}, {"id": "ok", "sha256": "0"}]}"#;
        let want = [
            "$.x: unknown field",
            "$.rate_limits[0].requests: must be at least 1",
            "$.keys[0].sha256: must be 64 lowercase hex characters (SHA-256 of the whole key)",
            "$.keys[0].id: \"a b\" must be 1-128 characters of A-Z a-z 0-9 _ - . :",
            "$.keys[1].sha256: must be 64 lowercase hex characters (SHA-256 of the whole key)",
        ];
        assert_eq!(errors_of("plugin.json", plugin), want);
        // The same inside an Envoy config's StringValue.
        let envoy = serde_json::json!({"static_resources": {"listeners": [{"filter": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {"name": "keygate", "configuration": {"value": plugin}}
        }}]}});
        assert_eq!(errors_of("envoy.yaml", &envoy.to_string()), want);
    }
}
