//! Groups and their members, behind [`GroupStore`], and the PostgreSQL implementation.
//!
//! Members are rows of `group_members`, one per (group, user); a change is applied as
//! set operations on those rows (insert the joining, delete the leaving), so its cost
//! follows the size of the change, not of the group. In the same transaction the users
//! whose membership changed get a new version (their `groups` attribute changed) and,
//! when the tenant's mapping rules look at the group, a pending outbox row: a
//! membership change reaches Ameyo exactly like a change of the user.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, QueryBuilder, Row};
use uuid::Uuid;

use super::outbox::mark_pending;
use super::{IfMatch, ListQuery, Result, StoreError};
use crate::scim::ScimError;
use crate::scim::filter::{AttrPath, CompValue, CompareOp, Filter};
use crate::scim::group::{GroupChange, GroupInput, Member, Members, StoredGroup, no_such_members};

/// Whether the tenant's mapping looks at a group (by displayName, externalId): then a
/// change of its members, or of its name, re-delivers the users concerned.
pub type Watched<'a> = dyn Fn(&str, Option<&str>) -> bool + Send + Sync + 'a;

/// One page of groups.
#[derive(Debug)]
pub struct GroupPage {
    pub total: u64,
    pub groups: Vec<StoredGroup>,
}

/// Groups of one tenant at a time: every method is scoped by the tenant id. `members`
/// says whether the caller wants the member list read (a 100,000-member group is not
/// read for a request that leaves members out).
#[async_trait]
pub trait GroupStore: Send + Sync + 'static {
    /// Create a group with its members (all users of the tenant, or 400, nothing
    /// written).
    async fn create_group(
        &self,
        tenant: &str,
        group: GroupInput,
        watched: &Watched<'_>,
        members: bool,
    ) -> Result<StoredGroup>;
    async fn get_group(&self, tenant: &str, id: Uuid, members: bool)
    -> Result<Option<StoredGroup>>;
    async fn list_groups(
        &self,
        tenant: &str,
        query: &ListQuery,
        members: bool,
    ) -> Result<GroupPage>;
    /// Apply a change (PUT or PATCH) atomically: the group row, its member rows, the
    /// affected users' versions and outbox rows. `members`: read the member list for
    /// the answer, unless the group then has more than that many (left out, `None`).
    async fn change_group(
        &self,
        tenant: &str,
        id: Uuid,
        if_match: Option<&IfMatch>,
        change: &GroupChange,
        watched: &Watched<'_>,
        members: Option<usize>,
    ) -> Result<StoredGroup>;
    /// Delete a group; its members lose it, in the same transaction.
    async fn delete_group(
        &self,
        tenant: &str,
        id: Uuid,
        if_match: Option<&IfMatch>,
        watched: &Watched<'_>,
    ) -> Result<()>;
}

/// The unique index behind `uniqueness` for displayName.
const DISPLAY_NAME_KEY: &str = "groups_tenant_display_name_key";

