//! Typed settings: defaults, then a TOML file, then `AMEYO_SCIM__SECTION__KEY`
//! environment variables. Secrets are `SecretString`s and are redacted whenever the
//! settings are printed.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};

/// Everything the service reads at start-up.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    #[serde(default)]
    pub scim: ScimSettings,
    #[serde(default)]
    pub log: LogSettings,
    #[serde(default)]
    pub tenants: Vec<TenantSettings>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Address of the SCIM listener.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Public base URL (scheme, host, optional path prefix) used in `meta.location` and
    /// `Location`. Without it, the request's `Host` header is used.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Seconds to let in-flight requests finish after SIGTERM or Ctrl-C.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace_secs: u64,
    /// Seconds one request may take before it is answered 503.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_secs: u64,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_shutdown_grace() -> u64 {
    20
}
fn default_request_timeout() -> u64 {
    30
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            public_url: None,
            shutdown_grace_secs: default_shutdown_grace(),
            request_timeout_secs: default_request_timeout(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `postgres://user:password@host:port/database`; its password is redacted in output.
    #[serde(serialize_with = "redact_url")]
    pub url: SecretString,
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Seconds to wait for a free connection before a request fails with 503.
    #[serde(default = "default_acquire_timeout")]
    pub acquire_timeout_secs: u64,
    /// Create the database at start-up if it does not exist (handy for trying it out;
    /// production databases are usually created by their owners).
    #[serde(default)]
    pub create_if_missing: bool,
}

fn default_max_connections() -> u32 {
    16
}
fn default_acquire_timeout() -> u64 {
    5
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScimSettings {
    /// Largest page a list request returns (advertised as `filter.maxResults`).
    #[serde(default = "default_max_page_size")]
    pub max_page_size: usize,
    /// Page size when the client sends no `count`.
    #[serde(default = "default_page_size")]
    pub default_page_size: usize,
    /// Largest request body accepted, in bytes; larger ones get 413.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
}

fn default_max_page_size() -> usize {
    1000
}
fn default_page_size() -> usize {
    100
}
fn default_max_body() -> usize {
    1024 * 1024
}

impl Default for ScimSettings {
    fn default() -> Self {
        Self {
            max_page_size: default_max_page_size(),
            default_page_size: default_page_size(),
            max_body_bytes: default_max_body(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    #[serde(default = "default_log_format")]
    pub format: LogFormat,
    /// A `tracing` filter: `info`, or per module, `info,ameyo_scim::store=debug`.
    #[serde(default = "default_log_level")]
    pub level: String,
}

fn default_log_format() -> LogFormat {
    LogFormat::Pretty
}
fn default_log_level() -> String {
    "info".into()
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: default_log_format(),
            level: default_log_level(),
        }
    }
}

/// One IdP connection to one Ameyo contact center.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSettings {
    pub id: String,
    /// SHA-256 digests (hex) of the bearer tokens this tenant's IdP may present.
    /// Two entries allow a rotation without downtime.
    #[serde(default)]
    pub token_sha256: Vec<String>,
    #[serde(default)]
    pub jwt: Option<JwtSettings>,
    pub ameyo: AmeyoSettings,
}

/// JWT bearer authentication for a tenant.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSettings {
    pub issuer: String,
    pub audience: String,
    /// e.g. `["RS256"]`; only these are accepted.
    pub algorithms: Vec<String>,
    /// Shared secret for HS256/HS384/HS512.
    #[serde(default, serialize_with = "redact_opt")]
    pub hs_secret: Option<SecretString>,
    /// A PEM public key file for RS*/PS*/ES*/EdDSA.
    #[serde(default)]
    pub public_key_pem_file: Option<PathBuf>,
    /// A JWKS (JSON Web Key Set) file; the token's `kid` picks the key.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// Seconds of clock skew tolerated on `exp` and `nbf`.
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
}

fn default_leeway() -> u64 {
    30
}

/// The tenant's Ameyo server.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AmeyoSettings {
    /// `https://host:port`; the API lives under `/ameyorestapi/`.
    pub base_url: String,
    /// The contact center new users are created in, unless the user says otherwise.
    pub contact_center_id: i64,
}

fn redact_url<S: Serializer>(url: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redacted_url(url.expose_secret()))
}

fn redact_opt<S: Serializer>(v: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str("REDACTED"),
        None => s.serialize_none(),
    }
}

/// A connection URL with its password replaced, for messages and `check-config`.
pub fn redacted_url(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("REDACTED"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "REDACTED (unparseable url)".into(),
    }
}

/// A configuration problem, with the key it concerns.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("invalid configuration: {key}: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

