//! The outbox: every statement that reads or writes `sync_state`, `sync_attempts` and
//! `sync_workers` lives in this module, behind the [`Outbox`] trait that the worker, the
//! admin CLI and reconcile call. The SCIM writes mark a user pending inside their own
//! statement, through the SQL fragments [`mark_pending!`] and [`insert_pending!`] below,
//! so a user row and its outbox row always change together.
//!
//! State machine of one row (docs/delivery.md):
//! pending --claim--> leased --complete--> done | pending (retry or newer version) | dead;
//! leased --holder stopped or lease ran out--> pending or dead (counts as an attempt);
//! dead --SCIM write, `sync retry`--> pending; done --SCIM write, resync--> pending.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use std::sync::Arc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Result;
use super::wake::PgWake;

/// The channel workers `LISTEN` on; a commit that makes work due notifies it.
pub const SYNC_CHANNEL: &str = "ameyo_scim_sync";

/// Marks a user's outbox row pending at `u.version`, as a CTE named `s` of the SCIM
/// write's own statement (which defines `u`, the written user). A row a worker holds
/// stays leased: the worker sees the newer desired version when it completes and goes
/// round again. `keep_or_set_password "$n"`: `$n` is a newly sealed password or NULL to
/// keep the pending one; `erase_password`: a deleted user's password is never delivered.
macro_rules! mark_pending {
    (keep_or_set_password $p:literal) => {
        $crate::store::outbox::mark_pending!(@
            concat!("coalesce(", $p, "::bytea, sync_state.pending_password)"),
            concat!("CASE WHEN ", $p, "::bytea IS NULL THEN sync_state.password_version ELSE u.version END"))
    };
    (keep_password) => {
        $crate::store::outbox::mark_pending!(@
            "sync_state.pending_password", "sync_state.password_version")
    };
    (erase_password) => {
        $crate::store::outbox::mark_pending!(@ "NULL", "NULL")
    };
    (@ $password:expr, $password_version:expr) => {
        concat!(
            "s AS (
    UPDATE sync_state SET desired_version = u.version,
        state = CASE WHEN sync_state.state = 'leased' THEN 'leased' ELSE 'pending' END,
        pending_since = CASE WHEN sync_state.state IN ('pending', 'leased')
                             THEN coalesce(sync_state.pending_since, now()) ELSE now() END,
        attempts = 0, next_attempt_at = now(), last_error = NULL, updated_at = now(),
        pending_password = ",
            $password,
            ", password_version = ",
            $password_version,
            "
    FROM u WHERE sync_state.user_id = u.id)"
        )
    };
}
pub(crate) use mark_pending;

/// The outbox row of a new user, as a CTE named `s` of the create statement (which
/// defines `u`); `$sealed` is the parameter holding the sealed password, if any.
macro_rules! insert_pending {
    ($sealed:literal) => {
        concat!(
            "s AS (INSERT INTO sync_state (user_id, tenant_id, desired_version,
                               pending_password, password_version)
           SELECT id, tenant_id, version, ",
            $sealed,
            "::bytea, CASE WHEN ",
            $sealed,
            "::bytea IS NULL THEN NULL ELSE version END FROM u)"
        )
    };
}
pub(crate) use insert_pending;

/// The Ameyo side of a user as the outbox records it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Link {
    /// The Ameyo userId the user is linked to (Ameyo confirmed it exists).
    pub ameyo_user_id: Option<String>,
    pub cc_user_id: Option<i64>,
    /// A create was sent whose outcome is unknown: look before creating again.
    pub create_attempted: bool,
    /// The userId that unconfirmed create was for (the user may be renamed since).
    pub intended_user_id: Option<String>,
    /// Locked by the bridge (deactivated with `on_deactivate = "lock"`).
    pub locked: bool,
    /// The Ameyo fields last pushed (no password), so an unchanged user costs no call.
    pub last_pushed: Option<Value>,
}

/// A claimed row with everything needed to deliver it.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub user_id: Uuid,
    pub tenant_id: String,
    pub lease_token: Uuid,
    /// Attempts already made at this version (a lease that ran out counts as one).
    pub attempts: i32,
    pub pending_password: Option<Vec<u8>>,
    pub link: Link,
    /// The SCIM resource as stored.
    pub resource: Value,
    /// The groups the user is a direct member of, for group mapping rules.
    pub groups: Vec<crate::ameyo::mapping::GroupKey>,
    pub version: i64,
    pub active: bool,
    pub deleted: bool,
    /// When the row last changed before this claim: a listing of Ameyo started after
    /// it reflects every call an earlier attempt made.
    pub last_changed: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct ClaimedRow {
    user_id: Uuid,
    tenant_id: String,
    lease_token: Uuid,
    attempts: i32,
    pending_password: Option<Vec<u8>>,
    create_attempted: bool,
    intended_user_id: Option<String>,
    ameyo_user_id: Option<String>,
    cc_user_id: Option<i64>,
    ameyo_locked: bool,
    last_pushed: Option<Value>,
    resource: Value,
    groups: Value,
    version: i64,
    active: bool,
    deleted: bool,
    last_changed: DateTime<Utc>,
}

impl From<ClaimedRow> for Claimed {
    fn from(r: ClaimedRow) -> Self {
        Claimed {
            user_id: r.user_id,
            tenant_id: r.tenant_id,
            lease_token: r.lease_token,
            attempts: r.attempts,
            pending_password: r.pending_password,
            link: Link {
                ameyo_user_id: r.ameyo_user_id,
                cc_user_id: r.cc_user_id,
                create_attempted: r.create_attempted,
                intended_user_id: r.intended_user_id,
                locked: r.ameyo_locked,
                last_pushed: r.last_pushed,
            },
            resource: r.resource,
            groups: serde_json::from_value(r.groups).unwrap_or_default(),
            version: r.version,
            active: r.active,
            deleted: r.deleted,
            last_changed: r.last_changed,
        }
    }
}

