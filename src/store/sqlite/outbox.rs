//! The SQLite outbox: every statement on `sync_state`, `sync_attempts` and
//! `sync_workers` of the embedded store, behind the same [`Outbox`] trait as PostgreSQL
//! ([`SqliteOutbox`]). The user writes call [`insert_pending`], [`mark_pending`] and
//! [`rearm_if_dead`] inside their own transaction, so a user row and its outbox row
//! always change together, as in PostgreSQL.
//!
//! Where SQLite differs, and how the semantics are kept:
//! - One process owns the file and SQLite has one writer at a time, so there is no
//!   `FOR UPDATE SKIP LOCKED`: a claim is one short write transaction (pick the due rows,
//!   lease each with a token made here, read them back with their user). Every
//!   transaction that reads before it writes begins `IMMEDIATE`: it waits for the write
//!   lock up front (busy timeout) instead of failing when a read lock would be upgraded.
//! - No `LISTEN`/`NOTIFY`: the wake-up is in-process. [`SqliteOutbox::wakeup`] is a
//!   [`Notify`] that writers trigger after a commit that makes work due (this module's
//!   operator changes; the user store, given the same handle, after its writes), and
//!   [`Outbox::listen`] forwards it to the worker. One worker listens per process; a
//!   change made by another process on the same file (the admin CLI) wakes nobody. The
//!   worker also polls, so a missed wake-up costs one poll interval, as in PostgreSQL.
//! - Ownership of an Ameyo userId is the unique index `sync_state_ameyo_owner` on
//!   `(ameyo_server, owner_key)`, where `owner_key` is the userId a row holds folded to
//!   lower case here in Rust: SQLite's `lower()` folds ASCII letters only, PostgreSQL's
//!   folds every letter, and `Änn` must collide with `änn` in both.
//! - Times are text in one sortable format ([`super::TIME_FORMAT`]) from SQLite's clock,
//!   through `now!()` and `now_plus!()`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::error::ErrorKind;
use sqlx::{SqliteConnection, SqlitePool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use uuid::fmt::Hyphenated;

use super::{now, now_plus};
use crate::ameyo::mapping::GroupKey;
use crate::store::outbox::{
    Attempt, AttemptRecord, Claimed, Completing, Completion, Link, LinkedUser, Outbox,
    OutboxRecord, SyncCount, SyncEntry, UserIdClaim, Which,
};
use crate::store::{Result, StoreError};

/// What a user write does to the password waiting for delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingPassword<'a> {
    /// Keep the one waiting, if any.
    Keep,
    /// A new sealed password, for this write's version.
    Set(&'a [u8]),
    /// Erase it (a deleted user's password is never delivered).
    Erase,
}

/// The outbox row of a new user at version 1.
pub(crate) async fn insert_pending(
    conn: &mut SqliteConnection,
    user: Uuid,
    tenant: &str,
    version: i64,
    sealed_password: Option<&[u8]>,
) -> Result<()> {
    sqlx::query(concat!(
        "INSERT INTO sync_state (user_id, tenant_id, desired_version, pending_password,
            password_version, next_attempt_at, pending_since, updated_at)
         VALUES (?1, ?2, ?3, ?4, CASE WHEN ?4 IS NULL THEN NULL ELSE ?3 END, ",
        now!(),
        ", ",
        now!(),
        ", ",
        now!(),
        ")"
    ))
    .bind(user.to_string())
    .bind(tenant)
    .bind(version)
    .bind(sealed_password)
    .execute(conn)
    .await?;
    Ok(())
}

/// The columns that make an outbox row pending (all but the desired version and the
/// password). A row a worker holds stays leased: the worker sees the newer desired
/// version when it completes and goes round again.
macro_rules! set_pending {
    () => {
        concat!(
            "state = CASE WHEN state = 'leased' THEN 'leased' ELSE 'pending' END,
            pending_since = CASE WHEN state IN ('pending', 'leased')
                                 THEN coalesce(pending_since, ",
            now!(),
            ") ELSE ",
            now!(),
            " END,
            attempts = 0, next_attempt_at = ",
            now!(),
            ", last_error = NULL, updated_at = ",
            now!()
        )
    };
}

/// Mark a user's outbox row pending at `version`.
pub(crate) async fn mark_pending(
    conn: &mut SqliteConnection,
    user: Uuid,
    version: i64,
    password: PendingPassword<'_>,
) -> Result<()> {
    let (set, erase, sealed) = match password {
        PendingPassword::Keep => (false, false, None),
        PendingPassword::Set(p) => (true, false, Some(p)),
        PendingPassword::Erase => (false, true, None),
    };
    sqlx::query(concat!(
        "UPDATE sync_state SET desired_version = ?2, ",
        set_pending!(),
        ",
            pending_password = CASE WHEN ?3 THEN ?5 WHEN ?4 THEN NULL ELSE pending_password END,
            password_version = CASE WHEN ?3 THEN ?2 WHEN ?4 THEN NULL ELSE password_version END
         WHERE user_id = ?1"
    ))
    .bind(user.to_string())
    .bind(version)
    .bind(set)
    .bind(erase)
    .bind(sealed)
    .execute(conn)
    .await?;
    Ok(())
}

/// Mark the outbox rows of `users` (a JSON array of ids, see [`json_list`]) pending at
/// their users' current versions, keeping any password waiting: one statement however
/// many users a group change touched. Returns how many rows were marked.
pub(crate) async fn mark_pending_many(conn: &mut SqliteConnection, users: &str) -> Result<u64> {
    Ok(sqlx::query(concat!(
        "UPDATE sync_state SET
            desired_version = (SELECT u.version FROM users u WHERE u.id = sync_state.user_id), ",
        set_pending!(),
        "
         WHERE user_id IN (SELECT value FROM json_each(?1))"
    ))
    .bind(users)
    .execute(conn)
    .await?
    .rows_affected())
}

/// Re-arm a dead-lettered user inside a SCIM write that changed nothing: an IdP's "push
/// again" must work. Returns whether a row was re-armed.
pub(crate) async fn rearm_if_dead(
    conn: &mut SqliteConnection,
    tenant: &str,
    user: Uuid,
) -> Result<bool> {
    let n = sqlx::query(concat!(
        "UPDATE sync_state SET state = 'pending', attempts = 0, next_attempt_at = ",
        now!(),
        ", last_error = NULL, last_pushed = NULL, pending_since = ",
        now!(),
        ", updated_at = ",
        now!(),
        " WHERE user_id = ?1 AND tenant_id = ?2 AND state = 'dead'"
    ))
    .bind(user.to_string())
    .bind(tenant)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(n > 0)
}

/// SQL for "now minus `$param` seconds" (a float parameter), like `now_plus!`.
macro_rules! now_minus {
    ($param:literal) => {
        concat!(
            "strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-' || ",
            $param,
            " || ' seconds')"
        )
    };
}

/// The SQLite outbox.
#[derive(Clone, Debug)]
pub struct SqliteOutbox {
    pool: SqlitePool,
    wake: Arc<Notify>,
    write: super::WriteLock,
}

impl SqliteOutbox {
    pub fn new(pool: SqlitePool) -> Self {
        Self {
            pool,
            wake: Arc::new(Notify::new()),
            write: Default::default(),
        }
    }

    /// Queue writes on this lock, shared with the user store of the same file.
    pub fn with_write_lock(mut self, write: super::WriteLock) -> Self {
        self.write = write;
        self
    }

    /// The in-process stand-in for `NOTIFY`: call `notify_one()` on it after a commit
    /// that makes work due, and [`Outbox::listen`] wakes the worker. The user store is
    /// given this same handle.
    pub fn wakeup(&self) -> Arc<Notify> {
        self.wake.clone()
    }
}

#[derive(sqlx::FromRow)]
struct ExportRow {
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

fn parse_uuid(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(|e| StoreError::Database(sqlx::Error::Decode(Box::new(e))))
}

impl SqliteOutbox {
    /// Up to `limit` outbox rows after `after` (by user id), for `migrate-store`.
    pub async fn export(&self, after: Option<Uuid>, limit: i64) -> Result<Vec<OutboxRecord>> {
        let rows: Vec<ExportRow> = sqlx::query_as(
            "SELECT user_id, tenant_id, desired_version, synced_version,
                    CASE WHEN state = 'leased' THEN 'pending' ELSE state END AS state,
                    attempts, next_attempt_at, pending_since, last_error, pending_password,
                    password_version, ameyo_user_id, cc_user_id, create_attempted,
                    intended_user_id, ameyo_locked, last_pushed, resync_requested, ameyo_server
             FROM sync_state WHERE user_id > ?1 ORDER BY user_id LIMIT ?2",
        )
        .bind(after.map(|u| u.to_string()).unwrap_or_default())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(OutboxRecord {
                    user_id: parse_uuid(&r.user_id)?,
                    tenant_id: r.tenant_id,
                    desired_version: r.desired_version,
                    synced_version: r.synced_version,
                    state: r.state,
                    attempts: r.attempts,
                    next_attempt_at: r.next_attempt_at,
                    pending_since: r.pending_since,
                    last_error: r.last_error,
                    pending_password: r.pending_password,
                    password_version: r.password_version,
                    ameyo_user_id: r.ameyo_user_id,
                    cc_user_id: r.cc_user_id,
                    create_attempted: r.create_attempted,
                    intended_user_id: r.intended_user_id,
                    ameyo_locked: r.ameyo_locked,
                    last_pushed: r
                        .last_pushed
                        .as_deref()
                        .map(serde_json::from_str)
                        .transpose()
                        .map_err(|e| StoreError::Database(sqlx::Error::Decode(Box::new(e))))?,
                    resync_requested: r.resync_requested,
                    ameyo_server: r.ameyo_server,
                })
            })
            .collect()
    }

    /// Up to `limit` attempt-log entries after the entry `after`, with their ids.
    pub async fn export_attempts(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, AttemptRecord)>> {
        #[allow(clippy::type_complexity)]
        let rows: Vec<(
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
        )> = sqlx::query_as(
            "SELECT id, at, tenant_id, user_id, version, worker, call, outcome, http_status,
                        duration_ms, error
                 FROM sync_attempts WHERE id > ?1 ORDER BY id LIMIT ?2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok((
                    r.0,
                    AttemptRecord {
                        at: r.1,
                        tenant_id: r.2,
                        user_id: parse_uuid(&r.3)?,
                        version: r.4,
                        worker: r.5,
                        call: r.6,
                        outcome: r.7,
                        http_status: r.8,
                        duration_ms: r.9,
                        error: r.10,
                    },
                ))
            })
            .collect()
    }

    /// How many outbox rows and attempt-log entries there are.
    pub async fn sizes(&self) -> Result<(i64, i64)> {
        Ok(sqlx::query_as(
            "SELECT (SELECT count(*) FROM sync_state), (SELECT count(*) FROM sync_attempts)",
        )
        .fetch_one(&self.pool)
        .await?)
    }
}

