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
    #[serde(default)]
    pub database: DatabaseSettings,
    #[serde(default)]
    pub scim: ScimSettings,
    #[serde(default)]
    pub log: LogSettings,
    #[serde(default)]
    pub sync: SyncSettings,
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
    /// Address of the Prometheus `/metrics` listener (its own port, not the SCIM one).
    /// Unset: no metrics listener.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
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
            metrics_listen: None,
            shutdown_grace_secs: default_shutdown_grace(),
            request_timeout_secs: default_request_timeout(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `postgres://user:password@host:port/database` (its password is redacted in
    /// output), or `sqlite://path/to/file.db` for the embedded store (the default, in
    /// the working directory).
    #[serde(default = "default_database_url", serialize_with = "redact_url")]
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

/// The embedded store in the working directory, when no `database.url` is set.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://ameyo-scim.db";

fn default_database_url() -> SecretString {
    SecretString::from(DEFAULT_DATABASE_URL)
}

fn default_max_connections() -> u32 {
    16
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: default_database_url(),
            max_connections: default_max_connections(),
            acquire_timeout_secs: default_acquire_timeout(),
            create_if_missing: false,
        }
    }
}

/// Which backend a `database.url` selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseKind {
    Postgres,
    /// The embedded store in this file (`None`: in memory, for tests).
    Sqlite {
        path: Option<PathBuf>,
    },
}

impl DatabaseSettings {
    /// The backend the URL names.
    pub fn kind(&self) -> Result<DatabaseKind, ConfigError> {
        database_kind(self.url.expose_secret())
    }

    /// Whether the URL is the built-in default (no `database.url` configured).
    pub fn is_default(&self) -> bool {
        self.url.expose_secret() == DEFAULT_DATABASE_URL
    }
}

/// The backend a database URL names: `postgres://` / `postgresql://`, or `sqlite://path`,
/// `sqlite:path`, `sqlite::memory:`.
pub fn database_kind(url: &str) -> Result<DatabaseKind, ConfigError> {
    let url = url.trim();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(DatabaseKind::Postgres);
    }
    let Some(rest) = url.strip_prefix("sqlite:") else {
        return Err(invalid(
            "database.url",
            "must start with postgres:// (or postgresql://) or sqlite://",
        ));
    };
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let path = rest.split('?').next().unwrap_or_default();
    if path == ":memory:" {
        return Ok(DatabaseKind::Sqlite { path: None });
    }
    if path.is_empty() {
        return Err(invalid(
            "database.url",
            "sqlite:// needs a file path, e.g. sqlite://ameyo-scim.db",
        ));
    }
    Ok(DatabaseKind::Sqlite {
        path: Some(PathBuf::from(path)),
    })
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

