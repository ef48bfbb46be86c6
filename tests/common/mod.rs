//! Integration harness: a real Envoy (from the repo's venv) loading the built keygate.wasm,
//! a real upstream that reports what it received, and a raw HTTP/1.1 client.
#![allow(dead_code)]

pub mod browser;
pub mod fleet;
pub mod key_service;
pub mod partners;
pub mod readers;
pub mod service;

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// The repository's root (this package is `tests/`).
pub fn repo() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(Path::to_path_buf).unwrap_or(here)
}

/// The `keygate` binary `make build` leaves (the CLI and both services), as a user runs it.
pub fn keygate_bin() -> PathBuf {
    built("target/release/keygate", "make build")
}

/// `keygate {version} (revision {r})` as the build says it: `r` is `KEYGATE_REVISION` when
/// the tests run under `make` (which built with it), else any revision.
pub fn is_version_line(line: &str) -> bool {
    let start = format!("keygate {} (revision ", env!("CARGO_PKG_VERSION"));
    match std::env::var("KEYGATE_REVISION")
        .ok()
        .filter(|r| !r.is_empty())
    {
        Some(r) => line == format!("{start}{r})"),
        None => line.strip_prefix(&start).is_some_and(|r| {
            r.ends_with(')') && r.len() > 1 && !r[..r.len() - 1].contains([' ', '(', ')'])
        }),
    }
}

pub fn wasm_path() -> PathBuf {
    built("target/wasm32-wasip1/release/keygate.wasm", "make build")
}

/// The filter built with test-only fault injection (`make wasm-faults`).
pub fn faults_wasm_path() -> PathBuf {
    built(
        "target/faults/wasm32-wasip1/release/keygate.wasm",
        "make wasm-faults",
    )
}

fn built(path: &str, how: &str) -> PathBuf {
    let p = repo().join(path);
    assert!(p.exists(), "{} is missing: run `{how}` first", p.display());
    p
}

