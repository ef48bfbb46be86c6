//! Reading an HTTP request: its body within the service's size and time limits, its query
//! string and the times in it. What a body means is [`crate::input`]'s.

use crate::answer::ApiError;
use crate::input::{json_body, text_ok};
use crate::server::BODY_TIMEOUT;
use axum::body::{to_bytes, Body};
use axum::extract::rejection::QueryRejection;
use axum::extract::Query;
use keygate::timestamp::parse_rfc3339;
use serde_json::Value;
use std::collections::HashMap;

/// The body, at most `limit` bytes, within [`BODY_TIMEOUT`].
pub async fn body_bytes(body: Body, limit: usize) -> Result<axum::body::Bytes, ApiError> {
    tokio::time::timeout(BODY_TIMEOUT, to_bytes(body, limit))
        .await
        .map_err(|_| ApiError::Timeout)?
        .map_err(|_| ApiError::TooLarge(limit))
}

pub async fn body_json(body: Body, limit: usize) -> Result<Value, ApiError> {
    json_body(&body_bytes(body, limit).await?).map_err(ApiError::BadRequest)
}

pub fn query_map(
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<HashMap<String, String>, ApiError> {
    query
        .ok()
        .map(|q| q.0)
        .filter(|q| q.iter().all(|(k, v)| text_ok(k) && text_ok(v)))
        .ok_or_else(|| ApiError::BadRequest("$query: not a valid query string".into()))
}

pub fn time_param(query: &HashMap<String, String>, name: &str) -> Result<Option<i64>, ApiError> {
    query
        .get(name)
        .map(|v| {
            parse_rfc3339(v).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "{name}: {v:?} is not an RFC 3339 time (2025-01-15T10:30:00Z)"
                ))
            })
        })
        .transpose()
}
