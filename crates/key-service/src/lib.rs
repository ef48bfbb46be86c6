//! The key service, `keygate serve` (SPEC §7, §8): where keys are created (shown once), listed
//! with their last use, revoked and rolled; the feed `key_sync` reads; the endpoint usage
//! reports go to. Native only.
//!
//! Layered one way (each file imports only files below it; `tests/layering.rs` holds it): the
//! HTTP adapters [`api`], [`pages`], [`portal`] and [`openapi`] → the operations, [`ops`] → the
//! context, [`state`] → reading requests: [`request`], [`input`], [`report`], [`auth`] →
//! answers and records: [`answer`], [`usage`], [`views`], [`model`], [`credits`] → [`store`]
//! (SQLite or PostgreSQL) → [`server`] (HTTP/1.1 with limits).

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod answer;
pub mod api;
pub mod auth;
pub mod credits;
pub mod ingest;
pub mod input;
pub mod json;
pub mod leaks;
pub mod metrics;
pub mod mint;
pub mod model;
pub mod openapi;
pub mod ops;
pub mod otlp;
pub mod pages;
pub mod partners;
pub mod portal;
pub mod report;
pub mod request;
pub mod request_log;
pub mod server;
pub mod signing_keys;
pub mod state;
pub mod store;
pub mod usage;
pub mod views;
pub mod webhooks;

use auth::Auth;
use state::now;
use state::App;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use store::{OpenError, SqlStore, Store};
use usage::Retention;

/// How `keygate serve` was started.
pub struct Options {
    pub listen: SocketAddr,
    /// A second listener, for Envoy only, where keygate's identity headers are trusted.
    pub gateway_listen: Option<SocketAddr>,
    pub database: String,
    pub tenant_admin_role: String,
    pub admin_sha256: [u8; 32],
    pub sync_sha256: Option<[u8; 32]>,
    /// Connection limit and deadlines of the HTTP server.
    pub limits: server::Limits,
    /// How long usage is kept by the hour, then by the day.
    pub usage_retention: usage::Retention,
    /// Browser session cookies without `Secure` (for plain-HTTP localhost).
    pub insecure_cookies: bool,
    /// Where portal links point (`https://keys.example.com`); else the host a request named.
    pub public_url: Option<String>,
    /// Days the request log is kept (`0`: forever).
    pub request_log_days: u32,
    /// Where GitHub's secret-scanning keys are fetched (SPEC §15; `None`: `/v1/leaks/github`
    /// is off).
    pub github_keys_url: Option<String>,
    /// The shortest time between two fetches of a partner's key list.
    pub leak_keys_refetch: Duration,
    /// Where GitLab's are (`None`: `/v1/leaks/gitlab` is off).
    pub gitlab_keys_url: Option<String>,
    /// The SHA-256 of the token GitLab's revocation API calls carry (`None`: off).
    pub gitlab_revocation_sha256: Option<[u8; 32]>,
    /// Where key events are sent (`None`: no webhooks).
    pub webhook: Option<webhooks::Webhook>,
}

/// What ends a service: a future the program makes (the CLI's resolves on SIGINT/SIGTERM).
pub type Shutdown = fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Runs the service until `shutdown` resolves. `gate` is the plugin configuration it validates
/// with.
pub fn serve(
    options: Options,
    gate: keygate::model::Gate,
    shutdown: Shutdown,
) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        let (main, gateway) = listen(&options).await?;
        let Some(store) = open_store(&options, &main, gateway.as_ref(), shutdown).await? else {
            return Ok(());
        };
        let auth = Auth {
            admin_sha256: options.admin_sha256,
            sync_sha256: options.sync_sha256,
            tenant_header: gate.upstream_headers.tenant.clone(),
            role_header: gate.upstream_headers.role.clone(),
            key_id_header: gate.upstream_headers.key_id.clone(),
            tenant_admin_role: options.tenant_admin_role.clone(),
            gitlab_revocation_sha256: options.gitlab_revocation_sha256,
        };
        let store = store.with_webhooks(options.webhook.is_some());
        let (request_log, writer) = ingest::request_log();
        let app = Arc::new(App {
            store,
            gate,
            auth,
            full_feed: std::sync::Mutex::new(None),
            full_feed_binary: std::sync::Mutex::new(None),
            usage_retention: options.usage_retention,
            insecure_cookies: options.insecure_cookies,
            public_url: options.public_url.clone(),
            request_log,
            github_keys: options
                .github_keys_url
                .clone()
                .map(|u| signing_keys::KeySource::new(u, options.leak_keys_refetch)),
            gitlab_keys: options
                .gitlab_keys_url
                .clone()
                .map(|u| signing_keys::KeySource::new(u, options.leak_keys_refetch)),
            webhooks: options.webhook.is_some(),
        });
        run(app, writer, main, gateway, &options, shutdown).await
    })
}

