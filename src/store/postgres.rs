//! The Postgres backend. Each SCIM write is one statement that changes the user row and
//! its outbox row together; updates use optimistic concurrency on `version`, so no row
//! lock is held while the change is computed.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde_json::{Map, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, QueryBuilder, Row};
use uuid::Uuid;

use super::outbox::{Outbox, PgOutbox, SyncCount};
use super::page_cursor::{ANCHORS, GENERATION, PageCursors, PageRead};
use super::password::PasswordCipher;
use super::wake::PgWake;
use super::{Change, IfMatch, ListQuery, Page, Result, StoreError, UserStore, Warming};
use crate::config::DatabaseSettings;
use crate::scim::resource::{StoredUser, UserGroup, UserInput};

/// The unique index behind SCIM's `uniqueness` error for userName.
const USER_NAME_KEY: &str = "users_tenant_user_name_key";
/// How long a warm-up waits for each connection it opens.
const WARM_UP_WAIT: Duration = Duration::from_secs(1);
/// Optimistic update attempts before falling back to the row lock.
const OPTIMISTIC_TRIES: usize = 3;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
    cipher: PasswordCipher,
    /// Where the next page of a tenant walk starts (see [`PageCursors`]).
    cursors: Arc<PageCursors<(DateTime<Utc>, Uuid)>>,
    warming: Warming,
    /// Told after every commit that makes a user's delivery due.
    wake: PgWake,
}

/// A pool for the configured database. It connects lazily, so the service starts (and
/// reports not ready) while the database is still coming up.
pub fn connect_lazy(settings: &DatabaseSettings) -> Result<PgPool, sqlx::Error> {
    Ok(pool_options(settings).connect_lazy_with(connect_options(settings)?))
}

/// The pool of a serving process: [`connect_lazy`], where every connection runs the hot
/// statements once as soon as it is opened ([`warm_connection`], on `tenant`), so a
/// connection the pool opens later (as it grows, or in place of one past its lifetime)
/// is as warm as those of the warm-up at start; and the pool keeps
/// [`super::warm_connections`] of them open instead of closing them when idle.
pub fn connect_serving(settings: &DatabaseSettings, tenant: &str) -> Result<PgPool, sqlx::Error> {
    let tenant: Arc<str> = tenant.into();
    Ok(pool_options(settings)
        .min_connections(super::warm_connections(settings.max_connections))
        .after_connect(move |conn, _| {
            let tenant = tenant.clone();
            Box::pin(async move {
                match warm_connection(conn, &tenant).await {
                    Ok(()) => Ok(()),
                    // The connection is broken: the pool opens another.
                    Err(StoreError::Unavailable(e)) => Err(e),
                    // A statement failed (the schema is not migrated yet, say): the
                    // connection still works, only colder.
                    Err(e) => {
                        tracing::warn!(error = %e, "warm-up of a new connection failed");
                        Ok(())
                    }
                }
            })
        })
        .connect_lazy_with(connect_options(settings)?))
}

/// The connection's options: the URL's, named `ameyo-scim`, and with PostgreSQL's JIT
/// compiler off unless the URL's `options` set `jit` themselves.
///
/// Every statement here reads or writes a handful of rows; JIT pays off only for long
/// analytical queries, yet PostgreSQL decides on it from the planner's cost estimate,
/// and an estimate over a table autovacuum has not analysed yet (a group that just grew
/// by 100,000 members) can pass the JIT thresholds: each execution of a lookup then
/// compiled for about 170 ms (its run took 0.2 ms), which on two cores held a restarted
/// service back from ready for 38 s. Off, a misestimate costs the plan, not a compiler.
fn connect_options(settings: &DatabaseSettings) -> Result<PgConnectOptions, sqlx::Error> {
    let options: PgConnectOptions = settings.url.expose_secret().parse()?;
    let options = options.application_name("ameyo-scim");
    let sets_jit = options.get_options().is_some_and(|o| o.contains("jit"));
    Ok(if sets_jit {
        options
    } else {
        options.options([("jit", "off")])
    })
}

