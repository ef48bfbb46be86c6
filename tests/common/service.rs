//! Real parts for the key-service tests: `keygate serve` (the built binary) on SQLite or on a
//! real PostgreSQL server started here in a temporary directory on a loopback port.
#![allow(dead_code)]

use super::{free_port, wait_until};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub const SYNC_TOKEN: &str = "test-sync-token-0123456789";

pub fn sha_hex(s: &str) -> String {
    super::sha(s)
}

/// One `keygate serve` process; killed on drop.
pub struct Service {
    pub port: u16,
    pub gateway_port: Option<u16>,
    pub database: String,
    pub config: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    sync_token: bool,
    /// More `keygate serve` arguments (limits and deadlines).
    args: Vec<String>,
    /// What a start waits for: `/readyz` (the database is open), or only `/healthz`.
    until: &'static str,
}

pub struct ServiceOpts<'a> {
    pub database: &'a str,
    pub config: &'a Path,
    pub gateway: bool,
    pub sync_token: bool,
    pub port: Option<u16>,
}

impl Service {
    /// The admin API, the feed and `/usage` on one listener; no sync token.
    pub fn on(database: &str, config: &Path) -> Service {
        Service::start(ServiceOpts {
            database,
            config,
            gateway: false,
            sync_token: false,
            port: None,
        })
    }

    pub fn start(o: ServiceOpts) -> Service {
        Self::start_args(o, &[])
    }

    /// [`Service::on`], waiting only until the process answers (`/healthz`), not until its
    /// database is open (`/readyz`).
    pub fn on_starting(database: &str, config: &Path) -> Service {
        Self::start_until(
            ServiceOpts {
                database,
                config,
                gateway: false,
                sync_token: false,
                port: None,
            },
            &[],
            "/healthz",
        )
    }

    /// [`Service::start`] with more `keygate serve` arguments.
    pub fn start_args(o: ServiceOpts, args: &[&str]) -> Service {
        Self::start_until(o, args, "/readyz")
    }

    fn start_until(o: ServiceOpts, args: &[&str], until: &'static str) -> Service {
        let port = o.port.unwrap_or_else(free_port);
        let gateway_port = o.gateway.then(free_port);
        let log = o.config.with_extension(format!("serve-{port}.log"));
        let mut s = Service {
            port,
            gateway_port,
            database: o.database.to_string(),
            config: o.config.to_path_buf(),
            child: None,
            log,
            sync_token: o.sync_token,
            args: args.iter().map(|a| a.to_string()).collect(),
            until,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(super::keygate_bin());
        cmd.args(["serve", "--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--database", &self.database])
            .arg("--config")
            .arg(&self.config)
            .env("KEYGATE_ADMIN_TOKEN_SHA256", sha_hex(ADMIN_TOKEN))
            .env_remove("KEYGATE_SYNC_TOKEN_SHA256");
        if let Some(g) = self.gateway_port {
            cmd.args(["--gateway-listen", &format!("127.0.0.1:{g}")]);
        }
        if self.sync_token {
            cmd.env("KEYGATE_SYNC_TOKEN_SHA256", sha_hex(SYNC_TOKEN));
        }
        cmd.args(&self.args);
        let log = std::fs::File::create(&self.log).expect("service log");
        cmd.stdout(Stdio::null()).stderr(log);
        self.child = Some(cmd.spawn().expect("start keygate serve"));
        let (port, until) = (self.port, self.until);
        let up = wait_until(30, || {
            ureq_get(&format!("http://127.0.0.1:{port}{until}"), None).0 == 200
        });
        assert!(up, "keygate serve did not come up:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGTERM; how long the process took to exit, or `None` if it still runs after `within`.
    pub fn terminate(&mut self, within: Duration) -> Option<Duration> {
        let started = std::time::Instant::now();
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let child = self.child.as_mut()?;
        let exited = wait_until(within.as_secs(), || matches!(child.try_wait(), Ok(Some(_))));
        exited.then(|| {
            self.child = None;
            started.elapsed()
        })
    }

    /// Kills the process at once (SIGKILL: no graceful shutdown).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and database.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// An admin call: (status, JSON body).
    pub fn admin(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        call(&self.url(), method, path, body, Some(ADMIN_TOKEN))
    }
}

/// Calls on the gateway listener as keygate would forward a tenant admin key's request.
pub fn as_tenant(
    s: &Service,
    tenant: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, Value) {
    let base = format!("http://127.0.0.1:{}", s.gateway_port.unwrap());
    let (st, _, text) = call_raw(
        &base,
        method,
        path,
        body,
        &[
            ("x-tenant-id", tenant.to_string()),
            ("x-api-key-role", "admin".to_string()),
            ("x-api-key-id", format!("{tenant}_admin")),
            ("x-forwarded-for", "198.51.100.7".to_string()),
        ],
    );
    (st, serde_json::from_str(&text).unwrap_or(Value::Null))
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(20)))
            .build(),
    )
}

fn ureq_get(url: &str, token: Option<&str>) -> (u16, String) {
    let mut r = agent().get(url);
    if let Some(t) = token {
        r = r.header("authorization", &format!("Bearer {t}"));
    }
    match r.call() {
        Ok(mut resp) => (
            resp.status().as_u16(),
            resp.body_mut().read_to_string().unwrap_or_default(),
        ),
        Err(_) => (0, String::new()),
    }
}