/// Rows deleted per statement when pruning: small enough not to hold the write lock
/// for long.
const PRUNE_BATCH: i64 = 5_000;

/// The unique index that makes ownership of an Ameyo userId exclusive.
const OWNER_INDEX: &str = "sync_state_ameyo_owner";

/// The `owner_key` of a row that holds these userIds (see the module doc).
fn owner_key(ameyo_user_id: Option<&str>, intended_user_id: Option<&str>) -> Option<String> {
    ameyo_user_id.or(intended_user_id).map(str::to_lowercase)
}

/// Whether `e` is a conflict on [`OWNER_INDEX`]. SQLite names an index on columns by
/// its columns ("UNIQUE constraint failed: sync_state.ameyo_server,
/// sync_state.owner_key") and one on expressions by its name; both are recognised, so
/// the check survives a change of the index's shape.
fn is_owner_conflict(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            db.kind() == ErrorKind::UniqueViolation
                && (db.message().contains(OWNER_INDEX)
                    || db.message().contains("sync_state.owner_key"))
        }
        _ => false,
    }
}

/// A list bound as one parameter (a JSON array), read in SQL with `json_each`: SQLite
/// has no array parameters.
pub(crate) fn json_list(items: impl IntoIterator<Item = String>) -> String {
    items.into_iter().collect::<Value>().to_string()
}

const HEARTBEAT_SQL: &str = concat!(
    "INSERT INTO sync_workers (owner, started_at, heartbeat_at) VALUES (?1, ",
    now!(),
    ", ",
    now!(),
    ")
ON CONFLICT (owner) DO UPDATE SET heartbeat_at = excluded.heartbeat_at"
);

const RELEASE_SQL: &str = concat!(
    "UPDATE sync_state SET state = 'pending', lease_owner = NULL, lease_until = NULL,
    lease_token = NULL, next_attempt_at = ",
    now!(),
    ", updated_at = ",
    now!(),
    "
WHERE lease_owner = ?1 AND state = 'leased'"
);

