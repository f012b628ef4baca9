//! The store a process opens, whatever the backend: the user store, the outbox and the
//! shared Ameyo sessions of one database, behind their traits, so `serve`, the admin
//! CLI and the worker do not care which database it is. PostgreSQL for production and
//! replicas; an SQLite file (the default) for one node and `serve --dev`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use secrecy::ExposeSecret;

use super::UserStore;
use super::groups::{GroupStore, PgGroupStore};
use super::lock::StoreLock;
use super::outbox::{Outbox, PgOutbox};
use super::password::PasswordCipher;
use super::postgres::{PgStore, connect_lazy, connect_serving, migrate_url};
use super::session::PgSessionStore;
use super::sqlite::SqliteStore;
use super::sqlite::groups::SqliteGroupStore;
use super::sqlite::outbox::SqliteOutbox;
use super::sqlite::session::SqliteSessionStore;
use crate::ameyo::client::SessionStore;
use crate::config::{DatabaseKind, Settings, redacted_url};

/// The database behind a [`Backend`].
#[derive(Clone, Debug)]
pub enum Db {
    Postgres(sqlx::PgPool),
    Sqlite(sqlx::SqlitePool),
}

/// An open store.
#[derive(Clone)]
pub struct Backend {
    pub users: Arc<dyn UserStore>,
    pub groups: Arc<dyn GroupStore>,
    pub outbox: Arc<dyn Outbox>,
    pub cipher: PasswordCipher,
    pub db: Db,
    /// Held by the one process that serves an embedded store.
    lock: Option<Arc<StoreLock>>,
}

/// What the store is opened for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `serve`: migrations applied, and the embedded store locked to this process.
    Serve,
    /// `migrate`: migrations applied, no lock kept.
    Migrate,
    /// An admin command next to a running service: no migrations, no lock.
    Admin,
}