impl Settings {
    /// Read the file (if given) and the environment, then validate.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = path {
            builder = builder.add_source(
                config::File::from(path)
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        builder = builder.add_source(
            config::Environment::with_prefix("AMEYO_SCIM")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        );
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Parse settings from TOML text (for tests and tools), then validate.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let settings: Settings = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()?
            .try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Check every rule no type can express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.server.public_url {
            let u = Url::parse(url).map_err(|e| invalid("server.public_url", e.to_string()))?;
            if !matches!(u.scheme(), "http" | "https") {
                return Err(invalid("server.public_url", "must be an http or https URL"));
            }
        }
        if self.database.url.expose_secret().trim().is_empty() {
            return Err(invalid("database.url", "must not be empty"));
        }
        if !(1..=1000).contains(&self.database.max_connections) {
            return Err(invalid(
                "database.max_connections",
                "must be between 1 and 1000",
            ));
        }
        if !(1..=10_000).contains(&self.scim.max_page_size) {
            return Err(invalid("scim.max_page_size", "must be between 1 and 10000"));
        }
        if self.scim.default_page_size == 0 || self.scim.default_page_size > self.scim.max_page_size
        {
            return Err(invalid(
                "scim.default_page_size",
                "must be between 1 and scim.max_page_size",
            ));
        }
        if !(1024..=64 * 1024 * 1024).contains(&self.scim.max_body_bytes) {
            return Err(invalid(
                "scim.max_body_bytes",
                "must be between 1 KiB and 64 MiB",
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| invalid("log.level", e.to_string()))?;
        if self.tenants.is_empty() {
            return Err(invalid(
                "tenants",
                "at least one [[tenants]] entry is required",
            ));
        }
        let mut ids = HashSet::new();
        let mut digests = HashSet::new();
        for (i, t) in self.tenants.iter().enumerate() {
            let key = |k: &str| format!("tenants[{i}].{k}");
            let id_ok = !t.id.is_empty()
                && t.id.len() <= 64
                && t.id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !id_ok {
                return Err(invalid(
                    key("id"),
                    "1 to 64 characters of A-Z, a-z, 0-9, '-' and '_'",
                ));
            }
            if !ids.insert(t.id.as_str()) {
                return Err(invalid(
                    key("id"),
                    format!("tenant id '{}' appears twice", t.id),
                ));
            }
            for d in &t.token_sha256 {
                if d.len() != 64 || !d.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(invalid(
                        key("token_sha256"),
                        "each entry must be a SHA-256 digest: 64 hex digits (see `ameyo-scim hash-token`)",
                    ));
                }
                if !digests.insert(d.to_ascii_lowercase()) {
                    return Err(invalid(
                        key("token_sha256"),
                        "a token digest may belong to one tenant only",
                    ));
                }
            }
            if t.token_sha256.is_empty() && t.jwt.is_none() {
                return Err(invalid(
                    key("token_sha256"),
                    "a tenant needs token_sha256 digests, a [tenants.jwt] section, or both",
                ));
            }
            if let Some(jwt) = &t.jwt {
                crate::http::auth::JwtVerifier::from_settings(jwt)
                    .map_err(|m| invalid(key("jwt"), m))?;
            }
            let u = Url::parse(&t.ameyo.base_url)
                .map_err(|e| invalid(key("ameyo.base_url"), e.to_string()))?;
            if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
                return Err(invalid(
                    key("ameyo.base_url"),
                    "must be an http or https URL with a host",
                ));
            }
            if t.ameyo.contact_center_id < 1 {
                return Err(invalid(
                    key("ameyo.contact_center_id"),
                    "must be a positive integer",
                ));
            }
        }
        Ok(())
    }

    /// The effective settings as TOML, secrets redacted.
    pub fn redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render settings: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn base(extra: &str) -> String {
        format!(
            r#"
[database]
url = "postgres://scim:hunter2@localhost/ameyo_scim"
{extra}
"#
        )
    }

    fn tenant(id: &str, digest: &str) -> String {
        format!(
            r#"
[[tenants]]
id = "{id}"
token_sha256 = ["{digest}"]
[tenants.ameyo]
base_url = "https://cc.example.com:8443"
contact_center_id = 1
"#
        )
    }

    #[test]
    fn loads_with_defaults_and_redacts_secrets() {
        let s = Settings::from_toml(&base(&tenant("acme", DIGEST))).unwrap();
        assert_eq!(s.server.listen, default_listen());
        assert_eq!(s.scim.max_page_size, 1000);
        let out = s.redacted_toml();
        assert!(!out.contains("hunter2"), "{out}");
        assert!(out.contains("REDACTED"), "{out}");
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn rejects_mistakes_with_the_key_named() {
        let cases = [
            (base(""), "tenants"),
            (base(&tenant("acme", "abc")), "token_sha256"),
            (
                base(&(tenant("acme", DIGEST) + &tenant("acme", &DIGEST.replace('9', "8")))),
                "appears twice",
            ),
            (
                base(&(tenant("a", DIGEST) + &tenant("b", DIGEST))),
                "one tenant only",
            ),
            (base(&tenant("a b", DIGEST)), "tenants[0].id"),
            (
                base(&tenant("acme", DIGEST).replace("https://cc.example.com:8443", "ftp://x")),
                "base_url",
            ),
            (
                base(
                    &tenant("acme", DIGEST)
                        .replace("contact_center_id = 1", "contact_center_id = 0"),
                ),
                "contact_center_id",
            ),
            (
                base(&(tenant("acme", DIGEST) + "\n[server]\nlisten = \"nope\"")),
                "listen",
            ),
            (
                base(&tenant("acme", DIGEST))
                    .replace("[database]", "[database]\nmax_conections = 3"),
                "max_conections",
            ),
            (
                base(&(tenant("acme", DIGEST) + "\n[log]\nlevel = \"[[[\"")),
                "log.level",
            ),
        ];
        for (text, want) in cases {
            let e = Settings::from_toml(&text).expect_err(&text).to_string();
            assert!(e.contains(want), "wanted {want:?} in {e:?}");
        }
    }

    #[test]
    fn redacted_url_hides_only_the_password() {
        assert_eq!(
            redacted_url("postgres://u:p@h:5432/d"),
            "postgres://u:REDACTED@h:5432/d"
        );
        assert_eq!(redacted_url("postgres://h/d"), "postgres://h/d");
    }
}
