//! The outbox under the failures it exists for: replicas that do not know a tenant,
//! workers that die holding leases, deliveries that crash, creates whose outcome is
//! unknown, calls that may land late, dead letters an IdP pushes again, and an attempt
//! log that must be pruned whole.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ameyo_emulator::{EmulatorOptions, Faults, Outage};
use ameyo_scim::store::outbox::{
    Attempt, Claimed, Completing, Completion, LinkedUser, Outbox, SyncCount, SyncEntry,
    UserIdClaim, Which,
};
use ameyo_scim::sync::{STALE_AFTER, Worker};
use async_trait::async_trait;
use axum::http::Method;
use common::*;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const LIMIT: Duration = Duration::from_secs(30);

/// One outbox row, as the assertions read it.
async fn row(db: &Sql, user: Uuid) -> OutboxRow {
    db.outbox_row(user).await.expect("outbox row")
}

fn uuid(id: &str) -> Uuid {
    id.parse().expect("a user id is a uuid")
}

fn tenant_a() -> Vec<String> {
    vec!["a".to_string()]
}

/// The settings `sync_app` uses, for building further workers against its emulator.
fn settings_of(s: &SyncApp) -> ameyo_scim::config::Settings {
    sync_settings(&s.emulator_url())
}

both_backends!(rows_of_a_tenant_this_process_does_not_know_are_left_alone);
async fn rows_of_a_tenant_this_process_does_not_know_are_left_alone(db: TestDb) {
    let s = sync_app(&db).await;
    let mut of_a = Vec::new();
    let mut of_b = Vec::new();
    for i in 0..3 {
        of_a.push(uuid(
            &s.app.create_named(&format!("a{i}@example.com")).await,
        ));
        let r = s
            .app
            .call(
                Method::POST,
                "/scim/v2/Users",
                Some(TOKEN_B),
                Some(json!({"schemas": [USER_SCHEMA], "userName": format!("b{i}@example.com")})),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        of_b.push(uuid(r.body["id"].as_str().expect("id")));
    }
    // A replica of an older configuration during a rolling deploy: it has never heard
    // of tenant b.
    let mut older = settings_of(&s);
    older.tenants.retain(|t| t.id != "b");
    let worker = Arc::new(worker(&s.app.backend, &older));
    worker.run_until_idle().await.expect("deliveries");

    for id in &of_a {
        assert_eq!(row(&db, *id).await.state, "done");
    }
    for id in &of_b {
        let r = row(&db, *id).await;
        assert_eq!(
            (r.state.as_str(), r.attempts, r.last_error.as_deref()),
            ("pending", 0, None),
            "{r:?}"
        );
        assert!(r.lease_owner.is_none(), "{r:?}");
    }
    assert!(s.ameyo_user("b0@example.com").is_none());

    // A replica that knows tenant b delivers them as if nothing had happened.
    s.drain(LIMIT).await;
    for i in 0..3 {
        assert!(s.ameyo_user(&format!("b{i}@example.com")).is_some());
    }
}

both_backends!(a_dead_holder_is_taken_over_within_seconds_and_a_live_one_keeps_its_lease);
async fn a_dead_holder_is_taken_over_within_seconds_and_a_live_one_keeps_its_lease(db: TestDb) {
    let app = app(&db).await;
    for i in 0..4 {
        app.create_named(&format!("lease{i}@example.com")).await;
    }
    // As if each had been pushed before: a takeover must push every field again.
    db.exec(
        "UPDATE sync_state SET last_pushed = '{\"userName\": \"Old\"}'",
        &[],
    )
    .await;
    let outbox = app.backend.outbox.clone();
    let tenants = tenant_a();
    let lease = Duration::from_secs(120);

    outbox.heartbeat("dead").await.expect("beat");
    let last_beat = Instant::now();
    let dead = outbox
        .claim("dead", &tenants, lease, 2)
        .await
        .expect("claim");
    outbox.heartbeat("live").await.expect("beat");
    let live = outbox
        .claim("live", &tenants, lease, 2)
        .await
        .expect("claim");
    assert_eq!((dead.len(), live.len()), (2, 2));
    // "live" is slow (its deliveries take long) but alive: it beats every 500 ms.
    let beating = tokio::spawn({
        let outbox = outbox.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                outbox.heartbeat("live").await.expect("beat");
            }
        }
    });

    let live_keeps_its_lease = |live: &[Claimed]| {
        let (db, live) = (db.sql(), live.to_vec());
        async move {
            for c in &live {
                let r = row(&db, c.user_id).await;
                assert_eq!(r.state, "leased", "{r:?}");
                assert_eq!(r.lease_owner.as_deref(), Some("live"), "{r:?}");
                assert_eq!(r.lease_token, Some(c.lease_token), "{r:?}");
            }
        }
    };
    // A third worker takes back stale leases, as every worker's heartbeat does.
    let took = loop {
        outbox
            .reclaim_stale(&tenants, STALE_AFTER, 25)
            .await
            .expect("reclaim");
        live_keeps_its_lease(&live).await;
        let mut back = 0;
        for c in &dead {
            if row(&db, c.user_id).await.state == "pending" {
                back += 1;
            }
        }
        if back == dead.len() {
            break last_beat.elapsed();
        }
        assert!(
            last_beat.elapsed() < Duration::from_secs(10),
            "the dead holder's rows are still leased 10 s after its last heartbeat"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!(
        "rows of the dead holder pending again {:.2} s after its last heartbeat",
        took.as_secs_f64()
    );
    assert!(
        took >= STALE_AFTER - Duration::from_millis(500),
        "taken back after {took:?}, before the holder was silent for {STALE_AFTER:?}"
    );
    for c in &dead {
        let r = row(&db, c.user_id).await;
        assert_eq!(
            r.attempts, 1,
            "the lost delivery counts as an attempt: {r:?}"
        );
        assert!(r.last_pushed.is_none(), "{r:?}");
        assert!(r.lease_owner.is_none() && r.lease_token.is_none(), "{r:?}");
        assert!(
            r.last_error
                .as_deref()
                .is_some_and(|e| e.contains("did not finish")),
            "{r:?}"
        );
    }
    // Well past the stale window, the live holder still has every lease it took.
    outbox
        .reclaim_stale(&tenants, STALE_AFTER, 25)
        .await
        .expect("reclaim");
    live_keeps_its_lease(&live).await;
    beating.abort();
}

both_backends!(a_row_whose_holder_keeps_dying_ends_as_a_dead_letter);
async fn a_row_whose_holder_keeps_dying_ends_as_a_dead_letter(db: TestDb) {
    let app = app(&db).await;
    let id = uuid(&app.create_named("poison@example.com").await);
    let outbox = app.backend.outbox.clone();
    let tenants = tenant_a();
    for round in 1..=3 {
        // Each holder takes the row and dies before it ever beats.
        let claimed = outbox
            .claim(
                &format!("crashed-{round}"),
                &tenants,
                Duration::from_secs(120),
                10,
            )
            .await
            .expect("claim");
        assert_eq!(claimed.len(), 1, "round {round}");
        assert_eq!(claimed[0].attempts, round - 1);
        let n = outbox
            .reclaim_stale(&tenants, STALE_AFTER, 3)
            .await
            .expect("reclaim");
        assert_eq!(n, 1, "round {round}");
        let r = row(&db, id).await;
        assert_eq!(r.attempts, round, "{r:?}");
        if round < 3 {
            assert_eq!(r.state, "pending", "{r:?}");
        } else {
            assert_eq!(r.state, "dead", "{r:?}");
            assert!(r.pending_since.is_none(), "{r:?}");
            assert!(
                r.last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("the delivery did not finish")),
                "{r:?}"
            );
        }
    }
    let again = outbox
        .claim("next", &tenants, Duration::from_secs(120), 10)
        .await
        .expect("claim");
    assert!(again.is_empty(), "a dead letter is not claimed again");
}

