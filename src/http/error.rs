//! Every error leaves as a SCIM Error body with `application/scim+json`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::scim::ScimError;
use crate::store::StoreError;

/// The media type of every SCIM response body.
pub const SCIM_JSON: &str = "application/scim+json";

/// An error on its way to the client.
#[derive(Debug)]
pub struct ApiError {
    pub error: ScimError,
    /// Seconds, for 503 and 429.
    pub retry_after: Option<u64>,
    pub www_authenticate: bool,
}

impl From<ScimError> for ApiError {
    fn from(error: ScimError) -> Self {
        Self {
            error,
            retry_after: None,
            www_authenticate: false,
        }
    }
}

impl ApiError {
    pub fn unauthorized() -> Self {
        Self {
            error: ScimError::new(401, None, "missing or invalid bearer token"),
            retry_after: None,
            www_authenticate: true,
        }
    }

    pub fn unavailable(detail: &str, retry_after: u64) -> Self {
        Self {
            error: ScimError::new(503, None, detail),
            retry_after: Some(retry_after),
            www_authenticate: false,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ScimError::not_found("no user with that id").into(),
            StoreError::UserNameTaken => {
                ScimError::uniqueness("a user with this userName already exists").into()
            }
            StoreError::GroupNotFound => ScimError::not_found("no group with that id").into(),
            StoreError::DisplayNameTaken => {
                ScimError::uniqueness("a group with this displayName already exists").into()
            }
            StoreError::PreconditionFailed => ScimError::precondition_failed().into(),
            StoreError::Rejected(e) => e.into(),
            StoreError::Unavailable(source) => {
                tracing::warn!(error = %source, "database unavailable");
                ApiError::unavailable("the service's database is unavailable; try again later", 5)
            }
            StoreError::Database(source) => {
                // The detail stays in our log; the client learns nothing internal.
                tracing::error!(error = %source, "database error");
                ScimError::new(500, None, "internal error").into()
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.error.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, self.error.body().to_string()).into_response();
        let headers = resp.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(SCIM_JSON));
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.www_authenticate {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"ameyo-scim\""),
            );
        }
        resp
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
