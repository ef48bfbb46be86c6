//! `keygate ratelimit` on its own (SPEC §10), called over gRPC as any client would: answers,
//! all-or-nothing counting, bad input (a gRPC error, never a panic or a count), Redis away
//! (`UNAVAILABLE` and health `NOT_SERVING`), and back.
mod common;
use common::fleet::*;
use common::wait_until;
use keygate_rate_limit_service::proto::*;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::Code;

const METHOD: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// One call with any message type as the request (a malformed one included).
fn call<M: prost::Message + Send + Sync + 'static>(
    port: u16,
    req: M,
) -> Result<RateLimitResponse, tonic::Status> {
    call_within(port, req, None)
}

/// [`call`] with a `grpc-timeout`, as Envoy sends the filter's `timeout_ms`.
fn call_within<M: prost::Message + Send + Sync + 'static>(
    port: u16,
    req: M,
    timeout: Option<std::time::Duration>,
) -> Result<RateLimitResponse, tonic::Status> {
    runtime().block_on(async move {
        let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.unwrap();
        let mut request = tonic::Request::new(req);
        if let Some(t) = timeout {
            request.set_timeout(t);
        }
        grpc.unary(
            request,
            PathAndQuery::from_static(METHOD),
            tonic_prost::ProstCodec::<M, RateLimitResponse>::default(),
        )
        .await
        .map(|r| r.into_inner())
    })
}

const SERVING: i32 = 1;
const NOT_SERVING: i32 = 2;

fn desc(id: &str, per: &str, requests: u32, unit: i32) -> RateLimitDescriptor {
    RateLimitDescriptor::keygate(id, per, requests, unit)
}

fn req(descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
    RateLimitRequest {
        domain: "keygate".into(),
        descriptors,
        hits_addend: 0,
    }
}

/// A message whose field 2 is a number where descriptors are messages: not decodable.
#[derive(Clone, PartialEq, prost::Message)]
struct Malformed {
    #[prost(uint64, tag = "2")]
    descriptors: u64,
}

/// Field 2 as bytes that are no descriptor (a truncated varint inside).
#[derive(Clone, PartialEq, prost::Message)]
struct Garbage {
    #[prost(bytes = "vec", tag = "2")]
    descriptors: Vec<u8>,
}

#[test]
fn counts_all_windows_or_none_and_reports_each() {
    let redis = Redis::start("rls-count");
    let svc = RateLimitProc::start(&redis.url());
    assert!(wait_until(20, || grpc_health(svc.port) == Some(SERVING)));
    // A minute of 100 and a day of 2: the day binds; the refused call consumes no minute.
    let two = || req(vec![desc("k", "minute", 100, 2), desc("k", "day", 2, 4)]);
    for left in [1, 0] {
        let r = call(svc.port, two()).unwrap();
        assert_eq!(r.overall_code, CODE_OK);
        assert_eq!(r.statuses.len(), 2);
        assert_eq!(r.statuses[1].limit_remaining, left);
        let d = r.statuses[1].duration_until_reset.clone().unwrap();
        assert!(d.seconds < 86_400 && d.seconds >= 0 && (0..1_000_000_000).contains(&d.nanos));
        assert_eq!(
            r.statuses[1].current_limit,
            Some(RateLimit {
                name: String::new(),
                requests_per_unit: 2,
                unit: 4
            })
        );
    }
    let r = call(svc.port, two()).unwrap();
    assert_eq!(r.overall_code, CODE_OVER_LIMIT);
    assert_eq!(
        (r.statuses[0].code, r.statuses[0].limit_remaining),
        (CODE_OK, 98),
        "the minute was not consumed"
    );
    assert_eq!(
        (r.statuses[1].code, r.statuses[1].limit_remaining),
        (CODE_OVER_LIMIT, 0)
    );
    // hits_addend counts several at once; a descriptor's own 0 only checks.
    let mut five = req(vec![desc("h", "hour", 10, 3)]);
    five.hits_addend = 5;
    assert_eq!(
        call(svc.port, five.clone()).unwrap().statuses[0].limit_remaining,
        5
    );
    assert_eq!(
        call(svc.port, five.clone()).unwrap().statuses[0].limit_remaining,
        0
    );
    assert_eq!(call(svc.port, five).unwrap().overall_code, CODE_OVER_LIMIT);
    let mut check = req(vec![desc("c", "hour", 10, 3)]);
    check.descriptors[0].hits_addend = Some(UInt64Value { value: 0 });
    for _ in 0..3 {
        assert_eq!(
            call(svc.port, check.clone()).unwrap().statuses[0].limit_remaining,
            10
        );
    }
    assert!(svc.metric("keygate_ratelimit_calls_total{code=\"ok\"}") >= 7);
    assert_eq!(
        svc.metric("keygate_ratelimit_calls_total{code=\"over_limit\"}"),
        2
    );
}

