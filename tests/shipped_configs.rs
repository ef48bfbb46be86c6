//! Everything shipped in `envoy/` works: each Envoy YAML passes Envoy's own validation and
//! serves (on free ports) as its comments and the README say; each plugin configuration passes
//! `keygate check`. The CLI's commands behave as documented.
mod common;
use common::*;
use std::io::Write;
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const EXAMPLES: [&str; 7] = [
    "envoy/demo.yaml",
    "envoy/examples/minimal.yaml",
    "envoy/examples/mlm.yaml",
    "envoy/examples/bearer.yaml",
    "envoy/examples/marginfront.yaml",
    "envoy/examples/moodmnky.yaml",
    "envoy/examples/fleet.yaml",
];

fn cli() -> Command {
    Command::new(common::keygate_bin())
}

/// A shipped Envoy YAML with its fixed addresses replaced by free loopback ports and files
/// (a second listener's 10001 becomes `port + 1`'s free twin, see [`run_shipped`]).
fn localize(file: &str, port: u16, admin: u16, live: u16, sandbox: u16) -> String {
    localize_with(file, port, admin, live, sandbox, 10001)
}

fn localize_with(
    file: &str,
    port: u16,
    admin: u16,
    live: u16,
    sandbox: u16,
    gateway: u16,
) -> String {
    std::fs::read_to_string(repo().join(file))
        .unwrap()
        .replace("port_value: 10000", &format!("port_value: {port}"))
        .replace("port_value: 10001", &format!("port_value: {gateway}"))
        .replace("port_value: 9901", &format!("port_value: {admin}"))
        .replace("port_value: 18080", &format!("port_value: {live}"))
        .replace("port_value: 18081", &format!("port_value: {sandbox}"))
        .replace(
            "target/wasm32-wasip1/release/keygate.wasm",
            &wasm_path().display().to_string(),
        )
        .replace(
            "/etc/envoy/keygate.wasm",
            &wasm_path().display().to_string(),
        )
}

