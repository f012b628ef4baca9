//! The embedded store's groups: [`SqliteGroupStore`], the [`GroupStore`] of one SQLite
//! file, answering as [`crate::store::groups::PgGroupStore`] does for the same data.
//!
//! Members are rows of `group_members`; a change is applied as set operations on them,
//! each one statement over a bound JSON array of ids (`json_each`), so a PATCH of a
//! thousand members costs a handful of statements, not a thousand. In the same
//! `BEGIN IMMEDIATE` transaction (queued on the file's [`super::WriteLock`], as every
//! user write is) the users whose membership changed get a new version and, when the
//! tenant's mapping rules look at the group, a pending outbox row; the workers are woken
//! after the commit.
//!
//! displayName is compared through `display_name_key`, the name folded to lower case in
//! Rust ([`fold_case`], what PostgreSQL's lower() does), so uniqueness, filters and the
//! displayName sort agree with PostgreSQL beyond ASCII.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use sqlx::error::ErrorKind;
use sqlx::{QueryBuilder, Sqlite, SqliteConnection, SqlitePool};
use tokio::sync::Notify;
use uuid::Uuid;

use super::filter::{SqliteDialect, fold_case, push_key_prefix_range};
use super::outbox::{json_list, mark_pending_many};
use super::users::{db_error, format_micros};
use crate::scim::filter::CompareOp;
use crate::scim::group::{GroupChange, GroupInput, Member, Members, StoredGroup, no_such_members};
use crate::store::filter_sql::Dialect;
use crate::store::groups::{
    GroupDialect, GroupPage, GroupRecord, GroupStore, MemberRecord, Watched, push_group_from_where,
    push_group_order,
};
use crate::store::{IfMatch, ListQuery, Result, StoreError};

#[derive(Clone, Debug)]
pub struct SqliteGroupStore {
    pool: SqlitePool,
    /// Wakes this process's delivery workers after a commit that made outbox rows
    /// pending (see `SqliteOutbox::wakeup`).
    wake: Option<Arc<Notify>>,
    write: super::WriteLock,
}

/// The SQLite pieces of the group filter walker, over `groups g`.
pub(crate) struct SqliteGroups;

impl GroupDialect for SqliteGroups {
    type Db = Sqlite;
    const ID_TEXT: &'static str = "g.id";
    // Folded by the store; push_text_cmp folds the literal.
    const DISPLAY_NAME: &'static str = "g.display_name_key";
    const DISPLAY_NAME_SORT: &'static str = "g.display_name_key";
    const RESOURCE_TYPE: &'static str = "'group'";

    fn push_id(qb: &mut QueryBuilder<Sqlite>, id: Uuid) {
        qb.push_bind(id.to_string());
    }
    fn push_text(qb: &mut QueryBuilder<Sqlite>, value: String) {
        qb.push_bind(value);
    }
    /// Stored times are in the users' format (microseconds), which sorts as text.
    fn push_time(qb: &mut QueryBuilder<Sqlite>, value: DateTime<Utc>) {
        qb.push_bind(format_micros(value));
    }
    fn push_text_cmp(
        qb: &mut QueryBuilder<Sqlite>,
        expr: &str,
        case_exact: bool,
        op: CompareOp,
        s: &str,
    ) {
        // A displayName prefix is also a key range, which the unique index answers.
        let key_prefix = op == CompareOp::Sw && expr == Self::DISPLAY_NAME && !s.is_empty();
        if key_prefix {
            qb.push("(");
            push_key_prefix_range(qb, Self::DISPLAY_NAME, &fold_case(s));
        }
        <SqliteDialect as Dialect>::push_text_cmp(qb, expr, case_exact, op, s);
        if key_prefix {
            qb.push(")");
        }
    }
}

/// The columns a [`StoredGroup`] is read from, as a macro for `concat!`.
macro_rules! group_columns {
    () => {
        "g.id, g.display_name, g.external_id, g.version, g.created, g.last_modified"
    };
}

type GroupRow = (String, String, Option<String>, i64, String, String);

/// A group row with its tenant, as `migrate-store` exports it.
type ExportRow = (String, String, String, Option<String>, i64, String, String);

fn decode(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Database(sqlx::Error::Decode(Box::new(e)))
}

fn parse_id(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(decode)
}

fn parse_time(s: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(decode)
}

fn row_to_group(
    (id, display_name, external_id, version, created, last_modified): GroupRow,
) -> Result<StoredGroup> {
    Ok(StoredGroup {
        id: parse_id(&id)?,
        display_name,
        external_id,
        version,
        created: parse_time(&created)?,
        last_modified: parse_time(&last_modified)?,
        members: None,
    })
}

/// A database error as the store reports it: the unique displayName rule is
/// `uniqueness`, a busy file is transient.
fn group_db_error(e: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &e
        && db.kind() == ErrorKind::UniqueViolation
        && db.message().contains("groups.display_name_key")
    {
        return StoreError::DisplayNameTaken;
    }
    db_error(e)
}

/// The ids as one bound JSON array.
fn id_list(ids: &[Uuid]) -> String {
    json_list(ids.iter().map(Uuid::to_string))
}

