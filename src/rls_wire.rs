//! Envoy's rate limit service v3 on the wire, by hand (SPEC §10): the `RateLimitRequest` the
//! filter sends, the `RateLimitResponse` it reads, and the `GrpcService` naming the cluster.
//!
//! Only the fields keygate uses are written or read; every other field of an answer is skipped
//! by its wire type, as protobuf requires of a reader. Decoding trusts no length and never
//! panics: anything malformed is a [`WireError`], which the filter treats as a failed call.
//! (A codec crate would add ~7 KB to the `.wasm` for these three small messages.)
//!
//! Field numbers: `envoy/service/ratelimit/v3/rls.proto`,
//! `envoy/extensions/common/ratelimit/v3/ratelimit.proto`, `envoy/type/v3/ratelimit_unit.proto`,
//! `envoy/config/core/v3/grpc_service.proto`, `google/protobuf/duration.proto`.

use crate::model::Per;
use std::fmt;

const VARINT: u32 = 0;
const I64: u32 = 1;
const LEN: u32 = 2;
const I32: u32 = 5;

/// The gRPC service and method the filter calls.
pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
pub const METHOD: &str = "ShouldRateLimit";

/// `RateLimitResponse.Code`.
pub const CODE_OK: u64 = 1;
pub const CODE_OVER_LIMIT: u64 = 2;

/// At most this many statuses are read from an answer (keygate sends at most four descriptors).
pub const MAX_STATUSES: usize = 64;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v & 0x7f) as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_tag(out: &mut Vec<u8>, field: u32, wire: u32) {
    put_varint(out, u64::from(field << 3 | wire));
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_tag(out, field, LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_uint(out: &mut Vec<u8>, field: u32, v: u64) {
    put_tag(out, field, VARINT);
    put_varint(out, v);
}

/// A nested message: written into `scratch`, then as one length-delimited field of `out`.
fn put_message(out: &mut Vec<u8>, field: u32, write: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::with_capacity(48);
    write(&mut inner);
    put_bytes(out, field, &inner);
}

/// `RateLimitUnit` of a window length.
pub fn unit(per: Per) -> u64 {
    match per {
        Per::Second => 1,
        Per::Minute => 2,
        Per::Hour => 3,
        Per::Day => 4,
    }
}

/// The window length of a `RateLimitUnit`; `None` for units keygate has no window for
/// (`UNKNOWN`, `MONTH`, `YEAR`, `WEEK`, anything newer).
pub fn per_of_unit(unit: u64) -> Option<Per> {
    match unit {
        1 => Some(Per::Second),
        2 => Some(Per::Minute),
        3 => Some(Per::Hour),
        4 => Some(Per::Day),
        _ => None,
    }
}

/// `GrpcService{envoy_grpc: {cluster_name, authority}}`: what `proxy_grpc_call` takes as its
/// upstream (Envoy parses it; a bare cluster name could not carry the authority).
pub fn grpc_service(cluster: &str, authority: Option<&str>) -> Vec<u8> {
    let mut out = Vec::new();
    put_message(&mut out, 1, |g| {
        put_bytes(g, 1, cluster.as_bytes());
        if let Some(a) = authority {
            put_bytes(g, 2, a.as_bytes());
        }
    });
    out
}

/// One descriptor as keygate sends it: `[{key_id: <id>}, {per: <window>}]` with the key's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor<'a> {
    pub key_id: &'a str,
    pub per: Per,
    /// `requests_per_unit` is 32 bits on the wire: larger limits are sent as `u32::MAX`.
    pub requests: u64,
}

/// A balance of credits as keygate sends it (SPEC §14), after the windows:
/// `[{credits: "<period start>.<serial>"}, {until: "<next refill, or 0>"}]`, its limit what the
/// period grants (unit UNKNOWN: no window) and its `hits_addend` what the request costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Balance {
    pub period: u64,
    pub serial: u32,
    pub until: u64,
    pub grant: u64,
    pub cost: u64,
}

