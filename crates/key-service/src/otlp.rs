//! The request log's way in (SPEC §13): OpenTelemetry's `LogsService/Export` (OTLP/gRPC), as
//! Envoy's `envoy.access_loggers.open_telemetry` sends it, served on the service's listeners
//! over HTTP/2. The sync token is required when the service has one (as for `/keys` and
//! `/usage`); gzip-compressed exports are taken; every record of an export is checked ([`crate::request_log::check`]) and one bad
//! record refuses the export (`INVALID_ARGUMENT`, nothing stored); the connection stays up.
//!
//! The messages are prost derives written out by hand (no protoc): the fields of
//! `opentelemetry/proto/collector/logs/v1/logs_service.proto`, `logs/v1/logs.proto` and
//! `common/v1/common.proto` that a record needs, with their field numbers; prost skips the rest.
//! Strings are read as bytes, so that a value that is not UTF-8 (a client's header) is a
//! value to judge, not a message that cannot be read.

use crate::ingest::NotStored;
use crate::metrics::{metrics, Logged};
use crate::request_log::{check, AttributeValue, Attributes, Fate, RequestRecord};
use crate::state::{App, Ctx};
use crate::store::Store;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use prost::Message;
use std::sync::Arc;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::BoxFuture;
use tonic::server::{Grpc, UnaryService};
use tonic::Status;

/// The path Envoy's OpenTelemetry access logger posts to.
pub const EXPORT_PATH: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";

/// The largest export taken, decompressed (Envoy sends one per flush, 16 KiB by default; an
/// OpenTelemetry Collector's batch of 2,000 records is about 600 KiB).
pub const MAX_MESSAGE: usize = 2 * 1024 * 1024;

/// Exports read and decoded at once, at most (each holds up to [`MAX_MESSAGE`] and its records):
/// the rest wait, within the body deadline.
static DECODING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(16);