fn validate(name: &str, yaml: &str) -> (bool, String) {
    let dir = repo()
        .join("target/itest")
        .join(format!("validate-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("envoy.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(envoy_bin())
        .args(["--mode", "validate", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn every_shipped_envoy_yaml_passes_envoy_validation() {
    let mut files: Vec<&str> = EXAMPLES.to_vec();
    files.push("envoy/compose-envoy.yaml");
    for f in files {
        let (ok, out) = validate(
            &f.replace('/', "_"),
            &localize(f, 10000, 9901, 18080, 18081),
        );
        assert!(ok, "{f} failed envoy --mode validate:\n{out}");
    }
    // Validation runs keygate's on_configure: a broken plugin config fails it.
    let broken =
        localize("envoy/demo.yaml", 1, 2, 3, 4).replace("\"verify_path\"", "\"verify_pth\"");
    let (ok, out) = validate("broken", &broken);
    assert!(!ok, "a broken plugin configuration passed validation");
    assert!(
        out.contains("Unable to create Wasm plugin keygate"),
        "{out}"
    );
}

#[test]
fn every_shipped_config_passes_keygate_check() {
    let mut files: Vec<&str> = EXAMPLES.to_vec();
    files.extend(["envoy/compose-envoy.yaml", "envoy/istio/wasmplugin.yaml"]);
    for f in files {
        let out = cli().arg("check").arg(repo().join(f)).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{f}: {}{}",
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.trim_end().ends_with(": ok"), "{f}: {stdout}");
        // Hardened, with sha256 keys only: not one warning.
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.is_empty(), "{f}: {stderr}");
    }
}

/// The hardening settings every shipped HttpConnectionManager has (SPEC §2).
const HARDENING: [&str; 5] = [
    "normalize_path:",
    "merge_slashes:",
    "path_with_escaped_slashes_action:",
    "common_http_protocol_options:",
    "use_remote_address:",
];

#[test]
fn check_warns_about_each_missing_hardening_setting() {
    let dir = repo()
        .join("target/itest")
        .join(format!("check-warnings-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let demo = std::fs::read_to_string(repo().join("envoy/demo.yaml")).unwrap();
    let unhardened: String = demo
        .lines()
        .filter(|l| !HARDENING.iter().any(|h| l.trim_start().starts_with(h)))
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        .replace("failure_policy: FAIL_CLOSED", "failure_policy: FAIL_OPEN")
        .replace(
            r#""keys": ["#,
            r#""keys": [{"id": "plain", "key": "mlm_live_plain_1", "allowed_ips": ["10.0.0.0/8"]},"#,
        );
    let yaml = dir.join("envoy.yaml");
    std::fs::write(&yaml, unhardened).unwrap();
    let out = cli().arg("check").arg(&yaml).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "warnings alone exit 0:\n{err}");
    let f = yaml.display();
    let hcm = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config";
    let filter = format!("{hcm}.http_filters[0].typed_config");
    let want = [
        format!("{f}: warning: {hcm}: normalize_path is not set: filters before keygate and the routes see `.` and `..` segments unresolved (keygate resolves or refuses them before forwarding); set normalize_path: true"),
        format!("{f}: warning: {hcm}: merge_slashes is not set: filters before keygate and the routes see `//` unmerged (keygate merges them before forwarding); set merge_slashes: true"),
        format!("{f}: warning: {hcm}: path_with_escaped_slashes_action is not set: an encoded / or \\ (%2F, %5C) means different things to different upstreams (keygate refuses it with 400, but filters before keygate and the routes see it); set REJECT_REQUEST"),
        format!("{f}: warning: {hcm}: common_http_protocol_options.headers_with_underscores_action is not set: CGI, WSGI and PHP upstreams read x_tenant_id as X-Tenant-Id (keygate removes such spellings of its own headers only); set DROP_HEADER"),
        format!("{f}: warning: {hcm}: use_remote_address is not set and keygate's allowed_ips are used: clients can choose their address with X-Forwarded-For; set use_remote_address: true (behind a load balancer, with xff_num_trusted_hops)"),
        format!("{f}: warning: {filter}: config.failure_policy is FAIL_OPEN: a filter that cannot run must reject requests, not let them through unauthenticated; set FAIL_CLOSED"),
        format!("{f}: warning: {filter}.config.configuration.value: $.keys[0].key: 1 key is in plaintext: plaintext keys stay visible in Envoy's /config_dump; use sha256 in production (keygate hash)"),
    ];
    assert_eq!(err.lines().collect::<Vec<_>>(), want);

    // An Istio WasmPlugin: Istio fails closed by default, so only an explicit FAIL_OPEN warns.
    let istio = dir.join("wasmplugin.yaml");
    let manifest = std::fs::read_to_string(repo().join("envoy/istio/wasmplugin.yaml")).unwrap();
    std::fs::write(
        &istio,
        manifest.replace("failStrategy: FAIL_CLOSE", "failStrategy: FAIL_OPEN"),
    )
    .unwrap();
    let out = cli().arg("check").arg(&istio).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("{}: warning: spec: failStrategy is FAIL_OPEN: a filter that cannot run must reject requests, not let them through unauthenticated; set FAIL_CLOSE (Istio's default)\n", istio.display())
    );
}

#[test]
fn check_names_the_json_path_of_each_error() {
    let dir = repo()
        .join("target/itest")
        .join(format!("check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("plugin.json");
    std::fs::write(
        &json,
        r#"{"keys":[{"id":"a","sha256":"abc"}],"rate_limits":[{"requests":0,"per":"day"}],"x":1}"#,
    )
    .unwrap();
    let out = cli().arg("check").arg(&json).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let f = json.display();
    for line in [
        format!(
            "{f}: $.keys[0].sha256: must be 64 lowercase hex characters (SHA-256 of the whole key)"
        ),
        format!("{f}: $.rate_limits[0].requests: must be at least 1"),
        format!("{f}: $.x: unknown field"),
    ] {
        assert!(
            err.lines().any(|l| l == line),
            "missing {line:?} in:\n{err}"
        );
    }
    // Inside an Envoy YAML the location of the filter comes first.
    let yaml = dir.join("envoy.yaml");
    std::fs::write(
        &yaml,
        localize("envoy/demo.yaml", 1, 2, 3, 4).replace("\"verify_path\"", "\"verify_pth\""),
    )
    .unwrap();
    let out = cli().arg("check").arg(&yaml).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let want = format!("{}: static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0].typed_config.config.configuration.value: $.verify_pth: unknown field", yaml.display());
    assert!(
        err.lines().any(|l| l == want),
        "missing {want:?} in:\n{err}"
    );
    // Broken JSON is a syntax error with its line and column (YAML would have accepted it as
    // something else and found no configuration).
    let broken = dir.join("broken.json");
    std::fs::write(&broken, "{\n  \"keys\": [],\n  verify_path: \"/v\",\n}\n").unwrap();
    let out = cli().arg("check").arg(&broken).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "{}: line 3 column 3: key must be a string\n",
            broken.display()
        )
    );
    // A file without keygate in it is an error too; a missing file is a usage error (2).
    let out = cli()
        .arg("check")
        .arg(repo().join("Cargo.toml"))
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let out = cli()
        .arg("check")
        .arg(dir.join("nope.json"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn cli_mints_and_hashes_keys() {
    let out = cli()
        .args([
            "new",
            "--prefix",
            "mlm_live_",
            "--id",
            "key_9",
            "--tenant",
            "org_1",
            "--name",
            "CI key",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    let key = lines[0];
    let secret = key.strip_prefix("mlm_live_").expect("prefix");
    assert!(
        secret.len() >= 22
            && secret
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "{key}"
    );
    let entry: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(entry["id"], "key_9");
    assert_eq!(entry["tenant"], "org_1");
    assert_eq!(entry["name"], "CI key");
    assert_eq!(entry["sha256"], sha(key));
    assert!(
        !lines[1].contains(secret),
        "the entry must not hold the plaintext"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("shown once"));
    // Two keys are never the same.
    let again = cli()
        .args(["new", "--prefix", "mlm_live_", "--id", "key_9"])
        .output()
        .unwrap();
    assert_ne!(
        String::from_utf8_lossy(&again.stdout).lines().next(),
        Some(key)
    );

    let mut child = cli()
        .arg("hash")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{key}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), sha(key));

    for bad in [
        ["--prefix", "p_", "--id", "bad id"],
        ["--prefix", "sk live", "--id", "k"],
        ["--prefix", "", "--id", "k"],
    ] {
        let out = cli().arg("new").args(bad).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{bad:?}");
        assert!(
            out.stdout.is_empty(),
            "no key is printed for an invalid entry"
        );
    }

    // Checksummed keys: prefix, 30 base62 characters, their CRC-32 in 6 more.
    let out = cli()
        .args(["new", "--prefix", "mlm_live_", "--id", "k", "--checksum"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let key = stdout.lines().next().unwrap();
    let body = key.strip_prefix("mlm_live_").unwrap();
    assert!(
        body.len() == 36 && body.bytes().all(|b| b.is_ascii_alphanumeric()),
        "{key}"
    );
    assert!(keygate::checksum::valid(key.as_bytes()), "{key}");
}

struct Running {
    envoy: Envoy,
    /// The second listener's port (the MLM example's sandbox-only gateway).
    gateway: u16,
    _live: Upstream,
    _sandbox: Upstream,
}

fn run_shipped(file: &str) -> Running {
    let live = Upstream::start("live");
    let sandbox = Upstream::start("sandbox");
    let (port, admin, gateway) = (free_port(), free_port(), free_port());
    let dir = repo().join("target/itest").join(format!(
        "{}-{}",
        file.replace('/', "_"),
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("envoy.yaml");
    std::fs::write(
        &cfg,
        localize_with(file, port, admin, live.port, sandbox.port, gateway),
    )
    .unwrap();
    let envoy = Envoy::launch(&cfg, &dir, port, admin, 2)
        .unwrap_or_else(|log| panic!("{file} did not start:\n{log}"));
    Running {
        envoy,
        gateway,
        _live: live,
        _sandbox: sandbox,
    }
}

#[test]
fn the_fleet_example_counts_in_the_rate_limit_service() {
    let redis = common::fleet::Redis::start("fleet-example");
    let svc = common::fleet::RateLimitProc::start(&redis.url());
    let live = Upstream::start("live");
    let (port, admin) = (free_port(), free_port());
    let dir = repo()
        .join("target/itest")
        .join(format!("fleet-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("envoy.yaml");
    let yaml = localize(
        "envoy/examples/fleet.yaml",
        port,
        admin,
        live.port,
        free_port(),
    )
    .replace("port_value: 8082", &format!("port_value: {}", svc.port));
    std::fs::write(&cfg, yaml).unwrap();
    let envoy = Envoy::launch(&cfg, &dir, port, admin, 2)
        .unwrap_or_else(|log| panic!("fleet.yaml did not start:\n{log}"));
    let team = [("authorization", "Bearer sk_live_fleet_team7Rw")];
    // As its walkthrough says: 5 a minute, counted by the service (unless the minute turns
    // over mid-way: then the count starts again, and so may the walkthrough).
    let mut remaining = vec![];
    let mut last = None;
    for _ in 0..6 {
        let r = get(envoy.port, "/v1/x", &team);
        remaining.push(r.header("x-ratelimit-remaining").map(str::to_string));
        last = Some(r);
    }
    let last = last.unwrap();
    let minute_turned = remaining.windows(2).any(|w| w[1] > w[0]);
    if !minute_turned {
        assert_eq!(
            remaining[..5],
            ["4", "3", "2", "1", "0"].map(|s| Some(s.to_string()))
        );
        assert_eq!(last.status, 429);
        assert!(last
            .body
            .starts_with(r#"{"error":"Rate limit exceeded. Try again in "#));
    }
    assert!(svc.metric("keygate_ratelimit_calls_total{code=\"ok\"}") >= 5);
    let r = get(
        envoy.port,
        "/v1/x",
        &[("authorization", "Bearer sk_live_fleet_free2Kp")],
    );
    assert_eq!((r.status, r.header("x-ratelimit-limit")), (200, None));
    assert_eq!(
        envoy.counter("wasmcustom.keygate.ratelimit_service_failures"),
        0,
        "{}",
        envoy.log()
    );
}

#[test]
fn the_demo_serves_what_make_run_prints() {
    let r = run_shipped("envoy/demo.yaml");
    let p = r.envoy.port;
    assert_json(&get(p, "/v1/orders", &[]), 401, MISSING);
    let ok = get(
        p,
        "/v1/orders",
        &[("x-tenant-api-key", "mlm_live_demo_4cTq9ZrW2yXb7Ke1")],
    );
    assert_eq!(
        (ok.status, ok.header("x-echo-upstream")),
        (200, Some("live"))
    );
    assert_eq!(
        ok.upstream_header("x-api-key-id").as_deref(),
        Some("demo_live")
    );
    let sb = get(
        p,
        "/v1/orders",
        &[("authorization", "Bearer mlm_sandbox_demo_8Hn3Lp5Vx0Qa6Ms2")],
    );
    assert_eq!(
        (
            sb.status,
            sb.header("x-echo-upstream"),
            sb.header("x-ratelimit-limit")
        ),
        (200, Some("sandbox"), Some("5"))
    );
    let v = get(
        p,
        "/v1/verify",
        &[("x-tenant-api-key", "mlm_live_demo_4cTq9ZrW2yXb7Ke1")],
    );
    assert_json(
        &v,
        200,
        r#"{"key":{"id":"demo_live","name":"Demo live key","environment":"LIVE","role":null},"organization":{"id":"org_demo"}}"#,
    );
    let stats = r
        .envoy
        .stats_prometheus_once(&["keygate_allowed{key_id=\"demo_live\"} 2"]);
    assert!(
        stats.contains("keygate_allowed{key_id=\"demo_live\"} 2"),
        "{stats}"
    );

    // The connection manager's hardening is in effect (SPEC §2 "What is judged is what is
    // forwarded"): Envoy normalises the path, refuses encoded slashes, drops header names
    // with `_`, and appends the connection's peer to X-Forwarded-For.
    let live = ("x-tenant-api-key", "mlm_live_demo_4cTq9ZrW2yXb7Ke1");
    let normalised = get(p, "/v1/./orders/../orders//7", &[live]);
    assert_eq!(
        (normalised.status, normalised.upstream_path()),
        (200, "/v1/orders/7".to_string())
    );
    let escaped = get(p, "/v1/orders%2F7", &[live]);
    assert_eq!((escaped.status, escaped.reached_upstream()), (400, false));
    let forwarded = get(
        p,
        "/v1/orders",
        &[
            live,
            ("x_tenant_id", "org_other"),
            ("x-forwarded-for", "203.0.113.9"),
        ],
    );
    assert_eq!(forwarded.status, 200);
    assert_eq!(forwarded.upstream_header("x_tenant_id"), None);
    // Envoy appends the peer (a loopback peer as its own node address); the client address
    // it judges by is the peer, not the X-Forwarded-For the client wrote.
    let xff = forwarded
        .upstream_header("x-forwarded-for")
        .unwrap_or_default();
    assert_eq!(xff.split(',').next(), Some("203.0.113.9"), "{xff}");
    assert_eq!(xff.split(',').count(), 2, "{xff}");
    assert_eq!(
        forwarded
            .upstream_header("x-envoy-external-address")
            .as_deref(),
        Some("127.0.0.1")
    );
}

#[test]
fn the_provider_examples_answer_as_their_walkthroughs_say() {
    let r = run_shipped("envoy/examples/mlm.yaml");
    let p = r.envoy.port;
    let live = get(
        p,
        "/v1/orders",
        &[("x-tenant-api-key", "mlm_live_example_Kx7pQ2wZ")],
    );
    assert_eq!(
        (
            live.status,
            live.header("x-environment"),
            live.header("x-ratelimit-limit")
        ),
        (200, Some("LIVE"), Some("100"))
    );
    let sb = get(
        p,
        "/v1/orders",
        &[("x-tenant-api-key", "mlm_sandbox_example_Vb9nR4tY")],
    );
    assert_eq!(
        (sb.status, sb.header("x-echo-upstream")),
        (200, Some("sandbox"))
    );
    // The sandbox-only gateway on the second listener.
    let g = r.gateway;
    let refused = get(
        g,
        "/v1/orders",
        &[("x-tenant-api-key", "mlm_live_example_Kx7pQ2wZ")],
    );
    assert_json(
        &refused,
        403,
        r#"{"error":"LIVE keys are not accepted here","code":"FORBIDDEN"}"#,
    );
    assert_eq!(refused.header("x-environment"), Some("LIVE"));
    let sb = get(
        g,
        "/v1/orders",
        &[("x-tenant-api-key", "mlm_sandbox_example_Vb9nR4tY")],
    );
    assert_eq!(
        (sb.status, sb.header("x-echo-upstream")),
        (200, Some("sandbox"))
    );
    drop(r);

    let r = run_shipped("envoy/examples/bearer.yaml");
    let p = r.envoy.port;
    assert_eq!(
        get(
            p,
            "/v1/charges",
            &[("authorization", "Bearer sk_live_example_full9Qm")]
        )
        .status,
        200
    );
    assert_eq!(
        get(
            p,
            "/v1/charges",
            &[("authorization", "Bearer sk_live_example_ip3Lw")]
        )
        .status,
        200
    );
    assert_json(
        &get(
            p,
            "/v1/charges",
            &[
                ("authorization", "Bearer sk_live_example_web7Zt"),
                ("referer", "https://evil.example/"),
            ],
        ),
        403,
        r#"{"error":"API key is not allowed from this referer","code":"FORBIDDEN"}"#,
    );
    assert_eq!(
        get(
            p,
            "/v1/charges",
            &[
                ("authorization", "Bearer sk_live_example_web7Zt"),
                ("referer", "https://app.example.com/pay")
            ]
        )
        .status,
        200
    );
    assert_eq!(
        get(
            p,
            "/v1/users/7",
            &[("authorization", "Bearer sk_test_example_users2Hv")]
        )
        .status,
        200
    );
    assert_json(
        &get(
            p,
            "/v1/charges",
            &[("authorization", "Bearer sk_test_example_users2Hv")],
        ),
        403,
        r#"{"error":"API key is not allowed to access this path","code":"FORBIDDEN"}"#,
    );
    drop(r);

    let r = run_shipped("envoy/examples/marginfront.yaml");
    let p = r.envoy.port;
    assert_json(
        &get(p, "/v1/verify", &[("x-api-key", "mf_pk_test_example_6Yu1")]),
        200,
        r#"{"key":{"id":"mf_key_publishable","name":"Browser key","environment":"TEST","role":"publishable"},"organization":{"id":"org_mf"}}"#,
    );
    assert_json(
        &send(
            p,
            "POST",
            "/v1/customers",
            &[
                ("x-api-key", "mf_pk_test_example_6Yu1"),
                ("content-length", "0"),
            ],
        ),
        403,
        r#"{"error":"Publishable keys are read-only. Use a secret key for this request.","code":"FORBIDDEN"}"#,
    );
    assert_eq!(
        send(
            p,
            "POST",
            "/v1/customers",
            &[
                ("x-api-key", "mf_sk_test_example_4Rt8"),
                ("content-length", "0")
            ]
        )
        .status,
        200
    );
    drop(r);

    let r = run_shipped("envoy/examples/moodmnky.yaml");
    let p = r.envoy.port;
    let reader = get(
        p,
        "/v1/moods",
        &[("x-api-key", "DEV_API_example_reader5Gh")],
    );
    assert_eq!(
        (
            reader.status,
            reader.header("x-ratelimit-limit"),
            reader.header("x-environment")
        ),
        (200, Some("5000"), Some("DEV"))
    );
    assert_json(
        &send(
            p,
            "POST",
            "/v1/moods",
            &[
                ("x-api-key", "DEV_API_example_reader5Gh"),
                ("content-length", "0"),
            ],
        ),
        403,
        r#"{"error":"API key is not allowed to use this method","code":"FORBIDDEN"}"#,
    );
    assert_eq!(
        send(
            p,
            "POST",
            "/v1/moods",
            &[
                ("x-api-key", "DEV_API_example_writer8Jk"),
                ("content-length", "0")
            ]
        )
        .status,
        200
    );
    assert_eq!(
        send(
            p,
            "DELETE",
            "/v1/moods/1",
            &[("authorization", "Bearer PROD_API_example_admin1Np")]
        )
        .status,
        200
    );
    assert_eq!(
        send(
            p,
            "POST",
            "/webhooks/n8n",
            &[
                ("x-n8n-api-key", "PROD_API_example_n8n3Qs"),
                ("content-length", "0")
            ]
        )
        .status,
        200
    );
    // X-N8N-API-KEY is a key only under /webhooks/n8n/; elsewhere it is not read.
    assert_json(
        &get(
            p,
            "/v1/moods",
            &[("x-n8n-api-key", "PROD_API_example_n8n3Qs")],
        ),
        401,
        MISSING,
    );
    assert_json(
        &get(p, "/v1/moods", &[("x-api-key", "PROD_API_example_n8n3Qs")]),
        403,
        r#"{"error":"Automation keys may only call /webhooks.","code":"FORBIDDEN"}"#,
    );
}

/// `envoy/demo.sh` with DEMO_SMOKE=1 on free ports (`busy` replaces one of them: its variable
/// and port), how long it took, and the ports (variable, port).
fn run_demo(
    config: Option<&str>,
    busy: Option<(&str, u16)>,
) -> (Output, Duration, Vec<(&'static str, u16)>) {
    run_demo_with(config, busy, &[])
}

/// [`run_demo`] with more of the demo's environment (its binaries, say).
fn run_demo_with(
    config: Option<&str>,
    busy: Option<(&str, u16)>,
    env: &[(&str, &std::path::Path)],
) -> (Output, Duration, Vec<(&'static str, u16)>) {
    let (_, _) = (wasm_path(), envoy_bin());
    let mut demo = Command::new(repo().join("envoy/demo.sh"));
    demo.env("DEMO_SMOKE", "1").env_remove("CONFIG");
    for (k, v) in env {
        demo.env(k, v);
    }
    let mut ports = Vec::new();
    for var in [
        "KEYGATE_PORT",
        "KEYGATE_ADMIN_PORT",
        "KEYGATE_LIVE_PORT",
        "KEYGATE_SANDBOX_PORT",
        "KEYGATE_GATEWAY_PORT",
        "KEYGATE_SERVICE_PORT",
        "KEYGATE_SERVICE_GATEWAY_PORT",
    ] {
        let port = match busy {
            Some((v, port)) if v == var => port,
            _ => free_port(),
        };
        demo.env(var, port.to_string());
        ports.push((var, port));
    }
    if let Some(config) = config {
        demo.env("CONFIG", config);
    }
    let start = Instant::now();
    let out = demo.output().unwrap();
    (out, start.elapsed(), ports)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_string()
}

#[test]
fn the_demo_smoke_checks_every_printed_line_and_envoy_starts_without_warnings() {
    let (out, _, ports) = run_demo(None, None);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("demo smoke: ok (all 16 lines)"), "{stdout}");
    let printed = stdout.lines().filter(|l| {
        l.starts_with("  curl ") || l.starts_with("  for ") || l.starts_with("  sleep 1; curl ")
    });
    assert_eq!(printed.count(), 9, "{stdout}");
    // Nothing but the access log and the checks: no Envoy warning (e.g. the one about
    // unlimited downstream connections), no shell trace.
    assert_eq!(stderr, "", "{stdout}");
    assert!(!stdout.contains("+ curl"), "{stdout}");
    // The demo's own readiness probes are not in the access log it prints: the first line is
    // the first request the reader sends (401 missing), never a 503 or a probe's 401 invalid.
    let first = stdout
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_default();
    assert!(first.contains(r#""decision":"missing""#), "{first}");
    assert!(
        !stdout.contains("unavailable") && !stdout.contains("startup_probe"),
        "{stdout}"
    );

    // The README's Quick start shows what it printed (on the default ports).
    let start = stdout.find("keygate demo is up").unwrap();
    let end = stdout.find("Ctrl-C stops the demo.\n").unwrap();
    let mut banner = stdout[start..end].to_string() + "Ctrl-C stops the demo.\n";
    for (var, default) in [
        ("KEYGATE_PORT", 10000),
        ("KEYGATE_ADMIN_PORT", 9901),
        ("KEYGATE_SERVICE_PORT", 18090),
    ] {
        let port = ports.iter().find(|(v, _)| *v == var).unwrap().1;
        banner = banner.replace(
            &format!("127.0.0.1:{port}"),
            &format!("127.0.0.1:{default}"),
        );
    }
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    // The run's directory and admin token are new each run: the README shows one run's.
    for (start, chars) in [
        ("demo-admin-", "-_"),
        ("/keygate-demo.", ""),
        ("open?code=", "-_"),
    ] {
        let shown = readme
            .find(start)
            .map(|i| &readme[i..])
            .map(|r| {
                r[..start.len()
                    + r[start.len()..]
                        .find(|c: char| !(c.is_ascii_alphanumeric() || chars.contains(c)))
                        .unwrap()]
                    .to_string()
            })
            .unwrap();
        while let Some(i) = banner.find(start) {
            let rest = &banner[i + start.len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || chars.contains(c)))
                .unwrap();
            let this = format!("{start}{}", &rest[..end]);
            if this == shown {
                break;
            }
            banner = banner.replace(&this, &shown);
        }
    }
    assert!(
        readme.contains(&format!("```console\n{banner}```\n")),
        "the README's Quick start does not show what the demo prints:\n{banner}"
    );
}

#[test]
fn the_demo_refuses_a_busy_port_at_once_naming_it() {
    for var in [
        "KEYGATE_PORT",
        "KEYGATE_ADMIN_PORT",
        "KEYGATE_LIVE_PORT",
        "KEYGATE_SANDBOX_PORT",
        "KEYGATE_SERVICE_PORT",
        "KEYGATE_SERVICE_GATEWAY_PORT",
    ] {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let (out, took, _) = run_demo(None, Some((var, port)));
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{var}: {stderr}");
        assert!(took < Duration::from_secs(5), "{var}: {took:?}");
        assert_eq!(stderr.lines().count(), 1, "{var}: {stderr}");
        assert!(
            stderr.starts_with(&format!("keygate demo: port {port} ("))
                && stderr.contains("is in use by another process")
                && stderr.contains(&format!("{var}=")),
            "{var}: {stderr}"
        );
        assert!(!text(&out.stdout).contains("is up"), "{var}");
    }
}

#[test]
fn the_demo_reports_envoy_dying_at_startup_with_its_error() {
    let dir = repo()
        .join("target/itest")
        .join(format!("demo-broken-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A mistyped field (Envoy refuses the bootstrap) and a broken keygate configuration
    // (Envoy cannot create the plugin).
    let demo = std::fs::read_to_string(repo().join("envoy/demo.yaml")).unwrap();
    for (name, yaml, envoy_says) in [
        (
            "field",
            demo.replace("stat_prefix: api", "stat_prefx: api"),
            "stat_prefx",
        ),
        (
            "plugin",
            demo.replace("\"verify_path\"", "\"verify_pth\""),
            "configuration rejected: $.verify_pth: unknown field",
        ),
    ] {
        let config = dir.join(format!("{name}.yaml"));
        std::fs::write(&config, yaml).unwrap();
        let (out, took, _) = run_demo(config.to_str(), None);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert!(took < Duration::from_secs(5), "{name}: {took:?}");
        assert!(
            stderr.starts_with(&format!(
                "keygate demo: Envoy exited during startup (CONFIG={}); its last lines:\n",
                config.display()
            )),
            "{name}: {stderr}"
        );
        assert!(stderr.contains(envoy_says), "{name}: {stderr}");
    }
}

#[test]
fn keygate_version_prints_the_version_and_the_revision() {
    let out = Command::new(keygate_bin())
        .arg("--version")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.ends_with('\n') && is_version_line(text.trim_end_matches('\n')),
        "{text:?}"
    );
    assert!(out.status.success());
}

/// The shipped Envoy files that talk to `keygate serve` send it the request log (SPEC §13) with
/// the logger the tests run ([`request_log_logger`]): the same attributes, filter and stats
/// prefix, to an HTTP/2 cluster of the service.
#[test]
fn shipped_envoy_files_with_a_key_service_send_it_the_request_log() {
    for file in ["envoy/demo.yaml", "envoy/compose-envoy.yaml"] {
        let text = std::fs::read_to_string(repo().join(file)).unwrap();
        let doc = &yaml_documents(&text)[0];
        let hcm = &doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"];
        let loggers: Vec<&serde_json::Value> = hcm["access_log"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["name"] == "envoy.access_loggers.open_telemetry")
            .collect();
        assert_eq!(loggers.len(), 1, "{file}");
        let want = request_log_logger("keyservice_request_log", Some("demo-sync-token-7Qm2"));
        assert_eq!(loggers[0], &want, "{file}");
        let cluster = doc["static_resources"]["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "keyservice_request_log")
            .unwrap_or_else(|| panic!("{file}: no cluster keyservice_request_log"));
        assert!(
            cluster["typed_extension_protocol_options"]
                .to_string()
                .contains("http2_protocol_options"),
            "{file}: HTTP/2"
        );
        let keyservice = doc["static_resources"]["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "keyservice")
            .unwrap();
        assert_eq!(
            cluster["load_assignment"]["endpoints"], keyservice["load_assignment"]["endpoints"],
            "{file}: the key service's address"
        );
    }
}

/// The OpenTelemetry Collector configuration docs/request-log.md ships for installations past
/// one database is whole (no collector runs offline here): every component a pipeline names is
/// configured, it receives OTLP/gRPC on 4317, and it sends on to keygate serve with the sync
/// token, uncompressed or gzip (both taken: tests/request_log.rs).
#[test]
fn the_collector_configuration_for_the_request_log_is_whole() {
    let text = std::fs::read_to_string(repo().join("ops/otel-collector/request-log.yaml")).unwrap();
    let c = &yaml_documents(&text)[0];
    let pipeline = &c["service"]["pipelines"]["logs"];
    for (kind, list) in [
        ("receivers", "receivers"),
        ("processors", "processors"),
        ("exporters", "exporters"),
    ] {
        for name in pipeline[list].as_array().unwrap() {
            let name = name.as_str().unwrap();
            assert!(c[kind][name].is_object(), "{kind}.{name} is not configured");
        }
    }
    assert_eq!(
        c["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"],
        "0.0.0.0:4317"
    );
    let keygate = &c["exporters"]["otlp/keygate"];
    assert_eq!(
        keygate["headers"]["authorization"],
        "Bearer ${env:KEYGATE_SYNC_TOKEN}"
    );
    assert!(keygate["endpoint"].as_str().unwrap().ends_with(":4317"));
}

/// The demo runs from prebuilt binaries anywhere (KEYGATE_BIN, KEYGATE_WASM, ENVOY_BIN), as a
/// user without the toolchain has them: every printed line checked, naming the binary given.
#[test]
fn the_demo_runs_from_prebuilt_binaries_elsewhere() {
    let dir = scratch_dir("demo-prebuilt");
    let (keygate, wasm, envoy) = (
        dir.join("keygate"),
        dir.join("keygate.wasm"),
        dir.join("envoy"),
    );
    std::fs::copy(keygate_bin(), &keygate).unwrap();
    std::fs::copy(wasm_path(), &wasm).unwrap();
    std::os::unix::fs::symlink(envoy_bin(), &envoy).unwrap();
    let (out, _, _) = run_demo_with(
        None,
        None,
        &[
            ("KEYGATE_BIN", &keygate),
            ("KEYGATE_WASM", &wasm),
            ("ENVOY_BIN", &envoy),
        ],
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("demo smoke: ok (all 16 lines)"), "{stdout}");
    assert!(
        stdout.contains(&format!("{} keys usage acme_key_1", keygate.display())),
        "the printed lines name the binary given"
    );
    // A binary that is not there is named, with what to set.
    let out = Command::new(repo().join("envoy/demo.sh"))
        .env("KEYGATE_WASM", dir.join("nowhere.wasm"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr)
        .contains("nowhere.wasm is missing: run `make wasm` (make run does), or set KEYGATE_WASM"));
}

/// docs/getting-started.md's "Loading keygate into Envoy", as written: the file it shows is
/// envoy/examples/minimal.yaml byte for byte; `keygate new`'s second line put in place of the
/// example key; `keygate check`; Envoy (2 workers) with an upstream; the new key let through,
/// none refused, the per-key stat as a label.
#[test]
fn getting_started_loads_keygate_into_envoy_as_written() {
    let doc = std::fs::read_to_string(repo().join("docs/getting-started.md")).unwrap();
    let file = std::fs::read_to_string(repo().join("envoy/examples/minimal.yaml")).unwrap();
    let begin = "<!-- envoy/examples/minimal.yaml: begin -->\n```yaml\n";
    let start = doc.find(begin).expect("the file in the doc") + begin.len();
    let end = doc
        .find("```\n<!-- envoy/examples/minimal.yaml: end -->")
        .unwrap();
    assert!(
        doc[start..end] == file,
        "docs/getting-started.md shows another minimal.yaml"
    );
    // keygate new: line 1 the key, line 2 its entry, into "keys" for the example_key line.
    let out = cli()
        .args(["new", "--prefix", "sk_live_", "--id", "my_key"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    let mut lines = stdout.lines();
    let (key, entry) = (lines.next().unwrap(), lines.next().unwrap());
    let example = file
        .lines()
        .find(|l| l.contains("\"id\":\"example_key\""))
        .expect("the example_key line");
    let indent = &example[..example.len() - example.trim_start().len()];
    let mine = file.replace(example, &format!("{indent}{entry}"));
    let dir = scratch_dir("getting-started");
    let my = dir.join("my-envoy.yaml");
    std::fs::write(&my, &mine).unwrap();
    let check = cli().arg("check").arg(&my).output().unwrap();
    assert!(check.status.success(), "{}", text(&check.stderr));
    assert!(text(&check.stdout).contains("configuration.value: ok"));
    // Envoy on free ports (the file's 10000, 9901 and 18080 moved), from the checkout.
    let up = Upstream::start("live");
    let (port, admin) = (free_port(), free_port());
    let cfg = dir.join("envoy.yaml");
    std::fs::write(
        &cfg,
        localize(my.to_str().unwrap(), port, admin, up.port, free_port()),
    )
    .unwrap();
    let envoy = Envoy::launch(&cfg, &dir, port, admin, 2)
        .unwrap_or_else(|log| panic!("my-envoy.yaml did not start:\n{log}"));
    let ok = get(port, "/v1/hello", &[("x-api-key", key)]);
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(ok.header("x-environment"), Some("LIVE"));
    assert_json(&get(port, "/v1/hello", &[]), 401, MISSING);
    assert_eq!(
        get(
            port,
            "/v1/hello",
            &[("x-api-key", "sk_live_example_5Jq8Wn2Rt6Yc0Pz4")]
        )
        .status,
        401,
        "the example key is gone"
    );
    assert!(
        wait_until(5, || envoy
            .stats_prometheus()
            .contains("keygate_allowed{key_id=\"my_key\"} 1")),
        "{}",
        envoy.stats_prometheus()
    );
}

/// The shipped `.wasm` keeps its budget (250,000 bytes), and its memory is laid out stack first
/// (the stack pointer starts where the data does, at 1 MiB, growing down): the first KiB is
/// never used, which `make wasm`'s `wasm-opt --low-memory-unused` relies on.
#[test]
fn the_filter_keeps_its_size_budget_and_a_stack_first_layout() {
    let wasm = std::fs::read(wasm_path()).unwrap();
    assert!(
        wasm.len() <= 250_000,
        "keygate.wasm is {} bytes",
        wasm.len()
    );
    fn leb(b: &[u8], i: &mut usize) -> i64 {
        let (mut r, mut s) = (0i64, 0);
        loop {
            let x = b[*i];
            *i += 1;
            r |= i64::from(x & 0x7f) << s;
            s += 7;
            if x < 0x80 {
                if x & 0x40 != 0 && s < 64 {
                    r -= 1 << s;
                }
                return r;
            }
        }
    }
    let (mut i, mut stack, mut first_data) = (8, None, None);
    while i < wasm.len() {
        let id = wasm[i];
        i += 1;
        let size = leb(&wasm, &mut i) as usize;
        let (mut j, end) = (i, i + size);
        match id {
            // Globals: the first is the stack pointer, `i32.const <top>`.
            6 => {
                leb(&wasm, &mut j);
                assert_eq!(
                    wasm[j..j + 3],
                    [0x7f, 1, 0x41],
                    "a mutable i32 set by i32.const"
                );
                j += 3;
                stack = Some(leb(&wasm, &mut j));
            }
            // Data: the first active segment's `i32.const <offset>`.
            11 => {
                leb(&wasm, &mut j);
                assert_eq!(wasm[j..j + 2], [0, 0x41]);
                j += 2;
                first_data = Some(leb(&wasm, &mut j));
            }
            _ => {}
        }
        i = end;
    }
    assert_eq!(stack, Some(1 << 20), "the stack's top");
    assert_eq!(first_data, Some(1 << 20), "data after the stack");
}
