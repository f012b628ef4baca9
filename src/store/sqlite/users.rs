//! The embedded store's SCIM users: [`SqliteStore`], the [`UserStore`] of one SQLite
//! file, answering as [`crate::store::PgStore`] does for the same data.
//!
//! Durability: the pool comes from [`super::connect`], which runs the database in WAL
//! mode with `synchronous = FULL`: a commit returns only once its WAL frames are on disk
//! (fsync), so every write this store acknowledged survives a SIGKILL of the process and
//! a power cut of the machine.
//!
//! Each write is one `BEGIN IMMEDIATE` transaction that changes the user row and its
//! outbox row together. It takes SQLite's single write lock before reading, so its
//! read-check-write cannot lose a race (a deferred transaction would fail with
//! SQLITE_BUSY_SNAPSHOT instead of waiting), and it holds the lock for a few statements
//! only: nothing but the database is awaited inside. Reads never wait for writers.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use serde_json::{Map, Value};
use sqlx::error::ErrorKind;
use sqlx::{QueryBuilder, Sqlite, SqliteConnection, SqlitePool};
use tokio::sync::Notify;
use uuid::Uuid;

use super::MIGRATOR;
use super::filter::{fold_case, search_document};
use super::outbox::{PendingPassword, insert_pending, mark_pending, rearm_if_dead};
use crate::scim::resource::{StoredUser, UserGroup, UserInput};
use crate::store::page_cursor::{ANCHORS, GENERATION, PageCursors, PageRead};
use crate::store::password::PasswordCipher;
use crate::store::{Change, IfMatch, ListQuery, Page, Result, StoreError, UserStore, Warming};

#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    cipher: PasswordCipher,
    /// Wakes this process's delivery workers after a commit that makes work due (the
    /// outbox's stand-in for PostgreSQL's NOTIFY).
    wake: Option<Arc<Notify>>,
    write: super::WriteLock,
    /// Where the next page of a tenant walk starts: the (created, id) text of the key.
    cursors: Arc<PageCursors<(String, String)>>,
    warming: Warming,
}

/// The format of the users' own times (created, last_modified, deleted_at): UTC with
/// microseconds, fixed width so that text order is time order. PostgreSQL keeps
/// microseconds too, so users created within one millisecond keep their order.
pub(crate) fn format_micros(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

fn parse_time(s: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Database(sqlx::Error::Decode(Box::new(e))))
}

/// The columns a [`StoredUser`] is read from, as a macro for `concat!`: the user's
/// groups as a JSON array, as PostgreSQL aggregates them.
macro_rules! user_columns {
    () => {
        "u.id, u.resource, u.version, u.created, u.last_modified, u.active,
         (SELECT json_group_array(json_object('value', g.id, 'display', g.display_name,
                                              'externalId', g.external_id))
          FROM group_members gm JOIN groups g ON g.id = gm.group_id
          WHERE gm.user_id = u.id) AS groups"
    };
}

type UserRow = (String, String, i64, String, String, bool, String);

fn row_to_user(
    (id, resource, version, created, last_modified, active, groups): UserRow,
) -> Result<StoredUser> {
    let decode =
        |e: Box<dyn std::error::Error + Send + Sync>| StoreError::Database(sqlx::Error::Decode(e));
    let resource = match serde_json::from_str(&resource).map_err(|e| decode(Box::new(e)))? {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    let groups = serde_json::from_str(&groups).map_err(|e| decode(Box::new(e)))?;
    Ok(StoredUser {
        id: Uuid::parse_str(&id).map_err(|e| decode(Box::new(e)))?,
        resource,
        version,
        active,
        created: parse_time(&created)?,
        last_modified: parse_time(&last_modified)?,
        groups: UserGroup::parse_list(groups),
    })
}

fn to_json(m: &Map<String, Value>) -> Result<String> {
    serde_json::to_string(m).map_err(|e| StoreError::Database(sqlx::Error::Encode(Box::new(e))))
}

/// A database error as the store reports it.
pub(crate) fn db_error(e: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &e {
        // The only unique rule a write can break (ids are fresh UUIDs).
        if db.kind() == ErrorKind::UniqueViolation && db.message().contains("users.user_name_key") {
            return StoreError::UserNameTaken;
        }
        // SQLITE_BUSY and SQLITE_LOCKED (primary codes 5 and 6, whatever the extended
        // code): another writer held the file longer than the busy timeout. The same
        // request may well succeed a little later, so clients get 503, not 500.
        if db
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .is_some_and(|c| matches!(c & 0xff, 5 | 6))
        {
            return StoreError::Unavailable(e);
        }
    }
    e.into()
}

const INSERT_SQL: &str = "
INSERT INTO users (id, tenant_id, user_name, user_name_key, external_id, active, resource,
                   search, version, created, last_modified)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 1, ?9, ?9)";

const GET_SQL: &str = concat!(
    "SELECT ",
    user_columns!(),
    " FROM users u WHERE u.tenant_id = ?1 AND u.id = ?2 AND u.deleted_at IS NULL"
);

const UPDATE_SQL: &str = "
UPDATE users SET user_name = ?3, user_name_key = ?4, external_id = ?5, active = ?6,
    resource = ?7, search = ?8, version = ?9, last_modified = ?10
WHERE tenant_id = ?1 AND id = ?2";

const DELETE_SQL: &str = "
UPDATE users SET deleted_at = ?3, version = ?4, last_modified = ?3
WHERE tenant_id = ?1 AND id = ?2";

