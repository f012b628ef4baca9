//! The Postgres backend. Each SCIM write is one statement that changes the user row and
//! its outbox row together; updates use optimistic concurrency on `version`, so no row
//! lock is held while the change is computed.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde_json::{Map, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, QueryBuilder, Row};
use uuid::Uuid;

use super::filter_sql::{push_filter, sort_expr};
use super::{Change, IfMatch, ListQuery, Page, Result, StoreError, UserStore};
use crate::config::DatabaseSettings;
use crate::scim::resource::{StoredUser, UserInput};

/// The unique index behind SCIM's `uniqueness` error for userName.
const USER_NAME_KEY: &str = "users_tenant_user_name_key";
/// How often an update is retried when another writer got there first.
const MAX_UPDATE_TRIES: usize = 8;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
}

/// A pool for the configured database. It connects lazily, so the service starts (and
/// reports not ready) while the database is still coming up.
pub fn connect_lazy(settings: &DatabaseSettings) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = settings.url.expose_secret().parse()?;
    Ok(PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(Duration::from_secs(settings.acquire_timeout_secs))
        .connect_lazy_with(options.application_name("ameyo-scim")))
}

impl PgStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Apply pending migrations.
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        MIGRATOR.run(&self.pool).await
    }
}

/// The columns a [`StoredUser`] is read from, as a macro so SQL can be `concat!`ed at
/// compile time (sqlx accepts only static SQL without an explicit audit).
macro_rules! user_columns {
    () => {
        "u.id, u.resource, u.version, u.created, u.last_modified"
    };
}

/// Marks a user's outbox row pending at `u.version`, inside the same statement.
/// A row that a worker holds stays leased: the worker sees the newer desired version
/// when it completes and goes round again.
macro_rules! mark_pending {
    () => {
        "s AS (
    UPDATE sync_state SET desired_version = u.version,
        state = CASE WHEN sync_state.state = 'leased' THEN 'leased' ELSE 'pending' END,
        attempts = 0, next_attempt_at = now(), last_error = NULL, updated_at = now()
    FROM u WHERE sync_state.user_id = u.id)"
    };
}

const CREATE_SQL: &str = concat!(
    "WITH u AS (
        INSERT INTO users (id, tenant_id, user_name, external_id, active, resource,
                           version, created, last_modified)
        VALUES ($1, $2, $3, $4, $5, $6, 1, now(), now())
        RETURNING *),
     s AS (INSERT INTO sync_state (user_id, tenant_id, desired_version)
           SELECT id, tenant_id, version FROM u)
     SELECT ",
    user_columns!(),
    " FROM u"
);

const GET_SQL: &str = concat!(
    "SELECT ",
    user_columns!(),
    " FROM users u WHERE u.tenant_id = $1 AND u.id = $2 AND u.deleted_at IS NULL"
);

const UPDATE_SQL: &str = concat!(
    "WITH u AS (
        UPDATE users SET user_name = $3, external_id = $4, active = $5, resource = $6,
            version = version + 1, last_modified = now()
        WHERE tenant_id = $1 AND id = $2 AND version = $7 AND deleted_at IS NULL
        RETURNING *), ",
    mark_pending!(),
    " SELECT ",
    user_columns!(),
    " FROM u"
);

const DELETE_SQL: &str = concat!(
    "WITH u AS (
        UPDATE users SET deleted_at = now(), version = version + 1, last_modified = now()
        WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NULL
          AND ($3::bigint[] IS NULL OR version = ANY($3))
        RETURNING *), ",
    mark_pending!(),
    " SELECT count(*) FROM u"
);

