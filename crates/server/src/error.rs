//! At the HTTP edge an error is a response: one type, mapped to status codes, whose body says
//! what went wrong and how to fix it.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_argument", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "failed_precondition", message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        tracing::error!("store error: {e}");
        ApiError::internal(format!("the store failed: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": { "code": self.code, "message": self.message } });
        (self.status, Json(body)).into_response()
    }
}

/// Extractors whose rejections are [`ApiError`]s: a malformed body, query or path answers in the
/// same `{"error": {...}}` shape as every other error, saying what was wrong.
pub mod extract {
    use axum::extract::FromRequest;
    use axum::extract::FromRequestParts;
    use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
    use axum::http::StatusCode;

    use super::ApiError;

    /// The largest JSON body an endpoint takes: settings, never data.
    pub const JSON_LIMIT: usize = 1 << 20;

    /// A JSON request body: a declared length over [`JSON_LIMIT`] is refused before anything is
    /// read, a longer body as soon as it passes the limit (413 either way).
    pub struct JsonBody<T>(pub T);

    fn json_too_large(size: &str) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the JSON body is {size}; the limit is {JSON_LIMIT} bytes (1 MiB), far more than \
                 any setting needs — check what is being sent"
            ),
        )
    }

    impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for JsonBody<T> {
        type Rejection = ApiError;

        async fn from_request(req: axum::extract::Request, _: &S) -> Result<Self, ApiError> {
            let declared = req
                .headers()
                .get(axum::http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if let Some(n) = declared
                && n > JSON_LIMIT as u64
            {
                return Err(json_too_large(&format!("{n} bytes")));
            }
            let read = axum::body::to_bytes(req.into_body(), JSON_LIMIT);
            let bytes = tokio::time::timeout(crate::routes::BODY_DEADLINE, read)
                .await
                .map_err(|_| crate::routes::body_too_slow())?
                .map_err(|_| json_too_large("over the limit"))?;
            let axum::Json(value) = axum::Json::<T>::from_bytes(&bytes)?;
            Ok(JsonBody(value))
        }
    }

    #[derive(FromRequestParts)]
    #[from_request(via(axum::extract::Query), rejection(ApiError))]
    pub struct Query<T>(pub T);

    #[derive(FromRequestParts)]
    #[from_request(via(axum::extract::Path), rejection(ApiError))]
    pub struct Path<T>(pub T);

    impl From<JsonRejection> for ApiError {
        fn from(e: JsonRejection) -> Self {
            ApiError::bad_request(format!(
                "the request body is not the JSON this endpoint takes: {}",
                e.body_text()
            ))
        }
    }

    impl From<QueryRejection> for ApiError {
        fn from(e: QueryRejection) -> Self {
            ApiError::bad_request(format!("invalid query string: {}", e.body_text()))
        }
    }

    impl From<PathRejection> for ApiError {
        fn from(e: PathRejection) -> Self {
            ApiError::bad_request(format!("invalid path: {}", e.body_text()))
        }
    }

    impl From<BytesRejection> for ApiError {
        fn from(e: BytesRejection) -> Self {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "the upload is over the 32 MiB limit; leave target/ and other build output out of --code",
                )
            } else {
                ApiError::bad_request(format!(
                    "could not read the request body: {}",
                    e.body_text()
                ))
            }
        }
    }
}