fn pool_options(settings: &DatabaseSettings) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(Duration::from_secs(settings.acquire_timeout_secs))
}

/// Apply pending migrations on a connection of their own, outside the serving pool (so
/// that pool opens its connections on the migrated schema, and warms them there). It
/// waits for the database as a pool does, up to `acquire_timeout_secs`.
pub async fn migrate_url(settings: &DatabaseSettings) -> Result<(), sqlx::migrate::MigrateError> {
    let pool = pool_options(settings)
        .max_connections(1)
        .connect_lazy_with(connect_options(settings)?);
    let migrated = MIGRATOR.run(&pool).await;
    pool.close().await;
    migrated
}

/// Run each hot statement once on `conn`: the lookups of [`super::warm_up_queries`]
/// (their page and their count), a user by id, the unfiltered page and its counters.
/// A new connection's first statements load the catalog and plan from scratch; after
/// this, requests find them cached.
pub async fn warm_connection(conn: &mut sqlx::PgConnection, tenant: &str) -> Result<()> {
    let unfiltered = |start_index| ListQuery {
        filter: None,
        sort_by: None,
        descending: false,
        start_index,
        count: 1,
    };
    for q in super::warm_up_queries() {
        count_query(tenant, &q)?
            .build_query_scalar::<i64>()
            .persistent(false)
            .fetch_one(&mut *conn)
            .await?;
        page_query("", tenant, &q)?
            .build()
            .persistent(false)
            .fetch_all(&mut *conn)
            .await?;
    }
    sqlx::query(GET_SQL)
        .bind(tenant)
        .bind(Uuid::nil())
        .fetch_optional(&mut *conn)
        .await?;
    sqlx::query_scalar::<_, Option<DateTime<Utc>>>(HORIZON_SQL)
        .fetch_one(&mut *conn)
        .await?;
    sqlx::query_as::<_, (i64, i64)>(COUNTS_SQL)
        .bind(tenant)
        .fetch_one(&mut *conn)
        .await?;
    for start in [1, 2] {
        page_query("", tenant, &unfiltered(start))?
            .build()
            .fetch_all(&mut *conn)
            .await?;
    }
    sqlx::query(PAGE_AFTER_SQL)
        .bind(tenant)
        .bind(Utc::now())
        .bind(Uuid::max())
        .bind(1i64)
        .fetch_all(&mut *conn)
        .await?;
    Ok(())
}