pub fn envoy_bin() -> PathBuf {
    let p = repo().join(".venv/bin/envoy");
    assert!(
        p.exists(),
        "{} is missing: run `make envoy` first",
        p.display()
    );
    p
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A fresh directory for one test's files, under target/itest.
pub fn scratch_dir(name: &str) -> PathBuf {
    let d = repo()
        .join("target/itest")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

/// The documents of a YAML stream as JSON values (PyYAML in the project's venv, which
/// `make kube-tools` installs).
pub fn yaml_documents(yaml: &str) -> Vec<Value> {
    let python = repo().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: `make kube-tools`",
        python.display()
    );
    let mut child = Command::new(python)
        .args([
            "-c",
            "import json,sys,yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(yaml.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("ran");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// A shell block of a doc, run as written (docs that are tested by running them).
pub struct DocBlock {
    /// Whether bash ended, and how.
    pub status: Option<std::process::ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    /// Whether every process it started has stopped since.
    pub cleaned_up: bool,
}

/// Runs the first ```sh block after `heading` in the repository's `doc` with bash (`set -e`),
/// from the checkout, `target/release` first on `PATH`: each fixed port in `ports` moved to a
/// free one (whole numbers only; and exported under the variable named, for the defaults of a
/// script the block runs), `/tmp/` moved to `dir`. Everything it started in the background is
/// stopped afterwards, as a process group.
pub fn run_doc_block(
    doc: &str,
    heading: &str,
    ports: &[(u16, Option<&str>)],
    dir: &Path,
) -> DocBlock {
    let text = std::fs::read_to_string(repo().join(doc)).expect("the doc");
    let from = text
        .find(heading)
        .unwrap_or_else(|| panic!("{doc}: no {heading:?}"));
    let start = text[from..].find("```sh\n").expect("a sh block") + from + "```sh\n".len();
    let end = text[start..].find("```").expect("its end") + start;
    let mut block = text[start..end].replace("/tmp/", &format!("{}/", dir.display()));
    let mut env = vec![];
    for (port, var) in ports {
        let (from, to) = (port.to_string(), free_port().to_string());
        let mut out = String::new();
        let mut rest = block.as_str();
        while let Some(i) = rest.find(&from) {
            let digit = |c: Option<char>| c.is_some_and(|c| c.is_ascii_digit());
            out.push_str(&rest[..i]);
            if digit(rest[..i].chars().last()) || digit(rest[i + from.len()..].chars().next()) {
                out.push_str(&from);
            } else {
                out.push_str(&to);
            }
            rest = &rest[i + from.len()..];
        }
        out.push_str(rest);
        block = out;
        if let Some(v) = var {
            env.push((v.to_string(), to));
        }
    }
    // Output to files: the block's background processes hold whatever it had open.
    let (out_path, err_path) = (dir.join("block.out"), dir.join("block.err"));
    let mut child = Command::new("setsid")
        .args(["bash", "-c"])
        .arg(format!("set -e\n{block}"))
        .current_dir(repo())
        .env(
            "PATH",
            format!(
                "{}:{}",
                repo().join("target/release").display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .envs(env)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("out"))
        .stderr(std::fs::File::create(&err_path).expect("err"))
        .spawn()
        .expect("bash");
    let pgid = child.id();
    let status = (0..1200).find_map(|_| {
        let s = child.try_wait().ok().flatten();
        if s.is_none() {
            thread::sleep(Duration::from_millis(50));
        }
        s
    });
    let group = format!("-{pgid}");
    let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
    let cleaned_up = wait_until(15, || {
        !Command::new("kill")
            .args(["-0", "--", &group])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    DocBlock {
        status,
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
        cleaned_up,
    }
}

/// A short directory under the system's temporary directory, for paths with a length limit
/// (podman refuses a `--runroot` over 50 characters; a Unix socket path holds 107 bytes), which a
/// checkout in a deep directory would exceed under `target/itest`.
pub fn short_scratch_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kg-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("short scratch dir");
    d
}

/// An HTTP response as the client saw it.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
    /// For upstream answers: the headers the upstream received (name → values).
    pub fn upstream_header(&self, name: &str) -> Option<String> {
        let j = self.json();
        let vals = j["headers"]
            .get(name.to_ascii_lowercase())?
            .as_array()?
            .clone();
        Some(
            vals.iter()
                .filter_map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join(","),
        )
    }
    pub fn upstream_path(&self) -> String {
        self.json()["path"].as_str().unwrap_or_default().to_string()
    }
    pub fn reached_upstream(&self) -> bool {
        self.header("x-echo-upstream").is_some()
    }
}

/// Sends one request on a fresh connection (`Connection: close`).
pub fn send(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    send_to("127.0.0.1", port, method, path, headers)
}

/// [`send`] to a given loopback address (`"::1"` for IPv6).
pub fn send_to(
    host: &str,
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Response {
    send_body(host, port, method, path, headers, "")
}

/// [`send_to`] with a body (`content-length` set).
pub fn send_body(
    host: &str,
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Response {
    let mut s = TcpStream::connect((host, port)).expect("connect to envoy");
    s.set_read_timeout(Some(Duration::from_secs(20))).ok();
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: api.test\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        req.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).expect("write request");
    read_response(&mut s)
}

/// Reads one response: up to `content-length` (or the end of a chunked body, or EOF), so that
/// a client never waits on Envoy's delayed close.
fn read_response(s: &mut TcpStream) -> Response {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let body_len = buf.len() - end - 4;
            let done =
                if let Some(cl) = head.lines().find_map(|l| l.strip_prefix("content-length:")) {
                    body_len >= cl.trim().parse::<usize>().unwrap_or(0)
                } else if head.contains("transfer-encoding: chunked") {
                    buf.ends_with(b"0\r\n\r\n")
                } else {
                    false
                };
            if done {
                break;
            }
        }
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("reading the response: {e}"),
        }
    }
    parse_response(&buf)
}

fn write_atomic(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

pub fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> Response {
    send(port, "GET", path, headers)
}

fn parse_response(buf: &[u8]) -> Response {
    let text = String::from_utf8_lossy(buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {text:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

/// A real HTTP/1.1 upstream that answers 200 with a JSON report of what it received:
/// `{"method":…,"path":…,"headers":{name:[values…]}}` and `x-echo-upstream: <name>`.
pub struct Upstream {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl Upstream {
    pub fn start(name: &str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let name = name.to_string();
        thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let name = name.clone();
                thread::spawn(move || serve_echo(conn, &name));
            }
        });
        Upstream { port, stop }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve_echo(conn: TcpStream, name: &str) {
    conn.set_read_timeout(Some(Duration::from_secs(60))).ok();
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let mut out = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.trim_end().splitn(3, ' ');
        let method = parts.next().unwrap_or_default().to_string();
        let path = parts.next().unwrap_or_default().to_string();
        let mut headers = serde_json::Map::new();
        // The header lines as received, in order (byte-identical output tests compare them).
        let mut raw = vec![];
        let mut content_length = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            raw.push(Value::String(h.to_string()));
            if let Some((k, v)) = h.split_once(':') {
                let k = k.trim().to_ascii_lowercase();
                let v = v.trim().to_string();
                if k == "content-length" {
                    content_length = v.parse().unwrap_or(0);
                }
                if let Some(a) = headers
                    .entry(k)
                    .or_insert_with(|| Value::Array(vec![]))
                    .as_array_mut()
                {
                    a.push(Value::String(v));
                }
            }
        }
        let mut body = vec![0u8; content_length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let report =
            serde_json::json!({"method": method, "path": path, "headers": headers, "raw": raw,
                                        "body": String::from_utf8_lossy(&body)})
            .to_string();
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-echo-upstream: {name}\r\ncontent-length: {}\r\n\r\n{report}",
            report.len()
        );
        if out.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

/// Options for one Envoy.
pub struct EnvoyOpts<'a> {
    pub name: &'a str,
    /// The keygate plugin configuration (JSON).
    pub plugin_config: &'a str,
    pub upstream: u16,
    /// A second upstream, routed to when `x-environment: SANDBOX`.
    pub sandbox_upstream: Option<u16>,
    pub concurrency: u32,
    /// A key service, reachable as the Envoy cluster `keyservice`.
    pub key_service: Option<u16>,
    /// The shipped configs' HCM hardening (path normalisation, escaped slashes and underscore
    /// headers refused or dropped, `use_remote_address`); `false` = Envoy's defaults.
    pub hardened: bool,
    /// The filter to load instead of the release build (e.g. [`faults_wasm_path`]).
    pub wasm: Option<PathBuf>,
    /// Answer every routed request with a direct 200 (no upstream): benches measure the filter.
    pub direct_response: bool,
    /// Rate-limit service replicas (their gRPC ports), reachable as the HTTP/2 cluster
    /// `ratelimit`, health-checked with gRPC health every 500 ms.
    pub rate_limit_service: Vec<u16>,
    /// HTTP filters placed before keygate (e.g. Envoy's own ratelimit filter in benches).
    pub filters_before: Vec<Value>,
    /// The bootstrap's `stats_config` (default: [`stats_config`], keygate's tags).
    pub stats_config: Option<Value>,
    /// The request log (SPEC §13): Envoy's OpenTelemetry access logger as the shipped
    /// configurations set it ([`request_log_logger`]), sending to a key service on this port
    /// (the HTTP/2 cluster `keygate_request_log`) with this sync token, if any.
    pub request_log: Option<(u16, Option<String>)>,
}

impl<'a> EnvoyOpts<'a> {
    pub fn new(name: &'a str, plugin_config: &'a str, upstream: u16) -> Self {
        EnvoyOpts {
            name,
            plugin_config,
            upstream,
            sandbox_upstream: None,
            concurrency: 2,
            key_service: None,
            hardened: false,
            wasm: None,
            direct_response: false,
            rate_limit_service: vec![],
            filters_before: vec![],
            stats_config: None,
            request_log: None,
        }
    }
}

pub struct Envoy {
    pub port: u16,
    pub admin: u16,
    pub dir: PathBuf,
    child: Child,
    lds_version: u32,
}

fn cluster(name: &str, port: u16) -> Value {
    json!({
        "name": name, "type": "STATIC", "connect_timeout": "2s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
            "socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}
    })
}

/// The gRPC cluster `ratelimit` of a rate-limit service's replicas (HTTP/2, gRPC health).
pub fn rate_limit_cluster(ports: &[u16]) -> Value {
    let endpoints: Vec<Value> = ports
        .iter()
        .map(|p| json!({"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}))
        .collect();
    json!({
        "name": "ratelimit", "type": "STATIC", "connect_timeout": "1s",
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}},
        // Two failed checks take a replica out: one slow answer on a loaded machine does not.
        "health_checks": [{"timeout": "2s", "interval": "0.5s", "no_traffic_interval": "0.5s",
                           "unhealthy_threshold": 2, "healthy_threshold": 1,
                           "grpc_health_check": {}}],
        "load_assignment": {"cluster_name": "ratelimit", "endpoints": [{"lb_endpoints": endpoints}]}
    })
}

/// The request log's access logger, as every shipped Envoy file configures it (envoy/demo.yaml
/// and the others; tests/shipped_configs.rs holds them to this): one OTLP record per request
/// keygate judged, its attributes read from keygate's filter state and Envoy's own facts.
pub fn request_log_logger(cluster: &str, token: Option<&str>) -> Value {
    let attributes = [
        ("key_id", "%FILTER_STATE(wasm.keygate.key_id:PLAIN)%"),
        ("tenant", "%FILTER_STATE(wasm.keygate.tenant:PLAIN)%"),
        (
            "environment",
            "%FILTER_STATE(wasm.keygate.environment:PLAIN)%",
        ),
        ("decision", "%FILTER_STATE(wasm.keygate.decision:PLAIN)%"),
        ("method", "%REQ(:METHOD)%"),
        ("path", "%PATH(NQ:ORIG_OR_PATH):1024%"),
        ("route", "%ROUTE_NAME%"),
        ("status", "%RESPONSE_CODE%"),
        ("client_ip", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"),
        ("duration_ms", "%DURATION%"),
        ("user_agent", "%REQ(USER-AGENT):256%"),
    ]
    .map(|(k, v)| json!({"key": k, "value": {"string_value": v}}));
    let mut grpc = json!({"envoy_grpc": {"cluster_name": cluster}, "timeout": "2s"});
    if let Some(t) = token {
        grpc["initial_metadata"] =
            json!([{"key": "authorization", "value": format!("Bearer {t}")}]);
    }
    json!({
        "name": "envoy.access_loggers.open_telemetry",
        "filter": {"extension_filter": {
            "name": "envoy.access_loggers.extension_filters.cel",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter",
                "expression": "'wasm.keygate.decision' in filter_state"
            }
        }},
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig",
            "log_name": "keygate",
            "stat_prefix": "keygate_request_log",
            "grpc_service": grpc,
            "buffer_flush_interval": "0.5s",
            "attributes": {"values": attributes}
        }
    })
}

/// A plain HTTP/2 (prior knowledge) cluster, for gRPC.
pub fn grpc_cluster(name: &str, port: u16) -> Value {
    let mut c = cluster(name, port);
    c["typed_extension_protocol_options"] = json!({"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}}}});
    c
}

/// The keygate HTTP filter entry for a plugin configuration.
pub fn keygate_filter(plugin_config: &str, wasm: &Path) -> Value {
    json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "keygate", "root_id": "keygate", "failure_policy": "FAIL_CLOSED",
                "vm_config": {"vm_id": "keygate", "runtime": "envoy.wasm.runtime.v8",
                              "code": {"local": {"filename": wasm.display().to_string()}}},
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": plugin_config}
            }
        }
    })
}

fn listener(o: &EnvoyOpts, dir: &Path, port: u16, plugin_config: &str) -> Value {
    let mut routes = vec![];
    if o.sandbox_upstream.is_some() {
        routes.push(json!({"match": {"prefix": "/", "headers": [{"name": "x-environment", "string_match": {"exact": "SANDBOX"}}]},
                           "route": {"cluster": "sandbox"}}));
    }
    if !o.direct_response {
        // A named route (usage by route, SPEC §8); the catch-all below has no name ("-").
        routes.push(json!({"name": "orders", "match": {"prefix": "/orders/"}, "route": {"cluster": "upstream"}}));
    }
    routes.push(if o.direct_response {
        json!({"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}})
    } else {
        json!({"match": {"prefix": "/"}, "route": {"cluster": "upstream"}})
    });
    let mut hcm = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ingress",
        "access_log": [{"name": "envoy.access_loggers.file", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": dir.join("access.log").display().to_string(),
            "log_format": {"json_format": {
                "key_id": "%FILTER_STATE(wasm.keygate.key_id:PLAIN)%",
                "tenant": "%FILTER_STATE(wasm.keygate.tenant:PLAIN)%",
                "environment": "%FILTER_STATE(wasm.keygate.environment:PLAIN)%",
                "decision": "%FILTER_STATE(wasm.keygate.decision:PLAIN)%",
                "method": "%REQ(:METHOD)%",
                "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
                "status": "%RESPONSE_CODE%",
                "client": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
                "time": "%START_TIME%",
                "request_id": "%REQ(X-TEST-ID)%"
            }}
        }}],
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]},
        "http_filters": o.filters_before.iter().cloned().chain([
            keygate_filter(plugin_config, &o.wasm.clone().unwrap_or_else(wasm_path)),
            json!({"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}})
        ]).collect::<Vec<_>>()
    });
    if let Some((_, token)) = &o.request_log {
        let logs = hcm["access_log"].as_array_mut().expect("access_log");
        logs.push(request_log_logger("keygate_request_log", token.as_deref()));
    }
    if o.hardened {
        for (k, v) in [
            ("normalize_path", json!(true)),
            ("merge_slashes", json!(true)),
            ("path_with_escaped_slashes_action", json!("REJECT_REQUEST")),
            (
                "common_http_protocol_options",
                json!({"headers_with_underscores_action": "DROP_HEADER"}),
            ),
            ("use_remote_address", json!(true)),
        ] {
            hcm[k] = v;
        }
    }
    json!({
        "name": "main",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        // The same port on IPv6 loopback, for tests of IPv6 clients.
        "additional_addresses": [{"address": {"socket_address": {"address": "::1", "port_value": port}}}],
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": hcm
        }]}]
    })
}

