//! The shared Ameyo session of one tenant in the SQLite file, with the same login lease
//! as PostgreSQL's ([`crate::store::session::PgSessionStore`]): one logs in at a time,
//! the rest adopt what it publishes. One process owns the file, but its tenants' clients
//! and the admin CLI still share a session through it.

use async_trait::async_trait;
use secrecy::SecretString;
use sqlx::SqlitePool;

use super::{now, now_plus};
use crate::ameyo::client::SessionStore;
use crate::store::password::PasswordCipher;

pub struct SqliteSessionStore {
    pool: SqlitePool,
    cipher: PasswordCipher,
    tenant: String,
    owner: String,
}

impl SqliteSessionStore {
    pub fn new(pool: SqlitePool, cipher: PasswordCipher, tenant: &str, owner: &str) -> Self {
        Self {
            pool,
            cipher,
            tenant: tenant.to_string(),
            owner: owner.to_string(),
        }
    }
}

const LOAD_SQL: &str = "SELECT sealed, generation FROM ameyo_sessions WHERE tenant_id = ?1";

/// The lease is taken only if nobody published a newer session and nobody else holds
/// an unexpired lease; it lasts longer than one login call may take.
const BEGIN_SQL: &str = concat!(
    "INSERT INTO ameyo_sessions (tenant_id, login_owner, login_until, updated_at)
VALUES (?1, ?2, ",
    now_plus!("60"),
    ", ",
    now!(),
    ")
ON CONFLICT (tenant_id) DO UPDATE
SET login_owner = ?2, login_until = excluded.login_until, updated_at = excluded.updated_at
WHERE ameyo_sessions.generation <= ?3
  AND (ameyo_sessions.login_until IS NULL OR ameyo_sessions.login_until < ",
    now!(),
    "
       OR ameyo_sessions.login_owner = ?2)
RETURNING 1"
);

const PUBLISH_SQL: &str = concat!(
    "UPDATE ameyo_sessions SET sealed = ?3, generation = generation + 1,
    login_owner = NULL, login_until = NULL, updated_at = ",
    now!(),
    "
WHERE tenant_id = ?1 AND login_owner = ?2
RETURNING generation"
);

const ABANDON_SQL: &str = concat!(
    "UPDATE ameyo_sessions SET login_owner = NULL, login_until = NULL, updated_at = ",
    now!(),
    "
WHERE tenant_id = ?1 AND login_owner = ?2"
);

#[async_trait]
impl SessionStore for SqliteSessionStore {
    async fn load(&self) -> Result<(Option<SecretString>, u64), String> {
        let row: Option<(Option<Vec<u8>>, i64)> = sqlx::query_as(LOAD_SQL)
            .bind(&self.tenant)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| e.to_string())?;
        Ok(crate::store::session::opened(
            &self.cipher,
            &self.tenant,
            row,
        ))
    }

    async fn begin_login(&self, seen: u64) -> Result<bool, String> {
        let row = sqlx::query(BEGIN_SQL)
            .bind(&self.tenant)
            .bind(&self.owner)
            .bind(i64::try_from(seen).unwrap_or(i64::MAX))
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| e.to_string())?;
        Ok(row.is_some())
    }

    async fn publish(&self, session: &SecretString) -> Result<u64, String> {
        let generation: Option<i64> = sqlx::query_scalar(PUBLISH_SQL)
            .bind(&self.tenant)
            .bind(&self.owner)
            .bind(crate::store::session::seal(
                &self.cipher,
                &self.tenant,
                session,
            ))
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| e.to_string())?;
        generation
            .map(|g| g.max(0) as u64)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::outbox_contract;
    use crate::store::sqlite::{MIGRATOR, connect};

    const KEY: [u8; 32] = [5u8; 32];

    async fn db() -> SqlitePool {
        let pool = connect("sqlite::memory:", 1).await.unwrap();
        MIGRATOR.run(&pool).await.unwrap();
        pool
    }

    fn store(pool: &SqlitePool, tenant: &str, owner: &str) -> SqliteSessionStore {
        SqliteSessionStore::new(pool.clone(), PasswordCipher::new(&KEY), tenant, owner)
    }

    #[tokio::test]
    async fn one_login_at_a_time() {
        let pool = db().await;
        outbox_contract::one_login_at_a_time(
            &store(&pool, "a", "p1"),
            &store(&pool, "a", "p2"),
            &store(&pool, "b", "p1"),
        )
        .await;
    }

    #[tokio::test]
    async fn a_crashed_login_is_taken_over_when_its_lease_ends() {
        let pool = db().await;
        let (p1, p2) = (store(&pool, "a", "p1"), store(&pool, "a", "p2"));
        assert!(p1.begin_login(0).await.unwrap());
        assert!(!p2.begin_login(0).await.unwrap());
        let until: String =
            sqlx::query_scalar("SELECT login_until FROM ameyo_sessions WHERE tenant_id = 'a'")
                .fetch_one(&pool)
                .await
                .unwrap();
        let until = chrono::DateTime::parse_from_rfc3339(&until).unwrap();
        let ahead = until.with_timezone(&chrono::Utc) - chrono::Utc::now();
        assert!(ahead > chrono::Duration::seconds(55), "{ahead}");
        // p1 died mid-login: once its lease has run out, p2 logs in.
        sqlx::query("UPDATE ameyo_sessions SET login_until = '2000-01-01T00:00:00.000Z'")
            .execute(&pool)
            .await
            .unwrap();
        assert!(p2.begin_login(0).await.unwrap());
        assert_eq!(p2.publish(&SecretString::from("s")).await.unwrap(), 1);
        assert!(
            p1.publish(&SecretString::from("late")).await.is_err(),
            "the dead holder's late publish is refused"
        );
        // Sealed for this tenant: a session moved to another tenant does not open.
        sqlx::query(
            "INSERT INTO ameyo_sessions (tenant_id, sealed, generation, updated_at)
             SELECT 'b', sealed, 1, updated_at FROM ameyo_sessions WHERE tenant_id = 'a'",
        )
        .execute(&pool)
        .await
        .unwrap();
        let (moved, generation) = store(&pool, "b", "p1").load().await.unwrap();
        assert!(moved.is_none());
        assert_eq!(generation, 1);
    }
}
