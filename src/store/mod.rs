//! Persistence of SCIM users and their outbox rows, behind [`UserStore`]. Postgres is
//! the backend ([`postgres::PgStore`]); filters are translated to SQL in [`filter_sql`].

pub mod backend;
pub mod filter_sql;
pub mod groups;
pub mod lock;
pub mod outbox;
#[cfg(test)]
pub(crate) mod outbox_contract;
pub mod page_cursor;
pub mod password;
pub mod postgres;
pub mod session;
pub mod sqlite;
pub mod wake;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

use crate::scim::ScimError;
use crate::scim::filter::{AttrPath, CompValue, CompareOp, Filter};
use crate::scim::resource::{StoredUser, UserInput};
use crate::scim::schema::Container;

pub use postgres::PgStore;

/// A list request after parsing: what to match, how to order, which page.
#[derive(Debug, Clone)]
pub struct ListQuery {
    pub filter: Option<Filter>,
    pub sort_by: Option<AttrPath>,
    pub descending: bool,
    /// 1-based.
    pub start_index: u64,
    /// 0 asks for `totalResults` only.
    pub count: u64,
}

/// One page of a list.
#[derive(Debug)]
pub struct Page {
    pub total: u64,
    pub users: Vec<StoredUser>,
}

/// An `If-Match` precondition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfMatch {
    Any,
    /// The versions named by the entity tags; a tag we could not have issued names none.
    Versions(Vec<i64>),
}

impl IfMatch {
    /// Parse an `If-Match` header value (RFC 9110 §13.1.1).
    pub fn parse(header: &str) -> Self {
        if header.trim() == "*" {
            return IfMatch::Any;
        }
        let versions = header
            .split(',')
            .filter_map(|tag| {
                let tag = tag.trim();
                let tag = tag.strip_prefix("W/").unwrap_or(tag);
                tag.strip_prefix('"')?.strip_suffix('"')?.parse().ok()
            })
            .collect();
        IfMatch::Versions(versions)
    }

    pub fn matches(&self, version: i64) -> bool {
        match self {
            IfMatch::Any => true,
            IfMatch::Versions(v) => v.contains(&version),
        }
    }
}

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no such user")]
    NotFound,
    #[error("userName is already taken in this tenant")]
    UserNameTaken,
    #[error("no such group")]
    GroupNotFound,
    #[error("displayName is already taken in this tenant")]
    DisplayNameTaken,
    #[error("If-Match does not match the current version")]
    PreconditionFailed,
    /// The change itself was refused (a PATCH that does not apply, say).
    #[error(transparent)]
    Rejected(#[from] ScimError),
    #[error("the database is unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if is_transient(&e) {
            StoreError::Unavailable(e)
        } else {
            StoreError::Database(e)
        }
    }
}

/// Whether an error says "the database cannot serve us right now" rather than "this
/// request is wrong": the same request may well succeed a little later, so clients get
/// 503 with `Retry-After` instead of 500.
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
        // A failed TLS handshake, or a byte stream that is not the Postgres protocol (a
        // proxy restarting, a connection cut mid-message): the link is broken, not the
        // request, and the pool drops the connection.
        sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => true,
        // SQLite: the file is busy or locked by another connection past busy_timeout.
        sqlx::Error::Database(db)
            if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() =>
        {
            db.code()
                .and_then(|c| c.parse::<i32>().ok())
                .is_some_and(|c| matches!(c & 0xff, 5 | 6))
        }
        sqlx::Error::Database(db) => db.code().is_some_and(|c| is_transient_sqlstate(&c)),
        _ => false,
    }
}