/// The tenant's Ameyo server, how to log in, and how SCIM users become Ameyo users.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AmeyoSettings {
    /// `https://host:port`; the API lives under `/ameyorestapi/`.
    pub base_url: String,
    /// The contact center new users are created in, unless the user says otherwise.
    pub contact_center_id: i64,
    /// The admin user the bridge logs in as (with `login_password`).
    #[serde(default)]
    pub login_user: Option<String>,
    #[serde(default, serialize_with = "redact_opt")]
    pub login_password: Option<SecretString>,
    /// Optional `domain` sent with `userLogin/login`.
    #[serde(default)]
    pub login_domain: Option<String>,
    /// Which documented login call to use.
    #[serde(default)]
    pub login_call: LoginCall,
    /// A fixed session id instead of logging in (for servers where that is the only way).
    #[serde(default, serialize_with = "redact_opt")]
    pub session_id: Option<SecretString>,
    /// Whether `PUT cc/contactCenterUsers/<id>` takes the userId or the numeric ccUserId.
    #[serde(default)]
    pub update_path_id: UpdatePathId,
    /// PEM file with extra CA certificates to trust (TLS verification stays on).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    #[serde(default = "default_ameyo_request_timeout")]
    pub request_timeout_secs: u64,
    /// At most this many calls in flight to this Ameyo server from one process; unset,
    /// as many as `sync.concurrency` (each delivery makes one call at a time).
    #[serde(default)]
    pub max_concurrent_calls: Option<usize>,
    /// Whether the bridge may take over an Ameyo user that already exists with the
    /// userId it would create (made by hand or by another system). Off: such a user
    /// is dead-lettered, so nobody's account is silently taken over.
    #[serde(default)]
    pub adopt_existing: bool,
    /// The userTypes the IdP may give a user (through the Ameyo extension or a rule).
    /// By default every known type but `Administrator`, so an IdP cannot mint admins.
    #[serde(default = "default_allowed_user_types")]
    pub allowed_user_types: Vec<String>,
    /// The contact centers users may be put in. `None` only before [`Settings::load`]
    /// or [`Settings::from_toml`] fill in the default:
    /// [`default_allowed_contact_center_ids`].
    #[serde(default)]
    pub allowed_contact_center_ids: Option<Vec<i64>>,
    #[serde(default)]
    pub mapping: MappingSettings,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LoginCall {
    /// `POST userLogin/login`, as real clients use.
    #[default]
    UserLogin,
    /// `POST session/userLogin`, as the official page documents.
    SessionUserLogin,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UpdatePathId {
    #[default]
    UserId,
    CcUserId,
}

fn default_connect_timeout() -> u64 {
    5
}
fn default_ameyo_request_timeout() -> u64 {
    20
}

/// Every known Ameyo user type except `Administrator`.
pub fn default_allowed_user_types() -> Vec<String> {
    crate::scim::schema::AMEYO_USER_TYPES
        .iter()
        .filter(|t| **t != "Administrator")
        .map(|t| t.to_string())
        .collect()
}

/// The tenant's own contact center and every one its mapping rules name: what the
/// operator has already said users may be put in.
pub fn default_allowed_contact_center_ids(
    contact_center_id: i64,
    mapping: &MappingSettings,
) -> Vec<i64> {
    let mut ids = vec![contact_center_id];
    for id in mapping.rules.iter().filter_map(|r| r.contact_center_id) {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    ids
}

/// How a SCIM user becomes an Ameyo user.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MappingSettings {
    /// The SCIM attribute Ameyo's `userId` comes from: `userName`, `externalId`,
    /// `emails` (the primary work e-mail), or any attribute path. Fixed once created.
    #[serde(default = "default_user_id_attribute")]
    pub user_id_attribute: String,
    /// Applied in order: `lowercase`, `email_local_part`.
    #[serde(default)]
    pub user_id_transforms: Vec<UserIdTransform>,
    /// Longest userId Ameyo gets; longer ones are refused (dead-lettered), not cut.
    #[serde(default = "default_user_id_max_length")]
    pub user_id_max_length: usize,
    /// The SCIM attribute for Ameyo's `description` (none by default).
    #[serde(default)]
    pub description_attribute: Option<String>,
    /// Defaults when neither the user's Ameyo extension nor a rule says otherwise.
    #[serde(default = "default_user_type")]
    pub default_user_type: String,
    #[serde(default)]
    pub default_login_policy: Option<String>,
    #[serde(default)]
    pub default_max_allowed_logins: Option<i64>,
    #[serde(default)]
    pub default_ready: bool,
    /// Ordered rules; the first that matches supplies what the user does not say.
    #[serde(default)]
    pub rules: Vec<MappingRule>,
    /// What SCIM `active: false` does in Ameyo.
    #[serde(default)]
    pub on_deactivate: OnDeactivate,
    /// What SCIM DELETE does in Ameyo.
    #[serde(default)]
    pub on_delete: OnDelete,
}

impl Default for MappingSettings {
    fn default() -> Self {
        Self {
            user_id_attribute: default_user_id_attribute(),
            user_id_transforms: vec![],
            user_id_max_length: default_user_id_max_length(),
            description_attribute: None,
            default_user_type: default_user_type(),
            default_login_policy: None,
            default_max_allowed_logins: None,
            default_ready: false,
            rules: vec![],
            on_deactivate: OnDeactivate::default(),
            on_delete: OnDelete::default(),
        }
    }
}

fn default_user_id_attribute() -> String {
    "userName".into()
}
fn default_user_id_max_length() -> usize {
    64
}
fn default_user_type() -> String {
    "Agent".into()
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UserIdTransform {
    Lowercase,
    EmailLocalPart,
}

/// When a user's attribute matches a regular expression, or the user is a member of a
/// group, these Ameyo fields. A rule names either `attribute` and `matches`, or `group`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MappingRule {
    /// A SCIM attribute path: `title`, `userType`, `roles`,
    /// `urn:...:enterprise:2.0:User:department`. For a multi-valued attribute (`roles`,
    /// `emails`) the rule matches when any of its values matches.
    #[serde(default)]
    pub attribute: Option<String>,
    /// A regular expression, matched against the attribute's value (`(?i)` for any case).
    #[serde(default)]
    pub matches: Option<String>,
    /// A group the user is a direct member of, named by its displayName or its
    /// externalId (compared case-insensitively).
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub user_type: Option<String>,
    #[serde(default)]
    pub login_policy: Option<String>,
    #[serde(default)]
    pub max_allowed_logins: Option<i64>,
    #[serde(default)]
    pub default_ready: Option<bool>,
    #[serde(default)]
    pub contact_center_id: Option<i64>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnDeactivate {
    /// End the user's sessions, rotate the password to an undisclosed one, clear
    /// `mappingUserId`; reactivation restores the mapping.
    #[default]
    Lock,
    /// Delete the Ameyo user; reactivation creates it again.
    Delete,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnDelete {
    #[default]
    Delete,
    Lock,
}

/// The outbox worker.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SyncSettings {
    /// Run the delivery workers inside `serve`.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Deliveries in flight at once in this process.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Seconds between polls when no notification arrives.
    #[serde(default = "default_poll_interval")]
    pub poll_interval_secs: u64,
    /// Seconds a claimed user stays leased; a delivery is cut off before its lease ends.
    #[serde(default = "default_lease")]
    pub lease_secs: u64,
    /// First retry delay in milliseconds; doubled each attempt, with full jitter.
    #[serde(default = "default_retry_base_ms")]
    pub retry_base_ms: u64,
    /// Longest retry delay in seconds.
    #[serde(default = "default_retry_cap")]
    pub retry_cap_secs: u64,
    /// Attempts before a user is dead-lettered (0: retry transient errors forever).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Days the attempt log is kept.
    #[serde(default = "default_attempt_retention")]
    pub attempt_retention_days: u32,
    /// 32 bytes, base64: encrypts passwords waiting for delivery (AES-256-GCM).
    /// Make one with `openssl rand -base64 32`.
    #[serde(default, serialize_with = "redact_opt")]
    pub password_key: Option<SecretString>,
    /// Keys `password_key` replaced, same format: they only decrypt what they encrypted
    /// before the rotation. Drop one once nothing sealed with it remains.
    #[serde(default, serialize_with = "redact_list")]
    pub previous_password_keys: Vec<SecretString>,
}

fn default_true() -> bool {
    true
}
fn default_concurrency() -> usize {
    8
}
fn default_poll_interval() -> u64 {
    5
}
fn default_lease() -> u64 {
    120
}
fn default_retry_base_ms() -> u64 {
    1000
}
fn default_retry_cap() -> u64 {
    900
}
fn default_max_attempts() -> u32 {
    25
}
fn default_attempt_retention() -> u32 {
    14
}

impl Default for SyncSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            concurrency: default_concurrency(),
            poll_interval_secs: default_poll_interval(),
            lease_secs: default_lease(),
            retry_base_ms: default_retry_base_ms(),
            retry_cap_secs: default_retry_cap(),
            max_attempts: default_max_attempts(),
            attempt_retention_days: default_attempt_retention(),
            password_key: None,
            previous_password_keys: Vec::new(),
        }
    }
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