/// The listeners, bound before anything else (a port in use is an error at once).
async fn listen(options: &Options) -> Result<(Listener, Option<Listener>), String> {
    let bind = |addr: SocketAddr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map(Arc::new)
            .map_err(|e| format!("cannot listen on {addr}: {e}"))
    };
    let main = bind(options.listen).await?;
    let gateway = match options.gateway_listen {
        Some(a) => Some(bind(a).await?),
        None => None,
    };
    eprintln!(
        "keygate serve: listening on {}{}",
        options.listen,
        options
            .gateway_listen
            .map(|g| format!(" (gateway listener for Envoy: {g})"))
            .unwrap_or_default()
    );
    Ok((main, gateway))
}

type Listener = Arc<tokio::net::TcpListener>;

/// The longest wait between two tries to open the database.
const RETRY_AT_MOST: Duration = Duration::from_secs(10);

/// Opens the database, trying again (after 1 s, 2 s, … at most [`RETRY_AT_MOST`]) while it
/// cannot, each failure logged with its cause; a URL of the wrong form is an error at once.
/// Meanwhile the listeners answer `/healthz` and `503` for everything else ([`api::starting`]):
/// an orchestrator sees the process alive and not ready. `None`: shut down while waiting.
async fn open_store(
    options: &Options,
    main: &Listener,
    gateway: Option<&Listener>,
    shutdown: Shutdown,
) -> Result<Option<SqlStore>, String> {
    let (opened, wait) = tokio::sync::watch::channel(false);
    let answering: Vec<_> = std::iter::once(main)
        .chain(gateway)
        .map(|l| {
            let mut wait = wait.clone();
            let until_open = async move {
                let _ = wait.wait_for(|open| *open).await;
            };
            tokio::spawn(server::serve(
                l.clone(),
                api::starting(),
                options.limits,
                until_open,
            ))
        })
        .collect();
    let mut pause = Duration::from_secs(1);
    let mut attempt = 1u32;
    let store = loop {
        match SqlStore::open(&options.database).await {
            Ok(store) => break Ok(Some(store)),
            Err(OpenError::Invalid(e)) => break Err(e),
            Err(OpenError::Unreachable(e)) => {
                eprintln!(
                    "keygate serve: not ready: {e} (attempt {attempt}; trying again in {} s)",
                    pause.as_secs()
                );
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = shutdown() => break Ok(None),
                }
                pause = (pause * 2).min(RETRY_AT_MOST);
                attempt += 1;
            }
        }
    };
    let _ = opened.send(true);
    for a in answering {
        let _ = a.await;
    }
    store
}

async fn run<S: Store>(
    app: Arc<App<S>>,
    writer: ingest::Writer,
    main: Listener,
    gateway: Option<Listener>,
    options: &Options,
    shutdown: Shutdown,
) -> Result<(), String> {
    let limits = options.limits;
    let retention = {
        let app = app.clone();
        let retention = options.usage_retention;
        let days = options.request_log_days;
        tokio::spawn(async move { prune_hourly(&app.store, retention, days).await })
    };
    let writing = {
        let app = app.clone();
        tokio::spawn(async move { ingest::write_batches(&app.store, writer).await })
    };
    let delivering = options.webhook.clone().map(|webhook| {
        let app = app.clone();
        tokio::spawn(async move { webhooks::deliver(&app.store, webhook).await })
    });
    let main = server::serve(main, api::router(app.clone(), false), limits, shutdown());
    let served = match gateway {
        Some(g) => {
            let g = server::serve(g, api::router(app, true), limits, shutdown());
            tokio::try_join!(main, g).map(|_| ())
        }
        None => main.await,
    };
    retention.abort();
    writing.abort();
    if let Some(d) = delivering {
        d.abort();
    }
    served
}

/// Prunes usage and the request log past their retention now and then every hour, until the
/// service stops. A failure is logged and tried again at the next hour.
async fn prune_hourly<S: Store>(store: &S, retention: Retention, request_log_days: u32) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        every.tick().await;
        {
            // Today and the `days` before it are kept (as usage's retention counts days);
            // `0`: every day.
            let today = now().div_euclid(86_400);
            let before_day = if request_log_days == 0 {
                i64::MIN / 2
            } else {
                today - i64::from(request_log_days)
            };
            match store.prune_requests(before_day, today).await {
                Ok(0) => {}
                Ok(n) => eprintln!("keygate serve: request log retention: {n} dropped (days on PostgreSQL, rows on SQLite)"),
                Err(e) => eprintln!(
                    "keygate serve: request log retention failed (tried again in an hour): {e:?}"
                ),
            }
        }
        // Finished webhook deliveries are kept 30 days (the delivery log operators read).
        if let Err(e) = store.prune_deliveries(now() - 30 * 86_400).await {
            eprintln!(
                "keygate serve: webhook log retention failed (tried again in an hour): {e:?}"
            );
        }
        let (hours_before, days_before) = retention.horizons(now());
        match store.prune_usage(hours_before, days_before).await {
            Ok(r) if r.hourly_rows_deleted + r.daily_rows_deleted > 0 => eprintln!(
                "keygate serve: usage retention: {} hourly and {} daily rows deleted",
                r.hourly_rows_deleted, r.daily_rows_deleted
            ),
            Ok(_) => {}
            Err(e) => {
                eprintln!("keygate serve: usage retention failed (tried again in an hour): {e:?}")
            }
        }
    }
}
