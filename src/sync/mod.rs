//! The outbox worker: claims due users through the [`Outbox`], asks the pure
//! [`decide`] module what to do with each, carries the steps out against Ameyo, and
//! records the outcome through the outbox, fenced by the lease token. A heartbeat task
//! keeps this worker's leases alive and takes back the leases of workers that stopped.

pub mod decide;
pub mod retry;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rand::Rng;
use rand::distr::Alphanumeric;
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::ameyo::client::{CallError, CallRecord, SessionStore};
use crate::ameyo::mapping;
use crate::config::{Settings, SyncSettings};
use crate::store::outbox::{Attempt, Claimed, Completing, Completion, Link, Outbox, PgOutbox};
use crate::store::password::PasswordCipher;
use crate::store::session::PgSessionStore;
use crate::tenants::Tenant;
use decide::{Answer, Case, Listed, Outcome, PasswordUse, Policy, Progress, Step, Target};

/// How often a worker says it is alive, and takes back stale leases.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// A worker silent this long is taken for dead and its leases are taken back.
pub const STALE_AFTER: Duration = Duration::from_secs(6);
/// Steps one delivery may take; the rules settle in far fewer.
const MAX_STEPS: usize = 16;
/// Most rows one claim leases.
const MAX_CLAIM: usize = 256;
/// Most completions written together.
const MAX_RECORD_BATCH: usize = 256;
/// After a claim found less than it asked for, how long finished deliveries do not
/// prompt another (notifications and the poll still do).
const RECLAIM_PAUSE: Duration = Duration::from_millis(100);

/// What a worker needs; cheap to share between its tasks.
pub struct Worker {
    outbox: Arc<dyn Outbox>,
    cipher: PasswordCipher,
    tenants: HashMap<String, Arc<Tenant>>,
    tenant_ids: Vec<String>,
    settings: SyncSettings,
    owner: String,
    /// Where deliveries hand their outcome to be written with others (started on
    /// first use, in the runtime of the first delivery).
    recorder: OnceLock<mpsc::UnboundedSender<Finished>>,
}

/// How a delivery ended, without its link: what [`Completion`] says.
#[derive(Debug)]
enum Ending {
    Removed,
    Synced {
        password_delivered: bool,
    },
    Retry {
        delay: Duration,
        reason: String,
        full_push: bool,
    },
    Dead {
        reason: String,
    },
}

impl Ending {
    fn completion<'a>(&'a self, link: &'a Link) -> Completion<'a> {
        match self {
            Ending::Removed => Completion::Removed,
            Ending::Synced { password_delivered } => Completion::Synced {
                link,
                password_delivered: *password_delivered,
            },
            Ending::Retry {
                delay,
                reason,
                full_push,
            } => Completion::Retry {
                link,
                delay: *delay,
                reason: reason.clone(),
                full_push: *full_push,
            },
            Ending::Dead { reason } => Completion::Dead {
                link,
                reason: reason.clone(),
            },
        }
    }
}

/// The worker's `sync.concurrency` call slots: a delivery holds one while it talks to
/// Ameyo, and only then. Its steps in the database (the userId it claims before a
/// create) and the writing of its outcome run without one, beside the calls of others,
/// so a slot never waits on the database while Ameyo could be answering.
#[derive(Clone)]
struct Slots(Arc<Semaphore>);

impl Slots {
    /// A slot for one call (none for a delivery run without the worker's loop).
    async fn call(slots: Option<&Slots>) -> Option<OwnedSemaphorePermit> {
        // The semaphore is never closed.
        match slots {
            Some(s) => s.0.clone().acquire_owned().await.ok(),
            None => None,
        }
    }
}

/// A delivery's outcome on its way to the recorder.
struct Finished {
    claimed: Claimed,
    server: String,
    link: Link,
    ending: Ending,
    attempts: Vec<Attempt>,
    reply: oneshot::Sender<Result<bool, String>>,
}

