//! `keygate`: mint, hash and check API keys and keygate configurations.
//!
//! Exit codes: 0 success (warnings, if any, on stderr); 1 the input is invalid (each error on
//! stderr with its JSON path), or `keygate scan` found a key; 2 usage error or unreadable input.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod client;
mod clusters;
mod found;
mod hardening;
mod keys;
mod order;
mod reference;
mod requests;
mod rules;
mod scan;
mod signals;

use clap::{Parser, Subcommand};
use found::{configs_in, Found};
use keygate::config::{check_prefix, gate_from_value, read_key_entry, KeyContext};
use keygate::json_reader::Errors;
use keygate::keys::digest_hex;
use keygate::model::{Checksum, Prefix, Role};
use keygate_key_service::json::core_value;
use serde_json::{json, Value};
use std::io::Read;
use std::net::SocketAddr;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "keygate",
    version = version_line(),
    about = "Mint, hash and check API keys and keygate configurations"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `keygate --version`: the version and the source revision it was built from.
fn version_line() -> &'static str {
    static LINE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    LINE.get_or_init(|| {
        format!(
            "{} (revision {})",
            keygate::version::VERSION,
            keygate::version::REVISION
        )
    })
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
    /// Every command and flag as Markdown (docs/cli.md's reference is this)
    #[command(hide = true)]
    Reference,
    /// Validate keygate configurations: plugin JSON, Envoy YAML/JSON, or Istio WasmPlugin;
    /// warn (exit 0) about unhardened proxy settings and plaintext keys
    Check {
        /// Files to check
        #[arg(required = true)]
        files: Vec<String>,
    },
    /// Run the key service (SPEC §7): admin API, the /keys feed for key_sync, /usage reports.
    /// Needs KEYGATE_ADMIN_TOKEN_SHA256 (and optionally KEYGATE_SYNC_TOKEN_SHA256) in the environment.
    Serve {
        /// Address of the admin API, the feed and the usage endpoint
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: String,
        /// sqlite:PATH (created if missing) or postgres://user@host:port/db (or from
        /// KEYGATE_DATABASE_URL, which keeps a password off the command line)
        #[arg(
            long,
            env = "KEYGATE_DATABASE_URL",
            hide_env_values = true,
            default_value = "sqlite:keygate.db"
        )]
        database: String,
        /// The keygate plugin configuration (JSON or an Envoy YAML holding one): its prefixes
        /// and roles validate created keys
        #[arg(long)]
        config: String,
        /// A second address, for Envoy only (behind keygate): there a key of the
        /// --tenant-admin-role manages its own tenant's keys, identified by keygate's headers
        #[arg(long)]
        gateway_listen: Option<String>,
        /// The role whose keys manage their tenant's keys on the gateway listener
        #[arg(long, default_value = "admin")]
        tenant_admin_role: String,
        /// Open connections at most per listener; more are closed as they arrive (keep it
        /// below the open-files limit)
        #[arg(long, default_value_t = 512)]
        max_connections: usize,
        /// Seconds a client has to send a request's headers; also how long an idle keep-alive
        /// connection stays open
        #[arg(long, default_value_t = 10)]
        header_timeout_seconds: u64,
        /// Seconds requests in flight may take after SIGTERM/SIGINT before the service exits
        #[arg(long, default_value_t = 10)]
        shutdown_grace_seconds: u64,
        /// Days usage is kept by the hour; older hours are rolled into days
        #[arg(long, default_value_t = 90)]
        usage_hourly_days: u32,
        /// Days usage is kept by the day; older days are deleted
        #[arg(long, default_value_t = 365)]
        usage_daily_days: u32,
        /// Days the request log is kept (whole days are dropped as they age); 0 keeps it forever
        #[arg(long, default_value_t = 90)]
        request_log_days: u32,
        /// Dashboard and portal cookies without `Secure` (only for plain-HTTP localhost, as in
        /// the demo; browsers drop `Secure` cookies on plain HTTP elsewhere)
        #[arg(long)]
        insecure_cookies: bool,
        /// The dashboard's address as customers reach it (https://keys.example.com): portal
        /// links point there (default: the host a request named, https unless --insecure-cookies)
        #[arg(long)]
        public_url: Option<String>,
        /// Where GitHub's secret-scanning public keys are fetched (leak reports at
        /// /v1/leaks/github are verified with them); "" turns /v1/leaks/github off
        #[arg(long, default_value = keygate_key_service::leaks::GITHUB_KEYS_URL)]
        github_keys_url: String,
        /// Seconds between two fetches of a partner's key list at least (an unknown key
        /// identifier fetches it again)
        #[arg(long, default_value_t = 60, hide = true)]
        leak_keys_refetch_seconds: u64,
        /// Where GitLab's public keys are fetched; without it /v1/leaks/gitlab is off
        #[arg(long)]
        gitlab_keys_url: Option<String>,
        /// Where key events (key.created, key.revoked, key.rolled, key.leaked) are POSTed,
        /// signed with --webhook-secret
        #[arg(long, requires = "webhook_secret")]
        webhook_url: Option<String>,
        /// The secret webhook signatures are made with (Keygate-Signature: t=…,v1=<HMAC-SHA256>)
        #[arg(long, env = "KEYGATE_WEBHOOK_SECRET", hide_env_values = true)]
        webhook_secret: Option<String>,
    },
    /// Run the rate-limit service (SPEC §10): Envoy's rate limit service v3 over gRPC, every
    /// count in Redis, so one limit holds across every Envoy that calls it
    Ratelimit {
        /// Address of the gRPC service (ShouldRateLimit and grpc.health.v1)
        #[arg(long, default_value = "127.0.0.1:8082")]
        listen: SocketAddr,
        /// redis://HOST:PORT[/DB], or redis+cluster://HOST:PORT[,HOST:PORT…] for a Redis Cluster
        #[arg(long, env = "KEYGATE_REDIS_URL")]
        redis: String,
        /// Address of the Prometheus metrics (GET /metrics); none if not given
        #[arg(long)]
        metrics_listen: Option<SocketAddr>,
    },
    /// Find keys of the configured prefixes in files, or in every blob of a git repository's
    /// history (SPEC §15). Prints the prefix, a masked form and the SHA-256 fingerprint, never
    /// a whole key. Exit 1 when a key is found, 0 when none, 2 on error.
    Scan {
        /// Files and directories to scan (default: .); with --git-history, a directory inside
        /// the repository
        paths: Vec<std::path::PathBuf>,
        /// Scan every blob reachable in the repository (each once, with the commit that first
        /// brought it in) instead of the files
        #[arg(long)]
        git_history: bool,
        /// Output format
        #[arg(long, value_enum, default_value = "text")]
        format: scan::Format,
        /// The keygate plugin configuration (JSON or an Envoy YAML holding one), read as
        /// `keygate serve --config` reads it: its prefixes are what is looked for
        #[arg(long, env = "KEYGATE_CONFIG")]
        config: String,
        /// Ask the key service which keys found are live (only fingerprints are sent; admin
        /// token from KEYGATE_ADMIN_TOKEN)
        #[arg(long)]
        check: bool,
        /// The key service's URL, for --check
        #[arg(
            long,
            alias = "service",
            env = "KEYGATE_SERVER",
            default_value = "http://127.0.0.1:8081"
        )]
        server: String,
    },
    /// Detection rules for the configured prefixes that other scanners load: a gitleaks 8
    /// configuration or a detect-secrets 1.x plugin, with sample keys to send GitHub's secret
    /// scanning partner program
    Rules {
        /// The scanner
        #[arg(long, value_enum)]
        format: rules::RulesFormat,
        /// The keygate plugin configuration (JSON or an Envoy YAML holding one)
        #[arg(long, env = "KEYGATE_CONFIG")]
        config: String,
    },
    /// Manage keys at a key service (admin token from KEYGATE_ADMIN_TOKEN)
    Keys {
        /// The key service's URL
        #[arg(
            long,
            env = "KEYGATE_SERVER",
            default_value = "http://127.0.0.1:8081",
            global = true
        )]
        server: String,
        /// Print the service's JSON instead of a table
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key: prints it once (line 1 of stdout)
    Create(keys::NewKey),
    /// List keys with their last use (never a key or digest)
    List {
        /// One tenant's keys
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke a key
    Revoke {
        /// The key's id
        id: String,
    },
    /// Change a key's name, role, expiry, limits, restrictions or credits (enforced by every
    /// syncing Envoy within interval_seconds + 1 s)
    Update(keys::Update),
    /// The audit log: who created, changed, rolled or revoked which key, newest first
    Audit(keys::Audit),
    /// Replace a key: a new key with the same settings; the old one expires after the grace period
    Roll {
        /// The key's id
        id: String,
        /// Seconds the old key keeps working (default 86400)
        #[arg(long)]
        grace_seconds: Option<u64>,
    },
    /// Change a key's balance of credits: add to or subtract from the current period, or set
    /// what remains (enforced by every syncing Envoy within interval_seconds + 1 s)
    Credits(keys::ChangeCredits),
    /// Change a tenant's balance of credits (its grant is the configuration's tenants): --add N
    /// or --subtract N this period, or --set N (what remains); every key of the tenant
    /// carries it
    TenantCredits(keys::ChangeTenantCredits),
    /// A key's requests from the request log, newest first, and the client addresses it was
    /// used from (first and last seen)
    Requests(requests::Requests),
    /// A key's usage by hour
    Usage {
        /// The key's id
        id: String,
        /// From (RFC 3339)
        #[arg(long)]
        from: Option<String>,
        /// To (RFC 3339)
        #[arg(long)]
        to: Option<String>,
    },
}