/// Workers that stopped beating a day ago are forgotten.
const RETIRE_SQL: &str = concat!(
    "DELETE FROM sync_workers WHERE owner = ?1 OR heartbeat_at < ",
    now_minus!("86400"),
);

/// ?1 tenants, ?2 max attempts, ?3 seconds of silence after which a holder is dead.
const RECLAIM_SQL: &str = concat!(
    "UPDATE sync_state SET
    -- A resync of a delivered version that keeps killing its worker ends too.
    state = CASE WHEN ?2 > 0 AND attempts + 1 >= ?2 THEN 'dead' ELSE 'pending' END,
    pending_since = CASE WHEN ?2 > 0 AND attempts + 1 >= ?2 THEN NULL ELSE pending_since END,
    attempts = attempts + 1,
    last_error = 'the delivery did not finish (its worker stopped or ran out of lease) '
                 || (attempts + 1) || ' time(s)',
    -- Whatever the lost attempt sent may still land: push every field again.
    last_pushed = NULL,
    next_attempt_at = ",
    now!(),
    ", lease_owner = NULL, lease_until = NULL, lease_token = NULL,
    updated_at = ",
    now!(),
    "
WHERE state = 'leased' AND tenant_id IN (SELECT value FROM json_each(?1))
  AND (lease_until < ",
    now!(),
    "
       OR NOT EXISTS (SELECT 1 FROM sync_workers w WHERE w.owner = sync_state.lease_owner
                      AND w.heartbeat_at > ",
    now_minus!("?3"),
    "))"
);

const DUE_SQL: &str = concat!(
    "SELECT user_id, updated_at FROM sync_state
WHERE state = 'pending' AND next_attempt_at <= ",
    now!(),
    " AND tenant_id IN (SELECT value FROM json_each(?1))
ORDER BY next_attempt_at
LIMIT ?2"
);

/// ?1 user, ?2 owner, ?3 token, ?4 lease seconds.
const LEASE_SQL: &str = concat!(
    "UPDATE sync_state SET state = 'leased', lease_owner = ?2, lease_token = ?3,
    lease_until = ",
    now_plus!("?4"),
    ", updated_at = ",
    now!(),
    ", resync_requested = 0
WHERE user_id = ?1"
);

/// The groups of user `u` as the mapping rules see them (a JSON array).
macro_rules! group_keys {
    () => {
        "(SELECT json_group_array(json_object('display_name', g.display_name,
                                              'external_id', g.external_id))
          FROM group_members gm JOIN groups g ON g.id = gm.group_id
          WHERE gm.user_id = u.id) AS groups"
    };
}

const CLAIMED_SQL: &str = concat!(
    "
SELECT s.user_id, s.tenant_id, s.lease_token, s.attempts, s.pending_password,
       s.create_attempted, s.intended_user_id, s.ameyo_user_id, s.cc_user_id,
       s.ameyo_locked, s.last_pushed, u.resource, u.version, u.active,
       (u.deleted_at IS NOT NULL) AS deleted, ",
    group_keys!(),
    "
FROM sync_state s JOIN users u ON u.id = s.user_id
WHERE s.user_id = ?1"
);

#[derive(sqlx::FromRow)]
struct ClaimedRow {
    user_id: Hyphenated,
    tenant_id: String,
    lease_token: Hyphenated,
    attempts: i32,
    pending_password: Option<Vec<u8>>,
    create_attempted: bool,
    intended_user_id: Option<String>,
    ameyo_user_id: Option<String>,
    cc_user_id: Option<i64>,
    ameyo_locked: bool,
    last_pushed: Option<Value>,
    resource: Value,
    version: i64,
    active: bool,
    deleted: bool,
    #[sqlx(json)]
    groups: Vec<GroupKey>,
}

impl ClaimedRow {
    fn into_claimed(self, last_changed: DateTime<Utc>) -> Claimed {
        Claimed {
            user_id: self.user_id.into_uuid(),
            tenant_id: self.tenant_id,
            lease_token: self.lease_token.into_uuid(),
            attempts: self.attempts,
            pending_password: self.pending_password,
            link: Link {
                ameyo_user_id: self.ameyo_user_id,
                cc_user_id: self.cc_user_id,
                create_attempted: self.create_attempted,
                intended_user_id: self.intended_user_id,
                locked: self.ameyo_locked,
                last_pushed: self.last_pushed,
            },
            resource: self.resource,
            groups: self.groups,
            version: self.version,
            active: self.active,
            deleted: self.deleted,
            last_changed,
        }
    }
}

/// ?1 user, ?2 token; ?3 the userId, ?4 the server, ?5 the fields, ?6 the owner key.
const CLAIM_USER_ID_SQL: &str = concat!(
    "UPDATE sync_state SET create_attempted = 1, intended_user_id = ?3, ameyo_server = ?4,
    last_pushed = ?5, owner_key = ?6, updated_at = ",
    now!(),
    "
WHERE user_id = ?1 AND lease_token = ?2"
);

/// Who holds a key on a server, if not ?3: a tombstone first (it will go).
const OWNER_SQL: &str = "
SELECT u.deleted_at IS NOT NULL, s.tenant_id FROM sync_state s JOIN users u ON u.id = s.user_id
WHERE s.ameyo_server = ?1 AND s.owner_key = ?2 AND s.user_id <> ?3
ORDER BY 1 DESC
LIMIT 1";

const LOG_ATTEMPT_SQL: &str = concat!(
    "INSERT INTO sync_attempts (at, tenant_id, user_id, version, worker, call, outcome,
    http_status, duration_ms, error)
VALUES (",
    now!(),
    ", ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
);

/// The link columns a completion writes (?4 the server, ?5..?11 the link and its owner
/// key), except `last_pushed` (?9), which each completion sets its own way.
macro_rules! set_link {
    () => {
        "ameyo_user_id = ?5, cc_user_id = ?6, create_attempted = ?7, ameyo_locked = ?8,
        intended_user_id = ?10, owner_key = ?11,
        ameyo_server = CASE WHEN ?11 IS NULL THEN NULL ELSE ?4 END,"
    };
}

