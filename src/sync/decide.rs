//! The delivery decision, without I/O. Given one claimed user (its SCIM state, its link
//! to Ameyo, the tenant's policy) and what the calls made so far in this delivery
//! answered, [`next`] names the next step: an Ameyo call, a store call, or the outcome to
//! record. The worker performs the step and feeds the answer to [`observe`], which
//! updates the [`Progress`]; then it asks [`next`] again. Every rule of delivery is here
//! and unit-tested case by case; the worker only carries steps out.
//!
//! The rules, in short:
//! - An unconfirmed create is looked up before anything else; the account found is
//!   linked only if it looks like the one we sent (its SSO id or name) or the operator
//!   allowed adoption. A create is sent only after the userId is claimed in the store,
//!   where ownership is a unique constraint.
//! - An account that already exists is taken over only with `adopt_existing`, and the
//!   bridge's own login user never.
//! - Absence is concluded only from `user.not.found` confirmed by a listing that lacks
//!   the user: a delete or lock never counts as done on an unrecognised answer.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::ameyo::client::CallError;
use crate::ameyo::mapping::{AmeyoUser, GroupKey, Mapper};
use crate::config::{OnDeactivate, OnDelete, UpdatePathId};
use crate::store::outbox::{Link, UserIdClaim};

/// What the user should be in Ameyo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Active,
    Inactive,
    /// Deleted in SCIM: a tombstone to deliver.
    Deleted,
}

/// The tenant's rules for one delivery.
pub struct Policy<'a> {
    pub mapper: &'a Mapper,
    /// Whether the mapped Ameyo fields are within the tenant's bounds (allowed user
    /// types, contact centers); the message says what is not.
    pub bounds: &'a (dyn Fn(&AmeyoUser) -> Result<(), String> + Sync),
    pub on_deactivate: OnDeactivate,
    pub on_delete: OnDelete,
    pub adopt_existing: bool,
    /// The Ameyo user the bridge logs in as: never created, adopted, changed or removed.
    pub login_user: Option<&'a str>,
    pub update_path_id: UpdatePathId,
    /// Attempts before a transient failure becomes a dead letter (0: never).
    pub max_attempts: u32,
}

/// One claimed user.
pub struct Case<'a> {
    pub tenant: &'a str,
    pub target: Target,
    pub resource: &'a Map<String, Value>,
    /// The groups the user is a direct member of (group mapping rules read them).
    pub groups: &'a [GroupKey],
    /// An IdP password waits for delivery.
    pub password_pending: bool,
    /// Attempts already made at this version.
    pub attempts: u32,
    pub policy: Policy<'a>,
}

/// Why a listing is consulted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A create was sent earlier and we never heard back.
    UnconfirmedCreate,
    /// Ameyo answered the create: the userId exists.
    AlreadyExists,
    /// Ameyo answered `user.not.found`: confirm before concluding absence.
    ConfirmAbsent,
}

/// Which password an update or create carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordUse {
    None,
    /// The IdP's pending password.
    Pending,
    /// A fresh random one nobody knows (locking, or unlocking without an IdP password).
    Undisclosed,
}

/// The next thing to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Lookup {
        user_id: String,
        contact_center_id: i64,
        purpose: Purpose,
    },
    /// Record in the store that this user owns `user_id` and is about to create it
    /// with the fields `sending` (so an unanswered create can be recognised later).
    ClaimUserId {
        user_id: String,
        sending: Value,
    },
    Create {
        user: AmeyoUser,
        password: PasswordUse,
    },
    Update {
        path_id: String,
        user: AmeyoUser,
        password: PasswordUse,
        /// The user ends up locked (mapping cleared, undisclosed password).
        locking: bool,
    },
    EndSessions {
        user_id: String,
    },
    Delete {
        user_id: String,
    },
    Finish(Outcome),
}

/// How a delivery ends.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Ameyo has this version.
    Synced,
    /// The tombstone was delivered: the row can go.
    Removed,
    /// Try again later.
    Retry(CallError),
    /// Stop until a new write or an operator re-arms it.
    Dead(String),
    /// Another worker holds the user now: record nothing.
    LostLease,
}

/// A user as Ameyo's list shows it (the fields the decision reads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub user_id: String,
    pub cc_user_id: Option<i64>,
    pub user_name: Option<String>,
    pub mapping_user_id: Option<String>,
}

/// What a step's answer was.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Update, end sessions or delete went through.
    Done,
    Created {
        cc_user_id: Option<i64>,
    },
    Listed(Option<Listed>),
    Claim(UserIdClaim),
    Failed(CallError),
}

/// What this delivery has done and learnt so far.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    /// The link as it will be recorded.
    pub link: Link,
    /// The pending password went out with a call that succeeded.
    pub password_delivered: bool,
    /// The userId this delivery claimed in the store.
    claimed: Option<String>,
    /// The create answered that the userId exists.
    exists_on_create: bool,
    sessions_ended: bool,
    pushed: bool,
    /// A call answered `user.not.found` for this userId: confirm by listing.
    confirm_absent: Option<String>,
    finished: Option<Outcome>,
}

impl Progress {
    pub fn new(link: Link) -> Self {
        Self {
            link,
            ..Default::default()
        }
    }
}