/// The groups a deleted user leaves get a new version (their members changed).
const BUMP_GROUPS_SQL: &str = "
UPDATE groups SET version = version + 1, last_modified = ?2
WHERE id IN (SELECT group_id FROM group_members WHERE user_id = ?1)";

/// A deleted user is gone from every group, in the delete's transaction.
const LEAVE_GROUPS_SQL: &str = "DELETE FROM group_members WHERE user_id = ?1";

/// The tenant's live users and its shift counter.
const COUNTS_SQL: &str =
    "SELECT coalesce(sum(live), 0), coalesce(sum(shifts), 0) FROM user_counts WHERE tenant_id = ?1";

/// An unfiltered page that starts after a remembered key: a seek along the
/// (tenant, created, id) index.
const PAGE_AFTER_SQL: &str = concat!(
    "SELECT ",
    user_columns!(),
    " FROM users u WHERE u.tenant_id = ?1 AND u.deleted_at IS NULL
       AND (u.created, u.id) > (?2, ?3)
     ORDER BY u.created, u.id LIMIT ?4"
);

/// The keys of the tenant's live users at every `?4`-th position after a remembered key
/// (the empty key: from the first user), up to `?5` positions on, in order: one seek
/// along the covering (tenant, created, id) index per anchor, each skipping `?4 - 1`
/// keys. (A `row_number()` window over the same scan costs eight times as much.)
const ANCHORS_SQL: &str = "
WITH RECURSIVE a(created, id, n) AS (
    SELECT * FROM (
        SELECT created, id, ?4 FROM users
        WHERE tenant_id = ?1 AND deleted_at IS NULL AND (created, id) > (?2, ?3)
        ORDER BY created, id LIMIT 1 OFFSET ?4 - 1)
    UNION ALL
    SELECT u.created, u.id, a.n + ?4 FROM a JOIN users u ON u.rowid = (
        SELECT rowid FROM users
        WHERE tenant_id = ?1 AND deleted_at IS NULL AND (created, id) > (a.created, a.id)
        ORDER BY created, id LIMIT 1 OFFSET ?4 - 1)
    WHERE a.n + ?4 <= ?5)
SELECT created, id FROM a ORDER BY n";

/// The key `?4` positions on after a remembered key (the empty key: from the first
/// user): a scan of the covering index.
const KEY_AFTER_SQL: &str = "
SELECT created, id FROM users
WHERE tenant_id = ?1 AND deleted_at IS NULL AND (created, id) > (?2, ?3)
ORDER BY created, id LIMIT 1 OFFSET ?4";

fn count_query(prefix: &'static str, tenant: &str, q: &ListQuery) -> Result<QueryBuilder<Sqlite>> {
    Ok(super::filter::count_query(prefix, tenant, q)?)
}

fn page_query(prefix: &'static str, tenant: &str, q: &ListQuery) -> Result<QueryBuilder<Sqlite>> {
    Ok(super::filter::page_query(
        prefix,
        user_columns!(),
        tenant,
        q,
    )?)
}

async fn fetch_live(
    conn: &mut SqliteConnection,
    tenant: &str,
    id: Uuid,
) -> Result<Option<StoredUser>> {
    let row: Option<UserRow> = sqlx::query_as(GET_SQL)
        .bind(tenant)
        .bind(id.to_string())
        .fetch_optional(conn)
        .await
        .map_err(db_error)?;
    row.map(row_to_user).transpose()
}

impl SqliteStore {
    pub fn new(pool: SqlitePool, cipher: PasswordCipher) -> Self {
        Self {
            pool,
            cipher,
            wake: None,
            write: Default::default(),
            cursors: Default::default(),
            warming: Default::default(),
        }
    }

    /// Queue writes on this lock, shared with the outbox of the same file.
    pub fn with_write_lock(mut self, write: super::WriteLock) -> Self {
        self.write = write;
        self
    }

    /// Wake these workers after every write (see `SqliteOutbox::wakeup`).
    pub fn with_wakeup(mut self, wake: Arc<Notify>) -> Self {
        self.wake = Some(wake);
        self
    }

    fn work_due(&self) {
        if let Some(w) = &self.wake {
            w.notify_one();
        }
    }

    pub fn cipher(&self) -> &PasswordCipher {
        &self.cipher
    }

    /// Remember an anchor every `every` users instead of every
    /// [`page_cursor::ANCHOR_EVERY`](crate::store::page_cursor::ANCHOR_EVERY) (tests use a
    /// few users).
    pub fn with_anchor_every(mut self, every: u64) -> Self {
        self.cursors = Arc::new(PageCursors::new(GENERATION, every, ANCHORS));
        self
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Apply pending migrations.
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        MIGRATOR.run(&self.pool).await
    }

    /// A page of all the tenant's users in the default order. `totalResults` comes from
    /// the tenant's counter row, read in one snapshot with the page.
    async fn list_all(&self, tenant: &str, q: &ListQuery) -> Result<Page> {
        Ok(self.list_unfiltered(tenant, q).await?.0)
    }

