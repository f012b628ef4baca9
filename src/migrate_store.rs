//! `migrate-store`: move an install from the embedded store to PostgreSQL. It copies
//! the users (tombstones included), the groups and their members, the users' outbox
//! rows with every pending change, sealed password and Ameyo link, and the attempt log,
//! in batches, into an empty, migrated PostgreSQL database, while holding the SQLite
//! file's lock so no `serve` writes to it meanwhile. The shared Ameyo session is not
//! copied: the first delivery logs in.

use std::io::{IsTerminal, Write};
use std::path::Path;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::SqlitePool;
use uuid::Uuid;

use crate::config::{DatabaseKind, DatabaseSettings, database_kind, redacted_url};
use crate::store::groups::{import_groups, import_members};
use crate::store::outbox::{import_attempts, import_outbox};
use crate::store::postgres::{MIGRATOR as PG_MIGRATOR, connect_lazy};
use crate::store::sqlite::groups::SqliteGroupStore;
use crate::store::sqlite::outbox::SqliteOutbox;
use crate::store::sqlite::{MIGRATOR as SQLITE_MIGRATOR, connect as sqlite_connect};

/// Rows copied per statement.
const BATCH: i64 = 1_000;

/// What was copied.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Copied {
    pub users: u64,
    pub groups: u64,
    /// Memberships (one per group and user).
    pub members: u64,
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
    let (users, groups): (i64, i64) =
        sqlx::query_as("SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM groups)")
            .fetch_one(&dst)
            .await?;
    if users > 0 || groups > 0 {
        anyhow::bail!(
            "{shown} already holds {users} users and {groups} groups: migrate-store copies \
             into an empty database only"
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
    // Members after their users and groups: the foreign keys hold at every statement.
    copy_groups(src, dst, progress, &mut copied).await?;
    copy_outbox(src, dst, progress, &mut copied).await?;
    copy_attempts(src, dst, progress, &mut copied).await?;
    Ok(copied)
}

async fn copy_groups(
    src: &SqlitePool,
    dst: &mut sqlx::PgConnection,
    progress: &Progress,
    copied: &mut Copied,
) -> anyhow::Result<()> {
    let store = SqliteGroupStore::new(src.clone());
    let (groups, members) = store.sizes().await?;
    let mut after = None;
    loop {
        let rows = store.export_groups(after, BATCH).await?;
        let Some(last) = rows.last() else { break };
        after = Some(last.id);
        import_groups(dst, &rows).await?;
        copied.groups += rows.len() as u64;
        progress.show("groups", copied.groups, groups as u64);
    }
    progress.end();
    let mut after = None;
    loop {
        let rows = store.export_members(after, BATCH).await?;
        let Some(last) = rows.last() else { break };
        after = Some(*last);
        import_members(dst, &rows).await?;
        copied.members += rows.len() as u64;
        progress.show("group members", copied.members, members as u64);
    }
    progress.end();
    Ok(())
}

async fn copy_outbox(
    src: &SqlitePool,
    dst: &mut sqlx::PgConnection,
    progress: &Progress,
    copied: &mut Copied,
) -> anyhow::Result<()> {
    let outbox = SqliteOutbox::new(src.clone());
    let (total, _) = outbox.sizes().await?;
    let mut after = None;
    loop {
        let rows = outbox.export(after, BATCH).await?;
        let Some(last) = rows.last() else { break };
        after = Some(last.user_id);
        import_outbox(dst, &rows).await?;
        copied.outbox_rows += rows.len() as u64;
        copied.pending += rows.iter().filter(|r| r.state == "pending").count() as u64;
        progress.show("outbox", copied.outbox_rows, total as u64);
    }
    progress.end();
    Ok(())
}

async fn copy_attempts(
    src: &SqlitePool,
    dst: &mut sqlx::PgConnection,
    progress: &Progress,
    copied: &mut Copied,
) -> anyhow::Result<()> {
    let outbox = SqliteOutbox::new(src.clone());
    let (_, total) = outbox.sizes().await?;
    let mut after = 0i64;
    loop {
        let rows = outbox.export_attempts(after, BATCH).await?;
        let Some(last) = rows.last() else { break };
        after = last.0;
        let rows: Vec<_> = rows.into_iter().map(|r| r.1).collect();
        import_attempts(dst, &rows).await?;
        copied.attempts += rows.len() as u64;
        progress.show("attempt log", copied.attempts, total as u64);
    }
    progress.end();
    Ok(())
}
