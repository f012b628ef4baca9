//! Prometheus metrics: one process-wide recorder, rendered in the Prometheus text
//! format on its own listener. Every name is declared here, with its help text.

use std::sync::OnceLock;

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const BUILD_INFO: &str = "ameyo_scim_build_info";
pub const READY: &str = "ameyo_scim_ready";
pub const HTTP_REQUESTS: &str = "ameyo_scim_http_requests_total";
pub const HTTP_DURATION: &str = "ameyo_scim_http_request_duration_seconds";
pub const SYNC_USERS: &str = "ameyo_scim_sync_users";
pub const SYNC_OLDEST_PENDING: &str = "ameyo_scim_sync_oldest_pending_seconds";
pub const SYNC_DELIVERIES: &str = "ameyo_scim_sync_deliveries_total";
pub const SYNC_RETRIES: &str = "ameyo_scim_sync_retries_total";
pub const SYNC_PANICS: &str = "ameyo_scim_sync_delivery_panics_total";
pub const AMEYO_REQUESTS: &str = "ameyo_scim_ameyo_requests_total";
pub const AMEYO_DURATION: &str = "ameyo_scim_ameyo_request_duration_seconds";
pub const AMEYO_LOGINS: &str = "ameyo_scim_ameyo_logins_total";
pub const DB_POOL: &str = "ameyo_scim_db_pool_connections";
pub const DB_POOL_MAX: &str = "ameyo_scim_db_pool_max_connections";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric: name, kind, help.
const ALL: &[(&str, Kind, &str)] = &[
    (
        BUILD_INFO,
        Kind::Gauge,
        "Always 1; labels carry the version and commit.",
    ),
    (
        READY,
        Kind::Gauge,
        "1 while the database answers and migrations are applied.",
    ),
    (
        HTTP_REQUESTS,
        Kind::Counter,
        "SCIM HTTP requests by route template, method and status.",
    ),
    (
        HTTP_DURATION,
        Kind::Histogram,
        "SCIM HTTP request latency by route template and method.",
    ),
    (
        SYNC_USERS,
        Kind::Gauge,
        "Users by delivery state (pending, leased, done, dead), per tenant.",
    ),
    (
        SYNC_OLDEST_PENDING,
        Kind::Gauge,
        "Age of the oldest change not yet delivered to Ameyo, per tenant.",
    ),
    (
        SYNC_DELIVERIES,
        Kind::Counter,
        "Deliveries by tenant, action and outcome (ok, retry, dead).",
    ),
    (
        SYNC_RETRIES,
        Kind::Counter,
        "Deliveries that failed and were scheduled again, per tenant.",
    ),
    (
        SYNC_PANICS,
        Kind::Counter,
        "Deliveries that failed inside the bridge (a panic), per tenant; each counts as an attempt.",
    ),
    (
        AMEYO_REQUESTS,
        Kind::Counter,
        "Calls to Ameyo by tenant, call and HTTP status (or error).",
    ),
    (
        AMEYO_DURATION,
        Kind::Histogram,
        "Latency of calls to Ameyo by tenant and call.",
    ),
    (
        AMEYO_LOGINS,
        Kind::Counter,
        "Ameyo logins by tenant and outcome.",
    ),
    (
        DB_POOL,
        Kind::Gauge,
        "Database pool connections by state (idle, in_use).",
    ),
    (
        DB_POOL_MAX,
        Kind::Gauge,
        "Largest size of the database pool.",
    ),
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Install the process-wide recorder (once; later calls return the same handle).
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(HTTP_DURATION.into()),
                &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
            )
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(AMEYO_DURATION.into()),
                    &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 60.0],
                )
            })
            .map(|b| b.build_recorder())
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        // Another recorder may already be installed (a test harness): ours still renders
        // what it records only if it is the global one, so prefer installing it.
        let _ = metrics::set_global_recorder(recorder);
        describe_all();
        gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "commit" => crate::telemetry::COMMIT)
            .set(1.0);
        handle
    })
}

