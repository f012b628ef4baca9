//! One span per request: request id (the client's `X-Request-Id` when it is sane, else
//! a new one, echoed back), method, route template, tenant, status and latency. The
//! URI is never logged: query strings carry filters, and filters carry personal data.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;
use tracing::field::Empty;

pub const REQUEST_ID: &str = "x-request-id";

/// The route template, filled in once routing has matched.
#[derive(Clone, Default)]
pub struct RouteCell(Arc<OnceLock<String>>);

impl RouteCell {
    pub fn get(&self) -> Option<&str> {
        self.0.get().map(String::as_str)
    }
}

fn request_id(req: &Request) -> String {
    req.headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// The outermost middleware.
pub async fn observe(mut req: Request, next: Next) -> Response {
    let id = request_id(&req);
    let cell = RouteCell::default();
    req.extensions_mut().insert(cell.clone());
    let method = req.method().to_string();
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %method,
        route = Empty,
        tenant = Empty,
    );
    let started = Instant::now();
    let mut resp = next.run(req).instrument(span.clone()).await;
    let seconds = started.elapsed().as_secs_f64();
    let route = match cell.get() {
        Some(r) => r.to_string(),
        None => {
            span.record("route", "unmatched");
            "unmatched".to_string()
        }
    };
    let status = resp.status().as_u16();
    span.in_scope(|| {
        let ms = (seconds * 1000.0 * 10.0).round() / 10.0;
        if route == "/healthz" || route == "/readyz" {
            tracing::debug!(status, latency_ms = ms, "request finished");
        } else if status >= 500 {
            tracing::warn!(status, latency_ms = ms, "request finished");
        } else {
            tracing::info!(status, latency_ms = ms, "request finished");
        }
    });
    crate::telemetry::metrics::http_request(&route, &method, status, seconds);
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    resp
}

/// A route layer: records the matched route template for the request's span.
pub async fn record_route(req: Request, next: Next) -> Response {
    if let (Some(path), Some(cell)) = (
        req.extensions().get::<MatchedPath>(),
        req.extensions().get::<RouteCell>(),
    ) && cell.0.set(path.as_str().to_string()).is_ok()
    {
        tracing::Span::current().record("route", path.as_str());
    }
    next.run(req).await
}
