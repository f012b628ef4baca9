//! The embedded store's groups: [`SqliteGroupStore`], the [`GroupStore`] of one SQLite
//! file. (Being written: every method refuses until then.)

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::SqlitePool;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::scim::group::{GroupChange, GroupInput, StoredGroup};
use crate::store::groups::{GroupPage, GroupStore, Watched};
use crate::store::{IfMatch, ListQuery, Result, StoreError};

#[derive(Clone, Debug)]
pub struct SqliteGroupStore {
    pool: SqlitePool,
    wake: Option<Arc<Notify>>,
    write: super::WriteLock,
}

impl SqliteGroupStore {
    pub fn new(pool: SqlitePool) -> Self {
        Self {
            pool,
            wake: None,
            write: super::WriteLock::default(),
        }
    }
    pub fn with_write_lock(mut self, write: super::WriteLock) -> Self {
        self.write = write;
        self
    }
    pub fn with_wakeup(mut self, wake: Arc<Notify>) -> Self {
        self.wake = Some(wake);
        self
    }
    fn unsupported(&self) -> StoreError {
        let _ = (&self.pool, &self.wake, &self.write);
        StoreError::Database(sqlx::Error::Configuration("groups: not yet".into()))
    }
}

#[async_trait]
impl GroupStore for SqliteGroupStore {
    async fn create_group(
        &self,
        _: &str,
        _: GroupInput,
        _: &Watched<'_>,
        _: bool,
    ) -> Result<StoredGroup> {
        Err(self.unsupported())
    }
    async fn get_group(&self, _: &str, _: Uuid, _: bool) -> Result<Option<StoredGroup>> {
        Err(self.unsupported())
    }
    async fn list_groups(&self, _: &str, _: &ListQuery, _: bool) -> Result<GroupPage> {
        Err(self.unsupported())
    }
    async fn change_group(
        &self,
        _: &str,
        _: Uuid,
        _: Option<&IfMatch>,
        _: &GroupChange,
        _: &Watched<'_>,
        _: bool,
    ) -> Result<StoredGroup> {
        Err(self.unsupported())
    }
    async fn delete_group(
        &self,
        _: &str,
        _: Uuid,
        _: Option<&IfMatch>,
        _: &Watched<'_>,
    ) -> Result<()> {
        Err(self.unsupported())
    }
}
