//! Logging (a `tracing` subscriber writing human-readable or JSON lines to stderr)
//! and metrics.

use tracing_subscriber::EnvFilter;

/// The commit this binary was built from (`AMEYO_SCIM_COMMIT` at build time, else git).
pub const COMMIT: &str = env!("AMEYO_SCIM_COMMIT");

use crate::config::{LogFormat, LogSettings};

/// Install the global subscriber. `RUST_LOG`, when set, overrides `log.level`.
pub fn init(settings: &LogSettings) {
    let level = std::env::var("RUST_LOG").unwrap_or_else(|_| settings.level.clone());
    // Postgres notices ("relation already exists, skipping") are noise at info.
    let filter = EnvFilter::try_new(format!("sqlx::postgres::notice=warn,{level}"))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match settings.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}
pub mod metrics;
