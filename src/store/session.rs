//! The shared Ameyo session of one tenant, in Postgres (sealed like passwords), with a
//! login lease so that exactly one process logs in at a time and the rest adopt it.
//! During a key rotation, replicas on the new key still adopt a session sealed under the
//! old one (kept in `sync.previous_password_keys`); the next login seals with the new.

use async_trait::async_trait;
use secrecy::SecretString;
use sqlx::PgPool;

use super::password::PasswordCipher;
use crate::ameyo::client::SessionStore;

pub struct PgSessionStore {
    pool: PgPool,
    cipher: PasswordCipher,
    tenant: String,
    owner: String,
}

impl PgSessionStore {
    pub fn new(pool: PgPool, cipher: PasswordCipher, tenant: &str, owner: &str) -> Self {
        Self {
            pool,
            cipher,
            tenant: tenant.to_string(),
            owner: owner.to_string(),
        }
    }
}

/// What binds a sealed session to its tenant, in every store.
fn aad(tenant: &str) -> Vec<u8> {
    format!("ameyo-session:{tenant}").into_bytes()
}

/// Seal a tenant's session for storing.
pub(crate) fn seal(cipher: &PasswordCipher, tenant: &str, session: &SecretString) -> Vec<u8> {
    cipher.seal(&aad(tenant), session)
}

/// A stored session row (sealed session, generation) as [`SessionStore::load`] returns
/// it. The cipher opens sessions sealed under the current key or a previous one; one
/// sealed with a key no longer configured is as good as none: log in afresh.
pub(crate) fn opened(
    cipher: &PasswordCipher,
    tenant: &str,
    row: Option<(Option<Vec<u8>>, i64)>,
) -> (Option<SecretString>, u64) {
    let Some((sealed, generation)) = row else {
        return (None, 0);
    };
    let id = sealed.and_then(|s| cipher.open(&aad(tenant), &s).ok());
    (id, generation.max(0) as u64)
}

const LOAD_SQL: &str = "SELECT sealed, generation FROM ameyo_sessions WHERE tenant_id = $1";

/// The lease is taken only if nobody published a newer session and nobody else holds
/// an unexpired lease; it lasts longer than one login call may take.
const BEGIN_SQL: &str = "
INSERT INTO ameyo_sessions (tenant_id, login_owner, login_until)
VALUES ($1, $2, now() + interval '60 seconds')
ON CONFLICT (tenant_id) DO UPDATE
SET login_owner = $2, login_until = now() + interval '60 seconds', updated_at = now()
WHERE ameyo_sessions.generation <= $3
  AND (ameyo_sessions.login_until IS NULL OR ameyo_sessions.login_until < now()
       OR ameyo_sessions.login_owner = $2)
RETURNING 1";

const PUBLISH_SQL: &str = "
UPDATE ameyo_sessions SET sealed = $3, generation = generation + 1,
    login_owner = NULL, login_until = NULL, updated_at = now()
WHERE tenant_id = $1 AND login_owner = $2
RETURNING generation";

const ABANDON_SQL: &str = "
UPDATE ameyo_sessions SET login_owner = NULL, login_until = NULL, updated_at = now()
WHERE tenant_id = $1 AND login_owner = $2";

#[async_trait]
impl SessionStore for PgSessionStore {
    async fn load(&self) -> Result<(Option<SecretString>, u64), String> {
        let row: Option<(Option<Vec<u8>>, i64)> = sqlx::query_as(LOAD_SQL)
            .bind(&self.tenant)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| e.to_string())?;
        Ok(opened(&self.cipher, &self.tenant, row))
    }

    async fn begin_login(&self, seen: u64) -> Result<bool, String> {
        let row = sqlx::query(BEGIN_SQL)
            .bind(&self.tenant)
            .bind(&self.owner)
            .bind(seen as i64)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| e.to_string())?;
        Ok(row.is_some())
    }

    async fn publish(&self, session: &SecretString) -> Result<u64, String> {
        let generation: Option<i64> = sqlx::query_scalar(PUBLISH_SQL)
            .bind(&self.tenant)
            .bind(&self.owner)
            .bind(seal(&self.cipher, &self.tenant, session))
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| e.to_string())?;
        generation
            .map(|g| g as u64)
            .ok_or_else(|| "the login lease expired before the session was published".into())
    }

    async fn abandon_login(&self) -> Result<(), String> {
        sqlx::query(ABANDON_SQL)
            .bind(&self.tenant)
            .bind(&self.owner)
            .execute(&self.pool)
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }
}
