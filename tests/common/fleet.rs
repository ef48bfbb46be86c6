//! Fleet-wide limits' real parts: Redis servers (Debian's `redis-server`, each in its own
//! temporary directory on a loopback port), a three-master Redis Cluster, and `keygate
//! ratelimit` replicas.

use super::{free_port, repo, wait_until};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

fn redis_bin(name: &str) -> String {
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let p = format!("{dir}/{name}");
        if std::path::Path::new(&p).exists() {
            return p;
        }
    }
    panic!("{name} is missing: `make redis` installs Debian's redis-server")
}

/// `redis-cli -p PORT ARGS…`, its output trimmed.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new(redis_bin("redis-cli"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// One Redis server; stopped on drop.
pub struct Redis {
    pub port: u16,
    dir: PathBuf,
    cluster: bool,
    child: Option<Child>,
}

impl Redis {
    pub fn start(name: &str) -> Redis {
        Self::start_on(name, free_port(), false)
    }

    /// A server on a given port (e.g. one a service was told of before it existed).
    pub fn start_at(name: &str, port: u16) -> Redis {
        Self::start_on(name, port, false)
    }

    fn start_on(name: &str, port: u16, cluster: bool) -> Redis {
        let dir = repo()
            .join("target/itest")
            .join(format!("redis-{name}-{port}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("redis dir");
        let mut r = Redis {
            port,
            dir,
            cluster,
            child: None,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(redis_bin("redis-server"));
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.dir)
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .arg("--logfile")
            .arg(self.dir.join("redis.log"));
        if self.cluster {
            cmd.args(["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"])
                .arg("--cluster-config-file")
                .arg(self.dir.join("nodes.conf"));
        }
        self.child = Some(
            cmd.stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis-server"),
        );
        let port = self.port;
        assert!(
            wait_until(20, || redis_cli(port, &["PING"]) == "PONG"),
            "redis-server did not start on {port}"
        );
    }

    /// Stops the server at once (SIGKILL).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (empty: it keeps nothing on disk).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Redis Cluster of three masters, built with `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<Redis>,
}

impl RedisCluster {
    pub fn start(name: &str) -> RedisCluster {
        let nodes: Vec<Redis> = (0..3)
            .map(|i| Redis::start_on(&format!("{name}-{i}"), free_port(), true))
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new(redis_bin("redis-cli"))
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let ok = wait_until(30, || {
            nodes
                .iter()
                .all(|n| redis_cli(n.port, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        });
        assert!(ok, "the cluster did not become ok");
        RedisCluster { nodes }
    }

    pub fn url(&self) -> String {
        let addrs: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", addrs.join(","))
    }
}

/// One `keygate ratelimit` replica; stopped on drop.
pub struct RateLimitProc {
    pub port: u16,
    pub metrics_port: u16,
    redis: String,
    log: PathBuf,
    child: Option<Child>,
}

impl RateLimitProc {
    pub fn start(redis_url: &str) -> RateLimitProc {
        let port = free_port();
        let dir = repo().join("target/itest");
        std::fs::create_dir_all(&dir).expect("itest dir");
        let mut p = RateLimitProc {
            port,
            metrics_port: free_port(),
            redis: redis_url.to_string(),
            log: dir.join(format!("ratelimit-{port}-{}.log", std::process::id())),
            child: None,
        };
        p.spawn();
        p
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(&self.log).expect("ratelimit log");
        self.child = Some(
            Command::new(super::keygate_bin())
                .args(["ratelimit", "--listen", &format!("127.0.0.1:{}", self.port)])
                .args(["--redis", &self.redis])
                .args([
                    "--metrics-listen",
                    &format!("127.0.0.1:{}", self.metrics_port),
                ])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start keygate ratelimit"),
        );
        let port = self.port;
        assert!(
            wait_until(20, || TcpStream::connect(("127.0.0.1", port)).is_ok()),
            "keygate ratelimit did not listen:\n{}",
            self.log()
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The Prometheus text at `/metrics`.
    pub fn metrics(&self) -> String {
        super::admin_get(self.metrics_port, "/metrics")
            .map(|r| r.body)
            .unwrap_or_default()
    }

    /// A sample's value from `/metrics` (0 if absent).
    pub fn metric(&self, sample: &str) -> u64 {
        self.metrics()
            .lines()
            .find_map(|l| {
                l.strip_prefix(sample)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    }
}

impl Drop for RateLimitProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A gRPC service's health (`grpc.health.v1`, service `""`): 1 SERVING, 2 NOT_SERVING; `None`
/// when it does not answer.
pub fn grpc_health(port: u16) -> Option<i32> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?
        .block_on(async move {
            let channel =
                tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
                    .ok()?
                    .connect()
                    .await
                    .ok()?;
            let mut c = tonic_health::pb::health_client::HealthClient::new(channel);
            c.check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .ok()
            .map(|r| r.into_inner().status)
        })
}
