//! Start-up: connect, migrate, serve until told to stop. Takes the listener and the
//! shutdown signal as arguments so tests control both.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::ameyo::client::SessionStore;
use crate::config::{Settings, redacted_url};
use crate::http::{AppState, router};
use crate::store::PgStore;
use crate::store::postgres::connect_lazy;
use crate::store::session::PgSessionStore;
use crate::sync::Worker;
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

/// Connect to the database and apply pending migrations.
pub async fn migrate(settings: &Settings) -> anyhow::Result<PgStore> {
    if settings.database.create_if_missing {
        use sqlx::migrate::MigrateDatabase;
        let url = settings.database.url.expose_secret();
        let shown = redacted_url(url);
        if !sqlx::Postgres::database_exists(url)
            .await
            .with_context(|| format!("cannot reach {shown}"))?
        {
            sqlx::Postgres::create_database(url)
                .await
                .with_context(|| format!("cannot create {shown}"))?;
            tracing::info!(database = %shown, "created the database");
        }
    }
    let pool = connect_lazy(&settings.database).context("invalid database.url")?;
    let cipher = crate::store::password::PasswordCipher::from_settings(settings)?;
    let store = PgStore::new(pool, cipher);
    store.migrate().await.with_context(|| {
        format!(
            "cannot apply migrations to {}",
            redacted_url(settings.database.url.expose_secret())
        )
    })?;
    Ok(store)
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
    let store = migrate(&settings).await?;
    // This process's tenants share each Ameyo session with the other replicas; its
    // name also marks its leases and heartbeats.
    let session_owner = crate::sync::this_owner();
    let sessions = |tenant: &str| -> Option<Arc<dyn SessionStore>> {
        Some(Arc::new(PgSessionStore::new(
            store.pool().clone(),
            store.cipher().clone(),
            tenant,
            &session_owner,
        )))
    };
    let tenants = crate::tenants::build(&settings, &sessions)?;
    let worker = if settings.sync.enabled {
        Some(Arc::new(Worker::from_tenants(
            &settings.sync,
            &tenants,
            Arc::new(store.outbox()),
            store.cipher().clone(),
            session_owner.clone(),
        )))
    } else {
        tracing::warn!("sync.enabled is false: changes are stored but not delivered to Ameyo");
        None
    };
    let store = Arc::new(store);
    let metrics_task = match settings.server.metrics_listen {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for metrics: {e}"))?;
            tracing::info!(%addr, "serving metrics at /metrics");
            let tenants = settings.tenants.iter().map(|t| t.id.clone()).collect();
            let app = crate::http::metrics_router(
                store.clone(),
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
    let state = AppState::new(&settings, &tenants, store).map_err(anyhow::Error::msg)?;
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