/// The Ameyo fields as recorded in `last_pushed`.
pub fn snapshot(u: &AmeyoUser) -> Value {
    serde_json::to_value(u).unwrap_or(Value::Null)
}

/// The next step of a delivery.
pub fn next(case: &Case, p: &Progress) -> Step {
    if let Some(o) = &p.finished {
        return Step::Finish(o.clone());
    }
    let m = case.policy.mapper;
    if let Some(id) = &p.confirm_absent {
        return Step::Lookup {
            user_id: id.clone(),
            contact_center_id: m.map(case.resource, case.groups, id).contact_center_id,
            purpose: Purpose::ConfirmAbsent,
        };
    }
    // A create an earlier attempt never heard back from: find out whether it landed
    // before anything else (a create of this delivery is answered, or it ends it).
    if p.link.ameyo_user_id.is_none() && p.link.create_attempted && p.claimed.is_none() {
        let expected = p
            .link
            .intended_user_id
            .clone()
            .or_else(|| m.user_id(case.resource).ok());
        if let Some(id) = expected {
            return Step::Lookup {
                contact_center_id: m.map(case.resource, case.groups, &id).contact_center_id,
                user_id: id,
                purpose: Purpose::UnconfirmedCreate,
            };
        }
    }
    let linked = p.link.ameyo_user_id.clone();
    if let Some(id) = &linked
        && is_login_user(case, id)
    {
        return Step::Finish(Outcome::Dead(login_user_reason(id)));
    }
    match case.target {
        Target::Deleted => match case.policy.on_delete {
            OnDelete::Delete => remove(linked, Outcome::Removed),
            OnDelete::Lock => lock(case, p, linked, Outcome::Removed),
        },
        Target::Inactive => match case.policy.on_deactivate {
            OnDeactivate::Lock => lock(case, p, linked, Outcome::Synced),
            OnDeactivate::Delete => remove(linked, Outcome::Synced),
        },
        Target::Active => provision(case, p, linked),
    }
}

/// Delete the Ameyo user; `done` once it is gone (or was never there).
fn remove(linked: Option<String>, done: Outcome) -> Step {
    match linked {
        None => Step::Finish(done),
        Some(user_id) => Step::Delete { user_id },
    }
}

/// End the user's sessions, rotate its password to an undisclosed one and clear its
/// SSO mapping; keep pushing field changes while it stays locked.
fn lock(case: &Case, p: &Progress, linked: Option<String>, done: Outcome) -> Step {
    let Some(id) = linked else {
        return Step::Finish(done);
    };
    let mut locked = case.policy.mapper.map(case.resource, case.groups, &id);
    locked.mapping_user_id = None;
    if (case.policy.bounds)(&locked).is_err() {
        // The IdP asks for something out of bounds: lock with the fields Ameyo has,
        // since deprovisioning must not wait for the IdP to fix it.
        match p
            .link
            .last_pushed
            .as_ref()
            .and_then(|v| serde_json::from_value::<AmeyoUser>(v.clone()).ok())
        {
            Some(mut known) => {
                known.mapping_user_id = None;
                locked = known;
            }
            None => {
                return Step::Finish(Outcome::Dead(format!(
                    "cannot lock '{id}': the mapped fields are out of the tenant's bounds \
                     and the fields Ameyo has are unknown; run `ameyo-scim reconcile`"
                )));
            }
        }
    }
    if !p.link.locked {
        if !p.sessions_ended {
            return Step::EndSessions { user_id: id };
        }
        return Step::Update {
            path_id: path_id(case, &p.link, &id),
            user: locked,
            password: PasswordUse::Undisclosed,
            locking: true,
        };
    }
    if p.link.last_pushed.as_ref() != Some(&snapshot(&locked)) {
        return Step::Update {
            path_id: path_id(case, &p.link, &id),
            user: locked,
            password: PasswordUse::None,
            locking: true,
        };
    }
    Step::Finish(done)
}

/// Create the user, or bring the linked one up to date.
fn provision(case: &Case, p: &Progress, linked: Option<String>) -> Step {
    let m = case.policy.mapper;
    let id = match &linked {
        Some(id) => id.clone(),
        None => match m.user_id(case.resource) {
            Ok(id) => id,
            Err(e) => return Step::Finish(Outcome::Dead(e.0)),
        },
    };
    if is_login_user(case, &id) {
        return Step::Finish(Outcome::Dead(login_user_reason(&id)));
    }
    let mapped = m.map(case.resource, case.groups, &id);
    if let Err(e) = (case.policy.bounds)(&mapped) {
        return Step::Finish(Outcome::Dead(e));
    }
    let password_due = case.password_pending && !p.password_delivered;
    let Some(id) = linked else {
        if p.exists_on_create {
            return Step::Lookup {
                contact_center_id: mapped.contact_center_id,
                user_id: id,
                purpose: Purpose::AlreadyExists,
            };
        }
        if p.claimed.as_deref() != Some(id.as_str()) {
            return Step::ClaimUserId {
                user_id: id,
                sending: snapshot(&mapped),
            };
        }
        return Step::Create {
            user: mapped,
            password: if password_due {
                PasswordUse::Pending
            } else {
                PasswordUse::Undisclosed
            },
        };
    };
    if p.pushed {
        return Step::Finish(Outcome::Synced);
    }
    let unchanged = p.link.last_pushed.as_ref() == Some(&snapshot(&mapped));
    if unchanged && !password_due && !p.link.locked {
        return Step::Finish(Outcome::Synced);
    }
    // Unlocking rotates the password away from the undisclosed one the lock set,
    // unless the IdP sent a real one.
    let password = match (password_due, p.link.locked) {
        (true, _) => PasswordUse::Pending,
        (false, true) => PasswordUse::Undisclosed,
        (false, false) => PasswordUse::None,
    };
    Step::Update {
        path_id: path_id(case, &p.link, &id),
        user: mapped,
        password,
        locking: false,
    }
}

