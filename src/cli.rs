//! The command line: `serve`, `migrate`, `check-config`, `hash-token`, the admin
//! commands, `emulator` and `bench`.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::admin;
use crate::config::Settings;
use crate::http::auth::token_digest;
use crate::store::backend::{Access, Backend};

#[derive(Parser, Debug)]
#[command(
    name = "ameyo-scim",
    version,
    about = "SCIM 2.0 provisioning bridge to Ameyo"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Apply pending migrations, then serve SCIM until SIGTERM or Ctrl-C.
    Serve {
        #[arg(long, env = "AMEYO_SCIM_CONFIG", conflicts_with = "dev")]
        config: Option<PathBuf>,
        /// Development mode: the embedded store in a local folder, the Ameyo emulator
        /// in-process, a token made on first start; prints how to try it.
        #[arg(long)]
        dev: bool,
        /// The folder development mode keeps its data in.
        #[arg(long, requires = "dev", default_value = crate::dev::DEFAULT_DIR)]
        dev_dir: PathBuf,
    },
    /// Apply pending migrations and exit.
    Migrate {
        #[arg(long, env = "AMEYO_SCIM_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Validate the configuration and print the effective settings, secrets redacted.
    CheckConfig {
        #[arg(long, env = "AMEYO_SCIM_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Read a token on stdin and print its SHA-256 digest for `token_sha256`.
    HashToken,
    /// Delivery to Ameyo: status, dead letters, retries.
    Sync {
        #[arg(long, env = "AMEYO_SCIM_CONFIG", global = true)]
        config: Option<PathBuf>,
        /// Machine-readable output.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: SyncCommand,
    },
    /// Users as the service sees them.
    Users {
        #[arg(long, env = "AMEYO_SCIM_CONFIG", global = true)]
        config: Option<PathBuf>,
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// Compare a tenant's users with Ameyo's user list; report what differs.
    Reconcile {
        #[arg(long, env = "AMEYO_SCIM_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long)]
        tenant: String,
        /// Queue the resyncs that fix our users (never deletes an Ameyo user).
        #[arg(long)]
        apply: bool,
        #[arg(long)]
        json: bool,
    },
    /// Copy the embedded store (users, outbox state with pending changes, Ameyo links,
    /// attempt log) into an empty PostgreSQL database. Stop `serve` first.
    MigrateStore {
        /// The SQLite store: sqlite://path/to/ameyo-scim.db
        #[arg(long)]
        from: String,
        /// The PostgreSQL database: postgres://user@host/db (migrated if needed; must
        /// hold no users)
        #[arg(long, env = "AMEYO_SCIM_MIGRATE_TO")]
        to: String,
        /// Print the result as JSON and no progress.
        #[arg(long)]
        json: bool,
    },
    /// Measure the service: every scenario beside a baseline measured in the same run
    /// (pgbench, the store without HTTP, the emulator alone), on a scratch database or
    /// file that it removes at the end. See docs/performance.md.
    Bench(crate::bench::BenchArgs),
    /// Run an in-memory Ameyo emulator (for tests, benchmarks and trying it out).
    Emulator {
        #[arg(long, default_value = "127.0.0.1:8089")]
        listen: std::net::SocketAddr,
        /// Accept only this login user (any by default).
        #[arg(long)]
        login_user: Option<String>,
        /// Accept only this login password (any by default).
        #[arg(long, env = "AMEYO_EMULATOR_LOGIN_PASSWORD")]
        login_password: Option<String>,
        /// Sessions expire this many seconds after login.
        #[arg(long)]
        session_ttl_secs: Option<u64>,
        /// Share of API calls answered with an HTML 500 page (0.0 to 1.0).
        #[arg(long, default_value_t = 0.0)]
        error_rate: f64,
        /// Milliseconds added to every API call.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// Every Nth API call is answered 429 with Retry-After (0: never).
        #[arg(long, default_value_t = 0)]
        rate_limit_every: u64,
        /// Start in an outage: "unavailable" (503) or "refuse" (drop connections).
        #[arg(long)]
        outage: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum SyncCommand {
    /// Users by delivery state per tenant, the oldest pending change, dead letters.
    Status,
    /// Users waiting for delivery or dead-lettered: who, since when, the last error.
    List {
        #[arg(long, conflicts_with = "pending", required_unless_present = "pending")]
        dead: bool,
        #[arg(long)]
        pending: bool,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Re-arm a dead-lettered user, or all of them.
    Retry {
        /// A user id or userName.
        #[arg(required_unless_present = "all_dead", conflicts_with = "all_dead")]
        user: Option<String>,
        #[arg(long)]
        all_dead: bool,
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Push a user's current state to Ameyo again (or every user of a tenant).
    Resync {
        /// A user id or userName.
        #[arg(required_unless_present = "tenant")]
        user: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum UsersCommand {
    /// The SCIM resource, the Ameyo link and the last delivery attempts.
    Show {
        /// A user id or userName.
        user: String,
        #[arg(long)]
        tenant: Option<String>,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(config: Option<&PathBuf>) -> anyhow::Result<Settings> {
    Ok(Settings::load(config.map(PathBuf::as_path))?)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            dev: true, dev_dir, ..
        } => runtime()?.block_on(crate::dev::run(dev_dir)),
        Command::Serve { config, .. } => {
            let settings = load(config.as_ref())?;
            crate::telemetry::init(&settings.log);
            runtime()?.block_on(async move {
                let listener = tokio::net::TcpListener::bind(settings.server.listen)
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!("cannot listen on {}: {e}", settings.server.listen)
                    })?;
                crate::server::serve_with_listener(
                    settings,
                    listener,
                    crate::server::shutdown_signal(),
                )
                .await
            })
        }
        Command::Migrate { config } => {
            let settings = load(config.as_ref())?;
            crate::telemetry::init(&settings.log);
            runtime()?.block_on(async move {
                crate::server::migrate(&settings).await?;
                println!("migrations applied");
                Ok(())
            })
        }
        Command::CheckConfig { config } => {
            let settings = load(config.as_ref())?;
            // What `serve` builds at start-up, without touching the database or Ameyo.
            let tenants = crate::tenants::build(&settings, &|_| None)?;
            print!("{}", settings.redacted_toml());
            for t in &tenants {
                for w in t.mapper.warnings() {
                    eprintln!("warning: tenant {}: {w}", t.id);
                }
            }
            eprintln!("configuration is valid");
            Ok(())
        }
        Command::Bench(args) => runtime()?.block_on(crate::bench::main(args)),
        Command::MigrateStore { from, to, json } => runtime()?.block_on(async move {
            let copied = crate::migrate_store::run(&from, &to, json).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&copied)?);
            } else {
                println!(
                    "copied {} users, {} groups ({} memberships), {} outbox rows ({} with \
                     changes still to deliver) and {} attempt-log entries into {}; point \
                     database.url at it and start serve",
                    copied.users,
                    copied.groups,
                    copied.members,
                    copied.outbox_rows,
                    copied.pending,
                    copied.attempts,
                    crate::config::redacted_url(&to)
                );
            }
            Ok(())
        }),
        Command::Emulator {
            listen,
            login_user,
            login_password,
            session_ttl_secs,
            error_rate,
            latency_ms,
            rate_limit_every,
            outage,
        } => {
            use ameyo_emulator::{Emulator, EmulatorOptions, Faults, Outage};
            if !(0.0..=1.0).contains(&error_rate) {
                anyhow::bail!("--error-rate must be between 0 and 1");
            }
            let outage = match outage.as_deref() {
                None => None,
                Some("unavailable") => Some(Outage::Unavailable),
                Some("refuse") => Some(Outage::Refuse),
                Some(o) => anyhow::bail!("--outage must be unavailable or refuse, not {o}"),
            };
            crate::telemetry::init(&crate::config::LogSettings::default());
            let options = EmulatorOptions {
                login_user,
                login_password,
                session_ttl: session_ttl_secs.map(std::time::Duration::from_secs),
                faults: Faults {
                    error_rate,
                    latency_ms,
                    outage,
                    rate_limit_every,
                    ..Faults::default()
                },
            };
            runtime()?.block_on(async move {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
                tracing::info!(%listen, "Ameyo emulator at /ameyorestapi, admin at /emulator");
                Emulator::new(options)
                    .serve(listener, crate::server::shutdown_signal())
                    .await?;
                Ok(())
            })
        }
        Command::Sync {
            config,
            json,
            command,
        } => {
            let settings = load(config.as_ref())?;
            runtime()?.block_on(sync_command(settings, json, command))
        }
        Command::Users {
            config,
            json,
            command: UsersCommand::Show { user, tenant },
        } => {
            let settings = load(config.as_ref())?;
            runtime()?.block_on(async move {
                let pool = admin_store(&settings).await?;
                let (tenant, id) = admin::resolve_user(&pool, tenant.as_deref(), &user).await?;
                let tenants = crate::tenants::build(&settings, &|_| None)?;
                let mapper = tenants
                    .iter()
                    .find(|t| t.id == tenant)
                    .map(|t| t.mapper.clone());
                let report = admin::show(&pool, &tenant, id, mapper.as_deref()).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    println!(
                        "tenant: {}{}",
                        report.tenant,
                        if report.deleted {
                            " (deleted, waiting for Ameyo)"
                        } else {
                            ""
                        }
                    );
                    println!(
                        "\nSCIM resource:\n{}",
                        serde_json::to_string_pretty(&report.resource)?
                    );
                    println!("\ngroups:");
                    let rows: Vec<Vec<String>> = report
                        .groups
                        .iter()
                        .map(|g| {
                            vec![
                                g.display_name.clone(),
                                g.external_id.clone().unwrap_or_default(),
                                g.id.to_string(),
                            ]
                        })
                        .collect();
                    print_table(&["displayName", "externalId", "id"], &rows);
                    if let Some(m) = &report.mapping {
                        match (&m.user_id, &m.user_id_error) {
                            (Some(id), _) => println!("\nAmeyo role of userId {id}:"),
                            (None, e) => println!(
                                "\nAmeyo role (no userId: {}):",
                                e.as_deref().unwrap_or("unknown")
                            ),
                        }
                        let rows: Vec<Vec<String>> = m
                            .fields
                            .iter()
                            .map(|f| vec![f.field.to_string(), cell(&f.value), f.set_by.clone()])
                            .collect();
                        print_table(&["field", "value", "set by"], &rows);
                    }
                    println!(
                        "\nAmeyo link and delivery:\n{}",
                        serde_json::to_string_pretty(&report.sync)?
                    );
                    println!("\nlast attempts:");
                    let rows: Vec<Vec<String>> = report
                        .attempts
                        .iter()
                        .map(|a| {
                            [
                                "at",
                                "version",
                                "call",
                                "outcome",
                                "http_status",
                                "duration_ms",
                                "error",
                            ]
                            .iter()
                            .map(|k| cell(&a[*k]))
                            .collect()
                        })
                        .collect();
                    print_table(
                        &["at", "version", "call", "outcome", "status", "ms", "error"],
                        &rows,
                    );
                }
                Ok(())
            })
        }
        Command::Reconcile {
            config,
            tenant,
            apply,
            json,
        } => {
            let settings = load(config.as_ref())?;
            runtime()?.block_on(async move {
                let pool = admin_store(&settings).await?;
                let r = admin::reconcile(&settings, &pool, &tenant, apply).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&r)?);
                    return Ok(());
                }
                println!("tenant {}: {} users checked", r.tenant, r.checked);
                println!("\nmissing in Ameyo ({}):", r.missing_in_ameyo.len());
                let rows: Vec<Vec<String>> = r
                    .missing_in_ameyo
                    .iter()
                    .map(|m| {
                        vec![
                            m.user_name.clone(),
                            m.ameyo_user_id.clone(),
                            m.user_id.to_string(),
                        ]
                    })
                    .collect();
                print_table(&["userName", "Ameyo userId", "id"], &rows);
                println!("\nfield differences ({} users):", r.field_differences.len());
                let rows: Vec<Vec<String>> = r
                    .field_differences
                    .iter()
                    .flat_map(|d| {
                        d.differences.iter().map(move |f| {
                            vec![
                                d.ameyo_user_id.clone(),
                                f.field.to_string(),
                                cell(&f.ours),
                                cell(&f.ameyo),
                            ]
                        })
                    })
                    .collect();
                print_table(&["Ameyo userId", "field", "ours", "Ameyo"], &rows);
                println!(
                    "\nin Ameyo but not ours ({}), never deleted:",
                    r.unknown_in_ameyo.len()
                );
                for u in &r.unknown_in_ameyo {
                    println!("  {u}");
                }
                if !r.unmappable.is_empty() {
                    println!(
                        "\nno Ameyo userId can be made for ({}):",
                        r.unmappable.len()
                    );
                    for u in &r.unmappable {
                        println!("  {u}");
                    }
                }
                if apply {
                    println!("\n{} resyncs queued", r.queued);
                } else if !(r.missing_in_ameyo.is_empty() && r.field_differences.is_empty()) {
                    println!("\nrun again with --apply to queue the resyncs that fix these");
                }
                Ok(())
            })
        }
        Command::HashToken => {
            let mut token = String::new();
            std::io::stdin()
                .take(64 * 1024)
                .read_to_string(&mut token)?;
            let token = token.strip_suffix('\n').unwrap_or(&token);
            let token = token.strip_suffix('\r').unwrap_or(token);
            if token.is_empty() {
                anyhow::bail!("no token on stdin");
            }
            println!("{}", token_digest(token));
            Ok(())
        }
    }
}

