//! Measures the service where the IdPs load it: lookups and writes over real HTTP at a
//! given number of users, and delivery throughput to the Ameyo emulator, on PostgreSQL,
//! on the embedded (SQLite) store, or on both one after the other.
//!
//!     cargo run --release --example bench -- --users 100000 --store both
//!
//! PostgreSQL: its own database (`ameyo_scim_bench`, dropped and created, dropped at the
//! end) on the server in DATABASE_URL. SQLite: a file in a fresh temporary folder,
//! removed at the end. Prints one Markdown table with a `store` column, then a delivery
//! line per store.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ameyo_emulator::{Emulator, EmulatorOptions};
use ameyo_scim::config::Settings;
use ameyo_scim::http::auth::token_digest;
use ameyo_scim::http::{AppState, router};
use ameyo_scim::store::backend::{Access, Backend, Db};
use ameyo_scim::store::sqlite::filter::{fold_case, search_document};
use chrono::Utc;
use clap::{Parser, ValueEnum};
use serde_json::json;
use sqlx::migrate::MigrateDatabase;
use uuid::Uuid;

#[derive(Parser)]
struct Args {
    /// Users seeded before measuring.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(i64).range(1..))]
    users: i64,
    /// Requests per measured operation.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Users delivered to the emulator in the delivery run: the users the POST run
    /// created, topped up with more (created before the clock starts) if fewer.
    #[arg(long, default_value_t = 2000)]
    deliveries: usize,
    /// Also measure Groups: a group of every seeded user built and changed 1,000
    /// members per PATCH, and the re-delivery a watched group's change causes.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    groups: bool,
    /// Pages of the in-order walk through the tenant (100 users each), at most.
    #[arg(long, default_value_t = usize::MAX)]
    walk_pages: usize,
    /// The store(s) to measure; `both` runs PostgreSQL, then SQLite.
    #[arg(long, value_enum, default_value_t = StoreChoice::Both)]
    store: StoreChoice,
    /// Milliseconds the emulator adds to every Ameyo call during the delivery run (its
    /// `latency_ms` fault), to see deliveries wait on a distant Ameyo.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    ameyo_latency_ms: u64,
    /// First measure the emulator alone: this many creates straight to it over HTTP
    /// (`--concurrency` in flight), the first half's rate beside the second's.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    emulator_creates: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StoreChoice {
    Postgres,
    Sqlite,
    Both,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Postgres,
    Sqlite,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Postgres => "postgres",
            Kind::Sqlite => "sqlite",
        }
    }
}

const TOKEN: &str = "bench-token";
/// `sync.concurrency` of the delivery runs.
const DELIVERY_CONCURRENCY: usize = 16;
const TENANT: &str = "bench";
/// Users whose ids the `GET /Users/{id}` run picks from.
const ID_SAMPLE: usize = 5000;

fn enc(s: String) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

struct Stats {
    name: String,
    n: usize,
    seconds: f64,
    latencies: Vec<Duration>,
}

impl Stats {
    fn row(&self, store: &str) -> String {
        let mut l = self.latencies.clone();
        l.sort();
        let q = |p: f64| l[((l.len() as f64 * p) as usize).min(l.len() - 1)].as_secs_f64() * 1000.0;
        format!(
            "| {store} | {} | {} | {:.0} | {:.1} | {:.1} | {:.1} |",
            self.name,
            self.n,
            self.n as f64 / self.seconds,
            q(0.5),
            q(0.95),
            q(0.99)
        )
    }
}

async fn run<F, Fut>(name: &str, n: usize, concurrency: usize, f: F) -> Stats
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let f = Arc::new(f);
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut set = tokio::task::JoinSet::new();
    let started = Instant::now();
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await.expect("semaphore");
        let f = f.clone();
        set.spawn(async move {
            let t = Instant::now();
            f(i).await;
            drop(permit);
            t.elapsed()
        });
    }
    let mut latencies = Vec::with_capacity(n);
    while let Some(r) = set.join_next().await {
        latencies.push(r.expect("task"));
    }
    eprintln!("{name}: {n} in {:.1}s", started.elapsed().as_secs_f64());
    Stats {
        name: name.into(),
        n,
        seconds: started.elapsed().as_secs_f64(),
        latencies,
    }
}

