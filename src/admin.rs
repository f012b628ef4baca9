//! What the admin CLI does: read and steer the outbox of the database the service
//! uses, show one user's story, and reconcile our users with Ameyo's user list.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::ameyo::client::{AmeyoClient, SessionStore};
use crate::ameyo::mapping::Mapper;
use crate::config::{OnDeactivate, Settings};
use crate::scim::resource::{StoredUser, render};
use crate::store::password::PasswordCipher;
use crate::store::postgres::SYNC_CHANNEL;
use crate::store::session::PgSessionStore;

/// Outbox counts for one tenant.
#[derive(Debug, Serialize, PartialEq)]
pub struct TenantStatus {
    pub tenant: String,
    pub pending: i64,
    pub leased: i64,
    pub done: i64,
    pub dead: i64,
    /// Seconds since the oldest change not yet delivered was made.
    pub oldest_pending_secs: Option<f64>,
}

pub async fn status(pool: &PgPool, settings: &Settings) -> anyhow::Result<Vec<TenantStatus>> {
    let rows: Vec<(String, String, i64, Option<f64>)> = sqlx::query_as(
        "SELECT tenant_id, state, count(*),
                EXTRACT(EPOCH FROM now() - min(pending_since))::float8
         FROM sync_state GROUP BY tenant_id, state",
    )
    .fetch_all(pool)
    .await?;
    let mut tenants: BTreeSet<String> = settings.tenants.iter().map(|t| t.id.clone()).collect();
    tenants.extend(rows.iter().map(|r| r.0.clone()));
    Ok(tenants
        .into_iter()
        .map(|tenant| {
            let n = |state: &str| {
                rows.iter()
                    .find(|r| r.0 == tenant && r.1 == state)
                    .map(|r| r.2)
                    .unwrap_or(0)
            };
            let oldest = rows
                .iter()
                .filter(|r| r.0 == tenant && (r.1 == "pending" || r.1 == "leased"))
                .filter_map(|r| r.3)
                .fold(None, |acc: Option<f64>, v| {
                    Some(acc.map_or(v, |a| a.max(v)))
                });
            TenantStatus {
                pending: n("pending"),
                leased: n("leased"),
                done: n("done"),
                dead: n("dead"),
                oldest_pending_secs: oldest,
                tenant,
            }
        })
        .collect())
}

/// One user in the outbox.
#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct SyncEntry {
    pub tenant: String,
    pub user_id: Uuid,
    pub user_name: String,
    pub state: String,
    /// Dead: when it died. Pending: when the oldest undelivered change was made.
    pub since: DateTime<Utc>,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Dead,
    Pending,
}

