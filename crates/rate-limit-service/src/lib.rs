//! The rate-limit service, `keygate ratelimit` (SPEC §10): Envoy's rate limit service v3 over
//! gRPC, every count in Redis, so one limit holds across a fleet of Envoys. Stateless: run any
//! number of replicas behind one Envoy cluster. Native only.
//!
//! The flow: [`grpc`] (the tonic service) → [`plan`] (a call's counters, checked) → [`store`]
//! (one atomic Redis script) → [`plan::respond`]; [`metrics`] counts; gRPC health follows Redis.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod grpc;
pub mod metrics;
pub mod plan;
pub mod proto;
pub mod store;

use grpc::{RateLimitServer, RateLimiter};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use store::RedisStore;
use tonic_health::ServingStatus;

/// How `keygate ratelimit` was started.
pub struct Options {
    pub listen: SocketAddr,
    pub redis: String,
    pub metrics_listen: Option<SocketAddr>,
}

/// What ends the service: a future the program makes (the CLI's resolves on SIGINT/SIGTERM).
pub type Shutdown = fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Runs the service until `shutdown` resolves.
pub fn run(options: Options, shutdown: Shutdown) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(serve(options, shutdown))
}

async fn serve(options: Options, shutdown: Shutdown) -> Result<(), String> {
    let limiter = Arc::new(RateLimiter::new(RedisStore::new(&options.redis)?));
    let (reporter, health) = tonic_health::server::health_reporter();
    // Health follows Redis: NOT_SERVING while it does not answer a PING, so Envoy's gRPC
    // health checks (and any load balancer) send calls to replicas that can count.
    let pinger = limiter.clone();
    tokio::spawn(async move {
        let mut last = None;
        loop {
            let (status, why) = match pinger.store.ping().await {
                Ok(()) => (ServingStatus::Serving, None),
                Err(e) => (ServingStatus::NotServing, Some(e.0)),
            };
            if last != Some(status) {
                // Said once per change, with the cause: an orchestrator's log shows why a
                // replica is not ready (its gRPC health, which readiness probes read).
                match why {
                    Some(why) => {
                        eprintln!("keygate ratelimit: not ready: Redis does not answer: {why}")
                    }
                    None => eprintln!("keygate ratelimit: ready: Redis answers"),
                }
                reporter.set_service_status("", status).await;
                reporter
                    .set_service_status(grpc::SERVICE_NAME, status)
                    .await;
                last = Some(status);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let incoming = tonic::transport::server::TcpIncoming::bind(options.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", options.listen))?
        .with_nodelay(Some(true));
    if let Some(addr) = options.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let m = limiter.clone();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let m = m.clone();
                async move {
                    (
                        [(
                            "content-type",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.metrics.render(),
                    )
                }
            }),
        );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown())
                .await;
        });
    }
    eprintln!(
        "keygate ratelimit: listening on {} (gRPC){}",
        options.listen,
        options
            .metrics_listen
            .map(|m| format!(", metrics on http://{m}/metrics"))
            .unwrap_or_default()
    );
    tonic::transport::Server::builder()
        .add_service(health)
        .add_service(RateLimitServer(limiter))
        .serve_with_incoming_shutdown(incoming, shutdown())
        .await
        .map_err(|e| format!("serving failed: {e}"))
}