/// ?1 user, ?2 token, ?3 the version delivered; ?12: the pending password went out.
const SYNCED_SQL: &str = concat!(
    "UPDATE sync_state SET
    synced_version = max(synced_version, ?3),
    state = CASE WHEN desired_version > ?3 OR resync_requested THEN 'pending' ELSE 'done' END,
    pending_since = CASE WHEN desired_version > ?3 OR resync_requested
                         THEN pending_since ELSE NULL END,
    attempts = CASE WHEN desired_version > ?3 THEN attempts ELSE 0 END,
    next_attempt_at = ",
    now!(),
    ", last_error = NULL,
    lease_owner = NULL, lease_until = NULL, lease_token = NULL, ",
    set_link!(),
    "
    last_pushed = CASE WHEN resync_requested THEN NULL ELSE ?9 END,
    pending_password = CASE WHEN ?12 AND password_version <= ?3
                            THEN NULL ELSE pending_password END,
    password_version = CASE WHEN ?12 AND password_version <= ?3
                            THEN NULL ELSE password_version END,
    updated_at = ",
    now!(),
    "
WHERE user_id = ?1 AND lease_token = ?2"
);

/// ?12: dead; ?13: delay in seconds; ?14: the reason; ?15: push every field next time.
const RETRY_SQL: &str = concat!(
    "UPDATE sync_state SET
    -- A newer version written during this delivery deserves its own attempts:
    -- only the version that failed is given up on.
    state = CASE WHEN ?12 AND desired_version <= ?3 THEN 'dead' ELSE 'pending' END,
    pending_since = CASE WHEN ?12 AND desired_version <= ?3 THEN NULL ELSE pending_since END,
    attempts = CASE WHEN ?12 AND desired_version > ?3 THEN 0 ELSE attempts + 1 END,
    next_attempt_at = CASE WHEN ?12 AND desired_version > ?3 THEN ",
    now!(),
    " ELSE ",
    now_plus!("?13"),
    " END,
    last_error = ?14,
    lease_owner = NULL, lease_until = NULL, lease_token = NULL, ",
    set_link!(),
    "
    last_pushed = CASE WHEN resync_requested OR ?15 THEN NULL ELSE ?9 END,
    updated_at = ",
    now!(),
    "
WHERE user_id = ?1 AND lease_token = ?2"
);

/// The tombstone and, by the foreign key, its outbox row go; the attempt log stays.
const REMOVED_SQL: &str = "
DELETE FROM users WHERE id = ?1 AND deleted_at IS NOT NULL
  AND EXISTS (SELECT 1 FROM sync_state WHERE user_id = ?1 AND lease_token = ?2)";

/// Rows linked before ownership was recorded get their server, one row per userId
/// (a linked row before an unconfirmed create, then the first changed; any other is
/// left for an operator to look at).
const ADOPT_SERVER_SQL: &str = "
UPDATE sync_state SET ameyo_server = ?2 WHERE user_id IN (
    SELECT user_id FROM (
        SELECT s.user_id, row_number() OVER (
                   PARTITION BY s.owner_key
                   ORDER BY (s.ameyo_user_id IS NULL), s.updated_at) AS rank
        FROM sync_state s
        WHERE s.tenant_id = ?1 AND s.ameyo_server IS NULL AND s.owner_key IS NOT NULL
          AND NOT EXISTS (SELECT 1 FROM sync_state o
                          WHERE o.ameyo_server = ?2 AND o.owner_key = s.owner_key))
    WHERE rank = 1)";

/// ?1 the retention in seconds, ?2 the batch.
const PRUNE_SQL: &str = concat!(
    "DELETE FROM sync_attempts WHERE id IN (
    SELECT id FROM sync_attempts WHERE at < ",
    now_minus!("?1"),
    " LIMIT ?2)"
);

const COUNTS_SQL: &str = "
SELECT tenant_id, state, count(*) AS users,
       (julianday('now') - julianday(min(pending_since))) * 86400.0 AS oldest_pending_secs
FROM sync_state GROUP BY tenant_id, state";

const LIST_SQL: &str = "
SELECT s.tenant_id AS tenant, s.user_id, u.user_name, s.state,
       coalesce(s.pending_since, s.updated_at) AS since, s.attempts,
       s.next_attempt_at, s.last_error
FROM sync_state s JOIN users u ON u.id = s.user_id
WHERE s.state IN (SELECT value FROM json_each(?1)) AND (?2 IS NULL OR s.tenant_id = ?2)
ORDER BY since, s.user_id LIMIT ?3";

#[derive(sqlx::FromRow)]
struct EntryRow {
    tenant: String,
    user_id: Hyphenated,
    user_name: String,
    state: String,
    since: DateTime<Utc>,
    attempts: i32,
    next_attempt_at: DateTime<Utc>,
    last_error: Option<String>,
}

