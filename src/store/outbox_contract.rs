//! The outbox contract: what every backend's [`Outbox`] (and shared-session store) does,
//! written once as test bodies over `&dyn Outbox` and an [`OutboxFixture`] that sets
//! rows up the way that backend's user store would. A backend runs each body from a
//! test of its own (see `store::sqlite::outbox`), so both stores answer to one text.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::outbox::{Attempt, Claimed, Completion, Link, Outbox, UserIdClaim, Which};
use crate::ameyo::client::SessionStore;

/// Setting rows up and ageing them, for one backend.
#[async_trait]
pub(crate) trait OutboxFixture: Send + Sync {
    fn outbox(&self) -> Arc<dyn Outbox>;
    /// A live user (resource `{"userName": user_name}`, version 1) with its pending
    /// outbox row, and a sealed password waiting for version 1 if given.
    async fn add_user(&self, tenant: &str, user_name: &str, password: Option<&[u8]>) -> Uuid;
    /// A SCIM write: the next version, marked pending; `password` a newly sealed one
    /// (none keeps the one waiting). Returns the new version.
    async fn write_user(&self, user: Uuid, password: Option<&[u8]>) -> i64;
    /// A SCIM delete: the tombstone's version, marked pending, its password erased.
    async fn delete_user(&self, user: Uuid) -> i64;
    /// Make `owner`'s last heartbeat `secs` seconds old.
    async fn age_heartbeat(&self, owner: &str, secs: u64);
    /// Make the lease on the user's row run out.
    async fn expire_lease(&self, user: Uuid);
    /// `n` attempt-log entries of the user, `days` old.
    async fn add_old_attempts(&self, user: Uuid, n: usize, days: u32);
    /// A link recorded before ownership was (no server): confirmed, or an unconfirmed
    /// create.
    async fn link_without_server(&self, user: Uuid, ameyo_user_id: &str, confirmed: bool);
}

const SERVER: &str = "https://ameyo.example";
const OTHER_SERVER: &str = "https://other.example";
const LEASE: Duration = Duration::from_secs(60);

fn tenants(t: &[&str]) -> Vec<String> {
    t.iter().map(|s| s.to_string()).collect()
}

/// The one due row of these tenants, leased to `owner`.
async fn claim_one(o: &dyn Outbox, owner: &str, of: &[&str]) -> Claimed {
    let mut got = o.claim(owner, &tenants(of), LEASE, 10).await.unwrap();
    assert_eq!(got.len(), 1, "one due row in {of:?}");
    got.remove(0)
}

async fn report(o: &dyn Outbox, user: Uuid) -> Value {
    o.row_report(user).await.unwrap().expect("the outbox row")
}

fn linked(user_id: &str) -> Link {
    Link {
        ameyo_user_id: Some(user_id.into()),
        cc_user_id: Some(7),
        last_pushed: Some(json!({"userId": user_id})),
        ..Link::default()
    }
}

fn call(name: &'static str, ok: bool, status: u16) -> Attempt {
    Attempt {
        call: name,
        ok,
        http_status: Some(status),
        duration_ms: 12,
        error: (!ok).then(|| format!("{name} answered {status}")),
    }
}

fn synced(link: &Link) -> Completion<'_> {
    Completion::Synced {
        link,
        password_delivered: false,
    }
}

fn delivered(link: &Link) -> Completion<'_> {
    Completion::Synced {
        link,
        password_delivered: true,
    }
}

fn retry(link: &Link, delay: Duration, full_push: bool) -> Completion<'_> {
    Completion::Retry {
        link,
        delay,
        reason: "Ameyo answered 503".into(),
        full_push,
    }
}

fn dead(link: &Link) -> Completion<'_> {
    Completion::Dead {
        link,
        reason: "refused for good".into(),
    }
}

fn time(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().expect("a time"))
        .expect("RFC 3339")
        .with_timezone(&Utc)
}

