//! Why a request is refused before any work, as one `IntoResponse` type: 4xx say what was wrong
//! (a JSON `message`), the 503s say which limit or setting refused it. Internal failures never
//! reach a client as text; they are logged where they happen.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::auth::AuthError;

/// A refusal of the HTTP layer.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 401: the request fails axon verification (headers, body hash, signature, axon, nonce).
    #[error(transparent)]
    Unauthorized(AuthError),
    /// 403: verified, but not allowed (the metagraph, or a non-local `/v1/predict` client).
    #[error("{0}")]
    Forbidden(String),
    /// 400: the body is not what the route takes.
    #[error("{0}")]
    BadRequest(String),
    /// 413: the body is larger than `serve.body_limit_mib`.
    #[error("body larger than {0} bytes")]
    TooLarge(usize),
    /// 408: the body did not arrive within `serve.body_timeout_ms`.
    #[error("body not received in time")]
    BodyTimeout,
    /// 503: `serve.max_inflight` requests are in flight.
    #[error("overloaded")]
    Overloaded,
    /// 503: `/ImageSynapse` without `serve.axon_hotkey`.
    #[error("this server has no axon hotkey configured (serve.axon_hotkey)")]
    NoAxonHotkey,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::Overloaded | ApiError::NoAxonHotkey => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status(),
            axum::Json(json!({ "message": self.to_string() })),
        )
            .into_response()
    }
}
