//! On PostgreSQL, a write that makes a delivery due wakes this process's workers in
//! memory, and other processes' workers through `NOTIFY`, sent after the commit and
//! coalesced: a burst of writes sends a few notifications, not one each.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ameyo_scim::scim::resource::parse_user;
use ameyo_scim::store::outbox::{Outbox, PgOutbox, SYNC_CHANNEL};
use ameyo_scim::store::password::PasswordCipher;
use ameyo_scim::store::wake::{NOTIFY_GAP, PgWake};
use ameyo_scim::store::{PgStore, UserStore};
use common::db::TestDb;
use serde_json::json;
use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const T: &str = "acme";

fn user(name: &str) -> ameyo_scim::scim::resource::UserInput {
    parse_user(json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": name,
    }))
    .unwrap()
}

/// The worker of the process that wrote hears the write in memory: its outbox cannot
/// LISTEN at all here (its pool points at a port nobody serves), and it still wakes.
#[tokio::test]
async fn a_write_wakes_this_process_worker_without_listen() {
    let db = TestDb::postgres().await;
    let wake = PgWake::new(db.pg_pool());
    let users = PgStore::new(db.pg_pool(), PasswordCipher::new(&[7u8; 32])).with_wake(wake.clone());
    let nowhere = PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(200))
        .connect_lazy("postgres://nobody@127.0.0.1:1/none")
        .unwrap();
    let outbox = Arc::new(PgOutbox::new(nowhere).with_wake(wake));
    let notify = Arc::new(Notify::new());
    let shutdown = CancellationToken::new();
    let listener = tokio::spawn(outbox.listen(notify.clone(), shutdown.clone()));

    let quiet = tokio::time::timeout(Duration::from_millis(100), notify.notified()).await;
    assert!(quiet.is_err(), "no wake-up without a write");
    let created = users.create(T, user("ann")).await.unwrap();
    tokio::time::timeout(Duration::from_secs(2), notify.notified())
        .await
        .expect("a create wakes the worker");
    users.delete(T, created.id, None).await.unwrap();
    tokio::time::timeout(Duration::from_secs(2), notify.notified())
        .await
        .expect("a delete wakes the worker");

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), listener)
        .await
        .expect("listen ends at shutdown")
        .unwrap();
}

/// Another process hears this one's writes through `NOTIFY`: at least once after the
/// last write committed, and far fewer times than there were writes.
#[tokio::test]
async fn writes_notify_other_processes_after_commit_and_coalesced() {
    let db = TestDb::postgres().await;
    let backend = db.open(&common::settings()).await;
    let mut other = PgListener::connect(db.url()).await.unwrap();
    other.listen(SYNC_CHANNEL).await.unwrap();

    // 16 writers at once, as an IdP's import sends them.
    let writes = 400;
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for w in 0..16 {
        let users = backend.users.clone();
        set.spawn(async move {
            let mut last = None;
            for i in 0..writes / 16 {
                last = Some(users.create(T, user(&format!("u{w}-{i}"))).await.unwrap());
            }
            last.unwrap().id
        });
    }
    let last = set.join_all().await;
    // The last write is a delete: it notifies too.
    backend.users.delete(T, last[0], None).await.unwrap();
    let last_commit = Instant::now();

    let mut heard = Vec::new();
    while let Ok(n) = tokio::time::timeout(Duration::from_millis(500), other.recv()).await {
        let n = n.unwrap();
        assert_eq!(n.channel(), SYNC_CHANNEL);
        heard.push(Instant::now());
    }
    assert!(
        heard.iter().any(|&at| at >= last_commit),
        "a NOTIFY follows the last commit"
    );
    // One for the first write, then at most one per gap, and one after the last.
    let most = 2 + (last_commit - started).as_millis() / NOTIFY_GAP.as_millis();
    assert!(
        (heard.len() as u128) <= most,
        "{} notifications for {} writes in {:?}",
        heard.len(),
        writes + 1,
        last_commit - started
    );
}