/// A `RateLimitRequest` for `domain`: these windows, then the balance, each led by the same
/// entry (`{tenant: <t>}` when the balance is a tenant's, so the tenant's one counter and the
/// key's windows share a Redis Cluster slot; else `{key_id: <id>}`), `hits_addend` 1.
pub fn encode_request<'a>(
    domain: &str,
    tenant: Option<&str>,
    descriptors: impl IntoIterator<Item = Descriptor<'a>>,
    balance: Option<(&str, Balance)>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    put_bytes(&mut out, 1, domain.as_bytes());
    let entry = |m: &mut Vec<u8>, key: &[u8], value: &[u8]| {
        put_message(m, 1, |e| {
            put_bytes(e, 1, key);
            put_bytes(e, 2, value);
        })
    };
    let lead = |m: &mut Vec<u8>, key_id: &str| match tenant {
        Some(t) => entry(m, b"tenant", t.as_bytes()),
        None => entry(m, b"key_id", key_id.as_bytes()),
    };
    // `unit` 0 (UNKNOWN) for a balance: a service that does not know balances refuses the call
    // (on_failure applies) rather than count it as a window.
    let limit = |m: &mut Vec<u8>, requests: u64, unit: u64| {
        put_message(m, 2, |l| {
            put_uint(l, 1, requests.min(u64::from(u32::MAX)));
            if unit > 0 {
                put_uint(l, 2, unit);
            }
        })
    };
    for d in descriptors {
        put_message(&mut out, 2, |m| {
            lead(m, d.key_id);
            if tenant.is_some() {
                entry(m, b"key_id", d.key_id.as_bytes());
            }
            entry(m, b"per", d.per.name().as_bytes());
            limit(m, d.requests, unit(d.per));
        });
    }
    if let Some((key_id, b)) = balance {
        put_message(&mut out, 2, |m| {
            lead(m, key_id);
            entry(
                m,
                b"credits",
                format!("{}.{}", b.period, b.serial).as_bytes(),
            );
            entry(m, b"until", b.until.to_string().as_bytes());
            limit(m, b.grant, 0);
            // google.protobuf.UInt64Value: 0 (check only) is the empty message.
            put_message(m, 3, |h| {
                if b.cost > 0 {
                    put_uint(h, 1, b.cost);
                }
            });
        });
    }
    put_uint(&mut out, 3, 1);
    out
}

/// Why an answer could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// The message ends inside a field.
    Truncated,
    /// A varint longer than ten bytes, a group, or an unknown wire type.
    Malformed,
    /// A known field with the wrong wire type.
    WrongType(u32),
    /// More statuses than [`MAX_STATUSES`].
    TooManyStatuses,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Truncated => f.write_str("the answer ends inside a field"),
            WireError::Malformed => f.write_str("the answer is not a protobuf message"),
            WireError::WrongType(n) => write!(f, "field {n} of the answer has the wrong type"),
            WireError::TooManyStatuses => {
                write!(f, "the answer has more than {MAX_STATUSES} statuses")
            }
        }
    }
}

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, WireError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let (&b, rest) = self.buf.split_first().ok_or(WireError::Truncated)?;
            self.buf = rest;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(WireError::Malformed)
    }

    fn skip(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.buf.len() {
            return Err(WireError::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// The next field number and value; `None` at the end.
    fn next(&mut self) -> Result<Option<(u32, Field<'a>)>, WireError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let tag = self.varint()?;
        let number = u32::try_from(tag >> 3).map_err(|_| WireError::Malformed)?;
        let value = match (tag & 7) as u32 {
            VARINT => Field::Varint(self.varint()?),
            I64 => {
                self.skip(8)?;
                Field::Fixed
            }
            LEN => {
                let n = usize::try_from(self.varint()?).map_err(|_| WireError::Truncated)?;
                Field::Bytes(self.skip(n)?)
            }
            I32 => {
                self.skip(4)?;
                Field::Fixed
            }
            _ => return Err(WireError::Malformed),
        };
        if number == 0 {
            return Err(WireError::Malformed);
        }
        Ok(Some((number, value)))
    }
}

fn as_uint(number: u32, f: Field) -> Result<u64, WireError> {
    match f {
        Field::Varint(v) => Ok(v),
        _ => Err(WireError::WrongType(number)),
    }
}

fn as_bytes(number: u32, f: Field<'_>) -> Result<&[u8], WireError> {
    match f {
        Field::Bytes(b) => Ok(b),
        _ => Err(WireError::WrongType(number)),
    }
}

/// One `DescriptorStatus`, the fields keygate reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Status {
    pub code: u64,
    /// `current_limit`: (`requests_per_unit`, `unit`), if the service said.
    pub current_limit: Option<(u64, u64)>,
    pub limit_remaining: u64,
    /// `duration_until_reset` in milliseconds (rounded up), if the service said.
    pub until_reset_ms: Option<u64>,
}

/// A `RateLimitResponse`, the fields keygate reads.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Response {
    pub overall_code: u64,
    pub statuses: Vec<Status>,
}