impl Backend {
    /// Open the configured database.
    pub async fn open(settings: &Settings, access: Access) -> anyhow::Result<Self> {
        let cipher = PasswordCipher::from_settings(settings)?;
        let url = settings.database.url.expose_secret();
        let shown = redacted_url(url);
        match settings.database.kind()? {
            DatabaseKind::Postgres => {
                let mut db = settings.database.clone();
                if access == Access::Admin {
                    db.max_connections = db.max_connections.min(2);
                }
                if access != Access::Admin && db.create_if_missing {
                    use sqlx::migrate::MigrateDatabase;
                    if !sqlx::Postgres::database_exists(url)
                        .await
                        .with_context(|| format!("cannot reach {shown}"))?
                    {
                        sqlx::Postgres::create_database(url)
                            .await
                            .with_context(|| format!("cannot create {shown}"))?;
                        tracing::info!(database = %shown, "created the database");
                    }
                }
                // A serving process warms each connection it opens, and keeps them.
                let pool = match access {
                    Access::Serve => {
                        let tenant = settings.tenants.first().map(|t| t.id.as_str());
                        connect_serving(&db, tenant.unwrap_or_default())
                    }
                    _ => connect_lazy(&db),
                }
                .context("invalid database.url")?;
                match access {
                    Access::Admin => {
                        sqlx::query("SELECT 1")
                            .execute(&pool)
                            .await
                            .with_context(|| format!("cannot reach the database {shown}"))?;
                    }
                    // Before the pool opens a connection: its connections are warmed on
                    // the migrated schema.
                    Access::Serve | Access::Migrate => {
                        migrate_url(&db)
                            .await
                            .with_context(|| format!("cannot apply migrations to {shown}"))?;
                    }
                }
                Ok(Self::postgres(pool, cipher))
            }
            DatabaseKind::Sqlite { path } => {
                let shown = path
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| ":memory:".into());
                if let Some(p) = &path {
                    if access == Access::Admin && !p.exists() {
                        anyhow::bail!("there is no embedded store at {shown}");
                    }
                    if settings.database.is_default() {
                        let full = std::env::current_dir()
                            .map(|d| d.join(p))
                            .unwrap_or_else(|_| PathBuf::from(p));
                        tracing::info!(path = %full.display(), "no database.url configured: using the embedded store");
                    }
                }
                // One process serves a file; take it before touching it.
                let lock = match (&path, access) {
                    (Some(p), Access::Serve) => Some(Arc::new(
                        super::lock::acquire(p).map_err(anyhow::Error::msg)?,
                    )),
                    _ => None,
                };
                // An in-memory database lives in one connection.
                let connections = if path.is_none() {
                    1
                } else {
                    settings.database.max_connections
                };
                let pool = super::sqlite::connect(url, connections)
                    .await
                    .with_context(|| format!("cannot open the embedded store {shown}"))?;
                if access != Access::Admin {
                    super::sqlite::MIGRATOR
                        .run(&pool)
                        .await
                        .with_context(|| format!("cannot apply migrations to {shown}"))?;
                }
                let mut backend = Self::sqlite(pool, cipher);
                backend.lock = lock;
                Ok(backend)
            }
        }
    }

    /// A store over an open PostgreSQL pool (migrations already applied). Writes wake
    /// this process's workers directly and other processes' through `NOTIFY`.
    pub fn postgres(pool: sqlx::PgPool, cipher: PasswordCipher) -> Self {
        let wake = super::wake::PgWake::new(pool.clone());
        Self {
            users: Arc::new(PgStore::new(pool.clone(), cipher.clone()).with_wake(wake.clone())),
            groups: Arc::new(PgGroupStore::new(pool.clone())),
            outbox: Arc::new(PgOutbox::new(pool.clone()).with_wake(wake)),
            cipher,
            db: Db::Postgres(pool),
            lock: None,
        }
    }

    /// A store over an open SQLite pool (migrations already applied). Writes wake this
    /// process's workers directly.
    pub fn sqlite(pool: sqlx::SqlitePool, cipher: PasswordCipher) -> Self {
        let write = super::sqlite::WriteLock::default();
        let outbox = SqliteOutbox::new(pool.clone()).with_write_lock(write.clone());
        let users = SqliteStore::new(pool.clone(), cipher.clone())
            .with_wakeup(outbox.wakeup())
            .with_write_lock(write.clone());
        let groups = SqliteGroupStore::new(pool.clone())
            .with_wakeup(outbox.wakeup())
            .with_write_lock(write);
        Self {
            users: Arc::new(users),
            groups: Arc::new(groups),
            outbox: Arc::new(outbox),
            cipher,
            db: Db::Sqlite(pool),
            lock: None,
        }
    }

    /// Where the processes of each tenant share its Ameyo session, under `owner`.
    pub fn sessions(&self, owner: &str) -> impl Fn(&str) -> Option<Arc<dyn SessionStore>> {
        let db = self.db.clone();
        let cipher = self.cipher.clone();
        let owner = owner.to_string();
        move |tenant: &str| -> Option<Arc<dyn SessionStore>> {
            match &db {
                Db::Postgres(pool) => Some(Arc::new(PgSessionStore::new(
                    pool.clone(),
                    cipher.clone(),
                    tenant,
                    &owner,
                ))),
                Db::Sqlite(pool) => Some(Arc::new(SqliteSessionStore::new(
                    pool.clone(),
                    cipher.clone(),
                    tenant,
                    &owner,
                ))),
            }
        }
    }

    /// Connections idle and open, for the pool gauge.
    pub fn pool_stats(&self) -> (usize, usize) {
        match &self.db {
            Db::Postgres(pool) => (pool.num_idle(), pool.size() as usize),
            Db::Sqlite(pool) => (pool.num_idle(), pool.size() as usize),
        }
    }

    /// Whether this process holds the embedded store's lock.
    pub fn holds_lock(&self) -> bool {
        self.lock.is_some()
    }
}