/// A token digest from the environment: 64 lowercase hex characters.
fn token_digest(var: &str) -> Result<Option<[u8; 32]>, String> {
    match std::env::var(var) {
        Err(_) => Ok(None),
        Ok(hex) => keygate::keys::parse_digest_hex(hex.trim())
            .map(Some)
            .ok_or_else(|| {
                format!(
                    "{var} must be 64 lowercase hex characters (the token's SHA-256: keygate hash)"
                )
            }),
    }
}

/// `keygate serve`'s settings beyond its addresses, database and configuration.
struct ServeSettings {
    limits: keygate_key_service::server::Limits,
    usage_retention: keygate_key_service::usage::Retention,
    insecure_cookies: bool,
    public_url: Option<String>,
    request_log_days: u32,
    github_keys_url: String,
    leak_keys_refetch_seconds: u64,
    gitlab_keys_url: Option<String>,
    webhook_url: Option<String>,
    webhook_secret: Option<String>,
}

fn serve(
    listen: &str,
    database: &str,
    config: &str,
    gateway_listen: Option<&str>,
    tenant_admin_role: String,
    settings: ServeSettings,
) -> Result<bool, String> {
    let ServeSettings {
        limits,
        usage_retention,
        insecure_cookies,
        public_url,
        request_log_days,
        github_keys_url,
        leak_keys_refetch_seconds,
        gitlab_keys_url,
        webhook_url,
        webhook_secret,
    } = settings;
    let github_keys_url = Some(github_keys_url).filter(|u| !u.is_empty());
    let url_ok = |u: &str| {
        (u.starts_with("https://") || u.starts_with("http://"))
            && !u.contains(' ')
            && u.len() <= 2048
    };
    for (flag, u) in [
        ("--github-keys-url", github_keys_url.as_ref()),
        ("--gitlab-keys-url", gitlab_keys_url.as_ref()),
        ("--webhook-url", webhook_url.as_ref()),
    ] {
        if let Some(u) = u.filter(|u| !url_ok(u)) {
            return Err(format!("{flag} {u:?}: expected an http:// or https:// URL"));
        }
    }
    let webhook = match (webhook_url, webhook_secret) {
        (Some(url), Some(secret)) if secret.len() >= 16 => {
            Some(keygate_key_service::webhooks::Webhook { url, secret })
        }
        (Some(_), _) => {
            return Err(
                "--webhook-secret (or KEYGATE_WEBHOOK_SECRET): at least 16 characters".into(),
            )
        }
        (None, _) => None,
    };
    if let Some(u) = &public_url {
        let ok = (u.starts_with("https://") || u.starts_with("http://"))
            && !u.contains(['?', '#', ' '])
            && u.len() <= 2048;
        if !ok {
            return Err(format!(
                "--public-url {u:?}: expected the dashboard's origin, like https://keys.example.com"
            ));
        }
    }
    if limits.max_connections == 0 || limits.header_read.is_zero() {
        return Err("--max-connections and --header-timeout-seconds must be at least 1".into());
    }
    let r = usage_retention;
    if r.hourly_days == 0 || r.daily_days < r.hourly_days || r.daily_days > 36_500 {
        return Err(
            "--usage-hourly-days must be at least 1 and --usage-daily-days at least as many (at most 36500)"
                .into(),
        );
    }
    if request_log_days > 36_500 {
        return Err("--request-log-days: at most 36500 (0 keeps the log forever)".into());
    }
    let parse_addr = |flag: &str, a: &str| {
        a.parse::<std::net::SocketAddr>().map_err(|_| {
            format!("{flag} {a:?}: expected HOST:PORT with an IP address (127.0.0.1:8081)")
        })
    };
    let listen = parse_addr("--listen", listen)?;
    let gateway_listen = gateway_listen
        .map(|g| parse_addr("--gateway-listen", g))
        .transpose()?;
    let admin_sha256 = token_digest("KEYGATE_ADMIN_TOKEN_SHA256")?.ok_or(
        "set KEYGATE_ADMIN_TOKEN_SHA256 to the SHA-256 of the admin token (echo -n TOKEN | keygate hash)",
    )?;
    let sync_sha256 = token_digest("KEYGATE_SYNC_TOKEN_SHA256")?;
    let gitlab_revocation_sha256 = token_digest("KEYGATE_GITLAB_REVOCATION_TOKEN_SHA256")?;
    let gate = read_gate(config, "keygate serve", "validating keys with")?;
    keygate_key_service::serve(
        keygate_key_service::Options {
            listen,
            gateway_listen,
            database: database.to_string(),
            tenant_admin_role,
            limits,
            admin_sha256,
            sync_sha256,
            usage_retention,
            insecure_cookies,
            public_url,
            request_log_days,
            github_keys_url,
            leak_keys_refetch: std::time::Duration::from_secs(leak_keys_refetch_seconds.max(1)),
            gitlab_keys_url,
            gitlab_revocation_sha256,
            webhook,
        },
        gate,
        signals::shutdown,
    )?;
    Ok(true)
}

