//! The HTTP server under `keygate serve`'s routes (HTTP/1.1, and HTTP/2 with prior knowledge
//! for gRPC clients: Envoy's access logger, [`crate::otlp`]; a connection says which within the
//! header deadline, and an HTTP/2 one without a request for that long is closed), with the limits a service facing hostile
//! clients needs (axum's `serve` has none of them): a connection limit below the open-files
//! limit (connections over it are closed at once, never queued), a deadline for request
//! headers that also closes idle keep-alive connections, a deadline for bodies (in the routes),
//! and a shutdown that waits for requests in flight at most [`Limits::shutdown_grace`].

use axum::Router;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
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
        let app = app.clone().layer(axum::Extension(Peer(peer)));
        let mut stopping = stopping.clone();
        let grace = limits.shutdown_grace;
        let header_read = limits.header_read;
        connections.spawn(async move {
            let _permit = permit;
            // Which protocol: a client has the header deadline to say (a silent one is closed).
            let Ok(Ok(http2)) = tokio::time::timeout(header_read, is_http2(&stream)).await else {
                return;
            };
            if !http2 {
                let service = TowerToHyperService::new(app);
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_read)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = stopping.changed() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(grace, conn).await;
                    }
                }
                return;
            }
            // HTTP/2 with prior knowledge (a gRPC client: Envoy's access logger). Bounded
            // streams and headers; closed when no request has been open for the header
            // deadline, as an idle HTTP/1.1 keep-alive connection is.
            let activity = Arc::new(Activity::default());
            let counted = activity.clone();
            let app = app.layer(axum::middleware::from_fn(
                move |req: axum::extract::Request, next: axum::middleware::Next| {
                    let open = Activity::begin(counted.clone());
                    async move {
                        let r = next.run(req).await;
                        drop(open);
                        r
                    }
                },
            ));
            let conn = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_concurrent_streams(16)
                .max_header_list_size(16 * 1024)
                .keep_alive_interval(Some(Duration::from_secs(30)))
                .keep_alive_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
            tokio::pin!(conn);
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            // Stopping: requests in flight get the grace; idle: nothing is in flight, so the
            // GOAWAY gets a moment, then the connection is closed.
            let wait = loop {
                tokio::select! {
                    _ = conn.as_mut() => return,
                    _ = stopping.changed() => break grace,
                    _ = tick.tick() => {
                        if activity.idle_for() >= header_read {
                            break Duration::from_secs(1);
                        }
                    }
                }
            };
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(wait, conn).await;
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

/// HTTP/2's connection preface begins with `PRI`, which no HTTP/1.1 request does.
const PREFACE: &[u8] = b"PRI";

/// Whether the client opens with HTTP/2's preface, read without taking it from the stream.
/// Waits for its first bytes (the caller bounds the wait).
async fn is_http2(stream: &tokio::net::TcpStream) -> std::io::Result<bool> {
    let mut buf = [0u8; 3];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if buf[..n] != PREFACE[..n] {
            return Ok(false);
        }
        if n == PREFACE.len() {
            return Ok(true);
        }
        // The first byte or two of `PRI`: the rest is on its way.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Requests open on an HTTP/2 connection, and when the last one ended.
struct Activity {
    open: std::sync::atomic::AtomicUsize,
    since: std::sync::Mutex<tokio::time::Instant>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            open: std::sync::atomic::AtomicUsize::new(0),
            since: std::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }
}

/// One open request; it ends when dropped (also when the client resets the stream).
struct Open(Arc<Activity>);

impl Drop for Open {
    fn drop(&mut self) {
        if let Ok(mut s) = self.0.since.lock() {
            *s = tokio::time::Instant::now();
        }
        self.0
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Activity {
    fn begin(a: Arc<Activity>) -> Open {
        a.open.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Open(a)
    }
    /// How long no request has been open (zero while one is).
    fn idle_for(&self) -> Duration {
        if self.open.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            return Duration::ZERO;
        }
        self.since.lock().map(|s| s.elapsed()).unwrap_or_default()
    }
}