/// Transient SQLSTATEs (PostgreSQL manual, appendix A).
pub fn is_transient_sqlstate(code: &str) -> bool {
    // Class 08: connection exception.
    code.starts_with("08")
        || matches!(
            code,
            // admin_shutdown, crash_shutdown, cannot_connect_now, idle_session_timeout:
            // the server ended or refused the session while it restarts or fails over.
            "57P01" | "57P02" | "57P03" | "57P05"
            // query_canceled (statement_timeout), lock_not_available (lock_timeout): the
            // server is too busy for this request now.
            | "57014" | "55P03"
            // insufficient_resources, out_of_memory, too_many_connections. Not 53100
            // (disk_full) nor 53400 (configuration_limit_exceeded): those last until an
            // operator acts, so retrying only adds load.
            | "53000" | "53200" | "53300"
            // serialization_failure, deadlock_detected: the transaction lost a race and
            // was rolled back whole; running it again is the documented remedy.
            | "40001" | "40P01"
        )
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Ready as far as the schema goes: every migration of `migrator` is among `applied`
/// (the versions the database recorded as done). The message says how many are not.
pub(crate) fn all_applied(
    migrator: &sqlx::migrate::Migrator,
    applied: &[i64],
) -> Result<(), String> {
    let missing = migrator
        .iter()
        .filter(|m| !applied.contains(&m.version))
        .count();
    if missing > 0 {
        return Err(format!("{missing} migration(s) not applied"));
    }
    Ok(())
}

/// Computes a user's next state from its current one, or `None` for "no change".
/// It may be called more than once when writers race.
pub type Change<'a> =
    dyn Fn(&StoredUser) -> Result<Option<UserInput>, ScimError> + Send + Sync + 'a;

/// Users of one tenant at a time: every method is scoped by the tenant id.
#[async_trait]
pub trait UserStore: Send + Sync + 'static {
    /// Insert a new user and its pending sync row, atomically.
    async fn create(&self, tenant: &str, user: UserInput) -> Result<StoredUser>;
    async fn get(&self, tenant: &str, id: Uuid) -> Result<Option<StoredUser>>;
    async fn list(&self, tenant: &str, query: &ListQuery) -> Result<Page>;
    /// Read-modify-write: `change` sees the current user; its result is stored with a
    /// new version and a pending sync row, atomically.
    async fn update(
        &self,
        tenant: &str,
        id: Uuid,
        if_match: Option<&IfMatch>,
        change: &Change<'_>,
    ) -> Result<StoredUser>;
    /// Make the user disappear for SCIM and leave a tombstone for delivery.
    async fn delete(&self, tenant: &str, id: Uuid, if_match: Option<&IfMatch>) -> Result<()>;
    /// Ready to serve: the database answers and every migration is applied. The
    /// message says what is wrong.
    async fn ready(&self) -> Result<(), String>;
    /// The users `key` names, for the admin CLI: an id (live or a tombstone), or a
    /// userName compared case-insensitively (live users only); in one tenant or in all.
    /// Returns (tenant, id) pairs.
    async fn find(&self, tenant: Option<&str>, key: &str) -> Result<Vec<(String, Uuid)>>;
    /// A user even if it is a tombstone on its way out, and whether it is one.
    async fn read_any(&self, tenant: &str, id: Uuid) -> Result<Option<(StoredUser, bool)>>;
    /// In the background: open the connections the pool keeps (on PostgreSQL
    /// [`warm_connections`]) and run each hot statement (the
    /// userName, externalId, e-mail and id lookups, the unfiltered page and its count)
    /// once on each, so the first requests after start do not pay for cold connections
    /// and statements. [`UserStore::ready`] answers "warming up" from this call until
    /// the warm-up is done or has given up (after [`WARM_UP_DEADLINE`] of failures).
    fn warm_up(self: Arc<Self>, tenants: Vec<String>) -> tokio::task::JoinHandle<()>;
}

/// How long a warm-up keeps retrying (the database may still be coming up) before the
/// store reports ready without it.
pub const WARM_UP_DEADLINE: Duration = Duration::from_secs(30);

/// Whether a store's warm-up is under way, shared by the store and its warm-up task.
#[derive(Debug, Clone, Default)]
pub(crate) struct Warming(Arc<AtomicBool>);

impl Warming {
    /// `Err` while the warm-up runs, for [`UserStore::ready`].
    pub(crate) fn check(&self) -> Result<(), String> {
        match self.0.load(Ordering::Acquire) {
            true => Err("warming up: opening connections and preparing statements".into()),
            false => Ok(()),
        }
    }

    /// Mark the warm-up under way now, and run `attempt` in the background until it
    /// succeeds or [`WARM_UP_DEADLINE`] has passed.
    pub(crate) fn spawn<F, Fut>(&self, attempt: F) -> tokio::task::JoinHandle<()>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<usize>> + Send,
    {
        self.0.store(true, Ordering::Release);
        let flag = self.0.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            loop {
                match attempt().await {
                    Ok(connections) => {
                        tracing::info!(
                            connections,
                            ms = started.elapsed().as_millis() as u64,
                            "store warmed up"
                        );
                        break;
                    }
                    Err(e) if started.elapsed() < WARM_UP_DEADLINE => {
                        tracing::debug!(error = %e, "warm-up failed; trying again");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "warm-up gave up; serving with cold connections");
                        break;
                    }
                }
            }
            flag.store(false, Ordering::Release);
        })
    }
}

/// How many of a PostgreSQL pool's `max` connections a warm-up opens and the pool keeps
/// open: all of them, up to 32. A lookup takes one connection, and the pool is sized
/// for the requests and deliveries it serves at once, so none of them waits for a
/// connection to open and warm up; beyond 32, the pool opens (and warms) the rest as
/// the load needs them.
pub fn warm_connections(max: u32) -> u32 {
    max.clamp(1, 32)
}

/// The query that reads every match of `q` at once, when its filter can match at most
/// one user: `userName eq` (unique in a tenant, compared case-insensitively) or `id eq`.
/// Its first page of up to two users then holds all the matches, so the total needs no
/// count of its own.
pub(crate) fn single_match_probe(q: &ListQuery) -> Option<ListQuery> {
    let Some(Filter::Compare(path, CompareOp::Eq, CompValue::Str(_))) = &q.filter else {
        return None;
    };
    let unique = path.attr.container == Container::Core
        && path.sub.is_none()
        && matches!(path.attr.attr.name, "userName" | "id");
    unique.then(|| ListQuery {
        start_index: 1,
        count: 2,
        ..q.clone()
    })
}