pub async fn list(
    pool: &PgPool,
    which: Which,
    tenant: Option<&str>,
    limit: i64,
) -> anyhow::Result<Vec<SyncEntry>> {
    let states: &[&str] = match which {
        Which::Dead => &["dead"],
        Which::Pending => &["pending", "leased"],
    };
    Ok(sqlx::query_as(
        "SELECT s.tenant_id AS tenant, s.user_id, u.user_name, s.state,
                coalesce(s.pending_since, s.updated_at) AS since, s.attempts,
                s.next_attempt_at, s.last_error
         FROM sync_state s JOIN users u ON u.id = s.user_id
         WHERE s.state = ANY($1) AND ($2::text IS NULL OR s.tenant_id = $2)
         ORDER BY since, s.user_id LIMIT $3",
    )
    .bind(states.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    .bind(tenant)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Find a user by id, or by userName (case-insensitively) within a tenant.
pub async fn resolve_user(
    pool: &PgPool,
    tenant: Option<&str>,
    key: &str,
) -> anyhow::Result<(String, Uuid)> {
    let rows: Vec<(String, Uuid)> = match Uuid::parse_str(key) {
        Ok(id) => sqlx::query_as("SELECT tenant_id, id FROM users WHERE id = $1 AND ($2::text IS NULL OR tenant_id = $2)")
            .bind(id)
            .bind(tenant)
            .fetch_all(pool)
            .await?,
        Err(_) => sqlx::query_as(
            "SELECT tenant_id, id FROM users
             WHERE lower(user_name) = lower($1) AND deleted_at IS NULL
               AND ($2::text IS NULL OR tenant_id = $2)",
        )
        .bind(key)
        .bind(tenant)
        .fetch_all(pool)
        .await?,
    };
    match rows.len() {
        0 => anyhow::bail!(
            "no user {key}{}",
            tenant
                .map(|t| format!(" in tenant {t}"))
                .unwrap_or_default()
        ),
        1 => Ok(rows.into_iter().next().expect("one row")),
        _ => anyhow::bail!(
            "{key} names users in several tenants ({}): add --tenant",
            rows.iter()
                .map(|r| r.0.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

async fn notify(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query("SELECT pg_notify($1, 'admin')")
        .bind(SYNC_CHANNEL)
        .execute(pool)
        .await?;
    Ok(())
}

/// Re-arm dead users: one, or every dead user (of a tenant, or of all).
pub async fn retry(pool: &PgPool, user: Option<Uuid>, tenant: Option<&str>) -> anyhow::Result<u64> {
    let n = sqlx::query(
        "UPDATE sync_state SET state = 'pending', attempts = 0, next_attempt_at = now(),
                last_error = NULL, pending_since = coalesce(pending_since, now()), updated_at = now()
         WHERE state = 'dead' AND ($1::uuid IS NULL OR user_id = $1)
           AND ($2::text IS NULL OR tenant_id = $2)",
    )
    .bind(user)
    .bind(tenant)
    .execute(pool)
    .await?
    .rows_affected();
    notify(pool).await?;
    Ok(n)
}

/// Push the current state again (one user, or every user of a tenant), even if the
/// worker believes Ameyo has it.
pub async fn resync(
    pool: &PgPool,
    user: Option<Uuid>,
    tenant: Option<&str>,
) -> anyhow::Result<u64> {
    if user.is_none() && tenant.is_none() {
        anyhow::bail!("name a user or a tenant");
    }
    let n = sqlx::query(
        // A leased row finishes its delivery first, then goes round again.
        "UPDATE sync_state SET
            state = CASE WHEN state = 'leased' THEN 'leased' ELSE 'pending' END,
            resync_requested = (state = 'leased'),
            last_pushed = NULL, attempts = 0, next_attempt_at = now(), last_error = NULL,
            pending_since = coalesce(pending_since, now()), updated_at = now()
         WHERE ($1::uuid IS NULL OR user_id = $1) AND ($2::text IS NULL OR tenant_id = $2)",
    )
    .bind(user)
    .bind(tenant)
    .execute(pool)
    .await?
    .rows_affected();
    notify(pool).await?;
    Ok(n)
}

/// One user's story: the SCIM resource, the Ameyo link and the last attempts.
#[derive(Debug, Serialize)]
pub struct UserReport {
    pub tenant: String,
    pub deleted: bool,
    pub resource: Value,
    pub sync: Value,
    pub attempts: Vec<Value>,
}

pub async fn show(pool: &PgPool, tenant: &str, id: Uuid) -> anyhow::Result<UserReport> {
    let (resource, version, created, last_modified, deleted): (
        Value,
        i64,
        DateTime<Utc>,
        DateTime<Utc>,
        bool,
    ) = sqlx::query_as(
        "SELECT resource, version, created, last_modified, deleted_at IS NOT NULL
             FROM users WHERE tenant_id = $1 AND id = $2",
    )
    .bind(tenant)
    .bind(id)
    .fetch_one(pool)
    .await?;
    let stored = StoredUser {
        id,
        resource: resource.as_object().cloned().unwrap_or_default(),
        version,
        created,
        last_modified,
    };
    let sync: Value = sqlx::query_scalar(
        "SELECT jsonb_build_object(
            'state', state, 'desired_version', desired_version, 'synced_version', synced_version,
            'attempts', attempts, 'next_attempt_at', next_attempt_at, 'pending_since', pending_since,
            'last_error', last_error, 'lease_owner', lease_owner, 'lease_until', lease_until,
            'ameyo_user_id', ameyo_user_id, 'cc_user_id', cc_user_id,
            'ameyo_locked', ameyo_locked, 'create_attempted', create_attempted,
            'password_pending', pending_password IS NOT NULL, 'last_pushed', last_pushed)
         FROM sync_state WHERE user_id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?
    .unwrap_or(Value::Null);
    let attempts: Vec<Value> = sqlx::query_scalar(
        "SELECT jsonb_build_object('at', at, 'version', version, 'worker', worker, 'call', call,
                'outcome', outcome, 'http_status', http_status, 'duration_ms', duration_ms,
                'error', error)
         FROM sync_attempts WHERE user_id = $1 ORDER BY at DESC, id DESC LIMIT 20",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    Ok(UserReport {
        tenant: tenant.to_string(),
        deleted,
        resource: Value::Object(render(&stored, "/scim/v2")),
        sync,
        attempts,
    })
}

/// One difference between our view of a user and Ameyo's.
#[derive(Debug, Serialize, PartialEq)]
pub struct FieldDiff {
    pub field: &'static str,
    pub ours: Value,
    pub ameyo: Value,
}

#[derive(Debug, Serialize)]
pub struct DriftedUser {
    pub user_id: Uuid,
    pub user_name: String,
    pub ameyo_user_id: String,
    pub differences: Vec<FieldDiff>,
}

#[derive(Debug, Serialize)]
pub struct MissingUser {
    pub user_id: Uuid,
    pub user_name: String,
    pub ameyo_user_id: String,
}

#[derive(Debug, Serialize, Default)]
pub struct ReconcileReport {
    pub tenant: String,
    pub checked: usize,
    /// Ours, expected in Ameyo, not there.
    pub missing_in_ameyo: Vec<MissingUser>,
    /// In Ameyo, not ours. Reported only: never deleted.
    pub unknown_in_ameyo: Vec<String>,
    pub field_differences: Vec<DriftedUser>,
    /// Ours, but no Ameyo userId can be made from them.
    pub unmappable: Vec<String>,
    /// With `--apply`: resyncs queued.
    pub queued: u64,
}

/// Loose equality for what Ameyo echoes back (numbers may come back as strings, an
/// unset text field as null or "").
fn same(ours: &Value, theirs: &Value) -> bool {
    let norm = |v: &Value| match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    norm(ours) == norm(theirs)
}

#[derive(sqlx::FromRow)]
struct OurUser {
    id: Uuid,
    user_name: String,
    active: bool,
    resource: Value,
    ameyo_user_id: Option<String>,
}

/// Compare a tenant's users with Ameyo's list; with `apply`, queue the resyncs that
/// fix ours. Nothing is ever deleted from Ameyo.
pub async fn reconcile(
    settings: &Settings,
    pool: &PgPool,
    tenant: &str,
    apply: bool,
) -> anyhow::Result<ReconcileReport> {
    let t = settings
        .tenants
        .iter()
        .find(|t| t.id == tenant)
        .ok_or_else(|| anyhow::anyhow!("no tenant {tenant} in the configuration"))?;
    let mapper =
        Mapper::new(&t.ameyo.mapping, t.ameyo.contact_center_id).map_err(anyhow::Error::msg)?;
    let cipher = PasswordCipher::new(&settings.password_key()?);
    // Share the running service's session rather than ending it with a login of our own.
    let shared: Arc<dyn SessionStore> = Arc::new(PgSessionStore::new(
        pool.clone(),
        cipher,
        tenant,
        &format!("cli-{}", std::process::id()),
    ));
    let client = AmeyoClient::new(tenant, &t.ameyo, Some(shared)).map_err(anyhow::Error::msg)?;

    let ours: Vec<OurUser> = sqlx::query_as(
        "SELECT u.id, u.user_name, u.active, u.resource, s.ameyo_user_id
         FROM users u JOIN sync_state s ON s.user_id = u.id
         WHERE u.tenant_id = $1 AND u.deleted_at IS NULL ORDER BY u.user_name",
    )
    .bind(tenant)
    .fetch_all(pool)
    .await?;

    let mut report = ReconcileReport {
        tenant: tenant.to_string(),
        checked: ours.len(),
        ..Default::default()
    };
    // Ameyo lists per contact center: ask each one our users map to.
    let mut expected: Vec<(&OurUser, String, crate::ameyo::mapping::AmeyoUser)> = Vec::new();
    let mut centers = BTreeSet::from([t.ameyo.contact_center_id]);
    for u in &ours {
        let resource: Map<String, Value> = u.resource.as_object().cloned().unwrap_or_default();
        let id = match (&u.ameyo_user_id, mapper.user_id(&resource)) {
            (Some(id), _) => id.clone(),
            (None, Ok(id)) => id,
            (None, Err(e)) => {
                report.unmappable.push(format!("{}: {e}", u.user_name));
                continue;
            }
        };
        let mut mapped = mapper.map(&resource, &id);
        if !u.active {
            mapped.mapping_user_id = None;
        }
        centers.insert(mapped.contact_center_id);
        expected.push((u, id, mapped));
    }
    let mut log = Vec::new();
    let mut theirs: HashMap<String, Value> = HashMap::new();
    for cc in centers {
        for listed in client
            .list_users(cc, &mut log)
            .await
            .map_err(|e| anyhow::anyhow!("cannot list Ameyo users of contact center {cc}: {e}"))?
        {
            theirs.insert(listed.user_id, listed.raw);
        }
    }
    let known: BTreeSet<&str> = expected.iter().map(|e| e.1.as_str()).collect();
    report.unknown_in_ameyo = theirs
        .keys()
        .filter(|k| !known.contains(k.as_str()))
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();

    let mut missing_ids = Vec::new();
    let mut drifted_ids = Vec::new();
    for (u, id, mapped) in &expected {
        let should_exist =
            u.active || mapper.on_deactivate == OnDeactivate::Lock && u.ameyo_user_id.is_some();
        let Some(a) = theirs.get(id) else {
            if should_exist {
                report.missing_in_ameyo.push(MissingUser {
                    user_id: u.id,
                    user_name: u.user_name.clone(),
                    ameyo_user_id: id.clone(),
                });
                missing_ids.push(u.id);
            }
            continue;
        };
        // Optional fields we never set are Ameyo's business; the mapping is always ours
        // (cleared while a user is locked).
        let fields: [(&'static str, Option<Value>); 8] = [
            ("userName", Some(mapped.user_name.clone().into())),
            ("userType", Some(mapped.user_type.clone().into())),
            (
                "systemUserType",
                Some(mapped.system_user_type.clone().into()),
            ),
            (
                "mappingUserId",
                Some(mapped.mapping_user_id.clone().unwrap_or_default().into()),
            ),
            ("loginPolicy", mapped.login_policy.clone().map(Value::from)),
            (
                "maxAllowedLogins",
                mapped.max_allowed_logins.map(Value::from),
            ),
            ("defaultReady", Some(mapped.default_ready.into())),
            ("contactCenterId", Some(mapped.contact_center_id.into())),
        ];
        let differences: Vec<FieldDiff> = fields
            .into_iter()
            .filter_map(|(field, ours)| {
                let ours = ours?;
                let ameyo = a.get(field).cloned().unwrap_or(Value::Null);
                (!same(&ours, &ameyo)).then_some(FieldDiff { field, ours, ameyo })
            })
            .collect();
        if !differences.is_empty() {
            report.field_differences.push(DriftedUser {
                user_id: u.id,
                user_name: u.user_name.clone(),
                ameyo_user_id: id.clone(),
                differences,
            });
            drifted_ids.push(u.id);
        }
    }
    if apply && !(missing_ids.is_empty() && drifted_ids.is_empty()) {
        let mut tx = pool.begin().await?;
        // Missing: forget the link so the worker creates the user again.
        report.queued += sqlx::query(
            "UPDATE sync_state SET ameyo_user_id = NULL, cc_user_id = NULL,
                create_attempted = false, intended_user_id = NULL, ameyo_locked = false,
                last_pushed = NULL, resync_requested = (state = 'leased'),
                state = CASE WHEN state = 'leased' THEN 'leased' ELSE 'pending' END,
                attempts = 0, next_attempt_at = now(), last_error = NULL,
                pending_since = coalesce(pending_since, now()), updated_at = now()
             WHERE user_id = ANY($1)",
        )
        .bind(&missing_ids)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        // Drifted: push the full current state again.
        report.queued += sqlx::query(
            "UPDATE sync_state SET last_pushed = NULL, resync_requested = (state = 'leased'),
                state = CASE WHEN state = 'leased' THEN 'leased' ELSE 'pending' END,
                attempts = 0, next_attempt_at = now(), last_error = NULL,
                pending_since = coalesce(pending_since, now()), updated_at = now()
             WHERE user_id = ANY($1)",
        )
        .bind(&drifted_ids)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query("SELECT pg_notify($1, 'reconcile')")
            .bind(SYNC_CHANNEL)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    }
    Ok(report)
}
