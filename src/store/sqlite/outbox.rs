//! The SQLite outbox: every statement on `sync_state`, `sync_attempts` and
//! `sync_workers` of the embedded store. The user writes call [`insert_pending`],
//! [`mark_pending`] and [`rearm_if_dead`] inside their own transaction, so a user row and
//! its outbox row always change together, as in PostgreSQL.

use sqlx::SqliteConnection;
use uuid::Uuid;

use super::now;
use crate::store::Result;

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

/// Mark a user's outbox row pending at `version`. A row a worker holds stays leased:
/// the worker sees the newer desired version when it completes and goes round again.
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
        "UPDATE sync_state SET desired_version = ?2,
            state = CASE WHEN state = 'leased' THEN 'leased' ELSE 'pending' END,
            pending_since = CASE WHEN state IN ('pending', 'leased')
                                 THEN coalesce(pending_since, ",
        now!(),
        ") ELSE ",
        now!(),
        " END,
            attempts = 0, next_attempt_at = ",
        now!(),
        ", last_error = NULL, updated_at = ",
        now!(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::{MIGRATOR, connect};

    async fn db() -> sqlx::SqlitePool {
        let pool = connect("sqlite::memory:", 1).await.unwrap();
        MIGRATOR.run(&pool).await.unwrap();
        pool
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