const GET_SQL: &str = concat!(
    "SELECT ",
    group_columns!(),
    " FROM groups g WHERE g.tenant_id = ?1 AND g.id = ?2"
);

/// The live members of groups (?1, a JSON array of ids), in a stable order (by user id,
/// as PostgreSQL orders uuids: their lower-case text sorts the same).
const MEMBERS_SQL: &str = "
SELECT gm.group_id, u.id,
       coalesce(nullif(json_extract(u.resource, '$.displayName'), ''), u.user_name) AS display
FROM json_each(?1) AS j
CROSS JOIN group_members gm ON gm.group_id = j.value
JOIN users u ON u.id = gm.user_id AND u.deleted_at IS NULL
ORDER BY gm.group_id, u.id";

/// Which of the ids in ?2 are live users of tenant ?1.
const LIVE_USERS_SQL: &str = "
SELECT u.id FROM json_each(?2) AS j CROSS JOIN users u ON u.id = j.value
WHERE u.tenant_id = ?1 AND u.deleted_at IS NULL";

/// Users whose memberships changed: ?4 (a JSON array of ids) and, when ?5, every member
/// of group ?2 as well (a group renamed or deleted), get a new version (their `groups`
/// changed) and last_modified ?3. Returns the ids touched.
const TOUCH_USERS_SQL: &str = "
UPDATE users SET version = version + 1, last_modified = ?3
WHERE tenant_id = ?1 AND deleted_at IS NULL
  AND id IN (SELECT value FROM json_each(?4)
             UNION SELECT user_id FROM group_members WHERE ?5 AND group_id = ?2)
RETURNING id";

impl SqliteGroupStore {
    pub fn new(pool: SqlitePool) -> Self {
        Self {
            pool,
            wake: None,
            write: super::WriteLock::default(),
        }
    }

    /// Queue writes on this lock, shared with the user store and the outbox of the
    /// same file.
    pub fn with_write_lock(mut self, write: super::WriteLock) -> Self {
        self.write = write;
        self
    }

    /// Wake these workers after a write that made outbox rows pending.
    pub fn with_wakeup(mut self, wake: Arc<Notify>) -> Self {
        self.wake = Some(wake);
        self
    }

    fn work_due(&self) {
        if let Some(w) = &self.wake {
            w.notify_one();
        }
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

    /// Up to `limit` groups after `after` (by id), for `migrate-store`.
    pub async fn export_groups(&self, after: Option<Uuid>, limit: i64) -> Result<Vec<GroupRecord>> {
        let rows: Vec<ExportRow> = sqlx::query_as(
            "SELECT id, tenant_id, display_name, external_id, version, created, last_modified
                 FROM groups WHERE id > ?1 ORDER BY id LIMIT ?2",
        )
        .bind(after.map(|u| u.to_string()).unwrap_or_default())
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        rows.into_iter()
            .map(|r| {
                Ok(GroupRecord {
                    id: parse_id(&r.0)?,
                    tenant_id: r.1,
                    display_name: r.2,
                    external_id: r.3,
                    version: r.4,
                    created: parse_time(&r.5)?,
                    last_modified: parse_time(&r.6)?,
                })
            })
            .collect()
    }

    /// Up to `limit` memberships after `after` (by group, then user), for
    /// `migrate-store`.
    pub async fn export_members(
        &self,
        after: Option<MemberRecord>,
        limit: i64,
    ) -> Result<Vec<MemberRecord>> {
        let (group, user) = after
            .map(|m| (m.group_id.to_string(), m.user_id.to_string()))
            .unwrap_or_default();
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT group_id, user_id FROM group_members
             WHERE (group_id, user_id) > (?1, ?2) ORDER BY group_id, user_id LIMIT ?3",
        )
        .bind(group)
        .bind(user)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        rows.into_iter()
            .map(|(g, u)| {
                Ok(MemberRecord {
                    group_id: parse_id(&g)?,
                    user_id: parse_id(&u)?,
                })
            })
            .collect()
    }

    /// How many groups and memberships there are.
    pub async fn sizes(&self) -> Result<(i64, i64)> {
        sqlx::query_as("SELECT (SELECT count(*) FROM groups), (SELECT count(*) FROM group_members)")
            .fetch_one(&self.pool)
            .await
            .map_err(db_error)
    }
}

/// Read the live members of `groups` into them.
async fn with_members(conn: &mut SqliteConnection, groups: &mut [StoredGroup]) -> Result<()> {
    let ids: Vec<Uuid> = groups.iter().map(|g| g.id).collect();
    let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(MEMBERS_SQL)
        .bind(id_list(&ids))
        .fetch_all(&mut *conn)
        .await
        .map_err(db_error)?;
    let at: std::collections::HashMap<Uuid, usize> =
        groups.iter().enumerate().map(|(i, g)| (g.id, i)).collect();
    for g in groups.iter_mut() {
        g.members = Some(Vec::new());
    }
    for (gid, uid, display) in rows {
        let gid = parse_id(&gid)?;
        if let Some(members) = at.get(&gid).and_then(|&i| groups[i].members.as_mut()) {
            members.push(Member {
                id: parse_id(&uid)?,
                display,
            });
        }
    }
    Ok(())
}

