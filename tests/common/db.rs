//! A fresh, migrated, isolated store per test, on either backend.
//!
//! PostgreSQL: a database of its own per test (`ameyo_t_<uuid>`), on the server
//! `DATABASE_URL` names when it is set, otherwise on one throwaway cluster per test
//! binary, started lazily from the installed PostgreSQL binaries and killed with the
//! test process. The database is dropped when the test ends. SQLite: a file of its own
//! in a temp dir, removed when the test ends. Either way the store is opened with the
//! product's own code (`Backend::open`).
//!
//! [`Sql`] reads and pokes the tables directly, for what the store API does not show;
//! its queries are written once in SQL both databases accept (see [`Sql::exec`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ameyo_scim::config::Settings;
use ameyo_scim::store::backend::{Access, Backend, Db};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::{AssertSqlSafe, Connection, PgPool, SqlitePool};
use uuid::Uuid;

/// Which store a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Postgres,
    Sqlite,
}

/// One test's database; dropped (or removed) when this is dropped.
pub struct TestDb {
    url: String,
    sql: Sql,
    _cleanup: Cleanup,
}

impl TestDb {
    /// A fresh PostgreSQL database, migrated.
    pub async fn postgres() -> Self {
        let admin = tokio::task::spawn_blocking(admin_url)
            .await
            .expect("PostgreSQL server start");
        let name = format!("ameyo_t_{}", Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(admin)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {admin}: {e}"));
        sqlx::raw_sql(AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
        let _ = conn.close().await;
        let cleanup = Cleanup::Database {
            admin: admin.to_string(),
            name: name.clone(),
        };
        let mut url = reqwest::Url::parse(admin).expect("the admin URL is a URL");
        url.set_path(&name);
        let url = url.to_string();
        migrate(&url).await;
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect_lazy(&url)
            .expect("a PostgreSQL URL");
        TestDb {
            url,
            sql: Sql::Postgres(pool),
            _cleanup: cleanup,
        }
    }

    /// A fresh SQLite file, migrated.
    pub async fn sqlite() -> Self {
        let dir = run_dir().join(format!("sqlite-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("test temp dir");
        let cleanup = Cleanup::Dir(dir.clone());
        let url = format!("sqlite://{}", dir.join("store.db").display());
        migrate(&url).await;
        let pool = ameyo_scim::store::sqlite::connect(&url, 4)
            .await
            .expect("open the test's SQLite file");
        TestDb {
            url,
            sql: Sql::Sqlite(pool),
            _cleanup: cleanup,
        }
    }

    pub fn kind(&self) -> Kind {
        self.sql.kind()
    }

    /// The `database.url` of this store, for a configuration file or `Settings`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Direct SQL on this store.
    pub fn sql(&self) -> Sql {
        self.sql.clone()
    }

    /// Open the store as the service would with these settings (their password key
    /// seals; their `database.url` is replaced by this store's).
    pub async fn open(&self, settings: &Settings) -> Backend {
        let mut settings = settings.clone();
        settings.database.url = self.url.clone().into();
        Backend::open(&settings, Access::Migrate)
            .await
            .unwrap_or_else(|e| panic!("cannot open {}: {e:#}", self.url))
    }

    /// The pool of a PostgreSQL test database, for tests about PostgreSQL itself.
    pub fn pg_pool(&self) -> PgPool {
        match &self.sql {
            Sql::Postgres(pool) => pool.clone(),
            Sql::Sqlite(_) => panic!("a PostgreSQL test on SQLite"),
        }
    }
}

impl std::ops::Deref for TestDb {
    type Target = Sql;
    fn deref(&self) -> &Sql {
        &self.sql
    }
}

/// Apply the migrations with the product's own start-up code.
async fn migrate(url: &str) {
    let mut settings = super::settings();
    settings.database.url = url.to_string().into();
    Backend::open(&settings, Access::Migrate)
        .await
        .unwrap_or_else(|e| panic!("cannot migrate {url}: {e:#}"));
}

/// Runs a test body on both stores: for each `async fn name(db: TestDb)` named, the
/// tests `name::postgres` and `name::sqlite` call it with a fresh store of that kind,
/// so `cargo test name` runs both and a failure names the backend.
///
/// ```ignore
/// both_backends!(creates_a_user);
/// async fn creates_a_user(db: TestDb) {
///     let app = app(&db).await;
///     // ...
/// }
/// ```
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name($crate::common::db::TestDb::postgres().await).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::common::db::TestDb::sqlite().await).await
                }
            }
        )+
    };
}

