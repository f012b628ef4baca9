//! Waking the delivery workers after a commit that made work due, on PostgreSQL.
//!
//! This process's workers are woken at once, in memory. Workers of other processes
//! (replicas, or a process that only delivers) hear a `NOTIFY` on
//! [`SYNC_CHANNEL`](super::outbox::SYNC_CHANNEL), sent after the commit by a task of
//! this process: one for the first write, then at most one per [`NOTIFY_GAP`] however
//! many writes commit meanwhile.
//!
//! The writes do not send the `NOTIFY` themselves. A transaction that notifies takes
//! PostgreSQL's notification-queue lock from its pre-commit until the commit is on
//! disk, so every create that notified waited for the flush of the one before it:
//! `pgbench` running the create statement with its `pg_notify` managed 2,200 creates
//! a second on the 2-core machine, and 4,800 without it. A notification is only a
//! hint (workers also poll, and a worker that restarts claims whatever is due), so
//! sending it after the commit, and once for many commits, loses nothing.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{Notify, mpsc};

use super::outbox::notify;

/// The least time between two `NOTIFY`s this process sends for its writes: the longest
/// a worker of another process waits to hear of a write.
pub const NOTIFY_GAP: Duration = Duration::from_millis(20);

/// The wake-up of one database's workers; clones share it.
#[derive(Clone, Debug)]
pub struct PgWake(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    pool: PgPool,
    local: Arc<Notify>,
    /// Asks the sending task for a `NOTIFY`; started by the first write that needs one.
    remote: OnceLock<mpsc::Sender<()>>,
}

impl PgWake {
    pub fn new(pool: PgPool) -> Self {
        Self(Arc::new(Inner {
            pool,
            local: Arc::new(Notify::new()),
            remote: OnceLock::new(),
        }))
    }

    /// What wakes this process's workers ([`super::outbox::Outbox::listen`] waits on it).
    pub fn local(&self) -> &Arc<Notify> {
        &self.0.local
    }

    /// A write that made work due has committed. Call it from a task of a Tokio
    /// runtime (the sending task is spawned on the first call).
    pub fn due(&self) {
        self.0.local.notify_one();
        let remote = self.0.remote.get_or_init(|| {
            // One waiting request is enough: more would become the same NOTIFY.
            let (tx, rx) = mpsc::channel(1);
            tokio::spawn(send_notifies(self.0.pool.clone(), rx));
            tx
        });
        // Full: a NOTIFY is already on its way after this commit.
        let _ = remote.try_send(());
    }
}

/// Sends a `NOTIFY` for each request, then waits [`NOTIFY_GAP`] so the requests made
/// meanwhile become one. Ends when every [`PgWake`] sharing it is gone.
async fn send_notifies(pool: PgPool, mut due: mpsc::Receiver<()>) {
    while due.recv().await.is_some() {
        if let Err(e) = notify(&pool, "due").await {
            // The other processes' workers find the work when they next poll.
            tracing::debug!(error = %e, "cannot send NOTIFY");
        }
        tokio::time::sleep(NOTIFY_GAP).await;
    }
}