/// The answer to "may this user own this Ameyo userId?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserIdClaim {
    /// Recorded as this user's (the create intent is stored before the create is sent).
    Granted,
    /// A deleted user still holds it: its removal from Ameyo must come first.
    HeldByTombstone,
    /// A live user holds it (of this tenant, or of another tenant on the same server).
    HeldByLive { tenant: String },
    /// This worker no longer holds the row.
    LostLease,
}

/// One Ameyo call of a delivery, for the attempt log.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub call: &'static str,
    pub ok: bool,
    pub http_status: Option<u16>,
    pub duration_ms: i32,
    pub error: Option<String>,
}

/// How a delivery ended, as the outbox records it.
#[derive(Debug, Clone)]
pub enum Completion<'a> {
    /// Ameyo has this version.
    Synced {
        link: &'a Link,
        /// The pending password went out with a call that succeeded.
        password_delivered: bool,
    },
    /// Try again after `delay`. `full_push`: the last call may have been applied late,
    /// so the next attempt pushes every field again.
    Retry {
        link: &'a Link,
        delay: Duration,
        reason: String,
        full_push: bool,
    },
    /// Stop until a new SCIM write or an operator re-arms it.
    Dead { link: &'a Link, reason: String },
    /// The tombstone reached Ameyo: the user and its row go.
    Removed,
}

/// One delivery's outcome, for [`Outbox::complete_many`].
#[derive(Debug, Clone)]
pub struct Completing<'a> {
    pub claimed: &'a Claimed,
    /// The tenant's Ameyo server (see [`Outbox::complete`]).
    pub server: &'a str,
    pub completion: Completion<'a>,
    pub attempts: &'a [Attempt],
}

/// Users per tenant and delivery state, with the age of the oldest undelivered change.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SyncCount {
    pub tenant_id: String,
    pub state: String,
    pub users: i64,
    pub oldest_pending_secs: Option<f64>,
}

/// One user in the outbox, for `sync list`.
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

/// A tenant's live user with its link, for reconcile.
#[derive(Debug, sqlx::FromRow)]
pub struct LinkedUser {
    pub id: Uuid,
    pub user_name: String,
    pub active: bool,
    pub resource: Value,
    pub ameyo_user_id: Option<String>,
    /// The user's groups (`display_name`, `external_id` objects), for group rules.
    #[sqlx(json)]
    pub groups: Vec<crate::ameyo::mapping::GroupKey>,
}

/// One outbox row whole, as `migrate-store` moves it between stores. A lease means
/// nothing in another store, so an exported leased row is pending.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRecord {
    pub user_id: Uuid,
    pub tenant_id: String,
    pub desired_version: i64,
    pub synced_version: i64,
    pub state: String,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub pending_since: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    /// Sealed, bound to the user id: it moves as it is.
    pub pending_password: Option<Vec<u8>>,
    pub password_version: Option<i64>,
    pub ameyo_user_id: Option<String>,
    pub cc_user_id: Option<i64>,
    pub create_attempted: bool,
    pub intended_user_id: Option<String>,
    pub ameyo_locked: bool,
    pub last_pushed: Option<Value>,
    pub resync_requested: bool,
    pub ameyo_server: Option<String>,
}

/// One attempt-log entry, as `migrate-store` moves it.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRecord {
    pub at: DateTime<Utc>,
    pub tenant_id: String,
    pub user_id: Uuid,
    pub version: i64,
    pub worker: String,
    pub call: String,
    pub outcome: String,
    pub http_status: Option<i32>,
    pub duration_ms: i32,
    pub error: Option<String>,
}

/// Write exported outbox rows into PostgreSQL (inside the caller's transaction).
pub async fn import_outbox(conn: &mut sqlx::PgConnection, rows: &[OutboxRecord]) -> Result<()> {
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
    .bind(rows.iter().map(|r| r.user_id).collect::<Vec<_>>())
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
    .bind(
        rows.iter()
            .map(|r| r.pending_password.clone())
            .collect::<Vec<_>>(),
    )
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
    .bind(
        rows.iter()
            .map(|r| r.last_pushed.clone())
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|r| r.resync_requested).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|r| r.ameyo_server.clone())
            .collect::<Vec<_>>(),
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Write exported attempt-log entries into PostgreSQL.
pub async fn import_attempts(conn: &mut sqlx::PgConnection, rows: &[AttemptRecord]) -> Result<()> {
    sqlx::query(
        "INSERT INTO sync_attempts (at, tenant_id, user_id, version, worker, call, outcome,
                                    http_status, duration_ms, error)
         SELECT * FROM UNNEST($1::timestamptz[], $2::text[], $3::uuid[], $4::bigint[],
                              $5::text[], $6::text[], $7::text[], $8::int[], $9::int[],
                              $10::text[])",
    )
    .bind(rows.iter().map(|r| r.at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.tenant_id.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.user_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.version).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.worker.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.call.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.outcome.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.http_status).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.duration_ms).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.error.clone()).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

