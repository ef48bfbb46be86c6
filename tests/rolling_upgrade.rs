//! A rollout on PostgreSQL (SPEC §12): the previous release's `keygate serve` and this one on
//! one database at once, as a Kubernetes rolling update runs them: the new one migrates (once,
//! under the advisory lock) while the old one serves; each sees what the other writes; both
//! answer the key set with the same version. Run by `make upgrade-test`, which builds the
//! previous release (KEYGATE_PREVIOUS) and passes its binary in KEYGATE_PREVIOUS_BIN; ignored
//! in `make test` (the old build takes minutes).
mod common;
use common::service::*;
use common::*;
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};

struct Serve {
    port: u16,
    child: Child,
    log: std::path::PathBuf,
}

impl Serve {
    fn start(bin: &std::path::Path, name: &str, database: &str, config: &std::path::Path) -> Serve {
        let port = free_port();
        let log = scratch_dir(&format!("upgrade-{name}")).join("serve.log");
        let child = Command::new(bin)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--database", database])
            .arg("--config")
            .arg(config)
            .env("KEYGATE_ADMIN_TOKEN_SHA256", sha_hex(ADMIN_TOKEN))
            .env_remove("KEYGATE_SYNC_TOKEN_SHA256")
            .env_remove("KEYGATE_DATABASE_URL")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let s = Serve { port, child, log };
        // Both versions answer /healthz once the database is open or (the new one) alive; the
        // key list is the real check.
        let up = wait_until(30, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                && s.admin("GET", "/v1/api-keys", None).0 == 200
        });
        assert!(
            up,
            "{name} did not serve:\n{}",
            std::fs::read_to_string(&s.log).unwrap_or_default()
        );
        s
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn admin(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        call(&self.url(), method, path, body, Some(ADMIN_TOKEN))
    }

    fn etag(&self) -> String {
        let (_, headers, _) = call_raw(&self.url(), "GET", "/keys", None, &[]);
        headers
            .into_iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("etag"))
            .map(|(_, v)| v)
            .unwrap_or_default()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
#[ignore = "needs the previous release's binary: make upgrade-test"]
fn the_previous_release_and_this_one_serve_one_database_side_by_side() {
    let old_bin = std::path::PathBuf::from(
        std::env::var("KEYGATE_PREVIOUS_BIN")
            .expect("KEYGATE_PREVIOUS_BIN (make upgrade-test sets it)"),
    );
    let pg = Postgres::start("upgrade");
    let db = pg.database("keygate_upgrade");
    let dir = scratch_dir("upgrade-config");
    let cfg = dir.join("plugin.json");
    std::fs::write(
        &cfg,
        json!({"prefixes": [{"prefix": "sk_live_", "environment": "LIVE", "role": "writer"}],
               "roles": {"writer": {"methods": ["GET", "POST"]}, "admin": {"methods": ["*"]}},
               "keys": []})
        .to_string(),
    )
    .unwrap();

    // The running version, with data.
    let old = Serve::start(&old_bin, "old", &db, &cfg);
    let (status, made) = old.admin(
        "POST",
        "/v1/api-keys",
        Some(r#"{"prefix":"sk_live_","name":"before"}"#),
    );
    assert_eq!(status, 201, "{made}");
    let before = made["data"]["id"].as_str().unwrap().to_string();

    // The rollout starts the new version beside it.
    let new = Serve::start(&keygate_bin(), "new", &db, &cfg);
    let (status, made) = new.admin(
        "POST",
        "/v1/api-keys",
        Some(r#"{"prefix":"sk_live_","name":"during"}"#),
    );
    assert_eq!(status, 201, "{made}");
    let during = made["data"]["id"].as_str().unwrap().to_string();

    // Each serves what the other wrote; a revocation through the old one shows in the new one.
    for s in [&old, &new] {
        for id in [&before, &during] {
            assert_eq!(
                s.admin("GET", &format!("/v1/api-keys/{id}"), None).0,
                200,
                "{id}"
            );
        }
    }
    assert_eq!(
        old.admin("DELETE", &format!("/v1/api-keys/{during}"), None)
            .0,
        200
    );
    assert_eq!(
        new.admin("GET", &format!("/v1/api-keys/{during}"), None).1["data"]["revoked"],
        true
    );
    // Envoys syncing from either get the same version of the key set.
    assert_eq!(old.etag(), new.etag());
    assert!(!old.etag().is_empty());

    // The old one goes; the new one carries on.
    drop(old);
    assert_eq!(
        new.admin("GET", "/v1/api-keys", None).1["data"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
}
