//! The outbox worker: claims due users (SKIP LOCKED, with a lease), pushes each one's
//! current state to Ameyo, and records the outcome fenced by the lease token, or
//! schedules a retry, or dead-letters the user with Ameyo's reason.

pub mod retry;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use rand::distr::Alphanumeric;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::ameyo::client::{AmeyoClient, CallError, CallRecord, SessionStore};
use crate::ameyo::mapping::{self, AmeyoUser, Mapper};
use crate::config::{OnDeactivate, OnDelete, Settings, SyncSettings, UpdatePathId};
use crate::store::password::PasswordCipher;
use crate::store::postgres::SYNC_CHANNEL;
use crate::store::session::PgSessionStore;

/// One tenant's Ameyo and mapping.
pub struct TenantLink {
    pub client: Arc<AmeyoClient>,
    pub mapper: Mapper,
}

/// What a worker needs; cheap to share between its tasks.
pub struct Worker {
    pool: PgPool,
    cipher: PasswordCipher,
    tenants: HashMap<String, Arc<TenantLink>>,
    settings: SyncSettings,
    owner: String,
}

/// A claimed user with everything needed to deliver it.
#[derive(Debug, sqlx::FromRow)]
struct Claimed {
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
    version: i64,
    active: bool,
    deleted: bool,
}

/// The Ameyo side of a user as the worker leaves it.
#[derive(Debug, Clone, Default)]
struct Link {
    ameyo_user_id: Option<String>,
    cc_user_id: Option<i64>,
    create_attempted: bool,
    /// The userId an unconfirmed create was for.
    intended_user_id: Option<String>,
    /// The IdP's pending password went out with a call that succeeded.
    password_delivered: bool,
    locked: bool,
    last_pushed: Option<Value>,
}

#[derive(Debug)]
enum Outcome {
    /// Ameyo has this version.
    Synced,
    /// The tombstone was delivered: the row can go.
    Removed,
    /// Try again later.
    Retry(CallError),
    /// Stop until a new write or an operator re-arms it.
    Dead(String),
    /// Another worker took over the lease: record nothing.
    LostLease,
}

const CLAIM_SQL: &str = "
WITH due AS (
    SELECT user_id FROM sync_state
    WHERE (state = 'pending' AND next_attempt_at <= now())
       OR (state = 'leased' AND lease_until < now())
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
          (u.deleted_at IS NOT NULL) AS deleted";

/// Another SCIM user of the tenant that has (or may have) this Ameyo userId: `true`
/// if it is a tombstone on its way out.
const OWNER_SQL: &str = "
SELECT u.deleted_at IS NOT NULL FROM sync_state s JOIN users u ON u.id = s.user_id
WHERE s.tenant_id = $1 AND s.user_id <> $3
  AND (s.ameyo_user_id = $2 OR s.intended_user_id = $2)
ORDER BY 1 DESC
LIMIT 1";

const MARK_CREATE_SQL: &str = "
UPDATE sync_state SET create_attempted = true, intended_user_id = $3, updated_at = now()
WHERE user_id = $1 AND lease_token = $2";

/// The attempt-log insert every outcome statement starts with ($1 user, $2 lease
/// token, $3 tenant, $4 version, $5..$9 the calls, $10 the worker), as a macro so the
/// SQL stays static.
macro_rules! log_attempts {
    () => {
        "WITH a AS (
    INSERT INTO sync_attempts (tenant_id, user_id, version, worker, call, outcome, http_status, duration_ms, error)
    SELECT $3, $1, $4, $10, c.call, c.outcome, c.status, c.ms, c.error
    FROM UNNEST($5::text[], $6::text[], $7::int[], $8::int[], $9::text[])
         AS c(call, outcome, status, ms, error)), "
    };
}

const SYNCED_SQL: &str = concat!(
    log_attempts!(),
    "u AS (
    UPDATE sync_state SET
        synced_version = GREATEST(synced_version, $4),
        state = CASE WHEN desired_version > $4 OR resync_requested THEN 'pending' ELSE 'done' END,
        pending_since = CASE WHEN desired_version > $4 OR resync_requested THEN pending_since ELSE NULL END,
        attempts = CASE WHEN desired_version > $4 THEN attempts ELSE 0 END,
        next_attempt_at = now(), last_error = NULL,
        lease_owner = NULL, lease_until = NULL, lease_token = NULL,
        ameyo_user_id = $11, cc_user_id = $12, create_attempted = $13, ameyo_locked = $14,
        last_pushed = CASE WHEN resync_requested THEN NULL ELSE $15 END,
        intended_user_id = $16,
        pending_password = CASE WHEN $17 AND password_version <= $4 THEN NULL ELSE pending_password END,
        password_version = CASE WHEN $17 AND password_version <= $4 THEN NULL ELSE password_version END,
        updated_at = now()
    WHERE user_id = $1 AND lease_token = $2
    RETURNING 1)