both_backends!(the_reclaim_dead_letters_resyncs_too);
/// Only a row with a version Ameyo has not seen is given up on by the reclaim: one whose
/// desired version was already delivered (here: an operator's resync of a delivered
/// user) goes back to pending, its attempt counted and still waiting to be delivered.
async fn the_reclaim_dead_letters_resyncs_too(db: TestDb) {
    let app = app(&db).await;
    let undelivered = uuid(&app.create_named("new@example.com").await);
    let delivered = uuid(&app.create_named("old@example.com").await);
    db.exec(
        "UPDATE sync_state SET synced_version = desired_version, state = 'done',
                pending_since = NULL, last_pushed = '{\"userName\": \"Old\"}'
         WHERE user_id = $1",
        &[Arg::id(delivered)],
    )
    .await;
    let outbox = app.backend.outbox.clone();
    assert_eq!(
        outbox
            .resync(Some(&[delivered]), None)
            .await
            .expect("resync"),
        1
    );
    // Both at their last attempt.
    db.exec("UPDATE sync_state SET attempts = 2", &[]).await;
    let tenants = tenant_a();
    let claimed = outbox
        .claim("crashed", &tenants, Duration::from_secs(120), 10)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 2);
    assert_eq!(
        outbox
            .reclaim_stale(&tenants, STALE_AFTER, 3)
            .await
            .expect("reclaim"),
        2
    );

    let r = row(&db, undelivered).await;
    assert_eq!((r.state.as_str(), r.attempts), ("dead", 3), "{r:?}");
    // A resync of a delivered version that keeps dying ends as well: poison rows end
    // whatever made them due.
    let r = row(&db, delivered).await;
    assert_eq!((r.state.as_str(), r.attempts), ("dead", 3), "{r:?}");
    assert!(r.pending_since.is_none(), "{r:?}");
}