/// The outbox as the worker and the operator tools see it. Every backend implements
/// it; every method is one statement (or one transaction).
#[async_trait]
pub trait Outbox: Send + Sync + 'static {
    /// Record that `owner` is alive.
    async fn heartbeat(&self, owner: &str) -> Result<()>;
    /// A worker stopping: hand back its leases and remove its heartbeat.
    async fn retire(&self, owner: &str) -> Result<u64>;
    /// Take back leased rows whose holder stopped beating for `stale_after`, or whose
    /// lease ran out. Each counts as an attempt; a row that reaches `max_attempts` (0:
    /// never) is dead-lettered, so a user whose delivery kills the process ends.
    async fn reclaim_stale(
        &self,
        tenants: &[String],
        stale_after: Duration,
        max_attempts: u32,
    ) -> Result<u64>;
    /// Lease up to `limit` due rows of these tenants (rows of other tenants are left
    /// alone: a replica that does not know a tenant must not decide for it).
    async fn claim(
        &self,
        owner: &str,
        tenants: &[String],
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<Claimed>>;
    /// Record, fenced by the lease, that this user is about to create `ameyo_user_id`
    /// on `server` with the fields `sending`, unless another user owns that userId there.
    async fn claim_user_id(
        &self,
        user: Uuid,
        lease_token: Uuid,
        server: &str,
        ameyo_user_id: &str,
        sending: &Value,
    ) -> Result<UserIdClaim>;
    /// Record the outcome of a delivery and its calls, fenced by the lease token.
    /// `false`: the lease was lost and nothing was recorded but the attempt log.
    async fn complete(
        &self,
        claimed: &Claimed,
        owner: &str,
        server: &str,
        completion: &Completion<'_>,
        attempts: &[Attempt],
    ) -> Result<bool>;
    /// Record the outcomes of many deliveries of `owner` together (in one transaction
    /// where the backend has them), each fenced by its own lease token as
    /// [`Outbox::complete`] is: a row whose lease was lost records nothing but its
    /// attempt log and does not keep the others from being recorded, nor does a row
    /// that cannot be written. One answer per item, in order.
    async fn complete_many(&self, owner: &str, items: &[Completing<'_>]) -> Vec<Result<bool>> {
        let mut done = Vec::with_capacity(items.len());
        for i in items {
            done.push(
                self.complete(i.claimed, owner, i.server, &i.completion, i.attempts)
                    .await,
            );
        }
        done
    }
    /// Scope this tenant's links made before ownership was recorded to its server
    /// (once per start; a userId already owned there is left unscoped and logged).
    async fn adopt_server(&self, tenant: &str, server: &str) -> Result<u64>;
    /// Delete attempt-log rows older than the retention, in batches until none is left.
    async fn prune_attempts(&self, older_than_days: u32) -> Result<u64>;
    /// Wake `notify` whenever a commit makes work due, until `shutdown`.
    async fn listen(self: Arc<Self>, notify: Arc<Notify>, shutdown: CancellationToken);

    async fn counts(&self) -> Result<Vec<SyncCount>>;
    async fn list(&self, which: Which, tenant: Option<&str>, limit: i64) -> Result<Vec<SyncEntry>>;
    /// Re-arm dead rows: one user's, a tenant's, or all.
    async fn rearm_dead(&self, user: Option<Uuid>, tenant: Option<&str>) -> Result<u64>;
    /// Push the full current state again (these users, or a whole tenant).
    async fn resync(&self, users: Option<&[Uuid]>, tenant: Option<&str>) -> Result<u64>;
    /// Ameyo lost these users: forget their links, so the worker creates them again.
    async fn forget_links(&self, users: &[Uuid]) -> Result<u64>;
    /// A tenant's live users with their links.
    async fn linked_users(&self, tenant: &str) -> Result<Vec<LinkedUser>>;
    /// One row as JSON, for `users show`.
    async fn row_report(&self, user: Uuid) -> Result<Option<Value>>;
    /// The newest attempt-log entries of a user, as JSON.
    async fn recent_attempts(&self, user: Uuid, limit: i64) -> Result<Vec<Value>>;
}

/// Lock the outbox rows of `users` in user order, inside a write that is about to mark
/// many of them pending: batched completions lock rows in the same order, so the two
/// never wait for each other in a cycle.
pub(crate) async fn lock_rows<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    users: &[Uuid],
) -> Result<()> {
    sqlx::query(
        "SELECT 1 FROM sync_state WHERE user_id = ANY($1) ORDER BY user_id FOR NO KEY UPDATE",
    )
    .bind(users)
    .execute(executor)
    .await?;
    Ok(())
}

/// Re-arm a dead-lettered user inside a SCIM write that changed nothing: an IdP's "push
/// again" must work. Returns whether a row was re-armed.
pub(crate) async fn rearm_if_dead<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    tenant: &str,
    user: Uuid,
) -> Result<bool> {
    let n: i64 = sqlx::query_scalar(REARM_ONE_SQL)
        .bind(user)
        .bind(tenant)
        .fetch_one(executor)
        .await?;
    Ok(n > 0)
}

const REARM_ONE_SQL: &str = "
WITH r AS (
    UPDATE sync_state SET state = 'pending', attempts = 0, next_attempt_at = now(),
        last_error = NULL, last_pushed = NULL, pending_since = now(), updated_at = now()
    WHERE user_id = $1 AND tenant_id = $2 AND state = 'dead'
    RETURNING tenant_id)
SELECT count(*) FROM (SELECT pg_notify('ameyo_scim_sync', tenant_id) FROM r) AS n";

/// The Postgres outbox.
#[derive(Clone, Debug)]
pub struct PgOutbox {
    pool: PgPool,
    wake: PgWake,
}

impl PgOutbox {
    pub fn new(pool: PgPool) -> Self {
        Self {
            wake: PgWake::new(pool.clone()),
            pool,
        }
    }

    /// Hear this process's writes through `wake`, shared with the user store of the
    /// same database.
    pub fn with_wake(mut self, wake: PgWake) -> Self {
        self.wake = wake;
        self
    }

    /// Wakes `notify` on every `NOTIFY` of any process (this one's writes included, a
    /// moment after the in-memory wake-up); reconnects when the connection drops.
    async fn hear_others(&self, notify: &Notify) {
        loop {
            let mut listener = match PgListener::connect_with(&self.pool).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot LISTEN; polling only for now");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    continue;
                }
            };
            if listener.listen(SYNC_CHANNEL).await.is_err() {
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
            while listener.recv().await.is_ok() {
                notify.notify_one();
            }
        }
    }
}

/// Rows deleted per statement when pruning: small enough not to hold locks for long.
const PRUNE_BATCH: i64 = 5_000;

