//! `ameyo-scim bench`: every scenario the service is sized by, each beside a baseline
//! measured in the same invocation, on PostgreSQL, on the embedded store, or on both.
//!
//! For each store it seeds the users, then
//! 1. drives the service in this process over real HTTP on loopback ([`inproc`]): the
//!    IdPs' lookups, unfiltered pages, creates and PATCHes, delivery to the Ameyo
//!    emulator with no added latency and with `--ameyo-latency-ms`, and Groups;
//! 2. measures the baselines ([`baseline`]): `pgbench` running the very statement a
//!    create commits and the statements a `userName` lookup runs (PostgreSQL), the
//!    store's own calls without HTTP (SQLite), the emulator alone;
//! 3. starts `serve` and the emulator as processes of their own ([`process`]): lookups
//!    from the first request after start, pages at several depths, an initial sync end
//!    to end (SCIM in until the emulator holds every user), the recovery after a
//!    SIGKILL, and the service's peak resident memory.
//!
//! It writes one results table (figure, baseline, ratio, target, met), the machine and
//! the command, then the detailed tables, as Markdown on stdout (and `--out`), or as
//! JSON with `--json`. Progress goes to stderr unless `--json`.

mod baseline;
mod cpu;
mod inproc;
mod process;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use serde::Serialize;
use serde_json::json;
use uuid::Uuid;

use crate::config::Settings;
use crate::http::auth::token_digest;
use sqlx::migrate::MigrateDatabase;

/// The options of `ameyo-scim bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Users seeded before measuring.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(i64).range(1..=10_000_000))]
    pub users: i64,
    /// Requests per measured operation.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub requests: u64,
    /// Requests in flight at once for writes and the in-process lookups.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub concurrency: u64,
    /// Clients of the lookups and pages against the `serve` process.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub lookup_concurrency: u64,
    /// Users delivered to the emulator in each delivery run (no added latency, then
    /// with `--ameyo-latency-ms`).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub deliveries: u64,
    /// Milliseconds the emulator adds to every Ameyo call in the delayed delivery run
    /// (0: no delayed run).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub ameyo_latency_ms: u64,
    /// Users of the initial sync end to end: POSTed to `serve` until the emulator (its
    /// own process) holds them all.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub sync_users: u64,
    /// Also measure Groups: a group of every seeded user built and changed 1,000
    /// members per PATCH, and the re-delivery a watched group's change causes.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub groups: bool,
    /// Pages of the in-order walk through the tenant (100 users each), at most.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub walk_pages: u64,
    /// The store(s) to measure; `both` runs PostgreSQL, then SQLite.
    #[arg(long, value_enum, default_value_t = StoreChoice::Both)]
    pub store: StoreChoice,
    /// The PostgreSQL server the benchmark creates its database on (dropped at the end).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub database_url: String,
    /// The `pgbench` to run the PostgreSQL baselines with (default: on PATH, or the
    /// newest under /usr/lib/postgresql).
    #[arg(long)]
    pub pgbench: Option<PathBuf>,
    /// Print the results as JSON, and no progress.
    #[arg(long)]
    pub json: bool,
    /// Also write the Markdown report to this file (with `--json` too).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
pub enum StoreChoice {
    Postgres,
    Sqlite,
    Both,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
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
const TENANT: &str = "bench";
/// A base64 AES key for the outbox's sealed passwords (the runs send none).
const PASSWORD_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

static QUIET: AtomicBool = AtomicBool::new(false);

/// A progress line on stderr, unless `--json`.
fn progress(line: impl AsRef<str>) {
    if !QUIET.load(Ordering::Relaxed) {
        eprintln!("{}", line.as_ref());
    }
}

fn enc(s: String) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// One measured operation: how many, how long, each latency.
#[derive(Debug, Clone)]
struct Stats {
    name: String,
    n: usize,
    seconds: f64,
    latencies: Vec<Duration>,
}

impl Stats {
    fn quantile_ms(&self, p: f64) -> f64 {
        let mut l = self.latencies.clone();
        l.sort();
        if l.is_empty() {
            return 0.0;
        }
        l[((l.len() as f64 * p) as usize).min(l.len() - 1)].as_secs_f64() * 1000.0
    }

    fn per_second(&self) -> f64 {
        self.n as f64 / self.seconds.max(1e-9)
    }

    fn first(&self, n: usize) -> Stats {
        Stats {
            name: self.name.clone(),
            n: n.min(self.n),
            seconds: self.seconds,
            latencies: self.latencies.iter().take(n).copied().collect(),
        }
    }