/// Where a group attribute of a filter or sort lives, as SQL over `groups g`.
enum GroupAttr {
    /// caseExact=false: compared and sorted through the dialect's folded form.
    DisplayName,
    /// A caseExact text column.
    Text(&'static str),
    Time(&'static str),
    Id,
    Members,
    ResourceType,
}

/// Resolve a filter or sort path over groups.
fn group_attr(path: &AttrPath) -> Result<GroupAttr, ScimError> {
    Ok(match (path.attr.attr.name, path.sub.map(|s| s.name)) {
        ("id", None) => GroupAttr::Id,
        ("displayName", None) => GroupAttr::DisplayName,
        ("externalId", None) => GroupAttr::Text("g.external_id"),
        ("meta", Some("created")) => GroupAttr::Time("g.created"),
        ("meta", Some("lastModified")) => GroupAttr::Time("g.last_modified"),
        ("meta", Some("resourceType")) => GroupAttr::ResourceType,
        ("members", None) | ("members", Some("value")) => GroupAttr::Members,
        _ => {
            return Err(ScimError::invalid_filter(format!(
                "groups cannot be filtered or sorted by '{}'",
                path.display()
            )));
        }
    })
}

/// The SQL of one store for a group filter's few pieces.
pub(crate) trait GroupDialect {
    type Db: sqlx::Database;
    /// Binds an id as `groups.id` and `group_members.user_id` hold it.
    fn push_id(qb: &mut QueryBuilder<Self::Db>, id: Uuid);
    fn push_text(qb: &mut QueryBuilder<Self::Db>, value: String);
    fn push_time(qb: &mut QueryBuilder<Self::Db>, value: DateTime<Utc>);
    /// `expr` compared with `s` (`ne` comes as `eq`, negated by the caller).
    fn push_text_cmp(
        qb: &mut QueryBuilder<Self::Db>,
        expr: &str,
        case_exact: bool,
        op: CompareOp,
        s: &str,
    );
    /// The id as text, for comparisons other than equality.
    const ID_TEXT: &'static str;
    /// What displayName is compared through (with `case_exact` false).
    const DISPLAY_NAME: &'static str;
    /// The case-insensitive sort key of displayName.
    const DISPLAY_NAME_SORT: &'static str;
    /// The resource type as a text expression compared with `case_exact` false.
    const RESOURCE_TYPE: &'static str;
}

/// A group filter as a boolean SQL expression over `groups g`.
pub(crate) fn push_group_filter<D: GroupDialect>(
    qb: &mut QueryBuilder<D::Db>,
    f: &Filter,
) -> Result<(), ScimError> {
    match f {
        Filter::And(a, b) | Filter::Or(a, b) => {
            qb.push("(");
            push_group_filter::<D>(qb, a)?;
            qb.push(if matches!(f, Filter::And(..)) {
                " AND "
            } else {
                " OR "
            });
            push_group_filter::<D>(qb, b)?;
            qb.push(")");
        }
        Filter::Not(a) => {
            qb.push("((");
            push_group_filter::<D>(qb, a)?;
            qb.push(") IS NOT TRUE)");
        }
        Filter::ValuePath(_, inner) => {
            // members[value eq "..."]: the only member test there is.
            push_group_filter::<D>(qb, inner)?;
        }
        Filter::Present(path) => match group_attr(path)? {
            GroupAttr::DisplayName => {
                qb.push(format!("(coalesce({}, '') <> '')", D::DISPLAY_NAME));
            }
            GroupAttr::Text(col) => {
                qb.push(format!("(coalesce({col}, '') <> '')"));
            }
            GroupAttr::Members => {
                qb.push("EXISTS (SELECT 1 FROM group_members m WHERE m.group_id = g.id)");
            }
            GroupAttr::Time(_) | GroupAttr::Id | GroupAttr::ResourceType => {
                qb.push("TRUE");
            }
        },
        Filter::Compare(path, op, value) => push_compare::<D>(qb, path, *op, value)?,
    }
    Ok(())
}

fn push_compare<D: GroupDialect>(
    qb: &mut QueryBuilder<D::Db>,
    path: &AttrPath,
    op: CompareOp,
    value: &CompValue,
) -> Result<(), ScimError> {
    let attr = group_attr(path)?;
    let CompValue::Str(s) = value else {
        return match (value, op) {
            (CompValue::Null, CompareOp::Eq) => {
                push_group_filter::<D>(qb, &Filter::Not(Box::new(Filter::Present(*path))))
            }
            (CompValue::Null, CompareOp::Ne) => push_group_filter::<D>(qb, &Filter::Present(*path)),
            _ => Err(ScimError::invalid_filter(format!(
                "'{}' is compared with a string",
                path.display()
            ))),
        };
    };
    let (negate, op) = match op {
        CompareOp::Ne => (true, CompareOp::Eq),
        other => (false, other),
    };
    if negate {
        qb.push("((");
    }
    match attr {
        GroupAttr::DisplayName => D::push_text_cmp(qb, D::DISPLAY_NAME, false, op, s),
        GroupAttr::Text(col) => D::push_text_cmp(qb, col, true, op, s),
        GroupAttr::ResourceType => D::push_text_cmp(qb, D::RESOURCE_TYPE, false, op, s),
        GroupAttr::Id if op == CompareOp::Eq => match Uuid::parse_str(s) {
            Ok(id) => {
                qb.push("g.id = ");
                D::push_id(qb, id);
            }
            Err(_) => {
                qb.push("FALSE");
            }
        },
        GroupAttr::Id => D::push_text_cmp(qb, D::ID_TEXT, true, op, s),
        GroupAttr::Members if op == CompareOp::Eq => match Uuid::parse_str(s) {
            Ok(id) => {
                qb.push("EXISTS (SELECT 1 FROM group_members m WHERE m.group_id = g.id AND m.user_id = ");
                D::push_id(qb, id);
                qb.push(")");
            }
            Err(_) => {
                qb.push("FALSE");
            }
        },
        GroupAttr::Members => {
            return Err(ScimError::invalid_filter(
                "members are matched by value with eq only",
            ));
        }
        GroupAttr::Time(col) => {
            let t = DateTime::parse_from_rfc3339(s)
                .map_err(|_| {
                    ScimError::invalid_filter(format!(
                        "'{}' is compared with an RFC 3339 time",
                        path.display()
                    ))
                })?
                .with_timezone(&Utc);
            let sql_op = match op {
                CompareOp::Eq => " = ",
                CompareOp::Gt => " > ",
                CompareOp::Ge => " >= ",
                CompareOp::Lt => " < ",
                CompareOp::Le => " <= ",
                _ => {
                    return Err(ScimError::invalid_filter(format!(
                        "'{}' cannot be compared with {}",
                        path.display(),
                        op.as_str()
                    )));
                }
            };
            qb.push(col);
            qb.push(sql_op);
            D::push_time(qb, t);
        }
    }
    if negate {
        qb.push(") IS NOT TRUE)");
    }
    Ok(())
}

/// The ORDER BY key of a group sort.
pub(crate) fn group_sort_expr<D: GroupDialect>(path: &AttrPath) -> Result<&'static str, ScimError> {
    Ok(match group_attr(path)? {
        GroupAttr::DisplayName => D::DISPLAY_NAME_SORT,
        GroupAttr::Text(col) => col,
        GroupAttr::Time(col) => col,
        GroupAttr::Id => "g.id",
        GroupAttr::ResourceType => "g.created",
        GroupAttr::Members => {
            return Err(ScimError::invalid_value(
                "groups cannot be sorted by members",
            ));
        }
    })
}

/// `FROM groups g WHERE ...` of a list.
pub(crate) fn push_group_from_where<D: GroupDialect>(
    qb: &mut QueryBuilder<D::Db>,
    tenant: &str,
    q: &ListQuery,
) -> Result<(), ScimError> {
    qb.push(" FROM groups g WHERE g.tenant_id = ");
    D::push_text(qb, tenant.to_string());
    if let Some(f) = &q.filter {
        qb.push(" AND ");
        push_group_filter::<D>(qb, f)?;
    }
    Ok(())
}

/// ORDER BY ... LIMIT ... OFFSET of a list page: the sort key, then (created, id).
pub(crate) fn push_group_order<D: GroupDialect>(
    qb: &mut QueryBuilder<D::Db>,
    q: &ListQuery,
) -> Result<(i64, i64), ScimError> {
    qb.push(" ORDER BY ");
    if let Some(sort) = &q.sort_by {
        qb.push(group_sort_expr::<D>(sort)?);
        qb.push(if q.descending {
            " DESC NULLS LAST, "
        } else {
            " ASC NULLS LAST, "
        });
    }
    qb.push("g.created, g.id");
    let offset = i64::try_from(q.start_index.saturating_sub(1)).unwrap_or(i64::MAX);
    let limit = i64::try_from(q.count).unwrap_or(i64::MAX);
    Ok((limit, offset))
}

// ---------------------------------------------------------------- PostgreSQL

pub(crate) struct PgGroups;

impl GroupDialect for PgGroups {
    type Db = Postgres;
    const ID_TEXT: &'static str = "g.id::text";
    // push_text_cmp lowers both sides, as the unique index on lower(display_name) is.
    const DISPLAY_NAME: &'static str = "g.display_name";
    const DISPLAY_NAME_SORT: &'static str = "lower(g.display_name)";
    const RESOURCE_TYPE: &'static str = "'Group'::text";