/// The plugin configuration at `config` (JSON, or the first one an Envoy YAML holds), validated
/// as the filter validates it. `who` and `using` name the command in the note about a file
/// holding several.
fn read_gate(config: &str, who: &str, using: &str) -> Result<keygate::model::Gate, String> {
    let text = std::fs::read_to_string(config).map_err(|e| format!("--config {config}: {e}"))?;
    let found = configs_in(config, &text).map_err(|e| format!("--config {config}: {e}"))?;
    let Some(first) = found.first() else {
        return Err(format!("--config {config}: no keygate configuration found"));
    };
    let errors = config_errors(first);
    if !errors.is_empty() {
        return Err(format!("--config {config}: {}", errors.join("; ")));
    }
    let gate = match &first.config {
        Ok(v) => {
            gate_from_value(&core_value(v)).map_err(|_| format!("--config {config}: invalid"))?
        }
        Err(e) => return Err(format!("--config {config}: {e}")),
    };
    if found.len() > 1 {
        eprintln!(
            "{who}: {config} holds {} keygate configurations; {using} the first ({})",
            found.len(),
            if first.location.is_empty() {
                "top level"
            } else {
                &first.location
            }
        );
    }
    Ok(gate)
}

/// The configured prefixes as the scanner and the rules need them (longest first).
fn patterns(config: &str, who: &str) -> Result<Vec<scan::matcher::Pattern>, String> {
    let gate = read_gate(config, who, "scanning for the prefixes of")?;
    if gate.prefixes.is_empty() {
        return Err(format!(
            "--config {config}: no prefixes configured, so keys cannot be told from other text"
        ));
    }
    Ok(gate
        .prefixes
        .iter()
        .map(scan::matcher::Pattern::from_prefix)
        .collect())
}