/// A bind parameter of [`Sql`] queries.
#[derive(Debug, Clone)]
pub enum Arg {
    /// A user id: a `uuid` on PostgreSQL, its text on SQLite.
    Id(Uuid),
    Text(String),
    Int(i64),
}

impl Arg {
    /// A user id parameter, from a `Uuid` or its text.
    pub fn id(id: impl ToString) -> Arg {
        let text = id.to_string();
        Arg::Id(
            text.parse()
                .unwrap_or_else(|e| panic!("{text} is not a user id: {e}")),
        )
    }
}

/// Direct access to a test's tables.
#[derive(Clone, Debug)]
pub enum Sql {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// Build a query for each pool type from the same SQL and arguments.
macro_rules! on_pool {
    ($sql:expr, $text:expr, $args:expr, |$q:ident, $pool:ident| $body:expr) => {
        match $sql {
            Sql::Postgres($pool) => {
                let mut $q = sqlx::query(AssertSqlSafe($text.to_string()));
                for a in $args {
                    $q = match a {
                        Arg::Id(u) => $q.bind(*u),
                        Arg::Text(s) => $q.bind(s.clone()),
                        Arg::Int(n) => $q.bind(*n),
                    };
                }
                $body
            }
            Sql::Sqlite($pool) => {
                let text = sqlite_dialect($text);
                let mut $q = sqlx::query(AssertSqlSafe(text));
                for a in $args {
                    $q = match a {
                        Arg::Id(u) => $q.bind(u.to_string()),
                        Arg::Text(s) => $q.bind(s.clone()),
                        Arg::Int(n) => $q.bind(*n),
                    };
                }
                $body
            }
        }
    };
}

/// The one rewrite [`Sql`] makes for SQLite: `now()` becomes the current time in the
/// embedded store's timestamp format (ISO 8601 text in UTC with milliseconds).
fn sqlite_dialect(sql: &str) -> String {
    sql.replace("now()", "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')")
}

/// One outbox row, as assertions read it.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub tenant_id: String,
    pub state: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub desired_version: i64,
    pub synced_version: i64,
    pub lease_owner: Option<String>,
    pub lease_token: Option<Uuid>,
    pub last_pushed: Option<Value>,
    pub pending_since: Option<DateTime<Utc>>,
    pub pending_password: Option<Vec<u8>>,
    pub password_version: Option<i64>,
    pub ameyo_user_id: Option<String>,
    pub ameyo_locked: bool,
    /// `next_attempt_at - updated_at`: the delay the last completion chose.
    pub delay_secs: f64,
}

#[derive(sqlx::FromRow)]
struct RawRow {
    tenant_id: String,
    state: String,
    attempts: i32,
    last_error: Option<String>,
    desired_version: i64,
    synced_version: i64,
    lease_owner: Option<String>,
    lease_token: Option<String>,
    last_pushed: Option<String>,
    pending_since: Option<String>,
    next_attempt_at: String,
    updated_at: String,
    pending_password: Option<Vec<u8>>,
    password_version: Option<i64>,
    ameyo_user_id: Option<String>,
    ameyo_locked: bool,
}