    fn push_id(qb: &mut QueryBuilder<Postgres>, id: Uuid) {
        qb.push_bind(id);
    }
    fn push_text(qb: &mut QueryBuilder<Postgres>, value: String) {
        qb.push_bind(value);
    }
    fn push_time(qb: &mut QueryBuilder<Postgres>, value: DateTime<Utc>) {
        qb.push_bind(value);
    }
    fn push_text_cmp(
        qb: &mut QueryBuilder<Postgres>,
        expr: &str,
        case_exact: bool,
        op: CompareOp,
        s: &str,
    ) {
        <super::filter_sql::PgDialect as super::filter_sql::Dialect>::push_text_cmp(
            qb, expr, case_exact, op, s,
        );
    }
}

macro_rules! group_columns {
    () => {
        "g.id, g.display_name, g.external_id, g.version, g.created, g.last_modified"
    };
}
const GROUP_COLUMNS: &str = group_columns!();

fn row_to_group(row: &sqlx::postgres::PgRow) -> Result<StoredGroup> {
    Ok(StoredGroup {
        id: row.try_get("id")?,
        display_name: row.try_get("display_name")?,
        external_id: row.try_get("external_id")?,
        version: row.try_get("version")?,
        created: row.try_get("created")?,
        last_modified: row.try_get("last_modified")?,
        members: None,
    })
}

fn map_unique(e: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &e
        && db.constraint() == Some(DISPLAY_NAME_KEY)
    {
        return StoreError::DisplayNameTaken;
    }
    e.into()
}

/// The live members of groups, in a stable order (by user id).
const MEMBERS_SQL: &str = "
SELECT gm.group_id, u.id,
       coalesce(nullif(u.resource ->> 'displayName', ''), u.user_name) AS display
FROM group_members gm JOIN users u ON u.id = gm.user_id AND u.deleted_at IS NULL
WHERE gm.group_id = ANY($1)
ORDER BY gm.group_id, u.id";

/// Users whose memberships changed: a new version (their `groups` changed) and, when
/// `$3`, a pending outbox row, in one statement. `$2`: every live member of group `$4`
/// as well (a watched group renamed or deleted).
/// Users whose memberships changed ($1, already locked): a new version (their `groups`
/// changed) and, when `$2`, a pending outbox row, in one statement.
const TOUCH_USERS_SQL: &str = concat!(
    "WITH touched AS (
        UPDATE users SET version = version + 1, last_modified = now()
        WHERE id = ANY($1)
        RETURNING *),
     u AS (SELECT * FROM touched WHERE $2),
     ",
    mark_pending!(keep_password),
    "
     SELECT count(*), count(*) FILTER (WHERE $2) FROM touched"
);