/// Writes the outcomes of deliveries as they finish, those that finished while the
/// previous write ran together in one (a group commit: one transaction for many rows
/// when deliveries are fast, one row at a time when they are not). Ends when the
/// worker is gone.
async fn recorder(
    outbox: Arc<dyn Outbox>,
    owner: String,
    mut finished: mpsc::UnboundedReceiver<Finished>,
) {
    let mut batch = Vec::new();
    while finished.recv_many(&mut batch, MAX_RECORD_BATCH).await > 0 {
        let items: Vec<Completing<'_>> = batch
            .iter()
            .map(|f| Completing {
                claimed: &f.claimed,
                server: &f.server,
                completion: f.ending.completion(&f.link),
                attempts: &f.attempts,
            })
            .collect();
        let mut written = outbox.complete_many(&owner, &items).await.into_iter();
        drop(items);
        for f in batch.drain(..) {
            let answer = match written.next() {
                Some(r) => r.map_err(|e| e.to_string()),
                None => Err("the outbox answered for fewer rows than it was given".into()),
            };
            let _ = f.reply.send(answer);
        }
    }
}

impl Worker {
    /// A worker over Postgres: the tenants are built here, each sharing its Ameyo
    /// session through the database under this worker's name.
    pub fn new(settings: &Settings, pool: PgPool, cipher: PasswordCipher) -> Result<Self, String> {
        let owner = this_owner();
        let sessions = |tenant: &str| -> Option<Arc<dyn SessionStore>> {
            Some(Arc::new(PgSessionStore::new(
                pool.clone(),
                cipher.clone(),
                tenant,
                &owner,
            )))
        };
        let tenants = crate::tenants::build(settings, &sessions).map_err(|e| e.to_string())?;
        Ok(Self::from_tenants(
            &settings.sync,
            &tenants,
            Arc::new(PgOutbox::new(pool.clone())),
            cipher.clone(),
            owner.clone(),
        ))
    }

    /// A worker over any outbox backend, for tenants built once at start-up.
    pub fn from_tenants(
        settings: &SyncSettings,
        tenants: &[Arc<Tenant>],
        outbox: Arc<dyn Outbox>,
        cipher: PasswordCipher,
        owner: String,
    ) -> Self {
        let tenants: HashMap<String, Arc<Tenant>> = tenants
            .iter()
            .map(|t| {
                crate::telemetry::metrics::register_tenant(&t.id);
                (t.id.clone(), t.clone())
            })
            .collect();
        let mut tenant_ids: Vec<String> = tenants.keys().cloned().collect();
        tenant_ids.sort();
        Self {
            outbox,
            cipher,
            tenants,
            tenant_ids,
            settings: settings.clone(),
            owner,
            recorder: OnceLock::new(),
        }
    }

