//! `serve --dev`: everything on one machine with nothing installed. The embedded store
//! in a local folder, the Ameyo emulator in-process with the tenant pointed at it, and a
//! bearer token and a password key made on first start and kept in that folder, so a
//! second run finds its data again.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rand::Rng;
use rand::distr::Alphanumeric;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::config::Settings;
use crate::http::auth::token_digest;

/// The folder `serve --dev` keeps its data in, unless told otherwise.
pub const DEFAULT_DIR: &str = "ameyo-scim-dev";
/// Where the SCIM API and the emulator listen when those ports are free.
const SCIM_ADDR: &str = "127.0.0.1:8080";
const EMULATOR_ADDR: &str = "127.0.0.1:8089";
/// The tenant of development mode.
pub const TENANT: &str = "dev";

/// What the first start made and every later start reuses.
#[derive(Debug, Serialize, Deserialize)]
struct Secrets {
    token: String,
    password_key: String,
}

fn random(n: usize) -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

/// The folder's secrets: read them, or make them (readable by this user only).
fn secrets(dir: &Path) -> anyhow::Result<Secrets> {
    let path = dir.join("secrets.json");
    if path.exists() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        return serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is damaged; delete the folder to start afresh",
                path.display()
            )
        });
    }
    use base64::Engine;
    let mut key = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut key);
    let secrets = Secrets {
        token: random(32),
        password_key: base64::engine::general_purpose::STANDARD.encode(key),
    };
    let text = serde_json::to_string_pretty(&secrets)?;
    write_private(&path, &text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(secrets)
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}

/// Bind `preferred`, or any free port on loopback when it is taken.
async fn bind(preferred: &str) -> anyhow::Result<TcpListener> {
    match TcpListener::bind(preferred).await {
        Ok(l) => Ok(l),
        Err(_) => Ok(TcpListener::bind("127.0.0.1:0").await?),
    }
}

/// The settings of development mode: the embedded store in `dir`, one tenant whose
/// Ameyo is the emulator at `emulator`, quick retries.
fn settings(
    dir: &Path,
    secrets: &Secrets,
    scim: SocketAddr,
    emulator: SocketAddr,
) -> anyhow::Result<Settings> {
    let db = dir.join("ameyo-scim.db");
    let text = format!(
        r#"
[server]
listen = "{scim}"

[database]
url = "sqlite://{db}"

[sync]
password_key = "{key}"
poll_interval_secs = 1
retry_base_ms = 200
retry_cap_secs = 10

[[tenants]]
id = "{TENANT}"
token_sha256 = ["{digest}"]
[tenants.ameyo]
base_url = "http://{emulator}"
contact_center_id = 1
login_user = "admin"
login_password = "{login}"
"#,
        db = db.display(),
        key = secrets.password_key,
        digest = token_digest(&secrets.token),
        login = random(16),
    );
    Ok(Settings::from_toml(&text)?)
}

/// The lines `serve --dev` prints: where everything is, and two ready commands.
pub fn banner(dir: &Path, scim: SocketAddr, emulator: SocketAddr, token: &str) -> String {
    let base = format!("http://{scim}/scim/v2");
    format!(
        "ameyo-scim is running in development mode; its data is in {dir}.\n\
         \n\
         SCIM base URL:   {base}\n\
         Bearer token:    {token}\n\
         Ameyo emulator:  http://{emulator}\n\
         \n\
         Create a user:\n\
         curl -s -X POST {base}/Users -H 'Authorization: Bearer {token}' -H 'Content-Type: application/scim+json' -d '{{\"schemas\": [\"urn:ietf:params:scim:schemas:core:2.0:User\"], \"userName\": \"jdoe@example.com\", \"name\": {{\"givenName\": \"Jane\", \"familyName\": \"Doe\"}}, \"emails\": [{{\"value\": \"jdoe@example.com\", \"type\": \"work\", \"primary\": true}}], \"active\": true}}'\n\
         \n\
         See it arrive in Ameyo (the emulator's users):\n\
         curl -s http://{emulator}/emulator/state\n",
        dir = dir.display(),
    )
}

/// Run development mode until Ctrl-C or SIGTERM.
pub async fn run(dir: PathBuf) -> anyhow::Result<()> {
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let secrets = secrets(&dir)?;
    let emulator_listener = bind(EMULATOR_ADDR).await?;
    let emulator_addr = emulator_listener.local_addr()?;
    let scim_listener = bind(SCIM_ADDR).await?;
    let scim_addr = scim_listener.local_addr()?;
    let settings = settings(&dir, &secrets, scim_addr, emulator_addr)?;
    crate::telemetry::init(&settings.log);
    let emulator = ameyo_emulator::Emulator::new(Default::default());
    tokio::spawn(async move {
        if let Err(e) = emulator
            .serve(emulator_listener, std::future::pending())
            .await
        {
            tracing::error!(error = %e, "the Ameyo emulator stopped");
        }
    });
    // Printed once, for the person at the terminal; the token is never logged.
    // A closed stdout (`serve --dev | head`) must not stop the service.
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "{}",
            banner(&dir, scim_addr, emulator_addr, &secrets.token)
        )
        .and_then(|_| out.flush());
    }
    crate::server::serve_with_listener(settings, scim_listener, crate::server::shutdown_signal())
        .await
}
