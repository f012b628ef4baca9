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