/// Timestamps and UUIDs are read as text, which both databases give: RFC 3339 from
/// SQLite, `YYYY-MM-DD HH:MM:SS.ffffff+00` from PostgreSQL.
const OUTBOX_ROW_SQL: &str = "
SELECT tenant_id, state, attempts, last_error, desired_version, synced_version, lease_owner,
       CAST(lease_token AS TEXT) AS lease_token, CAST(last_pushed AS TEXT) AS last_pushed,
       CAST(pending_since AS TEXT) AS pending_since,
       CAST(next_attempt_at AS TEXT) AS next_attempt_at, CAST(updated_at AS TEXT) AS updated_at,
       pending_password, password_version, ameyo_user_id, ameyo_locked
FROM sync_state WHERE CAST(user_id AS TEXT) = $1";

fn parse_time(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .or_else(|_| DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z"))
        .unwrap_or_else(|e| panic!("{text} is not a timestamp: {e}"))
        .with_timezone(&Utc)
}

impl From<RawRow> for OutboxRow {
    fn from(r: RawRow) -> Self {
        let delay = parse_time(&r.next_attempt_at) - parse_time(&r.updated_at);
        OutboxRow {
            tenant_id: r.tenant_id,
            state: r.state,
            attempts: r.attempts,
            last_error: r.last_error,
            desired_version: r.desired_version,
            synced_version: r.synced_version,
            lease_owner: r.lease_owner,
            lease_token: r
                .lease_token
                .map(|t| t.parse().expect("a lease token is a uuid")),
            last_pushed: r
                .last_pushed
                .map(|j| serde_json::from_str(&j).expect("last_pushed is JSON")),
            pending_since: r.pending_since.as_deref().map(parse_time),
            pending_password: r.pending_password,
            password_version: r.password_version,
            ameyo_user_id: r.ameyo_user_id,
            ameyo_locked: r.ameyo_locked,
            delay_secs: delay.num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6,
        }
    }
}

impl Sql {
    /// Direct SQL on an open store, through its own pool.
    pub fn of(backend: &Backend) -> Sql {
        match &backend.db {
            Db::Postgres(pool) => Sql::Postgres(pool.clone()),
            Db::Sqlite(pool) => Sql::Sqlite(pool.clone()),
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Sql::Postgres(_) => Kind::Postgres,
            Sql::Sqlite(_) => Kind::Sqlite,
        }
    }

    /// Run a statement both databases accept (with `$1`, `$2`... parameters, and
    /// `now()` for the current time); returns the rows it affected.
    pub async fn exec(&self, sql: &str, args: &[Arg]) -> u64 {
        on_pool!(self, sql, args, |q, pool| q
            .execute(pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .rows_affected())
    }

    /// The integer a query both databases accept answers (`count(*)`, or an integer
    /// column cast to BIGINT).
    pub async fn int(&self, sql: &str, args: &[Arg]) -> i64 {
        use sqlx::Row;
        on_pool!(self, sql, args, |q, pool| q
            .fetch_one(pool)
            .await
            .and_then(|row| row.try_get::<i64, _>(0))
            .unwrap_or_else(|e| panic!("{sql}: {e}")))
    }

    /// The first column of every row, as optional text.
    pub async fn texts(&self, sql: &str, args: &[Arg]) -> Vec<Option<String>> {
        use sqlx::Row;
        on_pool!(self, sql, args, |q, pool| q
            .fetch_all(pool)
            .await
            .and_then(|rows| rows.iter().map(|r| r.try_get(0)).collect())
            .unwrap_or_else(|e| panic!("{sql}: {e}")))
    }

    /// A user's outbox row; `None` once it is gone.
    pub async fn outbox_row(&self, user: impl ToString) -> Option<OutboxRow> {
        let row: Option<RawRow> = match self {
            Sql::Postgres(pool) => sqlx::query_as(OUTBOX_ROW_SQL)
                .bind(user.to_string())
                .fetch_optional(pool)
                .await
                .expect("outbox row"),
            Sql::Sqlite(pool) => sqlx::query_as(OUTBOX_ROW_SQL)
                .bind(user.to_string())
                .fetch_optional(pool)
                .await
                .expect("outbox row"),
        };
        row.map(OutboxRow::from)
    }

    /// Whether the users table holds this user (live or as a tombstone).
    pub async fn user_row_exists(&self, user: impl ToString) -> bool {
        self.int(
            "SELECT count(*) FROM users WHERE CAST(id AS TEXT) = $1",
            &[Arg::Text(user.to_string())],
        )
        .await
            > 0
    }

    /// Every row of a table as JSON, in `order_by` order.
    pub async fn rows(&self, table: &str, order_by: &str) -> Vec<Value> {
        match self {
            Sql::Postgres(pool) => {
                let rows: Value = sqlx::query_scalar(AssertSqlSafe(format!(
                    "SELECT coalesce(jsonb_agg(to_jsonb(t) ORDER BY {order_by}), '[]')
                     FROM {table} t"
                )))
                .fetch_one(pool)
                .await
                .unwrap_or_else(|e| panic!("rows of {table}: {e}"));
                match rows {
                    Value::Array(rows) => rows,
                    other => panic!("rows of {table}: {other}"),
                }
            }
            Sql::Sqlite(pool) => {
                use sqlx::{Column, Row, TypeInfo, ValueRef};
                let rows = sqlx::query(AssertSqlSafe(format!(
                    "SELECT * FROM {table} ORDER BY {order_by}"
                )))
                .fetch_all(pool)
                .await
                .unwrap_or_else(|e| panic!("rows of {table}: {e}"));
                rows.iter()
                    .map(|row| {
                        let mut out = serde_json::Map::new();
                        for (i, col) in row.columns().iter().enumerate() {
                            let raw = row.try_get_raw(i).expect("column");
                            let v = if raw.is_null() {
                                Value::Null
                            } else {
                                match raw.type_info().name() {
                                    "INTEGER" | "BOOLEAN" => {
                                        json!(row.try_get_unchecked::<i64, _>(i).expect("int"))
                                    }
                                    "REAL" => {
                                        json!(row.try_get_unchecked::<f64, _>(i).expect("real"))
                                    }
                                    "TEXT" => {
                                        json!(row.try_get_unchecked::<String, _>(i).expect("text"))
                                    }
                                    _ => json!(String::from_utf8_lossy(
                                        &row.try_get_unchecked::<Vec<u8>, _>(i).expect("blob")
                                    )),
                                }
                            };
                            out.insert(col.name().to_string(), v);
                        }
                        Value::Object(out)
                    })
                    .collect()
            }
        }
    }

    /// Everything the store holds about users, for "nothing changed" assertions.
    pub async fn snapshot(&self) -> Value {
        json!({
            "users": self.rows("users", "id").await,
            "sync": self.rows("sync_state", "user_id").await,
            "groups": self.rows("groups", "id").await,
            "members": self.rows("group_members", "group_id, user_id").await,
        })
    }

    /// `rows` attempt-log entries made `days_ago` days ago, for random users.
    pub async fn seed_attempts(&self, rows: i64, days_ago: i64) {
        // A recursive CTE counts in both databases; only the date arithmetic differs.
        let at = match self {
            Sql::Postgres(_) => "now() - make_interval(days => $2::int)",
            Sql::Sqlite(_) => "strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-' || $2 || ' days')",
        };
        let user = match self {
            Sql::Postgres(_) => "gen_random_uuid()",
            Sql::Sqlite(_) => "lower(hex(randomblob(16)))",
        };
        let sql = format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $1)
             INSERT INTO sync_attempts (at, tenant_id, user_id, version, worker, call, outcome,
                                        duration_ms)
             SELECT {at}, 'a', {user}, 1, 'w', 'update', 'ok', 5 FROM n"
        );
        self.exec(&sql, &[Arg::Int(rows), Arg::Int(days_ago)]).await;
    }

    /// Attempt-log entries older than `days` days, and the others.
    pub async fn attempts_by_age(&self, days: i64) -> (i64, i64) {
        let cutoff = match self {
            Sql::Postgres(_) => "now() - make_interval(days => $1::int)",
            Sql::Sqlite(_) => "strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-' || $1 || ' days')",
        };
        let old = self
            .int(
                &format!("SELECT count(*) FROM sync_attempts WHERE at < {cutoff}"),
                &[Arg::Int(days)],
            )
            .await;
        let recent = self
            .int(
                &format!("SELECT count(*) FROM sync_attempts WHERE at >= {cutoff}"),
                &[Arg::Int(days)],
            )
            .await;
        (old, recent)
    }
}