pub(crate) async fn claim_takes_only_known_tenants(f: &dyn OutboxFixture) {
    let o = &*f.outbox();
    let ann = f.add_user("a", "ann", None).await;
    let bob = f.add_user("a", "bob", None).await;
    let cid = f.add_user("c", "cid", None).await;

    let first = o
        .claim("w1", &tenants(&["a", "b"]), LEASE, 1)
        .await
        .unwrap();
    assert_eq!(first.len(), 1, "the limit holds");
    let second = o
        .claim("w1", &tenants(&["a", "b"]), LEASE, 10)
        .await
        .unwrap();
    let mut got: Vec<Uuid> = first.iter().chain(&second).map(|c| c.user_id).collect();
    got.sort();
    let mut want = vec![ann, bob];
    want.sort();
    assert_eq!(got, want);
    assert_ne!(first[0].lease_token, second[0].lease_token);
    assert!(
        o.claim("w2", &tenants(&["a"]), LEASE, 10)
            .await
            .unwrap()
            .is_empty(),
        "a leased row is not leased twice"
    );

    // A tenant this worker does not know is left for one that does.
    let r = report(o, cid).await;
    assert_eq!(r["state"], "pending");
    assert_eq!(r["lease_owner"], Value::Null);
    let c = claim_one(o, "w2", &["c"]).await;
    assert_eq!(c.user_id, cid);
    assert_eq!(c.tenant_id, "c");
    assert_eq!(
        (c.version, c.attempts, c.active, c.deleted),
        (1, 0, true, false)
    );
    assert_eq!(c.resource["userName"], "cid");
    assert_eq!(c.link, Link::default());
    assert!(c.last_changed <= Utc::now());
    let r = report(o, cid).await;
    assert_eq!(r["state"], "leased");
    assert_eq!(r["lease_owner"], "w2");
    assert!(time(&r["lease_until"]) > Utc::now() + Duration::from_secs(50));
}

pub(crate) async fn completion_is_fenced_by_the_lease(f: &dyn OutboxFixture) {
    let o = &*f.outbox();
    let ann = f.add_user("a", "ann", None).await;
    let c = claim_one(o, "w1", &["a"]).await;
    let wrong = Claimed {
        lease_token: Uuid::new_v4(),
        ..c.clone()
    };
    let link = linked("ann");
    for completion in [
        synced(&link),
        retry(&link, Duration::ZERO, false),
        dead(&link),
        Completion::Removed,
    ] {
        let recorded = o
            .complete(
                &wrong,
                "w1",
                SERVER,
                &completion,
                &[call("create", true, 201)],
            )
            .await
            .unwrap();
        assert!(!recorded, "{completion:?}");
    }
    let r = report(o, ann).await;
    assert_eq!(r["state"], "leased");
    assert_eq!(r["attempts"], 0);
    assert_eq!(r["ameyo_user_id"], Value::Null);
    assert_eq!(r["last_error"], Value::Null);
    // Only the attempt log keeps what was tried.
    assert_eq!(o.recent_attempts(ann, 10).await.unwrap().len(), 4);

    assert!(
        o.complete(&c, "w1", SERVER, &synced(&link), &[])
            .await
            .unwrap()
    );
    assert_eq!(report(o, ann).await["state"], "done");
    // The token is spent with the lease.
    assert!(
        !o.complete(&c, "w1", SERVER, &dead(&link), &[])
            .await
            .unwrap()
    );
    assert_eq!(report(o, ann).await["state"], "done");
}

pub(crate) async fn synced_records_the_link(f: &dyn OutboxFixture) {
    let o = &*f.outbox();
    let ann = f.add_user("a", "ann", None).await;
    let c = claim_one(o, "w1", &["a"]).await;
    let link = Link {
        locked: true,
        ..linked("ann")
    };
    assert!(
        o.complete(
            &c,
            "w1",
            SERVER,
            &synced(&link),
            &[call("create", true, 201)]
        )
        .await
        .unwrap()
    );
    let r = report(o, ann).await;
    assert_eq!(r["state"], "done");
    assert_eq!(
        (&r["desired_version"], &r["synced_version"]),
        (&json!(1), &json!(1))
    );
    assert_eq!(r["attempts"], 0);
    for gone in ["pending_since", "last_error", "lease_owner", "lease_until"] {
        assert_eq!(r[gone], Value::Null, "{gone}");
    }
    assert_eq!(r["ameyo_user_id"], "ann");
    assert_eq!(r["cc_user_id"], 7);
    assert_eq!(r["ameyo_server"], SERVER);
    assert_eq!(r["ameyo_locked"], true);
    assert_eq!(r["create_attempted"], false);
    assert_eq!(r["last_pushed"], json!({"userId": "ann"}));
    assert!(
        o.claim("w1", &tenants(&["a"]), LEASE, 10)
            .await
            .unwrap()
            .is_empty()
    );

    let log = o.recent_attempts(ann, 10).await.unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["call"], "create");
    assert_eq!(log[0]["outcome"], "ok");
    assert_eq!(log[0]["http_status"], 201);
    assert_eq!(log[0]["worker"], "w1");
    assert_eq!(log[0]["version"], 1);
    assert_eq!(log[0]["duration_ms"], 12);
}