const REARM_SQL: &str = concat!(
    "UPDATE sync_state SET state = 'pending', attempts = 0, next_attempt_at = ",
    now!(),
    ",
    last_error = NULL, pending_since = coalesce(pending_since, ",
    now!(),
    "), updated_at = ",
    now!(),
    "
WHERE state = 'dead' AND (?1 IS NULL OR user_id = ?1) AND (?2 IS NULL OR tenant_id = ?2)"
);

/// A leased row finishes its delivery first, then goes round again.
const RESYNC_SQL: &str = concat!(
    "UPDATE sync_state SET
    state = CASE WHEN state = 'leased' THEN 'leased' ELSE 'pending' END,
    resync_requested = (state = 'leased'),
    last_pushed = NULL, attempts = 0, next_attempt_at = ",
    now!(),
    ", last_error = NULL,
    pending_since = coalesce(pending_since, ",
    now!(),
    "), updated_at = ",
    now!(),
    "
WHERE (?1 IS NULL OR user_id IN (SELECT value FROM json_each(?1)))
  AND (?2 IS NULL OR tenant_id = ?2)"
);

const FORGET_SQL: &str = concat!(
    "UPDATE sync_state SET ameyo_user_id = NULL, cc_user_id = NULL, ameyo_server = NULL,
    owner_key = NULL, create_attempted = 0, intended_user_id = NULL, ameyo_locked = 0,
    last_pushed = NULL, resync_requested = (state = 'leased'),
    state = CASE WHEN state = 'leased' THEN 'leased' ELSE 'pending' END,
    attempts = 0, next_attempt_at = ",
    now!(),
    ", last_error = NULL,
    pending_since = coalesce(pending_since, ",
    now!(),
    "), updated_at = ",
    now!(),
    "
WHERE user_id IN (SELECT value FROM json_each(?1))"
);

const LINKED_USERS_SQL: &str = concat!(
    "
SELECT u.id, u.user_name, u.active, u.resource, s.ameyo_user_id, ",
    group_keys!(),
    "
FROM users u JOIN sync_state s ON s.user_id = u.id
WHERE u.tenant_id = ?1 AND u.deleted_at IS NULL ORDER BY u.user_name"
);

#[derive(sqlx::FromRow)]
struct LinkedRow {
    id: Hyphenated,
    user_name: String,
    active: bool,
    resource: Value,
    ameyo_user_id: Option<String>,
    #[sqlx(json)]
    groups: Vec<GroupKey>,
}

/// A 0/1 column as a JSON boolean (SQLite has no boolean type).
macro_rules! json_bool {
    ($e:literal) => {
        concat!("json(CASE WHEN ", $e, " THEN 'true' ELSE 'false' END)")
    };
}

const ROW_REPORT_SQL: &str = concat!(
    "SELECT json_object(
    'state', state, 'desired_version', desired_version, 'synced_version', synced_version,
    'attempts', attempts, 'next_attempt_at', next_attempt_at, 'pending_since', pending_since,
    'last_error', last_error, 'lease_owner', lease_owner, 'lease_until', lease_until,
    'ameyo_user_id', ameyo_user_id, 'cc_user_id', cc_user_id, 'ameyo_server', ameyo_server,
    'ameyo_locked', ",
    json_bool!("ameyo_locked"),
    ", 'create_attempted', ",
    json_bool!("create_attempted"),
    ",
    'intended_user_id', intended_user_id,
    'password_pending', ",
    json_bool!("pending_password IS NOT NULL"),
    ", 'last_pushed', json(last_pushed))
FROM sync_state WHERE user_id = ?1"
);

const ATTEMPTS_SQL: &str = "
SELECT json_object('at', at, 'version', version, 'worker', worker, 'call', call,
        'outcome', outcome, 'http_status', http_status, 'duration_ms', duration_ms,
        'error', error)
FROM sync_attempts WHERE user_id = ?1 ORDER BY at DESC, id DESC LIMIT ?2";

/// Begins a transaction that holds the write lock from its first statement.
const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

/// One completion inside the caller's write transaction: [`Outbox::complete`].
async fn complete_in(
    tx: &mut SqliteConnection,
    c: &Claimed,
    owner: &str,
    server: &str,
    completion: &Completion<'_>,
    attempts: &[Attempt],
) -> Result<bool> {
    let user = c.user_id.hyphenated();
    let token = c.lease_token.hyphenated();
    // The calls were made whoever holds the row now: the log keeps them either way.
    for a in attempts {
        sqlx::query(LOG_ATTEMPT_SQL)
            .bind(&c.tenant_id)
            .bind(user)
            .bind(c.version)
            .bind(owner)
            .bind(a.call)
            .bind(if a.ok { "ok" } else { "error" })
            .bind(a.http_status.map(i32::from))
            .bind(a.duration_ms)
            .bind(a.error.as_deref())
            .execute(&mut *tx)
            .await?;
    }
    let with_link = |sql: &'static str, link: &Link| {
        sqlx::query(sql)
            .bind(user)
            .bind(token)
            .bind(c.version)
            .bind(server)
            .bind(link.ameyo_user_id.clone())
            .bind(link.cc_user_id)
            .bind(link.create_attempted)
            .bind(link.locked)
            .bind(link.last_pushed.clone())
            .bind(link.intended_user_id.clone())
            .bind(owner_key(
                link.ameyo_user_id.as_deref(),
                link.intended_user_id.as_deref(),
            ))
    };
    let done = match completion {
        Completion::Removed => {
            sqlx::query(REMOVED_SQL)
                .bind(user)
                .bind(token)
                .execute(&mut *tx)
                .await?
        }
        Completion::Synced {
            link,
            password_delivered,
        } => {
            with_link(SYNCED_SQL, link)
                .bind(*password_delivered)
                .execute(&mut *tx)
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
                .execute(&mut *tx)
                .await?
        }
        Completion::Dead { link, reason } => {
            with_link(RETRY_SQL, link)
                .bind(true)
                .bind(0.0f64)
                .bind(reason.as_str())
                .bind(false)
                .execute(&mut *tx)
                .await?
        }
    };
    Ok(done.rows_affected() == 1)
}

#[async_trait]
impl Outbox for SqliteOutbox {
    async fn heartbeat(&self, owner: &str) -> Result<()> {
        sqlx::query(HEARTBEAT_SQL)
            .bind(owner)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn retire(&self, owner: &str) -> Result<u64> {
        let _turn = self.write.clone().lock_owned().await;
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
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
            self.wake.notify_one();
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
            .bind(json_list(tenants.iter().cloned()))
            .bind(i64::from(max_attempts))
            .bind(stale_after.as_secs_f64())
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
        let _turn = self.write.clone().lock_owned().await;
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        let due: Vec<(Hyphenated, DateTime<Utc>)> = sqlx::query_as(DUE_SQL)
            .bind(json_list(tenants.iter().cloned()))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&mut *tx)
            .await?;
        let mut claimed = Vec::with_capacity(due.len());
        for (user, last_changed) in due {
            sqlx::query(LEASE_SQL)
                .bind(user)
                .bind(owner)
                .bind(Uuid::new_v4().hyphenated())
                .bind(lease.as_secs_f64())
                .execute(&mut *tx)
                .await?;
            let row: ClaimedRow = sqlx::query_as(CLAIMED_SQL)
                .bind(user)
                .fetch_one(&mut *tx)
                .await?;
            claimed.push(row.into_claimed(last_changed));
        }
        tx.commit().await?;
        Ok(claimed)
    }

    async fn claim_user_id(
        &self,
        user: Uuid,
        lease_token: Uuid,
        server: &str,
        ameyo_user_id: &str,
        sending: &Value,
    ) -> Result<UserIdClaim> {
        let _turn = self.write.clone().lock_owned().await;
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        // The key of the row after this update: a confirmed link still names the
        // userId the row holds.
        let linked: Option<(Option<String>,)> = sqlx::query_as(
            "SELECT ameyo_user_id FROM sync_state WHERE user_id = ?1 AND lease_token = ?2",
        )
        .bind(user.hyphenated())
        .bind(lease_token.hyphenated())
        .fetch_optional(&mut *tx)
        .await?;
        let Some((linked,)) = linked else {
            return Ok(UserIdClaim::LostLease);
        };
        let key = owner_key(linked.as_deref(), Some(ameyo_user_id));
        let marked = sqlx::query(CLAIM_USER_ID_SQL)
            .bind(user.hyphenated())
            .bind(lease_token.hyphenated())
            .bind(ameyo_user_id)
            .bind(server)
            .bind(sending)
            .bind(&key)
            .execute(&mut *tx)
            .await;
        match marked {
            Ok(_) => {
                tx.commit().await?;
                Ok(UserIdClaim::Granted)
            }
            Err(e) if is_owner_conflict(&e) => {
                tx.rollback().await?;
                let holder: Option<(bool, String)> = sqlx::query_as(OWNER_SQL)
                    .bind(server)
                    .bind(&key)
                    .bind(user.hyphenated())
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
        let _turn = self.write.clone().lock_owned().await;
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        let done = complete_in(&mut tx, c, owner, server, completion, attempts).await?;
        tx.commit().await?;
        Ok(done)
    }

    /// One write transaction for the whole batch; if a row cannot be written (a
    /// userId another row took meanwhile), each is recorded in its own.
    async fn complete_many(&self, owner: &str, items: &[Completing<'_>]) -> Vec<Result<bool>> {
        if items.len() > 1 {
            let batch = async {
                let _turn = self.write.clone().lock_owned().await;
                let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
                let mut done = Vec::with_capacity(items.len());
                for i in items {
                    match complete_in(
                        &mut tx,
                        i.claimed,
                        owner,
                        i.server,
                        &i.completion,
                        i.attempts,
                    )
                    .await
                    {
                        Ok(d) => done.push(d),
                        Err(e) => {
                            // Now, while this writer still holds the write lock.
                            tx.rollback().await?;
                            return Err(e);
                        }
                    }
                }
                tx.commit().await?;
                Ok::<_, StoreError>(done)
            };
            match batch.await {
                Ok(done) => return done.into_iter().map(Ok).collect(),
                Err(e) => {
                    tracing::debug!(error = %e, rows = items.len(), "batched completion failed; recording one by one")
                }
            }
        }
        let mut done = Vec::with_capacity(items.len());
        for i in items {
            done.push(
                self.complete(i.claimed, owner, i.server, &i.completion, i.attempts)
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
        let retention_secs = f64::from(older_than_days) * 86_400.0;
        let mut total = 0;
        loop {
            let n = sqlx::query(PRUNE_SQL)
                .bind(retention_secs)
                .bind(PRUNE_BATCH)
                .execute(&self.pool)
                .await?
                .rows_affected();
            total += n;
            if n < PRUNE_BATCH as u64 {
                return Ok(total);
            }
            // Let other writers have the lock in between batches.
            tokio::task::yield_now().await;
        }
    }

    async fn listen(self: Arc<Self>, notify: Arc<Notify>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => notify.notify_one(),
            }
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
        let rows: Vec<EntryRow> = sqlx::query_as(LIST_SQL)
            .bind(json_list(states.iter().map(|s| s.to_string())))
            .bind(tenant)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| SyncEntry {
                tenant: r.tenant,
                user_id: r.user_id.into_uuid(),
                user_name: r.user_name,
                state: r.state,
                since: r.since,
                attempts: r.attempts,
                next_attempt_at: r.next_attempt_at,
                last_error: r.last_error,
            })
            .collect())
    }

    async fn rearm_dead(&self, user: Option<Uuid>, tenant: Option<&str>) -> Result<u64> {
        let n = sqlx::query(REARM_SQL)
            .bind(user.map(|u| u.hyphenated()))
            .bind(tenant)
            .execute(&self.pool)
            .await?
            .rows_affected();
        self.wake.notify_one();
        Ok(n)
    }

    async fn resync(&self, users: Option<&[Uuid]>, tenant: Option<&str>) -> Result<u64> {
        let users = users.map(|u| json_list(u.iter().map(Uuid::to_string)));
        let n = sqlx::query(RESYNC_SQL)
            .bind(users)
            .bind(tenant)
            .execute(&self.pool)
            .await?
            .rows_affected();
        self.wake.notify_one();
        Ok(n)
    }

    async fn forget_links(&self, users: &[Uuid]) -> Result<u64> {
        let n = sqlx::query(FORGET_SQL)
            .bind(json_list(users.iter().map(Uuid::to_string)))
            .execute(&self.pool)
            .await?
            .rows_affected();
        self.wake.notify_one();
        Ok(n)
    }

    async fn linked_users(&self, tenant: &str) -> Result<Vec<LinkedUser>> {
        let rows: Vec<LinkedRow> = sqlx::query_as(LINKED_USERS_SQL)
            .bind(tenant)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| LinkedUser {
                id: r.id.into_uuid(),
                user_name: r.user_name,
                active: r.active,
                resource: r.resource,
                ameyo_user_id: r.ameyo_user_id,
                groups: r.groups,
            })
            .collect())
    }

    async fn row_report(&self, user: Uuid) -> Result<Option<Value>> {
        Ok(sqlx::query_scalar(ROW_REPORT_SQL)
            .bind(user.hyphenated())
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn recent_attempts(&self, user: Uuid, limit: i64) -> Result<Vec<Value>> {
        Ok(sqlx::query_scalar(ATTEMPTS_SQL)
            .bind(user.hyphenated())
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::PathBuf;

    use serde_json::json;

    use super::*;
    use crate::store::outbox_contract::{self as contract, OutboxFixture};
    use crate::store::sqlite::{MIGRATOR, connect};

    async fn db() -> sqlx::SqlitePool {
        let pool = connect("sqlite::memory:", 1).await.unwrap();
        MIGRATOR.run(&pool).await.unwrap();
        pool
    }

    /// A database file of its own, removed (with its WAL) when dropped, for tests that
    /// need several connections at once.
    pub(crate) struct TempDb {
        path: PathBuf,
        pub(crate) pool: SqlitePool,
    }

    impl TempDb {
        pub(crate) async fn new(connections: u32) -> Self {
            let path = std::env::temp_dir().join(format!("ameyo-scim-{}.db", Uuid::new_v4()));
            let pool = connect(&format!("sqlite://{}", path.display()), connections)
                .await
                .unwrap();
            MIGRATOR.run(&pool).await.unwrap();
            Self { path, pool }
        }
    }

    impl Drop for TempDb {
        fn drop(&mut self) {
            for suffix in ["", "-wal", "-shm"] {
                let mut p = self.path.clone().into_os_string();
                p.push(suffix);
                let _ = std::fs::remove_file(p);
            }
        }
    }

    /// Rows set up as the SQLite user store writes them: a user row and, in the same
    /// transaction, its outbox row through the fragments above.
    struct Fixture {
        pool: SqlitePool,
        outbox: Arc<SqliteOutbox>,
    }

    impl Fixture {
        fn on(pool: SqlitePool) -> Self {
            Self {
                outbox: Arc::new(SqliteOutbox::new(pool.clone())),
                pool,
            }
        }

        async fn new() -> Self {
            Self::on(db().await)
        }
    }

    #[async_trait]
    impl OutboxFixture for Fixture {
        fn outbox(&self) -> Arc<dyn Outbox> {
            self.outbox.clone()
        }

        async fn add_user(&self, tenant: &str, user_name: &str, password: Option<&[u8]>) -> Uuid {
            let id = Uuid::new_v4();
            let mut tx = self.pool.begin().await.unwrap();
            sqlx::query(concat!(
                "INSERT INTO users (id, tenant_id, user_name, user_name_key, active, resource,
                    version, created, last_modified)
                 VALUES (?1, ?2, ?3, lower(?3), 1, ?4, 1, ",
                now!(),
                ", ",
                now!(),
                ")"
            ))
            .bind(id.to_string())
            .bind(tenant)
            .bind(user_name)
            .bind(json!({ "userName": user_name }).to_string())
            .execute(&mut *tx)
            .await
            .unwrap();
            insert_pending(&mut tx, id, tenant, 1, password)
                .await
                .unwrap();
            tx.commit().await.unwrap();
            id
        }

        async fn write_user(&self, user: Uuid, password: Option<&[u8]>) -> i64 {
            let mut tx = self.pool.begin().await.unwrap();
            let version: i64 = sqlx::query_scalar(
                "UPDATE users SET version = version + 1 WHERE id = ?1 RETURNING version",
            )
            .bind(user.to_string())
            .fetch_one(&mut *tx)
            .await
            .unwrap();
            let password = match password {
                Some(p) => PendingPassword::Set(p),
                None => PendingPassword::Keep,
            };
            mark_pending(&mut tx, user, version, password)
                .await
                .unwrap();
            tx.commit().await.unwrap();
            version
        }

        async fn delete_user(&self, user: Uuid) -> i64 {
            let mut tx = self.pool.begin().await.unwrap();
            let version: i64 = sqlx::query_scalar(concat!(
                "UPDATE users SET version = version + 1, deleted_at = ",
                now!(),
                " WHERE id = ?1 RETURNING version"
            ))
            .bind(user.to_string())
            .fetch_one(&mut *tx)
            .await
            .unwrap();
            mark_pending(&mut tx, user, version, PendingPassword::Erase)
                .await
                .unwrap();
            tx.commit().await.unwrap();
            version
        }

        async fn age_heartbeat(&self, owner: &str, secs: u64) {
            sqlx::query(concat!(
                "UPDATE sync_workers SET heartbeat_at = ",
                now_minus!("?2"),
                " WHERE owner = ?1"
            ))
            .bind(owner)
            .bind(secs as f64)
            .execute(&self.pool)
            .await
            .unwrap();
        }

        async fn expire_lease(&self, user: Uuid) {
            sqlx::query(concat!(
                "UPDATE sync_state SET lease_until = ",
                now_minus!("1"),
                " WHERE user_id = ?1"
            ))
            .bind(user.to_string())
            .execute(&self.pool)
            .await
            .unwrap();
        }

        async fn add_old_attempts(&self, user: Uuid, n: usize, days: u32) {
            sqlx::query(concat!(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?2)
                 INSERT INTO sync_attempts (at, tenant_id, user_id, version, worker, call,
                     outcome, duration_ms)
                 SELECT ",
                now_minus!("?3"),
                ", 'a', ?1, 1, 'old', 'update', 'ok', 5 FROM n"
            ))
            .bind(user.to_string())
            .bind(n as i64)
            .bind(f64::from(days) * 86_400.0)
            .execute(&self.pool)
            .await
            .unwrap();
        }

        async fn link_without_server(&self, user: Uuid, ameyo_user_id: &str, confirmed: bool) {
            sqlx::query(concat!(
                "UPDATE sync_state SET ameyo_user_id = CASE WHEN ?3 THEN ?2 END,
                    intended_user_id = CASE WHEN ?3 THEN NULL ELSE ?2 END,
                    create_attempted = NOT ?3, owner_key = ?4, ameyo_server = NULL,
                    updated_at = ",
                now!(),
                " WHERE user_id = ?1"
            ))
            .bind(user.to_string())
            .bind(ameyo_user_id)
            .bind(confirmed)
            .bind(ameyo_user_id.to_lowercase())
            .execute(&self.pool)
            .await
            .unwrap();
        }
    }

    /// Every body of the outbox contract, against SQLite.
    macro_rules! contract {
        ($($name:ident),* $(,)?) => {$(
            #[tokio::test]
            async fn $name() {
                contract::$name(&Fixture::new().await).await;
            }
        )*};
    }

    contract!(
        claim_takes_only_known_tenants,
        completion_is_fenced_by_the_lease,
        synced_records_the_link,
        a_newer_version_goes_round_again,
        passwords_go_once_delivered,
        retries_count_and_wait,
        removed_drops_the_tombstone,
        resync_of_a_leased_row_waits_for_its_delivery,
        reclaim_takes_back_only_dead_holders,
        lost_deliveries_end_dead_at_max_attempts,
        retire_hands_leases_back,
        an_ameyo_user_id_has_one_owner_per_server,
        adopt_server_scopes_old_links,
        prune_deletes_in_batches,
        operator_views_and_changes,
        operator_changes_wake_the_worker,
    );

    #[tokio::test]
    async fn parallel_claims_lease_each_row_once() {
        let db = TempDb::new(4).await;
        let f = Fixture::on(db.pool.clone());
        let mut want = Vec::new();
        for i in 0..200 {
            want.push(f.add_user("a", &format!("user{i}"), None).await);
        }
        let claimers = (0..4).map(|w| {
            let outbox = f.outbox.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                loop {
                    let batch = outbox
                        .claim(&format!("w{w}"), &["a".into()], Duration::from_secs(60), 7)
                        .await
                        .unwrap();
                    if batch.is_empty() {
                        return got;
                    }
                    got.extend(batch.into_iter().map(|c| c.user_id));
                }
            })
        });
        let mut got = Vec::new();
        for c in claimers.collect::<Vec<_>>() {
            got.extend(c.await.unwrap());
        }
        got.sort();
        want.sort();
        assert_eq!(got, want, "every row once, none twice");
    }

    #[tokio::test]
    async fn colliding_creates_in_parallel_have_one_owner() {
        let db = TempDb::new(4).await;
        let f = Fixture::on(db.pool.clone());
        const PAIRS: usize = 40;
        for i in 0..PAIRS {
            f.add_user("a", &format!("agent{i}@a.example"), None).await;
            f.add_user("b", &format!("agent{i}@b.example"), None).await;
        }
        let claimed = f
            .outbox
            .claim(
                "w1",
                &["a".into(), "b".into()],
                Duration::from_secs(60),
                1000,
            )
            .await
            .unwrap();
        assert_eq!(claimed.len(), 2 * PAIRS);
        let tries = claimed.into_iter().map(|c| {
            let outbox = f.outbox.clone();
            tokio::spawn(async move {
                let name = c.resource["userName"].as_str().unwrap().to_string();
                let (local, _) = name.split_once('@').unwrap();
                // Tenant b's mapping keeps the case: the same userId to Ameyo.
                let user_id = if c.tenant_id == "b" {
                    local.to_uppercase()
                } else {
                    local.to_string()
                };
                let answer = outbox
                    .claim_user_id(
                        c.user_id,
                        c.lease_token,
                        "https://ameyo.example",
                        &user_id,
                        &json!({}),
                    )
                    .await
                    .unwrap();
                (local.to_string(), c.tenant_id, answer)
            })
        });
        let mut by_user_id = std::collections::BTreeMap::<String, Vec<_>>::new();
        for t in tries.collect::<Vec<_>>() {
            let (user_id, tenant, answer) = t.await.unwrap();
            by_user_id
                .entry(user_id)
                .or_default()
                .push((tenant, answer));
        }
        assert_eq!(by_user_id.len(), PAIRS);
        for (user_id, answers) in by_user_id {
            let granted: Vec<&String> = answers
                .iter()
                .filter(|(_, a)| *a == UserIdClaim::Granted)
                .map(|(t, _)| t)
                .collect();
            assert_eq!(granted.len(), 1, "{user_id}: {answers:?}");
            let loser = answers
                .iter()
                .find(|(_, a)| *a != UserIdClaim::Granted)
                .unwrap();
            assert_eq!(
                loser.1,
                UserIdClaim::HeldByLive {
                    tenant: granted[0].clone()
                },
                "{user_id}"
            );
        }
    }

    #[tokio::test]
    async fn the_writers_wake_up_reaches_the_worker() {
        let outbox = Arc::new(SqliteOutbox::new(db().await));
        let notify = Arc::new(Notify::new());
        let shutdown = CancellationToken::new();
        let listener = tokio::spawn(outbox.clone().listen(notify.clone(), shutdown.clone()));
        let quiet = tokio::time::timeout(Duration::from_millis(100), notify.notified()).await;
        assert!(quiet.is_err(), "no wake-up without a write");
        // As the user store does after committing a write.
        outbox.wakeup().notify_one();
        tokio::time::timeout(Duration::from_secs(5), notify.notified())
            .await
            .expect("woken");
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), listener)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn only_the_ownership_index_is_an_owner_conflict() {
        let pool = db().await;
        let f = Fixture::on(pool.clone());
        let ann = f.add_user("a", "ann", None).await;
        let bob = f.add_user("a", "bob", None).await;
        let own = |user: Uuid, key: &'static str| {
            sqlx::query(
                "UPDATE sync_state SET ameyo_server = 's', owner_key = ?2 WHERE user_id = ?1",
            )
            .bind(user.to_string())
            .bind(key)
            .execute(&pool)
        };
        own(ann, "ann").await.unwrap();
        let e = own(bob, "ann").await.unwrap_err();
        assert!(is_owner_conflict(&e), "{e}");
        own(bob, "bob").await.unwrap();

        let e = sqlx::query(
            "INSERT INTO users (id, tenant_id, user_name, user_name_key, active, resource,
                version, created, last_modified)
             VALUES ('x', 'a', 'ANN', 'ann', 1, '{}', 1, 'x', 'x')",
        )
        .execute(&pool)
        .await
        .unwrap_err();
        assert!(!is_owner_conflict(&e), "{e}");
        assert!(!is_owner_conflict(&sqlx::Error::RowNotFound));
    }

    async fn add_user(conn: &mut SqliteConnection, id: Uuid) {
        sqlx::query(
            "INSERT INTO users (id, tenant_id, user_name, user_name_key, active, resource,
                version, created, last_modified)
             VALUES (?1, 'a', 'ann', 'ann', 1, '{}', 1, 'x', 'x')",
        )
        .bind(id.to_string())
        .execute(conn)
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn pending_rows_follow_the_writes() {
        let pool = db().await;
        let mut conn = pool.acquire().await.unwrap();
        let id = Uuid::new_v4();
        add_user(&mut conn, id).await;
        insert_pending(&mut conn, id, "a", 1, Some(b"sealed"))
            .await
            .unwrap();
        let row: (i64, String, Option<Vec<u8>>, Option<i64>) = sqlx::query_as(
            "SELECT desired_version, state, pending_password, password_version FROM sync_state",
        )
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        assert_eq!(
            row,
            (1, "pending".into(), Some(b"sealed".to_vec()), Some(1))
        );

        mark_pending(&mut conn, id, 2, PendingPassword::Keep)
            .await
            .unwrap();
        let row: (i64, Option<Vec<u8>>, Option<i64>) = sqlx::query_as(
            "SELECT desired_version, pending_password, password_version FROM sync_state",
        )
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        assert_eq!(row, (2, Some(b"sealed".to_vec()), Some(1)), "kept");

        mark_pending(&mut conn, id, 3, PendingPassword::Set(b"new"))
            .await
            .unwrap();
        sqlx::query("UPDATE sync_state SET state = 'dead'")
            .execute(&mut *conn)
            .await
            .unwrap();
        assert!(
            !rearm_if_dead(&mut conn, "b", id).await.unwrap(),
            "other tenant"
        );
        assert!(rearm_if_dead(&mut conn, "a", id).await.unwrap());
        mark_pending(&mut conn, id, 4, PendingPassword::Erase)
            .await
            .unwrap();
        let row: (i64, String, Option<Vec<u8>>) =
            sqlx::query_as("SELECT desired_version, state, pending_password FROM sync_state")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
        assert_eq!(row, (4, "pending".into(), None));
    }
}