    fn detail(&self, store: &str) -> Detail {
        Detail {
            store: store.to_string(),
            operation: self.name.clone(),
            requests: self.n,
            per_second: self.per_second(),
            p50_ms: self.quantile_ms(0.5),
            p95_ms: self.quantile_ms(0.95),
            p99_ms: self.quantile_ms(0.99),
        }
    }
}

/// `n` calls of `f`, `concurrency` at once; latencies in the order the calls started.
async fn run<F, Fut>(name: &str, n: usize, concurrency: usize, f: F) -> Stats
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let f = Arc::new(f);
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut set = tokio::task::JoinSet::new();
    let started = Instant::now();
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await.expect("semaphore");
        let f = f.clone();
        set.spawn(async move {
            let t = Instant::now();
            f(i).await;
            drop(permit);
            (i, t.elapsed())
        });
    }
    let mut latencies = vec![Duration::ZERO; n];
    while let Some(r) = set.join_next().await {
        let (i, took) = r.expect("task");
        latencies[i] = took;
    }
    let seconds = started.elapsed().as_secs_f64();
    progress(format!("{name}: {n} in {seconds:.1}s"));
    Stats {
        name: name.into(),
        n,
        seconds,
        latencies,
    }
}

/// A row of a detailed table.
#[derive(Debug, Clone, Serialize)]
struct Detail {
    store: String,
    operation: String,
    requests: usize,
    per_second: f64,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
}

/// What a figure is held to.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
enum Target {
    /// The figure at least this.
    AtLeast(f64),
    /// The figure below this.
    Below(f64),
    /// The figure over its baseline at least this.
    RatioAtLeast(f64),
    /// Reported, no target.
    None,
}

/// A line of the results table.
#[derive(Debug, Clone, Serialize)]
struct Outcome {
    scenario: String,
    store: String,
    figure: f64,
    unit: &'static str,
    /// The baseline's figure, in the same unit, and what it is.
    baseline: Option<f64>,
    baseline_is: String,
    ratio: Option<f64>,
    target: Target,
    met: Option<bool>,
}

impl Outcome {
    fn new(scenario: &str, kind: Kind, figure: f64, unit: &'static str, target: Target) -> Self {
        let mut o = Outcome {
            scenario: scenario.into(),
            store: kind.name().into(),
            figure,
            unit,
            baseline: None,
            baseline_is: String::new(),
            ratio: None,
            target,
            met: None,
        };
        o.judge();
        o
    }

    fn against(mut self, baseline: Option<f64>, what: impl Into<String>) -> Self {
        self.baseline = baseline.filter(|b| *b > 0.0);
        self.baseline_is = what.into();
        self.ratio = self.baseline.map(|b| self.figure / b);
        self.judge();
        self
    }

    fn judge(&mut self) {
        self.met = match self.target {
            Target::AtLeast(t) => Some(self.figure >= t),
            Target::Below(t) => Some(self.figure < t),
            Target::RatioAtLeast(t) => self.ratio.map(|r| r >= t),
            Target::None => None,
        };
    }

    fn row(&self) -> String {
        let num = |v: f64| {
            if v >= 100.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.1}")
            }
        };
        let baseline = match self.baseline {
            Some(b) => format!("{} {} ({})", num(b), self.unit, self.baseline_is),
            None if self.baseline_is.is_empty() => "-".into(),
            None => self.baseline_is.clone(),
        };
        let ratio = self.ratio.map_or("-".into(), |r| format!("{r:.2}"));
        let target = match self.target {
            Target::AtLeast(t) => format!(">= {} {}", num(t), self.unit),
            Target::Below(t) => format!("< {} {}", num(t), self.unit),
            Target::RatioAtLeast(t) => format!("ratio >= {t:.2}"),
            Target::None => "-".into(),
        };
        let met = match self.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "-",
        };
        format!(
            "| {} | {} | {} {} | {baseline} | {ratio} | {target} | {met} |",
            self.scenario,
            self.store,
            num(self.figure),
            self.unit
        )
    }
}

/// Where one store's data lives for the run.
enum Scratch {
    Postgres { url: String, dir: PathBuf },
    Sqlite { dir: PathBuf },
}

impl Scratch {
    async fn create(kind: Kind, args: &BenchArgs) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("ameyo-scim-bench-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir)?;
        Ok(match kind {
            Kind::Postgres => {
                let mut url = reqwest::Url::parse(&args.database_url)?;
                url.set_path(&format!("ameyo_scim_bench_{}", std::process::id()));
                let url = url.to_string();
                // Left over by a run that was killed.
                let _ = sqlx::Postgres::force_drop_database(&url).await;
                sqlx::Postgres::create_database(&url).await?;
                Scratch::Postgres { url, dir }
            }
            Kind::Sqlite => Scratch::Sqlite { dir },
        })
    }

