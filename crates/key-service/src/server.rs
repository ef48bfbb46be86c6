//! The HTTP server under `keygate serve`'s routes (HTTP/1.1, and HTTP/2 with prior knowledge
//! for gRPC clients: Envoy's access logger, [`crate::otlp`]), with the limits a service facing hostile
//! clients needs (axum's `serve` has none of them): a connection limit below the open-files
//! limit (connections over it are closed at once, never queued), a deadline for request
//! headers that also closes idle keep-alive connections, a deadline for bodies (in the routes),
//! and a shutdown that waits for requests in flight at most [`Limits::shutdown_grace`].

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

/// Admin bodies are small; a usage report may list many keys.
pub const ADMIN_BODY_LIMIT: usize = 64 * 1024;
pub const REPORT_BODY_LIMIT: usize = 16 * 1024 * 1024;
/// The longest a body may take to arrive (a slow sender holds a connection, not the service).
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The client's address, on every request (a request extension).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::SocketAddr);

/// How much a client may hold of the service.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open connections at most; more are closed as they arrive.
    pub max_connections: usize,
    /// The time a client has to send a request's headers, and the longest a keep-alive
    /// connection stays open without a new request.
    pub header_read: Duration,
    /// After SIGTERM/SIGINT: how long requests in flight may take before the service exits.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 512,
            header_read: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting, lets requests
/// in flight finish within the grace and closes every connection.
pub async fn serve(
    listener: Arc<TcpListener>,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (stop, stopping) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut refused: u64 = 0;
    let mut last_refusal_log = tokio::time::Instant::now() - Duration::from_secs(60);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            a = listener.accept() => a,
            // Reap finished connections as they end (the set stays as large as what is open).
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors (or a similar pressure): wait instead of spinning.
                eprintln!("keygate serve: accepting a connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            drop(stream);
            refused += 1;
            if last_refusal_log.elapsed() >= Duration::from_secs(10) {
                eprintln!(
                    "keygate serve: {refused} connections closed at once: {} are open already (the limit)",
                    limits.max_connections
                );
                last_refusal_log = tokio::time::Instant::now();
                refused = 0;
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone().layer(axum::Extension(Peer(peer))));
        let mut stopping = stopping.clone();
        let grace = limits.shutdown_grace;
        let header_read = limits.header_read;
        connections.spawn(async move {
            let _permit = permit;
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(header_read);
            // HTTP/2 (a gRPC client's long-lived connection): bounded streams and headers, and
            // pings that find a peer gone quiet.
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_concurrent_streams(64)
                .max_header_list_size(16 * 1024)
                .keep_alive_interval(Some(Duration::from_secs(30)))
                .keep_alive_timeout(Duration::from_secs(10));
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stopping.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(grace, conn).await;
                }
            }
        });
    }
    drop(listener);
    let _ = stop.send(true);
    let drained = tokio::time::timeout(limits.shutdown_grace + Duration::from_secs(1), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        eprintln!("keygate serve: closing connections still open after the shutdown grace");
        connections.abort_all();
    }
    Ok(())
}
