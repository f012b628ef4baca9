//! The command line: `serve`, `migrate`, `check-config`, `hash-token`.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Settings;
use crate::http::auth::token_digest;

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
        #[arg(long, env = "AMEYO_SCIM_CONFIG")]
        config: Option<PathBuf>,
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
        Command::Serve { config } => {
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
            print!("{}", settings.redacted_toml());
            eprintln!("configuration is valid");
            Ok(())
        }
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
            use crate::ameyo::emulator::{Emulator, EmulatorOptions, Faults, Outage};
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