#[derive(Clone, PartialEq, prost::Message)]
pub struct ExportLogsServiceRequest {
    #[prost(message, repeated, tag = "1")]
    pub resource_logs: Vec<ResourceLogs>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ResourceLogs {
    #[prost(message, repeated, tag = "2")]
    pub scope_logs: Vec<ScopeLogs>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ScopeLogs {
    #[prost(message, repeated, tag = "2")]
    pub log_records: Vec<LogRecord>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LogRecord {
    #[prost(fixed64, tag = "1")]
    pub time_unix_nano: u64,
    #[prost(message, repeated, tag = "6")]
    pub attributes: Vec<KeyValue>,
    #[prost(fixed64, tag = "11")]
    pub observed_time_unix_nano: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValue {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(message, optional, tag = "2")]
    pub value: Option<AnyValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct AnyValue {
    #[prost(oneof = "Value", tags = "1, 2, 3, 4, 5, 6, 7")]
    pub value: Option<Value>,
}

/// `AnyValue.value`: lists and maps are kept as their bytes (no field of a record is one).
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Value {
    #[prost(bytes = "vec", tag = "1")]
    String(Vec<u8>),
    #[prost(bool, tag = "2")]
    Bool(bool),
    #[prost(int64, tag = "3")]
    Int(i64),
    #[prost(double, tag = "4")]
    Double(f64),
    #[prost(bytes = "vec", tag = "5")]
    Array(Vec<u8>),
    #[prost(bytes = "vec", tag = "6")]
    Map(Vec<u8>),
    #[prost(bytes = "vec", tag = "7")]
    Bytes(Vec<u8>),
}

/// The answer: empty when every record was taken.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExportLogsServiceResponse {
    #[prost(message, optional, tag = "1")]
    pub partial_success: Option<ExportLogsPartialSuccess>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ExportLogsPartialSuccess {
    #[prost(int64, tag = "1")]
    pub rejected_log_records: i64,
    #[prost(string, tag = "2")]
    pub error_message: String,
}

/// An export's records, checked; `Err` names the first bad one.
pub struct Checked {
    pub kept: Vec<RequestRecord>,
    /// Records keygate did not judge (skipped).
    pub not_judged: u64,
    /// Records of requests that started more than a day ago (skipped).
    pub stale: u64,
}

pub fn records_of(export: &ExportLogsServiceRequest, now_ms: i64) -> Result<Checked, String> {
    let mut out = Checked {
        kept: Vec::new(),
        not_judged: 0,
        stale: 0,
    };
    let all = export
        .resource_logs
        .iter()
        .flat_map(|r| &r.scope_logs)
        .flat_map(|s| &s.log_records);
    for (i, r) in all.enumerate() {
        let nanos = if r.time_unix_nano != 0 {
            r.time_unix_nano
        } else {
            r.observed_time_unix_nano
        };
        let values = r
            .attributes
            .iter()
            .filter_map(|kv| {
                let key = std::str::from_utf8(&kv.key).ok()?;
                let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    None => AttributeValue::Absent,
                    Some(Value::String(b)) => AttributeValue::Text(b),
                    Some(Value::Int(n)) => AttributeValue::Int(*n),
                    Some(_) => AttributeValue::Other,
                };
                Some((key, value))
            })
            .collect();
        let a = Attributes {
            time_ms: i64::try_from(nanos / 1_000_000).unwrap_or(i64::MAX),
            values,
        };
        match check(&a, now_ms).map_err(|e| format!("log record {i}: {e}"))? {
            Fate::Keep(rec) => out.kept.push(*rec),
            Fate::NotJudged => out.not_judged += 1,
            Fate::Stale => out.stale += 1,
        }
    }
    Ok(out)
}

fn count(export: &ExportLogsServiceRequest) -> u64 {
    export
        .resource_logs
        .iter()
        .flat_map(|r| &r.scope_logs)
        .map(|s| s.log_records.len() as u64)
        .sum()
}

/// Reads and writes the two messages; a message that is not protobuf is `INVALID_ARGUMENT`.
#[derive(Default)]
struct OtlpCodec;

struct OtlpEncoder;
struct OtlpDecoder;

impl Codec for OtlpCodec {
    type Encode = ExportLogsServiceResponse;
    type Decode = ExportLogsServiceRequest;
    type Encoder = OtlpEncoder;
    type Decoder = OtlpDecoder;
    fn encoder(&mut self) -> OtlpEncoder {
        OtlpEncoder
    }
    fn decoder(&mut self) -> OtlpDecoder {
        OtlpDecoder
    }
}

impl Encoder for OtlpEncoder {
    type Item = ExportLogsServiceResponse;
    type Error = Status;
    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encoding the answer: {e}")))
    }
}

impl Decoder for OtlpDecoder {
    type Item = ExportLogsServiceRequest;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        ExportLogsServiceRequest::decode(src)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("not an OTLP logs export: {e}")))
    }
}

struct Export<S>(Arc<App<S>>);

impl<S: Store> UnaryService<ExportLogsServiceRequest> for Export<S> {
    type Response = ExportLogsServiceResponse;
    type Future = BoxFuture<tonic::Response<ExportLogsServiceResponse>, Status>;

    fn call(&mut self, request: tonic::Request<ExportLogsServiceRequest>) -> Self::Future {
        let app = self.0.clone();
        Box::pin(async move {
            let export = request.into_inner();
            let checked = records_of(&export, crate::state::now_ms()).map_err(|e| {
                metrics().logged(Logged::refused, count(&export));
                Status::invalid_argument(e)
            })?;
            metrics().logged(Logged::not_judged, checked.not_judged);
            metrics().logged(Logged::stale, checked.stale);
            app.request_log
                .write(checked.kept)
                .await
                .map_err(|e| match e {
                    NotStored::Busy => Status::unavailable("the request log is behind: not stored"),
                    NotStored::Failed => Status::unavailable("the database failed: not stored"),
                })?;
            Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
        })
    }
}

fn refuse(status: Status) -> Response {
    status.into_http::<tonic::body::Body>().into_response()
}