impl PgStore {
    /// Store `change(current)` if `current` is still the latest version. `Ok(None)`:
    /// someone else wrote first.
    async fn try_update<'e, E>(
        &self,
        executor: E,
        tenant: &str,
        current: StoredUser,
        if_match: Option<&IfMatch>,
        change: &Change<'_>,
    ) -> Result<Option<StoredUser>>
    where
        E: sqlx::PgExecutor<'e>,
    {
        if let Some(m) = if_match
            && !m.matches(current.version)
        {
            return Err(StoreError::PreconditionFailed);
        }
        let Some(next) = change(&current)? else {
            // Nothing changed, but the IdP pushed it again: a user stuck as a dead
            // letter gets another go.
            super::outbox::rearm_if_dead(executor, tenant, current.id).await?;
            return Ok(Some(current));
        };
        let sealed = next
            .password
            .as_ref()
            .map(|p| self.cipher.seal(current.id.as_bytes(), p));
        let row = sqlx::query(UPDATE_SQL)
            .bind(tenant)
            .bind(current.id)
            .bind(&next.user_name)
            .bind(&next.external_id)
            .bind(next.active)
            .bind(Value::Object(next.resource))
            .bind(current.version)
            .bind(sealed)
            .fetch_optional(executor)
            .await
            .map_err(map_unique)?;
        row.as_ref().map(row_to_user).transpose()
    }

    pub fn new(pool: PgPool, cipher: PasswordCipher) -> Self {
        Self {
            wake: PgWake::new(pool.clone()),
            pool,
            cipher,
            cursors: Default::default(),
            warming: Default::default(),
        }
    }

    /// After an update's commit: wake the workers if it wrote a new version (an update
    /// that changed nothing marks nothing pending; re-arming a dead row notifies in its
    /// own statement).
    fn wrote(&self, read: i64, user: &StoredUser) {
        if user.version != read {
            self.wake.due();
        }
    }

    /// Wake workers through `wake` (shared with the outbox of the same database, whose
    /// [`Outbox::listen`](super::outbox::Outbox::listen) hears it).
    pub fn with_wake(mut self, wake: PgWake) -> Self {
        self.wake = wake;
        self
    }

    pub fn cipher(&self) -> &PasswordCipher {
        &self.cipher
    }

    /// Remember an anchor every `every` users instead of every
    /// [`page_cursor::ANCHOR_EVERY`](super::page_cursor::ANCHOR_EVERY) (tests use a
    /// few users).
    pub fn with_anchor_every(mut self, every: u64) -> Self {
        self.cursors = Arc::new(PageCursors::new(GENERATION, every, ANCHORS));
        self
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
/// compile time (sqlx accepts only static SQL without an explicit audit). The user's
/// groups: its membership rows, each group looked up by its key (a join would let the
/// planner scan and hash a small groups table once per listed user).
macro_rules! user_columns {
    () => {
        "u.id, u.resource, u.version, u.created, u.last_modified, u.active,
         (SELECT coalesce(jsonb_agg((SELECT jsonb_build_object('value', g.id,
                                                               'display', g.display_name,
                                                               'externalId', g.external_id)
                                     FROM groups g WHERE g.id = gm.group_id)),
                          '[]'::jsonb)
          FROM group_members gm WHERE gm.user_id = u.id) AS groups"
    };
}

use super::outbox::{insert_pending, mark_pending};

/// The one statement a SCIM create commits (the benchmark runs it in `pgbench` too).
pub const CREATE_SQL: &str = concat!(
    "WITH u AS (
        INSERT INTO users (id, tenant_id, user_name, external_id, active, resource,
                           version, created, last_modified)
        VALUES ($1, $2, $3, $4, $5, $6, 1, now(), now())
        RETURNING *),
     ",
    insert_pending!("$7"),
    "
     SELECT ",
    user_columns!(),
    " FROM u"
);

const GET_SQL: &str = concat!(
    "SELECT ",
    user_columns!(),
    " FROM users u WHERE u.tenant_id = $1 AND u.id = $2 AND u.deleted_at IS NULL"
);

const GET_FOR_UPDATE_SQL: &str = concat!(
    "SELECT ",
    user_columns!(),
    " FROM users u WHERE u.tenant_id = $1 AND u.id = $2 AND u.deleted_at IS NULL FOR UPDATE"
);

const UPDATE_SQL: &str = concat!(
    "WITH u AS (
        UPDATE users SET user_name = $3, external_id = $4, active = $5, resource = $6,
            version = version + 1, last_modified = now()
        WHERE tenant_id = $1 AND id = $2 AND version = $7 AND deleted_at IS NULL
        RETURNING *), ",
    mark_pending!(keep_or_set_password "$8"),
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
    // A deleted user's password is never delivered: erase it now.
    mark_pending!(erase_password),
    " SELECT count(*) FROM u"
);

/// A deleted user leaves its groups: a statement of its own after the user's row lock
/// is held, so it also sees a membership a concurrent group change committed while
/// this delete waited for that lock. The groups get a new version, unless a change of
/// theirs is under way (which gives them one): never waiting on a group's row lock
/// while holding the user's keeps this free of deadlocks with group changes, which
/// lock the group first.
const LEAVE_GROUPS_SQL: &str = "
WITH gone AS (DELETE FROM group_members WHERE user_id = $1 RETURNING group_id)
UPDATE groups SET version = version + 1, last_modified = now()
WHERE id IN (SELECT g.id FROM groups g WHERE g.id IN (SELECT group_id FROM gone)
             ORDER BY g.id FOR UPDATE SKIP LOCKED)";