    /// This worker's name in leases and heartbeats.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    fn lease(&self) -> Duration {
        Duration::from_secs(self.settings.lease_secs)
    }

    async fn claim(&self, limit: usize) -> crate::store::Result<Vec<Claimed>> {
        self.outbox
            .claim(&self.owner, &self.tenant_ids, self.lease(), limit)
            .await
    }

    /// Say this worker is alive and take back the leases of workers that are not.
    /// Returns how many rows were taken back.
    async fn beat(&self) -> crate::store::Result<u64> {
        self.outbox.heartbeat(&self.owner).await?;
        let n = self
            .outbox
            .reclaim_stale(&self.tenant_ids, STALE_AFTER, self.settings.max_attempts)
            .await?;
        if n > 0 {
            tracing::warn!(rows = n, "took back deliveries from a worker that stopped");
        }
        Ok(n)
    }

    /// Scope links made before ownership was recorded (older databases).
    async fn adopt_servers(&self) {
        for (id, t) in &self.tenants {
            match self.outbox.adopt_server(id, &t.server).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(tenant = %id, rows = n, "recorded the Ameyo server of existing links")
                }
                Err(e) => {
                    tracing::warn!(tenant = %id, error = %e, "cannot record the Ameyo server of existing links")
                }
            }
        }
    }

    /// Claim and deliver until nothing is due. Returns how many deliveries ran.
    pub async fn run_until_idle(self: &Arc<Self>) -> crate::store::Result<usize> {
        let mut total = 0;
        self.adopt_servers().await;
        loop {
            self.beat().await?;
            let batch = self.claim(self.settings.concurrency).await?;
            if batch.is_empty() {
                return Ok(total);
            }
            total += batch.len();
            let mut set = JoinSet::new();
            for c in batch {
                set.spawn(self.clone().process(c, Instant::now(), None));
            }
            while set.join_next().await.is_some() {}
        }
    }

    /// Run until `shutdown`, then let in-flight deliveries finish within `grace`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken, grace: Duration) {
        let notify = Arc::new(Notify::new());
        let listener = tokio::spawn(self.outbox.clone().listen(notify.clone(), shutdown.clone()));
        self.adopt_servers().await;
        let heart = tokio::spawn(
            self.clone()
                .heartbeat_loop(notify.clone(), shutdown.clone()),
        );
        let poll = Duration::from_secs(self.settings.poll_interval_secs);
        let concurrency = self.settings.concurrency;
        // Deliveries under way: at most `concurrency` of them talking to Ameyo (each
        // holds a call slot), as many again between calls or having their outcome
        // written.
        let slots = Slots(Arc::new(Semaphore::new(concurrency)));
        let mut inflight = JoinSet::new();
        // Rows claimed and not started yet, with when they were claimed. Claims run
        // beside the deliveries and refill this before it runs dry, so a delivery that
        // ends is replaced at once, and one claim serves many deliveries.
        let mut queue: VecDeque<(Claimed, Instant)> = VecDeque::new();
        let mut claiming: Option<JoinHandle<(usize, crate::store::Result<Vec<Claimed>>)>> = None;
        // Whether a claim may find due rows now: after a short claim, not until a
        // notification, the poll, or (a little later) a delivery that ends.
        let mut may_be_due = true;
        let mut short_claim_at = Instant::now();
        let mut last_prune = Instant::now() - Duration::from_secs(3600);
        tracing::info!(owner = %self.owner, concurrency, "sync worker started");
        loop {
            while inflight.len() < 2 * concurrency
                && let Some((c, claimed_at)) = queue.pop_front()
            {
                inflight.spawn(self.clone().process(c, claimed_at, Some(slots.clone())));
            }
            // Keep up to `concurrency` rows waiting behind the deliveries in flight: at
            // most three times `concurrency` leases in all. A claim waits until half the
            // queue has been taken, so it leases many rows at once: topped up one row
            // at a time, the claim statements cost the database more than the
            // deliveries they feed.
            let room = (3 * concurrency).saturating_sub(inflight.len() + queue.len());
            if claiming.is_none() && may_be_due && queue.len() <= concurrency / 2 && room > 0 {
                let worker = self.clone();
                let limit = room.min(MAX_CLAIM);
                claiming = Some(tokio::spawn(
                    async move { (limit, worker.claim(limit).await) },
                ));
            }
            if last_prune.elapsed() > Duration::from_secs(3600) {
                last_prune = Instant::now();
                self.prune().await;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                claimed = async { claiming.as_mut().expect("a claim in flight").await }, if claiming.is_some() => {
                    claiming = None;
                    match claimed {
                        Ok((limit, Ok(batch))) => {
                            if batch.len() < limit {
                                may_be_due = false;
                                short_claim_at = Instant::now();
                            }
                            let now = Instant::now();
                            queue.extend(batch.into_iter().map(|c| (c, now)));
                        }
                        Ok((_, Err(e))) => {
                            tracing::warn!(error = %e, "cannot claim work; retrying");
                            tokio::select! {
                                _ = shutdown.cancelled() => break,
                                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "the claim failed; retrying"),
                    }
                }
                _ = notify.notified() => may_be_due = true,
                _ = tokio::time::sleep(poll) => may_be_due = true,
                Some(_) = inflight.join_next(), if !inflight.is_empty() => {
                    if short_claim_at.elapsed() >= RECLAIM_PAUSE {
                        may_be_due = true;
                    }
                }
            }
        }
        // A claim still running leases rows to this worker: let it end, so the leases
        // are handed back below with the rest.
        if let Some(claim) = claiming.take() {
            let _ = claim.await;
        }
        // Rows claimed but never started go back with every other lease at the end.
        drop(queue);
        tracing::info!(
            in_flight = inflight.len(),
            "sync worker stopping: finishing in-flight deliveries"
        );
        let drained = tokio::time::timeout(grace, async {
            while inflight.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("shutdown grace period over: abandoning in-flight deliveries");
            inflight.abort_all();
            while inflight.join_next().await.is_some() {}
        }
        heart.abort();
        // Hand back anything still leased by this process (creates already sent are
        // marked, so whoever takes over looks them up first).
        if let Err(e) = self.outbox.retire(&self.owner).await {
            tracing::warn!(error = %e, "cannot release leases; other workers take them back when this one stops beating");
        }
        listener.abort();
        tracing::info!("sync worker stopped");
    }

    async fn heartbeat_loop(self: Arc<Self>, notify: Arc<Notify>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.beat().await {
                Ok(0) => {}
                Ok(_) => notify.notify_one(),
                Err(e) => tracing::warn!(error = %e, "cannot record the worker heartbeat"),
            }
        }
    }

    async fn prune(&self) {
        match self
            .outbox
            .prune_attempts(self.settings.attempt_retention_days)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "pruned old delivery attempts"),
            Err(e) => tracing::warn!(error = %e, "cannot prune delivery attempts"),
        }
    }

    /// Deliver one claimed user and record the outcome. The delivery runs as a task of
    /// its own, so a panic in it is caught here and counted as a failed attempt (a user
    /// that keeps crashing its delivery ends as a dead letter).
    async fn process(self: Arc<Self>, c: Claimed, claimed_at: Instant, slots: Option<Slots>) {
        let span = tracing::info_span!("deliver", tenant = %c.tenant_id, user_id = %c.user_id, version = c.version);
        async move {
            let started = Instant::now();
            let Some(tenant) = self.tenants.get(&c.tenant_id).cloned() else {
                // Claims are limited to known tenants; nothing to decide for another.
                return;
            };
            // Cut a delivery off well before its lease ends, so no one else starts on
            // the same user while this one still talks to Ameyo.
            // The lease runs from the claim, which may have been a moment ago.
            let budget = self
                .lease()
                .saturating_sub(Duration::from_secs(5))
                .saturating_sub(claimed_at.elapsed())
                .max(Duration::from_secs(5));
            let worker = self.clone();
            let claimed = c.clone();
            // What the delivery has learnt so far, kept outside it: a delivery cut off
            // or failed midway must still record what it did (a claimed userId, a create
            // sent), or the next attempt would not look before creating again.
            let seen = Arc::new(std::sync::Mutex::new(Progress::new(c.link.clone())));
            let seen_inside = seen.clone();
            let job = tokio::spawn(
                async move {
                    let mut log = Vec::new();
                    let mut secrets = Vec::new();
                    let delivered = tokio::time::timeout(
                        budget,
                        worker.deliver(
                            &claimed,
                            &tenant,
                            slots.as_ref(),
                            &seen_inside,
                            &mut log,
                            &mut secrets,
                        ),
                    )
                    .await;
                    let (outcome, progress) = match delivered {
                        Ok(r) => r,
                        Err(_) => (
                            Outcome::Retry(CallError::Transient {
                                reason: "the delivery took longer than its lease allows".into(),
                                retry_after: None,
                                status: None,
                                maybe_applied: true,
                            }),
                            last_seen(&seen_inside),
                        ),
                    };
                    (outcome, progress, log, secrets)
                }
                .in_current_span(),
            );
            let (outcome, progress, log, secrets) = match job.await {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(panicked = e.is_panic(), "the delivery task failed");
                    crate::telemetry::metrics::delivery_panicked(&c.tenant_id);
                    let failure = CallError::transient("the delivery failed inside the bridge (see its log)");
                    // Counted like any failed attempt, so a user whose delivery panics
                    // every time ends as a dead letter instead of retrying forever.
                    let max = self.settings.max_attempts;
                    let outcome = if max > 0 && c.attempts.max(0) as u32 + 1 >= max {
                        Outcome::Dead(format!("gave up after {max} attempts: {failure}"))
                    } else {
                        Outcome::Retry(failure)
                    };
                    (outcome, last_seen(&seen), Vec::new(), Vec::new())
                }
            };
            let secret_refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
            match self.record(&c, &progress, &outcome, &log, &secret_refs).await {
                Ok(true) => {}
                Ok(false) => tracing::warn!("lease lost before completion: another worker owns this user now"),
                Err(e) => tracing::warn!(error = %e, "cannot record the delivery outcome; the row is taken back once its lease runs out"),
            }
            let ms = started.elapsed().as_millis() as u64;
            let action = action_of(&log);
            let label = match &outcome {
                Outcome::Synced | Outcome::Removed => "ok",
                Outcome::Retry(_) => "retry",
                Outcome::Dead(_) => "dead",
                Outcome::LostLease => "lost_lease",
            };
            crate::telemetry::metrics::delivery(&c.tenant_id, action, label);
            match &outcome {
                Outcome::Synced => tracing::info!(calls = log.len(), ms, "delivered"),
                Outcome::Removed => tracing::info!(calls = log.len(), ms, "removed from Ameyo"),
                Outcome::Retry(e) => tracing::warn!(calls = log.len(), ms, attempt = c.attempts + 1, error = %scrub(e.to_string(), &secret_refs), "delivery failed; will retry"),
                Outcome::Dead(r) => tracing::error!(calls = log.len(), ms, reason = %scrub(r.clone(), &secret_refs), "delivery failed for good: dead-lettered"),
                Outcome::LostLease => tracing::warn!("lease lost during delivery"),
            }
        }
        .instrument(span)
        .await
    }

    /// Carry out the decision's steps until it names an outcome.
    async fn deliver(
        &self,
        c: &Claimed,
        tenant: &Tenant,
        slots: Option<&Slots>,
        seen: &std::sync::Mutex<Progress>,
        log: &mut Vec<CallRecord>,
        secrets: &mut Vec<String>,
    ) -> (Outcome, Progress) {
        let mut progress = Progress::new(c.link.clone());
        let password = match &c.pending_password {
            Some(sealed) => match self.cipher.open(c.user_id.as_bytes(), sealed) {
                Ok(p) => {
                    secrets.push(p.expose_secret().to_string());
                    Some(p)
                }
                Err(e) => return (Outcome::Dead(e.to_string()), progress),
            },
            None => None,
        };
        let resource = c.resource.as_object().cloned().unwrap_or_default();
        let bounds = |u: &mapping::AmeyoUser| tenant.mapper.check(u).map_err(|e| e.0);
        let case = Case {
            tenant: &c.tenant_id,
            target: if c.deleted {
                Target::Deleted
            } else if c.active {
                Target::Active
            } else {
                Target::Inactive
            },
            resource: &resource,
            groups: &c.groups,
            password_pending: password.is_some(),
            attempts: c.attempts.max(0) as u32,
            policy: Policy {
                mapper: &tenant.mapper,
                bounds: &bounds,
                on_deactivate: tenant.mapper.on_deactivate,
                on_delete: tenant.mapper.on_delete,
                adopt_existing: tenant.settings.ameyo.adopt_existing,
                login_user: tenant.settings.ameyo.login_user.as_deref(),
                update_path_id: tenant.client.update_path_id(),
                max_attempts: self.settings.max_attempts,
            },
        };
        for _ in 0..MAX_STEPS {
            let step = decide::next(&case, &progress);
            // A call slot for the steps that talk to Ameyo.
            let _slot = match &step {
                Step::Finish(_) | Step::ClaimUserId { .. } => None,
                Step::Lookup { .. }
                | Step::Create { .. }
                | Step::Update { .. }
                | Step::EndSessions { .. }
                | Step::Delete { .. } => Slots::call(slots).await,
            };
            let answer = match &step {
                Step::Finish(outcome) => return (outcome.clone(), progress),
                Step::Lookup {
                    user_id,
                    contact_center_id,
                    ..
                } => match tenant
                    .client
                    .lookup_listing(*contact_center_id, c.last_changed, log)
                    .await
                {
                    // One listing serves every lookup of the contact center for a short
                    // while (single flight), as long as it started after this user's
                    // last attempt.
                    Ok(listing) => Answer::Listed(listing.get(user_id).map(|u| Listed {
                        user_id: u.user_id.clone(),
                        cc_user_id: u.cc_user_id,
                        user_name: u.user_name.clone(),
                        mapping_user_id: u.mapping_user_id.clone(),
                    })),
                    Err(e) => Answer::Failed(e),
                },
                Step::ClaimUserId { user_id, sending } => match self
                    .outbox
                    .claim_user_id(c.user_id, c.lease_token, &tenant.server, user_id, sending)
                    .await
                {
                    Ok(claim) => Answer::Claim(claim),
                    Err(e) => Answer::Failed(CallError::transient(format!("database: {e}"))),
                },
                Step::Create {
                    user,
                    password: use_,
                } => {
                    let secret = pick_password(*use_, password.as_ref(), secrets)
                        .unwrap_or_else(random_secret);
                    match tenant
                        .client
                        .create_user(&mapping::create_body(user, secret.expose_secret()), log)
                        .await
                    {
                        Ok(cc_user_id) => Answer::Created { cc_user_id },
                        Err(e) => Answer::Failed(e),
                    }
                }
                Step::Update {
                    path_id,
                    user,
                    password: use_,
                    ..
                } => {
                    let secret = pick_password(*use_, password.as_ref(), secrets);
                    let body =
                        mapping::update_body(user, secret.as_ref().map(|s| s.expose_secret()));
                    done(tenant.client.update_user(path_id, &body, log).await)
                }
                Step::EndSessions { user_id } => {
                    done(tenant.client.end_sessions(user_id, log).await)
                }
                Step::Delete { user_id } => done(tenant.client.delete_user(user_id, log).await),
            };
            decide::observe(&case, &mut progress, &step, answer);
            *seen.lock().unwrap_or_else(|p| p.into_inner()) = progress.clone();
        }
        (
            Outcome::Retry(CallError::transient(
                "the delivery did not settle; will retry",
            )),
            progress,
        )
    }

    /// Write the outcome, fenced by the lease token, together with the outcomes of the
    /// deliveries that finish at the same time. `Ok(false)`: the lease was lost.
    async fn record(
        &self,
        c: &Claimed,
        progress: &Progress,
        outcome: &Outcome,
        log: &[CallRecord],
        secrets: &[&str],
    ) -> Result<bool, String> {
        let Some(tenant) = self.tenants.get(&c.tenant_id) else {
            return Ok(false);
        };
        let attempts: Vec<Attempt> = log
            .iter()
            .map(|r| Attempt {
                call: r.call,
                ok: r.error.is_none(),
                http_status: r.status,
                duration_ms: r.duration.as_millis().min(i32::MAX as u128) as i32,
                error: r.error.clone().map(|e| scrub(e, secrets)),
            })
            .collect();
        let ending = match outcome {
            Outcome::LostLease => return Ok(false),
            Outcome::Removed => Ending::Removed,
            Outcome::Synced => Ending::Synced {
                password_delivered: progress.password_delivered,
            },
            Outcome::Dead(reason) => Ending::Dead {
                reason: scrub(reason.clone(), secrets),
            },
            Outcome::Retry(e) => {
                let after = match e {
                    CallError::Transient { retry_after, .. } => *retry_after,
                    _ => None,
                };
                let backoff = retry::delay(
                    c.attempts.max(0) as u32,
                    Duration::from_millis(self.settings.retry_base_ms),
                    Duration::from_secs(self.settings.retry_cap_secs),
                    after,
                );
                Ending::Retry {
                    delay: decide::retry_delay(
                        e,
                        backoff,
                        Duration::from_secs(tenant.settings.ameyo.request_timeout_secs),
                    ),
                    reason: scrub(e.to_string(), secrets),
                    full_push: decide::needs_full_push(e),
                }
            }
        };
        let (reply, answer) = oneshot::channel();
        let finished = Finished {
            claimed: c.clone(),
            server: tenant.server.clone(),
            link: progress.link.clone(),
            ending,
            attempts,
            reply,
        };
        let recorder = self.recorder.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(recorder(self.outbox.clone(), self.owner.clone(), rx));
            tx
        });
        match recorder.send(finished) {
            Ok(()) => answer
                .await
                .unwrap_or_else(|_| Err("the delivery recorder stopped".into())),
            // The recorder's runtime is gone (a worker reused in another runtime):
            // write this one here.
            Err(mpsc::error::SendError(f)) => self
                .outbox
                .complete(
                    &f.claimed,
                    &self.owner,
                    &f.server,
                    &f.ending.completion(&f.link),
                    &f.attempts,
                )
                .await
                .map_err(|e| e.to_string()),
        }
    }
}