/// The URL of a lookup's i-th request: `(scim base, k, i)`, k a seeded user's number.
type UrlOf = Box<dyn Fn(&str, usize, usize) -> String + Send + Sync>;

/// Where one store's data lives for the run.
enum Scratch {
    Postgres { url: String },
    Sqlite { dir: PathBuf },
}

impl Scratch {
    async fn create(kind: Kind) -> anyhow::Result<Self> {
        Ok(match kind {
            Kind::Postgres => {
                let base = std::env::var("DATABASE_URL")
                    .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
                let mut url = reqwest::Url::parse(&base)?;
                url.set_path("ameyo_scim_bench");
                let url = url.to_string();
                // Left over by a run that was killed.
                let _ = sqlx::Postgres::force_drop_database(&url).await;
                sqlx::Postgres::create_database(&url).await?;
                Scratch::Postgres { url }
            }
            Kind::Sqlite => {
                let dir = std::env::temp_dir().join(format!("ameyo-scim-bench-{}", Uuid::new_v4()));
                std::fs::create_dir_all(&dir)?;
                Scratch::Sqlite { dir }
            }
        })
    }

    fn url(&self) -> String {
        match self {
            Scratch::Postgres { url } => url.clone(),
            Scratch::Sqlite { dir } => format!("sqlite://{}", dir.join("bench.db").display()),
        }
    }

    /// Drop the database or remove the folder, whatever state the run left them in.
    async fn remove(self) {
        match self {
            // FORCE: a run that failed may have left connections open.
            Scratch::Postgres { url } => {
                if let Err(e) = sqlx::Postgres::force_drop_database(&url).await {
                    eprintln!("cannot drop {url}: {e}");
                }
            }
            Scratch::Sqlite { dir } => {
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    eprintln!("cannot remove {}: {e}", dir.display());
                }
            }
        }
    }
}

fn settings(db_url: &str, emulator: std::net::SocketAddr) -> anyhow::Result<Settings> {
    Ok(Settings::from_toml(&format!(
        r#"
[database]
url = "{db_url}"
max_connections = 32
[sync]
password_key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
concurrency = {DELIVERY_CONCURRENCY}
[scim]
max_page_size = 1000
[[tenants]]
id = "{TENANT}"
token_sha256 = ["{}"]
[tenants.ameyo]
base_url = "http://{emulator}"
contact_center_id = 1
login_user = "admin"
login_password = "bench"
[tenants.ameyo.mapping]
default_max_allowed_logins = 1
[[tenants.ameyo.mapping.rules]]
group = "CC Supervisors"
user_type = "Supervisor"
max_allowed_logins = 2
"#,
        token_digest(TOKEN)
    ))?)
}

/// Seed PostgreSQL with SQL, one statement per 100,000 users; returns a sample of ids.
async fn seed_postgres(pool: &sqlx::PgPool, users: i64) -> anyhow::Result<Vec<Uuid>> {
    let batch = 100_000i64;
    let mut from = 1;
    while from <= users {
        let to = (from + batch - 1).min(users);
        sqlx::query(
            "WITH u AS (
               INSERT INTO users (id, tenant_id, user_name, external_id, active, resource, version, created, last_modified)
               SELECT gen_random_uuid(), 'bench', 'user' || i || '@example.com', 'ext-' || i, true,
                      jsonb_build_object('userName', 'user' || i || '@example.com', 'externalId', 'ext-' || i,
                        'name', jsonb_build_object('givenName', 'Given' || i, 'familyName', 'Family'),
                        'emails', jsonb_build_array(jsonb_build_object('value', 'user' || i || '@example.com', 'type', 'work', 'primary', true))),
                      1, now(), now()
               FROM generate_series($1::bigint, $2::bigint) AS i
               RETURNING id)
             INSERT INTO sync_state (user_id, tenant_id, desired_version, synced_version, state, pending_since)
             SELECT id, 'bench', 1, 1, 'done', NULL FROM u",
        )
        .bind(from)
        .bind(to)
        .execute(pool)
        .await?;
        from = to + 1;
    }
    // What autovacuum does soon after a bulk load: visibility map and statistics.
    sqlx::query("VACUUM ANALYZE users").execute(pool).await?;
    sqlx::query("VACUUM ANALYZE sync_state")
        .execute(pool)
        .await?;
    // Whole pages of users, about ID_SAMPLE of them (all of a small table).
    let percent = (ID_SAMPLE as f64 * 100.0 / users as f64).min(100.0);
    Ok(
        sqlx::query_scalar("SELECT id FROM users TABLESAMPLE SYSTEM ($1) LIMIT $2")
            .bind(percent as f32)
            .bind(ID_SAMPLE as i64)
            .fetch_all(pool)
            .await?,
    )
}