/// Any call: (status, JSON body or `Value::Null` when empty / not JSON).
pub fn call(
    base: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> (u16, Value) {
    let (status, _, text) = call_raw(
        base,
        method,
        path,
        body,
        &token
            .map(|t| ("authorization", format!("Bearer {t}")))
            .into_iter()
            .collect::<Vec<_>>(),
    );
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A call with any headers: (status, headers, body text).
pub fn call_raw(
    base: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, String)],
) -> (u16, Vec<(String, String)>, String) {
    let url = format!("{base}{path}");
    let a = agent();
    let result = match method {
        "GET" => {
            let mut r = a.get(&url);
            for (k, v) in headers {
                r = r.header(*k, v);
            }
            r.call()
        }
        "DELETE" => {
            let mut r = a.delete(&url);
            for (k, v) in headers {
                r = r.header(*k, v);
            }
            r.call()
        }
        m => {
            let mut r = match m {
                "PUT" => a.put(&url),
                "PATCH" => a.patch(&url),
                _ => a.post(&url),
            };
            for (k, v) in headers {
                r = r.header(*k, v);
            }
            r.header("content-type", "application/json")
                .send(body.unwrap_or(""))
        }
    };
    let mut resp = result.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let hs = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (status, hs, text)
}

/// A PostgreSQL server of Debian's `postgresql` package, in a temporary directory, on a
/// loopback port; stopped and removed on drop. Run as the `postgres` user when the tests run
/// as root (the server refuses to run as root).
pub struct Postgres {
    pub port: u16,
    dir: PathBuf,
    tls: bool,
    child: Option<Child>,
}

fn pg_bin(name: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    versions.sort();
    let bin = versions
        .last()
        .map(|v| v.join("bin").join(name))
        .filter(|p| p.exists());
    bin.unwrap_or_else(|| {
        panic!(
            "PostgreSQL's {name} is missing: `make postgres` installs Debian's postgresql package"
        )
    })
}

/// A PostgreSQL client program, connected to the server on `port` as the tests' user.
fn pg_client(name: &str, port: u16) -> Command {
    let mut c = Command::new(pg_bin(name));
    c.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "keygate"]);
    c
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn as_postgres_user(bin: PathBuf) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

/// A CA and a server certificate for 127.0.0.1 (openssl), readable by the server only.
fn make_certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=keygate test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext.cnf");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    // A second CA that signed nothing here: verify-full with it must fail.
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "other.key",
        "-out",
        "other-ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=another CA",
    ]);
    for f in ["server.key", "server.crt"] {
        let _ = Command::new("chmod")
            .args(["600"])
            .arg(dir.join(f))
            .status();
        if is_root() {
            let _ = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.join(f))
                .status();
        }
    }
}

impl Postgres {
    pub fn start(name: &str) -> Postgres {
        Self::start_with(name, false)
    }

    /// A server that also speaks TLS, with a certificate for `127.0.0.1` signed by a CA of its
    /// own (`ca.pem` in [`Postgres::dir`]), made with openssl.
    pub fn start_tls(name: &str) -> Postgres {
        Self::start_with(name, true)
    }

    /// The server's directory (certificates, log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn start_with(name: &str, tls: bool) -> Postgres {
        let dir = std::env::temp_dir().join(format!("keygate-pg-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("pg dir");
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(ok, "chown of the PostgreSQL directory failed");
        }
        let data = dir.join("data");
        let out = as_postgres_user(pg_bin("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "keygate", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .expect("initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if tls {
            make_certificates(&dir);
        }
        let mut pg = Postgres {
            port: free_port(),
            dir,
            tls,
            child: None,
        };
        pg.start_again();
        pg
    }

    /// Starts the server (again) on its port and data directory, and waits until it answers.
    pub fn start_again(&mut self) {
        let (dir, port) = (&self.dir, self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("postgres.log"))
            .expect("pg log");
        let mut server = as_postgres_user(pg_bin("postgres"));
        if self.tls {
            server
                .args(["-c", "ssl=on"])
                .arg("-c")
                .arg(format!(
                    "ssl_cert_file={}",
                    dir.join("server.crt").display()
                ))
                .arg("-c")
                .arg(format!("ssl_key_file={}", dir.join("server.key").display()));
        }
        let child = server
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-p", &port.to_string(), "-k"])
            .arg(dir)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start postgres");
        self.child = Some(child);
        let ready = wait_until(30, || {
            pg_client("pg_isready", port)
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        });
        assert!(ready, "postgres did not start: {}", self.log());
    }

    /// Stops the server (fast shutdown: every connection is closed), keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // pg_ctl signals the postmaster itself (the child may be runuser, which does not
            // pass SIGINT on); kill what lingers.
            let _ = as_postgres_user(pg_bin("pg_ctl"))
                .args(["stop", "-m", "fast", "-w", "-D"])
                .arg(self.data_dir())
                .output();
            if !wait_until(10, || matches!(c.try_wait(), Ok(Some(_)))) {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }

    /// The server's data directory (tables, WAL).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// A new, empty database on this server.
    pub fn database(&self, name: &str) -> String {
        let out = pg_client("createdb", self.port)
            .arg(name)
            .output()
            .expect("createdb");
        assert!(
            out.status.success(),
            "createdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        format!("postgres://keygate@127.0.0.1:{}/{name}", self.port)
    }

    /// Runs SQL with psql; its output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = pg_client("psql", self.port)
            .args(["-At", "-d", db, "-c", sql])
            .output()
            .expect("psql");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