fn scan_command(
    paths: Vec<std::path::PathBuf>,
    git_history: bool,
    format: scan::Format,
    config: &str,
    check: Option<String>,
) -> Result<bool, String> {
    let matcher = scan::matcher::Matcher::new(patterns(config, "keygate scan")?)?;
    scan::run(
        &matcher,
        scan::Options {
            paths,
            git_history,
            format,
            check,
        },
    )
}

fn rules_command(format: rules::RulesFormat, config: &str) -> Result<(), String> {
    let patterns = patterns(config, "keygate rules")?;
    let samples = patterns
        .iter()
        .map(|p| {
            (0..rules::SAMPLES)
                .map(|_| keygate_key_service::mint::new_key(&p.prefix, p.crc32))
                .collect::<Result<Vec<_>, _>>()
        })
        .collect::<Result<Vec<_>, _>>()?;
    print!(
        "{}",
        match format {
            rules::RulesFormat::Gitleaks => rules::gitleaks(&patterns, &samples),
            rules::RulesFormat::DetectSecrets => rules::detect_secrets(&patterns, &samples),
        }
    );
    Ok(())
}

fn keys_command(server: &str, json: bool, command: KeysCommand) -> Result<(), client::Fail> {
    match command {
        KeysCommand::Create(k) => keys::create(server, k, json),
        KeysCommand::List { tenant } => keys::list(server, tenant.as_deref(), json),
        KeysCommand::Revoke { id } => keys::revoke(server, &id, json),
        KeysCommand::Update(u) => keys::update(server, u, json),
        KeysCommand::Audit(a) => keys::audit(server, a, json),
        KeysCommand::Roll { id, grace_seconds } => keys::roll(server, &id, grace_seconds, json),
        KeysCommand::Credits(c) => keys::credits(server, c, json),
        KeysCommand::TenantCredits(c) => keys::tenant_credits(server, c, json),
        KeysCommand::Requests(r) => requests::requests(server, r, json),
        KeysCommand::Usage { id, from, to } => {
            keys::usage(server, &id, from.as_deref(), to.as_deref(), json)
        }
    }
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
    let key = keygate_key_service::mint::new_key(prefix, checksum)?;
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
        leak_policy: None,
    }];
    let mut errors = Errors::default();
    read_key_entry(
        "$",
        &core_value(&entry),
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
    match f.config.as_ref().map(|v| gate_from_value(&core_value(v))) {
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
        let docs = clusters::documents(file, &text);
        for w in hardening::warnings(&found)
            .into_iter()
            .chain(clusters::warnings(&docs, &found))
        {
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
        Command::Reference => {
            use clap::CommandFactory;
            print!("{}", reference::markdown(&Cli::command()));
            Ok(true)
        }
        Command::Check { files } => check(&files).map_err(|e| (2, e)),
        Command::Serve {
            listen,
            database,
            config,
            gateway_listen,
            tenant_admin_role,
            max_connections,
            header_timeout_seconds,
            shutdown_grace_seconds,
            usage_hourly_days,
            usage_daily_days,
            request_log_days,
            insecure_cookies,
            public_url,
            github_keys_url,
            leak_keys_refetch_seconds,
            gitlab_keys_url,
            webhook_url,
            webhook_secret,
        } => serve(
            &listen,
            &database,
            &config,
            gateway_listen.as_deref(),
            tenant_admin_role,
            ServeSettings {
                limits: keygate_key_service::server::Limits {
                    max_connections,
                    header_read: std::time::Duration::from_secs(header_timeout_seconds),
                    shutdown_grace: std::time::Duration::from_secs(shutdown_grace_seconds),
                },
                usage_retention: keygate_key_service::usage::Retention {
                    hourly_days: usage_hourly_days,
                    daily_days: usage_daily_days,
                },
                insecure_cookies,
                public_url,
                request_log_days,
                github_keys_url,
                leak_keys_refetch_seconds,
                gitlab_keys_url,
                webhook_url,
                webhook_secret,
            },
        )
        .map_err(|e| (2, e)),
        Command::Ratelimit {
            listen,
            redis,
            metrics_listen,
        } => keygate_rate_limit_service::run(
            keygate_rate_limit_service::Options {
                listen,
                redis,
                metrics_listen,
            },
            signals::shutdown,
        )
        .map(|()| true)
        .map_err(|e| (2, e)),
        Command::Scan {
            paths,
            git_history,
            format,
            config,
            check,
            server,
        } => scan_command(paths, git_history, format, &config, check.then_some(server))
            .map_err(|e| (2, e)),
        Command::Rules { format, config } => rules_command(format, &config)
            .map(|()| true)
            .map_err(|e| (2, e)),
        Command::Keys {
            server,
            json,
            command,
        } => keys_command(&server, json, command)
            .map(|()| true)
            .map_err(|e| (e.exit_code(), e.message())),
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
