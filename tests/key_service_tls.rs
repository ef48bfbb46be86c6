//! TLS from `keygate serve` to PostgreSQL (`sslmode=require|verify-full` in the URL), against
//! a real server with a certificate of a CA made here.
mod common;
use common::service::*;
use common::*;
use std::path::PathBuf;

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
    // A certificate another CA signed: the service never opens the database; it stays up and
    // unready, saying why on every try (SPEC §12: no crash loop, a log line that names it).
    let other = pg.dir().join("other-ca.pem");
    let url = format!("{db}?sslmode=verify-full&sslrootcert={}", other.display());
    let s = Service::on_starting(&url, &cfg);
    let said = wait_until(30, || s.log().to_lowercase().contains("certificate"));
    assert!(said, "no word of the certificate:\n{}", s.log());
    assert!(s
        .log()
        .contains("keygate serve: not ready: cannot open the database:"));
    assert_eq!(call(&s.url(), "GET", "/readyz", None, None).0, 503);
    assert_eq!(call(&s.url(), "GET", "/healthz", None, None).0, 200);
}
