//! The baselines each figure is compared with, measured in the same invocation:
//! `pgbench` running the statements the service runs (PostgreSQL), the store's own
//! calls without HTTP (the embedded store, which `pgbench` cannot reach), and the Ameyo
//! emulator alone.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::{BenchArgs, Scratch, TENANT, process, progress, run};
use crate::store::ListQuery;
use crate::store::backend::{Backend, Db};

/// A rate and what produced it.
pub(super) struct Rate {
    pub per_second: Option<f64>,
    pub what: String,
    /// The CPU one operation cost, where the run measured it.
    pub cpu: Option<super::cpu::PerOp>,
}

/// The emulator alone (its own process): creates over HTTP, as many as the initial
/// sync delivers, `--concurrency` in flight. What no delivery can beat.
pub(super) type Alone = Rate;

/// The read baseline: `userName` lookups without the service.
pub(super) struct Lookups {
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub what: String,
}

pub(super) async fn emulator_alone(args: &BenchArgs) -> anyhow::Result<Alone> {
    let n = args.sync_users.max(2) as usize;
    let concurrency = args.concurrency as usize;
    let emulator = process::Emulator::start().await?;
    let per_second = creates_straight(
        "emulator alone: creates",
        &emulator.base_url(),
        "alone",
        n,
        concurrency,
    )
    .await?;
    emulator.stop().await;
    Ok(Rate {
        per_second: Some(per_second),
        what: format!("the emulator process alone, {concurrency} in flight"),
        cpu: None,
    })
}

/// `pgbench`: `--pgbench`, on PATH, or the newest under /usr/lib/postgresql.
fn pgbench(args: &BenchArgs) -> Option<PathBuf> {
    if let Some(p) = &args.pgbench {
        return Some(p.clone());
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("pgbench");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let p = e.path().join("bin/pgbench");
            p.is_file().then_some((version, p))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p)
}

/// What one `pgbench` run reported.
struct PgbenchRun {
    tps: f64,
    /// Each transaction's latency, when it was asked to log them.
    latencies_us: Vec<u64>,
}

/// One `pgbench` invocation.
struct Pgbench<'a> {
    bin: &'a Path,
    url: &'a str,
    /// Where the script and the transaction logs go.
    dir: &'a Path,
    name: &'a str,
    script: &'a str,
    /// `-M`: prepared, extended or simple.
    mode: &'a str,
    clients: usize,
    per_client: usize,
    /// `-D` variables.
    vars: &'a [(&'a str, String)],
    /// Read back every transaction's latency (`-l`).
    log: bool,
}