fn row_to_user(row: &sqlx::postgres::PgRow) -> Result<StoredUser> {
    let resource: Value = row.try_get("resource")?;
    let resource = match resource {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    Ok(StoredUser {
        id: row.try_get("id")?,
        resource,
        version: row.try_get("version")?,
        created: row.try_get::<DateTime<Utc>, _>("created")?,
        last_modified: row.try_get::<DateTime<Utc>, _>("last_modified")?,
    })
}

fn map_unique(e: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &e
        && db.constraint() == Some(USER_NAME_KEY)
    {
        return StoreError::UserNameTaken;
    }
    e.into()
}

#[async_trait]
impl UserStore for PgStore {
    async fn create(&self, tenant: &str, user: UserInput) -> Result<StoredUser> {
        let row = sqlx::query(CREATE_SQL)
            .bind(Uuid::new_v4())
            .bind(tenant)
            .bind(&user.user_name)
            .bind(&user.external_id)
            .bind(user.active)
            .bind(Value::Object(user.resource))
            .fetch_one(&self.pool)
            .await
            .map_err(map_unique)?;
        row_to_user(&row)
    }

    async fn get(&self, tenant: &str, id: Uuid) -> Result<Option<StoredUser>> {
        let row = sqlx::query(GET_SQL)
            .bind(tenant)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(row_to_user).transpose()
    }

    async fn list(&self, tenant: &str, q: &ListQuery) -> Result<Page> {
        let mut qb = QueryBuilder::<Postgres>::new("");
        let where_clause = |qb: &mut QueryBuilder<Postgres>| -> Result<()> {
            qb.push(" FROM users u WHERE u.tenant_id = ");
            qb.push_bind(tenant.to_string());
            qb.push(" AND u.deleted_at IS NULL");
            if let Some(f) = &q.filter {
                qb.push(" AND ");
                push_filter(qb, f)?;
            }
            Ok(())
        };
        if q.count == 0 {
            qb.push("SELECT count(*)");
            where_clause(&mut qb)?;
            let total: i64 = qb.build_query_scalar().fetch_one(&self.pool).await?;
            return Ok(Page {
                total: total as u64,
                users: vec![],
            });
        }
        qb.push(concat!(
            "SELECT ",
            user_columns!(),
            ", count(*) OVER () AS total"
        ));
        where_clause(&mut qb)?;
        qb.push(" ORDER BY ");
        if let Some(sort) = &q.sort_by {
            qb.push(sort_expr(sort)?);
            qb.push(if q.descending {
                " DESC NULLS LAST, "
            } else {
                " ASC NULLS LAST, "
            });
        }
        qb.push("u.created, u.id LIMIT ");
        qb.push_bind(q.count as i64);
        qb.push(" OFFSET ");
        qb.push_bind(q.start_index.saturating_sub(1) as i64);
        let rows = qb.build().fetch_all(&self.pool).await?;
        let total = match rows.first() {
            Some(r) => r.try_get::<i64, _>("total")? as u64,
            // A page past the end carries no count: ask for it alone.
            None if q.start_index > 1 => {
                let mut qb = QueryBuilder::<Postgres>::new("SELECT count(*)");
                where_clause(&mut qb)?;
                qb.build_query_scalar::<i64>().fetch_one(&self.pool).await? as u64
            }
            None => 0,
        };
        let users = rows.iter().map(row_to_user).collect::<Result<Vec<_>>>()?;
        Ok(Page { total, users })
    }

    async fn update(
        &self,
        tenant: &str,
        id: Uuid,
        if_match: Option<&IfMatch>,
        change: &Change<'_>,
    ) -> Result<StoredUser> {
        for _ in 0..MAX_UPDATE_TRIES {
            let current = self.get(tenant, id).await?.ok_or(StoreError::NotFound)?;
            if let Some(m) = if_match
                && !m.matches(current.version)
            {
                return Err(StoreError::PreconditionFailed);
            }
            let Some(next) = change(&current)? else {
                return Ok(current);
            };
            let row = sqlx::query(UPDATE_SQL)
                .bind(tenant)
                .bind(id)
                .bind(&next.user_name)
                .bind(&next.external_id)
                .bind(next.active)
                .bind(Value::Object(next.resource))
                .bind(current.version)
                .fetch_optional(&self.pool)
                .await
                .map_err(map_unique)?;
            if let Some(row) = row {
                return row_to_user(&row);
            }
            // Someone else wrote first: read again and re-apply the change.
        }
        Err(StoreError::Contention)
    }

    async fn delete(&self, tenant: &str, id: Uuid, if_match: Option<&IfMatch>) -> Result<()> {
        let versions: Option<Vec<i64>> = match if_match {
            None | Some(IfMatch::Any) => None,
            Some(IfMatch::Versions(v)) => Some(v.clone()),
        };
        let n: i64 = sqlx::query_scalar(DELETE_SQL)
            .bind(tenant)
            .bind(id)
            .bind(versions)
            .fetch_one(&self.pool)
            .await?;
        if n == 1 {
            return Ok(());
        }
        match (if_match, self.get(tenant, id).await?) {
            (Some(_), Some(_)) => Err(StoreError::PreconditionFailed),
            _ => Err(StoreError::NotFound),
        }
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
