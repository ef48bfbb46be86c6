//! The gRPC face of `keygate ratelimit`: `envoy.service.ratelimit.v3.RateLimitService/
//! ShouldRateLimit` on tonic, written as tonic's code generator would write it (the service has
//! one unary method; no protoc, no build script).

use super::metrics::{Code, Metrics};
use super::plan::{budget, grpc_timeout, plan, respond};
use super::proto::{RateLimitRequest, RateLimitResponse};
use super::store::RedisStore;
use super::store::CALL_TIMEOUT;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tonic::codegen::{http, Body, BoxFuture, Context, Poll, Service, StdError};
use tonic::server::{NamedService, UnaryService};
use tonic::Status;

/// The largest request message the service reads (keygate's are ~100 bytes).
pub const MAX_MESSAGE: usize = 64 * 1024;

/// What answers calls: Redis and the metrics.
pub struct RateLimiter {
    pub store: RedisStore,
    pub metrics: Metrics,
    /// Unix second of the last Redis error logged, and errors not logged since.
    last_logged: AtomicU64,
    unlogged: AtomicU64,
}

impl RateLimiter {
    pub fn new(store: RedisStore) -> RateLimiter {
        RateLimiter {
            store,
            metrics: Metrics::default(),
            last_logged: AtomicU64::new(0),
            unlogged: AtomicU64::new(0),
        }
    }

    /// Checks and counts one call; any failure is a gRPC error, never a count or `OK`.
    /// `timeout`: what the caller's `grpc-timeout` leaves (Envoy sends the filter's
    /// `timeout_ms`); a call Redis cannot count in time is counted nowhere.
    pub async fn should_rate_limit(
        &self,
        req: &RateLimitRequest,
        timeout: Option<std::time::Duration>,
    ) -> Result<RateLimitResponse, Status> {
        let started = Instant::now();
        let elapsed = || started.elapsed().as_secs_f64();
        let counters = match plan(req) {
            Ok(c) => c,
            Err(why) => {
                self.metrics.call(Code::invalid_argument, elapsed());
                return Err(Status::invalid_argument(why));
            }
        };
        match self
            .store
            .count(&counters, budget(timeout, CALL_TIMEOUT))
            .await
        {
            Ok(counted) if counted.expired => {
                self.metrics.call(Code::deadline_exceeded, elapsed());
                Err(Status::deadline_exceeded(
                    "the call's deadline passed before Redis counted it: not counted",
                ))
            }
            Ok(counted) => {
                let code = if counted.admitted {
                    Code::ok
                } else {
                    Code::over_limit
                };
                self.metrics.call(code, elapsed());
                Ok(respond(&counters, &counted))
            }
            Err(e) => {
                self.metrics.call(Code::unavailable, elapsed());
                self.log_redis_error(&e.0);
                Err(Status::unavailable("the rate-limit store is unavailable"))
            }
        }
    }

    /// At most one line per 10 s, with the count of those not logged.
    fn log_redis_error(&self, e: &str) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.last_logged.load(Ordering::Relaxed);
        if now >= last + 10
            && self
                .last_logged
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let more = self.unlogged.swap(0, Ordering::Relaxed);
            eprintln!("keygate ratelimit: Redis failed, answering UNAVAILABLE: {e} ({more} more since the last line)");
        } else {
            self.unlogged.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The tonic service: routes `ShouldRateLimit`, answers `UNIMPLEMENTED` to anything else.
#[derive(Clone)]
pub struct RateLimitServer(pub Arc<RateLimiter>);

pub const SERVICE_NAME: &str = "envoy.service.ratelimit.v3.RateLimitService";

impl NamedService for RateLimitServer {
    const NAME: &'static str = SERVICE_NAME;
}

struct ShouldRateLimit(Arc<RateLimiter>);

impl UnaryService<RateLimitRequest> for ShouldRateLimit {
    type Response = RateLimitResponse;
    type Future = BoxFuture<tonic::Response<RateLimitResponse>, Status>;

    fn call(&mut self, request: tonic::Request<RateLimitRequest>) -> Self::Future {
        let inner = Arc::clone(&self.0);
        let timeout = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(grpc_timeout);
        Box::pin(async move {
            inner
                .should_rate_limit(request.get_ref(), timeout)
                .await
                .map(tonic::Response::new)
        })
    }
}

impl<B> Service<http::Request<B>> for RateLimitServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() == "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit" {
            let method = ShouldRateLimit(Arc::clone(&self.0));
            return Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default())
                    .apply_max_message_size_config(Some(MAX_MESSAGE), None);
                Ok(grpc.unary(method, req).await)
            });
        }
        Box::pin(async move {
            let mut response = http::Response::new(tonic::body::Body::default());
            let headers = response.headers_mut();
            headers.insert(
                Status::GRPC_STATUS,
                (tonic::Code::Unimplemented as i32).into(),
            );
            headers.insert(
                http::header::CONTENT_TYPE,
                tonic::metadata::GRPC_CONTENT_TYPE,
            );
            Ok(response)
        })
    }
}