/// Run the script with `clients` clients, `per_client` transactions each.
async fn run_pgbench(p: Pgbench<'_>) -> anyhow::Result<PgbenchRun> {
    let Pgbench {
        bin,
        url,
        dir,
        name,
        script,
        mode,
        clients,
        per_client,
        vars,
        log,
    } = p;
    let file = dir.join(format!("{name}.sql"));
    std::fs::write(&file, script)?;
    let prefix = dir.join(format!("{name}-log"));
    let threads = clients.min(std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut cmd = tokio::process::Command::new(bin);
    cmd.arg("-n")
        .arg("-M")
        .arg(mode)
        .arg("-c")
        .arg(clients.to_string())
        .arg("-j")
        .arg(threads.to_string())
        .arg("-t")
        .arg(per_client.to_string())
        .arg("-f")
        .arg(&file);
    for (k, v) in vars {
        cmd.arg("-D").arg(format!("{k}={v}"));
    }
    if log {
        cmd.arg("-l")
            .arg(format!("--log-prefix={}", prefix.display()));
    }
    // The service's own connections run with JIT off (store::postgres): so do these.
    cmd.arg(url)
        .env("PGOPTIONS", "-c jit=off")
        .kill_on_drop(true);
    let out = cmd.output().await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "pgbench {name} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let tps = stdout
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .ok_or_else(|| anyhow::anyhow!("no tps in pgbench's output: {stdout}"))?;
    let mut latencies_us = Vec::new();
    if log {
        let stem = format!("{name}-log.");
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if !entry.file_name().to_string_lossy().starts_with(&stem) {
                continue;
            }
            // client_id transaction_no time_us script_no time_epoch time_us
            for line in std::fs::read_to_string(entry.path())?.lines() {
                if let Some(us) = line.split_whitespace().nth(2).and_then(|v| v.parse().ok()) {
                    latencies_us.push(us);
                }
            }
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(PgbenchRun { tps, latencies_us })
}

/// Replace `$n` placeholders, highest first so `$1` does not eat `$10`.
fn substitute(sql: &str, values: &[&str]) -> anyhow::Result<String> {
    let mut out = sql.to_string();
    for (i, v) in values.iter().enumerate().rev() {
        out = out.replace(&format!("${}", i + 1), v);
    }
    anyhow::ensure!(
        !out.contains(&format!("${}", values.len() + 1)),
        "the statement has more parameters than the baseline fills: {sql}"
    );
    Ok(out)
}

/// The write baseline, right after the POST run: on PostgreSQL `pgbench` running the
/// statement a create commits (the same text, the same kind of resource, the same
/// tenant, so the same indexes and count triggers), prepared, `--concurrency` clients;
/// on SQLite the store's own create, called without HTTP.
pub(super) async fn creates(
    backend: &Backend,
    scratch: &Scratch,
    args: &BenchArgs,
) -> anyhow::Result<Rate> {
    let clients = args.concurrency as usize;
    let n = args.requests as usize;
    match &backend.db {
        Db::Postgres(pool) => {
            let Some(bin) = pgbench(args) else {
                return Ok(Rate {
                    per_second: None,
                    what: "pgbench not found".into(),
                    cpu: None,
                });
            };
            // The resource as the service stored one of the users it created.
            let resource: String = sqlx::query_scalar(
                "SELECT resource::text FROM users WHERE tenant_id = $1 AND user_name = 'new0@example.com'",
            )
            .bind(TENANT)
            .fetch_one(pool)
            .await?;
            let resource = resource.replace("new0@example.com", "NAME@example.com");
            let sql = substitute(
                crate::store::postgres::CREATE_SQL,
                &[
                    "gen_random_uuid()",
                    ":tenant",
                    "('pgb' || :r || '@example.com')",
                    "NULL",
                    "true",
                    "replace(:resource, 'NAME', 'pgb' || :r)::jsonb",
                    "NULL",
                ],
            )?;
            let script = format!("\\set r random(1, 1000000000000)\n{sql};\n");
            progress("pgbench: the create statement...");
            let url = scratch.url();
            let vars = [("tenant", TENANT.to_string()), ("resource", resource)];
            let cpu_before = super::cpu::Reading::now();
            let result = run_pgbench(Pgbench {
                bin: &bin,
                url: &url,
                dir: scratch.dir(),
                name: "create",
                script: &script,
                mode: "prepared",
                clients,
                per_client: n.div_ceil(clients),
                vars: &vars,
                log: false,
            })
            .await;
            let cpu =
                super::cpu::Reading::now().per_op_since(&cpu_before, clients * n.div_ceil(clients));
            // Its users must not be delivered or counted by what follows.
            sqlx::query("DELETE FROM users WHERE tenant_id = $1 AND user_name LIKE 'pgb%'")
                .bind(TENANT)
                .execute(pool)
                .await?;
            let result = result?;
            progress(format!("pgbench: {:.0} creates/s", result.tps));
            Ok(Rate {
                per_second: Some(result.tps),
                what: format!("pgbench, the create statement, {clients} clients"),
                cpu: Some(cpu),
            })
        }
        Db::Sqlite(_) => {
            let users = backend.users.clone();
            let cpu_before = super::cpu::Reading::now();
            let stats = run("store create (no HTTP)", n, clients, move |i| {
                let users = users.clone();
                async move {
                    let name = format!("direct{i}@example.com");
                    let input = crate::scim::resource::parse_user(json!({
                        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                        "userName": name,
                        "emails": [{"value": name, "type": "work"}],
                    }))
                    .expect("valid user");
                    users.create(TENANT, input).await.expect("create");
                }
            })
            .await;
            let cpu = super::cpu::Reading::now().per_op_since(&cpu_before, n);
            // Their outbox rows must not be delivered by what follows.
            if let Db::Sqlite(pool) = &backend.db {
                sqlx::query(
                    "DELETE FROM sync_state WHERE user_id IN
                       (SELECT id FROM users WHERE tenant_id = ?1 AND user_name LIKE 'direct%')",
                )
                .bind(TENANT)
                .execute(pool)
                .await?;
                sqlx::query("DELETE FROM users WHERE tenant_id = ?1 AND user_name LIKE 'direct%'")
                    .bind(TENANT)
                    .execute(pool)
                    .await?;
            }
            Ok(Rate {
                per_second: Some(stats.per_second()),
                what: format!("the store's create without HTTP, {clients} at once"),
                cpu: Some(cpu),
            })
        }
    }
}

/// The read baseline: `userName eq` lookups without the service, at
/// `--lookup-concurrency`: on PostgreSQL `pgbench` running the statements the lookup
/// runs (the page and its count, as unnamed statements like the store's); on SQLite
/// the store's own list call.
pub(super) async fn lookups(
    backend: &Backend,
    scratch: &Scratch,
    args: &BenchArgs,
    users: usize,
) -> anyhow::Result<Option<Lookups>> {
    let clients = args.lookup_concurrency as usize;
    let n = args.requests as usize;
    match &backend.db {
        Db::Postgres(_) => {
            let Some(bin) = pgbench(args) else {
                return Ok(None);
            };
            let q = ListQuery {
                filter: Some(crate::scim::filter::parse(r#"userName eq "x""#)?),
                sort_by: None,
                descending: false,
                start_index: 1,
                count: 100,
            };
            let mut script = format!("\\set k random(1, {users})\n");
            for sql in crate::store::postgres::list_statements(TENANT, &q)? {
                // The tenant, the userName, the page's LIMIT and OFFSET (a probe's
                // LIMIT is 2: one match, or a sign that the count is needed).
                let limit = match crate::store::single_match_probe(&q) {
                    Some(probe) => probe.count.to_string(),
                    None => q.count.to_string(),
                };
                let sql = substitute(
                    &sql,
                    &[":tenant", "('USER' || :k || '@example.com')", &limit, "0"],
                )?;
                script.push_str(&sql);
                script.push_str(";\n");
            }
            progress("pgbench: the lookup statements...");
            let url = scratch.url();
            let result = run_pgbench(Pgbench {
                bin: &bin,
                url: &url,
                dir: scratch.dir(),
                name: "lookup",
                script: &script,
                mode: "extended",
                clients,
                per_client: n.div_ceil(clients),
                vars: &[("tenant", TENANT.to_string())],
                log: true,
            })
            .await?;
            let mut l = result.latencies_us;
            l.sort_unstable();
            let q = |p: f64| {
                l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
                    .map_or(0.0, |us| *us as f64 / 1000.0)
            };
            Ok(Some(Lookups {
                per_second: result.tps,
                p50_ms: q(0.5),
                p99_ms: q(0.99),
                what: format!("pgbench, the lookup's statements, {clients} clients"),
            }))
        }
        Db::Sqlite(_) => {
            let store = backend.users.clone();
            let stats = run("store lookup (no HTTP)", n, clients, move |i| {
                let store = store.clone();
                let k = (i * 7919) % users + 1;
                async move {
                    let q = ListQuery {
                        filter: Some(
                            crate::scim::filter::parse(&format!(
                                "userName eq \"USER{k}@example.com\""
                            ))
                            .expect("filter"),
                        ),
                        sort_by: None,
                        descending: false,
                        start_index: 1,
                        count: 100,
                    };
                    let page = store.list(TENANT, &q).await.expect("list");
                    assert_eq!(page.total, 1);
                }
            })
            .await;
            Ok(Some(Lookups {
                per_second: stats.per_second(),
                p50_ms: stats.quantile_ms(0.5),
                p99_ms: stats.quantile_ms(0.99),
                what: format!("the store's lookup without HTTP, {clients} at once"),
            }))
        }
    }
}

/// Ameyo creates sent straight to the emulator at `base_url` over HTTP, `concurrency` in
/// flight, users `<prefix><i>`, after one login: the calls per second.
pub(super) async fn creates_straight(
    label: &str,
    base_url: &str,
    prefix: &str,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<f64> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let api = format!("{base_url}/ameyorestapi");
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
    let prefix = prefix.to_string();
    let stats = run(label, n, concurrency, move |i| {
        let user = format!("{prefix}{i}");
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
    .await;
    Ok(stats.per_second())
}