/// Record what a step's answer means for the delivery.
pub fn observe(case: &Case, p: &mut Progress, step: &Step, answer: Answer) {
    match (step, answer) {
        (Step::Finish(_), _) => {}
        (_, Answer::Failed(e)) => failed(case, p, step, e),
        (
            Step::Lookup {
                user_id, purpose, ..
            },
            Answer::Listed(found),
        ) => looked_up(case, p, user_id, *purpose, found),
        (Step::ClaimUserId { user_id, sending }, Answer::Claim(claim)) => match claim {
            UserIdClaim::Granted => {
                p.claimed = Some(user_id.clone());
                p.link.create_attempted = true;
                p.link.intended_user_id = Some(user_id.clone());
                // Until the create is confirmed, what it carries.
                p.link.last_pushed = Some(sending.clone());
            }
            UserIdClaim::HeldByTombstone => {
                p.finished = Some(Outcome::Retry(CallError::transient(format!(
                    "waiting for a deleted user with the Ameyo userId '{user_id}' to be removed first"
                ))));
            }
            UserIdClaim::HeldByLive { tenant } => {
                let whose = if tenant == case.tenant {
                    "another user of this tenant".to_string()
                } else {
                    format!("a user of tenant '{tenant}' on the same Ameyo server")
                };
                p.finished = Some(Outcome::Dead(format!(
                    "the Ameyo userId '{user_id}' already belongs to {whose}; change \
                     user_id_attribute or its transforms so userIds are unique"
                )));
            }
            UserIdClaim::LostLease => p.finished = Some(Outcome::LostLease),
        },
        (Step::Create { user, password }, Answer::Created { cc_user_id }) => {
            p.link = Link {
                ameyo_user_id: Some(user.user_id.clone()),
                cc_user_id,
                create_attempted: false,
                intended_user_id: None,
                locked: false,
                last_pushed: Some(snapshot(user)),
            };
            p.password_delivered |= *password == PasswordUse::Pending;
        }
        (
            Step::Update {
                user,
                password,
                locking,
                ..
            },
            Answer::Done,
        ) => {
            p.link.locked = *locking;
            p.link.last_pushed = Some(snapshot(user));
            p.password_delivered |= *password == PasswordUse::Pending;
            p.pushed = !*locking;
        }
        (Step::EndSessions { .. }, Answer::Done) => p.sessions_ended = true,
        // The user is gone from Ameyo.
        (Step::Delete { .. }, Answer::Done) => forget(&mut p.link),
        (step, answer) => {
            p.finished = Some(Outcome::Retry(CallError::transient(format!(
                "internal: answer {answer:?} does not fit step {step:?}"
            ))));
        }
    }
}

fn looked_up(
    case: &Case,
    p: &mut Progress,
    user_id: &str,
    purpose: Purpose,
    found: Option<Listed>,
) {
    match (purpose, found) {
        (Purpose::UnconfirmedCreate, None) => {
            // The earlier create never landed; the claim goes with it.
            p.link.create_attempted = false;
            p.link.intended_user_id = None;
            p.link.last_pushed = None;
        }
        (Purpose::UnconfirmedCreate, Some(found)) => {
            // What the create carried (recorded with the claim), or failing that what it
            // would carry now.
            let sent = p
                .link
                .last_pushed
                .as_ref()
                .and_then(|v| serde_json::from_value::<AmeyoUser>(v.clone()).ok());
            let mapped = case.policy.mapper.map(case.resource, case.groups, user_id);
            let ours = sent.iter().chain([&mapped]).any(|u| looks_like(&found, u));
            if ours || case.policy.adopt_existing {
                link_to(p, found);
            } else {
                p.finished = Some(Outcome::Dead(format!(
                    "Ameyo has a user '{user_id}' whose name and SSO id are not the ones the \
                     bridge sent, so it is not taken over; set adopt_existing = true to allow it"
                )));
            }
        }
        (Purpose::AlreadyExists, Some(found)) => {
            if case.policy.adopt_existing {
                link_to(p, found);
            } else {
                p.finished = Some(Outcome::Dead(format!(
                    "Ameyo already has a user '{user_id}' that the bridge did not create; it is \
                     not taken over unless adopt_existing = true for this tenant"
                )));
            }
        }
        (Purpose::AlreadyExists, None) => {
            p.finished = Some(Outcome::Retry(CallError::transient(format!(
                "Ameyo says the userId '{user_id}' exists but does not list it"
            ))));
        }
        (Purpose::ConfirmAbsent, None) => {
            p.confirm_absent = None;
            forget(&mut p.link);
            // The next create claims the userId afresh.
            p.claimed = None;
        }
        (Purpose::ConfirmAbsent, Some(_)) => {
            p.finished = Some(Outcome::Retry(CallError::transient(format!(
                "Ameyo answered user.not.found for '{user_id}' but still lists it; will retry"
            ))));
        }
    }
}