/// `POST /opentelemetry.proto.collector.logs.v1.LogsService/Export`.
pub async fn export<S: Store>(State(ctx): State<Ctx<S>>, request: Request) -> Response {
    // A gRPC call only (a browser's cross-site form or fetch cannot send this type).
    let grpc_call = request
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if !grpc_call {
        return refuse(Status::invalid_argument(
            "not a gRPC call (content-type application/grpc)",
        ));
    }
    // Records are taken from the proxies only: the sync token is required, and a service
    // without one takes none (anyone reaching the listener could write any tenant's log).
    if ctx.app.auth.sync_sha256.is_none() {
        return refuse(Status::unauthenticated(
            "the request log needs the sync token: start keygate serve with KEYGATE_SYNC_TOKEN_SHA256",
        ));
    }
    if ctx.app.auth.sync(request.headers()).is_err() {
        return refuse(Status::unauthenticated("the sync token is required"));
    }
    // gzip: an OpenTelemetry Collector's exporter compresses by default (Envoy does not).
    let mut grpc = Grpc::new(OtlpCodec)
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
        .apply_max_message_size_config(Some(MAX_MESSAGE), None);
    let export = async {
        let _decoding = DECODING.acquire().await;
        grpc.unary(Export(ctx.app.clone()), request).await
    };
    // A body that trickles in holds a connection, not the service.
    match tokio::time::timeout(crate::server::BODY_TIMEOUT, export).await {
        Ok(r) => r.into_response(),
        Err(_) => refuse(Status::deadline_exceeded(
            "the export did not arrive in time",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_765_000_000_000;

    fn kv(k: &str, v: Value) -> KeyValue {
        KeyValue {
            key: k.as_bytes().to_vec(),
            value: Some(AnyValue { value: Some(v) }),
        }
    }

    fn export(records: Vec<LogRecord>) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: records,
                }],
            }],
        }
    }

    fn record(decision: &str) -> LogRecord {
        LogRecord {
            time_unix_nano: (NOW as u64 - 5) * 1_000_000,
            observed_time_unix_nano: 0,
            attributes: vec![
                kv("decision", Value::String(decision.as_bytes().to_vec())),
                kv("method", Value::String(b"POST".to_vec())),
                kv("path", Value::String(b"/v1/x".to_vec())),
                kv("status", Value::Int(201)),
                kv("key_id", Value::String(b"k9".to_vec())),
            ],
        }
    }

    #[test]
    fn an_export_read_off_the_wire_gives_its_records_and_skips_unjudged_ones() {
        let bytes =
            export(vec![record("allowed"), record("-"), record("forbidden")]).encode_to_vec();
        let back = ExportLogsServiceRequest::decode(bytes.as_slice()).unwrap();
        let c = records_of(&back, NOW).unwrap();
        let records = c.kept;
        assert_eq!(c.not_judged, 1);
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].time_ms, NOW - 5);
        assert_eq!(records[0].status, 201);
        assert_eq!(records[1].decision, "forbidden");
        assert_eq!(records[1].key_id.as_deref(), Some("k9"));
    }

    #[test]
    fn one_bad_record_refuses_the_export_and_names_it() {
        let mut bad = record("allowed");
        bad.attributes.push(kv("status", Value::Double(1.0)));
        bad.attributes.remove(3);
        let e = records_of(&export(vec![record("allowed"), bad]), NOW).err();
        assert_eq!(e.as_deref(), Some("log record 1: status: not a number"));
    }

    #[test]
    fn a_record_without_a_time_takes_the_observed_time_and_one_with_neither_is_refused() {
        let mut r = record("allowed");
        r.time_unix_nano = 0;
        r.observed_time_unix_nano = NOW as u64 * 1_000_000;
        assert_eq!(
            records_of(&export(vec![r.clone()]), NOW).unwrap().kept[0].time_ms,
            NOW
        );
        r.observed_time_unix_nano = 0;
        assert!(records_of(&export(vec![r]), NOW).is_err());
    }

    #[test]
    fn strings_that_are_not_utf8_are_read_not_refused() {
        let mut r = record("allowed");
        r.attributes
            .push(kv("user_agent", Value::String(b"\xff\xfe".to_vec())));
        let bytes = export(vec![r]).encode_to_vec();
        let back = ExportLogsServiceRequest::decode(bytes.as_slice()).unwrap();
        let records = records_of(&back, NOW).unwrap().kept;
        assert_eq!(records[0].user_agent.as_deref(), Some("\u{fffd}\u{fffd}"));
    }
}