    /// [`Self::list_all`], and how the page was found. The page starts after the key
    /// of the user just before it: a remembered one (see [`PageCursors`]) or one read
    /// along the index from the nearest remembered anchor (or the first user), reading
    /// on the way the anchors not yet remembered. The keys read are remembered, as is
    /// the last key of a full page, all with the shift counter of the same snapshot.
    /// Writes are serialised and a create's time is taken under the write lock, so a
    /// user committed later always comes after every key remembered before (or moves
    /// the counter).
    pub async fn list_unfiltered(&self, tenant: &str, q: &ListQuery) -> Result<(Page, PageRead)> {
        let start = q.start_index.max(1);
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let (live, shifts): (i64, i64) = sqlx::query_as(COUNTS_SQL)
            .bind(tenant)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_error)?;
        let total = live.max(0) as u64;
        if q.count == 0 {
            tx.commit().await.map_err(db_error)?;
            return Ok(PageRead::total_only(total));
        }
        let limit = i64::try_from(q.count).unwrap_or(i64::MAX);
        let every = self.cursors.anchor_every();
        let (mut at, mut known) = self.cursors.before(tenant, start, shifts);
        // Anchors to read: one request at a time per tenant, so concurrent jumps wait
        // for them instead of each scanning.
        let mut reading = None;
        if start - 1 - at >= every {
            reading = Some(self.cursors.reading_anchors(tenant).await);
            (at, known) = self.cursors.before(tenant, start, shifts);
        }
        let skip = start - 1 - at;
        // The anchors between the remembered key and the page, then the key just
        // before the page, fewer than `every` keys after the last of them.
        let anchors: Vec<(String, String)> = if skip >= every {
            let (created, id) = known.clone().unwrap_or_default();
            sqlx::query_as(ANCHORS_SQL)
                .bind(tenant)
                .bind(created)
                .bind(id)
                .bind(i64::try_from(every).unwrap_or(i64::MAX))
                .bind(i64::try_from(skip).unwrap_or(i64::MAX))
                .fetch_all(&mut *tx)
                .await
                .map_err(db_error)?
        } else {
            vec![]
        };
        let from = anchors.last().cloned().or(known);
        let rest = skip - every * anchors.len() as u64;
        let before_page = match (rest, from) {
            (0, from) => from,
            // Fewer users than the anchors asked for: none left for the key.
            _ if (anchors.len() as u64) < skip / every => None,
            (rest, from) => {
                let (created, id) = from.unwrap_or_default();
                sqlx::query_as(KEY_AFTER_SQL)
                    .bind(tenant)
                    .bind(created)
                    .bind(id)
                    .bind(i64::try_from(rest - 1).unwrap_or(i64::MAX))
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db_error)?
            }
        };
        let rows: Vec<UserRow> = match &before_page {
            Some((created, id)) => sqlx::query_as(PAGE_AFTER_SQL)
                .bind(tenant)
                .bind(created)
                .bind(id)
                .bind(limit)
                .fetch_all(&mut *tx)
                .await
                .map_err(db_error)?,
            // The first page. Its statement has one shape: it is prepared once.
            None if skip == 0 => page_query("", tenant, q)?
                .build_query_as()
                .fetch_all(&mut *tx)
                .await
                .map_err(db_error)?,
            None => vec![],
        };
        tx.commit().await.map_err(db_error)?;
        self.cursors.put_anchors(tenant, shifts, at, anchors);
        drop(reading);
        if let Some(key) = before_page
            && skip > 0
        {
            self.cursors.put(tenant, start, key, shifts);
        }
        if rows.len() as u64 == q.count
            && let Some((id, _, _, created, ..)) = rows.last()
        {
            self.cursors.put(
                tenant,
                start.saturating_add(q.count),
                (created.clone(), id.clone()),
                shifts,
            );
        }
        let users = rows.into_iter().map(row_to_user).collect::<Result<_>>()?;
        let read = PageRead {
            after: at,
            skipped: skip,
        };
        Ok((Page { total, users }, read))
    }

    /// Whether the page at `start` of `tenant` would begin at a remembered key, as of
    /// `shifts` (for tests).
    pub fn remembers_page(&self, tenant: &str, start: u64, shifts: i64) -> bool {
        self.cursors.get(tenant, start, shifts).is_some()
    }

    /// The tenant's live users and shift counter, as the counter row holds them.
    pub async fn user_counts(&self, tenant: &str) -> Result<(i64, i64)> {
        sqlx::query_as(COUNTS_SQL)
            .bind(tenant)
            .fetch_one(&self.pool)
            .await
            .map_err(db_error)
    }

    /// Open the connections a warm-up keeps (holding each, so the pool cannot hand one
    /// back twice) and run each hot statement once on it. Returns the connections.
    async fn warm_connections(&self, tenants: &[String]) -> Result<usize> {
        let tenant = tenants.first().map(String::as_str).unwrap_or("");
        let n = super::warm_connections(self.pool.options().get_max_connections());
        let mut conns = Vec::with_capacity(n as usize);
        for _ in 0..n {
            conns.push(self.pool.acquire().await.map_err(db_error)?);
        }
        let unfiltered = |start_index| ListQuery {
            filter: None,
            sort_by: None,
            descending: false,
            start_index,
            count: 1,
        };
        for conn in &mut conns {
            let conn = &mut **conn;
            for q in crate::store::warm_up_queries() {
                count_query("", tenant, &q)?
                    .build_query_scalar::<i64>()
                    .persistent(false)
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(db_error)?;
                page_query("", tenant, &q)?
                    .build_query_as::<UserRow>()
                    .persistent(false)
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(db_error)?;
            }
            fetch_live(conn, tenant, Uuid::nil()).await?;
            sqlx::query_as::<_, (i64, i64)>(COUNTS_SQL)
                .bind(tenant)
                .fetch_one(&mut *conn)
                .await
                .map_err(db_error)?;
            for start in [1, 2] {
                page_query("", tenant, &unfiltered(start))?
                    .build_query_as::<UserRow>()
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(db_error)?;
            }
            sqlx::query_as::<_, UserRow>(PAGE_AFTER_SQL)
                .bind(tenant)
                .bind("9999")
                .bind("")
                .bind(1i64)
                .fetch_all(&mut *conn)
                .await
                .map_err(db_error)?;
        }
        Ok(conns.len())
    }

    /// A write transaction, holding the write lock from its first statement.
    async fn begin_write(
        &self,
    ) -> Result<(
        tokio::sync::OwnedMutexGuard<()>,
        sqlx::Transaction<'static, Sqlite>,
    )> {
        let turn = self.write.clone().lock_owned().await;
        let tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_error)?;
        Ok((turn, tx))
    }
}

