//! The embedded backend: one SQLite file, owned by one process. The same store API as
//! PostgreSQL (users, outbox, shared session), for single-node installs and
//! `serve --dev`. Durable: WAL journal with `synchronous = FULL`, so every acknowledged
//! write survives a crash of the process (and of the machine).

pub mod filter;
pub mod groups;
pub mod outbox;
pub mod session;
pub mod users;

use std::str::FromStr;
use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

pub use users::SqliteStore;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations-sqlite");

/// Serialises this process's write transactions before they ask SQLite for its write
/// lock. SQLite lets one writer in at a time and makes the others sleep in its busy
/// handler, in steps of up to 100 ms; queueing on an async lock instead hands the file
/// over as soon as it is free (p99 of 16 concurrent writers: 22-60 ms instead of
/// 134-329 ms). One is shared by the user store and the outbox of a file.
pub type WriteLock = std::sync::Arc<tokio::sync::Mutex<()>>;

/// The timestamp format of every time column, as SQLite's `strftime` writes it, so
/// values written in SQL and in Rust compare correctly as text.
pub const TIME_FORMAT: &str = "%Y-%m-%dT%H:%M:%fZ";

/// SQL for "now" in [`TIME_FORMAT`].
macro_rules! now {
    () => {
        "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
    };
}
pub(crate) use now;

/// SQL for "now plus `$param` seconds" (a float parameter) in [`TIME_FORMAT`].
macro_rules! now_plus {
    ($param:literal) => {
        concat!(
            "strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '+' || ",
            $param,
            " || ' seconds')"
        )
    };
}
pub(crate) use now_plus;

/// A timestamp in [`TIME_FORMAT`].
pub fn format_time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// How many of the pool's `max` connections a warm-up opens and the pool keeps open:
/// half, up to 8 (an SQLite connection opens in well under a millisecond).
pub fn warm_connections(max: u32) -> u32 {
    (max / 2).clamp(1, 8)
}

/// The page cache of all of a pool's connections together, in KiB. Each connection
/// has its own; SQLite's default (2 MiB each) let a serving process of 16 connections
/// reach 63 MiB at a million users. The file's pages stay in the operating system's
/// cache besides.
pub const PAGE_CACHE_KIB: u32 = 16 * 1024;

/// One connection's share of [`PAGE_CACHE_KIB`], never under 256 KiB.
pub fn page_cache_kib(max_connections: u32) -> u32 {
    (PAGE_CACHE_KIB / max_connections.max(1)).max(256)
}

/// A pool on the SQLite file at `url` (`sqlite://path`), created if missing.
pub async fn connect(url: &str, max_connections: u32) -> Result<SqlitePool, sqlx::Error> {
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(10))
        // Negative: a size in KiB rather than in pages.
        .pragma(
            "cache_size",
            format!("-{}", page_cache_kib(max_connections)),
        );
    // The connections a warm-up opens stay open: each keeps its prepared statements.
    SqlitePoolOptions::new()
        .max_connections(max_connections.max(1))
        .min_connections(warm_connections(max_connections))
        .connect_with(options)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_page_cache_of_a_pool_is_bounded() {
        let dir = std::env::temp_dir().join(format!("ameyo-scim-cache-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}", dir.join("cache.db").display());
        for (connections, kib) in [(16, 1024), (4, 4096), (1000, 256)] {
            assert_eq!(page_cache_kib(connections), kib);
            let pool = connect(&url, connections).await.unwrap();
            let size: i64 = sqlx::query_scalar("PRAGMA cache_size")
                .fetch_one(&pool)
                .await
                .unwrap();
            assert_eq!(size, -i64::from(kib), "{connections} connections");
            pool.close().await;
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rust_and_sql_write_one_time_format() {
        let t = chrono::DateTime::parse_from_rfc3339("2026-11-25T10:00:01.5Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(format_time(t), "2026-11-25T10:00:01.500Z");
    }

    #[tokio::test]
    async fn sql_now_sorts_with_rust_times() {
        let pool = connect("sqlite::memory:", 1).await.unwrap();
        let now: String = sqlx::query_scalar(concat!("SELECT ", now!()))
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(now.len(), "2026-11-25T10:00:01.500Z".len(), "{now}");
        let later: String = sqlx::query_scalar(concat!("SELECT ", now_plus!("?")))
            .bind(1.5f64)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert!(later > now, "{later} > {now}");
        assert!(format_time(chrono::Utc::now() - chrono::Duration::seconds(5)) < now);
    }

    #[tokio::test]
    async fn a_busy_file_is_a_transient_error() {
        let dir = std::env::temp_dir().join(format!("ameyo-scim-busy-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}", dir.join("busy.db").display());
        let holder = connect(&url, 1).await.unwrap();
        sqlx::query("CREATE TABLE t (x INTEGER)")
            .execute(&holder)
            .await
            .unwrap();
        let mut tx = holder.begin().await.unwrap();
        sqlx::query("INSERT INTO t VALUES (1)")
            .execute(&mut *tx)
            .await
            .unwrap();
        let options = SqliteConnectOptions::from_str(&url)
            .unwrap()
            .busy_timeout(Duration::ZERO);
        let other = SqlitePoolOptions::new()
            .connect_with(options)
            .await
            .unwrap();
        let e = sqlx::query("INSERT INTO t VALUES (2)")
            .execute(&other)
            .await
            .unwrap_err();
        assert!(crate::store::is_transient(&e), "{e}");
        tx.rollback().await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
