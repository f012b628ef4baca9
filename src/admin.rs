//! What the admin CLI does: read and steer the outbox of the database the service
//! uses, show one user's story, and reconcile our users with Ameyo's user list.

use std::collections::{BTreeSet, HashMap};

use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::config::{OnDeactivate, Settings};
use crate::scim::resource::render;
use crate::store::backend::Backend;

pub use crate::store::outbox::{SyncEntry, Which};

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

pub async fn status(store: &Backend, settings: &Settings) -> anyhow::Result<Vec<TenantStatus>> {
    let rows: Vec<(String, String, i64, Option<f64>)> = store
        .outbox
        .counts()
        .await?
        .into_iter()
        .map(|c| (c.tenant_id, c.state, c.users, c.oldest_pending_secs))
        .collect();
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

pub async fn list(
    store: &Backend,
    which: Which,
    tenant: Option<&str>,
    limit: i64,
) -> anyhow::Result<Vec<SyncEntry>> {
    Ok(store.outbox.list(which, tenant, limit).await?)
}

/// Find a user by id, or by userName (case-insensitively) within a tenant.
pub async fn resolve_user(
    store: &Backend,
    tenant: Option<&str>,
    key: &str,
) -> anyhow::Result<(String, Uuid)> {
    let rows = store.users.find(tenant, key).await?;
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

/// Re-arm dead users: one, or every dead user (of a tenant, or of all).
pub async fn retry(
    store: &Backend,
    user: Option<Uuid>,
    tenant: Option<&str>,
) -> anyhow::Result<u64> {
    Ok(store.outbox.rearm_dead(user, tenant).await?)
}

/// Push the current state again (one user, or every user of a tenant), even if the
/// worker believes Ameyo has it.
pub async fn resync(
    store: &Backend,
    user: Option<Uuid>,
    tenant: Option<&str>,
) -> anyhow::Result<u64> {
    if user.is_none() && tenant.is_none() {
        anyhow::bail!("name a user or a tenant");
    }
    let users = user.map(|u| vec![u]);
    Ok(store.outbox.resync(users.as_deref(), tenant).await?)
}

/// One user's story: the SCIM resource, the Ameyo link and the last attempts.
#[derive(Debug, Serialize)]
pub struct UserReport {
    pub tenant: String,
    pub deleted: bool,
    pub resource: Value,
    /// The groups the user is a direct member of.
    pub groups: Vec<GroupLine>,
    /// What the user maps to in Ameyo now, and which setting gave each role field.
    pub mapping: Option<MappingReport>,
    pub sync: Value,
    pub attempts: Vec<Value>,
}

#[derive(Debug, Serialize)]
pub struct GroupLine {
    pub id: Uuid,
    pub display_name: String,
    pub external_id: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct MappingReport {
    /// The Ameyo userId the mapping makes, or why none can be made.
    pub user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id_error: Option<String>,
    pub fields: Vec<FieldOrigin>,
}

#[derive(Debug, Serialize)]
pub struct FieldOrigin {
    pub field: &'static str,
    pub value: Value,
    pub set_by: String,
}

/// `mapper`: the tenant's mapping, when the configuration knows the tenant.
pub async fn show(
    store: &Backend,
    tenant: &str,
    id: Uuid,
    mapper: Option<&crate::ameyo::mapping::Mapper>,
) -> anyhow::Result<UserReport> {
    let (stored, deleted) = store
        .users
        .read_any(tenant, id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no user {id} in tenant {tenant}"))?;
    let sync = store.outbox.row_report(id).await?.unwrap_or(Value::Null);
    let attempts = store.outbox.recent_attempts(id, 20).await?;
    let mapping = mapper.map(|m| {
        let keys = stored.group_keys();
        let user_id = m.user_id(&stored.resource).map_err(|e| e.0);
        let shown_id = user_id.clone().unwrap_or_default();
        let (mapped, origins) = m.explain(&stored.resource, &keys, &shown_id);
        let value_of = |field: &str| -> Value {
            match field {
                "userType" => mapped.user_type.clone().into(),
                "loginPolicy" => mapped.login_policy.clone().into(),
                "maxAllowedLogins" => mapped.max_allowed_logins.into(),
                "defaultReady" => mapped.default_ready.into(),
                "contactCenterId" => mapped.contact_center_id.into(),
                _ => Value::Null,
            }
        };
        MappingReport {
            user_id_error: user_id.as_ref().err().cloned(),
            user_id: user_id.ok(),
            fields: origins
                .into_iter()
                .map(|(field, origin)| FieldOrigin {
                    field,
                    value: value_of(field),
                    set_by: origin.to_string(),
                })
                .collect(),
        }
    });
    Ok(UserReport {
        tenant: tenant.to_string(),
        deleted,
        resource: Value::Object(render(&stored, "/scim/v2")),
        groups: stored
            .groups
            .iter()
            .map(|g| GroupLine {
                id: g.id,
                display_name: g.display.clone(),
                external_id: g.external_id.clone(),
            })
            .collect(),
        mapping,
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

/// Compare a tenant's users with Ameyo's list; with `apply`, queue the resyncs that
/// fix ours. Nothing is ever deleted from Ameyo.
pub async fn reconcile(
    settings: &Settings,
    store: &Backend,
    tenant: &str,
    apply: bool,
) -> anyhow::Result<ReconcileReport> {
    if !settings.tenants.iter().any(|t| t.id == tenant) {
        anyhow::bail!("no tenant {tenant} in the configuration");
    }
    // Share the running service's session rather than ending it with a login of our own.
    let owner = format!("cli-{}", std::process::id());
    let sessions = store.sessions(&owner);
    let built = crate::tenants::build(settings, &sessions)?;
    let t = built
        .iter()
        .find(|t| t.id == tenant)
        .ok_or_else(|| anyhow::anyhow!("no tenant {tenant} in the configuration"))?;
    let mapper = &t.mapper;
    let client = &t.client;

    let outbox = &store.outbox;
    let ours = outbox.linked_users(tenant).await?;

    let mut report = ReconcileReport {
        tenant: tenant.to_string(),
        checked: ours.len(),
        ..Default::default()
    };
    // Ameyo lists per contact center: ask each one our users map to.
    let mut expected: Vec<(
        &crate::store::outbox::LinkedUser,
        String,
        crate::ameyo::mapping::AmeyoUser,
    )> = Vec::new();
    let mut centers = BTreeSet::from([t.settings.ameyo.contact_center_id]);
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
        let mut mapped = mapper.map(&resource, &u.groups, &id);
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
    if apply {
        // Missing: forget the link so the worker creates the user again.
        if !missing_ids.is_empty() {
            report.queued += outbox.forget_links(&missing_ids).await?;
        }
        // Drifted: push the full current state again.
        if !drifted_ids.is_empty() {
            report.queued += outbox.resync(Some(&drifted_ids), None).await?;
        }
    }
    Ok(report)
}