const HEARTBEAT_SQL: &str = "
INSERT INTO sync_workers (owner) VALUES ($1)
ON CONFLICT (owner) DO UPDATE SET heartbeat_at = now()";

const RELEASE_SQL: &str = "
UPDATE sync_state SET state = 'pending', lease_owner = NULL, lease_until = NULL,
    lease_token = NULL, next_attempt_at = now(), updated_at = now()
WHERE lease_owner = $1 AND state = 'leased'";

/// Workers that stopped beating a day ago are forgotten.
const RETIRE_SQL: &str = "
DELETE FROM sync_workers WHERE owner = $1 OR heartbeat_at < now() - interval '1 day'";

const RECLAIM_SQL: &str = "
WITH stale AS (
    SELECT s.user_id FROM sync_state s
    WHERE s.state = 'leased' AND s.tenant_id = ANY($1)
      AND (s.lease_until < now()
           OR NOT EXISTS (SELECT 1 FROM sync_workers w WHERE w.owner = s.lease_owner
                          AND w.heartbeat_at > now() - make_interval(secs => $2)))
    FOR UPDATE SKIP LOCKED)
UPDATE sync_state s SET
    -- A resync of a delivered version that keeps killing its worker ends too.
    state = CASE WHEN $3 > 0 AND s.attempts + 1 >= $3 THEN 'dead' ELSE 'pending' END,
    -- Cleared only with the dead letter: a row that stays pending keeps saying since when.
    pending_since = CASE WHEN $3 > 0 AND s.attempts + 1 >= $3
                         THEN NULL ELSE s.pending_since END,
    attempts = s.attempts + 1,
    last_error = 'the delivery did not finish (its worker stopped or ran out of lease) '
                 || (s.attempts + 1) || ' time(s)',
    -- Whatever the lost attempt sent may still land: push every field again.
    last_pushed = NULL,
    next_attempt_at = now(), lease_owner = NULL, lease_until = NULL, lease_token = NULL,
    updated_at = now()
FROM stale WHERE s.user_id = stale.user_id";

const CLAIM_SQL: &str = "
WITH due AS (
    SELECT user_id, updated_at AS last_changed FROM sync_state
    WHERE state = 'pending' AND next_attempt_at <= now() AND tenant_id = ANY($4)
    ORDER BY next_attempt_at
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
UPDATE sync_state s
SET state = 'leased', lease_owner = $1, lease_token = gen_random_uuid(),
    lease_until = now() + make_interval(secs => $2), updated_at = now(),
    resync_requested = false
FROM due, users u
WHERE s.user_id = due.user_id AND u.id = s.user_id
RETURNING s.user_id, s.tenant_id, s.lease_token, s.attempts, s.pending_password,
          s.create_attempted, s.intended_user_id, s.ameyo_user_id, s.cc_user_id,
          s.ameyo_locked, s.last_pushed, u.resource, u.version, u.active,
          (u.deleted_at IS NOT NULL) AS deleted, due.last_changed,
          -- Each group looked up by its key: a join here is planned as a scan of groups.
          (SELECT coalesce(jsonb_agg((SELECT jsonb_build_object('display_name', g.display_name,
                                                                'external_id', g.external_id)
                                      FROM groups g WHERE g.id = gm.group_id)),
                           '[]'::jsonb)
           FROM group_members gm WHERE gm.user_id = u.id) AS groups";

const CLAIM_USER_ID_SQL: &str = "
UPDATE sync_state SET create_attempted = true, intended_user_id = $3, ameyo_server = $4,
    last_pushed = $5, updated_at = now()
WHERE user_id = $1 AND lease_token = $2";

/// Who holds a userId on a server, if not `$3`: a tombstone first (it will go).
const OWNER_SQL: &str = "
SELECT u.deleted_at IS NOT NULL, s.tenant_id FROM sync_state s JOIN users u ON u.id = s.user_id
WHERE s.ameyo_server = $1 AND lower(coalesce(s.ameyo_user_id, s.intended_user_id)) = lower($2)
  AND s.user_id <> $3
ORDER BY 1 DESC
LIMIT 1";

/// The unique index that makes ownership of an Ameyo userId exclusive.
const OWNER_KEY: &str = "sync_state_ameyo_owner";

/// The attempt-log insert every completion starts with ($1 user, $2 lease token,
/// $3 tenant, $4 version, $5..$9 the calls, $10 the worker).
macro_rules! log_attempts {
    () => {
        "WITH a AS (
    INSERT INTO sync_attempts (tenant_id, user_id, version, worker, call, outcome, http_status, duration_ms, error)
    SELECT $3, $1, $4, $10, c.call, c.outcome, c.status, c.ms, c.error
    FROM UNNEST($5::text[], $6::text[], $7::int[], $8::int[], $9::text[])
         AS c(call, outcome, status, ms, error)), "
    };
}

/// The link columns a completion writes ($11 the server, $12..$17 the link), except
/// `last_pushed` ($16), which each completion sets its own way.
macro_rules! set_link {
    () => {
        "ameyo_user_id = $12, cc_user_id = $13, create_attempted = $14, ameyo_locked = $15,
        intended_user_id = $17,
        ameyo_server = CASE WHEN coalesce($12, $17) IS NULL THEN NULL ELSE $11 END,"
    };
}

/// $18: the pending password went out.
const SYNCED_SQL: &str = concat!(
    log_attempts!(),
    "u AS (
    UPDATE sync_state SET
        synced_version = GREATEST(synced_version, $4),
        state = CASE WHEN desired_version > $4 OR resync_requested THEN 'pending' ELSE 'done' END,
        pending_since = CASE WHEN desired_version > $4 OR resync_requested THEN pending_since ELSE NULL END,
        attempts = CASE WHEN desired_version > $4 THEN attempts ELSE 0 END,
        next_attempt_at = now(), last_error = NULL,
        lease_owner = NULL, lease_until = NULL, lease_token = NULL, ",
    set_link!(),
    "
        last_pushed = CASE WHEN resync_requested THEN NULL ELSE $16 END,
        pending_password = CASE WHEN $18 AND password_version <= $4 THEN NULL ELSE pending_password END,
        password_version = CASE WHEN $18 AND password_version <= $4 THEN NULL ELSE password_version END,
        updated_at = now()
    WHERE user_id = $1 AND lease_token = $2
    RETURNING 1)