#[async_trait]
impl UserStore for SqliteStore {
    async fn create(&self, tenant: &str, user: UserInput) -> Result<StoredUser> {
        let id = Uuid::new_v4();
        let sealed = user
            .password
            .as_ref()
            .map(|p| self.cipher.seal(id.as_bytes(), p));
        let search = to_json(&search_document(&user.resource))?;
        let resource = to_json(&user.resource)?;
        let (_turn, mut tx) = self.begin_write().await?;
        // Taken under the write lock, so creation times follow the commit order.
        let now = Utc::now().trunc_subsecs(6);
        sqlx::query(INSERT_SQL)
            .bind(id.to_string())
            .bind(tenant)
            .bind(&user.user_name)
            .bind(fold_case(&user.user_name))
            .bind(&user.external_id)
            .bind(user.active)
            .bind(&resource)
            .bind(&search)
            .bind(format_micros(now))
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        insert_pending(&mut tx, id, tenant, 1, sealed.as_deref()).await?;
        tx.commit().await.map_err(db_error)?;
        self.work_due();
        Ok(StoredUser {
            id,
            resource: user.resource,
            active: user.active,
            version: 1,
            created: now,
            last_modified: now,
            groups: vec![],
        })
    }

    async fn get(&self, tenant: &str, id: Uuid) -> Result<Option<StoredUser>> {
        let mut conn = self.pool.acquire().await.map_err(db_error)?;
        fetch_live(&mut conn, tenant, id).await
    }