pub(crate) fn row_to_user(row: &sqlx::postgres::PgRow) -> Result<StoredUser> {
    let resource: Value = row.try_get("resource")?;
    let resource = match resource {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    Ok(StoredUser {
        id: row.try_get("id")?,
        resource,
        version: row.try_get("version")?,
        active: row.try_get("active")?,
        created: row.try_get::<DateTime<Utc>, _>("created")?,
        last_modified: row.try_get::<DateTime<Utc>, _>("last_modified")?,
        groups: UserGroup::parse_list(row.try_get("groups")?),
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

/// The tenant's live users and its shift counter: the sums over its slots.
const COUNTS_SQL: &str = "SELECT coalesce(sum(live), 0)::bigint, coalesce(sum(shifts), 0)::bigint
                          FROM user_counts WHERE tenant_id = $1";

/// An unfiltered page that starts after a remembered key: a seek along the
/// (tenant, created, id) index.
const PAGE_AFTER_SQL: &str = concat!(
    "SELECT ",
    user_columns!(),
    " FROM users u WHERE u.tenant_id = $1 AND u.deleted_at IS NULL
       AND (u.created, u.id) > ($2, $3)
     ORDER BY u.created, u.id LIMIT $4"
);

/// The keys of the tenant's live users at every `every`-th position after a remembered
/// key (`ANCHORS_AFTER_SQL`) or from the first user (`ANCHORS_FROM_FIRST_SQL`), up to
/// `upto` positions on, in order: one seek along the (tenant, created, id) index per
/// anchor, each skipping `every - 1` keys in an index-only scan. (A `row_number()`
/// window over the same scan costs four times as much.)
macro_rules! anchors_sql {
    ($after:literal, $every:literal, $upto:literal) => {
        concat!(
            "WITH RECURSIVE a(created, id, n) AS (
                (SELECT created, id, ",
            $every,
            "::bigint FROM users
                 WHERE tenant_id = $1 AND deleted_at IS NULL",
            $after,
            " ORDER BY created, id OFFSET ",
            $every,
            " - 1 LIMIT 1)
              UNION ALL
                SELECT k.created, k.id, a.n + ",
            $every,
            " FROM a CROSS JOIN LATERAL (
                    SELECT created, id FROM users
                    WHERE tenant_id = $1 AND deleted_at IS NULL
                      AND (created, id) > (a.created, a.id)
                    ORDER BY created, id OFFSET ",
            $every,
            " - 1 LIMIT 1) AS k
                WHERE a.n + ",
            $every,
            " <= ",
            $upto,
            ")
             SELECT created, id FROM a ORDER BY n"
        )
    };
}

const ANCHORS_AFTER_SQL: &str = anchors_sql!(" AND (created, id) > ($2, $3)", "$4", "$5");
const ANCHORS_FROM_FIRST_SQL: &str = anchors_sql!("", "$2", "$3");

/// The key `offset` positions on after a remembered key (`KEY_AFTER_SQL`) or from the
/// first user (`KEY_FROM_FIRST_SQL`): an index-only scan.
const KEY_AFTER_SQL: &str = "
SELECT created, id FROM users
WHERE tenant_id = $1 AND deleted_at IS NULL AND (created, id) > ($2, $3)
ORDER BY created, id OFFSET $4 LIMIT 1";
const KEY_FROM_FIRST_SQL: &str = "
SELECT created, id FROM users WHERE tenant_id = $1 AND deleted_at IS NULL
ORDER BY created, id OFFSET $2 LIMIT 1";

/// Before this time no transaction that could still commit a user had started: the
/// earliest start of the open transactions of the other sessions on this database, or
/// now. A user committed later has `created` at or after it (a create takes its
/// transaction's now()), so a remembered key older than it stays ahead of every such
/// user. NULL when the sessions of another role cannot be seen (without
/// pg_read_all_stats): then no key is remembered.
const HORIZON_SQL: &str = "
SELECT CASE WHEN bool_or(backend_type IS NULL) THEN NULL
            ELSE least(now(), min(xact_start)) END
FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()";

fn count_query(tenant: &str, q: &ListQuery) -> Result<QueryBuilder<Postgres>> {
    Ok(super::filter_sql::count_query("", tenant, q)?)
}

/// One page of users in a stable order.
fn page_query(prefix: &'static str, tenant: &str, q: &ListQuery) -> Result<QueryBuilder<Postgres>> {
    Ok(super::filter_sql::page_query(
        prefix,
        user_columns!(),
        tenant,
        q,
    )?)
}

impl PgStore {
    /// A page of all the tenant's users in the default order. `totalResults` comes from
    /// the tenant's counters, read in one snapshot with the page.
    async fn list_all(&self, tenant: &str, q: &ListQuery) -> Result<Page> {
        Ok(self.list_unfiltered(tenant, q).await?.0)
    }

    /// [`Self::list_all`], and how the page was found. The page starts after the key
    /// of the user just before it: a remembered one (see [`PageCursors`]) or one read
    /// along the index from the nearest remembered anchor (or the first user), reading
    /// on the way the anchors not yet remembered. The keys read are remembered, as is
    /// the last key of a full page, all with the shift counter of the same snapshot.
    pub async fn list_unfiltered(&self, tenant: &str, q: &ListQuery) -> Result<(Page, PageRead)> {
        let start = q.start_index.max(1);
        // Before the snapshot: see HORIZON_SQL.
        let horizon: Option<DateTime<Utc>> = if q.count > 0 {
            sqlx::query_scalar(HORIZON_SQL)
                .fetch_one(&self.pool)
                .await?
        } else {
            None
        };
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await?;
        let (live, shifts): (i64, i64) = sqlx::query_as(COUNTS_SQL)
            .bind(tenant)
            .fetch_one(&mut *tx)
            .await?;
        let total = live.max(0) as u64;
        if q.count == 0 {
            tx.commit().await?;
            return Ok(PageRead::total_only(total));
        }
        let limit = i64::try_from(q.count).unwrap_or(i64::MAX);
        let every = self.cursors.anchor_every();
        let (mut at, mut known) = self.cursors.before(tenant, start, shifts);
        // Anchors to read: one request at a time per tenant (when they can be
        // remembered), so concurrent jumps wait for them instead of each scanning.
        let mut reading = None;
        if start - 1 - at >= every && horizon.is_some() {
            reading = Some(self.cursors.reading_anchors(tenant).await);
            (at, known) = self.cursors.before(tenant, start, shifts);
        }
        let skip = start - 1 - at;
        // The anchors between the remembered key and the page, then the key just
        // before the page, fewer than `every` keys after the last of them.
        let anchors: Vec<(DateTime<Utc>, Uuid)> = if skip >= every {
            let step = i64::try_from(every).unwrap_or(i64::MAX);
            let upto = i64::try_from(skip).unwrap_or(i64::MAX);
            match known {
                Some((created, id)) => {
                    sqlx::query_as(ANCHORS_AFTER_SQL)
                        .bind(tenant)
                        .bind(created)
                        .bind(id)
                        .bind(step)
                        .bind(upto)
                        .fetch_all(&mut *tx)
                        .await?
                }
                None => {
                    sqlx::query_as(ANCHORS_FROM_FIRST_SQL)
                        .bind(tenant)
                        .bind(step)
                        .bind(upto)
                        .fetch_all(&mut *tx)
                        .await?
                }
            }
        } else {
            vec![]
        };
        let from = anchors.last().copied().or(known);
        let rest = skip - every * anchors.len() as u64;
        let before_page = match (rest, from) {
            (0, from) => from,
            // Fewer users than the anchors asked for: none left for the key.
            _ if (anchors.len() as u64) < skip / every => None,
            (rest, from) => {
                let offset = i64::try_from(rest - 1).unwrap_or(i64::MAX);
                match from {
                    Some((created, id)) => {
                        sqlx::query_as(KEY_AFTER_SQL)
                            .bind(tenant)
                            .bind(created)
                            .bind(id)
                            .bind(offset)
                            .fetch_optional(&mut *tx)
                            .await?
                    }
                    None => {
                        sqlx::query_as(KEY_FROM_FIRST_SQL)
                            .bind(tenant)
                            .bind(offset)
                            .fetch_optional(&mut *tx)
                            .await?
                    }
                }
            }
        };
        let rows = match before_page {
            Some((created, id)) => {
                sqlx::query(PAGE_AFTER_SQL)
                    .bind(tenant)
                    .bind(created)
                    .bind(id)
                    .bind(limit)
                    .fetch_all(&mut *tx)
                    .await?
            }
            // The first page. Its statement has one shape: it is prepared once.
            None if skip == 0 => {
                page_query("", tenant, q)?
                    .build()
                    .fetch_all(&mut *tx)
                    .await?
            }
            None => vec![],
        };
        tx.commit().await?;
        let users = rows.iter().map(row_to_user).collect::<Result<Vec<_>>>()?;
        if let Some(horizon) = horizon {
            // Keys are in order: those older than the horizon are a prefix.
            let mut anchors = anchors;
            anchors.retain(|(created, _)| *created < horizon);
            self.cursors.put_anchors(tenant, shifts, at, anchors);
            drop(reading);
            if let Some(key) = before_page
                && skip > 0
                && key.0 < horizon
            {
                self.cursors.put(tenant, start, key, shifts);
            }
            if let Some(last) = users.last()
                && users.len() as u64 == q.count
                && last.created < horizon
            {
                self.cursors.put(
                    tenant,
                    start.saturating_add(q.count),
                    (last.created, last.id),
                    shifts,
                );
            }
        }
        let read = PageRead {
            after: at,
            skipped: skip,
        };
        Ok((Page { total, users }, read))
    }

    /// Open the connections a warm-up keeps: acquire the ones the pool is missing of
    /// [`super::warm_connections`] all at once, holding each so the pool opens new ones
    /// instead of handing one back twice; a serving pool ([`connect_serving`]) warms
    /// each as it opens it. An acquisition still waiting after [`WARM_UP_WAIT`] gives
    /// up: the workers hold the rest of the pool (open and warm too), and holding on
    /// would keep them waiting. Returns the connections open.
    async fn warm_connections(&self) -> Result<usize> {
        let n = super::warm_connections(self.pool.options().get_max_connections());
        let mut opening = tokio::task::JoinSet::new();
        for _ in self.pool.size()..n {
            let pool = self.pool.clone();
            opening.spawn(async move { tokio::time::timeout(WARM_UP_WAIT, pool.acquire()).await });
        }
        let (mut held, mut waited) = (Vec::new(), false);
        while let Some(conn) = opening.join_next().await {
            match conn.expect("acquiring a connection does not panic") {
                Ok(conn) => held.push(conn?),
                Err(_) => waited = true,
            }
        }
        if waited && held.is_empty() {
            // Not one connection: the database is not answering yet.
            return Err(StoreError::Unavailable(sqlx::Error::PoolTimedOut));
        }
        Ok(self.pool.size() as usize)
    }

    /// Whether the page at `start` of `tenant` would begin at a remembered key, as of
    /// `shifts` (for tests).
    pub fn remembers_page(&self, tenant: &str, start: u64, shifts: i64) -> bool {
        self.cursors.get(tenant, start, shifts).is_some()
    }

    /// The tenant's live users and shift counter, as the counters hold them.
    pub async fn user_counts(&self, tenant: &str) -> Result<(i64, i64)> {
        Ok(sqlx::query_as(COUNTS_SQL)
            .bind(tenant)
            .fetch_one(&self.pool)
            .await?)
    }

    /// For the metrics: one pass over the outbox, grouped.
    pub async fn sync_counts(&self) -> Result<Vec<SyncCount>> {
        self.outbox().counts().await
    }

    /// The outbox of this database.
    pub fn outbox(&self) -> PgOutbox {
        PgOutbox::new(self.pool.clone()).with_wake(self.wake.clone())
    }

    /// The plan Postgres chooses for a list query (`EXPLAIN`, optionally `ANALYZE`),
    /// for checking index use in tests and benchmarks.
    pub async fn explain_list(&self, tenant: &str, q: &ListQuery, analyze: bool) -> Result<String> {
        let prefix = if analyze {
            "EXPLAIN (ANALYZE, BUFFERS) "
        } else {
            "EXPLAIN "
        };
        let lines: Vec<String> = page_query(prefix, tenant, q)?
            .build()
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect::<std::result::Result<_, _>>()?;
        Ok(lines.join("\n"))
    }
}

#[async_trait]
impl UserStore for PgStore {
    async fn create(&self, tenant: &str, user: UserInput) -> Result<StoredUser> {
        let id = Uuid::new_v4();
        let sealed = user
            .password
            .as_ref()
            .map(|p| self.cipher.seal(id.as_bytes(), p));
        let row = sqlx::query(CREATE_SQL)
            .bind(id)
            .bind(tenant)
            .bind(&user.user_name)
            .bind(&user.external_id)
            .bind(user.active)
            .bind(Value::Object(user.resource))
            .bind(sealed)
            .fetch_one(&self.pool)
            .await
            .map_err(map_unique)?;
        self.wake.due();
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
        if q.filter.is_none() && q.sort_by.is_none() {
            return self.list_all(tenant, q).await;
        }
        // A lookup by a unique key: its matches tell the total, in one statement.
        if let Some(probe) = super::single_match_probe(q) {
            let rows = page_query("", tenant, &probe)?
                .build()
                .persistent(false)
                .fetch_all(&self.pool)
                .await?;
            let users = rows.iter().map(row_to_user).collect::<Result<Vec<_>>>()?;
            if let Some(page) = super::page_of_probe(q, users) {
                return Ok(page);
            }
        }
        // Filters differ per request and their values steer the plan (an e-mail
        // lookup must use its index), so these statements are planned each time with
        // the real values instead of being cached with a generic plan.
        let mut count = count_query(tenant, q)?;
        let count = count
            .build_query_scalar::<i64>()
            .persistent(false)
            .fetch_one(&self.pool);
        if q.count == 0 {
            return Ok(Page {
                total: count.await? as u64,
                users: vec![],
            });
        }
        // The page and the total on two connections at once: the page stops early
        // along an index, the count is an index-only scan where the filter allows.
        let mut page = page_query("", tenant, q)?;
        let page = page.build().persistent(false).fetch_all(&self.pool);
        let (rows, total) = tokio::try_join!(page, count)?;
        let users = rows.iter().map(row_to_user).collect::<Result<Vec<_>>>()?;
        Ok(Page {
            total: total as u64,
            users,
        })
    }

    async fn update(
        &self,
        tenant: &str,
        id: Uuid,
        if_match: Option<&IfMatch>,
        change: &Change<'_>,
    ) -> Result<StoredUser> {
        // Optimistic first: no lock is held while `change` runs.
        for _ in 0..OPTIMISTIC_TRIES {
            let current = self.get(tenant, id).await?.ok_or(StoreError::NotFound)?;
            let read = current.version;
            match self
                .try_update(&self.pool, tenant, current, if_match, change)
                .await?
            {
                Some(user) => {
                    self.wrote(read, &user);
                    return Ok(user);
                }
                None => continue, // another writer got there first: read again
            }
        }
        // Heavy contention on one user: take its row lock so this writer cannot lose
        // again. `change` is pure computation, so the lock is held only briefly.
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(GET_FOR_UPDATE_SQL)
            .bind(tenant)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let current = row
            .as_ref()
            .map(row_to_user)
            .transpose()?
            .ok_or(StoreError::NotFound)?;
        let read = current.version;
        let user = self
            .try_update(&mut *tx, tenant, current, if_match, change)
            .await?
            .ok_or_else(|| StoreError::Database(sqlx::Error::RowNotFound))?;
        tx.commit().await?;
        self.wrote(read, &user);
        Ok(user)
    }

    async fn delete(&self, tenant: &str, id: Uuid, if_match: Option<&IfMatch>) -> Result<()> {
        let versions: Option<Vec<i64>> = match if_match {
            None | Some(IfMatch::Any) => None,
            Some(IfMatch::Versions(v)) => Some(v.clone()),
        };
        let mut tx = self.pool.begin().await?;
        let n: i64 = sqlx::query_scalar(DELETE_SQL)
            .bind(tenant)
            .bind(id)
            .bind(versions)
            .fetch_one(&mut *tx)
            .await?;
        if n == 1 {
            sqlx::query(LEAVE_GROUPS_SQL)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            self.wake.due();
            return Ok(());
        }
        drop(tx);
        match (if_match, self.get(tenant, id).await?) {
            (Some(_), Some(_)) => Err(StoreError::PreconditionFailed),
            _ => Err(StoreError::NotFound),
        }
    }

    async fn find(&self, tenant: Option<&str>, key: &str) -> Result<Vec<(String, Uuid)>> {
        Ok(match Uuid::parse_str(key) {
            Ok(id) => {
                sqlx::query_as(
                    "SELECT tenant_id, id FROM users WHERE id = $1 AND ($2::text IS NULL OR tenant_id = $2)",
                )
                .bind(id)
                .bind(tenant)
                .fetch_all(&self.pool)
                .await?
            }
            Err(_) => {
                sqlx::query_as(
                    "SELECT tenant_id, id FROM users
                     WHERE lower(user_name) = lower($1) AND deleted_at IS NULL
                       AND ($2::text IS NULL OR tenant_id = $2)",
                )
                .bind(key)
                .bind(tenant)
                .fetch_all(&self.pool)
                .await?
            }
        })
    }

    async fn read_any(&self, tenant: &str, id: Uuid) -> Result<Option<(StoredUser, bool)>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            user_columns!(),
            ", u.deleted_at IS NOT NULL AS deleted FROM users u WHERE u.tenant_id = $1 AND u.id = $2"
        ))
        .bind(tenant)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            None => Ok(None),
            Some(r) => Ok(Some((row_to_user(&r)?, r.try_get("deleted")?))),
        }
    }

    fn warm_up(self: Arc<Self>, _tenants: Vec<String>) -> tokio::task::JoinHandle<()> {
        self.warming.clone().spawn(move || {
            let store = self.clone();
            async move { store.warm_connections().await }
        })
    }

    async fn ready(&self) -> Result<(), String> {
        self.warming.check()?;
        let applied: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(&self.pool)
                .await
                .map_err(|e| format!("the database does not answer: {e}"))?;
        super::all_applied(&MIGRATOR, &applied)
    }
}

/// The statements a filtered list runs, as the database receives them: for a lookup
/// by a unique key its one probe, otherwise its page and its count; `$1` the tenant,
/// then the filter's values, then the page's LIMIT and OFFSET. For the benchmark's
/// `pgbench` baseline.
pub fn list_statements(tenant: &str, q: &ListQuery) -> Result<Vec<String>> {
    if let Some(probe) = super::single_match_probe(q) {
        return Ok(vec![
            page_query("", tenant, &probe)?.sql().as_str().to_string(),
        ]);
    }
    Ok(vec![
        page_query("", tenant, q)?.sql().as_str().to_string(),
        count_query(tenant, q)?.sql().as_str().to_string(),
    ])
}