fn decode_duration_ms(bytes: &[u8]) -> Result<u64, WireError> {
    let mut r = Reader { buf: bytes };
    let (mut seconds, mut nanos) = (0i64, 0i64);
    while let Some((n, f)) = r.next()? {
        match n {
            1 => seconds = as_uint(n, f)? as i64,
            2 => nanos = i64::from(as_uint(n, f)? as i32),
            _ => {}
        }
    }
    // A negative duration means "now"; nanos round up to the next millisecond.
    let ms = seconds
        .max(0)
        .saturating_mul(1000)
        .saturating_add((nanos.max(0) + 999_999) / 1_000_000);
    Ok(u64::try_from(ms).unwrap_or(0))
}

fn decode_limit(bytes: &[u8]) -> Result<(u64, u64), WireError> {
    let mut r = Reader { buf: bytes };
    let (mut requests, mut unit) = (0, 0);
    while let Some((n, f)) = r.next()? {
        match n {
            1 => requests = as_uint(n, f)? & u64::from(u32::MAX),
            2 => unit = as_uint(n, f)?,
            _ => {}
        }
    }
    Ok((requests, unit))
}

fn decode_status(bytes: &[u8]) -> Result<Status, WireError> {
    let mut r = Reader { buf: bytes };
    let mut s = Status::default();
    while let Some((n, f)) = r.next()? {
        match n {
            1 => s.code = as_uint(n, f)?,
            2 => s.current_limit = Some(decode_limit(as_bytes(n, f)?)?),
            3 => s.limit_remaining = as_uint(n, f)? & u64::from(u32::MAX),
            4 => s.until_reset_ms = Some(decode_duration_ms(as_bytes(n, f)?)?),
            _ => {}
        }
    }
    Ok(s)
}