fn failed(case: &Case, p: &mut Progress, step: &Step, e: CallError) {
    match (step, &e) {
        (Step::Create { .. }, CallError::AlreadyExists { .. }) => {
            p.exists_on_create = true;
            return;
        }
        // Ending sessions of a user with none may say so; the update that follows
        // tells whether the user exists.
        (Step::EndSessions { .. }, CallError::NotFound { .. }) => {
            p.sessions_ended = true;
            return;
        }
        (Step::Update { .. } | Step::Delete { .. }, CallError::NotFound { .. }) => {
            p.confirm_absent = p.link.ameyo_user_id.clone();
            if p.confirm_absent.is_some() {
                return;
            }
        }
        (Step::Create { .. }, _) => {
            // A create that surely did not reach Ameyo needs no lookup next time.
            let not_sent = matches!(
                e,
                CallError::Transient {
                    maybe_applied: false,
                    ..
                } | CallError::Permanent { .. }
            );
            if not_sent {
                p.link.create_attempted = false;
                p.link.intended_user_id = None;
                p.link.last_pushed = None;
            }
        }
        _ => {}
    }
    p.finished = Some(give_up_or_retry(case, e));
}

/// A failed call's outcome: Ameyo's refusal is final; anything else is retried until
/// the attempts run out.
pub fn give_up_or_retry(case: &Case, e: CallError) -> Outcome {
    match e {
        CallError::Permanent { reason, .. } => Outcome::Dead(reason),
        e => {
            let max = case.policy.max_attempts;
            if max > 0 && case.attempts + 1 >= max {
                Outcome::Dead(format!("gave up after {max} attempts: {e}"))
            } else {
                Outcome::Retry(e)
            }
        }
    }
}

/// The account Ameyo lists is the one we sent: its SSO id or its name match.
fn looks_like(found: &Listed, ours: &AmeyoUser) -> bool {
    let same = |a: &Option<String>, b: Option<&str>| matches!((a.as_deref(), b), (Some(a), Some(b)) if !a.is_empty() && a == b);
    same(&found.mapping_user_id, ours.mapping_user_id.as_deref())
        || same(&found.user_name, Some(ours.user_name.as_str()))
}

fn link_to(p: &mut Progress, found: Listed) {
    p.link.ameyo_user_id = Some(found.user_id);
    p.link.cc_user_id = found.cc_user_id;
    p.link.create_attempted = false;
    p.link.intended_user_id = None;
    // What the account holds is unknown: push every field.
    p.link.last_pushed = None;
}

/// Ameyo no longer has the user: the next delivery creates it again.
fn forget(link: &mut Link) {
    *link = Link::default();
}

fn is_login_user(case: &Case, id: &str) -> bool {
    case.policy
        .login_user
        .is_some_and(|l| l.trim().eq_ignore_ascii_case(id))
}

fn login_user_reason(id: &str) -> String {
    format!(
        "the Ameyo userId '{id}' is the bridge's own login user; the bridge never creates, \
         changes or removes it"
    )
}

fn path_id(case: &Case, link: &Link, user_id: &str) -> String {
    match (case.policy.update_path_id, link.cc_user_id) {
        (UpdatePathId::CcUserId, Some(cc)) => cc.to_string(),
        _ => user_id.to_string(),
    }
}

/// How long to wait before the next attempt after `e`: the backoff, stretched to at
/// least the request timeout when the failed call got no answer but may have been sent
/// (a timeout, a connection cut after sending): Ameyo may still be working on it, and
/// the retry, which pushes every field again, must land after it. A call that was
/// answered (a 5xx) is finished on Ameyo's side and needs no such wait.
pub fn retry_delay(e: &CallError, backoff: Duration, request_timeout: Duration) -> Duration {
    match e {
        CallError::Transient {
            maybe_applied: true,
            status: None,
            ..
        } => backoff.max(request_timeout),
        _ => backoff,
    }
}