SELECT count(*) FROM u"
);

/// $18: dead; $19: delay in seconds; $20: the reason; $21: push every field next time.
const RETRY_SQL: &str = concat!(
    log_attempts!(),
    "u AS (
    UPDATE sync_state SET
        -- A newer version written during this delivery deserves its own attempts:
        -- only the version that failed is given up on.
        state = CASE WHEN $18 AND desired_version <= $4 THEN 'dead' ELSE 'pending' END,
        pending_since = CASE WHEN $18 AND desired_version <= $4 THEN NULL ELSE pending_since END,
        attempts = CASE WHEN $18 AND desired_version > $4 THEN 0 ELSE attempts + 1 END,
        next_attempt_at = CASE WHEN $18 AND desired_version > $4 THEN now()
                               ELSE now() + make_interval(secs => $19) END,
        last_error = $20,
        lease_owner = NULL, lease_until = NULL, lease_token = NULL, ",
    set_link!(),
    "
        last_pushed = CASE WHEN resync_requested OR $21 THEN NULL ELSE $16 END,
        updated_at = now()
    WHERE user_id = $1 AND lease_token = $2
    RETURNING 1)
SELECT count(*) FROM u"
);

const REMOVED_SQL: &str = concat!(
    log_attempts!(),
    "d AS (
    DELETE FROM users WHERE id = $1 AND deleted_at IS NOT NULL
      AND EXISTS (SELECT 1 FROM sync_state WHERE user_id = $1 AND lease_token = $2)
    RETURNING 1)
SELECT count(*) FROM d"
);

/// Rows linked before ownership was recorded get their server, one row per userId
/// (the first linked keeps it; any other is left for an operator to look at).
/// Public for the plan test: it must not read every outbox row of a tenant at start.
pub const ADOPT_SERVER_SQL: &str = "
WITH cand AS (
    SELECT DISTINCT ON (lower(coalesce(s.ameyo_user_id, s.intended_user_id))) s.user_id
    FROM sync_state s
    WHERE s.tenant_id = $1 AND s.ameyo_server IS NULL
      AND coalesce(s.ameyo_user_id, s.intended_user_id) IS NOT NULL
      AND NOT EXISTS (
          SELECT 1 FROM sync_state o WHERE o.ameyo_server = $2
            AND lower(coalesce(o.ameyo_user_id, o.intended_user_id))
                = lower(coalesce(s.ameyo_user_id, s.intended_user_id)))
    ORDER BY lower(coalesce(s.ameyo_user_id, s.intended_user_id)),
             (s.ameyo_user_id IS NULL), s.updated_at)
UPDATE sync_state s SET ameyo_server = $2 FROM cand WHERE s.user_id = cand.user_id";

const PRUNE_SQL: &str = "
DELETE FROM sync_attempts WHERE id IN (
    SELECT id FROM sync_attempts WHERE at < now() - make_interval(days => $1) LIMIT $2)";

const COUNTS_SQL: &str = "
SELECT tenant_id, state, count(*) AS users,
       EXTRACT(EPOCH FROM now() - min(pending_since))::float8 AS oldest_pending_secs
FROM sync_state GROUP BY tenant_id, state";

const LIST_SQL: &str = "
SELECT s.tenant_id AS tenant, s.user_id, u.user_name, s.state,
       coalesce(s.pending_since, s.updated_at) AS since, s.attempts,
       s.next_attempt_at, s.last_error
FROM sync_state s JOIN users u ON u.id = s.user_id
WHERE s.state = ANY($1) AND ($2::text IS NULL OR s.tenant_id = $2)
ORDER BY since, s.user_id LIMIT $3";

const REARM_SQL: &str = "
UPDATE sync_state SET state = 'pending', attempts = 0, next_attempt_at = now(),
       last_error = NULL, pending_since = coalesce(pending_since, now()), updated_at = now()
WHERE state = 'dead' AND ($1::uuid IS NULL OR user_id = $1)
  AND ($2::text IS NULL OR tenant_id = $2)";

/// A leased row finishes its delivery first, then goes round again.
const RESYNC_SQL: &str = "
UPDATE sync_state SET
    state = CASE WHEN state = 'leased' THEN 'leased' ELSE 'pending' END,
    resync_requested = (state = 'leased'),
    last_pushed = NULL, attempts = 0, next_attempt_at = now(), last_error = NULL,
    pending_since = coalesce(pending_since, now()), updated_at = now()
WHERE ($1::uuid[] IS NULL OR user_id = ANY($1)) AND ($2::text IS NULL OR tenant_id = $2)";

const FORGET_SQL: &str = "
UPDATE sync_state SET ameyo_user_id = NULL, cc_user_id = NULL, ameyo_server = NULL,
    create_attempted = false, intended_user_id = NULL, ameyo_locked = false,
    last_pushed = NULL, resync_requested = (state = 'leased'),
    state = CASE WHEN state = 'leased' THEN 'leased' ELSE 'pending' END,
    attempts = 0, next_attempt_at = now(), last_error = NULL,
    pending_since = coalesce(pending_since, now()), updated_at = now()
WHERE user_id = ANY($1)";