/// The progress a delivery had recorded when it was cut off or failed.
fn last_seen(seen: &std::sync::Mutex<Progress>) -> Progress {
    seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// The password a step carries: the IdP's, a fresh undisclosed one, or none. Every
/// password used is remembered so it can be scrubbed from errors.
fn pick_password(
    use_: PasswordUse,
    pending: Option<&SecretString>,
    secrets: &mut Vec<String>,
) -> Option<SecretString> {
    let p = match use_ {
        PasswordUse::None => return None,
        PasswordUse::Pending => pending.cloned().unwrap_or_else(random_secret),
        PasswordUse::Undisclosed => random_secret(),
    };
    secrets.push(p.expose_secret().to_string());
    Some(p)
}

fn done(r: Result<(), CallError>) -> Answer {
    match r {
        Ok(()) => Answer::Done,
        Err(e) => Answer::Failed(e),
    }
}

fn random_secret() -> SecretString {
    let s: String = rand::rng()
        .sample_iter(Alphanumeric)
        .take(24)
        .map(char::from)
        .collect();
    SecretString::from(s)
}

/// A name for this process in leases, heartbeats and login leases: host, pid, nonce.
pub fn this_owner() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    format!(
        "{host}-{}-{}",
        std::process::id(),
        &Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Keep a known secret out of text that goes to logs and the database.
fn scrub(text: String, secrets: &[&str]) -> String {
    secrets
        .iter()
        .filter(|s| s.len() >= 4)
        .fold(text, |t, s| t.replace(s, "[redacted]"))
}

/// What a delivery did in Ameyo, for metrics: the most significant call it made.
fn action_of(log: &[CallRecord]) -> &'static str {
    let made = |c: &str| log.iter().any(|r| r.call == c);
    if made("delete") {
        "delete"
    } else if made("create") {
        "create"
    } else if made("end_sessions") {
        "lock"
    } else if made("update") {
        "update"
    } else if made("list") {
        "link"
    } else {
        "none"
    }
}