/// Whether the next attempt must push every field again.
pub fn needs_full_push(e: &CallError) -> bool {
    matches!(
        e,
        CallError::Transient {
            maybe_applied: true,
            ..
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MappingSettings;
    use serde_json::json;

    fn mapper() -> Mapper {
        Mapper::new(&MappingSettings::default(), 1).expect("mapper")
    }

    fn resource(user_name: &str) -> Map<String, Value> {
        json!({
            "userName": user_name,
            "displayName": "Ann Example",
            "emails": [{"value": format!("sso-{user_name}"), "type": "work", "primary": true}],
        })
        .as_object()
        .cloned()
        .expect("object")
    }

    fn in_bounds(_: &AmeyoUser) -> Result<(), String> {
        Ok(())
    }

    fn no_admins(u: &AmeyoUser) -> Result<(), String> {
        if u.user_type == "Administrator" {
            Err("userType 'Administrator' is not in allowed_user_types".into())
        } else {
            Ok(())
        }
    }

    struct Setup {
        target: Target,
        resource: Map<String, Value>,
        password_pending: bool,
        attempts: u32,
        adopt_existing: bool,
        on_deactivate: OnDeactivate,
        on_delete: OnDelete,
        bounds: fn(&AmeyoUser) -> Result<(), String>,
    }

    fn setup(target: Target) -> Setup {
        Setup {
            target,
            resource: resource("ann@a.example"),
            password_pending: false,
            attempts: 0,
            adopt_existing: false,
            on_deactivate: OnDeactivate::Lock,
            on_delete: OnDelete::Delete,
            bounds: in_bounds,
        }
    }

    /// Run the decision against scripted answers; returns the steps taken (without the
    /// final one), the outcome and the progress.
    fn run(
        s: &Setup,
        m: &Mapper,
        link: Link,
        mut answer: impl FnMut(&Step) -> Answer,
    ) -> (Vec<Step>, Outcome, Progress) {
        let case = Case {
            tenant: "a",
            target: s.target,
            resource: &s.resource,
            groups: &[],
            password_pending: s.password_pending,
            attempts: s.attempts,
            policy: Policy {
                mapper: m,
                bounds: &s.bounds,
                on_deactivate: s.on_deactivate,
                on_delete: s.on_delete,
                adopt_existing: s.adopt_existing,
                login_user: Some("admin"),
                update_path_id: UpdatePathId::UserId,
                max_attempts: 5,
            },
        };
        let mut p = Progress::new(link);
        let mut steps = Vec::new();
        for _ in 0..20 {
            let step = next(&case, &p);
            if let Step::Finish(o) = step {
                return (steps, o, p);
            }
            let a = answer(&step);
            observe(&case, &mut p, &step, a);
            steps.push(step);
        }
        panic!("did not settle: {steps:?}");
    }

    fn linked(id: &str) -> Link {
        Link {
            ameyo_user_id: Some(id.into()),
            ..Default::default()
        }
    }

    fn kinds(steps: &[Step]) -> Vec<&'static str> {
        steps
            .iter()
            .map(|s| match s {
                Step::Lookup { .. } => "lookup",
                Step::ClaimUserId { .. } => "claim",
                Step::Create { .. } => "create",
                Step::Update { .. } => "update",
                Step::EndSessions { .. } => "end_sessions",
                Step::Delete { .. } => "delete",
                Step::Finish(_) => "finish",
            })
            .collect()
    }

    fn not_found() -> CallError {
        CallError::NotFound {
            reason: "Ameyo answered 512: user.not.found".into(),
            status: Some(512),
        }
    }

    fn listed(id: &str, name: Option<&str>, mapping: Option<&str>) -> Listed {
        Listed {
            user_id: id.into(),
            cc_user_id: Some(42),
            user_name: name.map(str::to_string),
            mapping_user_id: mapping.map(str::to_string),
        }
    }

    #[test]
    fn a_new_user_is_claimed_then_created_with_its_password() {
        let m = mapper();
        let mut s = setup(Target::Active);
        s.password_pending = true;
        let (steps, outcome, p) = run(&s, &m, Link::default(), |step| match step {
            Step::ClaimUserId { .. } => Answer::Claim(UserIdClaim::Granted),
            Step::Create { .. } => Answer::Created {
                cc_user_id: Some(7),
            },
            other => panic!("unexpected {other:?}"),
        });
        assert_eq!(kinds(&steps), ["claim", "create"]);
        assert!(matches!(
            &steps[1],
            Step::Create {
                password: PasswordUse::Pending,
                ..
            }
        ));
        assert_eq!(outcome, Outcome::Synced);
        assert_eq!(p.link.ameyo_user_id.as_deref(), Some("ann@a.example"));
        assert_eq!(p.link.cc_user_id, Some(7));
        assert!(p.password_delivered);
        assert!(!p.link.create_attempted && p.link.intended_user_id.is_none());
    }

    #[test]
    fn a_user_id_held_by_another_live_user_is_a_collision() {
        let m = mapper();
        let s = setup(Target::Active);
        let (steps, outcome, _) = run(&s, &m, Link::default(), |_| {
            Answer::Claim(UserIdClaim::HeldByLive { tenant: "a".into() })
        });
        assert_eq!(kinds(&steps), ["claim"]);
        let Outcome::Dead(reason) = outcome else {
            panic!("{outcome:?}")
        };
        assert!(reason.contains("another user of this tenant"), "{reason}");

        let (_, outcome, _) = run(&s, &m, Link::default(), |_| {
            Answer::Claim(UserIdClaim::HeldByLive { tenant: "b".into() })
        });
        assert!(
            matches!(&outcome, Outcome::Dead(r) if r.contains("tenant 'b' on the same Ameyo server")),
            "{outcome:?}"
        );
    }

    #[test]
    fn a_user_id_held_by_a_tombstone_waits_and_a_lost_lease_records_nothing() {
        let m = mapper();
        let s = setup(Target::Active);
        let (_, outcome, _) = run(&s, &m, Link::default(), |_| {
            Answer::Claim(UserIdClaim::HeldByTombstone)
        });
        assert!(
            matches!(&outcome, Outcome::Retry(CallError::Transient { reason, .. }) if reason.contains("deleted user")),
            "{outcome:?}"
        );
        let (_, outcome, _) = run(&s, &m, Link::default(), |_| {
            Answer::Claim(UserIdClaim::LostLease)
        });
        assert_eq!(outcome, Outcome::LostLease);
    }

    #[test]
    fn an_existing_account_is_not_adopted_unless_allowed() {
        let m = mapper();
        let mut s = setup(Target::Active);
        let answers = |step: &Step| match step {
            Step::ClaimUserId { .. } => Answer::Claim(UserIdClaim::Granted),
            Step::Create { .. } => Answer::Failed(CallError::AlreadyExists {
                reason: "user.already.exists".into(),
                status: Some(512),
            }),
            Step::Lookup {
                purpose: Purpose::AlreadyExists,
                user_id,
                ..
            } => Answer::Listed(Some(listed(user_id, Some("Planted"), None))),
            Step::Update { .. } => Answer::Done,
            other => panic!("unexpected {other:?}"),
        };
        let (steps, outcome, p) = run(&s, &m, Link::default(), answers);
        assert_eq!(kinds(&steps), ["claim", "create", "lookup"]);
        assert!(
            matches!(&outcome, Outcome::Dead(r) if r.contains("adopt_existing")),
            "{outcome:?}"
        );
        assert!(p.link.ameyo_user_id.is_none(), "not linked");

        s.adopt_existing = true;
        let (steps, outcome, p) = run(&s, &m, Link::default(), answers);
        assert_eq!(kinds(&steps), ["claim", "create", "lookup", "update"]);
        assert_eq!(outcome, Outcome::Synced);
        assert_eq!(p.link.ameyo_user_id.as_deref(), Some("ann@a.example"));
        assert_eq!(p.link.cc_user_id, Some(42));
    }

    #[test]
    fn exists_but_not_listed_is_retried() {
        let m = mapper();
        let mut s = setup(Target::Active);
        s.adopt_existing = true;
        let (_, outcome, _) = run(&s, &m, Link::default(), |step| match step {
            Step::ClaimUserId { .. } => Answer::Claim(UserIdClaim::Granted),
            Step::Create { .. } => Answer::Failed(CallError::AlreadyExists {
                reason: "exists".into(),
                status: Some(512),
            }),
            _ => Answer::Listed(None),
        });
        assert!(matches!(outcome, Outcome::Retry(_)), "{outcome:?}");
    }

    #[test]
    fn the_login_user_is_never_created_adopted_or_touched() {
        let m = mapper();
        let mut s = setup(Target::Active);
        s.resource = resource("ADMIN");
        let (steps, outcome, _) = run(&s, &m, Link::default(), |_| panic!("no call"));
        assert!(steps.is_empty());
        assert!(matches!(&outcome, Outcome::Dead(r) if r.contains("login user")));
        for target in [Target::Active, Target::Inactive, Target::Deleted] {
            let s = setup(target);
            let (steps, outcome, _) = run(&s, &m, linked("admin"), |_| panic!("no call"));
            assert!(steps.is_empty());
            assert!(matches!(outcome, Outcome::Dead(_)), "{target:?}");
        }
    }

    #[test]
    fn out_of_bounds_fields_are_refused() {
        let m = mapper();
        let mut s = setup(Target::Active);
        s.resource.insert(
            crate::scim::schema::AMEYO_USER.into(),
            json!({"userType": "Administrator"}),
        );
        s.bounds = no_admins;
        let (steps, outcome, _) = run(&s, &m, Link::default(), |_| panic!("no call"));
        assert!(steps.is_empty());
        assert!(matches!(&outcome, Outcome::Dead(r) if r.contains("allowed_user_types")));
        let (steps, outcome, _) = run(&s, &m, linked("ann@a.example"), |_| panic!("no call"));
        assert!(steps.is_empty());
        assert!(matches!(outcome, Outcome::Dead(_)));
        // Deprovisioning does not wait for the IdP: the lock goes out with the fields
        // Ameyo has.
        s.target = Target::Inactive;
        let mut link = linked("ann@a.example");
        let before = m.map(&resource("ann@a.example"), &[], "ann@a.example");
        link.last_pushed = Some(snapshot(&before));
        let (steps, outcome, _) = run(&s, &m, link, |_| Answer::Done);
        assert_eq!(kinds(&steps), ["end_sessions", "update"]);
        let Step::Update { user, .. } = &steps[1] else {
            unreachable!()
        };
        assert_eq!(user.user_type, "Agent");
        assert_eq!(outcome, Outcome::Synced);
    }

    #[test]
    fn an_unconfirmed_create_after_a_rename_looks_up_the_intended_id() {
        let m = mapper();
        let mut s = setup(Target::Active);
        s.resource = resource("ann.renamed@a.example");
        let link = Link {
            create_attempted: true,
            intended_user_id: Some("ann@a.example".into()),
            ..Default::default()
        };
        // Found, and it is the one we sent (same SSO id): linked under the old id, then
        // brought up to date.
        let (steps, outcome, p) = run(&s, &m, link.clone(), |step| match step {
            Step::Lookup {
                user_id,
                purpose: Purpose::UnconfirmedCreate,
                ..
            } => {
                assert_eq!(user_id, "ann@a.example");
                Answer::Listed(Some(listed(
                    user_id,
                    Some("Ann Example"),
                    Some("sso-ann@a.example"),
                )))
            }
            Step::Update { path_id, .. } => {
                assert_eq!(path_id, "ann@a.example");
                Answer::Done
            }
            other => panic!("unexpected {other:?}"),
        });
        assert_eq!(kinds(&steps), ["lookup", "update"]);
        assert_eq!(outcome, Outcome::Synced);
        assert_eq!(p.link.ameyo_user_id.as_deref(), Some("ann@a.example"));

        // Not there: the create never landed; claim the current id and create.
        let (steps, outcome, _) = run(&s, &m, link.clone(), |step| match step {
            Step::Lookup { .. } => Answer::Listed(None),
            Step::ClaimUserId { user_id, .. } => {
                assert_eq!(user_id, "ann.renamed@a.example");
                Answer::Claim(UserIdClaim::Granted)
            }
            Step::Create { .. } => Answer::Created { cc_user_id: None },
            other => panic!("unexpected {other:?}"),
        });
        assert_eq!(kinds(&steps), ["lookup", "claim", "create"]);
        assert_eq!(outcome, Outcome::Synced);

        // There, but someone else's: not taken over.
        let (_, outcome, p) = run(&s, &m, link, |_| {
            Answer::Listed(Some(listed("ann@a.example", Some("Mallory"), Some("m"))))
        });
        assert!(matches!(&outcome, Outcome::Dead(r) if r.contains("adopt_existing")));
        assert!(p.link.ameyo_user_id.is_none());
    }

    #[test]
    fn lock_then_unlock() {
        let m = mapper();
        let s = setup(Target::Inactive);
        let (steps, outcome, p) = run(&s, &m, linked("ann@a.example"), |_| Answer::Done);
        assert_eq!(kinds(&steps), ["end_sessions", "update"]);
        let Step::Update { user, password, .. } = &steps[1] else {
            unreachable!()
        };
        assert_eq!(user.mapping_user_id, None, "the SSO link is cleared");
        assert_eq!(*password, PasswordUse::Undisclosed);
        assert_eq!(outcome, Outcome::Synced);
        assert!(p.link.locked);

        // Locked and unchanged: nothing to do.
        let (steps, outcome, _) = run(&s, &m, p.link.clone(), |_| panic!("no call"));
        assert!(steps.is_empty());
        assert_eq!(outcome, Outcome::Synced);

        // Reactivated: one update restores the mapping and rotates the password.
        let s = setup(Target::Active);
        let (steps, outcome, p) = run(&s, &m, p.link, |_| Answer::Done);
        assert_eq!(kinds(&steps), ["update"]);
        let Step::Update { user, password, .. } = &steps[0] else {
            unreachable!()
        };
        assert_eq!(user.mapping_user_id.as_deref(), Some("sso-ann@a.example"));
        assert_eq!(*password, PasswordUse::Undisclosed);
        assert_eq!(outcome, Outcome::Synced);
        assert!(!p.link.locked);
    }

    #[test]
    fn a_password_sent_while_locked_waits_for_reactivation() {
        let m = mapper();
        let mut s = setup(Target::Inactive);
        s.password_pending = true;
        let (steps, outcome, p) = run(&s, &m, linked("ann@a.example"), |_| Answer::Done);
        assert!(steps.iter().all(|st| !matches!(
            st,
            Step::Update {
                password: PasswordUse::Pending,
                ..
            }
        )));
        assert_eq!(outcome, Outcome::Synced);
        assert!(!p.password_delivered, "kept for reactivation");

        let mut s = setup(Target::Active);
        s.password_pending = true;
        let (steps, _, p) = run(&s, &m, p.link, |_| Answer::Done);
        assert!(matches!(
            steps[0],
            Step::Update {
                password: PasswordUse::Pending,
                ..
            }
        ));
        assert!(p.password_delivered);
    }

    #[test]
    fn a_deleted_user_is_removed_only_when_ameyo_confirms() {
        let m = mapper();
        let s = setup(Target::Deleted);
        let (steps, outcome, _) = run(&s, &m, linked("ann@a.example"), |_| Answer::Done);
        assert_eq!(kinds(&steps), ["delete"]);
        assert_eq!(outcome, Outcome::Removed);

        // user.not.found, and the listing agrees: gone.
        let (steps, outcome, _) = run(&s, &m, linked("ann@a.example"), |step| match step {
            Step::Delete { .. } => Answer::Failed(not_found()),
            Step::Lookup { .. } => Answer::Listed(None),
            other => panic!("unexpected {other:?}"),
        });
        assert_eq!(kinds(&steps), ["delete", "lookup"]);
        assert_eq!(outcome, Outcome::Removed);

        // user.not.found, but the listing still has it: not done.
        let (_, outcome, _) = run(&s, &m, linked("ann@a.example"), |step| match step {
            Step::Delete { .. } => Answer::Failed(not_found()),
            _ => Answer::Listed(Some(listed("ann@a.example", None, None))),
        });
        assert!(matches!(outcome, Outcome::Retry(_)), "{outcome:?}");

        // A proxy's 404 page is a transient failure from the client: retried, not removed.
        let (_, outcome, _) = run(&s, &m, linked("ann@a.example"), |_| {
            Answer::Failed(CallError::transient(
                "Ameyo answered 404 without user.not.found",
            ))
        });
        assert!(matches!(outcome, Outcome::Retry(_)), "{outcome:?}");

        // Never in Ameyo: nothing to do.
        let (steps, outcome, _) = run(&s, &m, Link::default(), |_| panic!("no call"));
        assert!(steps.is_empty());
        assert_eq!(outcome, Outcome::Removed);
    }

    #[test]
    fn a_deleted_user_locked_instead_when_configured() {
        let m = mapper();
        let mut s = setup(Target::Deleted);
        s.on_delete = OnDelete::Lock;
        let (steps, outcome, _) = run(&s, &m, linked("ann@a.example"), |_| Answer::Done);
        assert_eq!(kinds(&steps), ["end_sessions", "update"]);
        assert_eq!(outcome, Outcome::Removed);
    }

    #[test]
    fn deactivation_by_delete_forgets_the_link() {
        let m = mapper();
        let mut s = setup(Target::Inactive);
        s.on_deactivate = OnDeactivate::Delete;
        let (steps, outcome, p) = run(&s, &m, linked("ann@a.example"), |_| Answer::Done);
        assert_eq!(kinds(&steps), ["delete"]);
        assert_eq!(outcome, Outcome::Synced);
        assert_eq!(p.link, Link::default());
    }

    #[test]
    fn an_update_to_a_vanished_user_confirms_then_creates_again() {
        let m = mapper();
        let s = setup(Target::Active);
        let (steps, outcome, p) = run(&s, &m, linked("ann@a.example"), |step| match step {
            Step::Update { .. } => Answer::Failed(not_found()),
            Step::Lookup { .. } => Answer::Listed(None),
            Step::ClaimUserId { .. } => Answer::Claim(UserIdClaim::Granted),
            Step::Create { .. } => Answer::Created { cc_user_id: None },
            other => panic!("unexpected {other:?}"),
        });
        assert_eq!(kinds(&steps), ["update", "lookup", "claim", "create"]);
        assert_eq!(outcome, Outcome::Synced);
        assert_eq!(p.link.ameyo_user_id.as_deref(), Some("ann@a.example"));
    }

    #[test]
    fn an_unchanged_user_costs_no_call() {
        let m = mapper();
        let s = setup(Target::Active);
        let mut link = linked("ann@a.example");
        link.last_pushed = Some(snapshot(&m.map(&s.resource, &[], "ann@a.example")));
        let (steps, outcome, _) = run(&s, &m, link, |_| panic!("no call"));
        assert!(steps.is_empty());
        assert_eq!(outcome, Outcome::Synced);
    }

    #[test]
    fn failures_retry_until_the_attempts_run_out_and_refusals_are_final() {
        let m = mapper();
        let mut s = setup(Target::Active);
        let (_, outcome, p) = run(&s, &m, Link::default(), |step| match step {
            Step::ClaimUserId { .. } => Answer::Claim(UserIdClaim::Granted),
            _ => Answer::Failed(CallError::Transient {
                reason: "timeout".into(),
                retry_after: None,
                status: None,
                maybe_applied: true,
            }),
        });
        assert!(matches!(outcome, Outcome::Retry(_)));
        assert!(
            p.link.create_attempted,
            "a create that may have landed is looked up next time"
        );
        let (_, outcome, p) = run(&s, &m, Link::default(), |step| match step {
            Step::ClaimUserId { .. } => Answer::Claim(UserIdClaim::Granted),
            _ => Answer::Failed(CallError::transient("connection refused")),
        });
        assert!(matches!(outcome, Outcome::Retry(_)));
        assert!(
            !p.link.create_attempted,
            "a create that was never sent is not"
        );
        s.attempts = 4;
        let (_, outcome, _) = run(&s, &m, linked("ann@a.example"), |_| {
            Answer::Failed(CallError::transient("down"))
        });
        assert!(matches!(&outcome, Outcome::Dead(r) if r.contains("gave up after 5")));
        let (_, outcome, _) = run(&s, &m, linked("ann@a.example"), |_| {
            Answer::Failed(CallError::Permanent {
                reason: "InvalidInput".into(),
                status: Some(400),
            })
        });
        assert_eq!(outcome, Outcome::Dead("InvalidInput".into()));
    }

    #[test]
    fn a_late_write_is_waited_out_and_overwritten() {
        let applied = CallError::Transient {
            reason: "timeout".into(),
            retry_after: None,
            status: None,
            maybe_applied: true,
        };
        let t = Duration::from_secs(20);
        assert_eq!(retry_delay(&applied, Duration::from_secs(1), t), t);
        assert_eq!(
            retry_delay(&applied, Duration::from_secs(60), t),
            Duration::from_secs(60)
        );
        assert!(needs_full_push(&applied));
        let refused = CallError::transient("refused");
        assert_eq!(
            retry_delay(&refused, Duration::from_secs(1), t),
            Duration::from_secs(1)
        );
        assert!(!needs_full_push(&refused));
        let answered = CallError::Transient {
            reason: "Ameyo answered 500".into(),
            retry_after: None,
            status: Some(500),
            maybe_applied: true,
        };
        assert_eq!(
            retry_delay(&answered, Duration::from_secs(1), t),
            Duration::from_secs(1),
            "an answered call is over on Ameyo's side"
        );
        assert!(needs_full_push(&answered));
    }
}
