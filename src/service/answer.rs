//! The service's answers: `{"success":true,…}` or a documented error (SPEC §7).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// Every way a call can fail, each with its status and `code`.
#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    Unauthorized,
    Forbidden(String),
    NotFound,
    Conflict(String),
    TooLarge(usize),
    /// The body did not arrive within [`super::api::BODY_TIMEOUT`].
    Timeout,
    MethodNotAllowed,
    /// The database failed: 503, never a 500, and never for bad input.
    Unavailable,
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, String) {
        match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, "BAD_REQUEST", m.clone()),
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "A valid admin token is required (Authorization: Bearer <token>)".into(),
            ),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, "FORBIDDEN", m.clone()),
            ApiError::NotFound => (
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "API key not found".into(),
            ),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, "CONFLICT", m.clone()),
            ApiError::Timeout => (
                StatusCode::REQUEST_TIMEOUT,
                "REQUEST_TIMEOUT",
                format!(
                    "The request body did not arrive within {} seconds",
                    super::api::BODY_TIMEOUT.as_secs()
                ),
            ),
            ApiError::TooLarge(limit) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "PAYLOAD_TOO_LARGE",
                format!("The request body is over {limit} bytes"),
            ),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                "This method is not allowed here".into(),
            ),
            ApiError::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                "The key store is unavailable; try again".into(),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, error) = self.parts();
        let mut r = json_response(
            status,
            &json!({"success": false, "error": error, "code": code}),
        );
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"keygate\""),
            );
        }
        r
    }
}

impl From<super::store::StoreError> for ApiError {
    fn from(e: super::store::StoreError) -> Self {
        match e {
            super::store::StoreError::Conflict => {
                ApiError::Conflict("An API key with this id already exists".into())
            }
            super::store::StoreError::Unavailable(reason) => {
                eprintln!("keygate serve: database error: {reason}");
                ApiError::Unavailable
            }
        }
    }
}

pub fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// `{"success":true,"data":…}`.
pub fn data(status: StatusCode, data: Value) -> Response {
    json_response(status, &json!({"success": true, "data": data}))
}