/// Seed SQLite in one transaction of prepared INSERTs, the rows as the store writes
/// them: the derived `user_name_key` and `search` columns (the e-mail index follows by
/// trigger), users' times with microseconds, outbox times with milliseconds, and an
/// outbox row already delivered. No ANALYZE: a served store plans with the statistics
/// its migration wrote. Returns a sample of ids.
async fn seed_sqlite(pool: &sqlx::SqlitePool, users: i64) -> anyhow::Result<Vec<Uuid>> {
    const USER_SQL: &str = "
        INSERT INTO users (id, tenant_id, user_name, user_name_key, external_id, active,
                           resource, search, version, created, last_modified)
        VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6, ?7, 1, ?8, ?8)";
    const SYNC_SQL: &str = "
        INSERT INTO sync_state (user_id, tenant_id, desired_version, synced_version, state,
                                next_attempt_at, pending_since, updated_at)
        VALUES (?1, ?2, 1, 1, 'done', ?3, NULL, ?3)";
    // Distinct creation times, all before the users the run creates.
    let base = Utc::now() - chrono::Duration::microseconds(users + 1_000_000);
    let outbox_time = ameyo_scim::store::sqlite::format_time(Utc::now());
    let every = (users as usize).div_ceil(ID_SAMPLE);
    let mut sample = Vec::with_capacity(ID_SAMPLE);
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    for i in 1..=users {
        let id = Uuid::new_v4();
        let user_name = format!("user{i}@example.com");
        let resource: serde_json::Map<String, serde_json::Value> = serde_json::from_value(json!({
            "userName": user_name,
            "externalId": format!("ext-{i}"),
            "name": {"givenName": format!("Given{i}"), "familyName": "Family"},
            "emails": [{"value": user_name, "type": "work", "primary": true}],
        }))?;
        // The store's format for the users' own times (see migrations-sqlite).
        let created = (base + chrono::Duration::microseconds(i))
            .format("%Y-%m-%dT%H:%M:%S%.6fZ")
            .to_string();
        sqlx::query(USER_SQL)
            .bind(id.to_string())
            .bind(TENANT)
            .bind(&user_name)
            .bind(fold_case(&user_name))
            .bind(format!("ext-{i}"))
            .bind(serde_json::to_string(&resource)?)
            .bind(serde_json::to_string(&search_document(&resource))?)
            .bind(&created)
            .execute(&mut *tx)
            .await?;
        sqlx::query(SYNC_SQL)
            .bind(id.to_string())
            .bind(TENANT)
            .bind(&outbox_time)
            .execute(&mut *tx)
            .await?;
        if (i as usize).is_multiple_of(every) {
            sample.push(id);
        }
    }
    tx.commit().await?;
    Ok(sample)
}

/// What one store measured.
struct Report {
    kind: Kind,
    seeded_in: f64,
    rows: Vec<Stats>,
    delivered: i64,
    delivery_secs: f64,
    /// Ameyo calls the delivery run made.
    delivery_calls: u64,
    in_ameyo: usize,
    logins: u64,
    groups: Option<GroupReport>,
}

/// The Groups scenario: a large group built and changed 1,000 members at a time, and
/// the re-delivery of the users a watched group's membership change affects.
struct GroupReport {
    group_size: usize,
    rows: Vec<Stats>,
    /// Members added to the watched group in one PATCH, and its latency.
    redelivered: usize,
    patch_ms: f64,
    /// Until every affected user was in Ameyo with its new role.
    redelivery_secs: f64,
    /// Ameyo calls the re-delivery made (one update per affected user, no more).
    calls: usize,
    /// Rows an unwatched group's 1,000-member change made pending (none).
    unwatched_pending: i64,
}