/// What a dropped [`TestDb`] leaves behind: nothing.
enum Cleanup {
    Database { admin: String, name: String },
    Dir(PathBuf),
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        match self {
            Cleanup::Dir(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Cleanup::Database { admin, name } => {
                // Drop runs on the test's runtime, which cannot block on a future: a
                // short-lived thread with a runtime of its own drops the database,
                // ending whatever connections the test's pools still hold.
                let (admin, db) = (admin.clone(), name.clone());
                let dropped = std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("runtime");
                    rt.block_on(async {
                        let mut conn = sqlx::PgConnection::connect(&admin).await?;
                        sqlx::raw_sql(AssertSqlSafe(format!(
                            r#"DROP DATABASE IF EXISTS "{db}" WITH (FORCE)"#
                        )))
                        .execute(&mut conn)
                        .await?;
                        conn.close().await
                    })
                })
                .join();
                if let Ok(Err(e)) = dropped {
                    eprintln!("could not drop test database {name}: {e}");
                }
            }
        }
    }
}

// --- Where the PostgreSQL databases live ----------------------------------------------

/// The URL of a database on the test server to run `CREATE DATABASE` from.
fn admin_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| match std::env::var("DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => url,
        _ => start_cluster(),
    })
}

/// This process's temp dir (the throwaway cluster, the SQLite files), under a parent
/// shared by all test processes; the dirs of processes that are gone are removed first.
pub fn run_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let parent = std::env::temp_dir().join("ameyo-scim-tests");
        std::fs::create_dir_all(&parent).expect("test temp dir");
        remove_dead_runs(&parent);
        let dir = parent.join(format!(
            "{}-{}",
            std::process::id(),
            &Uuid::new_v4().simple().to_string()[..8]
        ));
        std::fs::create_dir_all(&dir).expect("test temp dir");
        dir
    })
}