const LINKED_USERS_SQL: &str = "
SELECT u.id, u.user_name, u.active, u.resource, s.ameyo_user_id,
       (SELECT coalesce(jsonb_agg((SELECT jsonb_build_object('display_name', g.display_name,
                                                             'external_id', g.external_id)
                                   FROM groups g WHERE g.id = gm.group_id)),
                        '[]'::jsonb)
        FROM group_members gm WHERE gm.user_id = u.id) AS groups
FROM users u JOIN sync_state s ON s.user_id = u.id
WHERE u.tenant_id = $1 AND u.deleted_at IS NULL ORDER BY u.user_name";

const ROW_REPORT_SQL: &str = "
SELECT jsonb_build_object(
    'state', state, 'desired_version', desired_version, 'synced_version', synced_version,
    'attempts', attempts, 'next_attempt_at', next_attempt_at, 'pending_since', pending_since,
    'last_error', last_error, 'lease_owner', lease_owner, 'lease_until', lease_until,
    'ameyo_user_id', ameyo_user_id, 'cc_user_id', cc_user_id, 'ameyo_server', ameyo_server,
    'ameyo_locked', ameyo_locked, 'create_attempted', create_attempted,
    'intended_user_id', intended_user_id,
    'password_pending', pending_password IS NOT NULL, 'last_pushed', last_pushed)
FROM sync_state WHERE user_id = $1";

const ATTEMPTS_SQL: &str = "
SELECT jsonb_build_object('at', at, 'version', version, 'worker', worker, 'call', call,
        'outcome', outcome, 'http_status', http_status, 'duration_ms', duration_ms,
        'error', error)
FROM sync_attempts WHERE user_id = $1 ORDER BY at DESC, id DESC LIMIT $2";

/// `NOTIFY` the workers of every process (payload: why).
pub(super) async fn notify(pool: &PgPool, why: &str) -> Result<()> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(SYNC_CHANNEL)
        .bind(why)
        .execute(pool)
        .await?;
    Ok(())
}

/// The attempt logs of many deliveries of one worker, in one statement.
const LOG_MANY_SQL: &str = "
INSERT INTO sync_attempts (tenant_id, user_id, version, worker, call, outcome, http_status,
                           duration_ms, error)
SELECT c.tenant_id, c.user_id, c.version, $1, c.call, c.outcome, c.status, c.ms, c.error
FROM UNNEST($2::text[], $3::uuid[], $4::bigint[], $5::text[], $6::text[], $7::int[], $8::int[],
            $9::text[]) AS c(tenant_id, user_id, version, call, outcome, status, ms, error)";

/// [`SYNCED_SQL`] for many rows, each fenced by its own lease token. The rows are locked
/// in user order first, so two batches do not wait on each other in a cycle (one with
/// another transaction is broken by PostgreSQL, and the rows are then recorded one by
/// one). Returns the rows recorded.
const SYNCED_MANY_SQL: &str = "
WITH b AS (
    SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::bigint[], $4::text[], $5::text[],
                         $6::bigint[], $7::bool[], $8::bool[], $9::jsonb[], $10::text[],
                         $11::bool[])
        AS b(user_id, token, version, server, ameyo_user_id, cc_user_id, create_attempted,
             locked, last_pushed, intended_user_id, password_delivered)),
l AS (
    SELECT s.user_id FROM sync_state s JOIN b ON s.user_id = b.user_id AND s.lease_token = b.token
    ORDER BY s.user_id
    FOR UPDATE OF s)
UPDATE sync_state s SET
    synced_version = GREATEST(s.synced_version, b.version),
    state = CASE WHEN s.desired_version > b.version OR s.resync_requested THEN 'pending' ELSE 'done' END,
    pending_since = CASE WHEN s.desired_version > b.version OR s.resync_requested
                         THEN s.pending_since ELSE NULL END,
    attempts = CASE WHEN s.desired_version > b.version THEN s.attempts ELSE 0 END,
    next_attempt_at = now(), last_error = NULL,
    lease_owner = NULL, lease_until = NULL, lease_token = NULL,
    ameyo_user_id = b.ameyo_user_id, cc_user_id = b.cc_user_id,
    create_attempted = b.create_attempted, ameyo_locked = b.locked,
    intended_user_id = b.intended_user_id,
    ameyo_server = CASE WHEN coalesce(b.ameyo_user_id, b.intended_user_id) IS NULL
                        THEN NULL ELSE b.server END,
    last_pushed = CASE WHEN s.resync_requested THEN NULL ELSE b.last_pushed END,
    pending_password = CASE WHEN b.password_delivered AND s.password_version <= b.version
                            THEN NULL ELSE s.pending_password END,
    password_version = CASE WHEN b.password_delivered AND s.password_version <= b.version
                            THEN NULL ELSE s.password_version END,
    updated_at = now()
FROM b JOIN l ON l.user_id = b.user_id
WHERE s.user_id = b.user_id AND s.lease_token = b.token
RETURNING s.user_id";

