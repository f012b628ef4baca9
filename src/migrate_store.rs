//! `migrate-store`: move an install from the embedded store to PostgreSQL. It copies
//! the users (tombstones included), their outbox rows with every pending change, sealed
//! password and Ameyo link, and the attempt log, in batches, into an empty, migrated
//! PostgreSQL database, while holding the SQLite file's lock so no `serve` writes to it
//! meanwhile. The shared Ameyo session is not copied: the first delivery logs in.

use std::io::{IsTerminal, Write};
use std::path::Path;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgPool, SqlitePool};
use uuid::Uuid;

use crate::config::{DatabaseKind, DatabaseSettings, database_kind, redacted_url};
use crate::store::postgres::{MIGRATOR as PG_MIGRATOR, connect_lazy};
use crate::store::sqlite::{MIGRATOR as SQLITE_MIGRATOR, connect as sqlite_connect};

/// Rows copied per statement.
const BATCH: i64 = 1_000;

/// What was copied.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Copied {
    pub users: u64,
    pub outbox_rows: u64,
    /// Of those, rows with a change not yet in Ameyo.
    pub pending: u64,
    pub attempts: u64,
}

/// Progress on a terminal, one line rewritten in place; nothing otherwise.
struct Progress {
    on: bool,
}

impl Progress {
    fn show(&self, what: &str, done: u64, total: u64) {
        if self.on {
            eprint!("\r{what}: {done}/{total}   ");
            let _ = std::io::stderr().flush();
        }
    }
    fn end(&self) {
        if self.on {
            eprintln!();
        }
    }
}

/// Copy the store at `from` (sqlite://) into `to` (postgres://).
pub async fn run(from: &str, to: &str, quiet: bool) -> anyhow::Result<Copied> {
    let Ok(DatabaseKind::Sqlite { path: Some(path) }) = database_kind(from) else {
        anyhow::bail!("--from must be an SQLite file URL (sqlite://path/to/file.db)");
    };
    if database_kind(to).ok() != Some(DatabaseKind::Postgres) {
        anyhow::bail!("--to must be a PostgreSQL URL (postgres://...)");
    }
    if !Path::new(&path).exists() {
        anyhow::bail!("{} does not exist", path.display());
    }
    // No `serve` may write to the file while it is copied.
    let _lock = crate::store::lock::acquire(&path).map_err(anyhow::Error::msg)?;
    let src = sqlite_connect(from, 2)
        .await
        .with_context(|| format!("cannot open {}", path.display()))?;
    SQLITE_MIGRATOR
        .run(&src)
        .await
        .context("cannot bring the SQLite store up to date")?;
    let shown = redacted_url(to);
    let dst = connect_lazy(&DatabaseSettings {
        url: to.to_string().into(),
        max_connections: 2,
        ..Default::default()
    })?;
    PG_MIGRATOR
        .run(&dst)
        .await
        .with_context(|| format!("cannot apply migrations to {shown}"))?;
    let existing: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&dst)
        .await?;
    if existing > 0 {
        anyhow::bail!(
            "{shown} already holds {existing} users: migrate-store copies into an empty database only"
        );
    }
    let progress = Progress {
        on: !quiet && std::io::stderr().is_terminal(),
    };
    let mut tx = dst.begin().await?;
    let copied = copy(&src, &mut tx, &progress).await?;
    tx.commit().await?;
    progress.end();
    Ok(copied)
}

type UserRow = (
    String,
    String,
    String,
    Option<String>,
    bool,
    String,
    i64,
    DateTime<Utc>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
);

