//! The service's answers: `{"success":true,…}` or a documented error (SPEC §7).

use super::views::{Envelope, ErrorBody, Page};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Every way a call can fail, each with its status and `code`.
#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    Unauthorized,
    Forbidden(String),
    NotFound,
    /// Another tenant, for a tenant admin key (or a tenant that does not exist).
    TenantNotFound,
    Conflict(String),
    TooLarge(usize),
    /// The body did not arrive within [`super::server::BODY_TIMEOUT`].
    Timeout,
    MethodNotAllowed,
    /// The database failed: 503, never a 500, and never for bad input.
    Unavailable,
}

impl ApiError {
    /// The status and the words of the answer (the pages show them).
    pub fn status_and_message(&self) -> (StatusCode, String) {
        let (status, _, message) = self.parts();
        (status, message)
    }

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
            ApiError::TenantNotFound => (
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "Tenant not found".into(),
            ),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, "CONFLICT", m.clone()),
            ApiError::Timeout => (
                StatusCode::REQUEST_TIMEOUT,
                "REQUEST_TIMEOUT",
                format!(
                    "The request body did not arrive within {} seconds",
                    super::server::BODY_TIMEOUT.as_secs()
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
            &ErrorBody {
                success: false,
                error,
                code: code.into(),
            },
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
                super::metrics::metrics().database_error();
                eprintln!("keygate serve: database error: {reason}");
                ApiError::Unavailable
            }
        }
    }
}

pub fn json_response(status: StatusCode, body: &impl Serialize) -> Response {
    let text = serde_json::to_string(body).unwrap_or_else(|_| "{}".into());
    let mut r = (status, text).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// `{"success":true,"data":…}`.
pub fn data(status: StatusCode, data: impl Serialize) -> Response {
    json_response(
        status,
        &Envelope {
            success: true,
            data,
        },
    )
}

/// `{"success":true,"data":[…],"next_cursor":…}`.
pub fn page<T: Serialize>(data: Vec<T>, next_cursor: Option<String>) -> Response {
    json_response(
        StatusCode::OK,
        &Page {
            success: true,
            data,
            next_cursor,
        },
    )
}