/// Ids of up to `n` live users of the bench tenant, in creation order.
async fn user_ids(backend: &Backend, n: usize) -> anyhow::Result<Vec<String>> {
    let sql = "SELECT id FROM users WHERE tenant_id = 'bench' AND deleted_at IS NULL
               ORDER BY created, id LIMIT ";
    Ok(match &backend.db {
        Db::Postgres(pool) => {
            sqlx::query_scalar::<_, Uuid>(sqlx::AssertSqlSafe(format!("{sql}{n}")))
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|id| id.to_string())
                .collect()
        }
        Db::Sqlite(pool) => {
            sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(format!("{sql}{n}")))
                .fetch_all(pool)
                .await?
        }
    })
}

fn members_patch(add: &[String], remove: &[String]) -> serde_json::Value {
    let mut ops = Vec::new();
    if !remove.is_empty() {
        let values: Vec<_> = remove.iter().map(|id| json!({"value": id})).collect();
        ops.push(json!({"op": "Remove", "path": "members", "value": values}));
    }
    if !add.is_empty() {
        let values: Vec<_> = add.iter().map(|id| json!({"value": id})).collect();
        ops.push(json!({"op": "Add", "path": "members", "value": values}));
    }
    json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": ops})
}

async fn create_group(http: &reqwest::Client, scim: &str, name: &str) -> anyhow::Result<String> {
    let r = http
        .post(format!("{scim}/Groups"))
        .bearer_auth(TOKEN)
        .json(&json!({"displayName": name}))
        .send()
        .await?;
    anyhow::ensure!(r.status() == 201, "creating group {name}: {}", r.status());
    let body: serde_json::Value = r.json().await?;
    Ok(body["id"].as_str().unwrap_or_default().to_string())
}

/// Build a group of every seeded user, 1,000 members per PATCH; then swap 1,000
/// members out and in again; then move `delivered` users into the watched group and
/// time their re-delivery.
async fn measure_groups(
    backend: &Backend,
    http: &reqwest::Client,
    scim: &str,
    users: usize,
    delivered: Vec<String>,
    emulator: &Emulator,
    worker: Arc<ameyo_scim::sync::Worker>,
) -> anyhow::Result<GroupReport> {
    const BATCH: usize = 1000;
    let ids = Arc::new(user_ids(backend, users).await?);
    let big = create_group(http, scim, "Everyone").await?;
    let batches = ids.len().div_ceil(BATCH);
    let patch_big = {
        let (http, uri) = (http.clone(), format!("{scim}/Groups/{big}"));
        move |add: Vec<String>, remove: Vec<String>| {
            let request = http
                .patch(uri.clone())
                .bearer_auth(TOKEN)
                .json(&members_patch(&add, &remove));
            async move {
                let r = request.send().await.expect("request");
                assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
            }
        }
    };
    let mut rows = Vec::new();
    {
        let (ids, patch_big) = (ids.clone(), patch_big.clone());
        rows.push(
            run(
                "PATCH /Groups add 1,000 members (group growing to all users)",
                batches,
                1,
                move |i| {
                    let chunk = ids[i * BATCH..((i + 1) * BATCH).min(ids.len())].to_vec();
                    patch_big(chunk, vec![])
                },
            )
            .await,
        );
    }
    {
        // 1,000 members out and 1,000 back in, in a group of all users.
        let (ids, patch_big) = (ids.clone(), patch_big.clone());
        let swaps = 20.min(batches.max(1));
        rows.push(
            run(
                "PATCH /Groups remove 1,000 then add them back (full group)",
                swaps * 2,
                1,
                move |i| {
                    let chunk = ids[(i / 2) * BATCH..((i / 2 + 1) * BATCH).min(ids.len())].to_vec();
                    if i % 2 == 0 {
                        patch_big(vec![], chunk)
                    } else {
                        patch_big(chunk, vec![])
                    }
                },
            )
            .await,
        );
    }
    // An unwatched group's membership change makes nobody pending.
    let before = outstanding(backend).await?;
    let other = create_group(http, scim, "Unwatched").await?;
    let first: Vec<String> = ids.iter().take(BATCH).cloned().collect();
    let r = http
        .patch(format!("{scim}/Groups/{other}"))
        .bearer_auth(TOKEN)
        .json(&members_patch(&first, &[]))
        .send()
        .await?;
    anyhow::ensure!(r.status() == 200, "unwatched PATCH: {}", r.status());
    let unwatched_pending = outstanding(backend).await? - before;

    // The watched group: its members become Supervisors in Ameyo.
    let watched = create_group(http, scim, "CC Supervisors").await?;
    let moving: Vec<String> = delivered.into_iter().take(BATCH).collect();
    let calls_before = emulator.requests().len();
    let t = Instant::now();
    let r = http
        .patch(format!("{scim}/Groups/{watched}"))
        .bearer_auth(TOKEN)
        .json(&members_patch(&moving, &[]))
        .send()
        .await?;
    anyhow::ensure!(r.status() == 200, "watched PATCH: {}", r.status());
    let patch_ms = t.elapsed().as_secs_f64() * 1000.0;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(worker.run(shutdown.clone(), Duration::from_secs(10)));
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if outstanding(backend).await? == 0 {
            break;
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(600),
            "re-delivery did not finish in 10 minutes"
        );
    }
    let redelivery_secs = t.elapsed().as_secs_f64();
    shutdown.cancel();
    running.await?;
    let supervisors = emulator
        .users()
        .iter()
        .filter(|u| u["userType"] == json!("Supervisor"))
        .count();
    anyhow::ensure!(
        supervisors == moving.len(),
        "{supervisors} Supervisors in Ameyo, {} expected",
        moving.len()
    );
    Ok(GroupReport {
        group_size: ids.len(),
        rows,
        redelivered: moving.len(),
        patch_ms,
        redelivery_secs,
        calls: emulator.requests().len() - calls_before,
        unwatched_pending,
    })
}

