//! The services end on SIGINT or SIGTERM (a container runtime's stop): this is what the CLI hands
//! `keygate serve` and `keygate ratelimit` as their shutdown.

use std::future::Future;
use std::pin::Pin;

/// Resolves on the first SIGINT or SIGTERM (needs a running tokio runtime).
pub fn shutdown() -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async {
        let ctrl_c = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {},
            _ = term => {},
        }
    })
}