pub struct PgGroupStore {
    pool: PgPool,
}

impl PgGroupStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    async fn with_members<'e, E>(&self, executor: E, groups: &mut [StoredGroup]) -> Result<()>
    where
        E: sqlx::PgExecutor<'e>,
    {
        let ids: Vec<Uuid> = groups.iter().map(|g| g.id).collect();
        let rows = sqlx::query(MEMBERS_SQL)
            .bind(&ids)
            .fetch_all(executor)
            .await?;
        let at: std::collections::HashMap<Uuid, usize> =
            groups.iter().enumerate().map(|(i, g)| (g.id, i)).collect();
        for g in groups.iter_mut() {
            g.members = Some(Vec::new());
        }
        for row in rows {
            let gid: Uuid = row.try_get("group_id")?;
            if let Some(members) = at.get(&gid).and_then(|&i| groups[i].members.as_mut()) {
                members.push(Member {
                    id: row.try_get("id")?,
                    display: row.try_get("display")?,
                });
            }
        }
        Ok(())
    }
}

/// Apply `members` to group `gid` inside `tx` (which holds the group's row lock), and
/// give the users concerned a new version and, when `watched`, a pending outbox row.
/// With `all_members`, every member is concerned (the group was renamed or is being
/// deleted).
///
/// Lock order: the group row, then the users concerned (one statement, in id order),
/// then member rows. A SCIM DELETE of a user locks the user, then its member rows, so
/// neither it nor a change of another group sharing members can deadlock with this;
/// and a user deleted meanwhile is either seen as gone here (and refused as a joining
/// member) or deleted after this commits, its member rows with it.
///
/// Joining ids that are not live users of the tenant: 400, nothing written.
async fn apply_members(
    tx: &mut sqlx::PgConnection,
    tenant: &str,
    gid: Uuid,
    members: &Members,
    all_members: bool,
    watched: bool,
) -> Result<bool> {
    let (joining, leaving): (&[Uuid], Vec<Uuid>) = match members {
        Members::Keep => (&[], vec![]),
        Members::Delta { add, remove } => (add, remove.clone()),
        Members::Replace(ids) => {
            let leaving = sqlx::query_scalar(
                // NOT IN over a subquery: a hashed anti-join, not a scan of the list
                // per member, for a replace of a large group.
                "SELECT user_id FROM group_members
                 WHERE group_id = $1 AND user_id NOT IN (SELECT unnest($2::uuid[]))",
            )
            .bind(gid)
            .bind(ids)
            .fetch_all(&mut *tx)
            .await?;
            (ids, leaving)
        }
    };
    if joining.is_empty() && leaving.is_empty() && !all_members {
        return Ok(false);
    }
    let concerned: Vec<Uuid> = joining.iter().chain(&leaving).copied().collect();
    let live: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM users
         WHERE tenant_id = $1 AND deleted_at IS NULL
           AND (id = ANY($2)
                OR ($3 AND id IN (SELECT user_id FROM group_members WHERE group_id = $4)))
         ORDER BY id FOR NO KEY UPDATE",
    )
    .bind(tenant)
    .bind(&concerned)
    .bind(all_members)
    .bind(gid)
    .fetch_all(&mut *tx)
    .await?;
    let live_set: std::collections::HashSet<Uuid> = live.iter().copied().collect();
    let missing: Vec<String> = joining
        .iter()
        .filter(|id| !live_set.contains(id))
        .map(Uuid::to_string)
        .collect();
    if !missing.is_empty() {
        return Err(StoreError::Rejected(no_such_members(&missing)));
    }
    let left: Vec<Uuid> = sqlx::query_scalar(
        "DELETE FROM group_members WHERE group_id = $1 AND user_id = ANY($2) RETURNING user_id",
    )
    .bind(gid)
    .bind(&leaving)
    .fetch_all(&mut *tx)
    .await?;
    let joined: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO group_members (group_id, user_id)
         SELECT $1, id FROM unnest($2::uuid[]) AS j(id)
         ON CONFLICT DO NOTHING RETURNING user_id",
    )
    .bind(gid)
    .bind(joining)
    .fetch_all(&mut *tx)
    .await?;
    let changed = !left.is_empty() || !joined.is_empty();
    let touched: Vec<Uuid> = if all_members {
        live
    } else {
        left.into_iter()
            .filter(|id| live_set.contains(id))
            .chain(joined)
            .collect()
    };
    if touched.is_empty() {
        return Ok(changed);
    }
    if watched {
        // Their outbox rows too, in user order: the workers record a batch of outcomes
        // locking rows in that order, so neither can wait for the other in a cycle.
        super::outbox::lock_rows(&mut *tx, &touched).await?;
    }
    let (_touched, pending): (i64, i64) = sqlx::query_as(TOUCH_USERS_SQL)
        .bind(&touched)
        .bind(watched)
        .fetch_one(&mut *tx)
        .await?;
    if pending > 0 {
        sqlx::query("SELECT pg_notify('ameyo_scim_sync', $1)")
            .bind(tenant)
            .execute(&mut *tx)
            .await?;
    }
    Ok(changed)
}

