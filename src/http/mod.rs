//! The HTTP face of the service: axum routers for SCIM `/scim/v2` and the health
//! endpoint, authentication, body and query extraction, SCIM error responses.

pub mod auth;
pub mod error;
mod groups;
pub mod observe;
mod search;
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

use crate::ameyo::mapping::Mapper;
use crate::config::{ScimSettings, Settings};
use crate::scim::discovery;
use crate::scim::{ScimError, schema};
use crate::store::UserStore;
use crate::store::backend::Backend;
use crate::store::groups::GroupStore;
use auth::{Authenticator, Tenant};
use error::{ApiError, ApiResult, SCIM_JSON};

/// Shared by every request.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn UserStore>,
    groups: Arc<dyn GroupStore>,
    /// Each tenant's mapping, for which groups its rules look at.
    mappers: std::collections::HashMap<String, Arc<Mapper>>,
    auth: Authenticator,
    scim: ScimSettings,
    public_url: Option<String>,
}

impl AppState {
    /// `tenants`: built once by [`crate::tenants::build`]; their tokens and JWT
    /// verifiers select the tenant of each request.
    pub fn new(
        settings: &Settings,
        tenants: &[Arc<crate::tenants::Tenant>],
        backend: &Backend,
    ) -> Result<Self, String> {
        Ok(Self {
            inner: Arc::new(Inner {
                store: backend.users.clone(),
                groups: backend.groups.clone(),
                mappers: tenants
                    .iter()
                    .map(|t| (t.id.clone(), t.mapper.clone()))
                    .collect(),
                auth: Authenticator::from_tenants(tenants)?,
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

    fn groups(&self) -> &dyn GroupStore {
        self.inner.groups.as_ref()
    }

    /// Whether `tenant`'s mapping rules look at a group (by displayName, externalId).
    fn watched(&self, tenant: &str) -> impl Fn(&str, Option<&str>) -> bool + Send + Sync + use<> {
        let mapper = self.inner.mappers.get(tenant).cloned();
        move |name: &str, external_id: Option<&str>| {
            mapper
                .as_ref()
                .is_some_and(|m| m.watches_group(name, external_id))
        }
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
        // Root search (RFC 7644 §3.4.2.1, §3.4.3): Users and Groups.
        .route("/.search", post(search::search))
        .route("/Groups", get(groups::list).post(groups::create))
        .route("/Groups/.search", post(groups::search))
        .route(
            "/Groups/{id}",
            get(groups::get_one)
                .put(groups::replace)
                .patch(groups::patch)
                .delete(groups::delete),
        )
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
        .route("/readyz", get(readyz))
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

/// 200 when the database answers and every migration is applied, else 503 with the
/// reason. Bounded in time so a probe never hangs on a dead database.
async fn readyz(State(state): State<AppState>) -> Response {
    let check = tokio::time::timeout(Duration::from_secs(2), state.store().ready()).await;
    let result = match check {
        Ok(r) => r,
        Err(_) => Err("the database did not answer within 2 seconds".into()),
    };
    crate::telemetry::metrics::ready(result.is_ok());
    match result {
        Ok(()) => (
            StatusCode::OK,
            axum::Json(serde_json::json!({"status": "ready"})),
        )
            .into_response(),
        Err(reason) => {
            tracing::warn!(%reason, "not ready");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(serde_json::json!({"status": "not ready", "reason": reason})),
            )
                .into_response()
        }
    }
}

/// The Prometheus listener's router: `GET /metrics`, with the outbox gauges refreshed
/// from the database on each scrape.
pub fn metrics_router(
    store: crate::store::backend::Backend,
    tenants: Vec<String>,
    max_connections: u32,
) -> Router {
    let handle = crate::telemetry::metrics::install();
    Router::new().route(
        "/metrics",
        get(move || {
            let store = store.clone();
            let tenants = tenants.clone();
            async move {
                refresh_gauges(&store, &tenants, max_connections).await;
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    handle.render(),
                )
            }
        }),
    )
}

async fn refresh_gauges(
    store: &crate::store::backend::Backend,
    tenants: &[String],
    max_connections: u32,
) {
    use crate::telemetry::metrics;
    let (idle, size) = store.pool_stats();
    metrics::db_pool(idle, size.saturating_sub(idle), max_connections);
    let ready = tokio::time::timeout(Duration::from_secs(2), store.users.ready()).await;
    metrics::ready(matches!(ready, Ok(Ok(()))));
    let counts = tokio::time::timeout(Duration::from_secs(2), store.outbox.counts()).await;
    let Ok(Ok(counts)) = counts else {
        tracing::warn!("cannot read the outbox for metrics");
        return;
    };
    for tenant in tenants {
        let mut oldest = 0.0f64;
        for state in ["pending", "leased", "done", "dead"] {
            let row = counts
                .iter()
                .find(|c| &c.tenant_id == tenant && c.state == state);
            metrics::sync_users(tenant, state, row.map(|r| r.users).unwrap_or(0));
            if matches!(state, "pending" | "leased")
                && let Some(age) = row.and_then(|r| r.oldest_pending_secs)
            {
                oldest = oldest.max(age);
            }
        }
        metrics::oldest_pending(tenant, oldest);
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
        &list_response(vec![
            discovery::user_resource_type(&base),
            discovery::group_resource_type(&base),
        ]),
    )
}

async fn resource_type(
    State(state): State<AppState>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> ApiResult<Response> {
    let base = state.base_url(&headers);
    let body = match id.as_str() {
        "User" => discovery::user_resource_type(&base),
        "Group" => discovery::group_resource_type(&base),
        _ => return Err(ScimError::not_found("no such resource type").into()),
    };
    Ok(scim_json(StatusCode::OK, &body))
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