/// A balance of credits (SPEC §14): `[tenant, credits, until]`, unit UNKNOWN, its cost as the
/// descriptor's hits_addend; counted with the windows all or nothing; a free request passes a
/// balance spent beyond a lowered grant; a balance whose refill this Redis's clock has passed
/// already (a filter's clock behind) is kept, not deleted as soon as written.
#[test]
fn a_balance_is_spent_with_the_windows_and_outlives_a_late_clock() {
    let redis = Redis::start("rls-balance");
    let svc = RateLimitProc::start(&redis.url());
    assert!(wait_until(20, || grpc_health(svc.port) == Some(SERVING)));
    let entry = |key: &str, value: &str| Entry {
        key: key.into(),
        value: value.into(),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let balance = |grant: u32, cost: u64, until: u64| RateLimitDescriptor {
        entries: vec![
            entry("tenant", "org"),
            entry("credits", "0.0"),
            entry("until", &until.to_string()),
        ],
        limit: Some(RateLimitOverride {
            requests_per_unit: grant,
            unit: 0,
        }),
        hits_addend: Some(UInt64Value { value: cost }),
    };
    let window = || {
        let mut d = desc("k", "hour", 100, 3);
        d.entries.insert(0, entry("tenant", "org"));
        d
    };
    // Until 10 s ago: still counted, and still there on the next call.
    let past = now - 10;
    for left in [6, 2] {
        let r = call(svc.port, req(vec![window(), balance(10, 4, past)])).unwrap();
        assert_eq!(r.overall_code, CODE_OK);
        assert_eq!(r.statuses[1].limit_remaining, left);
    }
    // 3 more do not fit: nothing counted, the window included.
    let r = call(svc.port, req(vec![window(), balance(10, 3, past)])).unwrap();
    assert_eq!(r.overall_code, CODE_OVER_LIMIT);
    assert_eq!(
        (
            r.statuses[0].code,
            r.statuses[0].limit_remaining,
            r.statuses[1].code
        ),
        (CODE_OK, 98, CODE_OVER_LIMIT)
    );
    // The grant lowered below what was spent: a free request passes, a paid one does not.
    let r = call(svc.port, req(vec![window(), balance(5, 0, past)])).unwrap();
    assert_eq!(
        (r.overall_code, r.statuses[1].limit_remaining),
        (CODE_OK, 0)
    );
    assert_eq!(
        call(svc.port, req(vec![balance(5, 1, past)]))
            .unwrap()
            .overall_code,
        CODE_OVER_LIMIT
    );
    // A balance without its `until` is refused, never counted as a window.
    let mut bad = balance(5, 1, 0);
    bad.entries.pop();
    assert_eq!(
        call(svc.port, req(vec![bad])).unwrap_err().code(),
        Code::InvalidArgument
    );
}

#[test]
fn bad_input_is_a_grpc_error_never_a_count() {
    let redis = Redis::start("rls-bad");
    let svc = RateLimitProc::start(&redis.url());
    let invalid = |r: RateLimitRequest, why: &str| {
        let e = call(svc.port, r).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(why), "{:?} lacks {why}", e.message());
    };
    let mut no_limit = desc("k", "minute", 1, 2);
    no_limit.limit = None;
    invalid(req(vec![no_limit]), "no limit");
    invalid(req(vec![desc("k", "week", 1, 7)]), "unit 7");
    invalid(req(vec![desc("k", "month", 1, 5)]), "unit 5");
    let mut huge = req(vec![desc("k", "minute", 10, 2)]);
    huge.hits_addend = u32::MAX;
    invalid(huge, "hits_addend");
    let mut huge = req(vec![desc("k", "minute", 10, 2)]);
    huge.descriptors[0].hits_addend = Some(UInt64Value { value: u64::MAX });
    invalid(huge, "hits_addend");
    invalid(
        req(vec![desc("k", "minute", 1, 2); 1000]),
        "descriptors per request",
    );
    invalid(req(vec![]), "descriptors per request");
    invalid(
        req(vec![desc("a", "minute", 1, 2), desc("b", "minute", 1, 2)]),
        "same entry",
    );
    let mut empty = desc("k", "minute", 1, 2);
    empty.entries[1].value.clear();
    invalid(req(vec![empty]), "1-256 bytes");
    // Thousands of descriptors: over the message size the service reads.
    let e = call(svc.port, req(vec![desc("k", "minute", 1, 2); 5000])).unwrap_err();
    assert_ne!(e.code(), Code::Ok);
    // Not a RateLimitRequest at all.
    let e = call(svc.port, Malformed { descriptors: 7 }).unwrap_err();
    assert_eq!(e.code(), Code::Internal, "{e:?}");
    let e = call(
        svc.port,
        Garbage {
            descriptors: vec![0x0a, 0xff],
        },
    )
    .unwrap_err();
    assert_eq!(e.code(), Code::Internal, "{e:?}");
    // Nothing was counted, and the service still answers.
    assert_eq!(redis_cli(redis.port, &["DBSIZE"]), "0");
    let r = call(svc.port, req(vec![desc("k", "minute", 3, 2)])).unwrap();
    assert_eq!(
        (r.overall_code, r.statuses[0].limit_remaining),
        (CODE_OK, 2)
    );
    assert!(svc.metric("keygate_ratelimit_calls_total{code=\"invalid_argument\"}") >= 9);
}