pub(crate) async fn a_newer_version_goes_round_again(f: &dyn OutboxFixture) {
    let o = &*f.outbox();
    let ann = f.add_user("a", "ann", None).await;
    let c1 = claim_one(o, "w1", &["a"]).await;
    assert_eq!(f.write_user(ann, None).await, 2);
    let r = report(o, ann).await;
    assert_eq!(r["state"], "leased", "a write leaves the holder its lease");
    assert_eq!(r["desired_version"], 2);

    let link = linked("ann");
    assert!(
        o.complete(&c1, "w1", SERVER, &synced(&link), &[])
            .await
            .unwrap()
    );
    let r = report(o, ann).await;
    assert_eq!(r["state"], "pending");
    assert_eq!(r["synced_version"], 1);
    assert!(r["pending_since"].is_string());
    let c2 = claim_one(o, "w1", &["a"]).await;
    assert_eq!(c2.version, 2);

    // Dead at an older version gives up on that version only: the newer one gets
    // fresh attempts, now.
    assert_eq!(f.write_user(ann, None).await, 3);
    assert!(
        o.complete(&c2, "w1", SERVER, &dead(&link), &[])
            .await
            .unwrap()
    );
    let r = report(o, ann).await;
    assert_eq!(r["state"], "pending");
    assert_eq!(r["attempts"], 0);
    assert_eq!(r["last_error"], "refused for good");
    let c3 = claim_one(o, "w1", &["a"]).await;
    assert_eq!((c3.version, c3.attempts), (3, 0));

    // At its own version, dead it is.
    assert!(
        o.complete(&c3, "w1", SERVER, &dead(&link), &[])
            .await
            .unwrap()
    );
    let r = report(o, ann).await;
    assert_eq!(r["state"], "dead");
    assert_eq!(r["attempts"], 1);
    assert_eq!(r["pending_since"], Value::Null);
    assert_eq!(r["synced_version"], 1);
    assert!(
        o.claim("w1", &tenants(&["a"]), LEASE, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

pub(crate) async fn passwords_go_once_delivered(f: &dyn OutboxFixture) {
    let o = &*f.outbox();
    // Delivered at its version: erased.
    let ann = f.add_user("a", "ann", Some(b"sealed-1")).await;
    let link = linked("ann");
    let c = claim_one(o, "w1", &["a"]).await;
    assert_eq!(c.pending_password.as_deref(), Some(&b"sealed-1"[..]));
    assert_eq!(report(o, ann).await["password_pending"], true);
    assert!(
        o.complete(&c, "w1", SERVER, &delivered(&link), &[])
            .await
            .unwrap()
    );
    assert_eq!(report(o, ann).await["password_pending"], false);

    // Not delivered (the call carrying it failed, or it was not sent): kept.
    let bob = f.add_user("a", "bob", Some(b"sealed-1")).await;
    let link = linked("bob");
    let c = claim_one(o, "w1", &["a"]).await;
    assert!(
        o.complete(&c, "w1", SERVER, &synced(&link), &[])
            .await
            .unwrap()
    );
    assert_eq!(report(o, bob).await["password_pending"], true);

    // A newer password written during the delivery: kept for the next one.
    let cid = f.add_user("a", "cid", Some(b"sealed-1")).await;
    let link = linked("cid");
    let c = claim_one(o, "w1", &["a"]).await;
    assert_eq!(f.write_user(cid, Some(b"sealed-2")).await, 2);
    assert!(
        o.complete(&c, "w1", SERVER, &delivered(&link), &[])
            .await
            .unwrap()
    );
    assert_eq!(report(o, cid).await["password_pending"], true);
    let c = claim_one(o, "w1", &["a"]).await;
    assert_eq!(c.pending_password.as_deref(), Some(&b"sealed-2"[..]));
    assert!(
        o.complete(&c, "w1", SERVER, &delivered(&link), &[])
            .await
            .unwrap()
    );
    assert_eq!(report(o, cid).await["password_pending"], false);

    // A newer write that kept the password: the one delivered was it, so erased.
    let dan = f.add_user("a", "dan", Some(b"sealed-1")).await;
    let link = linked("dan");
    let c = claim_one(o, "w1", &["a"]).await;
    assert_eq!(f.write_user(dan, None).await, 2);
    assert!(
        o.complete(&c, "w1", SERVER, &delivered(&link), &[])
            .await
            .unwrap()
    );
    let r = report(o, dan).await;
    assert_eq!(r["password_pending"], false);
    assert_eq!(r["state"], "pending");
}

pub(crate) async fn retries_count_and_wait(f: &dyn OutboxFixture) {
    let o = &*f.outbox();
    let ann = f.add_user("a", "ann", None).await;
    let c = claim_one(o, "w1", &["a"]).await;
    let intent = Link {
        create_attempted: true,
        intended_user_id: Some("ann".into()),
        last_pushed: Some(json!({"userId": "ann"})),
        ..Link::default()
    };
    assert!(
        o.complete(
            &c,
            "w1",
            SERVER,
            &retry(&intent, Duration::from_secs(60), false),
            &[call("create", false, 503)],
        )
        .await
        .unwrap()
    );
    let r = report(o, ann).await;
    assert_eq!(r["state"], "pending");
    assert_eq!(r["attempts"], 1);
    assert_eq!(r["last_error"], "Ameyo answered 503");
    assert_eq!(r["create_attempted"], true);
    assert_eq!(r["intended_user_id"], "ann");
    assert_eq!(r["ameyo_server"], SERVER, "an intent is owned too");
    assert_eq!(r["last_pushed"], json!({"userId": "ann"}));
    assert_eq!(r["lease_owner"], Value::Null);
    assert!(time(&r["next_attempt_at"]) > Utc::now() + Duration::from_secs(50));
    assert!(
        o.claim("w1", &tenants(&["a"]), LEASE, 10)
            .await
            .unwrap()
            .is_empty(),
        "not due before the delay"
    );
    let log = o.recent_attempts(ann, 10).await.unwrap();
    assert_eq!(log[0]["outcome"], "error");
    assert_eq!(log[0]["error"], "create answered 503");

    // No delay: due at once; a full push forgets what was pushed; no link, no server.
    let bob = f.add_user("a", "bob", None).await;
    let c = claim_one(o, "w1", &["a"]).await;
    assert_eq!(c.user_id, bob);
    assert!(
        o.complete(
            &c,
            "w1",
            SERVER,
            &retry(&linked("bob"), Duration::ZERO, true),
            &[]
        )
        .await
        .unwrap()
    );
    let r = report(o, bob).await;
    assert_eq!(r["last_pushed"], Value::Null);
    assert_eq!(r["ameyo_user_id"], "bob");
    let c = claim_one(o, "w1", &["a"]).await;
    assert_eq!(c.attempts, 1);
    assert!(
        o.complete(
            &c,
            "w1",
            SERVER,
            &retry(&Link::default(), Duration::ZERO, false),
            &[]
        )
        .await
        .unwrap()
    );
    let r = report(o, bob).await;
    assert_eq!(r["ameyo_server"], Value::Null);
    assert_eq!(r["ameyo_user_id"], Value::Null);
    assert_eq!(claim_one(o, "w1", &["a"]).await.attempts, 2);
}

pub(crate) async fn removed_drops_the_tombstone(f: &dyn OutboxFixture) {
    let o = &*f.outbox();
    let ann = f.add_user("a", "ann", None).await;
    let c = claim_one(o, "w1", &["a"]).await;
    let link = linked("ann");
    assert!(
        o.complete(&c, "w1", SERVER, &synced(&link), &[])
            .await
            .unwrap()
    );
    assert_eq!(f.delete_user(ann).await, 2);
    let c = claim_one(o, "w1", &["a"]).await;
    assert!(c.deleted);
    assert_eq!(c.version, 2);
    assert_eq!(c.link.ameyo_user_id.as_deref(), Some("ann"));

    let wrong = Claimed {
        lease_token: Uuid::new_v4(),
        ..c.clone()
    };
    assert!(
        !o.complete(&wrong, "w1", SERVER, &Completion::Removed, &[])
            .await
            .unwrap()
    );
    assert!(o.row_report(ann).await.unwrap().is_some());
    assert!(
        o.complete(
            &c,
            "w1",
            SERVER,
            &Completion::Removed,
            &[call("delete", true, 200)]
        )
        .await
        .unwrap()
    );
    assert_eq!(o.row_report(ann).await.unwrap(), None);
    let log = o.recent_attempts(ann, 10).await.unwrap();
    assert_eq!(log[0]["call"], "delete", "the log outlives the user");

    // A live user is never removed.
    let bob = f.add_user("a", "bob", None).await;
    let c = claim_one(o, "w1", &["a"]).await;
    assert!(
        !o.complete(&c, "w1", SERVER, &Completion::Removed, &[])
            .await
            .unwrap()
    );
    assert_eq!(report(o, bob).await["state"], "leased");
    let names: Vec<String> = o
        .linked_users("a")
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.user_name)
        .collect();
    assert_eq!(names, ["bob"]);
}

pub(crate) async fn resync_of_a_leased_row_waits_for_its_delivery(f: &dyn OutboxFixture) {
    let o = &*f.outbox();
    let ann = f.add_user("a", "ann", None).await;
    let other = f.add_user("b", "bob", None).await;
    let c = claim_one(o, "w1", &["a"]).await;
    assert_eq!(o.resync(Some(&[ann]), None).await.unwrap(), 1);
    assert_eq!(report(o, ann).await["state"], "leased");
    let link = linked("ann");
    assert!(
        o.complete(&c, "w1", SERVER, &synced(&link), &[])
            .await
            .unwrap()
    );
    let r = report(o, ann).await;
    assert_eq!(r["state"], "pending", "asked to go round again");
    assert_eq!(r["last_pushed"], Value::Null, "with every field");
    assert_eq!(r["synced_version"], 1);

    let c = claim_one(o, "w1", &["a"]).await;
    assert!(
        o.complete(&c, "w1", SERVER, &synced(&link), &[])
            .await
            .unwrap()
    );
    let r = report(o, ann).await;
    assert_eq!(r["state"], "done", "the claim took the request");
    assert_eq!(r["last_pushed"], json!({"userId": "ann"}));

    // A whole tenant, and only it.
    assert_eq!(o.resync(None, Some("a")).await.unwrap(), 1);
    let r = report(o, ann).await;
    assert_eq!(r["state"], "pending");
    assert_eq!(r["last_pushed"], Value::Null);
    assert_eq!(o.resync(Some(&[]), None).await.unwrap(), 0);
    assert_eq!(report(o, other).await["state"], "pending");
}

pub(crate) async fn reclaim_takes_back_only_dead_holders(f: &dyn OutboxFixture) {
    let o = &*f.outbox();
    let known = tenants(&["a"]);
    let stale = Duration::from_secs(6);
    o.heartbeat("live").await.unwrap();
    o.heartbeat("silent").await.unwrap();
    let ann = f.add_user("a", "ann", None).await;
    let c_ann = claim_one(o, "silent", &["a"]).await;
    let bob = f.add_user("a", "bob", None).await;
    claim_one(o, "live", &["a"]).await;
    let cid = f.add_user("a", "cid", None).await;
    claim_one(o, "never-beat", &["a"]).await;
    let dan = f.add_user("b", "dan", None).await;
    claim_one(o, "silent", &["b"]).await;
    f.age_heartbeat("silent", 10).await;
    f.age_heartbeat("live", 3).await;

    assert_eq!(o.reclaim_stale(&known, stale, 0).await.unwrap(), 2);
    for user in [ann, cid] {
        let r = report(o, user).await;
        assert_eq!(r["state"], "pending");
        assert_eq!(r["attempts"], 1, "a lost delivery counts");
        assert_eq!(r["lease_owner"], Value::Null);
        assert!(
            r["last_error"].as_str().unwrap().contains("did not finish"),
            "{r}"
        );
    }
    let r = report(o, bob).await;
    assert_eq!(r["state"], "leased", "a live holder keeps its lease");
    assert_eq!(r["lease_owner"], "live");
    assert_eq!(
        report(o, dan).await["state"],
        "leased",
        "another tenant's row is not decided here"
    );
    // The old holder, should it come back, records nothing.
    assert!(
        !o.complete(&c_ann, "silent", SERVER, &synced(&linked("ann")), &[])
            .await
            .unwrap()
    );

    // A live holder whose lease ran out loses it too, and what it pushed is forgotten.
    f.expire_lease(bob).await;
    assert_eq!(o.reclaim_stale(&known, stale, 0).await.unwrap(), 1);
    let r = report(o, bob).await;
    assert_eq!(r["state"], "pending");
    assert_eq!(r["last_pushed"], Value::Null);
}

pub(crate) async fn lost_deliveries_end_dead_at_max_attempts(f: &dyn OutboxFixture) {
    let o = &*f.outbox();
    let known = tenants(&["a"]);
    let stale = Duration::from_secs(6);
    let ann = f.add_user("a", "ann", None).await;
    for attempt in 1..=3 {
        claim_one(o, "crashes", &["a"]).await;
        assert_eq!(o.reclaim_stale(&known, stale, 3).await.unwrap(), 1);
        let r = report(o, ann).await;
        assert_eq!(r["attempts"], attempt);
        let want = if attempt < 3 { "pending" } else { "dead" };
        assert_eq!(r["state"], want, "after {attempt}");
    }
    assert_eq!(report(o, ann).await["pending_since"], Value::Null);

    // 0: never dead.
    let bob = f.add_user("a", "bob", None).await;
    for _ in 0..5 {
        claim_one(o, "crashes", &["a"]).await;
        assert_eq!(o.reclaim_stale(&known, stale, 0).await.unwrap(), 1);
    }
    let r = report(o, bob).await;
    assert_eq!(
        (&r["state"], &r["attempts"]),
        (&json!("pending"), &json!(5))
    );
}

pub(crate) async fn retire_hands_leases_back(f: &dyn OutboxFixture) {
    let o = &*f.outbox();
    let known = tenants(&["a"]);
    o.heartbeat("w1").await.unwrap();
    o.heartbeat("w2").await.unwrap();
    let ann = f.add_user("a", "ann", None).await;
    claim_one(o, "w1", &["a"]).await;
    let bob = f.add_user("a", "bob", None).await;
    claim_one(o, "w2", &["a"]).await;

    assert_eq!(o.retire("w1").await.unwrap(), 1);
    let r = report(o, ann).await;
    assert_eq!(r["state"], "pending");
    assert_eq!(r["attempts"], 0, "a handed-back row is no failed attempt");
    assert_eq!(report(o, bob).await["state"], "leased");

    // Its heartbeat went with it: a lease still in its name is taken back.
    claim_one(o, "w1", &["a"]).await;
    let stale = Duration::from_secs(6);
    assert_eq!(o.reclaim_stale(&known, stale, 0).await.unwrap(), 1);
    assert_eq!(report(o, ann).await["state"], "pending");
    assert_eq!(report(o, bob).await["state"], "leased");
}

pub(crate) async fn an_ameyo_user_id_has_one_owner_per_server(f: &dyn OutboxFixture) {
    let o = &*f.outbox();
    let sending = json!({"userId": "ann"});
    let ann = f.add_user("a", "ann@a.example", None).await;
    let c_ann = claim_one(o, "w1", &["a"]).await;
    assert_eq!(
        o.claim_user_id(ann, c_ann.lease_token, SERVER, "ann", &sending)
            .await
            .unwrap(),
        UserIdClaim::Granted
    );
    let r = report(o, ann).await;
    assert_eq!(r["intended_user_id"], "ann");
    assert_eq!(r["create_attempted"], true);
    assert_eq!(r["ameyo_server"], SERVER);
    assert_eq!(r["last_pushed"], sending);
    assert_eq!(
        o.claim_user_id(ann, c_ann.lease_token, SERVER, "ann", &sending)
            .await
            .unwrap(),
        UserIdClaim::Granted,
        "its own userId again"
    );
    assert_eq!(
        o.claim_user_id(ann, Uuid::new_v4(), SERVER, "ann", &sending)
            .await
            .unwrap(),
        UserIdClaim::LostLease
    );

    // Another tenant on the same server, in another case: held.
    let bob = f.add_user("b", "ann@b.example", None).await;
    let c_bob = claim_one(o, "w1", &["b"]).await;
    assert_eq!(
        o.claim_user_id(bob, c_bob.lease_token, SERVER, "ANN", &sending)
            .await
            .unwrap(),
        UserIdClaim::HeldByLive { tenant: "a".into() }
    );
    let r = report(o, bob).await;
    assert_eq!(r["intended_user_id"], Value::Null, "nothing recorded");
    assert_eq!(r["create_attempted"], false);
    // On another server it is free.
    assert_eq!(
        o.claim_user_id(bob, c_bob.lease_token, OTHER_SERVER, "ann", &sending)
            .await
            .unwrap(),
        UserIdClaim::Granted
    );

    // Case folds for every letter, not only ASCII.
    let olaf = f.add_user("a", "olaf", None).await;
    let c_olaf = claim_one(o, "w1", &["a"]).await;
    assert_eq!(
        o.claim_user_id(olaf, c_olaf.lease_token, SERVER, "Ölaf", &sending)
            .await
            .unwrap(),
        UserIdClaim::Granted
    );
    let olaf2 = f.add_user("b", "olaf", None).await;
    let c_olaf2 = claim_one(o, "w1", &["b"]).await;
    assert_eq!(
        o.claim_user_id(olaf2, c_olaf2.lease_token, SERVER, "ölaf", &sending)
            .await
            .unwrap(),
        UserIdClaim::HeldByLive { tenant: "a".into() }
    );

    // A confirmed link holds it as an intent did; deleted, it holds it until removed.
    assert!(
        o.complete(&c_ann, "w1", SERVER, &synced(&linked("ann")), &[])
            .await
            .unwrap()
    );
    f.delete_user(ann).await;
    let cid = f.add_user("c", "ann@c.example", None).await;
    let c_cid = claim_one(o, "w1", &["c"]).await;
    assert_eq!(
        o.claim_user_id(cid, c_cid.lease_token, SERVER, "Ann", &sending)
            .await
            .unwrap(),
        UserIdClaim::HeldByTombstone
    );
    let c_ann = claim_one(o, "w1", &["a"]).await;
    assert!(
        o.complete(&c_ann, "w1", SERVER, &Completion::Removed, &[])
            .await
            .unwrap()
    );
    assert_eq!(
        o.claim_user_id(cid, c_cid.lease_token, SERVER, "Ann", &sending)
            .await
            .unwrap(),
        UserIdClaim::Granted,
        "free once the tombstone is gone"
    );
}

pub(crate) async fn adopt_server_scopes_old_links(f: &dyn OutboxFixture) {
    let o = &*f.outbox();
    let ann = f.add_user("a", "ann", None).await;
    f.link_without_server(ann, "Ann", true).await;
    let ann2 = f.add_user("a", "ann2", None).await;
    f.link_without_server(ann2, "ann", false).await;
    let bob = f.add_user("a", "bob", None).await;
    f.link_without_server(bob, "bob", true).await;
    let bob_b = f.add_user("b", "bob", None).await;
    let c = claim_one(o, "w1", &["b"]).await;
    assert_eq!(
        o.claim_user_id(bob_b, c.lease_token, SERVER, "BOB", &json!({}))
            .await
            .unwrap(),
        UserIdClaim::Granted
    );
    let cid = f.add_user("b", "cid", None).await;
    f.link_without_server(cid, "cid", true).await;

    assert_eq!(o.adopt_server("a", SERVER).await.unwrap(), 1);
    assert_eq!(
        report(o, ann).await["ameyo_server"],
        SERVER,
        "the linked one"
    );
    assert_eq!(report(o, ann2).await["ameyo_server"], Value::Null);
    assert_eq!(
        report(o, bob).await["ameyo_server"],
        Value::Null,
        "owned there already"
    );
    assert_eq!(report(o, cid).await["ameyo_server"], Value::Null);
    assert_eq!(o.adopt_server("a", SERVER).await.unwrap(), 0, "once");
}

pub(crate) async fn prune_deletes_in_batches(f: &dyn OutboxFixture) {
    let o = &*f.outbox();
    let ann = f.add_user("a", "ann", None).await;
    f.add_old_attempts(ann, 25_000, 31).await;
    let c = claim_one(o, "w1", &["a"]).await;
    let calls = [call("create", false, 503), call("get", true, 200)];
    assert!(
        o.complete(
            &c,
            "w1",
            SERVER,
            &retry(&Link::default(), LEASE, false),
            &calls
        )
        .await
        .unwrap()
    );
    assert_eq!(o.prune_attempts(30).await.unwrap(), 25_000);
    let log = o.recent_attempts(ann, 100).await.unwrap();
    assert_eq!(log.len(), 2, "recent entries stay");
    assert_eq!(o.prune_attempts(30).await.unwrap(), 0);
}

pub(crate) async fn operator_views_and_changes(f: &dyn OutboxFixture) {
    let o = &*f.outbox();
    let ann = f.add_user("a", "ann", None).await;
    let c = claim_one(o, "w1", &["a"]).await;
    let calls = [call("create", false, 400), call("get", false, 404)];
    assert!(
        o.complete(&c, "w1", SERVER, &dead(&Link::default()), &calls)
            .await
            .unwrap()
    );
    let bob = f.add_user("a", "bob", None).await;
    let cid = f.add_user("b", "cid", None).await;
    let c = claim_one(o, "w1", &["b"]).await;
    assert!(
        o.complete(&c, "w1", SERVER, &synced(&linked("cid")), &[])
            .await
            .unwrap()
    );

    let mut counts: Vec<(String, String, i64, bool)> = o
        .counts()
        .await
        .unwrap()
        .into_iter()
        .map(|c| {
            let aged = c.oldest_pending_secs.is_some_and(|s| s >= 0.0);
            (c.tenant_id, c.state, c.users, aged)
        })
        .collect();
    counts.sort();
    assert_eq!(
        counts,
        [
            ("a".into(), "dead".into(), 1, false),
            ("a".into(), "pending".into(), 1, true),
            ("b".into(), "done".into(), 1, false),
        ]
    );

    let dead_rows = o.list(Which::Dead, None, 10).await.unwrap();
    assert_eq!(dead_rows.len(), 1);
    let d = &dead_rows[0];
    assert_eq!((d.user_id, d.tenant.as_str()), (ann, "a"));
    assert_eq!((d.user_name.as_str(), d.state.as_str()), ("ann", "dead"));
    assert_eq!(d.attempts, 1);
    assert_eq!(d.last_error.as_deref(), Some("refused for good"));
    assert!(d.since <= Utc::now() && d.next_attempt_at <= Utc::now());
    let pending = o.list(Which::Pending, Some("a"), 10).await.unwrap();
    assert_eq!(pending.iter().map(|e| e.user_id).collect::<Vec<_>>(), [bob]);
    assert!(
        o.list(Which::Pending, Some("b"), 10)
            .await
            .unwrap()
            .is_empty()
    );
    f.add_user("a", "dan", None).await;
    assert_eq!(o.list(Which::Pending, None, 1).await.unwrap().len(), 1);

    // The newest calls first.
    let log = o.recent_attempts(ann, 1).await.unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["call"], "get");
    assert_eq!(log[0]["http_status"], 404);

    assert_eq!(o.rearm_dead(Some(bob), None).await.unwrap(), 0, "not dead");
    assert_eq!(o.rearm_dead(None, Some("b")).await.unwrap(), 0);
    assert_eq!(o.rearm_dead(Some(ann), Some("a")).await.unwrap(), 1);
    let r = report(o, ann).await;
    assert_eq!(r["state"], "pending");
    assert_eq!(r["attempts"], 0);
    assert_eq!(r["last_error"], Value::Null);
    assert!(r["pending_since"].is_string());

    let reconciled = o.linked_users("b").await.unwrap();
    assert_eq!(reconciled.len(), 1);
    assert_eq!(reconciled[0].id, cid);
    assert_eq!(reconciled[0].ameyo_user_id.as_deref(), Some("cid"));
    assert!(reconciled[0].active);
    assert_eq!(reconciled[0].resource["userName"], "cid");
    assert_eq!(o.forget_links(&[cid]).await.unwrap(), 1);
    let r = report(o, cid).await;
    assert_eq!(r["state"], "pending");
    for gone in ["ameyo_user_id", "ameyo_server", "cc_user_id", "last_pushed"] {
        assert_eq!(r[gone], Value::Null, "{gone}");
    }
    assert_eq!(o.linked_users("b").await.unwrap()[0].ameyo_user_id, None);
    // The forgotten userId is free for another user on that server.
    let eve = f.add_user("a", "eve", None).await;
    o.resync(Some(&[ann, bob]), None).await.unwrap();
    let mut due = o.claim("w1", &tenants(&["a"]), LEASE, 10).await.unwrap();
    due.retain(|c| c.user_id == eve);
    assert_eq!(
        o.claim_user_id(eve, due[0].lease_token, SERVER, "cid", &json!({}))
            .await
            .unwrap(),
        UserIdClaim::Granted
    );
    // A leased row keeps its lease and goes round again afterwards.
    assert_eq!(o.forget_links(&[eve]).await.unwrap(), 1);
    let r = report(o, eve).await;
    assert_eq!(r["state"], "leased");
    assert_eq!(r["intended_user_id"], Value::Null);

    let names: Vec<String> = o
        .linked_users("a")
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.user_name)
        .collect();
    assert_eq!(names, ["ann", "bob", "dan", "eve"]);
    assert_eq!(o.row_report(Uuid::new_v4()).await.unwrap(), None);
}