fn lds(listener: &Value, version: u32) -> String {
    let mut l = listener.clone();
    l["@type"] = json!("type.googleapis.com/envoy.config.listener.v3.Listener");
    json!({"version_info": version.to_string(), "resources": [l]}).to_string()
}

/// Tag extraction that turns keygate's metric names into Prometheus labels.
pub fn stats_config() -> Value {
    json!({"stats_tags": [
        {"tag_name": "reason", "regex": "^wasmcustom\\.keygate\\.rejected(\\.reason\\.([a-z_]+))"},
        {"tag_name": "key_id", "regex": "^wasmcustom\\.keygate\\.\\w+(?:\\.reason\\.[a-z_]+)?(\\.key_id\\.(.+))$"}
    ]})
}

impl Envoy {
    pub fn start(o: &EnvoyOpts) -> Envoy {
        Self::try_start(o).unwrap_or_else(|log| panic!("envoy did not become ready; log:\n{log}"))
    }

    /// Starts Envoy with a static listener; `Err(log)` if it exits or never becomes ready.
    pub fn try_start(o: &EnvoyOpts) -> Result<Envoy, String> {
        Self::start_with(o, false)
    }

    /// Starts Envoy with the listener served from a file (LDS), so that the plugin
    /// configuration can be replaced at run time with [`Envoy::update_plugin_config`].
    pub fn start_dynamic(o: &EnvoyOpts) -> Envoy {
        Self::start_with(o, true)
            .unwrap_or_else(|log| panic!("envoy did not become ready; log:\n{log}"))
    }