fn p99_ms(s: &Stats) -> f64 {
    let mut l = s.latencies.clone();
    l.sort();
    l[((l.len() as f64 * 0.99) as usize).min(l.len() - 1)].as_secs_f64() * 1000.0
}

/// The emulator on its own: `n` creates over HTTP, in two halves, so a slowdown as it
/// fills shows as a second half slower than the first.
async fn emulator_alone(n: usize, concurrency: usize) -> anyhow::Result<(Stats, Stats)> {
    let n = n.max(2);
    let (_emulator, addr) = Emulator::spawn(EmulatorOptions::default()).await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let api = format!("http://{addr}/ameyorestapi");
    let login: serde_json::Value = http
        .post(format!("{api}/userLogin/login"))
        .json(&json!({"userId": "admin", "token": "bench", "forceLogin": true}))
        .send()
        .await?
        .json()
        .await?;
    let session = login["userSessionInfo"]["sessionId"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no session in {login}"))?
        .to_string();
    let half = |name: &'static str, from: usize, count: usize| {
        let (http, api, session) = (http.clone(), api.clone(), session.clone());
        run(name, count, concurrency, move |i| {
            let user = format!("alone{}", from + i);
            let request = http
                .post(format!("{api}/cc/contactCenterUsers"))
                .header("sessionId", session.as_str())
                .json(
                    &json!({"userId": user, "userType": "Agent", "userName": user,
                              "contactCenterId": 1, "userData": "pw", "maxAllowedLogins": "1"}),
                );
            async move {
                let r = request.send().await.expect("request");
                assert_eq!(r.status(), 200);
                let _ = r.bytes().await;
            }
        })
    };
    let first = half("emulator alone (first half)", 0, n / 2).await;
    let second = half("emulator alone (second half)", n / 2, n - n / 2).await;
    Ok((first, second))
}

/// Users waiting for delivery or being delivered, in every tenant.
async fn outstanding(backend: &Backend) -> anyhow::Result<i64> {
    Ok(backend
        .outbox
        .counts()
        .await?
        .iter()
        .filter(|c| c.state == "pending" || c.state == "leased")
        .map(|c| c.users)
        .sum())
}

