//! TLS from `keygate serve` to PostgreSQL (`sslmode=require|verify-full` in the URL), against
//! a real server with a certificate of a CA made here.
mod common;
use common::service::*;
use common::*;
use std::path::PathBuf;
use std::process::Command;

fn scratch(name: &str) -> PathBuf {
    scratch_dir(&format!("svc-tls-{name}"))
}

fn config(dir: &std::path::Path) -> PathBuf {
    let p = dir.join("plugin.json");
    std::fs::write(
        &p,
        r#"{"key_sources":[{"header":"x-api-key"}],"prefixes":[{"prefix":"tl_live_"}]}"#,
    )
    .unwrap();
    p
}

#[test]
fn the_service_reaches_postgres_over_tls_and_refuses_a_certificate_it_cannot_verify() {
    let pg = Postgres::start_tls("tls");
    let db = pg.database("tls");
    let dir = scratch("tls");
    let cfg = config(&dir);
    let ca = pg.dir().join("ca.pem");
    for mode in [
        "sslmode=require".to_string(),
        format!("sslmode=verify-full&sslrootcert={}", ca.display()),
    ] {
        let s = Service::on(&format!("{db}?{mode}"), &cfg);
        let (st, b) = s.admin("POST", "/v1/api-keys", Some(r#"{"prefix":"tl_live_"}"#));
        assert_eq!(st, 201, "{mode}: {b}");
        // The service's connections are TLS ones.
        let ssl = pg.psql(
            "tls",
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a ON a.pid = s.pid \
             WHERE a.datname = 'tls' AND s.ssl AND a.pid <> pg_backend_pid()",
        );
        assert!(ssl.trim().parse::<u64>().unwrap() >= 1, "{mode}: {ssl}");
    }
    // A certificate another CA signed: the service does not start (and says why).
    let other = pg.dir().join("other-ca.pem");
    let url = format!("{db}?sslmode=verify-full&sslrootcert={}", other.display());
    let mut child = Command::new(common::keygate_bin())
        .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--database", &url])
        .arg("--config")
        .arg(&cfg)
        .env("KEYGATE_ADMIN_TOKEN_SHA256", sha_hex(ADMIN_TOKEN))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let exited = wait_until(30, || matches!(child.try_wait(), Ok(Some(_))));
    if !exited {
        let _ = child.kill();
    }
    assert!(
        exited,
        "the service started with a certificate it cannot verify"
    );
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.to_lowercase().contains("certificate"), "{err}");
}