/// What a [`HookedOutbox`] does when a delivery claims a userId before a create.
enum OnClaimUserId {
    /// Claim, as the store does.
    Pass,
    /// Panic: the delivery task dies in the middle of a delivery, the way a bug in the
    /// bridge would kill it.
    Panic,
    /// For `held`: say so on `entered`, then wait for `release` before claiming. For
    /// any other user: wait until `held` has entered, then claim.
    Hold {
        held: Uuid,
        entered: Arc<tokio::sync::Semaphore>,
        release: Arc<Notify>,
    },
}

/// An outbox whose userId claim does what the test says. It hands out work only as
/// many times as the test allows (`claims`), so each `run_until_idle` is one attempt
/// however short the retry delay.
struct HookedOutbox {
    inner: Arc<dyn Outbox>,
    claims: AtomicU32,
    on_claim_user_id: OnClaimUserId,
    /// How many rows each claim asked for.
    limits: std::sync::Mutex<Vec<usize>>,
}

#[async_trait]
impl Outbox for HookedOutbox {
    async fn heartbeat(&self, owner: &str) -> ameyo_scim::store::Result<()> {
        self.inner.heartbeat(owner).await
    }
    async fn retire(&self, owner: &str) -> ameyo_scim::store::Result<u64> {
        self.inner.retire(owner).await
    }
    async fn reclaim_stale(
        &self,
        tenants: &[String],
        stale_after: Duration,
        max_attempts: u32,
    ) -> ameyo_scim::store::Result<u64> {
        self.inner
            .reclaim_stale(tenants, stale_after, max_attempts)
            .await
    }
    async fn claim(
        &self,
        owner: &str,
        tenants: &[String],
        lease: Duration,
        limit: usize,
    ) -> ameyo_scim::store::Result<Vec<Claimed>> {
        let allowed = self
            .claims
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if allowed.is_err() {
            return Ok(Vec::new());
        }
        self.limits.lock().unwrap().push(limit);
        self.inner.claim(owner, tenants, lease, limit).await
    }
    async fn claim_user_id(
        &self,
        user: Uuid,
        lease_token: Uuid,
        server: &str,
        ameyo_user_id: &str,
        sending: &Value,
    ) -> ameyo_scim::store::Result<UserIdClaim> {
        match &self.on_claim_user_id {
            OnClaimUserId::Pass => {}
            OnClaimUserId::Panic => panic!("a bug in the bridge while claiming '{ameyo_user_id}'"),
            OnClaimUserId::Hold {
                held,
                entered,
                release,
            } => {
                if user == *held {
                    entered.add_permits(1);
                    release.notified().await;
                } else {
                    // Given back at once: every other user passes once `held` entered.
                    drop(entered.acquire().await.expect("never closed"));
                }
            }
        }
        self.inner
            .claim_user_id(user, lease_token, server, ameyo_user_id, sending)
            .await
    }
    async fn complete(
        &self,
        claimed: &Claimed,
        owner: &str,
        server: &str,
        completion: &Completion<'_>,
        attempts: &[Attempt],
    ) -> ameyo_scim::store::Result<bool> {
        self.inner
            .complete(claimed, owner, server, completion, attempts)
            .await
    }
    async fn adopt_server(&self, tenant: &str, server: &str) -> ameyo_scim::store::Result<u64> {
        self.inner.adopt_server(tenant, server).await
    }
    async fn prune_attempts(&self, older_than_days: u32) -> ameyo_scim::store::Result<u64> {
        self.inner.prune_attempts(older_than_days).await
    }
    async fn listen(self: Arc<Self>, notify: Arc<Notify>, shutdown: CancellationToken) {
        self.inner.clone().listen(notify, shutdown).await
    }
    async fn counts(&self) -> ameyo_scim::store::Result<Vec<SyncCount>> {
        self.inner.counts().await
    }
    async fn list(
        &self,
        which: Which,
        tenant: Option<&str>,
        limit: i64,
    ) -> ameyo_scim::store::Result<Vec<SyncEntry>> {
        self.inner.list(which, tenant, limit).await
    }
    async fn rearm_dead(
        &self,
        user: Option<Uuid>,
        tenant: Option<&str>,
    ) -> ameyo_scim::store::Result<u64> {
        self.inner.rearm_dead(user, tenant).await
    }
    async fn resync(
        &self,
        users: Option<&[Uuid]>,
        tenant: Option<&str>,
    ) -> ameyo_scim::store::Result<u64> {
        self.inner.resync(users, tenant).await
    }
    async fn forget_links(&self, users: &[Uuid]) -> ameyo_scim::store::Result<u64> {
        self.inner.forget_links(users).await
    }
    async fn linked_users(&self, tenant: &str) -> ameyo_scim::store::Result<Vec<LinkedUser>> {
        self.inner.linked_users(tenant).await
    }
    async fn row_report(&self, user: Uuid) -> ameyo_scim::store::Result<Option<Value>> {
        self.inner.row_report(user).await
    }
    async fn recent_attempts(
        &self,
        user: Uuid,
        limit: i64,
    ) -> ameyo_scim::store::Result<Vec<Value>> {
        self.inner.recent_attempts(user, limit).await
    }
}