async fn copy(
    src: &SqlitePool,
    dst: &mut sqlx::PgConnection,
    progress: &Progress,
) -> anyhow::Result<Copied> {
    let mut copied = Copied::default();
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(src)
        .await?;
    let mut after = String::new();
    loop {
        let rows: Vec<UserRow> = sqlx::query_as(
            "SELECT id, tenant_id, user_name, external_id, active, resource, version, created,
                    last_modified, deleted_at
             FROM users WHERE id > ?1 ORDER BY id LIMIT ?2",
        )
        .bind(&after)
        .bind(BATCH)
        .fetch_all(src)
        .await?;
        let Some(last) = rows.last() else { break };
        after = last.0.clone();
        let ids = rows
            .iter()
            .map(|r| Uuid::parse_str(&r.0).with_context(|| format!("user id {}", r.0)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let resources = rows
            .iter()
            .map(|r| serde_json::from_str::<Value>(&r.5).context("a stored resource"))
            .collect::<anyhow::Result<Vec<_>>>()?;
        sqlx::query(
            "INSERT INTO users (id, tenant_id, user_name, external_id, active, resource, version,
                                created, last_modified, deleted_at)
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bool[],
                                  $6::jsonb[], $7::bigint[], $8::timestamptz[], $9::timestamptz[],
                                  $10::timestamptz[])",
        )
        .bind(&ids)
        .bind(rows.iter().map(|r| r.1.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.2.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.3.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.4).collect::<Vec<_>>())
        .bind(&resources)
        .bind(rows.iter().map(|r| r.6).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.7).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.8).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.9).collect::<Vec<_>>())
        .execute(&mut *dst)
        .await?;
        copied.users += rows.len() as u64;
        progress.show("users", copied.users, total as u64);
    }
    progress.end();
    copy_outbox(src, dst, progress, &mut copied).await?;
    copy_attempts(src, dst, progress, &mut copied).await?;
    Ok(copied)
}

#[derive(sqlx::FromRow)]
struct OutboxRow {
    user_id: String,
    tenant_id: String,
    desired_version: i64,
    synced_version: i64,
    state: String,
    attempts: i32,
    next_attempt_at: DateTime<Utc>,
    pending_since: Option<DateTime<Utc>>,
    last_error: Option<String>,
    pending_password: Option<Vec<u8>>,
    password_version: Option<i64>,
    ameyo_user_id: Option<String>,
    cc_user_id: Option<i64>,
    create_attempted: bool,
    intended_user_id: Option<String>,
    ameyo_locked: bool,
    last_pushed: Option<String>,
    resync_requested: bool,
    ameyo_server: Option<String>,
}

async fn copy_outbox(
    src: &SqlitePool,
    dst: &mut sqlx::PgConnection,
    progress: &Progress,
    copied: &mut Copied,
) -> anyhow::Result<()> {
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM sync_state")
        .fetch_one(src)
        .await?;
    let mut after = String::new();
    loop {
        // A lease held by the SQLite store's process means nothing here: such a row is
        // copied as pending, so the new workers deliver it.
        let rows: Vec<OutboxRow> = sqlx::query_as(
            "SELECT user_id, tenant_id, desired_version, synced_version,
                    CASE WHEN state = 'leased' THEN 'pending' ELSE state END AS state,
                    attempts, next_attempt_at, pending_since, last_error, pending_password,
                    password_version, ameyo_user_id, cc_user_id, create_attempted,
                    intended_user_id, ameyo_locked, last_pushed, resync_requested, ameyo_server
             FROM sync_state WHERE user_id > ?1 ORDER BY user_id LIMIT ?2",
        )
        .bind(&after)
        .bind(BATCH)
        .fetch_all(src)
        .await?;
        let Some(last) = rows.last() else { break };
        after = last.user_id.clone();
        let ids = rows
            .iter()
            .map(|r| Uuid::parse_str(&r.user_id).with_context(|| format!("user id {}", r.user_id)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let pushed = rows
            .iter()
            .map(|r| {
                r.last_pushed
                    .as_deref()
                    .map(serde_json::from_str::<Value>)
                    .transpose()
                    .context("a stored last_pushed")
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        // Sealed passwords move as they are: they are bound to the user id, which is
        // kept, and open with the same sync.password_key.
        let passwords: Vec<Option<Vec<u8>>> =
            rows.iter().map(|r| r.pending_password.clone()).collect();
        sqlx::query(
            "INSERT INTO sync_state (user_id, tenant_id, desired_version, synced_version, state,
                attempts, next_attempt_at, pending_since, last_error, pending_password,
                password_version, ameyo_user_id, cc_user_id, create_attempted, intended_user_id,
                ameyo_locked, last_pushed, resync_requested, ameyo_server)
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::bigint[], $4::bigint[], $5::text[],
                 $6::int[], $7::timestamptz[], $8::timestamptz[], $9::text[], $10::bytea[],
                 $11::bigint[], $12::text[], $13::bigint[], $14::bool[], $15::text[],
                 $16::bool[], $17::jsonb[], $18::bool[], $19::text[])",
        )
        .bind(&ids)
        .bind(rows.iter().map(|r| r.tenant_id.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.desired_version).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.synced_version).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.state.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.attempts).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.next_attempt_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.pending_since).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| r.last_error.clone())
                .collect::<Vec<_>>(),
        )
        .bind(&passwords)
        .bind(rows.iter().map(|r| r.password_version).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| r.ameyo_user_id.clone())
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|r| r.cc_user_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.create_attempted).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| r.intended_user_id.clone())
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|r| r.ameyo_locked).collect::<Vec<_>>())
        .bind(&pushed)
        .bind(rows.iter().map(|r| r.resync_requested).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| r.ameyo_server.clone())
                .collect::<Vec<_>>(),
        )
        .execute(&mut *dst)
        .await?;
        copied.outbox_rows += rows.len() as u64;
        copied.pending += rows.iter().filter(|r| r.state == "pending").count() as u64;
        progress.show("outbox", copied.outbox_rows, total as u64);
    }
    progress.end();
    Ok(())
}