pub(crate) async fn operator_changes_wake_the_worker(f: &dyn OutboxFixture) {
    let o = f.outbox();
    let notify = Arc::new(Notify::new());
    let shutdown = CancellationToken::new();
    let listener = tokio::spawn(o.clone().listen(notify.clone(), shutdown.clone()));
    // A backend may need a moment to start listening: ask until a wake-up arrives.
    let mut woken = false;
    for _ in 0..50 {
        o.rearm_dead(None, None).await.unwrap();
        if tokio::time::timeout(Duration::from_millis(100), notify.notified())
            .await
            .is_ok()
        {
            woken = true;
            break;
        }
    }
    assert!(woken, "a re-arm wakes the listener");
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), listener)
        .await
        .expect("listen ends at shutdown")
        .unwrap();
}

/// Two processes (`p1`, `p2`) of one tenant and one process of another share sessions:
/// one logs in at a time and the others adopt what it publishes.
pub(crate) async fn one_login_at_a_time(
    p1: &dyn SessionStore,
    p2: &dyn SessionStore,
    other_tenant: &dyn SessionStore,
) {
    let (none, generation) = p1.load().await.unwrap();
    assert!(none.is_none());
    assert_eq!(generation, 0);
    assert!(p1.begin_login(0).await.unwrap());
    assert!(!p2.begin_login(0).await.unwrap(), "p1 holds the lease");
    assert!(p1.begin_login(0).await.unwrap(), "its own lease, again");
    assert!(other_tenant.begin_login(0).await.unwrap(), "per tenant");
    assert!(
        p2.publish(&SecretString::from("not-mine")).await.is_err(),
        "no publishing without the lease"
    );

    assert_eq!(p1.publish(&SecretString::from("s1")).await.unwrap(), 1);
    let (adopted, seen) = p2.load().await.unwrap();
    assert_eq!(adopted.expect("adopted").expose_secret(), "s1");
    assert_eq!(seen, 1);
    assert!(
        !p2.begin_login(0).await.unwrap(),
        "a newer session than the one seen: adopt it instead"
    );

    // The session expired for p2: it logs in, fails, and gives the lease back.
    assert!(p2.begin_login(1).await.unwrap());
    assert!(!p1.begin_login(1).await.unwrap());
    p2.abandon_login().await.unwrap();
    assert!(p1.begin_login(1).await.unwrap());
    assert_eq!(p1.publish(&SecretString::from("s2")).await.unwrap(), 2);
    let (adopted, seen) = p2.load().await.unwrap();
    assert_eq!(adopted.expect("adopted").expose_secret(), "s2");
    assert_eq!(seen, 2);
    let (theirs, _) = other_tenant.load().await.unwrap();
    assert!(theirs.is_none(), "another tenant's session stays its own");
}
