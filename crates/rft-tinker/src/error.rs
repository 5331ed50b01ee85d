//! What a Tinker call can fail with, and how it is answered.
//!
//! A call refused at once answers its HTTP status with the same envelope as the rest of the
//! server (`{"error": {"message", "type", "param", "code"}}`; the SDK shows `message`); a
//! queued call that fails later is a failed future, `{"error", "category"}` with category
//! `user` or `server` ([`crate::futures::Outcome`]). Messages never carry server paths
//! (`rft_types::paths::redact_paths`), and a server fault is logged with a reference the
//! client gets instead of its details.

use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest JSON body of a Tinker call (`forward_backward`'s protobuf body has its own cap).
pub const MAX_JSON_BODY: usize = 32 * 1024 * 1024;

/// A refused Tinker call.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TinkerError {
    /// The request is malformed or asks for something not allowed (400).
    #[error("{message}")]
    BadRequest {
        /// What was wrong and what is allowed.
        message: String,
        /// The request field at fault.
        param: Option<String>,
    },
    /// No such object for this caller (404): unknown, or another key's.
    #[error("No {what} '{id}' exists for this API key.")]
    NotFound {
        /// The kind of object.
        what: &'static str,
        /// Its id as given.
        id: String,
        /// The request field that named it.
        param: Option<String>,
    },
    /// The session or sampler has finished or expired (410: the SDK stops its heartbeat).
    #[error("This {what} has finished or expired.")]
    Gone {
        /// The kind of object.
        what: &'static str,
    },
    /// A bound is reached; retry later (429 with `Retry-After`).
    #[error("{0}")]
    Busy(String),
    /// The body is over its cap once decompressed (413).
    #[error("{0}")]
    TooLarge(String),
    /// The body's media type is not one this route takes (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Not enough memory for another model now (503 with `Retry-After`).
    #[error("{0}")]
    Unavailable(String),
    /// The server failed (500): logged, and the client gets a reference.
    #[error("{0}")]
    Internal(String),
}

impl TinkerError {
    /// A 400.
    pub fn bad_request(message: impl Into<String>) -> TinkerError {
        TinkerError::BadRequest {
            message: message.into(),
            param: None,
        }
    }

    /// A 404 for `what` named `id`.
    pub fn not_found(what: &'static str, id: &str) -> TinkerError {
        TinkerError::NotFound {
            what,
            id: id.chars().take(200).collect(),
            param: None,
        }
    }

    /// The same error naming the request field at fault.
    pub fn with_param(self, name: &str) -> TinkerError {
        match self {
            TinkerError::BadRequest { message, .. } => TinkerError::BadRequest {
                message,
                param: Some(name.to_owned()),
            },
            TinkerError::NotFound { what, id, .. } => TinkerError::NotFound {
                what,
                id,
                param: Some(name.to_owned()),
            },
            other => other,
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            TinkerError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            TinkerError::NotFound { .. } => StatusCode::NOT_FOUND,
            TinkerError::Gone { .. } => StatusCode::GONE,
            TinkerError::Busy(_) => StatusCode::TOO_MANY_REQUESTS,
            TinkerError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            TinkerError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            TinkerError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            TinkerError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn kind(&self) -> (&'static str, Option<&'static str>) {
        match self {
            TinkerError::BadRequest { .. } => ("invalid_request_error", None),
            TinkerError::NotFound { .. } => ("invalid_request_error", Some("not_found")),
            TinkerError::Gone { .. } => ("invalid_request_error", Some("gone")),
            TinkerError::Busy(_) => ("rate_limit_error", Some("rate_limit_exceeded")),
            TinkerError::TooLarge(_) => ("invalid_request_error", Some("request_too_large")),
            TinkerError::UnsupportedMediaType(_) => {
                ("invalid_request_error", Some("unsupported_media_type"))
            }
            TinkerError::Unavailable(_) => ("server_error", Some("overloaded")),
            TinkerError::Internal(_) => ("server_error", None),
        }
    }
}

impl From<rft_model::request::SamplingFault> for TinkerError {
    fn from(fault: rft_model::request::SamplingFault) -> TinkerError {
        TinkerError::BadRequest {
            message: fault.message,
            param: Some(format!("sampling_params.{}", fault.param)),
        }
    }
}

impl From<rft_model::ModelError> for TinkerError {
    fn from(e: rft_model::ModelError) -> TinkerError {
        match e {
            rft_model::ModelError::MemoryBudget { .. } => TinkerError::Unavailable(e.to_string()),
            other => TinkerError::Internal(format!("cannot load the model: {other}")),
        }
    }
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: Body<'a>,
}

#[derive(Serialize)]
struct Body<'a> {
    message: String,
    #[serde(rename = "type")]
    kind: &'static str,
    param: Option<&'a str>,
    code: Option<&'static str>,
}

impl IntoResponse for TinkerError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = if let TinkerError::Internal(detail) = &self {
            let reference = rft_types::ids::new_id("err_");
            tracing::error!("tinker: {detail} (reference {reference})");
            format!(
                "The server had an error while processing your request (reference {reference})."
            )
        } else {
            rft_types::paths::redact_paths(&self.to_string())
        };
        let param = match &self {
            TinkerError::BadRequest { param, .. } | TinkerError::NotFound { param, .. } => {
                param.as_deref()
            }
            _ => None,
        };
        let (kind, code) = self.kind();
        let body = axum::Json(Envelope {
            error: Body {
                message,
                kind,
                param,
                code,
            },
        });
        let retry = matches!(self, TinkerError::Busy(_) | TinkerError::Unavailable(_));
        if retry {
            (status, [(header::RETRY_AFTER, "1")], body).into_response()
        } else {
            (status, body).into_response()
        }
    }
}

/// A JSON body parsed into its type; a mismatch is a 400 naming the JSON path of the fault.
#[derive(Debug)]
pub struct TinkerJson<T>(pub T);

impl<S, T> FromRequest<S> for TinkerJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = TinkerError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                let v = v.split(';').next().unwrap_or("").trim();
                v.eq_ignore_ascii_case("application/json")
            });
        if !json {
            return Err(TinkerError::UnsupportedMediaType(
                "The request body must be JSON with `Content-Type: application/json`.".into(),
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    TinkerError::TooLarge(format!(
                        "The JSON body is over the limit of {MAX_JSON_BODY} bytes."
                    ))
                } else {
                    TinkerError::bad_request(format!("cannot read the request body: {e}"))
                }
            })?;
        parse_json(&bytes).map(TinkerJson)
    }
}

/// Parses JSON into `T`, naming the path of a fault as the error's `param`.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, TinkerError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let message = format!(
            "We could not parse the JSON body of your request: {}",
            e.inner()
        );
        TinkerError::BadRequest {
            message,
            param: (path != ".").then_some(path),
        }
    })
}