type AttemptRow = (
    DateTime<Utc>,
    String,
    String,
    i64,
    String,
    String,
    String,
    Option<i32>,
    i32,
    Option<String>,
);

async fn copy_attempts(
    src: &SqlitePool,
    dst: &mut sqlx::PgConnection,
    progress: &Progress,
    copied: &mut Copied,
) -> anyhow::Result<()> {
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM sync_attempts")
        .fetch_one(src)
        .await?;
    let mut after = 0i64;
    loop {
        let rows: Vec<(i64, AttemptRow)> = sqlx::query_as::<
            _,
            (
                i64,
                DateTime<Utc>,
                String,
                String,
                i64,
                String,
                String,
                String,
                Option<i32>,
                i32,
                Option<String>,
            ),
        >(
            "SELECT id, at, tenant_id, user_id, version, worker, call, outcome, http_status,
                    duration_ms, error
             FROM sync_attempts WHERE id > ?1 ORDER BY id LIMIT ?2",
        )
        .bind(after)
        .bind(BATCH)
        .fetch_all(src)
        .await?
        .into_iter()
        .map(|r| (r.0, (r.1, r.2, r.3, r.4, r.5, r.6, r.7, r.8, r.9, r.10)))
        .collect();
        let Some(last) = rows.last() else { break };
        after = last.0;
        let rows: Vec<AttemptRow> = rows.into_iter().map(|r| r.1).collect();
        let users = rows
            .iter()
            .map(|r| Uuid::parse_str(&r.2).with_context(|| format!("user id {}", r.2)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        sqlx::query(
            "INSERT INTO sync_attempts (at, tenant_id, user_id, version, worker, call, outcome,
                                        http_status, duration_ms, error)
             SELECT * FROM UNNEST($1::timestamptz[], $2::text[], $3::uuid[], $4::bigint[],
                                  $5::text[], $6::text[], $7::text[], $8::int[], $9::int[],
                                  $10::text[])",
        )
        .bind(rows.iter().map(|r| r.0).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.1.clone()).collect::<Vec<_>>())
        .bind(&users)
        .bind(rows.iter().map(|r| r.3).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.4.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.5.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.6.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.7).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.8).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.9.clone()).collect::<Vec<_>>())
        .execute(&mut *dst)
        .await?;
        copied.attempts += rows.len() as u64;
        progress.show("attempt log", copied.attempts, total as u64);
    }
    progress.end();
    Ok(())
}
