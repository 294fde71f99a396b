//! The errors of the HTTP layer and the one place they become a status code and the
//! JSON body `{"error": {"code", "message"}}`.

use axum::extract::FromRequest;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use gantry_domain::{InvalidTransition, PoolId};
use gantry_proto::api::{ErrorBody, ErrorResponse};
use gantry_store::StoreError;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("missing credentials: send the header Authorization: Bearer <API key>")]
    MissingCredentials,
    #[error("the API key is not valid")]
    InvalidApiKey,
    /// The key is good but may not do this, said in a sentence.
    #[error("{0}")]
    Forbidden(String),
    #[error("the agent session expired or is unknown: open a new session")]
    SessionExpired,
    #[error("pool {0} was reset: this launcher's token is no longer valid, use the new token")]
    PoolReset(PoolId),
    #[error("{0}")]
    InvalidProof(String),
    #[error("{kind} {key:?} does not exist")]
    NotFound { kind: &'static str, key: String },
    /// Something the server does not have, said in a sentence.
    #[error("{0}")]
    Missing(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    NotAssigned(String),
    /// The request is valid but what it would change is in use, said in a sentence.
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    InvalidTransition(#[from] InvalidTransition),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the certificate signing request was refused: {0}")]
    Csr(gantry_crypto::Error),
    #[error("{0}")]
    Internal(String),
    /// Something this process depends on does not answer, said in a sentence.
    #[error("{0}")]
    Unavailable(String),
    #[error("no such endpoint: {method} {path}")]
    NoRoute { method: String, path: String },
    #[error("{method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    /// A request body over what its endpoint accepts, said in a sentence.
    #[error("{0}")]
    TooLarge(String),
    #[error("the request was not answered within {}", humantime::format_duration(*.0))]
    Timeout(std::time::Duration),
    /// Too many failed attempts: the sentence says whose, `retry_after` when to try again.
    #[error("{message}: try again in {} s", retry_after.as_secs().max(1))]
    RateLimited { message: String, retry_after: std::time::Duration },
}

impl ApiError {
    pub(crate) fn not_found(kind: &'static str, key: impl Into<String>) -> Self {
        Self::NotFound { kind, key: key.into() }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidRequest(message.into())
    }

    pub(crate) fn status(&self) -> StatusCode {
        self.status_and_code().0
    }

    /// The one mapping from errors to HTTP statuses and stable codes.
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::MissingCredentials | Self::InvalidApiKey => {
                (StatusCode::UNAUTHORIZED, "unauthorized")
            }
            Self::SessionExpired => (StatusCode::UNAUTHORIZED, "session_expired"),
            Self::PoolReset(_) => (StatusCode::FORBIDDEN, "pool_reset"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::InvalidProof(_) => (StatusCode::UNAUTHORIZED, "invalid_proof"),
            Self::NotFound { .. } | Self::Missing(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::InvalidRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            Self::NotAssigned(_) => (StatusCode::CONFLICT, "not_assigned"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::InvalidTransition(_) => (StatusCode::CONFLICT, "invalid_state"),
            Self::Csr(_) => (StatusCode::BAD_REQUEST, "invalid_csr"),
            Self::Store(error) => match error {
                StoreError::AlreadyExists { .. } => (StatusCode::CONFLICT, "already_exists"),
                StoreError::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
                StoreError::StateConflict { .. }
                | StoreError::LogGap { .. }
                | StoreError::SecretChanged { .. } => (StatusCode::CONFLICT, "conflict"),
                // Not a passing state: nothing more is ever appended to the run's log.
                StoreError::LogSealed { .. } => (StatusCode::GONE, "log_sealed"),
                StoreError::Database(_) | StoreError::Config(_) => {
                    (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
                }
                StoreError::InvalidKey(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
                StoreError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
                StoreError::Blob(_) | StoreError::Durability(_) => {
                    (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
                }
                StoreError::Migration(_) | StoreError::Corrupt(_) => {
                    (StatusCode::INTERNAL_SERVER_ERROR, "internal")
                }
            },
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::NoRoute { .. } => (StatusCode::NOT_FOUND, "no_route"),
            Self::MethodNotAllowed { .. } => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            Self::Timeout(_) => (StatusCode::REQUEST_TIMEOUT, "timeout"),
            Self::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            tracing::error!(code, error = %self, "request failed");
        }
        let body =
            ErrorResponse { error: ErrorBody { code: code.to_owned(), message: self.to_string() } };
        let mut response = (status, axum::Json(body)).into_response();
        crate::http_limits::mark_response(&self, &mut response);
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return Self::TooLarge(format!(
                "the request body is too large: {}",
                rejection.body_text()
            ));
        }
        Self::InvalidRequest(format!("the request body is not valid: {}", rejection.body_text()))
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::InvalidRequest(rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::InvalidRequest(format!("the query string is not valid: {}", rejection.body_text()))
    }
}

/// `axum::Json` whose rejections are API errors in our JSON shape.
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub(crate) struct Json<T>(pub T);

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `axum::extract::Path` with API-error rejections.
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub(crate) struct PathParam<T>(pub T);

/// `axum::extract::Query` with API-error rejections.
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub(crate) struct QueryParams<T>(pub T);

pub(crate) type ApiResult<T> = Result<T, ApiError>;