async fn fetch_group(
    conn: &mut SqliteConnection,
    tenant: &str,
    id: Uuid,
) -> Result<Option<StoredGroup>> {
    let row: Option<GroupRow> = sqlx::query_as(GET_SQL)
        .bind(tenant)
        .bind(id.to_string())
        .fetch_optional(conn)
        .await
        .map_err(db_error)?;
    row.map(row_to_group).transpose()
}

/// Apply `members` to group `gid` inside the write transaction: refuse ids that are not
/// live users of the tenant (nothing written), then delete and insert member rows.
/// Returns the users whose membership changed.
async fn apply_members(
    conn: &mut SqliteConnection,
    tenant: &str,
    gid: Uuid,
    members: &Members,
) -> Result<Vec<Uuid>> {
    let (joining, leaving, replace): (&[Uuid], &[Uuid], bool) = match members {
        Members::Keep => return Ok(vec![]),
        Members::Replace(ids) => (ids, &[], true),
        Members::Delta { add, remove } => (add, remove, false),
    };
    let joining_list = id_list(joining);
    let gid = gid.to_string();
    if !joining.is_empty() {
        let found: Vec<String> = sqlx::query_scalar(LIVE_USERS_SQL)
            .bind(tenant)
            .bind(&joining_list)
            .fetch_all(&mut *conn)
            .await
            .map_err(db_error)?;
        let found: HashSet<Uuid> = found.iter().map(|s| parse_id(s)).collect::<Result<_>>()?;
        let missing: Vec<String> = joining
            .iter()
            .filter(|id| !found.contains(id))
            .map(Uuid::to_string)
            .collect();
        if !missing.is_empty() {
            return Err(StoreError::Rejected(no_such_members(&missing)));
        }
    }
    let left: Vec<String> = if replace {
        sqlx::query_scalar(
            "DELETE FROM group_members
             WHERE group_id = ?1 AND user_id NOT IN (SELECT value FROM json_each(?2))
             RETURNING user_id",
        )
        .bind(&gid)
        .bind(&joining_list)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_error)?
    } else if leaving.is_empty() {
        Vec::new()
    } else {
        sqlx::query_scalar(
            "DELETE FROM group_members
             WHERE group_id = ?1 AND user_id IN (SELECT value FROM json_each(?2))
             RETURNING user_id",
        )
        .bind(&gid)
        .bind(id_list(leaving))
        .fetch_all(&mut *conn)
        .await
        .map_err(db_error)?
    };
    let joined: Vec<String> = if joining.is_empty() {
        Vec::new()
    } else {
        // `WHERE true`: SQLite reads an ON CONFLICT after a bare SELECT ... FROM as a
        // join constraint.
        sqlx::query_scalar(
            "INSERT INTO group_members (group_id, user_id)
             SELECT ?1, value FROM json_each(?2) WHERE true
             ON CONFLICT DO NOTHING RETURNING user_id",
        )
        .bind(&gid)
        .bind(&joining_list)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_error)?
    };
    left.iter().chain(&joined).map(|s| parse_id(s)).collect()
}

/// New versions for the users in `changed`, and with `all_members` for every member of
/// `gid` too; their outbox rows pending when `watched`. Returns how many rows were made
/// pending.
async fn touch_users(
    conn: &mut SqliteConnection,
    tenant: &str,
    gid: Uuid,
    changed: &[Uuid],
    all_members: bool,
    watched: bool,
    now: DateTime<Utc>,
) -> Result<u64> {
    if changed.is_empty() && !all_members {
        return Ok(0);
    }
    let touched: Vec<String> = sqlx::query_scalar(TOUCH_USERS_SQL)
        .bind(tenant)
        .bind(gid.to_string())
        .bind(format_micros(now))
        .bind(id_list(changed))
        .bind(all_members)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_error)?;
    if !watched || touched.is_empty() {
        return Ok(0);
    }
    mark_pending_many(conn, &json_list(touched)).await
}