/// Reads a `RateLimitResponse` (the gRPC message, without its 5-byte frame: Envoy strips it).
pub fn decode_response(bytes: &[u8]) -> Result<Response, WireError> {
    let mut r = Reader { buf: bytes };
    let mut resp = Response::default();
    while let Some((n, f)) = r.next()? {
        match n {
            1 => resp.overall_code = as_uint(n, f)?,
            2 => {
                if resp.statuses.len() == MAX_STATUSES {
                    return Err(WireError::TooManyStatuses);
                }
                resp.statuses.push(decode_status(as_bytes(n, f)?)?);
            }
            _ => {}
        }
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_their_edges() {
        for v in [
            0,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(Reader { buf: &out }.varint(), Ok(v));
        }
    }

    #[test]
    fn the_request_is_the_documented_message() {
        let bytes = encode_request(
            "keygate",
            None,
            [Descriptor {
                key_id: "k1",
                per: Per::Minute,
                requests: 5,
            }],
            None,
        );
        let expected: &[u8] = &[
            0x0a, 7, b'k', b'e', b'y', b'g', b'a', b't', b'e', // domain
            0x12, 35, // descriptor
            0x0a, 12, 0x0a, 6, b'k', b'e', b'y', b'_', b'i', b'd', 0x12, 2, b'k',
            b'1', // entry
            0x0a, 13, 0x0a, 3, b'p', b'e', b'r', 0x12, 6, b'm', b'i', b'n', b'u', b't', b'e', 0x12,
            4, 0x08, 5, 0x10, 2, // limit: 5 per MINUTE
            0x18, 1, // hits_addend
        ];
        assert_eq!(bytes, expected);
    }

    #[test]
    fn limits_beyond_32_bits_are_sent_as_the_largest() {
        let bytes = encode_request(
            "d",
            None,
            [Descriptor {
                key_id: "k",
                per: Per::Day,
                requests: u64::MAX,
            }],
            None,
        );
        let mut out = Vec::new();
        put_varint(&mut out, u64::from(u32::MAX));
        assert!(bytes.windows(out.len()).any(|w| w == out));
    }

    #[test]
    fn grpc_service_names_cluster_and_authority() {
        assert_eq!(
            grpc_service("rl", Some("a")),
            vec![0x0a, 7, 0x0a, 2, b'r', b'l', 0x12, 1, b'a']
        );
        assert_eq!(grpc_service("rl", None), vec![0x0a, 4, 0x0a, 2, b'r', b'l']);
    }

    fn status(code: u64, remaining: u64, secs: u64) -> Vec<u8> {
        let mut s = Vec::new();
        put_uint(&mut s, 1, code);
        put_message(&mut s, 2, |l| {
            put_uint(l, 1, 10);
            put_uint(l, 2, 2);
            put_bytes(l, 3, b"name");
        });
        put_uint(&mut s, 3, remaining);
        put_message(&mut s, 4, |d| {
            put_uint(d, 1, secs);
            put_uint(d, 2, 500_000_000);
        });
        s
    }

    #[test]
    fn answers_are_read_and_unknown_fields_skipped() {
        let mut m = Vec::new();
        put_uint(&mut m, 1, CODE_OVER_LIMIT);
        put_bytes(&mut m, 2, &status(CODE_OK, 3, 7));
        put_bytes(&mut m, 2, &status(CODE_OVER_LIMIT, 0, 59));
        put_bytes(&mut m, 5, b"raw body"); // raw_body: skipped
        put_tag(&mut m, 9, I64);
        m.extend_from_slice(&[0; 8]);
        put_tag(&mut m, 10, I32);
        m.extend_from_slice(&[0; 4]);
        let r = decode_response(&m).unwrap();
        assert_eq!(r.overall_code, CODE_OVER_LIMIT);
        assert_eq!(
            r.statuses,
            vec![
                Status {
                    code: CODE_OK,
                    current_limit: Some((10, 2)),
                    limit_remaining: 3,
                    until_reset_ms: Some(7_500),
                },
                Status {
                    code: CODE_OVER_LIMIT,
                    current_limit: Some((10, 2)),
                    limit_remaining: 0,
                    until_reset_ms: Some(59_500),
                }
            ]
        );
    }

    #[test]
    fn malformed_answers_are_errors_never_panics() {
        let mut good = Vec::new();
        put_uint(&mut good, 1, CODE_OK);
        put_bytes(&mut good, 2, &status(CODE_OK, 3, 7));
        // Every truncation of a good answer, and every single-byte change, decodes or errs.
        for n in 0..good.len() {
            let _ = decode_response(&good[..n]);
            for b in [0x00, 0x7f, 0x80, 0xff, 0x0b, 0x0c] {
                let mut m = good.clone();
                m[n] = b;
                let _ = decode_response(&m);
            }
        }
        assert_eq!(
            decode_response(&[0x12, 0x05, 0x08]),
            Err(WireError::Truncated)
        );
        assert_eq!(decode_response(&[0x0a, 0x00]), Err(WireError::WrongType(1)));
        assert_eq!(decode_response(&[0x0b]), Err(WireError::Malformed)); // a group
        assert_eq!(
            decode_response(&[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01
            ]),
            Err(WireError::Malformed)
        ); // an 11-byte varint
        assert_eq!(decode_response(&[0x00, 0x00]), Err(WireError::Malformed)); // field 0
        let mut many = Vec::new();
        for _ in 0..=MAX_STATUSES {
            put_bytes(&mut many, 2, &[]);
        }
        assert_eq!(decode_response(&many), Err(WireError::TooManyStatuses));
    }

    #[test]
    fn units_map_to_windows() {
        for per in Per::ALL {
            assert_eq!(per_of_unit(unit(per)), Some(per));
        }
        for u in [0, 5, 6, 7, 99] {
            assert_eq!(per_of_unit(u), None);
        }
    }
}
