//! OpenAI's error envelope (`{"error": {message, type, param, code}}`) and the JSON extractor
//! that reports malformed bodies in it, so SDK clients raise their typed exceptions.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

/// An API error: status code and the envelope's fields.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    /// HTTP status.
    pub(crate) status: StatusCode,
    /// What was wrong and how to fix it.
    pub(crate) message: String,
    /// The request field at fault, if one is.
    pub(crate) param: Option<String>,
    /// A stable machine-readable code.
    pub(crate) code: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            param: None,
            code: None,
        }
    }

    /// 400: the request is wrong.
    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404: no such object.
    pub(crate) fn not_found(what: &str, id: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("No {what} found with id '{id}'."),
        )
        .with_code("not_found")
    }

    /// 401: missing or wrong API key.
    pub(crate) fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, message).with_code("invalid_api_key")
    }

    /// 403: the request is refused whoever sends it (a foreign `Host` or `Origin`).
    pub(crate) fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, message).with_code("forbidden")
    }

    /// 429: a bounded queue is full.
    pub(crate) fn busy(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, message).with_code("rate_limit_exceeded")
    }

    /// 503: not enough memory for another model beside the ones in use; retry later.
    pub(crate) fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message).with_code("overloaded")
    }

    /// 500: our fault.
    pub(crate) fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// With the offending request field.
    pub(crate) fn with_param(mut self, param: impl Into<String>) -> ApiError {
        self.param = Some(param.into());
        self
    }

    /// With a machine-readable code.
    pub(crate) fn with_code(mut self, code: impl Into<String>) -> ApiError {
        self.code = Some(code.into());
        self
    }

    /// The message a client may see. Server faults carry paths, database names and library
    /// internals: they go to the log, and the client gets a reference to find them there;
    /// other messages lose any absolute path they quote.
    pub(crate) fn public_message(&self) -> String {
        // A 503 says why and when to retry; other 5xx details stay in the log.
        if self.status.is_server_error() && self.status != StatusCode::SERVICE_UNAVAILABLE {
            let reference = crate::new_id("err_");
            tracing::error!(status = %self.status, reference = %reference, "{}", self.message);
            format!(
                "The server had an error while processing your request (reference {reference}; the server log has the details)."
            )
        } else {
            redact_paths(&self.message)
        }
    }

    fn error_type(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            409 => "conflict_error",
            429 => "rate_limit_error",
            500..=599 => "server_error",
            _ => "invalid_request_error",
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}

/// OpenAI's error envelope.
#[derive(Debug, serde::Serialize)]
struct Envelope<'a> {
    error: EnvelopeBody<'a>,
}

#[derive(Debug, serde::Serialize)]
struct EnvelopeBody<'a> {
    message: String,
    #[serde(rename = "type")]
    kind: &'static str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    fn envelope(&self) -> Envelope<'_> {
        Envelope {
            error: EnvelopeBody {
                message: self.public_message(),
                kind: self.error_type(),
                param: self.param.as_deref(),
                code: self.code.as_deref(),
            },
        }
    }

    /// The error as the `data: {"error": …}` event a stream ends with once it has begun.
    pub(crate) fn sse_event(&self) -> axum::response::sse::Event {
        axum::response::sse::Event::default()
            .data(serde_json::to_string(&self.envelope()).unwrap_or_default())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.envelope())).into_response();
        if matches!(
            self.status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static(RETRY_AFTER_SECONDS),
            );
        }
        response
    }
}

/// What a 429 tells the client to wait, in seconds: the queues drain in about that long.
pub(crate) const RETRY_AFTER_SECONDS: &str = "1";

pub(crate) use rft_types::paths::redact_paths;

impl From<rft_store::StoreError> for ApiError {
    /// An outage of the database (PostgreSQL restarting) is a 503 with `Retry-After`, which
    /// SDK clients retry; anything else a 500. Neither shows a path or the database's URL:
    /// the log has them.
    fn from(e: rft_store::StoreError) -> ApiError {
        if e.is_unavailable() {
            tracing::warn!("request refused, the database is unavailable: {e}");
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "The database is unavailable for the moment; retry the request shortly.",
            )
            .with_code("database_unavailable");
        }
        tracing::error!("storage error: {e}");
        ApiError::internal(format!("storage error: {}", redact_paths(&e.to_string())))
    }
}

/// Parses a request body into its type; a mismatch is a 400 whose `param` is the JSON path of
/// the fault (`data_source.source.content[2].item`) and whose message says what was expected.
pub(crate) fn parse_body<T: DeserializeOwned>(body: serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(body).map_err(|e| {
        let mut path = e.path().to_string();
        if path == "." {
            path.clear();
        }
        let message = e.into_inner().to_string();
        // serde reports a missing field at its parent: name the field itself, as OpenAI does.
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next());
        if let Some(field) = missing {
            let param = if path.is_empty() {
                field.to_owned()
            } else {
                format!("{path}.{field}")
            };
            return ApiError::bad_request(format!("Missing required parameter: '{param}'."))
                .with_param(param);
        }
        if path.is_empty() {
            ApiError::bad_request(format!("Invalid request body: {message}"))
        } else {
            ApiError::bad_request(format!("Invalid value at '{path}': {message}")).with_param(path)
        }
    })
}

/// A JSON body parsed into its request type, with the JSON path of a fault as `param` (what
/// [`ApiJson`] and [`parse_body`] do in two steps): the extractor typed handlers take.
#[derive(Debug)]
pub(crate) struct ApiBody<T>(pub T);

impl<S, T> FromRequest<S> for ApiBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let ApiJson(value) = ApiJson::<serde_json::Value>::from_request(req, state).await?;
        parse_body(value).map(ApiBody)
    }
}

/// Largest JSON body (files go through `/v1/files`, limited separately).
pub(crate) const MAX_JSON_BODY: usize = 32 * 1024 * 1024;

/// `axum::Json`, with malformed bodies reported in the error envelope.
#[derive(Debug)]
pub(crate) struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let length = req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        if length > MAX_JSON_BODY {
            return Err(ApiError {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                message: format!(
                    "The JSON body is {length} bytes; the limit is {MAX_JSON_BODY} (upload large data as a file)."
                ),
                param: None,
                code: Some("request_too_large".into()),
            });
        }
        // The route's `DefaultBodyLimit` bounds the bytes actually read, chunked bodies included
        // (a Content-Length check alone lets a chunked body through).
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(match rejection {
                JsonRejection::MissingJsonContentType(_) => ApiError::bad_request(
                    "The request body must be JSON with `Content-Type: application/json`.",
                ),
                other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError {
                    status: StatusCode::PAYLOAD_TOO_LARGE,
                    message: format!(
                        "The JSON body is over the limit of {MAX_JSON_BODY} bytes (upload large data as a file)."
                    ),
                    param: None,
                    code: Some("request_too_large".into()),
                },
                other => ApiError::bad_request(format!(
                    "We could not parse the JSON body of your request: {}",
                    other.body_text()
                )),
            }),
        }
    }
}