async fn measure(kind: Kind, scratch: &Scratch, args: &Args) -> anyhow::Result<Report> {
    eprintln!("== {}", kind.name());
    let (emulator, emu_addr) = Emulator::spawn(EmulatorOptions::default()).await?;
    let settings = settings(&scratch.url(), emu_addr)?;
    // As `serve` opens it (for SQLite: the file locked to this process).
    let backend = Backend::open(&settings, Access::Serve).await?;

    eprintln!("seeding {} users...", args.users);
    let t = Instant::now();
    let ids = match &backend.db {
        Db::Postgres(pool) => seed_postgres(pool, args.users).await?,
        Db::Sqlite(pool) => seed_sqlite(pool, args.users).await?,
    };
    let seeded_in = t.elapsed().as_secs_f64();
    eprintln!("seeded in {seeded_in:.1}s");
    anyhow::ensure!(!ids.is_empty(), "no ids sampled from the seeded users");

    let owner = ameyo_scim::sync::this_owner();
    let tenants = ameyo_scim::tenants::build(&settings, &backend.sessions(&owner))?;
    // As `serve` does before it reports ready.
    backend
        .users
        .clone()
        .warm_up(tenants.iter().map(|t| t.id.clone()).collect())
        .await?;
    let state = AppState::new(&settings, &tenants, &backend).map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, router(state, Duration::from_secs(30))).await;
    });
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let scim = format!("http://{addr}/scim/v2");
    let n = args.requests;
    let users = args.users as usize;
    let mut rows = Vec::new();

    // Lookups, each request to the URL `url_of` gives.
    let get = |name: &'static str, n: usize, url_of: UrlOf| {
        let (http, scim) = (http.clone(), scim.clone());
        run(name, n, args.concurrency, move |i| {
            let k = (i * 7919) % users + 1;
            let request = http.get(url_of(&scim, k, i)).bearer_auth(TOKEN);
            async move {
                let r = request.send().await.expect("request");
                assert!(r.status().is_success(), "{}", r.status());
                let _ = r.bytes().await;
            }
        })
    };
    // The first lookups after start, all at once: what an IdP's first burst meets.
    rows.push(
        get(
            "GET /Users?filter=userName eq (first after start)",
            args.concurrency,
            Box::new(|scim, k, _| {
                format!(
                    "{scim}/Users?filter={}",
                    enc(format!("userName eq \"USER{k}@example.com\""))
                )
            }),
        )
        .await,
    );
    rows.push(
        get(
            "GET /Users?filter=userName eq",
            n,
            Box::new(|scim, k, _| {
                format!(
                    "{scim}/Users?filter={}",
                    enc(format!("userName eq \"USER{k}@example.com\""))
                )
            }),
        )
        .await,
    );
    rows.push(
        get(
            "GET /Users?filter=externalId eq",
            n,
            Box::new(|scim, k, _| {
                format!(
                    "{scim}/Users?filter={}",
                    enc(format!("externalId eq \"ext-{k}\""))
                )
            }),
        )
        .await,
    );
    rows.push(
        get(
            "GET /Users?filter=emails[type eq \"work\"].value eq",
            n,
            Box::new(|scim, k, _| {
                format!(
                    "{scim}/Users?filter={}",
                    enc(format!(
                        "emails[type eq \"work\"].value eq \"user{k}@example.com\""
                    ))
                )
            }),
        )
        .await,
    );
    let ids = Arc::new(ids);
    {
        let ids = ids.clone();
        rows.push(
            get(
                "GET /Users/{id}",
                n,
                Box::new(move |scim, _, i| format!("{scim}/Users/{}", ids[i % ids.len()])),
            )
            .await,
        );
    }
    // Unfiltered pages count every user of the tenant: fewer of them.
    let pages = (n / 10).max(10);
    rows.push(
        get(
            "GET /Users?startIndex=1&count=100",
            pages,
            Box::new(|scim, _, _| format!("{scim}/Users?startIndex=1&count=100")),
        )
        .await,
    );
    rows.push(
        get(
            "GET /Users?startIndex=<middle>&count=100",
            pages,
            Box::new(move |scim, _, _| format!("{scim}/Users?startIndex={}&count=100", users / 2)),
        )
        .await,
    );

    // An IdP import: one client walks the whole tenant in order, page after page.
    {
        let (http, scim) = (http.clone(), scim.clone());
        let walk = users.div_ceil(100).min(args.walk_pages);
        rows.push(
            run("GET /Users walk in order (count=100)", walk, 1, move |i| {
                let request = http
                    .get(format!("{scim}/Users?startIndex={}&count=100", i * 100 + 1))
                    .bearer_auth(TOKEN);
                async move {
                    let r = request.send().await.expect("request");
                    assert!(r.status().is_success(), "{}", r.status());
                    let _ = r.bytes().await;
                }
            })
            .await,
        );
    }

    // Writes: creates, then PATCHes of those users.
    let create = |prefix: &'static str| {
        let (http, scim) = (http.clone(), scim.clone());
        let created = Arc::new(std::sync::Mutex::new(Vec::new()));
        let out = created.clone();
        let f = move |i: usize| {
            let (created, user_name) = (created.clone(), format!("{prefix}{i}@example.com"));
            let request = http.post(format!("{scim}/Users")).bearer_auth(TOKEN).json(
                &json!({"userName": user_name, "emails": [{"value": user_name, "type": "work"}]}),
            );
            async move {
                let r = request.send().await.expect("request");
                assert_eq!(r.status(), 201);
                let body: serde_json::Value = r.json().await.expect("json");
                let id = body["id"].as_str().unwrap_or_default().to_string();
                created.lock().expect("lock").push(id);
            }
        };
        (f, out)
    };
    let (post, created) = create("new");
    rows.push(run("POST /Users", n, args.concurrency, post).await);
    let created = Arc::new(created.lock().expect("lock").clone());
    {
        let (http, scim, created) = (http.clone(), scim.clone(), created.clone());
        rows.push(
            run("PATCH /Users/{id}", n, args.concurrency, move |i| {
                let request = http
                    .patch(format!("{scim}/Users/{}", created[i % created.len()]))
                    .bearer_auth(TOKEN)
                    .json(&json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                        "Operations": [{"op": "replace", "path": "displayName", "value": format!("D{i}")}]}));
                async move {
                    let r = request.send().await.expect("request");
                    assert_eq!(r.status(), 200);
                }
            })
            .await,
        );
    }

    // Delivery: the users just created (and patched), topped up to --deliveries, to the
    // emulator.
    let waiting = outstanding(&backend).await? as usize;
    if waiting < args.deliveries {
        let (post, _) = create("extra");
        run(
            "POST /Users (delivery top-up, not reported)",
            args.deliveries - waiting,
            args.concurrency,
            post,
        )
        .await;
    }
    let delivered = outstanding(&backend).await?;
    // The loop `serve` runs, which keeps `sync.concurrency` deliveries in flight.
    let worker = Arc::new(ameyo_scim::sync::Worker::from_tenants(
        &settings.sync,
        &tenants,
        backend.outbox.clone(),
        backend.cipher.clone(),
        owner,
    ));
    let shutdown = tokio_util::sync::CancellationToken::new();
    emulator.set_faults(ameyo_emulator::Faults {
        latency_ms: args.ameyo_latency_ms,
        ..Default::default()
    });
    let calls_before = emulator.request_count();
    let t = Instant::now();
    let running = tokio::spawn(
        worker
            .clone()
            .run(shutdown.clone(), Duration::from_secs(10)),
    );
    // Every user delivered is new to the emulator, which answers how many it holds
    // cheaply; the outbox (a count over every seeded user) is asked once they are all
    // there, or now and then in case some never arrive.
    let mut last_asked = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let arrived = emulator.user_count() as i64 >= delivered;
        if !arrived && last_asked.elapsed() < Duration::from_secs(1) {
            continue;
        }
        last_asked = Instant::now();
        if outstanding(&backend).await? == 0 {
            break;
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(600),
            "delivery did not finish in 10 minutes"
        );
    }
    let delivery_secs = t.elapsed().as_secs_f64();
    let delivery_calls = emulator.request_count() - calls_before;
    shutdown.cancel();
    running.await?;
    emulator.set_faults(ameyo_emulator::Faults::default());
    eprintln!("delivered {delivered} in {delivery_secs:.1}s");
    let in_ameyo = emulator.user_count();
    let logins = emulator.login_count();

    let groups = if args.groups {
        eprintln!("groups...");
        Some(
            measure_groups(
                &backend,
                &http,
                &scim,
                users,
                created.to_vec(),
                &emulator,
                worker,
            )
            .await?,
        )
    } else {
        None
    };

    server.abort();
    match &backend.db {
        Db::Postgres(pool) => pool.close().await,
        Db::Sqlite(pool) => pool.close().await,
    }
    Ok(Report {
        kind,
        seeded_in,
        rows,
        delivered,
        delivery_secs,
        delivery_calls,
        in_ameyo,
        logins,
        groups,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let kinds: &[Kind] = match args.store {
        StoreChoice::Postgres => &[Kind::Postgres],
        StoreChoice::Sqlite => &[Kind::Sqlite],
        StoreChoice::Both => &[Kind::Postgres, Kind::Sqlite],
    };
    ameyo_scim::telemetry::metrics::install();

    let alone = if args.emulator_creates > 0 {
        Some(emulator_alone(args.emulator_creates as usize, args.concurrency).await?)
    } else {
        None
    };
    let mut reports = Vec::new();
    for &kind in kinds {
        let scratch = Scratch::create(kind).await?;
        let report = measure(kind, &scratch, &args).await;
        scratch.remove().await;
        reports.push(report?);
    }

    // One row per operation and store, the stores of one operation together.
    println!("| store | operation | requests | per second | p50 ms | p95 ms | p99 ms |");
    println!("|---|---|---|---|---|---|---|");
    let operations = reports.first().map_or(0, |r| r.rows.len());
    for i in 0..operations {
        for r in &reports {
            println!("{}", r.rows[i].row(r.kind.name()));
        }
    }
    println!();
    for r in &reports {
        let calls_per_sec = r.delivery_calls as f64 / r.delivery_secs;
        // Each delivery makes one call at a time: `sync.concurrency` calls in flight at
        // best, each taking the added latency.
        let ceiling = if args.ameyo_latency_ms > 0 {
            let ideal = DELIVERY_CONCURRENCY as f64 * 1000.0 / args.ameyo_latency_ms as f64;
            format!(
                ", {:.0}% of concurrency / latency = {ideal:.0} calls/s with {} ms added per call",
                100.0 * calls_per_sec / ideal,
                args.ameyo_latency_ms
            )
        } else {
            String::new()
        };
        println!(
            "delivery ({}): {} pending users delivered to the emulator in {:.1}s ({:.0} users/s, {} in Ameyo, {} logins; {} Ameyo calls, {calls_per_sec:.0} calls/s{ceiling})",
            r.kind.name(),
            r.delivered,
            r.delivery_secs,
            r.delivered as f64 / r.delivery_secs,
            r.in_ameyo,
            r.logins,
            r.delivery_calls,
        );
    }
    let group_reports: Vec<_> = reports
        .iter()
        .filter_map(|r| r.groups.as_ref().map(|g| (r.kind, g)))
        .collect();
    if !group_reports.is_empty() {
        println!();
        println!("| store | operation | requests | per second | p50 ms | p95 ms | p99 ms |");
        println!("|---|---|---|---|---|---|---|");
        for i in 0..group_reports[0].1.rows.len() {
            for (kind, g) in &group_reports {
                println!("{}", g.rows[i].row(kind.name()));
            }
        }
        println!();
        for (kind, g) in &group_reports {
            println!(
                "groups ({}): group of {} members; PATCH adding {} members to a watched group answered in {:.0} ms, \
                 all {} re-delivered in {:.1}s ({:.0} users/s, {} Ameyo calls); an unwatched group's 1,000-member change made {} users pending",
                kind.name(),
                g.group_size,
                g.redelivered,
                g.patch_ms,
                g.redelivered,
                g.redelivery_secs,
                g.redelivered as f64 / g.redelivery_secs,
                g.calls,
                g.unwatched_pending,
            );
        }
    }
    if let Some((first, second)) = alone {
        println!();
        println!(
            "emulator alone: {} creates over HTTP, {} in flight: {:.0}/s for the first half, {:.0}/s for the second (p99 {:.1} ms, {:.1} ms)",
            first.n + second.n,
            args.concurrency,
            first.n as f64 / first.seconds,
            second.n as f64 / second.seconds,
            p99_ms(&first),
            p99_ms(&second),
        );
    }
    let seeded: Vec<String> = reports
        .iter()
        .map(|r| format!("{} in {:.1}s", r.kind.name(), r.seeded_in))
        .collect();
    println!(
        "seeded users: {} ({}); concurrency: {}",
        args.users,
        seeded.join(", "),
        args.concurrency
    );
    Ok(())
}