/// A worker for the tenants of `settings` over a [`HookedOutbox`] around the app's
/// outbox, handing out work `claims` times.
fn hooked_worker(
    s: &SyncApp,
    settings: &ameyo_scim::config::Settings,
    claims: u32,
    on_claim_user_id: OnClaimUserId,
    owner: &str,
) -> (Arc<HookedOutbox>, Arc<Worker>) {
    let tenants = ameyo_scim::tenants::build(settings, &|_| None).expect("tenants");
    let outbox = Arc::new(HookedOutbox {
        inner: s.app.backend.outbox.clone(),
        claims: AtomicU32::new(claims),
        on_claim_user_id,
        limits: Default::default(),
    });
    let worker = Arc::new(Worker::from_tenants(
        &settings.sync,
        &tenants,
        outbox.clone(),
        s.app.backend.cipher.clone(),
        owner.into(),
    ));
    (outbox, worker)
}

/// `ameyo_scim_sync_delivery_panics_total` of tenant `a`, as exported.
fn panics_of_a() -> f64 {
    let text = ameyo_scim::telemetry::metrics::install().render();
    text.lines()
        .find_map(|l| l.strip_prefix("ameyo_scim_sync_delivery_panics_total{tenant=\"a\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

both_backends!(a_panicking_delivery_is_counted_as_an_attempt_and_ends_dead);
async fn a_panicking_delivery_is_counted_as_an_attempt_and_ends_dead(db: TestDb) {
    let s = sync_app(&db).await;
    let id = uuid(&s.app.create_named("crash@example.com").await);
    let mut settings = settings_of(&s);
    settings.sync.max_attempts = 2;
    let (outbox, worker) = hooked_worker(&s, &settings, 1, OnClaimUserId::Panic, "panicky");
    let before = panics_of_a();

    worker.run_until_idle().await.expect("deliveries");
    let r = row(&db, id).await;
    assert_eq!((r.state.as_str(), r.attempts), ("pending", 1), "{r:?}");
    assert!(r.lease_owner.is_none(), "the lease is handed back: {r:?}");
    assert!(
        r.last_error
            .as_deref()
            .is_some_and(|e| e.contains("inside the bridge")),
        "{r:?}"
    );
    assert!(
        panics_of_a() >= before + 1.0,
        "the panic is counted in ameyo_scim_sync_delivery_panics_total"
    );

    // A delivery that panics every time ends once its attempts are used up.
    db.exec(
        "UPDATE sync_state SET next_attempt_at = now() WHERE user_id = $1",
        &[Arg::id(id)],
    )
    .await;
    outbox.claims.store(1, Ordering::SeqCst);
    worker.run_until_idle().await.expect("deliveries");
    let r = row(&db, id).await;
    assert_eq!((r.state.as_str(), r.attempts), ("dead", 2), "{r:?}");
    assert!(panics_of_a() >= before + 2.0);
    assert!(s.emulator.users().is_empty());
}

both_backends!(a_delivery_writing_to_the_database_leaves_its_call_slot_to_others);
/// A call slot is held only while Ameyo is called: with one slot, a delivery stuck
/// claiming its userId in the database does not keep another from calling Ameyo. (Were
/// the slot held for the whole delivery, whichever started first would wait for the
/// other forever.)
async fn a_delivery_writing_to_the_database_leaves_its_call_slot_to_others(db: TestDb) {
    let s = sync_app(&db).await;
    let held = uuid(&s.app.create_named("held@example.com").await);
    s.app.create_named("free@example.com").await;
    let mut settings = settings_of(&s);
    settings.sync.concurrency = 1;
    let release = Arc::new(Notify::new());
    let hold = OnClaimUserId::Hold {
        held,
        entered: Arc::new(tokio::sync::Semaphore::new(0)),
        release: release.clone(),
    };
    let (_, worker) = hooked_worker(&s, &settings, u32::MAX, hold, "one-slot");
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(worker.run(shutdown.clone(), Duration::from_secs(5)));

    let deadline = Instant::now() + Duration::from_secs(20);
    while s.ameyo_user("free@example.com").is_none() {
        assert!(
            Instant::now() < deadline,
            "free@ was not created while held@ was claiming its userId"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        s.ameyo_user("held@example.com").is_none(),
        "held@ is still held"
    );
    release.notify_one();
    while s.ameyo_user("held@example.com").is_none() {
        assert!(
            Instant::now() < deadline,
            "held@ was not created once released"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    running.await.expect("the worker stops");
    assert_eq!(s.calls("POST", "cc/contactCenterUsers").len(), 2);
}

/// Run `worker` as `serve` does until the emulator holds `users` users, then stop it.
async fn run_until_ameyo_holds(
    worker: Arc<Worker>,
    emulator: &ameyo_emulator::Emulator,
    users: usize,
) {
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(worker.run(shutdown.clone(), Duration::from_secs(5)));
    let deadline = Instant::now() + Duration::from_secs(30);
    while emulator.user_count() < users {
        assert!(
            Instant::now() < deadline,
            "only {} delivered",
            emulator.user_count()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    running.await.expect("the worker stops");
}

both_backends!(calls_in_flight_never_exceed_the_concurrency);
/// `sync.concurrency` bounds the calls in flight to Ameyo, and a worker with enough
/// work keeps that many going.
async fn calls_in_flight_never_exceed_the_concurrency(db: TestDb) {
    let s = sync_app_with(&db, EmulatorOptions::default(), |st| {
        st.sync.concurrency = 3;
        // The tenant's own bound is higher: the worker's is the one tested.
        for t in &mut st.tenants {
            t.ameyo.max_concurrent_calls = Some(10);
        }
    })
    .await;
    for i in 0..12 {
        s.app.create_named(&format!("slot{i:02}@example.com")).await;
    }
    s.emulator.set_faults(Faults {
        latency_ms: 100,
        ..Faults::default()
    });
    run_until_ameyo_holds(s.worker.clone(), &s.emulator, 12).await;
    assert_eq!(s.emulator.most_in_flight(), 3);
}

both_backends!(claims_lease_many_rows_at_once);
/// With plenty due, the worker tops its queue up in batches of at least half of
/// `sync.concurrency` rows, never a row per finished delivery (each claim is a
/// statement that costs the database about as much as a delivery's own writes).
async fn claims_lease_many_rows_at_once(db: TestDb) {
    let s = sync_app(&db).await;
    for i in 0..40 {
        s.app
            .create_named(&format!("batch{i:02}@example.com"))
            .await;
    }
    s.emulator.set_faults(Faults {
        latency_ms: 20,
        ..Faults::default()
    });
    let mut settings = settings_of(&s);
    settings.sync.concurrency = 4;
    let (outbox, worker) = hooked_worker(&s, &settings, u32::MAX, OnClaimUserId::Pass, "batches");
    run_until_ameyo_holds(worker, &s.emulator, 40).await;
    let limits = outbox.limits.lock().unwrap().clone();
    assert!(
        limits.iter().all(|&n| n >= 2),
        "claims asked for {limits:?}"
    );
    assert!(
        limits.len() <= 40 / 2 + 2,
        "{} claims: {limits:?}",
        limits.len()
    );
}

both_backends!(unconfirmed_creates_share_one_listing);
async fn unconfirmed_creates_share_one_listing(db: TestDb) {
    let s = sync_app_with(&db, EmulatorOptions::default(), |st| {
        st.sync.concurrency = 16;
    })
    .await;
    s.emulator.set_faults(Faults {
        outage: Some(Outage::Unavailable),
        ..Faults::default()
    });
    let mut names = Vec::new();
    for i in 0..30 {
        let name = format!("unsure{i:02}@example.com");
        s.app.create_named(&name).await;
        names.push(name);
    }
    // One pass during the outage: every attempt fails, nothing is created.
    s.worker.run_until_idle().await.expect("deliveries");
    assert!(s.emulator.users().is_empty());
    // Each create was sent and never answered, as far as the bridge knows.
    let n = db
        .exec(
            "UPDATE sync_state SET create_attempted = true,
                intended_user_id = (SELECT u.user_name FROM users u
                                    WHERE u.id = sync_state.user_id),
                state = 'pending', attempts = 0, next_attempt_at = now(), last_error = NULL,
                updated_at = now()",
            &[],
        )
        .await;
    assert_eq!(n, 30);

    s.emulator.set_faults(Faults::default());
    s.emulator.clear_requests();
    s.drain(LIMIT).await;
    let listings = s
        .calls("GET", "cc/contactCenterUsers/getAllContactCenterUsers")
        .len();
    println!("{listings} listing(s) for 30 unconfirmed creates");
    assert!(
        listings <= 3,
        "{listings} listings for 30 unconfirmed creates"
    );
    let creates = s.calls("POST", "cc/contactCenterUsers");
    for name in &names {
        let sent = creates
            .iter()
            .filter(|r| r.body.as_ref().is_some_and(|b| b["userId"] == json!(name)))
            .count();
        assert_eq!(sent, 1, "{name} created {sent} times");
        assert!(s.ameyo_user(name).is_some(), "{name}");
    }
    assert_eq!(s.emulator.users().len(), 30);
}

both_backends!(a_call_that_may_land_late_is_retried_after_the_request_timeout_with_every_field);
async fn a_call_that_may_land_late_is_retried_after_the_request_timeout_with_every_field(
    db: TestDb,
) {
    // The request timeout is longer than the 1 s Retry-After of the 503 below, so the
    // two delays can be told apart.
    let timeout = 2;
    let s = sync_app_with(&db, EmulatorOptions::default(), |st| {
        for t in &mut st.tenants {
            t.ameyo.request_timeout_secs = timeout;
        }
    })
    .await;
    let id = s.app.create_named("late@example.com").await;
    s.drain(LIMIT).await;
    let uri = format!("/scim/v2/Users/{id}");
    let rename = |name: &str| {
        json!({"schemas": [PATCH_OP],
               "Operations": [{"op": "replace", "path": "displayName", "value": name}]})
    };

    // Ameyo answers after the bridge stopped waiting: the update may still land.
    s.emulator.set_faults(Faults {
        latency_ms: timeout * 1000 + 500,
        ..Faults::default()
    });
    assert_eq!(s.app.patch(&uri, rename("Late")).await.status, 200);
    s.worker.run_until_idle().await.expect("deliveries");
    let r = row(&db, uuid(&id)).await;
    assert_eq!(r.state, "pending", "{r:?}");
    assert!(
        r.delay_secs >= timeout as f64 - 0.01,
        "retried {:.3} s after a call that may still land (request timeout {timeout} s)",
        r.delay_secs
    );
    assert!(
        r.last_pushed.is_none(),
        "the next attempt pushes every field: {r:?}"
    );

    // An answered 503 was not in flight: the normal backoff (here Retry-After: 1 s).
    s.emulator.set_faults(Faults {
        outage: Some(Outage::Unavailable),
        ..Faults::default()
    });
    db.exec(
        "UPDATE sync_state SET next_attempt_at = now() WHERE user_id = $1",
        &[Arg::id(&id)],
    )
    .await;
    s.worker.run_until_idle().await.expect("deliveries");
    let r = row(&db, uuid(&id)).await;
    assert_eq!((r.state.as_str(), r.attempts), ("pending", 2), "{r:?}");
    assert!(
        r.delay_secs < timeout as f64 - 0.5,
        "retried {:.3} s after an answered 503",
        r.delay_secs
    );

    s.emulator.set_faults(Faults::default());
    s.emulator.clear_requests();
    s.drain(LIMIT).await;
    assert_eq!(s.calls("PUT", "cc/contactCenterUsers/").len(), 1);
    assert_eq!(
        s.ameyo_user("late@example.com").expect("user")["userName"],
        json!("Late")
    );
}

both_backends!(pushing_an_unchanged_dead_letter_again_rearms_it);
async fn pushing_an_unchanged_dead_letter_again_rearms_it(db: TestDb) {
    let s = sync_app(&db).await;
    s.emulator.set_faults(Faults {
        reject_user_ids: vec!["rex@example.com".into()],
        ..Faults::default()
    });
    let body = json!({
        "schemas": [USER_SCHEMA],
        "userName": "rex@example.com",
        "name": {"givenName": "Rex", "familyName": "Example"},
        "active": true
    });
    let created = s.app.create_user(body.clone()).await;
    let id = created["id"].as_str().expect("id").to_string();
    s.drain(LIMIT).await;
    let r = row(&db, uuid(&id)).await;
    assert_eq!(r.state, "dead", "{r:?}");

    // The IdP's "push again": the very same body.
    let put = s.app.put(&format!("/scim/v2/Users/{id}"), body).await;
    assert_eq!(put.status, 200, "{}", put.text);
    assert_eq!(
        put.body["meta"]["version"], created["meta"]["version"],
        "nothing changed"
    );
    let r = row(&db, uuid(&id)).await;
    assert_eq!(
        (r.state.as_str(), r.attempts, r.last_error.as_deref()),
        ("pending", 0, None),
        "{r:?}"
    );

    // The cause is gone: delivered.
    s.emulator.set_faults(Faults::default());
    s.drain(LIMIT).await;
    assert_eq!(row(&db, uuid(&id)).await.state, "done");
    assert!(s.ameyo_user("rex@example.com").is_some());
}

both_backends!(pruning_deletes_every_expired_attempt_and_keeps_the_recent_ones);
async fn pruning_deletes_every_expired_attempt_and_keeps_the_recent_ones(db: TestDb) {
    for (rows, days_ago) in [(25_000, 30), (10, 1)] {
        db.seed_attempts(rows, days_ago).await;
    }
    let pruned = db
        .open(&settings())
        .await
        .outbox
        .prune_attempts(14)
        .await
        .expect("prune");
    assert_eq!(pruned, 25_000);
    let (old, recent) = db.attempts_by_age(14).await;
    assert_eq!((old, recent), (0, 10));
}

both_backends!(a_batch_of_completions_records_each_row_by_its_own_lease);
async fn a_batch_of_completions_records_each_row_by_its_own_lease(db: TestDb) {
    let app = app(&db).await;
    let mut users = Vec::new();
    for name in ["ann", "bob", "cat", "dan", "eve"] {
        users.push(uuid(
            &app.create_named(&format!("{name}@example.com")).await,
        ));
    }
    let eve = users[4];
    app.delete(&format!("/scim/v2/Users/{eve}")).await;
    let outbox = app.backend.outbox.clone();
    let mut claimed = outbox
        .claim("w1", &tenant_a(), Duration::from_secs(120), 10)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 5);
    claimed.sort_by_key(|c| users.iter().position(|u| *u == c.user_id));
    // bob's lease was lost: another worker holds the row now.
    let bob = Claimed {
        lease_token: Uuid::new_v4(),
        ..claimed[1].clone()
    };
    let link = |user_id: &str| ameyo_scim::store::outbox::Link {
        ameyo_user_id: Some(user_id.into()),
        cc_user_id: Some(7),
        last_pushed: Some(json!({"userId": user_id})),
        ..Default::default()
    };
    let (ann_link, bob_link, cat_link, dan_link) =
        (link("ann"), link("bob"), link("cat"), link("dan"));
    let call = |name: &'static str, ok: bool| Attempt {
        call: name,
        ok,
        http_status: Some(if ok { 200 } else { 503 }),
        duration_ms: 3,
        error: (!ok).then(|| "Ameyo answered 503".to_string()),
    };
    let created = [call("create", true)];
    let failed = [call("update", false)];
    let deleted = [call("delete", true)];
    let items = [
        Completing {
            claimed: &claimed[0],
            server: "http://ameyo.example",
            completion: Completion::Synced {
                link: &ann_link,
                password_delivered: false,
            },
            attempts: &created,
        },
        Completing {
            claimed: &bob,
            server: "http://ameyo.example",
            completion: Completion::Synced {
                link: &bob_link,
                password_delivered: false,
            },
            attempts: &created,
        },
        Completing {
            claimed: &claimed[2],
            server: "http://ameyo.example",
            completion: Completion::Retry {
                link: &cat_link,
                delay: Duration::from_secs(60),
                reason: "Ameyo answered 503".into(),
                full_push: false,
            },
            attempts: &failed,
        },
        Completing {
            claimed: &claimed[3],
            server: "http://ameyo.example",
            completion: Completion::Dead {
                link: &dan_link,
                reason: "refused for good".into(),
            },
            attempts: &failed,
        },
        Completing {
            claimed: &claimed[4],
            server: "http://ameyo.example",
            completion: Completion::Removed,
            attempts: &deleted,
        },
    ];
    let done: Vec<bool> = outbox
        .complete_many("w1", &items)
        .await
        .into_iter()
        .map(|r| r.expect("recorded"))
        .collect();
    assert_eq!(done, [true, false, true, true, true]);

    let r = row(&db, users[0]).await;
    assert_eq!(
        (r.state.as_str(), r.ameyo_user_id.as_deref()),
        ("done", Some("ann")),
        "{r:?}"
    );
    assert_eq!(r.synced_version, r.desired_version);
    assert!(
        r.lease_token.is_none() && r.pending_since.is_none(),
        "{r:?}"
    );
    // The lost lease records nothing: the row stays with its holder, unlinked.
    let r = row(&db, users[1]).await;
    assert_eq!((r.state.as_str(), r.attempts), ("leased", 0), "{r:?}");
    assert_eq!(r.lease_token, Some(claimed[1].lease_token));
    assert!(r.ameyo_user_id.is_none(), "{r:?}");
    let r = row(&db, users[2]).await;
    assert_eq!((r.state.as_str(), r.attempts), ("pending", 1), "{r:?}");
    assert_eq!(r.last_error.as_deref(), Some("Ameyo answered 503"));
    assert!(r.delay_secs > 50.0, "{r:?}");
    let r = row(&db, users[3]).await;
    assert_eq!(
        (r.state.as_str(), r.last_error.as_deref()),
        ("dead", Some("refused for good")),
        "{r:?}"
    );
    assert!(
        db.outbox_row(eve).await.is_none(),
        "the tombstone goes with its row"
    );
    // Every call is in the attempt log, the lost lease's too.
    for (user, call) in users
        .iter()
        .zip(["create", "create", "update", "update", "delete"])
    {
        let log = outbox.recent_attempts(*user, 10).await.expect("attempts");
        assert_eq!(log.len(), 1, "{user}: {log:?}");
        assert_eq!(log[0]["call"], call);
        assert_eq!(log[0]["worker"], "w1");
    }
}

both_backends!(a_batch_whose_rows_collide_records_each_row_on_its_own);
async fn a_batch_whose_rows_collide_records_each_row_on_its_own(db: TestDb) {
    let app = app(&db).await;
    let ann = uuid(&app.create_named("ann@a.example").await);
    let other = uuid(&app.create_named("ann@b.example").await);
    let outbox = app.backend.outbox.clone();
    let claimed = outbox
        .claim("w1", &tenant_a(), Duration::from_secs(120), 10)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 2);
    // Both would link the one userId `ann` on one server: the ownership index lets one
    // have it. The batch cannot be written whole; the first row is still recorded.
    let link = ameyo_scim::store::outbox::Link {
        ameyo_user_id: Some("ann".into()),
        ..Default::default()
    };
    let items: Vec<Completing<'_>> = claimed
        .iter()
        .map(|c| Completing {
            claimed: c,
            server: "http://ameyo.example",
            completion: Completion::Synced {
                link: &link,
                password_delivered: false,
            },
            attempts: &[],
        })
        .collect();
    let done = outbox.complete_many("w1", &items).await;
    assert!(matches!(done[0], Ok(true)), "{done:?}");
    assert!(done[1].is_err(), "{done:?}");
    let first = claimed[0].user_id;
    let second = if first == ann { other } else { ann };
    assert_eq!(row(&db, first).await.state, "done");
    assert_eq!(row(&db, second).await.state, "leased");
}