/// Many completions in one transaction: every attempt log in one statement, every
/// synced row in one statement, the rest (retries, dead letters, removals: rare in a
/// bulk delivery) one statement each.
async fn complete_batch(pool: &PgPool, owner: &str, items: &[Completing<'_>]) -> Result<Vec<bool>> {
    let mut tx = pool.begin().await?;
    let calls = items
        .iter()
        .flat_map(|i| i.attempts.iter().map(move |a| (i, a)));
    let (mut tenants, mut users, mut versions, mut names, mut outcomes) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut statuses, mut ms, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    for (i, a) in calls {
        tenants.push(i.claimed.tenant_id.as_str());
        users.push(i.claimed.user_id);
        versions.push(i.claimed.version);
        names.push(a.call);
        outcomes.push(if a.ok { "ok" } else { "error" });
        statuses.push(a.http_status.map(i32::from));
        ms.push(a.duration_ms);
        errors.push(a.error.as_deref());
    }
    if !users.is_empty() {
        sqlx::query(LOG_MANY_SQL)
            .bind(owner)
            .bind(tenants)
            .bind(users)
            .bind(versions)
            .bind(names)
            .bind(outcomes)
            .bind(statuses)
            .bind(ms)
            .bind(errors)
            .execute(&mut *tx)
            .await?;
    }
    let synced: Vec<(&Completing<'_>, &Link, bool)> = items
        .iter()
        .filter_map(|i| match &i.completion {
            Completion::Synced {
                link,
                password_delivered,
            } => Some((i, *link, *password_delivered)),
            _ => None,
        })
        .collect();
    let mut recorded = std::collections::HashSet::new();
    if !synced.is_empty() {
        let rows: Vec<Uuid> = sqlx::query_scalar(SYNCED_MANY_SQL)
            .bind(
                synced
                    .iter()
                    .map(|(i, ..)| i.claimed.user_id)
                    .collect::<Vec<_>>(),
            )
            .bind(
                synced
                    .iter()
                    .map(|(i, ..)| i.claimed.lease_token)
                    .collect::<Vec<_>>(),
            )
            .bind(
                synced
                    .iter()
                    .map(|(i, ..)| i.claimed.version)
                    .collect::<Vec<_>>(),
            )
            .bind(synced.iter().map(|(i, ..)| i.server).collect::<Vec<_>>())
            .bind(
                synced
                    .iter()
                    .map(|(_, l, _)| l.ameyo_user_id.as_deref())
                    .collect::<Vec<_>>(),
            )
            .bind(
                synced
                    .iter()
                    .map(|(_, l, _)| l.cc_user_id)
                    .collect::<Vec<_>>(),
            )
            .bind(
                synced
                    .iter()
                    .map(|(_, l, _)| l.create_attempted)
                    .collect::<Vec<_>>(),
            )
            .bind(synced.iter().map(|(_, l, _)| l.locked).collect::<Vec<_>>())
            .bind(
                synced
                    .iter()
                    .map(|(_, l, _)| l.last_pushed.clone())
                    .collect::<Vec<_>>(),
            )
            .bind(
                synced
                    .iter()
                    .map(|(_, l, _)| l.intended_user_id.as_deref())
                    .collect::<Vec<_>>(),
            )
            .bind(synced.iter().map(|(.., p)| *p).collect::<Vec<_>>())
            .fetch_all(&mut *tx)
            .await?;
        recorded.extend(rows);
    }
    let mut done = Vec::with_capacity(items.len());
    for i in items {
        done.push(match &i.completion {
            Completion::Synced { .. } => recorded.contains(&i.claimed.user_id),
            // The calls are logged above already.
            other => complete_on(&mut *tx, i.claimed, owner, i.server, other, &[]).await?,
        });
    }
    tx.commit().await?;
    Ok(done)
}

/// One completion on `executor` (a pool or a transaction): [`Outbox::complete`].
async fn complete_on<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    c: &Claimed,
    owner: &str,
    server: &str,
    completion: &Completion<'_>,
    attempts: &[Attempt],
) -> Result<bool> {
    let calls: Vec<&str> = attempts.iter().map(|a| a.call).collect();
    let outcomes: Vec<&str> = attempts
        .iter()
        .map(|a| if a.ok { "ok" } else { "error" })
        .collect();
    let statuses: Vec<Option<i32>> = attempts
        .iter()
        .map(|a| a.http_status.map(i32::from))
        .collect();
    let ms: Vec<i32> = attempts.iter().map(|a| a.duration_ms).collect();
    let errors: Vec<Option<&str>> = attempts.iter().map(|a| a.error.as_deref()).collect();
    let base = |sql: &'static str| {
        sqlx::query_scalar::<_, i64>(sql)
            .bind(c.user_id)
            .bind(c.lease_token)
            .bind(&c.tenant_id)
            .bind(c.version)
            .bind(calls.clone())
            .bind(outcomes.clone())
            .bind(statuses.clone())
            .bind(ms.clone())
            .bind(errors.clone())
            .bind(owner)
    };
    let with_link = |sql: &'static str, link: &Link| {
        base(sql)
            .bind(server)
            .bind(link.ameyo_user_id.clone())
            .bind(link.cc_user_id)
            .bind(link.create_attempted)
            .bind(link.locked)
            .bind(link.last_pushed.clone())
            .bind(link.intended_user_id.clone())
    };
    let n = match completion {
        Completion::Removed => base(REMOVED_SQL).fetch_one(executor).await?,
        Completion::Synced {
            link,
            password_delivered,
        } => {
            with_link(SYNCED_SQL, link)
                .bind(*password_delivered)
                .fetch_one(executor)
                .await?
        }
        Completion::Retry {
            link,
            delay,
            reason,
            full_push,
        } => {
            with_link(RETRY_SQL, link)
                .bind(false)
                .bind(delay.as_secs_f64())
                .bind(reason.as_str())
                .bind(*full_push)
                .fetch_one(executor)
                .await?
        }
        Completion::Dead { link, reason } => {
            with_link(RETRY_SQL, link)
                .bind(true)
                .bind(0.0f64)
                .bind(reason.as_str())
                .bind(false)
                .fetch_one(executor)
                .await?
        }
    };
    Ok(n == 1)
}

#[async_trait]
impl Outbox for PgOutbox {
    async fn heartbeat(&self, owner: &str) -> Result<()> {
        sqlx::query(HEARTBEAT_SQL)
            .bind(owner)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn retire(&self, owner: &str) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        let n = sqlx::query(RELEASE_SQL)
            .bind(owner)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query(RETIRE_SQL)
            .bind(owner)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        if n > 0 {
            notify(&self.pool, "released").await?;
        }
        Ok(n)
    }

