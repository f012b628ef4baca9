//! Measures the service where the IdPs load it: lookups and writes over real HTTP at a
//! given number of users, and delivery throughput to the Ameyo emulator.
//!
//!     cargo run --release --example bench -- --users 1000000
//!
//! Uses its own database (`ameyo_scim_bench`, dropped and created) on the server in
//! DATABASE_URL. Prints a Markdown table.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ameyo_emulator::{Emulator, EmulatorOptions};
use ameyo_scim::config::Settings;
use ameyo_scim::http::auth::token_digest;
use ameyo_scim::http::{AppState, router};
use clap::Parser;
use serde_json::json;
use sqlx::migrate::MigrateDatabase;

#[derive(Parser)]
struct Args {
    /// Users seeded before measuring.
    #[arg(long, default_value_t = 100_000)]
    users: i64,
    /// Requests per measured operation.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Users delivered to the emulator in the delivery run.
    #[arg(long, default_value_t = 2000)]
    deliveries: usize,
}

const TOKEN: &str = "bench-token";

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
    fn row(&self) -> String {
        let mut l = self.latencies.clone();
        l.sort();
        let q = |p: f64| l[((l.len() as f64 * p) as usize).min(l.len() - 1)].as_secs_f64() * 1000.0;
        format!(
            "| {} | {} | {:.0} | {:.1} | {:.1} | {:.1} |",
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let base = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let mut url = reqwest::Url::parse(&base)?;
    url.set_path("ameyo_scim_bench");
    let db_url = url.to_string();
    let _ = sqlx::Postgres::drop_database(&db_url).await;
    sqlx::Postgres::create_database(&db_url).await?;

    let (emulator, emu_addr) = Emulator::spawn(EmulatorOptions::default()).await?;
    let settings = Settings::from_toml(&format!(
        r#"
[database]
url = "{db_url}"
max_connections = 32
[sync]
password_key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
concurrency = 16
[scim]
max_page_size = 1000
[[tenants]]
id = "bench"
token_sha256 = ["{}"]
[tenants.ameyo]
base_url = "http://{emu_addr}"
contact_center_id = 1
login_user = "admin"
login_password = "bench"
"#,
        token_digest(TOKEN)
    ))?;
    let store = ameyo_scim::server::migrate(&settings).await?;
    let ameyo_scim::store::backend::Db::Postgres(pool) = store.db.clone() else {
        anyhow::bail!("the benchmark seeds PostgreSQL");
    };

    eprintln!("seeding {} users...", args.users);
    let t = Instant::now();
    let batch = 100_000i64;
    let mut from = 1;
    while from <= args.users {
        let to = (from + batch - 1).min(args.users);
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
        .execute(&pool)
        .await?;
        from = to + 1;
    }
    // What autovacuum does soon after a bulk load: visibility map and statistics.
    sqlx::query("VACUUM ANALYZE users").execute(&pool).await?;
    sqlx::query("VACUUM ANALYZE sync_state")
        .execute(&pool)
        .await?;
    eprintln!("seeded in {:.1}s", t.elapsed().as_secs_f64());
    let ids: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT id FROM users TABLESAMPLE SYSTEM (1) LIMIT 5000")
            .fetch_all(&pool)
            .await?;

    ameyo_scim::telemetry::metrics::install();
    let tenants = ameyo_scim::tenants::build(&settings, &|_| None)?;
    let state =
        AppState::new(&settings, &tenants, store.users.clone()).map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, router(state, Duration::from_secs(30))).await;
    });
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let scim = format!("http://{addr}/scim/v2");
    let n = args.requests;
    let users = args.users.max(1) as usize;
    let mut rows = Vec::new();

    macro_rules! get {
        ($name:expr, $url:expr) => {
            get!($name, $url, n)
        };
        ($name:expr, $url:expr, $n:expr) => {{
            let (http, scim) = (http.clone(), scim.clone());
            let url_of = Arc::new($url);
            rows.push(
                run($name, $n, args.concurrency, move |i| {
                    let (http, scim) = (http.clone(), scim.clone());
                    let k = (i * 7919) % users + 1;
                    let url = url_of(&scim, k, i);
                    async move {
                        let r = http
                            .get(url)
                            .bearer_auth(TOKEN)
                            .send()
                            .await
                            .expect("request");
                        assert!(r.status().is_success(), "{}", r.status());
                        let _ = r.bytes().await;
                    }
                })
                .await,
            );
        }};
    }
    get!(
        "GET /Users?filter=userName eq",
        |scim: &String, k: usize, _| format!(
            "{scim}/Users?filter={}",
            enc(format!("userName eq \"USER{k}@example.com\""))
        )
    );
    get!(
        "GET /Users?filter=externalId eq",
        |scim: &String, k: usize, _| format!(
            "{scim}/Users?filter={}",
            enc(format!("externalId eq \"ext-{k}\""))
        )
    );
    get!(
        "GET /Users?filter=emails[type eq \"work\"].value eq",
        |scim: &String, k: usize, _| format!(
            "{scim}/Users?filter={}",
            enc(format!(
                "emails[type eq \"work\"].value eq \"user{k}@example.com\""
            ))
        )
    );
    let ids = Arc::new(ids);
    {
        let ids = ids.clone();
        get!(
            "GET /Users/{id}",
            move |scim: &String, _k: usize, i: usize| format!(
                "{scim}/Users/{}",
                ids[i % ids.len()]
            )
        );
    }
    // Unfiltered pages count every user of the tenant: fewer of them.
    let pages = (n / 10).max(10);
    get!(
        "GET /Users?startIndex=1&count=100",
        |scim: &String, _k: usize, _| format!("{scim}/Users?startIndex=1&count=100"),
        pages
    );
    get!(
        "GET /Users?startIndex=<middle>&count=100",
        move |scim: &String, _k: usize, _| format!(
            "{scim}/Users?startIndex={}&count=100",
            users / 2
        ),
        pages
    );

    // Writes: creates, then PATCHes of those users.
    let created = Arc::new(std::sync::Mutex::new(Vec::with_capacity(n)));
    {
        let (http, scim, created) = (http.clone(), scim.clone(), created.clone());
        rows.push(
            run("POST /Users", n, args.concurrency, move |i| {
                let (http, scim, created) = (http.clone(), scim.clone(), created.clone());
                async move {
                    let r = http
                        .post(format!("{scim}/Users"))
                        .bearer_auth(TOKEN)
                        .json(&json!({"userName": format!("new{i}@example.com"), "emails": [{"value": format!("new{i}@example.com"), "type": "work"}]}))
                        .send()
                        .await
                        .expect("request");
                    assert_eq!(r.status(), 201);
                    let body: serde_json::Value = r.json().await.expect("json");
                    created.lock().expect("lock").push(body["id"].as_str().unwrap_or_default().to_string());
                }
            })
            .await,
        );
    }
    let created = Arc::new(created.lock().expect("lock").clone());
    {
        let (http, scim, created) = (http.clone(), scim.clone(), created.clone());
        rows.push(
            run("PATCH /Users/{id}", n, args.concurrency, move |i| {
                let (http, scim, created) = (http.clone(), scim.clone(), created.clone());
                async move {
                    let r = http
                        .patch(format!("{scim}/Users/{}", created[i % created.len()]))
                        .bearer_auth(TOKEN)
                        .json(&json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                            "Operations": [{"op": "replace", "path": "displayName", "value": format!("D{i}")}]}))
                        .send()
                        .await
                        .expect("request");
                    assert_eq!(r.status(), 200);
                }
            })
            .await,
        );
    }

    // Delivery: the users just created (and patched) to the emulator.
    let worker = Arc::new(
        ameyo_scim::sync::Worker::new(&settings, pool.clone(), store.cipher.clone())
            .map_err(anyhow::Error::msg)?,
    );
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sync_state WHERE state = 'pending'")
            .fetch_one(&pool)
            .await?;
    let t = Instant::now();
    let mut delivered = 0;
    while delivered < pending as usize {
        let n = worker.run_until_idle().await?;
        if n == 0 {
            break;
        }
        delivered += n;
    }
    let seconds = t.elapsed().as_secs_f64();
    let in_ameyo = emulator.users().len();

    println!("| operation | requests | per second | p50 ms | p95 ms | p99 ms |");
    println!("|---|---|---|---|---|---|");
    for r in &rows {
        println!("{}", r.row());
    }
    println!();
    println!(
        "delivery: {pending} pending users delivered to the emulator in {seconds:.1}s ({:.0} users/s, {} in Ameyo, {} logins)",
        pending as f64 / seconds,
        in_ameyo,
        emulator.login_count()
    );
    println!(
        "seeded users: {}; concurrency: {}",
        args.users, args.concurrency
    );
    drop(pool);
    let _ = sqlx::Postgres::drop_database(&db_url).await;
    Ok(())
}