/// Remove the dirs of test processes that no longer run (killed ones included), and
/// the shared memory their PostgreSQL left.
fn remove_dead_runs(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(pid) = name.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        // The server's processes may still be on their way out: then the dir stays,
        // for a later run to remove with the memory they leave.
        if remove_orphaned_shared_memory(&entry.path().join("pg").join("data")) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A killed postmaster leaves its System V segment behind; `postmaster.pid` names it
/// (line 7: key and id). Removes it if it is still that segment and nobody uses it;
/// false while something still does.
fn remove_orphaned_shared_memory(data: &Path) -> bool {
    let Ok(pidfile) = std::fs::read_to_string(data.join("postmaster.pid")) else {
        return true;
    };
    let Some((key, shmid)) = pidfile.lines().nth(6).and_then(|l| {
        let mut f = l.split_whitespace();
        Some((f.next()?.parse::<i64>().ok()?, f.next()?.to_string()))
    }) else {
        return true;
    };
    let Ok(table) = std::fs::read_to_string("/proc/sysvipc/shm") else {
        return true;
    };
    // Columns: key shmid perms size cpid lpid nattch ...
    let attached = table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 6 && f[0].parse::<i64>().ok() == Some(key) && f[1] == shmid).then(|| f[6] != "0")
    });
    match attached {
        None => true,
        Some(true) => false,
        Some(false) => Command::new("ipcrm")
            .args(["-m", &shmid])
            .status()
            .is_ok_and(|s| s.success()),
    }
}