fn redact_list<S: Serializer>(v: &[SecretString], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|_| "REDACTED"))
}

/// A connection URL with its password replaced (in the user info and in a
/// `password=` query parameter), for messages and `check-config`.
pub fn redacted_url(url: &str) -> String {
    let Ok(mut u) = Url::parse(url) else {
        return "REDACTED (unparseable url)".into();
    };
    if u.password().is_some() {
        let _ = u.set_password(Some("REDACTED"));
    }
    if u.query().is_some() {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let v = if k.eq_ignore_ascii_case("password") {
                    "REDACTED".into()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    u.to_string()
}

/// A configuration problem, with the key it concerns.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("invalid configuration: {key}: {message}")]
    Invalid { key: String, message: String },
}

pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
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
                .try_parsing(true)
                // A comma-separated list; base64 has no comma.
                .list_separator(",")
                .with_list_parse_key("sync.previous_password_keys"),
        );
        let mut settings: Settings = builder.build()?.try_deserialize()?;
        settings.fill_derived_defaults();
        settings.validate()?;
        Ok(settings)
    }

    /// Parse settings from TOML text (for tests and tools), then validate.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let mut settings: Settings = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()?
            .try_deserialize()?;
        settings.fill_derived_defaults();
        settings.validate()?;
        Ok(settings)
    }

    /// Defaults that depend on other keys, filled in so `check-config` shows them.
    fn fill_derived_defaults(&mut self) {
        for t in &mut self.tenants {
            let a = &mut t.ameyo;
            if a.max_concurrent_calls.is_none() {
                a.max_concurrent_calls = Some(self.sync.concurrency);
            }
            if a.allowed_contact_center_ids.is_none() {
                a.allowed_contact_center_ids = Some(default_allowed_contact_center_ids(
                    a.contact_center_id,
                    &a.mapping,
                ));
            }
        }
    }

    /// Check every rule no type can express, on the values alone. Whether key files,
    /// mappings and clients can be built is checked by [`crate::tenants::build`].
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
        self.database.kind()?;
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
        self.password_key()?;
        let sync = &self.sync;
        if !(1..=256).contains(&sync.concurrency) {
            return Err(invalid("sync.concurrency", "must be between 1 and 256"));
        }
        if sync.poll_interval_secs == 0 || sync.retry_base_ms == 0 || sync.retry_cap_secs == 0 {
            return Err(invalid(
                "sync",
                "poll_interval_secs, retry_base_ms and retry_cap_secs must be positive",
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
            validate_ameyo(&t.ameyo, &|k| key(&format!("ameyo.{k}")))?;
            let need = min_lease_secs(&t.ameyo);
            if sync.lease_secs < need {
                return Err(invalid(
                    "sync.lease_secs",
                    format!(
                        "must be at least {need} for tenant '{}': a delivery makes up to five \
                         Ameyo calls, so the lease must cover 5 × request_timeout_secs + 5 seconds",
                        t.id
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The key that encrypts pending passwords (see [`Settings::password_keys`]).
    pub fn password_key(&self) -> Result<[u8; 32], ConfigError> {
        Ok(self.password_keys()?.0)
    }

    /// The current key (encrypts and decrypts) and the previous ones (decrypt only),
    /// every one checked.
    pub fn password_keys(&self) -> Result<([u8; 32], Vec<[u8; 32]>), ConfigError> {
        let Some(k) = &self.sync.password_key else {
            return Err(invalid(
                "sync.password_key",
                "required: 32 random bytes in base64 (openssl rand -base64 32)",
            ));
        };
        let current = decode_key("sync.password_key", k)?;
        let previous = self
            .sync
            .previous_password_keys
            .iter()
            .enumerate()
            // An empty environment variable lists no key rather than an empty one.
            .filter(|(_, k)| !k.expose_secret().trim().is_empty())
            .map(|(i, k)| decode_key(&format!("sync.previous_password_keys[{i}]"), k))
            .collect::<Result<_, _>>()?;
        Ok((current, previous))
    }

    /// The effective settings as TOML, secrets redacted.
    pub fn redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render settings: {e}\n"))
    }
}

fn decode_key(name: &str, key: &SecretString) -> Result<[u8; 32], ConfigError> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(key.expose_secret().trim())
        .map_err(|_| invalid(name, "must be base64"))?;
    bytes
        .try_into()
        .map_err(|_| invalid(name, "must decode to exactly 32 bytes"))
}

fn validate_ameyo(a: &AmeyoSettings, key: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
    match (&a.login_user, &a.login_password, &a.session_id) {
        (Some(u), Some(_), None) if !u.trim().is_empty() => {}
        (None, None, Some(s)) if !s.expose_secret().trim().is_empty() => {}
        _ => {
            return Err(invalid(
                key("login_user"),
                "set login_user and login_password, or session_id (not both)",
            ));
        }
    }
    if a.connect_timeout_secs == 0 || a.request_timeout_secs == 0 {
        return Err(invalid(
            key("request_timeout_secs"),
            "timeouts must be positive",
        ));
    }
    if a.max_concurrent_calls
        .is_some_and(|n| !(1..=256).contains(&n))
    {
        return Err(invalid(
            key("max_concurrent_calls"),
            "must be between 1 and 256",
        ));
    }
    Ok(())
}

/// The shortest lease that covers one delivery to this Ameyo: up to five calls (log
/// in, list, create, list again, update), plus the five seconds a delivery is cut off
/// before its lease ends. `request_timeout_secs` is each call's whole deadline, connect
/// phase included (the client sets it as reqwest's total timeout), so
/// `connect_timeout_secs` adds nothing to it.
fn min_lease_secs(a: &AmeyoSettings) -> u64 {
    a.request_timeout_secs.saturating_mul(5).saturating_add(5)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn base(extra: &str) -> String {
        format!(
            r#"
[sync]
password_key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
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
login_user = "admin"
login_password = "ameyo-admin-password"
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
        assert!(!out.contains("ameyo-admin-password"), "{out}");
        assert!(!out.contains("MDEyMzQ1Njc4"), "{out}");
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
            (
                base(&tenant("acme", DIGEST)).replace("login_user = \"admin\"\n", ""),
                "login_user",
            ),
            (
                base(&tenant("acme", DIGEST))
                    .replace("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=", "c2hvcnQ="),
                "password_key",
            ),
            (
                base(&tenant("acme", DIGEST)).replace("[sync]", "[sync]\nlease_secs = 104"),
                "sync.lease_secs: must be at least 105 for tenant 'acme'",
            ),
            (
                base(
                    &(tenant("fast", DIGEST)
                        + "request_timeout_secs = 1\n"
                        + &tenant("slow", &DIGEST.replace('9', "8"))
                        + "request_timeout_secs = 2\n"),
                )
                .replace("[sync]", "[sync]\nlease_secs = 14"),
                "sync.lease_secs: must be at least 15 for tenant 'slow'",
            ),
            (
                base(&tenant("acme", DIGEST)).replace("[sync]", "[sync]\nlease_secs = 9")
                    + "request_timeout_secs = 1\n",
                "sync.lease_secs: must be at least 10",
            ),
        ];
        for (text, want) in cases {
            let e = Settings::from_toml(&text).expect_err(&text).to_string();
            assert!(e.contains(want), "wanted {want:?} in {e:?}");
        }
    }

    #[test]
    fn the_lease_may_be_as_short_as_the_calls_it_covers() {
        let s = Settings::from_toml(
            &(base(&tenant("acme", DIGEST)).replace("[sync]", "[sync]\nlease_secs = 10")
                + "connect_timeout_secs = 30\nrequest_timeout_secs = 1\n"),
        )
        .unwrap();
        assert_eq!(s.sync.lease_secs, 10);
        let d = SyncSettings::default();
        let a = &Settings::from_toml(&base(&tenant("acme", DIGEST)))
            .unwrap()
            .tenants[0]
            .ameyo;
        assert!(d.lease_secs >= min_lease_secs(a), "the defaults pass");
    }

    #[test]
    fn bounds_default_to_what_the_operator_already_named_and_are_shown() {
        let text = base(
            &(tenant("acme", DIGEST)
                + "[[tenants.ameyo.mapping.rules]]\nattribute = \"title\"\nmatches = \"x\"\ncontact_center_id = 9\n\
                   [[tenants.ameyo.mapping.rules]]\nattribute = \"title\"\nmatches = \"y\"\ncontact_center_id = 1\n"),
        );
        let s = Settings::from_toml(&text).unwrap();
        let a = &s.tenants[0].ameyo;
        assert!(!a.adopt_existing);
        assert_eq!(a.allowed_contact_center_ids, Some(vec![1, 9]));
        assert_eq!(
            a.allowed_user_types,
            [
                "Agent",
                "Supervisor",
                "Executive",
                "Professional Agent",
                "Analyst"
            ]
        );
        let out = s.redacted_toml();
        assert!(out.contains("adopt_existing = false"), "{out}");
        assert!(
            out.contains("allowed_contact_center_ids = [\n    1,\n    9,\n]"),
            "{out}"
        );
        assert!(out.contains("\"Professional Agent\""), "{out}");

        let explicit = Settings::from_toml(
            &(base(&tenant("acme", DIGEST))
                + "adopt_existing = true\nallowed_contact_center_ids = [1, 4]\nallowed_user_types = [\"agent\"]\n"),
        )
        .unwrap();
        let a = &explicit.tenants[0].ameyo;
        assert!(a.adopt_existing);
        assert_eq!(a.allowed_contact_center_ids, Some(vec![1, 4]));
        assert_eq!(a.allowed_user_types, ["agent"]);
    }

    #[test]
    fn previous_password_keys_are_checked_and_redacted() {
        const K1: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
        const K2: &str = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODk=";
        let with = |list: &str| {
            base(&tenant("acme", DIGEST)).replace(
                "[database]",
                &format!("previous_password_keys = {list}\n[database]"),
            )
        };
        let s = Settings::from_toml(&base(&tenant("acme", DIGEST))).unwrap();
        let (current, previous) = s.password_keys().unwrap();
        assert_eq!(&current, b"0123456789abcdef0123456789abcdef");
        assert!(previous.is_empty());

        let s = Settings::from_toml(&with(&format!(r#"["{K2}", " ", "{K1}"]"#))).unwrap();
        let (current, previous) = s.password_keys().unwrap();
        assert_eq!(s.password_key().unwrap(), current);
        assert_eq!(
            previous,
            vec![*b"ABCDEFGHIJKLMNOPQRSTUVWXYZ456789", current]
        );
        let out = s.redacted_toml();
        assert!(
            !out.contains("QUJDREVG") && !out.contains("MDEyMzQ1"),
            "{out}"
        );
        let shown: Settings = toml::from_str(&out).unwrap();
        assert_eq!(shown.sync.previous_password_keys.len(), 3);
        assert!(
            shown
                .sync
                .previous_password_keys
                .iter()
                .all(|k| k.expose_secret() == "REDACTED"),
            "{out}"
        );

        for (list, want) in [
            (
                format!(r#"["{K2}", "c2hvcnQ="]"#),
                "sync.previous_password_keys[1]",
            ),
            (
                r#"["not base64!"]"#.to_string(),
                "sync.previous_password_keys[0]",
            ),
        ] {
            let e = Settings::from_toml(&with(&list))
                .expect_err(&list)
                .to_string();
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
        assert_eq!(
            redacted_url("postgres://u@h/d?sslmode=require&password=S3cret"),
            "postgres://u@h/d?sslmode=require&password=REDACTED"
        );
    }
}
