//! Start-up: connect, migrate, serve until told to stop. Takes the listener and the
//! shutdown signal as arguments so tests control both.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::Settings;
use crate::http::{AppState, router};
use crate::store::backend::{Access, Backend};
use crate::sync::Worker;
use tokio_util::sync::CancellationToken;

/// Open the configured store and apply pending migrations.
pub async fn migrate(settings: &Settings) -> anyhow::Result<Backend> {
    Backend::open(settings, Access::Migrate).await
}

/// Serve on `listener` until `shutdown` completes, then let in-flight requests finish
/// within `server.shutdown_grace_secs`.
pub async fn serve_with_listener(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // First, so that series registered at start-up (per-tenant zeros) are recorded.
    crate::telemetry::metrics::install();
    let backend = Backend::open(&settings, Access::Serve).await?;
    // This process's tenants share each Ameyo session with the other replicas; its
    // name also marks its leases and heartbeats.
    let owner = crate::sync::this_owner();
    let tenants = crate::tenants::build(&settings, &backend.sessions(&owner))?;
    // In the background: /healthz answers at once, /readyz once the connections and
    // statements are warm (docs/performance.md).
    let warm_up = backend
        .users
        .clone()
        .warm_up(tenants.iter().map(|t| t.id.clone()).collect());
    for t in &tenants {
        for w in t.mapper.warnings() {
            tracing::warn!(tenant = %t.id, "{w}");
        }
    }
    let worker = if settings.sync.enabled {
        Some(Arc::new(Worker::from_tenants(
            &settings.sync,
            &tenants,
            backend.outbox.clone(),
            backend.cipher.clone(),
            owner.clone(),
        )))
    } else {
        tracing::warn!("sync.enabled is false: changes are stored but not delivered to Ameyo");
        None
    };
    let metrics_task = match settings.server.metrics_listen {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for metrics: {e}"))?;
            tracing::info!(%addr, "serving metrics at /metrics");
            let tenants = settings.tenants.iter().map(|t| t.id.clone()).collect();
            let app = crate::http::metrics_router(
                backend.clone(),
                tenants,
                settings.database.max_connections,
            );
            Some(tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!(error = %e, "metrics listener failed");
                }
            }))
        }
        None => None,
    };
    let state = AppState::new(&settings, &tenants, &backend).map_err(anyhow::Error::msg)?;
    let app = router(
        state,
        Duration::from_secs(settings.server.request_timeout_secs),
    );
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "serving SCIM at /scim/v2");

    let grace = Duration::from_secs(settings.server.shutdown_grace_secs);
    let stop = CancellationToken::new();
    let worker_task = worker.map(|w| tokio::spawn(w.run(stop.clone(), grace)));
    let stopping = stop.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!(
            "shutting down: no new connections; finishing in-flight requests and deliveries"
        );
        stopping.cancel();
    });
    let cut_off = stop.clone();
    tokio::select! {
        r = server => r.context("server failed")?,
        _ = async move {
            cut_off.cancelled().await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!(grace_secs = grace.as_secs(), "shutdown grace period over; exiting with requests still open");
        }
    }
    stop.cancel();
    if let Some(task) = worker_task {
        // The worker bounds its own drain by the same grace period.
        let _ = task.await;
    }
    if let Some(task) = metrics_task {
        task.abort();
    }
    warm_up.abort();
    tracing::info!("stopped");
    Ok(())
}

/// Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