    async fn reclaim_stale(
        &self,
        tenants: &[String],
        stale_after: Duration,
        max_attempts: u32,
    ) -> Result<u64> {
        Ok(sqlx::query(RECLAIM_SQL)
            .bind(tenants)
            .bind(stale_after.as_secs_f64())
            .bind(max_attempts as i32)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }

    async fn claim(
        &self,
        owner: &str,
        tenants: &[String],
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<Claimed>> {
        let rows: Vec<ClaimedRow> = sqlx::query_as(CLAIM_SQL)
            .bind(owner)
            .bind(lease.as_secs_f64())
            .bind(limit as i64)
            .bind(tenants)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(Claimed::from).collect())
    }

    async fn claim_user_id(
        &self,
        user: Uuid,
        lease_token: Uuid,
        server: &str,
        ameyo_user_id: &str,
        sending: &Value,
    ) -> Result<UserIdClaim> {
        let marked = sqlx::query(CLAIM_USER_ID_SQL)
            .bind(user)
            .bind(lease_token)
            .bind(ameyo_user_id)
            .bind(server)
            .bind(sending)
            .execute(&self.pool)
            .await;
        match marked {
            Ok(r) if r.rows_affected() == 1 => Ok(UserIdClaim::Granted),
            Ok(_) => Ok(UserIdClaim::LostLease),
            Err(sqlx::Error::Database(db)) if db.constraint() == Some(OWNER_KEY) => {
                let holder: Option<(bool, String)> = sqlx::query_as(OWNER_SQL)
                    .bind(server)
                    .bind(ameyo_user_id)
                    .bind(user)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(match holder {
                    Some((true, _)) => UserIdClaim::HeldByTombstone,
                    Some((false, tenant)) => UserIdClaim::HeldByLive { tenant },
                    // The holder let go in between: the next attempt tries again.
                    None => UserIdClaim::HeldByTombstone,
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn complete(
        &self,
        c: &Claimed,
        owner: &str,
        server: &str,
        completion: &Completion<'_>,
        attempts: &[Attempt],
    ) -> Result<bool> {
        complete_on(&self.pool, c, owner, server, completion, attempts).await
    }

    async fn complete_many(&self, owner: &str, items: &[Completing<'_>]) -> Vec<Result<bool>> {
        if items.len() > 1 {
            match complete_batch(&self.pool, owner, items).await {
                Ok(done) => return done.into_iter().map(Ok).collect(),
                // One row the batch could not take (a userId another row took in the
                // meantime, a lock cycle with another transaction) must not cost the
                // others their record: each goes on its own below.
                Err(e) => {
                    tracing::debug!(error = %e, rows = items.len(), "batched completion failed; recording one by one")
                }
            }
        }
        let mut done = Vec::with_capacity(items.len());
        for i in items {
            done.push(
                complete_on(
                    &self.pool,
                    i.claimed,
                    owner,
                    i.server,
                    &i.completion,
                    i.attempts,
                )
                .await,
            );
        }
        done
    }

    async fn adopt_server(&self, tenant: &str, server: &str) -> Result<u64> {
        Ok(sqlx::query(ADOPT_SERVER_SQL)
            .bind(tenant)
            .bind(server)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }

    async fn prune_attempts(&self, older_than_days: u32) -> Result<u64> {
        let mut total = 0;
        loop {
            let n = sqlx::query(PRUNE_SQL)
                .bind(older_than_days as i32)
                .bind(PRUNE_BATCH)
                .execute(&self.pool)
                .await?
                .rows_affected();
            total += n;
            if n < PRUNE_BATCH as u64 {
                return Ok(total);
            }
            // Let other statements in between batches.
            tokio::task::yield_now().await;
        }
    }

    async fn listen(self: Arc<Self>, notify: Arc<Notify>, shutdown: CancellationToken) {
        // This process's writes wake the worker in memory, whether or not LISTEN works.
        let local = async {
            loop {
                self.wake.local().notified().await;
                notify.notify_one();
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = local => {}
            _ = self.hear_others(&notify) => {}
        }
    }

    async fn counts(&self) -> Result<Vec<SyncCount>> {
        Ok(sqlx::query_as(COUNTS_SQL).fetch_all(&self.pool).await?)
    }

    async fn list(&self, which: Which, tenant: Option<&str>, limit: i64) -> Result<Vec<SyncEntry>> {
        let states: &[&str] = match which {
            Which::Dead => &["dead"],
            Which::Pending => &["pending", "leased"],
        };
        Ok(sqlx::query_as(LIST_SQL)
            .bind(states)
            .bind(tenant)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn rearm_dead(&self, user: Option<Uuid>, tenant: Option<&str>) -> Result<u64> {
        let n = sqlx::query(REARM_SQL)
            .bind(user)
            .bind(tenant)
            .execute(&self.pool)
            .await?
            .rows_affected();
        notify(&self.pool, "rearm").await?;
        Ok(n)
    }

    async fn resync(&self, users: Option<&[Uuid]>, tenant: Option<&str>) -> Result<u64> {
        let n = sqlx::query(RESYNC_SQL)
            .bind(users)
            .bind(tenant)
            .execute(&self.pool)
            .await?
            .rows_affected();
        notify(&self.pool, "resync").await?;
        Ok(n)
    }

    async fn forget_links(&self, users: &[Uuid]) -> Result<u64> {
        let n = sqlx::query(FORGET_SQL)
            .bind(users)
            .execute(&self.pool)
            .await?
            .rows_affected();
        notify(&self.pool, "forget").await?;
        Ok(n)
    }

    async fn linked_users(&self, tenant: &str) -> Result<Vec<LinkedUser>> {
        Ok(sqlx::query_as(LINKED_USERS_SQL)
            .bind(tenant)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn row_report(&self, user: Uuid) -> Result<Option<Value>> {
        Ok(sqlx::query_scalar(ROW_REPORT_SQL)
            .bind(user)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn recent_attempts(&self, user: Uuid, limit: i64) -> Result<Vec<Value>> {
        Ok(sqlx::query_scalar(ATTEMPTS_SQL)
            .bind(user)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }
}