    fn url(&self) -> String {
        match self {
            Scratch::Postgres { url, .. } => url.clone(),
            Scratch::Sqlite { dir } => format!("sqlite://{}", dir.join("bench.db").display()),
        }
    }

    /// A folder for the run's files (configuration, logs, pgbench scripts).
    fn dir(&self) -> &std::path::Path {
        match self {
            Scratch::Postgres { dir, .. } | Scratch::Sqlite { dir } => dir,
        }
    }

    /// Drop the database and remove the folder, whatever state the run left them in.
    async fn remove(self) {
        if let Scratch::Postgres { url, .. } = &self {
            // FORCE: a run that failed may have left connections open.
            if let Err(e) = sqlx::Postgres::force_drop_database(url).await {
                let url = crate::config::redacted_url(url);
                progress(format!("cannot drop {url}: {e}"));
            }
        }
        let dir = self.dir().to_path_buf();
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            progress(format!("cannot remove {}: {e}", dir.display()));
        }
    }
}

/// The service's configuration for a run: the bench tenant, delivering to `ameyo`.
fn config_toml(db_url: &str, ameyo: &str, listen: Option<std::net::SocketAddr>) -> String {
    let server = listen.map_or(String::new(), |l| format!("[server]\nlisten = \"{l}\"\n"));
    format!(
        r#"{server}
[database]
url = "{db_url}"
[sync]
password_key = "{PASSWORD_KEY}"
concurrency = {DELIVERY_CONCURRENCY}
[scim]
max_page_size = 1000
[[tenants]]
id = "{TENANT}"
token_sha256 = ["{}"]
[tenants.ameyo]
base_url = "{ameyo}"
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
    )
}

/// `sync.concurrency` of every delivery run.
const DELIVERY_CONCURRENCY: usize = 16;

fn settings(db_url: &str, ameyo: &str) -> anyhow::Result<Settings> {
    Ok(Settings::from_toml(&config_toml(db_url, ameyo, None))?)
}

/// Facts about the machine the figures come from.
#[derive(Debug, Serialize)]
struct Machine {
    cpu: String,
    cores: usize,
    memory_gib: f64,
    kernel: String,
    postgres: Option<String>,
    sqlite: String,
}

async fn machine(args: &BenchArgs, kinds: &[Kind]) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown".into(), |(_, v)| v.trim().to_string());
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let postgres = if kinds.contains(&Kind::Postgres) {
        match sqlx::PgPool::connect(&args.database_url).await {
            Ok(pool) => {
                let v: Option<String> = sqlx::query_scalar("SHOW server_version")
                    .fetch_one(&pool)
                    .await
                    .ok();
                pool.close().await;
                v
            }
            Err(_) => None,
        }
    } else {
        None
    };
    Machine {
        cpu,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_gib,
        kernel,
        postgres,
        sqlite: sqlite_version().await,
    }
}