#[async_trait]
impl GroupStore for SqliteGroupStore {
    async fn create_group(
        &self,
        tenant: &str,
        group: GroupInput,
        watched: &Watched<'_>,
        members: bool,
    ) -> Result<StoredGroup> {
        let id = Uuid::new_v4();
        let watch = watched(&group.display_name, group.external_id.as_deref());
        let (_turn, mut tx) = self.begin_write().await?;
        // Taken under the write lock, so creation times follow the commit order.
        let now = Utc::now().trunc_subsecs(6);
        sqlx::query(
            "INSERT INTO groups (id, tenant_id, display_name, display_name_key, external_id,
                                 version, created, last_modified)
             VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6, ?6)",
        )
        .bind(id.to_string())
        .bind(tenant)
        .bind(&group.display_name)
        .bind(fold_case(&group.display_name))
        .bind(&group.external_id)
        .bind(format_micros(now))
        .execute(&mut *tx)
        .await
        .map_err(group_db_error)?;
        let changed = apply_members(&mut tx, tenant, id, &Members::Replace(group.members)).await?;
        let pending = touch_users(&mut tx, tenant, id, &changed, false, watch, now).await?;
        let mut stored = StoredGroup {
            id,
            display_name: group.display_name,
            external_id: group.external_id,
            version: 1,
            created: now,
            last_modified: now,
            members: None,
        };
        if members {
            with_members(&mut tx, std::slice::from_mut(&mut stored)).await?;
        }
        tx.commit().await.map_err(db_error)?;
        if pending > 0 {
            self.work_due();
        }
        Ok(stored)
    }

    async fn get_group(
        &self,
        tenant: &str,
        id: Uuid,
        members: bool,
    ) -> Result<Option<StoredGroup>> {
        // One read transaction: the group and its members from one snapshot.
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let Some(mut g) = fetch_group(&mut tx, tenant, id).await? else {
            return Ok(None);
        };
        if members {
            with_members(&mut tx, std::slice::from_mut(&mut g)).await?;
        }
        tx.commit().await.map_err(db_error)?;
        Ok(Some(g))
    }

    async fn list_groups(&self, tenant: &str, q: &ListQuery, members: bool) -> Result<GroupPage> {
        let mut count: QueryBuilder<Sqlite> = QueryBuilder::new("SELECT count(*)");
        push_group_from_where::<SqliteGroups>(&mut count, tenant, q)?;
        let mut page = if q.count == 0 {
            None
        } else {
            let mut page: QueryBuilder<Sqlite> =
                QueryBuilder::new(concat!("SELECT ", group_columns!()));
            push_group_from_where::<SqliteGroups>(&mut page, tenant, q)?;
            let (limit, offset) = push_group_order::<SqliteGroups>(&mut page, q)?;
            page.push(" LIMIT ");
            page.push_bind(limit);
            page.push(" OFFSET ");
            page.push_bind(offset);
            Some(page)
        };
        // One read transaction: the total, the page and the members from one snapshot.
        // Filters differ per request, so their statements are not cached.
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let total: i64 = count
            .build_query_scalar()
            .persistent(false)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_error)?;
        let rows: Vec<GroupRow> = match &mut page {
            Some(page) => page
                .build_query_as()
                .persistent(false)
                .fetch_all(&mut *tx)
                .await
                .map_err(db_error)?,
            None => Vec::new(),
        };
        let mut groups = rows
            .into_iter()
            .map(row_to_group)
            .collect::<Result<Vec<_>>>()?;
        if members && !groups.is_empty() {
            with_members(&mut tx, &mut groups).await?;
        }
        tx.commit().await.map_err(db_error)?;
        Ok(GroupPage {
            total: total as u64,
            groups,
        })
    }

    async fn change_group(
        &self,
        tenant: &str,
        id: Uuid,
        if_match: Option<&IfMatch>,
        change: &GroupChange,
        watched: &Watched<'_>,
        members: Option<usize>,
    ) -> Result<StoredGroup> {
        let (_turn, mut tx) = self.begin_write().await?;
        let current = fetch_group(&mut tx, tenant, id)
            .await?
            .ok_or(StoreError::GroupNotFound)?;
        if let Some(m) = if_match
            && !m.matches(current.version)
        {
            return Err(StoreError::PreconditionFailed);
        }
        let name = change
            .display_name
            .clone()
            .unwrap_or_else(|| current.display_name.clone());
        let external_id = change
            .external_id
            .clone()
            .unwrap_or_else(|| current.external_id.clone());
        let renamed = name != current.display_name;
        let watch_before = watched(&current.display_name, current.external_id.as_deref());
        let watch_after = watched(&name, external_id.as_deref());
        let now = Utc::now().trunc_subsecs(6);
        let changed = apply_members(&mut tx, tenant, id, &change.members).await?;
        // The users who stay members see the group's new name; if the rules look at the
        // group under its old or new name, what they map to may change too.
        let names_changed = renamed || external_id != current.external_id;
        let all_members = renamed || (names_changed && (watch_before || watch_after));
        let pending = touch_users(
            &mut tx,
            tenant,
            id,
            &changed,
            all_members,
            watch_before || watch_after,
            now,
        )
        .await?;
        let mut stored = if changed.is_empty() && !names_changed {
            current
        } else {
            // RETURNING names the columns of the table itself: SQLite takes no alias there.
            let row: GroupRow = sqlx::query_as(
                "UPDATE groups SET display_name = ?3, display_name_key = ?4,
                     external_id = ?5, version = version + 1, last_modified = ?6
                 WHERE tenant_id = ?1 AND id = ?2
                 RETURNING id, display_name, external_id, version, created, last_modified",
            )
            .bind(tenant)
            .bind(id.to_string())
            .bind(&name)
            .bind(fold_case(&name))
            .bind(&external_id)
            .bind(format_micros(now))
            .fetch_one(&mut *tx)
            .await
            .map_err(group_db_error)?;
            row_to_group(row)?
        };
        if let Some(limit) = members {
            let at_most = i64::try_from(limit).unwrap_or(i64::MAX - 1) + 1;
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM (SELECT 1 FROM group_members WHERE group_id = ?1 LIMIT ?2)",
            )
            .bind(id.to_string())
            .bind(at_most)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_error)?;
            if n < at_most {
                with_members(&mut tx, std::slice::from_mut(&mut stored)).await?;
            }
        }
        tx.commit().await.map_err(db_error)?;
        if pending > 0 {
            self.work_due();
        }
        Ok(stored)
    }

    async fn delete_group(
        &self,
        tenant: &str,
        id: Uuid,
        if_match: Option<&IfMatch>,
        watched: &Watched<'_>,
    ) -> Result<()> {
        let (_turn, mut tx) = self.begin_write().await?;
        let current = fetch_group(&mut tx, tenant, id)
            .await?
            .ok_or(StoreError::GroupNotFound)?;
        if let Some(m) = if_match
            && !m.matches(current.version)
        {
            return Err(StoreError::PreconditionFailed);
        }
        let watch = watched(&current.display_name, current.external_id.as_deref());
        let now = Utc::now().trunc_subsecs(6);
        let pending = touch_users(&mut tx, tenant, id, &[], true, watch, now).await?;
        // The member rows go with it (ON DELETE CASCADE).
        sqlx::query("DELETE FROM groups WHERE tenant_id = ?1 AND id = ?2")
            .bind(tenant)
            .bind(id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        if pending > 0 {
            self.work_due();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::scim::filter::parse_group;
    use crate::scim::resource::parse_user;
    use crate::store::UserStore;
    use crate::store::password::PasswordCipher;
    use crate::store::sqlite::SqliteStore;
    use crate::store::sqlite::outbox::tests::TempDb;

    struct Fixture {
        users: SqliteStore,
        groups: SqliteGroupStore,
        wake: Arc<Notify>,
        _db: TempDb,
    }

    async fn fixture() -> Fixture {
        let db = TempDb::new(4).await;
        let write = super::super::WriteLock::default();
        let wake = Arc::new(Notify::new());
        Fixture {
            users: SqliteStore::new(db.pool.clone(), PasswordCipher::new(&[7u8; 32]))
                .with_write_lock(write.clone())
                .with_wakeup(wake.clone()),
            groups: SqliteGroupStore::new(db.pool.clone())
                .with_write_lock(write)
                .with_wakeup(wake.clone()),
            wake,
            _db: db,
        }
    }

    impl Fixture {
        fn pool(&self) -> &SqlitePool {
            self.users.pool()
        }

        async fn user(&self, tenant: &str, name: &str) -> Uuid {
            let input =
                parse_user(json!({"schemas": [crate::scim::schema::USER], "userName": name}))
                    .unwrap();
            self.users.create(tenant, input).await.unwrap().id
        }

        /// Every outbox row delivered, and the wake-ups so far consumed.
        async fn outbox_done(&self) {
            sqlx::query("UPDATE sync_state SET state = 'done', pending_since = NULL")
                .execute(self.pool())
                .await
                .unwrap();
            while tokio::time::timeout(Duration::from_millis(1), self.wake.notified())
                .await
                .is_ok()
            {}
        }

        async fn woken(&self) -> bool {
            tokio::time::timeout(Duration::from_millis(1), self.wake.notified())
                .await
                .is_ok()
        }

        /// (version, outbox state, desired version) of a user.
        async fn user_row(&self, id: Uuid) -> (i64, String, i64) {
            sqlx::query_as(
                "SELECT u.version, s.state, s.desired_version
                 FROM users u JOIN sync_state s ON s.user_id = u.id WHERE u.id = ?1",
            )
            .bind(id.to_string())
            .fetch_one(self.pool())
            .await
            .unwrap()
        }

        async fn members(&self, gid: Uuid) -> Vec<Uuid> {
            let mut ids: Vec<Uuid> = self
                .groups
                .get_group("a", gid, true)
                .await
                .unwrap()
                .unwrap()
                .members
                .unwrap()
                .iter()
                .map(|m| m.id)
                .collect();
            ids.sort();
            ids
        }
    }

    fn input(name: &str, members: Vec<Uuid>) -> GroupInput {
        GroupInput {
            display_name: name.into(),
            external_id: None,
            members,
        }
    }

    fn delta(add: Vec<Uuid>, remove: Vec<Uuid>) -> GroupChange {
        GroupChange {
            members: Members::Delta { add, remove },
            ..Default::default()
        }
    }

    fn sorted(mut ids: Vec<Uuid>) -> Vec<Uuid> {
        ids.sort();
        ids
    }

    const NOBODY: &Watched<'static> = &|_: &str, _: Option<&str>| false;
    const EVERY: &Watched<'static> = &|_: &str, _: Option<&str>| true;

    #[tokio::test]
    async fn foreign_keys_hold_and_cascade() {
        let f = fixture().await;
        let ann = f.user("a", "ann").await;
        let g = f
            .groups
            .create_group("a", input("G", vec![ann]), NOBODY, false)
            .await
            .unwrap();
        let orphan = sqlx::query("INSERT INTO group_members (group_id, user_id) VALUES (?1, ?2)")
            .bind(g.id.to_string())
            .bind(Uuid::new_v4().to_string())
            .execute(f.pool())
            .await
            .unwrap_err();
        assert!(orphan.to_string().contains("FOREIGN KEY"), "{orphan}");
        f.groups
            .delete_group("a", g.id, None, NOBODY)
            .await
            .unwrap();
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM group_members")
            .fetch_one(f.pool())
            .await
            .unwrap();
        assert_eq!(left, 0);
    }

    #[tokio::test]
    async fn member_changes_are_set_operations_that_touch_only_the_changed_users() {
        let f = fixture().await;
        let ids: Vec<Uuid> = users_named(&f, &["u0", "u1", "u2", "u3"]).await;
        let theirs = f.user("b", "theirs").await;
        f.outbox_done().await;
        let g = f
            .groups
            .create_group("a", input("G", vec![ids[0], ids[1]]), NOBODY, true)
            .await
            .unwrap();
        assert_eq!(g.version, 1);
        assert_eq!(g.members.as_ref().unwrap().len(), 2);
        // Unwatched: new versions, no delivery, no wake-up.
        assert_eq!(f.user_row(ids[0]).await, (2, "done".into(), 1));
        assert_eq!(f.user_row(ids[2]).await, (1, "done".into(), 1));
        assert!(!f.woken().await);

        // Watched: the joining and the leaving are re-delivered, the others are not.
        let g = f
            .groups
            .change_group(
                "a",
                g.id,
                None,
                &delta(vec![ids[2]], vec![ids[0]]),
                EVERY,
                None,
            )
            .await
            .unwrap();
        assert_eq!(g.version, 2);
        assert_eq!(f.members(g.id).await, sorted(vec![ids[1], ids[2]]));
        assert_eq!(f.user_row(ids[0]).await, (3, "pending".into(), 3));
        assert_eq!(f.user_row(ids[1]).await, (2, "done".into(), 1));
        assert_eq!(f.user_row(ids[2]).await, (2, "pending".into(), 2));
        assert!(f.woken().await);

        // A change that changes nothing keeps every version.
        let same = f
            .groups
            .change_group(
                "a",
                g.id,
                None,
                &delta(vec![ids[1]], vec![ids[3]]),
                EVERY,
                None,
            )
            .await
            .unwrap();
        assert_eq!(same.version, 2);
        assert_eq!(f.user_row(ids[1]).await.0, 2);
        assert!(!f.woken().await);

        // A replace; unknown, deleted and foreign ids refuse the whole change.
        f.users.delete("a", ids[3], None).await.unwrap();
        f.outbox_done().await;
        for bad in [Uuid::new_v4(), ids[3], theirs] {
            let change = GroupChange {
                members: Members::Replace(vec![ids[0], bad]),
                ..Default::default()
            };
            let err = f
                .groups
                .change_group("a", g.id, None, &change, EVERY, None)
                .await
                .unwrap_err();
            match err {
                StoreError::Rejected(e) => assert!(e.detail.contains(&bad.to_string()), "{e:?}"),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(f.members(g.id).await, sorted(vec![ids[1], ids[2]]));
        assert_eq!(f.user_row(ids[0]).await.0, 3);
        assert!(!f.woken().await);
        let change = GroupChange {
            members: Members::Replace(vec![ids[0], ids[2]]),
            ..Default::default()
        };
        let g = f
            .groups
            .change_group("a", g.id, None, &change, NOBODY, None)
            .await
            .unwrap();
        assert_eq!(g.version, 3);
        assert_eq!(f.members(g.id).await, sorted(vec![ids[0], ids[2]]));
        assert_eq!(f.user_row(ids[0]).await.0, 4);
        assert_eq!(f.user_row(ids[1]).await.0, 3);
        assert_eq!(f.user_row(ids[2]).await.0, 2);
    }

    async fn users_named(f: &Fixture, names: &[&str]) -> Vec<Uuid> {
        let mut ids = Vec::new();
        for n in names {
            ids.push(f.user("a", n).await);
        }
        ids
    }

    #[tokio::test]
    async fn renames_reach_every_member_and_names_are_unique_whatever_their_case() {
        let f = fixture().await;
        let ids = users_named(&f, &["u0", "u1"]).await;
        let g = f
            .groups
            .create_group("a", input("Ångström", ids.clone()), NOBODY, false)
            .await
            .unwrap();
        f.groups
            .create_group("a", input("Other", vec![]), NOBODY, false)
            .await
            .unwrap();
        f.outbox_done().await;
        for taken in ["ÅNGSTRÖM", "ångström"] {
            let r = f
                .groups
                .create_group("a", input(taken, vec![]), NOBODY, false)
                .await;
            assert!(matches!(r, Err(StoreError::DisplayNameTaken)), "{taken}");
        }
        f.groups
            .create_group("b", input("ÅNGSTRÖM", vec![]), NOBODY, false)
            .await
            .unwrap();
        let rename = |name: &str| GroupChange {
            display_name: Some(name.into()),
            ..Default::default()
        };
        let r = f
            .groups
            .change_group("a", g.id, None, &rename("OTHER"), EVERY, None)
            .await;
        assert!(matches!(r, Err(StoreError::DisplayNameTaken)), "{r:?}");
        // Nothing of the refused rename stayed.
        assert_eq!(f.user_row(ids[0]).await, (2, "done".into(), 1));
        // A rename: every member's `groups` changed; watched, they are re-delivered.
        let renamed = f
            .groups
            .change_group("a", g.id, None, &rename("ÅNGSTRÖM"), EVERY, None)
            .await
            .unwrap();
        assert_eq!(renamed.version, 2);
        assert_eq!(f.user_row(ids[1]).await, (3, "pending".into(), 3));
        assert!(f.woken().await);
        let user = f.users.get("a", ids[0]).await.unwrap().unwrap();
        assert_eq!(user.groups.len(), 1);
        assert_eq!(user.groups[0].display, "ÅNGSTRÖM");
        // An externalId change of an unwatched group leaves the users alone.
        let ext = GroupChange {
            external_id: Some(Some("x-1".into())),
            ..Default::default()
        };
        let g = f
            .groups
            .change_group("a", g.id, None, &ext, NOBODY, None)
            .await
            .unwrap();
        assert_eq!((g.version, g.external_id.as_deref()), (3, Some("x-1")));
        assert_eq!(f.user_row(ids[1]).await.0, 3);
        // If-Match and unknown groups.
        let stale = IfMatch::Versions(vec![1]);
        let r = f
            .groups
            .change_group("a", g.id, Some(&stale), &rename("x"), NOBODY, None)
            .await;
        assert!(matches!(r, Err(StoreError::PreconditionFailed)), "{r:?}");
        let r = f.groups.delete_group("a", g.id, Some(&stale), NOBODY).await;
        assert!(matches!(r, Err(StoreError::PreconditionFailed)), "{r:?}");
        let r = f.groups.delete_group("b", g.id, None, NOBODY).await;
        assert!(matches!(r, Err(StoreError::GroupNotFound)), "{r:?}");
        // Deleting a watched group re-delivers its members.
        f.outbox_done().await;
        f.groups
            .delete_group("a", g.id, Some(&IfMatch::Versions(vec![3])), EVERY)
            .await
            .unwrap();
        assert_eq!(f.user_row(ids[0]).await, (4, "pending".into(), 4));
        assert!(f.woken().await);
        assert!(
            f.users
                .get("a", ids[0])
                .await
                .unwrap()
                .unwrap()
                .groups
                .is_empty()
        );
    }

    #[tokio::test]
    async fn a_deleted_user_leaves_its_groups_with_the_delete() {
        let f = fixture().await;
        let ids = users_named(&f, &["u0", "u1"]).await;
        let g = f
            .groups
            .create_group("a", input("G", ids.clone()), NOBODY, false)
            .await
            .unwrap();
        f.users.delete("a", ids[0], None).await.unwrap();
        let rows: Vec<String> =
            sqlx::query_scalar("SELECT user_id FROM group_members ORDER BY user_id")
                .fetch_all(f.pool())
                .await
                .unwrap();
        assert_eq!(rows, vec![ids[1].to_string()]);
        assert_eq!(f.members(g.id).await, vec![ids[1]]);
    }

    #[tokio::test]
    async fn a_thousand_members_join_in_one_change_and_all_are_delivered() {
        let f = fixture().await;
        let mut ids = Vec::new();
        for i in 0..1000 {
            ids.push(f.user("a", &format!("m{i:04}")).await);
        }
        f.outbox_done().await;
        let g = f
            .groups
            .create_group("a", input("Big", vec![]), NOBODY, false)
            .await
            .unwrap();
        f.groups
            .change_group("a", g.id, None, &delta(ids.clone(), vec![]), EVERY, None)
            .await
            .unwrap();
        assert_eq!(f.members(g.id).await.len(), 1000);
        let pending: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sync_state WHERE state = 'pending' AND desired_version = 2",
        )
        .fetch_one(f.pool())
        .await
        .unwrap();
        assert_eq!(pending, 1000);
        assert!(f.woken().await);
    }

    #[tokio::test]
    async fn deliveries_and_reconcile_see_the_users_groups() {
        use crate::ameyo::mapping::GroupKey;
        use crate::store::outbox::Outbox;
        let f = fixture().await;
        let ids = users_named(&f, &["u0", "u1"]).await;
        let mut quality = input("Quality", vec![ids[0]]);
        quality.external_id = Some("q-1".into());
        f.groups
            .create_group("a", quality, NOBODY, false)
            .await
            .unwrap();
        f.groups
            .create_group("a", input("Ångström", vec![ids[0]]), NOBODY, false)
            .await
            .unwrap();
        let keys = |mut k: Vec<GroupKey>| {
            k.sort_by(|a, b| a.display_name.cmp(&b.display_name));
            k
        };
        let expected = vec![
            GroupKey {
                display_name: "Quality".into(),
                external_id: Some("q-1".into()),
            },
            GroupKey {
                display_name: "Ångström".into(),
                external_id: None,
            },
        ];
        let outbox = super::super::outbox::SqliteOutbox::new(f.pool().clone());
        let claimed = outbox
            .claim("w", &["a".to_string()], Duration::from_secs(30), 10)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 2);
        for c in claimed {
            let want = if c.user_id == ids[0] {
                expected.clone()
            } else {
                vec![]
            };
            assert_eq!(keys(c.groups), want);
        }
        let linked = outbox.linked_users("a").await.unwrap();
        assert_eq!(linked.len(), 2);
        for l in linked {
            let want = if l.id == ids[0] {
                expected.clone()
            } else {
                vec![]
            };
            assert_eq!(keys(l.groups), want);
        }
    }

    /// What SQLite plans for `sql` (with `args` bound as text).
    async fn plan(pool: &SqlitePool, sql: &str, args: &[&str]) -> String {
        let explain = format!("EXPLAIN QUERY PLAN {sql}");
        let mut q = sqlx::query_as::<_, (i64, i64, i64, String)>(sqlx::AssertSqlSafe(explain));
        for a in args {
            q = q.bind(a.to_string());
        }
        let rows = q.fetch_all(pool).await.unwrap();
        rows.into_iter().map(|r| r.3).collect::<Vec<_>>().join("\n")
    }

    async fn list_plan(pool: &SqlitePool, filter: &str) -> String {
        let q = ListQuery {
            filter: Some(parse_group(filter).unwrap()),
            sort_by: None,
            descending: false,
            start_index: 1,
            count: 10,
        };
        let mut page: QueryBuilder<Sqlite> =
            QueryBuilder::new(concat!("EXPLAIN QUERY PLAN SELECT ", group_columns!()));
        push_group_from_where::<SqliteGroups>(&mut page, "a", &q).unwrap();
        push_group_order::<SqliteGroups>(&mut page, &q).unwrap();
        let rows: Vec<(i64, i64, i64, String)> =
            page.build_query_as().fetch_all(pool).await.unwrap();
        rows.into_iter().map(|r| r.3).collect::<Vec<_>>().join("\n")
    }

    #[tokio::test]
    async fn member_statements_and_lookups_use_their_indexes() {
        let f = fixture().await;
        let ids = users_named(&f, &["u0", "u1", "u2"]).await;
        let mut gid = Uuid::nil();
        for i in 0..50 {
            gid = f
                .groups
                .create_group("a", input(&format!("G{i}"), ids.clone()), NOBODY, false)
                .await
                .unwrap()
                .id;
        }
        let pool = f.pool();
        let list = format!(r#"["{}","{}"]"#, ids[0], ids[1]);
        let gid_s = gid.to_string();
        for (label, sql, args) in [
            ("live users", LIVE_USERS_SQL, vec!["a", list.as_str()]),
            ("members", MEMBERS_SQL, vec![list.as_str()]),
            (
                "touch",
                TOUCH_USERS_SQL,
                vec!["a", gid_s.as_str(), "t", list.as_str(), "1"],
            ),
            (
                "leave",
                "DELETE FROM group_members
                 WHERE group_id = ?1 AND user_id IN (SELECT value FROM json_each(?2))",
                vec![gid_s.as_str(), list.as_str()],
            ),
            (
                "replace",
                "DELETE FROM group_members
                 WHERE group_id = ?1 AND user_id NOT IN (SELECT value FROM json_each(?2))",
                vec![gid_s.as_str(), list.as_str()],
            ),
        ] {
            let p = plan(pool, sql, &args).await;
            assert!(
                !p.contains("SCAN u\n") && !p.ends_with("SCAN u"),
                "{label}:\n{p}"
            );
            assert!(!p.contains("SCAN users"), "{label}:\n{p}");
            assert!(
                !p.contains("SCAN gm") && !p.contains("SCAN group_members"),
                "{label}:\n{p}"
            );
        }
        for (filter, index) in [
            (
                r#"displayName eq "g7""#.to_string(),
                "groups_tenant_display_name_key",
            ),
            (
                r#"displayName sw "G4""#.to_string(),
                "groups_tenant_display_name_key",
            ),
            (
                r#"externalId eq "x""#.to_string(),
                "groups_tenant_external_id",
            ),
            (format!(r#"id eq "{gid}""#), "sqlite_autoindex_groups_1"),
        ] {
            let p = list_plan(pool, &filter).await;
            assert!(p.contains(index), "{filter}: expected {index}:\n{p}");
            assert!(!p.contains("SCAN g"), "{filter}:\n{p}");
        }
        let p = list_plan(pool, &format!(r#"members[value eq "{}"]"#, ids[0])).await;
        assert!(!p.contains("SCAN m"), "{p}");
        // The users' filter on a group: its member rows, not every user of the tenant.
        let q = ListQuery {
            filter: Some(
                crate::scim::filter::parse(&format!(r#"groups.value eq "{gid}""#)).unwrap(),
            ),
            sort_by: None,
            descending: false,
            start_index: 1,
            count: 10,
        };
        let mut count = super::super::filter::count_query("EXPLAIN QUERY PLAN ", "a", &q).unwrap();
        let rows: Vec<(i64, i64, i64, String)> =
            count.build_query_as().fetch_all(pool).await.unwrap();
        let p = rows.into_iter().map(|r| r.3).collect::<Vec<_>>().join("\n");
        assert!(p.contains("group_members"), "{p}");
        assert!(!p.contains("SCAN gk"), "{p}");
    }
}