    /// Ports are picked free and released before Envoy binds them, so another process of a
    /// parallel test can take one in between: then Envoy exits with "Address already in use"
    /// and is started again on other ports (at most three times).
    fn start_with(o: &EnvoyOpts, dynamic: bool) -> Result<Envoy, String> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::start_once(o, dynamic) {
                Err(log) if attempt < 3 && log.contains("Address already in use") => continue,
                other => return other,
            }
        }
    }

    fn start_once(o: &EnvoyOpts, dynamic: bool) -> Result<Envoy, String> {
        let dir = scratch_dir(o.name);
        let port = free_port();
        let admin = free_port();
        let mut clusters = vec![cluster("upstream", o.upstream)];
        if let Some(p) = o.sandbox_upstream {
            clusters.push(cluster("sandbox", p));
        }
        if let Some(p) = o.key_service {
            clusters.push(cluster("keyservice", p));
        }
        if !o.rate_limit_service.is_empty() {
            clusters.push(rate_limit_cluster(&o.rate_limit_service));
        }
        if let Some((p, _)) = &o.request_log {
            clusters.push(grpc_cluster("keygate_request_log", *p));
        }
        let l = listener(o, &dir, port, o.plugin_config);
        let mut bootstrap = json!({
            "node": {"id": "keygate-test", "cluster": "keygate-test"},
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
            "static_resources": {"clusters": clusters},
            "stats_config": o.stats_config.clone().unwrap_or_else(stats_config),
            // Key-service answers are buffered by Envoy's async HTTP client, capped at 32 MiB
            // by default: a million-key set needs more.
            "layered_runtime": {"layers": [{"name": "static", "static_layer": {
                "http.async_response_buffer_limit": 512u64 * 1024 * 1024
            }}]},
            // Hand freed heap back to the OS, so resident memory reflects what is in use.
            "memory_allocator_manager": {"bytes_to_release": 256u64 * 1024 * 1024, "memory_release_interval": "1s"}
        });
        if dynamic {
            write_atomic(&dir.join("lds.json"), &lds(&l, 1));
            bootstrap["dynamic_resources"] = json!({"lds_config": {"path_config_source": {"path": dir.join("lds.json").display().to_string()}}});
        } else {
            bootstrap["static_resources"]["listeners"] = json!([l]);
        }
        let cfg = dir.join("envoy.json");
        std::fs::write(&cfg, bootstrap.to_string()).expect("write envoy.json");
        let mut e = Self::launch(&cfg, &dir, port, admin, o.concurrency)?;
        e.lds_version = 1;
        Ok(e)
    }

    /// Replaces the listener (and so the plugin configuration) through LDS and waits, bounded,
    /// until Envoy has accepted or rejected the update. Returns whether it was accepted.
    pub fn update_plugin_config(&mut self, o: &EnvoyOpts) -> bool {
        let before = (
            self.counter("listener_manager.lds.update_success"),
            self.counter("listener_manager.lds.update_rejected"),
        );
        self.lds_version += 1;
        let l = listener(o, &self.dir, self.port, o.plugin_config);
        write_atomic(&self.dir.join("lds.json"), &lds(&l, self.lds_version));
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let now = (
                self.counter("listener_manager.lds.update_success"),
                self.counter("listener_manager.lds.update_rejected"),
            );
            if now.0 > before.0 {
                // Wait until the new listener is serving (the old one drains).
                let t = Instant::now() + Duration::from_secs(30);
                while self.gauge("listener_manager.total_listeners_warming") > 0
                    && Instant::now() < t
                {
                    thread::sleep(Duration::from_millis(20));
                }
                return true;
            }
            if now.1 > before.1 {
                return false;
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!("LDS update was neither accepted nor rejected");
    }

    pub fn stat(&self, name: &str) -> Option<u64> {
        let body = admin_get(
            self.admin,
            &format!("/stats?filter=^{}$", name.replace('.', "\\.")),
        )?
        .body;
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: "))?.trim().parse().ok())
    }

    pub fn counter(&self, name: &str) -> u64 {
        self.stat(name).unwrap_or(0)
    }

    pub fn gauge(&self, name: &str) -> u64 {
        self.stat(name).unwrap_or(0)
    }

    pub fn launch(
        cfg: &Path,
        dir: &Path,
        port: u16,
        admin: u16,
        concurrency: u32,
    ) -> Result<Envoy, String> {
        let log = dir.join("envoy.log");
        // Benches pin Envoy to its own CPUs (KEYGATE_ENVOY_CPUS=0), away from the load.
        let mut cmd = match std::env::var("KEYGATE_ENVOY_CPUS") {
            Ok(cpus) if !cpus.is_empty() => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpus]).arg(envoy_bin());
                c
            }
            _ => Command::new(envoy_bin()),
        };
        let child = cmd
            .args(["-c", &cfg.display().to_string()])
            .args(["--concurrency", &concurrency.to_string()])
            .args([
                "--disable-hot-restart",
                // A replaced listener (and the filter's root contexts in it) is gone a second
                // after an LDS update, not ten minutes later: tests see what a teardown does.
                "--drain-time-s",
                "1",
                "--log-level",
                "info",
                "--file-flush-interval-msec",
                "100",
            ])
            .args(["--log-path", &log.display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn envoy");
        let mut envoy = Envoy {
            port,
            admin,
            dir: dir.to_path_buf(),
            child,
            lds_version: 0,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = envoy.child.try_wait() {
                return Err(envoy.log());
            }
            if admin_get(admin, "/ready").is_some_and(|r| r.status == 200) {
                return Ok(envoy);
            }
            thread::sleep(Duration::from_millis(50));
        }
        Err(envoy.log())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default()
    }

    pub fn access_log(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits (bounded) for the access-log line of the request tagged `x-test-id: id`.
    pub fn access_entry(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(e) = self
                .access_log()
                .into_iter()
                .find(|e| e["request_id"] == id)
            {
                return e;
            }
            assert!(Instant::now() < deadline, "no access-log entry for {id}");
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stats_prometheus(&self) -> String {
        admin_get(self.admin, "/stats/prometheus")
            .map(|r| r.body)
            .unwrap_or_default()
    }

    /// `/stats/prometheus` once it holds every given sample line (bounded: 5 s). keygate's
    /// usage stats are flushed on each worker's tick (SPEC §3: within one second).
    pub fn stats_prometheus_once(&self, samples: &[&str]) -> String {
        let mut stats = String::new();
        wait_until(5, || {
            stats = self.stats_prometheus();
            samples.iter().all(|s| stats.lines().any(|l| l == *s))
        });
        stats
    }

    /// Bytes Envoy's allocator has handed out (admin `/memory`).
    pub fn allocated_bytes(&self) -> u64 {
        admin_get(self.admin, "/memory")
            .and_then(|r| serde_json::from_str::<Value>(&r.body).ok())
            .and_then(|v| v["allocated"].as_str().and_then(|s| s.parse().ok()))
            .unwrap_or(0)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connections each of Envoy's workers accepted on the test listener.
pub fn per_worker_connections(e: &Envoy) -> Vec<u64> {
    let body = admin_get(e.admin, "/stats?filter=worker_[0-9]+\\.downstream_cx_total")
        .map(|r| r.body)
        .unwrap_or_default();
    body.lines()
        .filter(|l| l.contains(&format!("_{}.worker_", e.port)))
        .filter_map(|l| l.rsplit(": ").next()?.trim().parse().ok())
        .collect()
}

pub fn admin_get(admin: u16, path: &str) -> Option<Response> {
    let mut s = TcpStream::connect(("127.0.0.1", admin)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    std::panic::catch_unwind(move || read_response(&mut s)).ok()
}

/// Polls `cond` every 50 ms until it holds or `secs` pass; returns whether it held.
pub fn wait_until(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// SHA-256 hex of a key, as configs store it.
pub fn sha(key: &str) -> String {
    keygate::keys::digest_hex(key.as_bytes())
}

/// The two 401 bodies most tests check.
pub const MISSING: &str = r#"{"error":"Missing API key","code":"UNAUTHORIZED"}"#;
pub const INVALID: &str = r#"{"error":"Invalid API key","code":"UNAUTHORIZED"}"#;

pub fn assert_json(r: &Response, status: u16, body: &str) {
    assert_eq!(r.status, status, "status; body {}", r.body);
    assert_eq!(
        r.header("content-type"),
        Some("application/json"),
        "content-type"
    );
    let want: Value = serde_json::from_str(body).expect("expected body is JSON");
    assert_eq!(r.json(), want, "body");
    assert_eq!(r.body, body, "body bytes");
}

/// [`send_to`] over HTTP/2 cleartext (prior knowledge), with curl (which refuses some URLs:
/// callers choose their h2c cases up front, and a refusal fails the test).
pub fn send_h2c(
    host: &str,
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Response {
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-i", "--http2-prior-knowledge", "--path-as-is"])
        .args(["--max-time", "20", "-X", method]);
    for (k, v) in headers {
        cmd.args(["-H", &format!("{k}: {v}")]);
    }
    let out = cmd
        .arg(format!("http://{authority}{path}"))
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl failed ({}) for {method} {path}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    parse_response(&out.stdout)
}