/// A PostgreSQL binary of the newest installed version.
pub fn pg_bin(tool: &str) -> PathBuf {
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin").join(tool))
                .collect()
        })
        .unwrap_or_default();
    candidates.sort();
    candidates
        .into_iter()
        .rev()
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "{tool} not found under /usr/lib/postgresql/*/bin: install the PostgreSQL \
                 package (apt-get install postgresql), or set DATABASE_URL to a server"
            )
        })
}

pub fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `setpriv` arguments that run a PostgreSQL binary as `postgres` when we are root
/// (PostgreSQL refuses to run as root).
fn as_postgres() -> Vec<&'static str> {
    if running_as_root() {
        vec![
            "--reuid",
            "postgres",
            "--regid",
            "postgres",
            "--init-groups",
        ]
    } else {
        Vec::new()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Start this process's throwaway cluster; returns the URL of its `postgres` database.
fn start_cluster() -> String {
    let dir = run_dir().join("pg");
    std::fs::create_dir_all(&dir).expect("cluster dir");
    if running_as_root() {
        let ok = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status()
            .expect("chown");
        assert!(ok.success(), "chown {}", dir.display());
    }
    let data = dir.join("data");
    let out = Command::new("setpriv")
        .args(as_postgres())
        .arg(pg_bin("initdb"))
        .arg("-D")
        .arg(&data)
        .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
        .current_dir(&dir)
        .output()
        .expect("run initdb");
    assert!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = free_port();
    let log = dir.join("postgres.log");
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let (dir, data, log) = (dir.clone(), data.clone(), log.clone());
        // The server's parent is this thread, which never ends: PR_SET_PDEATHSIG fires
        // when the thread that spawned the child exits, so the server dies with the
        // test process (however it ends) and not with some test's thread.
        std::thread::Builder::new()
            .name("test-postgres".into())
            .spawn(move || {
                let spawned = std::fs::File::create(&log).and_then(|file| {
                    Command::new("setpriv")
                        .args(["--pdeathsig", "KILL"])
                        .args(as_postgres())
                        .arg(pg_bin("postgres"))
                        .arg("-D")
                        .arg(&data)
                        .args(["-p", &port.to_string(), "-k"])
                        .arg(&dir)
                        .args([
                            "-c",
                            "listen_addresses=127.0.0.1",
                            "-c",
                            "max_connections=400",
                            "-c",
                            "fsync=off",
                            "-c",
                            "synchronous_commit=off",
                            "-c",
                            "full_page_writes=off",
                            // Its files go with the data dir, not into /dev/shm.
                            "-c",
                            "dynamic_shared_memory_type=mmap",
                        ])
                        .current_dir(&dir)
                        .stdin(Stdio::null())
                        .stdout(file.try_clone()?)
                        .stderr(file)
                        .spawn()
                });
                let _server = match spawned {
                    Ok(child) => child,
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = tx.send(Ok(()));
                loop {
                    std::thread::park();
                }
            })
            .expect("spawn the cluster's thread");
    }
    if let Ok(Err(e)) = rx.recv() {
        panic!("cannot start postgres: {e}");
    }
    let started = Instant::now();
    loop {
        let ready = Command::new(pg_bin("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if ready {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the throwaway PostgreSQL did not start:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    format!("postgres://postgres@127.0.0.1:{port}/postgres")
}

/// Take every connection of the store's pool and keep them until the result is
/// dropped: whatever needs the database then waits.
pub async fn hold_every_connection(backend: &Backend) -> Vec<Box<dyn std::any::Any + Send>> {
    let mut held: Vec<Box<dyn std::any::Any + Send>> = Vec::new();
    match &backend.db {
        Db::Postgres(pool) => {
            for _ in 0..pool.options().get_max_connections() {
                held.push(Box::new(pool.acquire().await.expect("a connection")));
            }
        }
        Db::Sqlite(pool) => {
            for _ in 0..pool.options().get_max_connections() {
                held.push(Box::new(pool.acquire().await.expect("a connection")));
            }
        }
    }
    held
}