async fn sqlite_version() -> String {
    use sqlx::ConnectOptions;
    let options = sqlx::sqlite::SqliteConnectOptions::new().in_memory(true);
    match options.connect().await {
        Ok(mut conn) => sqlx::query_scalar::<_, String>("SELECT sqlite_version()")
            .fetch_one(&mut conn)
            .await
            .unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Everything one store measured.
#[derive(Debug, Serialize)]
struct StoreReport {
    store: String,
    seeded_users: i64,
    seeded_in_secs: f64,
    outcomes: Vec<Outcome>,
    details: Vec<Detail>,
    notes: Vec<String>,
}

/// Run every scenario on the chosen stores and print the report.
pub async fn main(args: BenchArgs) -> anyhow::Result<()> {
    QUIET.store(args.json, Ordering::Relaxed);
    let kinds: &[Kind] = match args.store {
        StoreChoice::Postgres => &[Kind::Postgres],
        StoreChoice::Sqlite => &[Kind::Sqlite],
        StoreChoice::Both => &[Kind::Postgres, Kind::Sqlite],
    };
    let command = std::env::args()
        .map(|a| shown_arg(&a))
        .collect::<Vec<_>>()
        .join(" ");
    let machine = machine(&args, kinds).await;
    let started = chrono::Utc::now();
    progress("the emulator alone...");
    let alone = baseline::emulator_alone(&args).await?;
    let mut reports = Vec::new();
    for &kind in kinds {
        progress(format!("== {}", kind.name()));
        let scratch = Scratch::create(kind, &args).await?;
        let report = measure(kind, &scratch, &args, &alone).await;
        scratch.remove().await;
        reports.push(report?);
    }
    let text = markdown(&command, started, &machine, &args, &reports);
    if let Some(path) = &args.out {
        std::fs::write(path, &text)?;
    }
    if args.json {
        let out = json!({
            "command": command,
            "started": started,
            "machine": machine,
            "stores": reports,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{text}");
    }
    Ok(())
}

/// An argument as the report shows it: a database URL's password redacted (the command
/// is written into the report), quoted if it holds a space.
fn shown_arg(a: &str) -> String {
    let a = match a.split_once('=') {
        Some((flag, url)) if flag.starts_with("--") && url.contains("://") => {
            format!("{flag}={}", crate::config::redacted_url(url))
        }
        _ if a.contains("://") => crate::config::redacted_url(a),
        _ => a.to_string(),
    };
    if a.contains(' ') || a.is_empty() {
        format!("'{a}'")
    } else {
        a
    }
}

/// One store: seed, the in-process scenarios, the baselines, the process scenarios.
async fn measure(
    kind: Kind,
    scratch: &Scratch,
    args: &BenchArgs,
    alone: &baseline::Alone,
) -> anyhow::Result<StoreReport> {
    let mut report = StoreReport {
        store: kind.name().into(),
        seeded_users: args.users,
        seeded_in_secs: 0.0,
        outcomes: Vec::new(),
        details: Vec::new(),
        notes: Vec::new(),
    };
    let handoff = inproc::measure(kind, scratch, args, alone, &mut report).await?;
    process::measure(
        kind,
        scratch,
        args,
        alone,
        handoff.lookup_baseline.as_ref(),
        &mut report,
    )
    .await?;
    Ok(report)
}

fn markdown(
    command: &str,
    started: chrono::DateTime<chrono::Utc>,
    machine: &Machine,
    args: &BenchArgs,
    reports: &[StoreReport],
) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "Command: `{command}`\n");
    let _ = writeln!(
        s,
        "Machine: {} cores ({}), {:.0} GiB, Linux {}, PostgreSQL {}, SQLite {}; started {}.\n",
        machine.cores,
        machine.cpu,
        machine.memory_gib,
        machine.kernel,
        machine.postgres.as_deref().unwrap_or("-"),
        machine.sqlite,
        started.format("%Y-%m-%d %H:%M UTC"),
    );
    let seeded: Vec<String> = reports
        .iter()
        .map(|r| format!("{} in {:.1}s", r.store, r.seeded_in_secs))
        .collect();
    let _ = writeln!(
        s,
        "Seeded users: {} ({}); writes and in-process lookups {} in flight, lookups on the `serve` process {} in flight; `sync.concurrency` {}.\n",
        args.users,
        seeded.join(", "),
        args.concurrency,
        args.lookup_concurrency,
        DELIVERY_CONCURRENCY,
    );
    let _ = writeln!(
        s,
        "| scenario | store | figure | baseline (same run) | ratio | target | met |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    // The stores of one scenario together, in the order the first store measured them.
    let mut order: Vec<&str> = Vec::new();
    for r in reports {
        for o in &r.outcomes {
            if !order.contains(&o.scenario.as_str()) {
                order.push(&o.scenario);
            }
        }
    }
    for scenario in order {
        for r in reports {
            for o in r.outcomes.iter().filter(|o| o.scenario == scenario) {
                let _ = writeln!(s, "{}", o.row());
            }
        }
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| store | operation | requests | per second | p50 ms | p95 ms | p99 ms |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    let mut ops: Vec<&str> = Vec::new();
    for r in reports {
        for d in &r.details {
            if !ops.contains(&d.operation.as_str()) {
                ops.push(&d.operation);
            }
        }
    }
    for op in ops {
        for r in reports {
            for d in r.details.iter().filter(|d| d.operation == op) {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {:.0} | {:.1} | {:.1} | {:.1} |",
                    d.store, d.operation, d.requests, d.per_second, d.p50_ms, d.p95_ms, d.p99_ms
                );
            }
        }
    }
    let _ = writeln!(s);
    for r in reports {
        for note in &r.notes {
            let _ = writeln!(s, "- {}: {note}", r.store);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::shown_arg;

    #[test]
    fn the_reported_command_never_shows_a_database_password() {
        assert_eq!(
            shown_arg("postgres://bench:s3cret@db:5432/x"),
            "postgres://bench:REDACTED@db:5432/x"
        );
        assert_eq!(
            shown_arg("--database-url=postgres://bench:s3cret@db/x"),
            "--database-url=postgres://bench:REDACTED@db/x"
        );
        assert_eq!(shown_arg("--users"), "--users");
        assert_eq!(shown_arg("a b"), "'a b'");
    }
}