    async fn list(&self, tenant: &str, q: &ListQuery) -> Result<Page> {
        if q.filter.is_none() && q.sort_by.is_none() {
            return self.list_all(tenant, q).await;
        }
        // A lookup by a unique key: its matches tell the total, in one statement.
        if let Some(probe) = crate::store::single_match_probe(q) {
            let rows: Vec<UserRow> = page_query("", tenant, &probe)?
                .build_query_as()
                .persistent(false)
                .fetch_all(&self.pool)
                .await
                .map_err(db_error)?;
            let users = rows.into_iter().map(row_to_user).collect::<Result<_>>()?;
            if let Some(page) = crate::store::page_of_probe(q, users) {
                return Ok(page);
            }
        }
        let mut count = count_query("", tenant, q)?;
        let mut page = match q.count {
            0 => None,
            _ => Some(page_query("", tenant, q)?),
        };
        // One read transaction: the total and the page come from one snapshot. Filters
        // differ per request, so their statements are not cached (they would push the
        // store's own statements out of the cache).
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let total: i64 = count
            .build_query_scalar()
            .persistent(false)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_error)?;
        let rows: Vec<UserRow> = match &mut page {
            Some(page) => page
                .build_query_as()
                .persistent(false)
                .fetch_all(&mut *tx)
                .await
                .map_err(db_error)?,
            None => Vec::new(),
        };
        tx.commit().await.map_err(db_error)?;
        let users = rows.into_iter().map(row_to_user).collect::<Result<_>>()?;
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
        let (_turn, mut tx) = self.begin_write().await?;
        let current = fetch_live(&mut tx, tenant, id)
            .await?
            .ok_or(StoreError::NotFound)?;
        if let Some(m) = if_match
            && !m.matches(current.version)
        {
            return Err(StoreError::PreconditionFailed);
        }
        // `change` is pure computation: the write lock is held only briefly.
        let Some(next) = change(&current)? else {
            // Nothing changed, but the IdP pushed it again: a user stuck as a dead
            // letter gets another go.
            rearm_if_dead(&mut tx, tenant, id).await?;
            tx.commit().await.map_err(db_error)?;
            self.work_due();
            return Ok(current);
        };
        let sealed = next
            .password
            .as_ref()
            .map(|p| self.cipher.seal(id.as_bytes(), p));
        let search = to_json(&search_document(&next.resource))?;
        let resource = to_json(&next.resource)?;
        let version = current.version + 1;
        let now = Utc::now().trunc_subsecs(6);
        sqlx::query(UPDATE_SQL)
            .bind(tenant)
            .bind(id.to_string())
            .bind(&next.user_name)
            .bind(fold_case(&next.user_name))
            .bind(&next.external_id)
            .bind(next.active)
            .bind(&resource)
            .bind(&search)
            .bind(version)
            .bind(format_micros(now))
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        let password = match &sealed {
            Some(p) => PendingPassword::Set(p),
            None => PendingPassword::Keep,
        };
        mark_pending(&mut tx, id, version, password).await?;
        tx.commit().await.map_err(db_error)?;
        self.work_due();
        Ok(StoredUser {
            id,
            resource: next.resource,
            active: next.active,
            version,
            created: current.created,
            last_modified: now,
            groups: current.groups,
        })
    }

    async fn delete(&self, tenant: &str, id: Uuid, if_match: Option<&IfMatch>) -> Result<()> {
        let (_turn, mut tx) = self.begin_write().await?;
        let current: Option<i64> = sqlx::query_scalar(
            "SELECT version FROM users WHERE tenant_id = ?1 AND id = ?2 AND deleted_at IS NULL",
        )
        .bind(tenant)
        .bind(id.to_string())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_error)?;
        let Some(current) = current else {
            return Err(StoreError::NotFound);
        };
        if let Some(m) = if_match
            && !m.matches(current)
        {
            return Err(StoreError::PreconditionFailed);
        }
        let version = current + 1;
        let now = format_micros(Utc::now().trunc_subsecs(6));
        sqlx::query(DELETE_SQL)
            .bind(tenant)
            .bind(id.to_string())
            .bind(&now)
            .bind(version)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        sqlx::query(BUMP_GROUPS_SQL)
            .bind(id.to_string())
            .bind(&now)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        sqlx::query(LEAVE_GROUPS_SQL)
            .bind(id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        // A deleted user's password is never delivered: erase it now.
        mark_pending(&mut tx, id, version, PendingPassword::Erase).await?;
        tx.commit().await.map_err(db_error)?;
        self.work_due();
        Ok(())
    }

    async fn find(&self, tenant: Option<&str>, key: &str) -> Result<Vec<(String, Uuid)>> {
        let rows: Vec<(String, String)> = match Uuid::parse_str(key) {
            Ok(id) => sqlx::query_as(
                "SELECT tenant_id, id FROM users WHERE id = ?1 AND (?2 IS NULL OR tenant_id = ?2)",
            )
            .bind(id.to_string())
            .bind(tenant)
            .fetch_all(&self.pool)
            .await,
            Err(_) => {
                sqlx::query_as(
                    "SELECT tenant_id, id FROM users
                     WHERE user_name_key = ?1 AND deleted_at IS NULL
                       AND (?2 IS NULL OR tenant_id = ?2)",
                )
                .bind(fold_case(key))
                .bind(tenant)
                .fetch_all(&self.pool)
                .await
            }
        }
        .map_err(db_error)?;
        rows.into_iter()
            .map(|(t, id)| {
                Uuid::parse_str(&id)
                    .map(|id| (t, id))
                    .map_err(|e| StoreError::Database(sqlx::Error::Decode(Box::new(e))))
            })
            .collect()
    }

    async fn read_any(&self, tenant: &str, id: Uuid) -> Result<Option<(StoredUser, bool)>> {
        let row: Option<(String, String, i64, String, String, bool, String, bool)> =
            sqlx::query_as(concat!(
                "SELECT ",
                user_columns!(),
                ", u.deleted_at IS NOT NULL FROM users u WHERE u.tenant_id = ?1 AND u.id = ?2"
            ))
            .bind(tenant)
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        match row {
            None => Ok(None),
            Some((a, b, c, d, e, f, g, deleted)) => {
                Ok(Some((row_to_user((a, b, c, d, e, f, g))?, deleted)))
            }
        }
    }

    fn warm_up(self: Arc<Self>, tenants: Vec<String>) -> tokio::task::JoinHandle<()> {
        let tenants = Arc::new(tenants);
        self.warming.clone().spawn(move || {
            let (store, tenants) = (self.clone(), tenants.clone());
            async move { store.warm_connections(&tenants).await }
        })
    }

    async fn ready(&self) -> Result<(), String> {
        self.warming.check()?;
        let applied: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(&self.pool)
                .await
                .map_err(|e| format!("the database does not answer: {e}"))?;
        crate::store::all_applied(&MIGRATOR, &applied)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use secrecy::{ExposeSecret, SecretString};
    use serde_json::json;

    use super::*;
    use crate::scim::filter;
    use crate::scim::resource::parse_user;

    /// A database file in the temp directory, removed (with its WAL) when dropped.
    struct TempDb(PathBuf);

    impl Drop for TempDb {
        fn drop(&mut self) {
            for suffix in ["", "-wal", "-shm"] {
                let mut p = self.0.clone().into_os_string();
                p.push(suffix);
                let _ = std::fs::remove_file(p);
            }
        }
    }

    async fn unmigrated() -> (SqliteStore, TempDb) {
        let path = std::env::temp_dir().join(format!("ameyo-scim-users-{}.db", Uuid::new_v4()));
        let pool = super::super::connect(&format!("sqlite://{}", path.display()), 4)
            .await
            .unwrap();
        (
            SqliteStore::new(pool, PasswordCipher::new(&[7u8; 32])),
            TempDb(path),
        )
    }

    async fn store() -> (SqliteStore, TempDb) {
        let (store, db) = unmigrated().await;
        store.migrate().await.unwrap();
        (store, db)
    }

    /// StoredUser has no PartialEq: compare what it holds.
    fn fields(u: &StoredUser) -> (Uuid, &Map<String, Value>, i64, DateTime<Utc>, DateTime<Utc>) {
        (u.id, &u.resource, u.version, u.created, u.last_modified)
    }

    fn user(v: Value) -> UserInput {
        parse_user(v).unwrap()
    }

    fn named(name: &str) -> UserInput {
        user(json!({"schemas": [crate::scim::schema::USER], "userName": name}))
    }

    fn set_title(
        title: &'static str,
    ) -> impl Fn(&StoredUser) -> Result<Option<UserInput>, crate::scim::ScimError> {
        move |current| {
            let mut r = current.resource.clone();
            r.insert("title".into(), json!(title));
            crate::scim::resource::revalidate(r, None).map(Some)
        }
    }

    /// The outbox row: desired version, state, sealed password.
    async fn outbox_row(store: &SqliteStore, id: Uuid) -> (i64, String, Option<Vec<u8>>) {
        sqlx::query_as(
            "SELECT desired_version, state, pending_password FROM sync_state WHERE user_id = ?",
        )
        .bind(id.to_string())
        .fetch_one(store.pool())
        .await
        .unwrap()
    }

    fn query(filter: Option<&str>, start_index: u64, count: u64) -> ListQuery {
        ListQuery {
            filter: filter.map(|f| filter::parse(f).unwrap()),
            sort_by: None,
            descending: false,
            start_index,
            count,
        }
    }

    fn names(page: &Page) -> Vec<String> {
        page.users
            .iter()
            .map(|u| u.resource["userName"].as_str().unwrap().to_string())
            .collect()
    }

    #[tokio::test]
    async fn ready_once_migrated() {
        let (store, _db) = unmigrated().await;
        assert!(store.ready().await.is_err());
        store.migrate().await.unwrap();
        store.ready().await.unwrap();
    }

    #[tokio::test]
    async fn writes_version_the_user_and_mark_the_outbox_in_one_go() {
        let (store, _db) = store().await;
        let created = store.create("a", named("ann")).await.unwrap();
        assert_eq!(created.version, 1);
        let got = store.get("a", created.id).await.unwrap().unwrap();
        assert_eq!(fields(&got), fields(&created));
        assert!(
            store.get("b", created.id).await.unwrap().is_none(),
            "tenant"
        );
        assert_eq!(
            outbox_row(&store, created.id).await,
            (1, "pending".into(), None)
        );

        sqlx::query("UPDATE sync_state SET state = 'done'")
            .execute(store.pool())
            .await
            .unwrap();
        let updated = store
            .update("a", created.id, None, &set_title("Boss"))
            .await
            .unwrap();
        assert_eq!(updated.version, 2);
        assert_eq!(updated.created, created.created);
        assert!(updated.last_modified > created.last_modified);
        assert_eq!(
            fields(&store.get("a", created.id).await.unwrap().unwrap()),
            fields(&updated)
        );
        assert_eq!(outbox_row(&store, created.id).await.0, 2);
        assert_eq!(outbox_row(&store, created.id).await.1, "pending");

        store.delete("a", created.id, None).await.unwrap();
        assert!(store.get("a", created.id).await.unwrap().is_none());
        let tombstone: (i64, bool) =
            sqlx::query_as("SELECT version, deleted_at IS NOT NULL FROM users WHERE id = ?")
                .bind(created.id.to_string())
                .fetch_one(store.pool())
                .await
                .unwrap();
        assert_eq!(tombstone, (3, true));
        assert_eq!(outbox_row(&store, created.id).await.0, 3);
        assert!(matches!(
            store.update("a", created.id, None, &set_title("x")).await,
            Err(StoreError::NotFound)
        ));
        assert!(matches!(
            store.delete("a", created.id, None).await,
            Err(StoreError::NotFound)
        ));
        assert!(matches!(
            store.delete("b", Uuid::new_v4(), None).await,
            Err(StoreError::NotFound)
        ));
    }

    #[tokio::test]
    async fn user_names_are_unique_per_tenant_whatever_their_case() {
        let (store, _db) = store().await;
        let first = store.create("a", named("Ångström")).await.unwrap();
        for taken in ["ångström", "ÅNGSTRÖM"] {
            assert!(
                matches!(
                    store.create("a", named(taken)).await,
                    Err(StoreError::UserNameTaken)
                ),
                "{taken}"
            );
        }
        store.create("b", named("ÅNGSTRÖM")).await.unwrap();
        let other = store.create("a", named("straße")).await.unwrap();
        let rename = |current: &StoredUser| {
            let mut r = current.resource.clone();
            r.insert("userName".into(), json!("ÅngStröm"));
            crate::scim::resource::revalidate(r, None).map(Some)
        };
        assert!(matches!(
            store.update("a", other.id, None, &rename).await,
            Err(StoreError::UserNameTaken)
        ));
        assert_eq!(store.get("a", other.id).await.unwrap().unwrap().version, 1);
        // A tombstone does not hold its name.
        store.delete("a", first.id, None).await.unwrap();
        store.update("a", other.id, None, &rename).await.unwrap();
    }

    #[tokio::test]
    async fn if_match_guards_updates_and_deletes() {
        let (store, _db) = store().await;
        let u = store.create("a", named("ann")).await.unwrap();
        let stale = IfMatch::Versions(vec![7]);
        assert!(matches!(
            store.update("a", u.id, Some(&stale), &set_title("x")).await,
            Err(StoreError::PreconditionFailed)
        ));
        assert!(matches!(
            store.delete("a", u.id, Some(&stale)).await,
            Err(StoreError::PreconditionFailed)
        ));
        let u = store
            .update(
                "a",
                u.id,
                Some(&IfMatch::parse(r#"W/"1""#)),
                &set_title("x"),
            )
            .await
            .unwrap();
        let u = store
            .update("a", u.id, Some(&IfMatch::Any), &set_title("y"))
            .await
            .unwrap();
        assert_eq!(u.version, 3);
        assert!(matches!(
            store.delete("a", Uuid::new_v4(), Some(&IfMatch::Any)).await,
            Err(StoreError::NotFound)
        ));
        store
            .delete("a", u.id, Some(&IfMatch::Versions(vec![3])))
            .await
            .unwrap();
        assert!(matches!(
            store.delete("a", u.id, Some(&IfMatch::Any)).await,
            Err(StoreError::NotFound)
        ));
    }

    #[tokio::test]
    async fn passwords_are_sealed_to_their_user_and_erased_on_delete() {
        let (store, _db) = store().await;
        let mut input = named("ann");
        input.password = Some(SecretString::from("first"));
        let u = store.create("a", input).await.unwrap();
        let open = |sealed: Option<Vec<u8>>| {
            store
                .cipher()
                .open(u.id.as_bytes(), &sealed.unwrap())
                .unwrap()
                .expose_secret()
                .to_string()
        };
        let sealed = outbox_row(&store, u.id).await.2;
        assert!(
            store
                .cipher()
                .open(Uuid::new_v4().as_bytes(), sealed.as_deref().unwrap())
                .is_err()
        );
        assert_eq!(open(sealed), "first");
        store
            .update("a", u.id, None, &set_title("x"))
            .await
            .unwrap();
        assert_eq!(open(outbox_row(&store, u.id).await.2), "first", "kept");
        let with_password = |current: &StoredUser| {
            crate::scim::resource::revalidate(
                current.resource.clone(),
                Some(SecretString::from("second")),
            )
            .map(Some)
        };
        store.update("a", u.id, None, &with_password).await.unwrap();
        assert_eq!(open(outbox_row(&store, u.id).await.2), "second");
        store.delete("a", u.id, None).await.unwrap();
        assert_eq!(outbox_row(&store, u.id).await.2, None);
    }

    #[tokio::test]
    async fn an_unchanged_write_rearms_a_dead_letter_and_keeps_the_version() {
        let (store, _db) = store().await;
        let u = store.create("a", named("ann")).await.unwrap();
        sqlx::query("UPDATE sync_state SET state = 'dead'")
            .execute(store.pool())
            .await
            .unwrap();
        let same = store.update("a", u.id, None, &|_| Ok(None)).await.unwrap();
        assert_eq!(fields(&same), fields(&u));
        assert_eq!(outbox_row(&store, u.id).await, (1, "pending".into(), None));
        let refused = store
            .update("a", u.id, None, &|_| {
                Err(crate::scim::ScimError::invalid_value("no"))
            })
            .await;
        assert!(matches!(refused, Err(StoreError::Rejected(_))));
    }

    #[tokio::test]
    async fn racing_writers_lose_no_update() {
        let (store, _db) = store().await;
        let store = Arc::new(store);
        let u = store.create("a", named("ann")).await.unwrap();
        let increment = |current: &StoredUser| {
            let n: u64 = current
                .resource
                .get("title")
                .and_then(Value::as_str)
                .map_or(0, |t| t.parse().unwrap());
            let mut r = current.resource.clone();
            r.insert("title".into(), json!((n + 1).to_string()));
            crate::scim::resource::revalidate(r, None).map(Some)
        };
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(
                    async move { store.update("a", u.id, None, &increment).await.unwrap() },
                )
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let last = store.get("a", u.id).await.unwrap().unwrap();
        assert_eq!(last.resource["title"], json!("16"));
        assert_eq!(last.version, 17);
        assert_eq!(outbox_row(&store, u.id).await.0, 17);
    }

    #[tokio::test]
    async fn pages_in_creation_order_with_exact_totals() {
        let (store, _db) = store().await;
        for i in 0..25 {
            store.create("a", named(&format!("u{i:02}"))).await.unwrap();
        }
        store.create("b", named("other")).await.unwrap();
        let gone = store.create("a", named("gone")).await.unwrap();
        store.delete("a", gone.id, None).await.unwrap();
        let all = store.list("a", &query(None, 1, 100)).await.unwrap();
        assert_eq!(all.total, 25);
        let expected: Vec<String> = (0..25).map(|i| format!("u{i:02}")).collect();
        assert_eq!(names(&all), expected);
        let page = store.list("a", &query(None, 11, 5)).await.unwrap();
        assert_eq!((page.total, names(&page)), (25, expected[10..15].to_vec()));
        let page = store
            .list("a", &query(Some(r#"userName sw "U1""#), 3, 100))
            .await
            .unwrap();
        assert_eq!((page.total, names(&page)), (10, expected[12..20].to_vec()));
        let page = store.list("a", &query(None, 26, 5)).await.unwrap();
        assert_eq!((page.total, page.users.len()), (25, 0));
        let page = store.list("a", &query(None, 1, 0)).await.unwrap();
        assert_eq!((page.total, page.users.len()), (25, 0));
        let err = store
            .list("a", &query(Some("meta.location pr"), 1, 10))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Rejected(_)), "{err:?}");
    }

    #[tokio::test]
    async fn case_insensitive_matching_covers_every_letter() {
        let (store, _db) = store().await;
        let a = store
            .create(
                "a",
                user(json!({
                    "schemas": [crate::scim::schema::USER],
                    "userName": "Ångström",
                    "externalId": "ÉXT-1",
                    "name": {"familyName": "STRASSE-straße"},
                    "emails": [{"value": "Émile@Example.COM", "type": "work"}]
                })),
            )
            .await
            .unwrap();
        store.create("a", named("zed")).await.unwrap();
        let ids = |p: Page| p.users.into_iter().map(|u| u.id).collect::<Vec<_>>();
        for f in [
            r#"userName eq "ÅNGSTRÖM""#,
            r#"userName sw "åNG""#,
            r#"name.familyName co "SSE-STRAẞ""#,
            r#"name.familyName ew "STRASSE-STRAẞE""#,
            r#"emails.value eq "ÉMILE@example.com""#,
            r#"emails[type eq "WORK"].value eq "émile@EXAMPLE.com""#,
            r#"externalId eq "ÉXT-1""#,
        ] {
            assert_eq!(
                ids(store.list("a", &query(Some(f), 1, 10)).await.unwrap()),
                vec![a.id],
                "{f}"
            );
        }
        // externalId is caseExact.
        for f in [r#"externalId eq "éxt-1""#, r#"externalId co "xt""#] {
            assert!(
                store
                    .list("a", &query(Some(f), 1, 10))
                    .await
                    .unwrap()
                    .users
                    .is_empty(),
                "{f}"
            );
        }
    }

    /// What SQLite plans for the page and the count of a list query.
    async fn plans(store: &SqliteStore, f: Option<&str>) -> [String; 2] {
        let q = query(f, 1, 10);
        let mut out = [String::new(), String::new()];
        let queries = [
            page_query("EXPLAIN QUERY PLAN ", "a", &q).unwrap(),
            count_query("EXPLAIN QUERY PLAN ", "a", &q).unwrap(),
        ];
        for (mut qb, out) in queries.into_iter().zip(&mut out) {
            let rows: Vec<(i64, i64, i64, String)> =
                qb.build_query_as().fetch_all(store.pool()).await.unwrap();
            *out = rows.into_iter().map(|r| r.3).collect::<Vec<_>>().join("\n");
        }
        out
    }

    #[tokio::test]
    async fn idp_lookups_use_their_indexes() {
        let (store, _db) = store().await;
        let mut some = None;
        for i in 0..300 {
            let u = store
                .create(
                    if i % 2 == 0 { "a" } else { "b" },
                    user(json!({
                        "schemas": [crate::scim::schema::USER],
                        "userName": format!("user{i}@example.com"),
                        "externalId": format!("ext-{i}"),
                        "emails": [
                            {"value": format!("user{i}@example.com"), "type": "work", "primary": true},
                            {"value": format!("home{i}@example.net"), "type": "home"}
                        ]
                    })),
                )
                .await
                .unwrap();
            some = Some(u.id);
        }
        let cases = [
            (
                r#"userName eq "USER42@example.com""#.to_string(),
                "users_tenant_user_name_key",
            ),
            (
                r#"userName sw "user4""#.to_string(),
                "users_tenant_user_name_key",
            ),
            (
                r#"externalId eq "ext-42""#.to_string(),
                "users_tenant_external_id",
            ),
            (
                format!(r#"id eq "{}""#, some.unwrap()),
                "sqlite_autoindex_users_1",
            ),
            (
                r#"emails.value eq "home42@example.net""#.to_string(),
                "user_emails",
            ),
            (
                r#"emails[type eq "work"].value eq "user42@example.com""#.to_string(),
                "user_emails",
            ),
            (
                r#"emails[type eq "work" and value eq "user42@example.com"]"#.to_string(),
                "user_emails",
            ),
        ];
        for (f, index) in cases {
            let [page, count] = plans(&store, Some(&f)).await;
            // With LIMIT, SQLite may walk the created-order index for a prefix instead.
            let plans = if f.contains(" sw ") {
                vec![count]
            } else {
                vec![page, count]
            };
            for plan in &plans {
                assert!(
                    plan.contains(index),
                    "{f}: expected {index} in plan:\n{plan}\n{plans:?}"
                );
                assert!(!plan.contains("SCAN u"), "{f}: full scan in plan:\n{plan}");
                // The page must start from the lookup, not walk the tenant in order.
                if f.contains("emails") {
                    assert!(
                        !plan.contains("users_tenant_created"),
                        "{f}: the page walks the tenant:\n{plan}"
                    );
                }
            }
        }
        // Unfiltered: pages along the created-order index, counted on it (not the table).
        let [page, count] = plans(&store, None).await;
        assert!(
            page.contains("users_tenant_created") && !page.contains("B-TREE"),
            "{page}"
        );
        assert!(
            count.contains("users_tenant_created") && !count.contains("SCAN u"),
            "{count}"
        );
        // The e-mail index holds live users only.
        let u = store
            .list(
                "a",
                &query(Some(r#"emails.value eq "USER42@example.com""#), 1, 10),
            )
            .await
            .unwrap();
        assert_eq!(u.total, 1);
        let id = u.users[0].id;
        store.delete("a", id, None).await.unwrap();
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM user_emails WHERE user_id = ?")
            .bind(id.to_string())
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(left, 0);
        assert_eq!(
            store
                .list(
                    "a",
                    &query(Some(r#"emails.value eq "user42@example.com""#), 1, 10)
                )
                .await
                .unwrap()
                .total,
            0
        );
    }
}