SELECT count(*) FROM u"
);

const RETRY_SQL: &str = concat!(
    log_attempts!(),
    "u AS (
    UPDATE sync_state SET
        -- A newer version written during this delivery deserves its own attempts:
        -- only the version that failed is given up on.
        state = CASE WHEN $17 AND desired_version <= $4 THEN 'dead' ELSE 'pending' END,
        pending_since = CASE WHEN $17 AND desired_version <= $4 THEN NULL ELSE pending_since END,
        attempts = CASE WHEN $17 AND desired_version > $4 THEN 0 ELSE attempts + 1 END,
        next_attempt_at = CASE WHEN $17 AND desired_version > $4 THEN now()
                               ELSE now() + make_interval(secs => $18) END,
        last_error = $19,
        lease_owner = NULL, lease_until = NULL, lease_token = NULL,
        ameyo_user_id = $11, cc_user_id = $12, create_attempted = $13, ameyo_locked = $14,
        last_pushed = CASE WHEN resync_requested THEN NULL ELSE $15 END,
        intended_user_id = $16,
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

const RELEASE_SQL: &str = "
UPDATE sync_state SET state = 'pending', lease_owner = NULL, lease_until = NULL,
    lease_token = NULL, updated_at = now()
WHERE lease_owner = $1 AND state = 'leased'";

const PRUNE_SQL: &str = "
DELETE FROM sync_attempts WHERE id IN (
    SELECT id FROM sync_attempts WHERE at < now() - make_interval(days => $1) LIMIT 10000)";

fn random_secret() -> SecretString {
    let s: String = rand::rng()
        .sample_iter(Alphanumeric)
        .take(24)
        .map(char::from)
        .collect();
    SecretString::from(s)
}

fn this_owner() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    format!(
        "{host}-{}-{}",
        std::process::id(),
        &Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Keep a known secret out of text that goes to logs and the database.
fn scrub(text: String, secrets: &[&str]) -> String {
    secrets
        .iter()
        .filter(|s| s.len() >= 4)
        .fold(text, |t, s| t.replace(s, "[redacted]"))
}

impl Worker {
    /// Build clients and mappers for every tenant.
    pub fn new(settings: &Settings, pool: PgPool, cipher: PasswordCipher) -> Result<Self, String> {
        let owner = this_owner();
        let mut tenants = HashMap::new();
        for t in &settings.tenants {
            crate::telemetry::metrics::register_tenant(&t.id);
            let shared: Arc<dyn SessionStore> = Arc::new(PgSessionStore::new(
                pool.clone(),
                cipher.clone(),
                &t.id,
                &owner,
            ));
            let client = AmeyoClient::new(&t.id, &t.ameyo, Some(shared))
                .map_err(|e| format!("tenant {}: {e}", t.id))?;
            let mapper = Mapper::new(&t.ameyo.mapping, t.ameyo.contact_center_id)
                .map_err(|e| format!("tenant {}: {e}", t.id))?;
            tenants.insert(t.id.clone(), Arc::new(TenantLink { client, mapper }));
        }
        Ok(Self {
            pool,
            cipher,
            tenants,
            settings: settings.sync.clone(),
            owner,
        })
    }

    fn lease(&self) -> Duration {
        Duration::from_secs(self.settings.lease_secs)
    }

    async fn claim(&self, limit: usize) -> Result<Vec<Claimed>, sqlx::Error> {
        sqlx::query_as::<_, Claimed>(CLAIM_SQL)
            .bind(&self.owner)
            .bind(self.settings.lease_secs as f64)
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await
    }

    /// Claim and deliver until nothing is due. Returns how many deliveries ran.
    pub async fn run_until_idle(self: &Arc<Self>) -> Result<usize, sqlx::Error> {
        let mut total = 0;
        loop {
            let batch = self.claim(self.settings.concurrency).await?;
            if batch.is_empty() {
                return Ok(total);
            }
            total += batch.len();
            let mut set = JoinSet::new();
            for c in batch {
                set.spawn(self.clone().process(c));
            }
            while set.join_next().await.is_some() {}
        }
    }

    /// Run until `shutdown`, then let in-flight deliveries finish within `grace`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken, grace: Duration) {
        let notify = Arc::new(Notify::new());
        let listener = tokio::spawn(listen(self.pool.clone(), notify.clone(), shutdown.clone()));
        let poll = Duration::from_secs(self.settings.poll_interval_secs);
        let mut inflight = JoinSet::new();
        let mut last_prune = Instant::now() - Duration::from_secs(3600);
        tracing::info!(owner = %self.owner, concurrency = self.settings.concurrency, "sync worker started");
        loop {
            while inflight.try_join_next().is_some() {}
            let free = self.settings.concurrency.saturating_sub(inflight.len());
            let mut claimed = 0;
            if free > 0 {
                match self.claim(free).await {
                    Ok(batch) => {
                        claimed = batch.len();
                        for c in batch {
                            inflight.spawn(self.clone().process(c));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot claim work; retrying");
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        }
                    }
                }
            }
            if last_prune.elapsed() > Duration::from_secs(3600) {
                last_prune = Instant::now();
                self.prune().await;
            }
            if claimed > 0 && claimed == free {
                // There may be more due: go round without waiting.
                if shutdown.is_cancelled() {
                    break;
                }
                if inflight.len() < self.settings.concurrency {
                    continue;
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = notify.notified() => {}
                _ = tokio::time::sleep(poll) => {}
                Some(_) = inflight.join_next(), if !inflight.is_empty() => {}
            }
        }
        tracing::info!(
            in_flight = inflight.len(),
            "sync worker stopping: finishing in-flight deliveries"
        );
        let drained = tokio::time::timeout(grace, async {
            while inflight.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("shutdown grace period over: abandoning in-flight deliveries");
            inflight.abort_all();
            while inflight.join_next().await.is_some() {}
        }
        // Hand back anything still leased by this process (creates already sent are
        // marked, so whoever takes over looks them up first).
        if let Err(e) = sqlx::query(RELEASE_SQL)
            .bind(&self.owner)
            .execute(&self.pool)
            .await
        {
            tracing::warn!(error = %e, "cannot release leases; they expire on their own");
        }
        listener.abort();
        tracing::info!("sync worker stopped");
    }

    async fn prune(&self) {
        match sqlx::query(PRUNE_SQL)
            .bind(self.settings.attempt_retention_days as i32)
            .execute(&self.pool)
            .await
        {
            Ok(r) if r.rows_affected() > 0 => {
                tracing::info!(rows = r.rows_affected(), "pruned old delivery attempts")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot prune delivery attempts"),
        }
    }

    /// Deliver one claimed user and record the outcome.
    async fn process(self: Arc<Self>, c: Claimed) {
        let span = tracing::info_span!("deliver", tenant = %c.tenant_id, user_id = %c.user_id, version = c.version);
        async move {
            let started = Instant::now();
            let mut link = Link {
                ameyo_user_id: c.ameyo_user_id.clone(),
                cc_user_id: c.cc_user_id,
                create_attempted: c.create_attempted,
                intended_user_id: c.intended_user_id.clone(),
                password_delivered: false,
                locked: c.ameyo_locked,
                last_pushed: c.last_pushed.clone(),
            };
            let mut log = Vec::new();
            let mut secrets: Vec<String> = Vec::new();
            // Cut a delivery off well before its lease ends, so no one else starts on
            // the same user while this one still talks to Ameyo.
            let budget = self.lease().saturating_sub(Duration::from_secs(5)).max(Duration::from_secs(5));
            let outcome = match tokio::time::timeout(budget, self.deliver(&c, &mut link, &mut log, &mut secrets)).await {
                Ok(o) => o,
                Err(_) => Outcome::Retry(CallError::Transient {
                    reason: "the delivery took longer than its lease allows".into(),
                    retry_after: None,
                    status: None,
                    maybe_applied: true,
                }),
            };
            let secret_refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
            match self.record(&c, &link, &outcome, &log, &secret_refs).await {
                Ok(true) => {}
                Ok(false) => tracing::warn!("lease lost before completion: another worker owns this user now"),
                Err(e) => tracing::warn!(error = %e, "cannot record the delivery outcome; the lease will expire and it will run again"),
            }
            let ms = started.elapsed().as_millis() as u64;
            let action = action_of(&log);
            let label = match &outcome {
                Outcome::Synced | Outcome::Removed => "ok",
                Outcome::Retry(_) => "retry",
                Outcome::Dead(_) => "dead",
                Outcome::LostLease => "lost_lease",
            };
            crate::telemetry::metrics::delivery(&c.tenant_id, action, label);
            match &outcome {
                Outcome::Synced => tracing::info!(calls = log.len(), ms, "delivered"),
                Outcome::Removed => tracing::info!(calls = log.len(), ms, "removed from Ameyo"),
                Outcome::Retry(e) => tracing::warn!(calls = log.len(), ms, attempt = c.attempts + 1, error = %scrub(e.to_string(), &secret_refs), "delivery failed; will retry"),
                Outcome::Dead(r) => tracing::error!(calls = log.len(), ms, reason = %scrub(r.clone(), &secret_refs), "delivery failed for good: dead-lettered"),
                Outcome::LostLease => tracing::warn!("lease lost during delivery"),
            }
        }
        .instrument(span)
        .await
    }

    async fn deliver(
        &self,
        c: &Claimed,
        link: &mut Link,
        log: &mut Vec<CallRecord>,
        secrets: &mut Vec<String>,
    ) -> Outcome {
        let Some(tenant) = self.tenants.get(&c.tenant_id).cloned() else {
            return Outcome::Dead(format!("tenant '{}' is not configured", c.tenant_id));
        };
        let password = match &c.pending_password {
            Some(sealed) => match self.cipher.open(c.user_id.as_bytes(), sealed) {
                Ok(p) => {
                    secrets.push(p.expose_secret().to_string());
                    Some(p)
                }
                Err(e) => return Outcome::Dead(e.to_string()),
            },
            None => None,
        };
        let resource = c.resource.as_object().cloned().unwrap_or_default();
        let result = if c.deleted {
            self.deliver_delete(&tenant, &resource, link, log, secrets)
                .await
        } else if !c.active {
            self.deliver_inactive(&tenant, &resource, link, log, secrets)
                .await
        } else {
            self.deliver_active(c, &tenant, &resource, password, link, log, secrets)
                .await
        };
        match result {
            Ok(o) => o,
            Err(CallError::Permanent { reason, .. }) => Outcome::Dead(reason),
            Err(e) => {
                let max = self.settings.max_attempts;
                if max > 0 && c.attempts as u32 + 1 >= max {
                    Outcome::Dead(format!("gave up after {max} attempts: {e}"))
                } else {
                    Outcome::Retry(e)
                }
            }
        }
    }

    /// The Ameyo userId of this user if Ameyo has it: the link, or, when a create may
    /// have happened without us hearing back, a lookup in Ameyo's list.
    async fn known_user_id(
        &self,
        tenant: &TenantLink,
        resource: &Map<String, Value>,
        link: &mut Link,
        log: &mut Vec<CallRecord>,
    ) -> Result<Option<String>, CallError> {
        if let Some(id) = &link.ameyo_user_id {
            return Ok(Some(id.clone()));
        }
        if !link.create_attempted {
            return Ok(None);
        }
        // The id the unconfirmed create was for, even if the user was renamed since.
        let expected = match (&link.intended_user_id, tenant.mapper.user_id(resource)) {
            (Some(id), _) => id.clone(),
            (None, Ok(id)) => id,
            (None, Err(_)) => return Ok(None),
        };
        let cc_id = tenant.mapper.map(resource, &expected).contact_center_id;
        let found = tenant
            .client
            .list_users(cc_id, log)
            .await?
            .into_iter()
            .find(|u| u.user_id == expected);
        match found {
            Some(u) => {
                tracing::info!(ameyo_user_id = %u.user_id, "found the user in Ameyo after an unconfirmed create");
                link.ameyo_user_id = Some(u.user_id);
                link.cc_user_id = u.cc_user_id;
                Ok(link.ameyo_user_id.clone())
            }
            None => {
                // The earlier create never landed.
                link.create_attempted = false;
                link.intended_user_id = None;
                Ok(None)
            }
        }
    }

    fn path_id(tenant: &TenantLink, link: &Link, user_id: &str) -> String {
        match (tenant.client.update_path_id(), link.cc_user_id) {
            (UpdatePathId::CcUserId, Some(cc)) => cc.to_string(),
            _ => user_id.to_string(),
        }
    }

    async fn deliver_delete(
        &self,
        tenant: &TenantLink,
        resource: &Map<String, Value>,
        link: &mut Link,
        log: &mut Vec<CallRecord>,
        secrets: &mut Vec<String>,
    ) -> Result<Outcome, CallError> {
        let Some(user_id) = self.known_user_id(tenant, resource, link, log).await? else {
            return Ok(Outcome::Removed);
        };
        match tenant.mapper.on_delete {
            OnDelete::Delete => match tenant.client.delete_user(&user_id, log).await {
                Ok(()) | Err(CallError::NotFound { .. }) => Ok(Outcome::Removed),
                Err(e) => Err(e),
            },
            OnDelete::Lock => {
                if !link.locked {
                    self.lock(tenant, resource, &user_id, link, log, secrets)
                        .await?;
                }
                Ok(Outcome::Removed)
            }
        }
    }

    async fn deliver_inactive(
        &self,
        tenant: &TenantLink,
        resource: &Map<String, Value>,
        link: &mut Link,
        log: &mut Vec<CallRecord>,
        secrets: &mut Vec<String>,
    ) -> Result<Outcome, CallError> {
        // A user that never reached Ameyo and is inactive stays out of it.
        let Some(user_id) = self.known_user_id(tenant, resource, link, log).await? else {
            return Ok(Outcome::Synced);
        };
        match tenant.mapper.on_deactivate {
            OnDeactivate::Lock => {
                let mut locked = tenant.mapper.map(resource, &user_id);
                locked.mapping_user_id = None;
                if !link.locked {
                    self.lock(tenant, resource, &user_id, link, log, secrets)
                        .await?;
                } else if link.last_pushed.as_ref() != Some(&snapshot(&locked)) {
                    // Still locked, other fields changed: push them, mapping kept clear.
                    let path = Self::path_id(tenant, link, &user_id);
                    match tenant
                        .client
                        .update_user(&path, &mapping::update_body(&locked, None), log)
                        .await
                    {
                        Ok(()) => link.last_pushed = Some(snapshot(&locked)),
                        Err(CallError::NotFound { .. }) => forget(link),
                        Err(e) => return Err(e),
                    }
                }
                Ok(Outcome::Synced)
            }
            OnDeactivate::Delete => {
                match tenant.client.delete_user(&user_id, log).await {
                    Ok(()) | Err(CallError::NotFound { .. }) => forget(link),
                    Err(e) => return Err(e),
                }
                Ok(Outcome::Synced)
            }
        }
    }

    /// End the user's sessions, rotate the password to an undisclosed one, clear the
    /// SSO mapping.
    async fn lock(
        &self,
        tenant: &TenantLink,
        resource: &Map<String, Value>,
        user_id: &str,
        link: &mut Link,
        log: &mut Vec<CallRecord>,
        secrets: &mut Vec<String>,
    ) -> Result<(), CallError> {
        match tenant.client.end_sessions(user_id, log).await {
            Ok(()) | Err(CallError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        let mut locked = tenant.mapper.map(resource, user_id);
        locked.mapping_user_id = None;
        let secret = random_secret();
        secrets.push(secret.expose_secret().to_string());
        let path = Self::path_id(tenant, link, user_id);
        match tenant
            .client
            .update_user(
                &path,
                &mapping::update_body(&locked, Some(secret.expose_secret())),
                log,
            )
            .await
        {
            Ok(()) => {
                link.locked = true;
                link.last_pushed = Some(snapshot(&locked));
                Ok(())
            }
            Err(CallError::NotFound { .. }) => {
                forget(link);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn deliver_active(
        &self,
        c: &Claimed,
        tenant: &TenantLink,
        resource: &Map<String, Value>,
        password: Option<SecretString>,
        link: &mut Link,
        log: &mut Vec<CallRecord>,
        secrets: &mut Vec<String>,
    ) -> Result<Outcome, CallError> {
        let mut user_id = self.known_user_id(tenant, resource, link, log).await?;
        if user_id.is_none() {
            let id = match tenant.mapper.user_id(resource) {
                Ok(id) => id,
                Err(e) => return Ok(Outcome::Dead(e.0)),
            };
            let mapped = tenant.mapper.map(resource, &id);
            // Another SCIM user with the same Ameyo userId: a deleted one (re-created
            // under the same userName) must leave Ameyo first, or its delete would remove
            // this one; a live one means the userId mapping collides.
            let owner: Option<bool> = sqlx::query_scalar(OWNER_SQL)
                .bind(&c.tenant_id)
                .bind(&id)
                .bind(c.user_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| CallError::transient(format!("database: {e}")))?;
            match owner {
                Some(true) => {
                    return Err(CallError::Transient {
                        reason: "waiting for a deleted user with the same Ameyo userId to be removed first".into(),
                        retry_after: None,
                        status: None,
                        maybe_applied: false,
                    });
                }
                Some(false) => {
                    return Ok(Outcome::Dead(format!(
                        "the Ameyo userId '{id}' already belongs to another user of this tenant; \
                         change user_id_attribute or its transforms so userIds are unique"
                    )));
                }
                None => {}
            }
            // Record the intent before sending: if we never hear back (timeout, crash),
            // the next attempt looks the user up instead of creating it twice.
            let marked = sqlx::query(MARK_CREATE_SQL)
                .bind(c.user_id)
                .bind(c.lease_token)
                .bind(&id)
                .execute(&self.pool)
                .await
                .map_err(|e| CallError::Transient {
                    reason: format!("database: {e}"),
                    retry_after: None,
                    status: None,
                    maybe_applied: false,
                })?;
            if marked.rows_affected() == 0 {
                return Ok(Outcome::LostLease);
            }
            link.create_attempted = true;
            link.intended_user_id = Some(id.clone());
            let user_data = password.clone().unwrap_or_else(random_secret);
            secrets.push(user_data.expose_secret().to_string());
            match tenant
                .client
                .create_user(
                    &mapping::create_body(&mapped, user_data.expose_secret()),
                    log,
                )
                .await
            {
                Ok(cc_user_id) => {
                    link.ameyo_user_id = Some(id);
                    link.cc_user_id = cc_user_id;
                    link.intended_user_id = None;
                    link.locked = false;
                    link.last_pushed = Some(snapshot(&mapped));
                    link.password_delivered = password.is_some();
                    return Ok(Outcome::Synced);
                }
                Err(CallError::AlreadyExists { .. }) => {
                    // Ameyo has this userId already (from an earlier attempt, or made
                    // by hand): link it and bring it up to date.
                    user_id = self.known_user_id(tenant, resource, link, log).await?;
                    if user_id.is_none() {
                        return Err(CallError::transient(
                            "Ameyo says the userId exists but does not list it",
                        ));
                    }
                    link.last_pushed = None;
                }
                Err(e) => {
                    // A create that surely did not reach Ameyo needs no lookup next time.
                    if matches!(
                        e,
                        CallError::Transient {
                            maybe_applied: false,
                            ..
                        } | CallError::Permanent { .. }
                    ) {
                        link.create_attempted = false;
                        link.intended_user_id = None;
                    }
                    return Err(e);
                }
            }
        }
        let Some(user_id) = user_id else {
            return Err(CallError::transient("no Ameyo user"));
        };
        let mapped = tenant.mapper.map(resource, &user_id);
        let unchanged = link.last_pushed.as_ref() == Some(&snapshot(&mapped));
        if unchanged && password.is_none() && !link.locked {
            return Ok(Outcome::Synced);
        }
        // Reactivation (unlock) rotates the password away from the undisclosed one we
        // set when locking, unless the IdP sent a real one.
        let user_data = match (&password, link.locked) {
            (Some(p), _) => Some(p.clone()),
            (None, true) => Some(random_secret()),
            (None, false) => None,
        };
        if let Some(p) = &user_data {
            secrets.push(p.expose_secret().to_string());
        }
        let path = Self::path_id(tenant, link, &user_id);
        let body = mapping::update_body(&mapped, user_data.as_ref().map(|p| p.expose_secret()));
        match tenant.client.update_user(&path, &body, log).await {
            Ok(()) => {
                link.locked = false;
                link.last_pushed = Some(snapshot(&mapped));
                link.password_delivered = password.is_some();
                Ok(Outcome::Synced)
            }
            Err(CallError::NotFound { reason, status }) => {
                // The Ameyo user is gone (deleted by hand): create it again next time.
                forget(link);
                Err(CallError::Transient {
                    reason: format!("{reason}; it will be created again"),
                    retry_after: Some(Duration::ZERO),
                    status,
                    maybe_applied: false,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Write the outcome, fenced by the lease token. `Ok(false)`: the lease was lost.
    async fn record(
        &self,
        c: &Claimed,
        link: &Link,
        outcome: &Outcome,
        log: &[CallRecord],
        secrets: &[&str],
    ) -> Result<bool, sqlx::Error> {
        if matches!(outcome, Outcome::LostLease) {
            return Ok(false);
        }
        let calls: Vec<String> = log.iter().map(|r| r.call.to_string()).collect();
        let outcomes: Vec<String> = log
            .iter()
            .map(|r| {
                if r.error.is_none() {
                    "ok".to_string()
                } else {
                    "error".to_string()
                }
            })
            .collect();
        let statuses: Vec<Option<i32>> = log.iter().map(|r| r.status.map(i32::from)).collect();
        let ms: Vec<i32> = log
            .iter()
            .map(|r| r.duration.as_millis().min(i32::MAX as u128) as i32)
            .collect();
        let errors: Vec<Option<String>> = log
            .iter()
            .map(|r| r.error.clone().map(|e| scrub(e, secrets)))
            .collect();
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
                .bind(&self.owner)
        };
        let n = match outcome {
            Outcome::Removed => base(REMOVED_SQL).fetch_one(&self.pool).await?,
            Outcome::Synced => {
                base(SYNCED_SQL)
                    .bind(&link.ameyo_user_id)
                    .bind(link.cc_user_id)
                    .bind(link.create_attempted)
                    .bind(link.locked)
                    .bind(&link.last_pushed)
                    .bind(&link.intended_user_id)
                    .bind(link.password_delivered)
                    .fetch_one(&self.pool)
                    .await?
            }
            Outcome::Retry(_) | Outcome::Dead(_) => {
                let (dead, delay, reason) = match outcome {
                    Outcome::Dead(r) => (true, Duration::ZERO, r.clone()),
                    Outcome::Retry(e) => {
                        let after = match e {
                            CallError::Transient { retry_after, .. } => *retry_after,
                            _ => None,
                        };
                        let d = retry::delay(
                            c.attempts.max(0) as u32,
                            Duration::from_millis(self.settings.retry_base_ms),
                            Duration::from_secs(self.settings.retry_cap_secs),
                            after,
                        );
                        (false, d, e.to_string())
                    }
                    _ => unreachable!("matched above"),
                };
                base(RETRY_SQL)
                    .bind(&link.ameyo_user_id)
                    .bind(link.cc_user_id)
                    .bind(link.create_attempted)
                    .bind(link.locked)
                    .bind(&link.last_pushed)
                    .bind(&link.intended_user_id)
                    .bind(dead)
                    .bind(delay.as_secs_f64())
                    .bind(scrub(reason, secrets))
                    .fetch_one(&self.pool)
                    .await?
            }
            Outcome::LostLease => 0,
        };
        Ok(n == 1)
    }
}

/// What a delivery did in Ameyo, for metrics: the most significant call it made.
fn action_of(log: &[CallRecord]) -> &'static str {
    let made = |c: &str| log.iter().any(|r| r.call == c);
    if made("delete") {
        "delete"
    } else if made("create") {
        "create"
    } else if made("end_sessions") {
        "lock"
    } else if made("update") {
        "update"
    } else if made("list") {
        "link"
    } else {
        "none"
    }
}

/// Ameyo no longer has the user: the next delivery creates it again.
fn forget(link: &mut Link) {
    *link = Link::default();
}

fn snapshot(u: &AmeyoUser) -> Value {
    serde_json::to_value(u).unwrap_or(Value::Null)
}

/// Wake the worker when a commit makes work due; reconnect when the connection drops.
async fn listen(pool: PgPool, notify: Arc<Notify>, shutdown: CancellationToken) {
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "cannot LISTEN; polling only for now");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
                }
            }
        };
        if listener.listen(SYNC_CHANNEL).await.is_err() {
            tokio::time::sleep(Duration::from_secs(5)).await;
            continue;
        }
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                n = listener.recv() => match n {
                    Ok(_) => notify.notify_one(),
                    Err(_) => break,
                },
            }
        }
    }
}