#[test]
fn redis_away_is_unavailable_and_not_serving_until_it_returns() {
    let mut redis = Redis::start("rls-away");
    let svc = RateLimitProc::start(&redis.url());
    let one = || req(vec![desc("k", "minute", 10, 2)]);
    assert_eq!(call(svc.port, one()).unwrap().overall_code, CODE_OK);
    redis.stop();
    let e = call(svc.port, one()).unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(wait_until(20, || grpc_health(svc.port) == Some(NOT_SERVING)));
    assert!(svc.metric("keygate_ratelimit_redis_errors_total") >= 1);
    redis.restart();
    assert!(wait_until(20, || grpc_health(svc.port) == Some(SERVING)));
    assert!(wait_until(20, || call(svc.port, one()).is_ok()));
    // Redis came back empty: counting starts again.
    assert!(call(svc.port, one()).unwrap().statuses[0].limit_remaining >= 8);
}

#[test]
fn a_service_starts_without_redis_and_serves_once_it_is_there() {
    let port = common::free_port();
    let svc = RateLimitProc::start(&format!("redis://127.0.0.1:{port}"));
    let e = call(svc.port, req(vec![desc("k", "minute", 10, 2)])).unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(wait_until(20, || grpc_health(svc.port) == Some(NOT_SERVING)));
    // The log says why it is not ready (once), and when it is.
    assert!(
        wait_until(5, || svc
            .log()
            .contains("keygate ratelimit: not ready: Redis does not answer: ")),
        "{}",
        svc.log()
    );
    let _redis = Redis::start_at("rls-late", port);
    assert!(wait_until(20, || call(
        svc.port,
        req(vec![desc("k", "minute", 10, 2)])
    )
    .is_ok()));
    assert!(wait_until(20, || grpc_health(svc.port) == Some(SERVING)));
    assert!(
        wait_until(5, || svc
            .log()
            .contains("keygate ratelimit: ready: Redis answers")),
        "{}",
        svc.log()
    );
}

#[test]
fn a_call_redis_runs_after_its_deadline_counts_nothing() {
    let redis = Redis::start("rls-deadline");
    let svc = RateLimitProc::start(&redis.url());
    let one = || req(vec![desc("d", "hour", 10, 3)]);
    assert_eq!(
        call(svc.port, one()).unwrap().statuses[0].limit_remaining,
        9
    );
    // Redis holds writes (scripts that write included) for 400 ms; the caller waits 100 ms.
    assert_eq!(
        redis_cli(redis.port, &["CLIENT", "PAUSE", "400", "WRITE"]),
        "OK"
    );
    let e = call_within(svc.port, one(), Some(std::time::Duration::from_millis(100))).unwrap_err();
    assert_ne!(e.code(), Code::Ok);
    // Once Redis runs it, the script finds the deadline passed: the next call sees 9 used … 8.
    let r = call(svc.port, one()).unwrap();
    assert_eq!(
        r.statuses[0].limit_remaining, 8,
        "the abandoned call was not counted"
    );
}