/// The page `q` asks for, from the users its [`single_match_probe`] read; `None` if that
/// found more than one (then only a count tells the total).
pub(crate) fn page_of_probe(q: &ListQuery, matches: Vec<StoredUser>) -> Option<Page> {
    if matches.len() > 1 {
        return None;
    }
    let skip = usize::try_from(q.start_index.saturating_sub(1)).unwrap_or(usize::MAX);
    let take = usize::try_from(q.count).unwrap_or(usize::MAX);
    Some(Page {
        total: matches.len() as u64,
        users: matches.into_iter().skip(skip).take(take).collect(),
    })
}

/// The list requests a warm-up runs once on each connection: the lookups IdPs send.
pub(crate) fn warm_up_queries() -> Vec<ListQuery> {
    let lookups = [
        r#"userName eq "warm-up@invalid""#,
        r#"externalId eq "warm-up""#,
        r#"emails[type eq "work"].value eq "warm-up@invalid""#,
        r#"emails.value eq "warm-up@invalid""#,
        r#"id eq "00000000-0000-0000-0000-000000000000""#,
    ];
    lookups
        .iter()
        .map(|f| ListQuery {
            filter: Some(crate::scim::filter::parse(f).expect("a valid filter")),
            sort_by: None,
            descending: false,
            start_index: 1,
            count: 100,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database error carrying only a SQLSTATE, as the driver would report it.
    #[derive(Debug)]
    struct Coded(&'static str);

    impl std::fmt::Display for Coded {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "error {}", self.0)
        }
    }

    impl std::error::Error for Coded {}

    impl sqlx::error::DatabaseError for Coded {
        fn message(&self) -> &str {
            "test"
        }
        fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
            Some(self.0.into())
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    #[test]
    fn transient_sqlstates() {
        for code in [
            "08000", "08001", "08003", "08004", "08006", "08P01", "57P01", "57P02", "57P03",
            "57P05", "57014", "55P03", "53000", "53200", "53300", "40001", "40P01",
        ] {
            assert!(is_transient_sqlstate(code), "{code}");
        }
        for code in [
            "23505", "23503", "22001", "42P01", "42501", "28000", "28P01", "3D000", "53100",
            "53400", "40000", "57000", "XX000", "",
        ] {
            assert!(!is_transient_sqlstate(code), "{code}");
        }
    }

    #[test]
    fn transient_errors_are_unavailable() {
        let transient = [
            sqlx::Error::from(Coded("57P01")),
            sqlx::Error::from(Coded("08006")),
            sqlx::Error::from(Coded("40001")),
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::Io(std::io::ErrorKind::ConnectionReset.into()),
            sqlx::Error::Tls("handshake failed".into()),
            sqlx::Error::Protocol("unexpected message".into()),
        ];
        for e in transient {
            let shown = e.to_string();
            assert!(
                matches!(StoreError::from(e), StoreError::Unavailable(_)),
                "{shown}"
            );
        }
        let permanent = [
            sqlx::Error::from(Coded("23505")),
            sqlx::Error::from(Coded("42P01")),
            sqlx::Error::RowNotFound,
            sqlx::Error::ColumnNotFound("x".into()),
        ];
        for e in permanent {
            let shown = e.to_string();
            assert!(
                matches!(StoreError::from(e), StoreError::Database(_)),
                "{shown}"
            );
        }
    }

    #[test]
    fn only_lookups_by_a_unique_key_skip_the_count() {
        let q = |filter: &str| ListQuery {
            filter: Some(crate::scim::filter::parse(filter).unwrap()),
            sort_by: None,
            descending: false,
            start_index: 7,
            count: 0,
        };
        for unique in [
            r#"userName eq "a@example.com""#,
            r#"USERNAME eq "a@example.com""#,
            r#"id eq "00000000-0000-0000-0000-000000000001""#,
        ] {
            let probe = single_match_probe(&q(unique)).expect(unique);
            assert_eq!((probe.start_index, probe.count), (1, 2), "{unique}");
        }
        for counted in [
            r#"userName ne "a@example.com""#,
            r#"userName sw "a""#,
            r#"userName eq "a" or userName eq "b""#,
            r#"userName eq "a" and active eq true"#,
            r#"not (userName eq "a")"#,
            r#"externalId eq "a""#,
            r#"emails.value eq "a@example.com""#,
            r#"name.familyName eq "a""#,
            r#"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber eq "1""#,
        ] {
            assert!(single_match_probe(&q(counted)).is_none(), "{counted}");
        }
    }

    #[test]
    fn if_match_parses_weak_and_strong_tags() {
        assert_eq!(IfMatch::parse("*"), IfMatch::Any);
        let m = IfMatch::parse(r#"W/"3", "4", bogus, W/"x""#);
        assert!(m.matches(3) && m.matches(4) && !m.matches(5));
    }
}
