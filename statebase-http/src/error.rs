//! The StateBase error envelope: `{"error": {"code", "message", "type", "param"}, "detail"}`.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};
use statebase_core::Error;
use utoipa::ToSchema;

/// An error as the API returns it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    param: Option<String>,
    detail: Option<Value>,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            param: None,
            detail: None,
            retry_after: None,
        }
    }

    /// 401: no key, or a key that is wrong, revoked or expired.
    pub fn unauthenticated() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "authentication_failed",
            "Invalid or missing API key: send it as X-API-Key or Authorization: Bearer",
        )
    }

    /// 429 with the seconds to wait.
    pub fn rate_limited(retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_exceeded",
                format!("Rate limit exceeded. Retry after {retry_after} seconds."),
            )
        }
    }

    /// 422: the body or query does not match the schema; `field` names where.
    pub fn validation(field: &str, location: &str, message: String) -> Self {
        let mut loc = vec![json!(location)];
        loc.extend(field.split('.').filter(|s| !s.is_empty()).map(|s| json!(s)));
        Self {
            param: (!field.is_empty()).then(|| field.to_owned()),
            detail: Some(json!([{"loc": loc, "msg": message, "type": "value_error"}])),
            ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
        }
    }

    /// 400: a body that is not JSON, or not sent as JSON.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// 413: a body over the server's limit.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body over {limit} bytes"),
        )
    }

    /// 409: an `Idempotency-Key` already used for another request.
    pub fn idempotency_key_reused() -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "idempotency_key_reused",
            "this Idempotency-Key was used with another request",
        )
    }

    /// 408: the client did not send the whole body within `limit`.
    pub fn body_timeout(limit: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!("the request body did not arrive within {limit:?}"),
        )
    }

    /// 503: the server did not finish the request within `limit`; it may or may not have
    /// taken effect.
    pub fn request_timeout(limit: std::time::Duration) -> Self {
        Self {
            retry_after: Some(1),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                format!(
                    "the request took longer than {limit:?}; it may or may not have taken effect"
                ),
            )
        }
    }

    /// 500: a handler panicked (a bug); the details stay in the log.
    pub fn panicked() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "internal error",
        )
    }

    /// 409: an action that needs its explicit confirmation.
    pub fn confirmation_required(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "confirmation_required", message)
    }

    /// 404 for an unknown route.
    pub fn no_route() -> Self {
        Self::new(StatusCode::NOT_FOUND, "resource_not_found", "no such route")
    }

    /// 405 for a known route with another method.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route does not take that method",
        )
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::InvalidInput { .. } => StatusCode::BAD_REQUEST,
            Error::NotFound { .. } | Error::Pruned { .. } => StatusCode::NOT_FOUND,
            Error::Conflict { .. }
            | Error::DuplicateContent { .. }
            | Error::DuplicateEntity { .. }
            | Error::UserMismatch => StatusCode::CONFLICT,
            Error::PayloadTooLarge { .. } | Error::ContentTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Backend(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let message = match &e {
            // Internal messages stay in the log.
            Error::Backend(source) => {
                tracing::error!(error = %source, "store failed");
                "internal error".to_owned()
            }
            Error::Unavailable(source) => {
                tracing::warn!(error = %source, "store unavailable");
                "the store is unavailable; retry shortly".to_owned()
            }
            other => other.to_string(),
        };
        let param = match &e {
            Error::InvalidInput { param, .. } => Some((*param).to_owned()),
            Error::ContentTooLarge { .. } | Error::DuplicateContent { .. } => {
                Some("content".to_owned())
            }
            Error::UserMismatch => Some("user_id".to_owned()),
            Error::DuplicateEntity { .. } => Some("entity_id".to_owned()),
            Error::NotFound { kind, .. } => Some(format!("{kind}_id").replace(' ', "_")),
            Error::Pruned { .. } => Some("version".to_owned()),
            _ => None,
        };
        Self {
            param,
            retry_after: matches!(e, Error::Unavailable(_)).then_some(1),
            ..Self::new(status, e.code(), message)
        }
    }
}

/// The body of every error answer.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody<'a> {
    error: ErrorFields<'a>,
    /// A 422's list of `{"loc": [where, field…], "msg", "type"}`; else the message again.
    detail: Value,
}

/// What went wrong.
#[derive(Serialize, ToSchema)]
pub struct ErrorFields<'a> {
    /// Stable: `authentication_failed`, `rate_limit_exceeded`, `invalid_request`,
    /// `resource_not_found`, `version_conflict`, `payload_too_large`, …
    code: &'a str,
    message: &'a str,
    /// `authentication_error`, `rate_limit_error`, `invalid_request_error` or `api_error`.
    r#type: &'a str,
    /// The field or parameter at fault.
    param: Option<&'a str>,
    /// Seconds to wait (429 and 503 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after: Option<u64>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = match self.status.as_u16() {
            401 => "authentication_error",
            429 => "rate_limit_error",
            500..=599 => "api_error",
            _ => "invalid_request_error",
        };
        let body = ErrorBody {
            error: ErrorFields {
                code: self.code,
                message: &self.message,
                r#type: kind,
                param: self.param.as_deref(),
                retry_after: self.retry_after,
            },
            detail: self.detail.unwrap_or_else(|| json!(self.message)),
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from(seconds));
        }
        response
    }
}