/// The group `id` of `tenant`, its row locked for this transaction (which orders
/// concurrent changes of one group), if it exists and `if_match` allows.
async fn lock_group(
    tx: &mut sqlx::PgConnection,
    tenant: &str,
    id: Uuid,
    if_match: Option<&IfMatch>,
) -> Result<StoredGroup> {
    let row = sqlx::query(concat!(
        "SELECT ",
        group_columns!(),
        " FROM groups g WHERE g.tenant_id = $1 AND g.id = $2 FOR UPDATE"
    ))
    .bind(tenant)
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let current = row
        .as_ref()
        .map(row_to_group)
        .transpose()?
        .ok_or(StoreError::GroupNotFound)?;
    if let Some(m) = if_match
        && !m.matches(current.version)
    {
        return Err(StoreError::PreconditionFailed);
    }
    Ok(current)
}

#[async_trait]
impl GroupStore for PgGroupStore {
    async fn create_group(
        &self,
        tenant: &str,
        group: GroupInput,
        watched: &Watched<'_>,
        members: bool,
    ) -> Result<StoredGroup> {
        let id = Uuid::new_v4();
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "INSERT INTO groups AS g (id, tenant_id, display_name, external_id, version, created, last_modified)
             VALUES ($1, $2, $3, $4, 1, now(), now())
             RETURNING g.id, g.display_name, g.external_id, g.version, g.created, g.last_modified",
        )
        .bind(id)
        .bind(tenant)
        .bind(&group.display_name)
        .bind(&group.external_id)
        .fetch_one(&mut *tx)
        .await
        .map_err(map_unique)?;
        let mut stored = row_to_group(&row)?;
        let watch = watched(&group.display_name, group.external_id.as_deref());
        apply_members(
            &mut tx,
            tenant,
            id,
            &Members::Replace(group.members),
            false,
            watch,
        )
        .await?;
        if members {
            self.with_members(&mut *tx, std::slice::from_mut(&mut stored))
                .await?;
        }
        tx.commit().await?;
        Ok(stored)
    }

    async fn get_group(
        &self,
        tenant: &str,
        id: Uuid,
        members: bool,
    ) -> Result<Option<StoredGroup>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            group_columns!(),
            " FROM groups g WHERE g.tenant_id = $1 AND g.id = $2"
        ))
        .bind(tenant)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let mut g = row_to_group(&row)?;
        if members {
            self.with_members(&self.pool, std::slice::from_mut(&mut g))
                .await?;
        }
        Ok(Some(g))
    }

    async fn list_groups(&self, tenant: &str, q: &ListQuery, members: bool) -> Result<GroupPage> {
        let mut count: QueryBuilder<Postgres> = QueryBuilder::new("SELECT count(*)");
        push_group_from_where::<PgGroups>(&mut count, tenant, q)?;
        let total: i64 = count
            .build_query_scalar()
            .persistent(false)
            .fetch_one(&self.pool)
            .await?;
        if q.count == 0 {
            return Ok(GroupPage {
                total: total as u64,
                groups: vec![],
            });
        }
        let mut page: QueryBuilder<Postgres> = QueryBuilder::new(format!("SELECT {GROUP_COLUMNS}"));
        push_group_from_where::<PgGroups>(&mut page, tenant, q)?;
        let (limit, offset) = push_group_order::<PgGroups>(&mut page, q)?;
        page.push(" LIMIT ");
        page.push_bind(limit);
        page.push(" OFFSET ");
        page.push_bind(offset);
        let rows = page.build().persistent(false).fetch_all(&self.pool).await?;
        let mut groups = rows.iter().map(row_to_group).collect::<Result<Vec<_>>>()?;
        if members && !groups.is_empty() {
            self.with_members(&self.pool, &mut groups).await?;
        }
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
        let mut tx = self.pool.begin().await?;
        let current = lock_group(&mut tx, tenant, id, if_match).await?;
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
        // The users who stay members see the group's new name; if the rules look at the
        // group under its old or new name, what they map to may change too.
        let names_changed = renamed || external_id != current.external_id;
        let all_members = renamed || (names_changed && (watch_before || watch_after));
        let changed = apply_members(
            &mut tx,
            tenant,
            id,
            &change.members,
            all_members,
            watch_before || watch_after,
        )
        .await?;
        let mut stored = if !changed && !names_changed {
            current
        } else {
            let row = sqlx::query(concat!(
                "UPDATE groups g SET display_name = $3, external_id = $4, version = version + 1,
                     last_modified = now()
                 WHERE g.tenant_id = $1 AND g.id = $2 RETURNING ",
                group_columns!()
            ))
            .bind(tenant)
            .bind(id)
            .bind(&name)
            .bind(&external_id)
            .fetch_one(&mut *tx)
            .await
            .map_err(map_unique)?;
            row_to_group(&row)?
        };
        if let Some(limit) = members {
            let at_most = i64::try_from(limit).unwrap_or(i64::MAX - 1) + 1;
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM (SELECT 1 FROM group_members WHERE group_id = $1 LIMIT $2) AS m",
            )
            .bind(id)
            .bind(at_most)
            .fetch_one(&mut *tx)
            .await?;
            if n < at_most {
                self.with_members(&mut *tx, std::slice::from_mut(&mut stored))
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(stored)
    }

    async fn delete_group(
        &self,
        tenant: &str,
        id: Uuid,
        if_match: Option<&IfMatch>,
        watched: &Watched<'_>,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let current = lock_group(&mut tx, tenant, id, if_match).await?;
        let watch = watched(&current.display_name, current.external_id.as_deref());
        apply_members(&mut tx, tenant, id, &Members::Keep, true, watch).await?;
        sqlx::query("DELETE FROM groups WHERE tenant_id = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// One group row whole, as `migrate-store` moves it between stores (its members move
/// as [`MemberRecord`]s, after the users and the groups).
#[derive(Debug, Clone, PartialEq)]
pub struct GroupRecord {
    pub id: Uuid,
    pub tenant_id: String,
    pub display_name: String,
    pub external_id: Option<String>,
    pub version: i64,
    pub created: DateTime<Utc>,
    pub last_modified: DateTime<Utc>,
}

/// One membership row, as `migrate-store` moves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct MemberRecord {
    pub group_id: Uuid,
    pub user_id: Uuid,
}

/// Write exported groups into PostgreSQL (inside the caller's transaction).
pub async fn import_groups(conn: &mut sqlx::PgConnection, rows: &[GroupRecord]) -> Result<()> {
    sqlx::query(
        "INSERT INTO groups (id, tenant_id, display_name, external_id, version, created,
                             last_modified)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bigint[],
                              $6::timestamptz[], $7::timestamptz[])",
    )
    .bind(rows.iter().map(|r| r.id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.tenant_id.clone()).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|r| r.display_name.clone())
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.iter()
            .map(|r| r.external_id.clone())
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|r| r.version).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.created).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.last_modified).collect::<Vec<_>>())
    .execute(conn)
    .await
    .map_err(map_unique)?;
    Ok(())
}

/// Write exported memberships into PostgreSQL, after their users and groups.
pub async fn import_members(conn: &mut sqlx::PgConnection, rows: &[MemberRecord]) -> Result<()> {
    sqlx::query(
        "INSERT INTO group_members (group_id, user_id)
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[])",
    )
    .bind(rows.iter().map(|r| r.group_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.user_id).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}
