//! Persistence of SCIM users and their outbox rows, behind [`UserStore`]. Postgres is
//! the backend ([`postgres::PgStore`]); filters are translated to SQL in [`filter_sql`].

pub mod filter_sql;
pub mod outbox;
pub mod password;
pub mod postgres;
pub mod session;

use async_trait::async_trait;
use uuid::Uuid;

use crate::scim::ScimError;
use crate::scim::filter::{AttrPath, Filter};
use crate::scim::resource::{StoredUser, UserInput};

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
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                StoreError::Unavailable(e)
            }
            e => StoreError::Database(e),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_parses_weak_and_strong_tags() {
        assert_eq!(IfMatch::parse("*"), IfMatch::Any);
        let m = IfMatch::parse(r#"W/"3", "4", bogus, W/"x""#);
        assert!(m.matches(3) && m.matches(4) && !m.matches(5));
    }
}