fn describe_all() {
    for (name, kind, help) in ALL {
        match kind {
            Kind::Counter => describe_counter!(*name, *help),
            Kind::Gauge => describe_gauge!(*name, *help),
            Kind::Histogram => describe_histogram!(*name, Unit::Seconds, *help),
        }
    }
}

/// Every series name as it appears in the exposition (histograms with their
/// `_bucket`, `_sum` and `_count` series), for checking dashboards and alerts.
pub fn exported_names() -> Vec<String> {
    let mut out = Vec::new();
    for (name, kind, _) in ALL {
        out.push(name.to_string());
        if *kind == Kind::Histogram {
            for suffix in ["_bucket", "_sum", "_count"] {
                out.push(format!("{name}{suffix}"));
            }
        }
    }
    out
}

/// Series that should read 0 rather than be absent before the first event, so
/// dashboards and `rate()` see them from the start.
pub fn register_tenant(tenant: &str) {
    counter!(SYNC_RETRIES, "tenant" => tenant.to_string()).increment(0);
    counter!(SYNC_PANICS, "tenant" => tenant.to_string()).increment(0);
    for outcome in ["ok", "error"] {
        counter!(AMEYO_LOGINS, "tenant" => tenant.to_string(), "outcome" => outcome).increment(0);
    }
}

pub fn http_request(route: &str, method: &str, status: u16, seconds: f64) {
    let method = method_label(method);
    counter!(HTTP_REQUESTS, "route" => route.to_string(), "method" => method, "status" => status.to_string())
        .increment(1);
    histogram!(HTTP_DURATION, "route" => route.to_string(), "method" => method).record(seconds);
}

/// The `method` label: any client, signed in or not, picks the method, so only the
/// methods we know become labels of their own; the rest share `other`, which keeps the
/// number of series bounded.
pub fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}

pub fn delivery(tenant: &str, action: &'static str, outcome: &'static str) {
    counter!(SYNC_DELIVERIES, "tenant" => tenant.to_string(), "action" => action, "outcome" => outcome)
        .increment(1);
    if outcome == "retry" {
        counter!(SYNC_RETRIES, "tenant" => tenant.to_string()).increment(1);
    }
}

pub fn ameyo_call(tenant: &str, call: &'static str, status: Option<u16>, seconds: f64) {
    let status = status
        .map(|s| s.to_string())
        .unwrap_or_else(|| "error".into());
    counter!(AMEYO_REQUESTS, "tenant" => tenant.to_string(), "call" => call, "status" => status)
        .increment(1);
    histogram!(AMEYO_DURATION, "tenant" => tenant.to_string(), "call" => call).record(seconds);
}

pub fn login(tenant: &str, ok: bool) {
    counter!(AMEYO_LOGINS, "tenant" => tenant.to_string(), "outcome" => if ok { "ok" } else { "error" })
        .increment(1);
}

pub fn sync_users(tenant: &str, state: &str, n: i64) {
    gauge!(SYNC_USERS, "tenant" => tenant.to_string(), "state" => state.to_string()).set(n as f64);
}

pub fn oldest_pending(tenant: &str, seconds: f64) {
    gauge!(SYNC_OLDEST_PENDING, "tenant" => tenant.to_string()).set(seconds);
}

pub fn db_pool(idle: usize, in_use: usize, max: u32) {
    gauge!(DB_POOL, "state" => "idle").set(idle as f64);
    gauge!(DB_POOL, "state" => "in_use").set(in_use as f64);
    gauge!(DB_POOL_MAX).set(max as f64);
}

pub fn ready(ready: bool) {
    gauge!(READY).set(if ready { 1.0 } else { 0.0 });
}

/// A delivery that failed inside the bridge (a panic): a bug to report.
pub fn delivery_panicked(tenant: &str) {
    counter!(SYNC_PANICS, "tenant" => tenant.to_string()).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_label_is_bounded() {
        for m in ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"] {
            assert_eq!(method_label(m), m);
        }
        // Methods are case-sensitive (RFC 9110 §9.1): `get` is not GET.
        for m in ["FOO1", "get", "TRACE", "CONNECT", "PROPFIND", ""] {
            assert_eq!(method_label(m), "other", "{m}");
        }
    }
}
