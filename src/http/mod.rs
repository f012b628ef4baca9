//! The HTTP face of the service: axum routers for SCIM `/scim/v2` and the health
//! endpoint, authentication, body and query extraction, SCIM error responses.

pub mod auth;
pub mod error;
pub mod observe;
mod users;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde_json::Value;

use crate::config::{ScimSettings, Settings};
use crate::scim::discovery;
use crate::scim::{ScimError, schema};
use crate::store::UserStore;
use auth::{Authenticator, Tenant};
use error::{ApiError, ApiResult, SCIM_JSON};

/// Shared by every request.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn UserStore>,
    auth: Authenticator,
    scim: ScimSettings,
    public_url: Option<String>,
}

impl AppState {
    pub fn new(settings: &Settings, store: Arc<dyn UserStore>) -> Result<Self, String> {
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                auth: Authenticator::from_settings(&settings.tenants)?,
                scim: settings.scim.clone(),
                public_url: settings
                    .server
                    .public_url
                    .as_ref()
                    .map(|u| u.trim_end_matches('/').to_string()),
            }),
        })
    }

    fn store(&self) -> &dyn UserStore {
        self.inner.store.as_ref()
    }

    /// The absolute URL of `/scim/v2`, for `meta.location` and `Location`.
    fn base_url(&self, headers: &HeaderMap) -> String {
        if let Some(u) = &self.inner.public_url {
            return format!("{u}/scim/v2");
        }
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| {
                h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
            })
            .unwrap_or("localhost");
        format!("http://{host}/scim/v2")
    }
}

/// The whole application router.
pub fn router(state: AppState, request_timeout: Duration) -> Router {
    let scim = Router::new()
        .route("/Users", get(users::list).post(users::create))
        .route("/Users/.search", post(users::search))
        // Root search (RFC 7644 §3.4.3): Users are our only resource type.
        .route("/.search", post(users::search))
        .route(
            "/Users/{id}",
            get(users::get_one)
                .put(users::replace)
                .patch(users::patch)
                .delete(users::delete),
        )
        .route("/ServiceProviderConfig", get(service_provider_config))
        .route("/ResourceTypes", get(resource_types))
        .route("/ResourceTypes/{id}", get(resource_type))
        .route("/Schemas", get(schemas))
        .route("/Schemas/{id}", get(schema_by_id))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .nest("/scim/v2", scim)
        .route("/healthz", get(|| async { "ok" }))
        // Applies to the nested routes too: every matched request gets its template.
        .route_layer(middleware::from_fn(observe::record_route))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            deadline(request_timeout, req, next)
        }))
        .layer(middleware::from_fn(observe::observe))
        .with_state(state)
}

async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    match state.inner.auth.authenticate(header) {
        Some(tenant) => {
            tracing::Span::current().record("tenant", tenant.id());
            req.extensions_mut().insert(tenant);
            next.run(req).await
        }
        None => ApiError::unauthorized().into_response(),
    }
}

/// Answer 503 (as a SCIM error) rather than hold an IdP past the deadline; Okta gives
/// up after 60 seconds without an answer.
async fn deadline(limit: Duration, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::unavailable("the request took too long; try again", 1).into_response(),
    }
}

async fn not_found() -> ApiError {
    ScimError::not_found("no such endpoint").into()
}

async fn method_not_allowed() -> ApiError {
    ScimError::new(405, None, "method not allowed on this endpoint").into()
}

/// A SCIM JSON response.
pub(crate) fn scim_json(status: StatusCode, body: &Value) -> Response {
    let mut resp = (status, body.to_string()).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(SCIM_JSON));
    resp
}

/// A JSON request body: `application/scim+json` or `application/json`, within the size
/// limit, well-formed. Failures are SCIM errors.
pub struct ScimBody(pub Value);

impl FromRequest<AppState> for ScimBody {
    type Rejection = ApiError;

    async fn from_request(req: Request<Body>, state: &AppState) -> ApiResult<Self> {
        if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
            let media = ct
                .to_str()
                .unwrap_or("")
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if media != "application/json" && media != SCIM_JSON {
                return Err(ScimError::new(
                    415,
                    None,
                    "send application/scim+json or application/json",
                )
                .into());
            }
        }
        let limit = state.inner.scim.max_body_bytes;
        let bytes = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|_| {
                ScimError::new(
                    413,
                    None,
                    format!("the request body is larger than {limit} bytes"),
                )
            })?;
        let value = serde_json::from_slice(&bytes).map_err(|e| {
            ScimError::invalid_syntax(format!("the request body is not valid JSON: {e}"))
        })?;
        Ok(ScimBody(value))
    }
}

async fn service_provider_config(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let base = state.base_url(&headers);
    scim_json(
        StatusCode::OK,
        &discovery::service_provider_config(&base, state.inner.scim.max_page_size),
    )
}

fn list_response(resources: Vec<Value>) -> Value {
    serde_json::json!({
        "schemas": [schema::LIST_RESPONSE],
        "totalResults": resources.len(),
        "startIndex": 1,
        "itemsPerPage": resources.len(),
        "Resources": resources,
    })
}

async fn resource_types(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let base = state.base_url(&headers);
    scim_json(
        StatusCode::OK,
        &list_response(vec![discovery::user_resource_type(&base)]),
    )
}

async fn resource_type(
    State(state): State<AppState>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> ApiResult<Response> {
    if id != "User" {
        return Err(ScimError::not_found("no such resource type").into());
    }
    Ok(scim_json(
        StatusCode::OK,
        &discovery::user_resource_type(&state.base_url(&headers)),
    ))
}

async fn schemas(State(state): State<AppState>, headers: HeaderMap) -> Response {
    scim_json(
        StatusCode::OK,
        &list_response(discovery::schemas(&state.base_url(&headers))),
    )
}

async fn schema_by_id(
    State(state): State<AppState>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> ApiResult<Response> {
    let s = discovery::find_schema(&id).ok_or_else(|| ScimError::not_found("no such schema"))?;
    Ok(scim_json(
        StatusCode::OK,
        &discovery::schema_resource(s, &state.base_url(&headers)),
    ))
}

/// The tenant the authentication layer put on the request.
pub(crate) type TenantExt = Extension<Tenant>;