/// The store for one admin command, next to a running service: no migrations, no
/// workers, no lock.
async fn admin_store(settings: &Settings) -> anyhow::Result<Backend> {
    Backend::open(settings, Access::Admin).await
}

async fn sync_command(settings: Settings, json: bool, command: SyncCommand) -> anyhow::Result<()> {
    let pool = admin_store(&settings).await?;
    match command {
        SyncCommand::Status => {
            let rows = admin::status(&pool, &settings).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                let table: Vec<Vec<String>> = rows
                    .iter()
                    .map(|r| {
                        vec![
                            r.tenant.clone(),
                            r.pending.to_string(),
                            r.leased.to_string(),
                            r.done.to_string(),
                            r.dead.to_string(),
                            r.oldest_pending_secs
                                .map(human_secs)
                                .unwrap_or_else(|| "-".into()),
                        ]
                    })
                    .collect();
                print_table(
                    &[
                        "tenant",
                        "pending",
                        "in flight",
                        "done",
                        "dead",
                        "oldest pending",
                    ],
                    &table,
                );
            }
        }
        SyncCommand::List {
            dead,
            pending: _,
            tenant,
            limit,
        } => {
            let which = if dead {
                admin::Which::Dead
            } else {
                admin::Which::Pending
            };
            let rows = admin::list(&pool, which, tenant.as_deref(), limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                let table: Vec<Vec<String>> = rows
                    .iter()
                    .map(|r| {
                        vec![
                            r.tenant.clone(),
                            r.user_name.clone(),
                            r.user_id.to_string(),
                            r.state.clone(),
                            r.since.format("%Y-%m-%d %H:%M:%S").to_string(),
                            r.attempts.to_string(),
                            r.last_error.clone().unwrap_or_default(),
                        ]
                    })
                    .collect();
                print_table(
                    &[
                        "tenant",
                        "userName",
                        "id",
                        "state",
                        "since",
                        "attempts",
                        "last error",
                    ],
                    &table,
                );
            }
        }
        SyncCommand::Retry {
            user,
            all_dead,
            tenant,
        } => {
            let id = match (&user, all_dead) {
                (Some(u), _) => Some(admin::resolve_user(&pool, tenant.as_deref(), u).await?.1),
                (None, _) => None,
            };
            let n = admin::retry(&pool, id, tenant.as_deref()).await?;
            report_count(json, "re-armed", n)?;
        }
        SyncCommand::Resync { user, tenant } => {
            let id = match &user {
                Some(u) => Some(admin::resolve_user(&pool, tenant.as_deref(), u).await?.1),
                None => None,
            };
            let n = admin::resync(
                &pool,
                id,
                if id.is_some() {
                    None
                } else {
                    tenant.as_deref()
                },
            )
            .await?;
            report_count(json, "queued for resync", n)?;
        }
    }
    Ok(())
}

fn report_count(json: bool, what: &str, n: u64) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::json!({ what.replace(' ', "_"): n }));
    } else {
        println!("{n} users {what}");
    }
    Ok(())
}

fn human_secs(s: f64) -> String {
    let s = s.max(0.0) as u64;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}

fn cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Columns padded to their widest cell; long cells are cut so a row stays readable.
fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    const MAX: usize = 60;
    let clip = |s: &str| -> String {
        if s.chars().count() > MAX {
            format!("{}…", s.chars().take(MAX - 1).collect::<String>())
        } else {
            s.to_string()
        }
    };
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, c) in row.iter().enumerate() {
            widths[i] = widths[i].max(clip(c).chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.iter().map(|c| clip(c)).collect());
    }
    if rows.is_empty() {
        println!("(none)");
    }
}
