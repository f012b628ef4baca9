//! Delivery to Ameyo end to end: the SCIM API writes, the worker delivers to the
//! in-process Ameyo emulator, and the tests read what Ameyo received.

mod common;

use std::time::Duration;

use ameyo_emulator::{EmulatorOptions, Faults, Outage};
use common::*;
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(30);

fn agent(user_name: &str) -> Value {
    json!({
        "schemas": [USER_SCHEMA, AMEYO],
        "userName": user_name,
        "name": {"givenName": "Ada", "familyName": "Lovelace"},
        "emails": [{"value": format!("sso-{user_name}"), "type": "work", "primary": true}],
        "title": "Analyst",
        "active": true,
        AMEYO: {"maxAllowedLogins": 2, "loginPolicy": "verify.before.force.login"}
    })
}

/// The SSO link is cleared (Ameyo shows an empty or absent mappingUserId).
fn no_mapping(u: &Value) -> bool {
    u["mappingUserId"].as_str().unwrap_or("").is_empty()
}

fn patch(ops: Value) -> Value {
    json!({"schemas": [PATCH_OP], "Operations": ops})
}

both_backends!(each_change_reaches_ameyo_with_the_right_call_and_payload);
async fn each_change_reaches_ameyo_with_the_right_call_and_payload(db: TestDb) {
    let s = sync_app(&db).await;
    let mut body = agent("ada@example.com");
    body["password"] = json!("First-Pa55word!");
    let id = s.app.create_user(body).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let uri = format!("/scim/v2/Users/{id}");
    s.drain(LIMIT).await;

    // create: POST cc/contactCenterUsers with the documented field types
    let creates = s.calls("POST", "cc/contactCenterUsers");
    assert_eq!(creates.len(), 1);
    let sent = creates[0].body.clone().unwrap();
    assert_eq!(sent["userId"], json!("ada@example.com"));
    assert_eq!(sent["userName"], json!("Ada Lovelace"));
    assert_eq!(sent["userType"], json!("Agent"));
    assert_eq!(sent["systemUserType"], json!("Agent"));
    assert_eq!(sent["contactCenterId"], json!(1));
    assert_eq!(sent["maxAllowedLogins"], json!("2"), "a string on create");
    assert_eq!(sent["loginPolicy"], json!("verify.before.force.login"));
    assert_eq!(sent["mappingUserId"], json!("sso-ada@example.com"));
    assert_eq!(
        sent["userData"],
        json!("[redacted]"),
        "the emulator redacts its request log"
    );
    assert_eq!(
        s.emulator.user_data("ada@example.com").as_deref(),
        Some("First-Pa55word!")
    );
    assert_eq!(s.sync_row(&id).await.0, "done");
    let pending = s.row(&id).await.unwrap().pending_password;
    assert!(pending.is_none(), "a delivered password is erased");

    // update: PUT cc/contactCenterUsers/<userId>, maxAllowedLogins a number, no userData
    s.emulator.clear_requests();
    let r = s
        .app
        .patch(
            &uri,
            patch(json!([{"op": "replace", "path": "displayName", "value": "Countess"}])),
        )
        .await;
    assert_eq!(r.status, 200);
    s.drain(LIMIT).await;
    let puts = s.calls("PUT", "cc/contactCenterUsers/ada@example.com");
    assert_eq!(puts.len(), 1, "{:?}", s.emulator.requests());
    let sent = puts[0].body.clone().unwrap();
    assert_eq!(sent["userName"], json!("Countess"));
    assert_eq!(sent["maxAllowedLogins"], json!(2), "a number on update");
    assert!(
        sent.get("userData").is_none(),
        "an unchanged password is not re-sent"
    );
    assert_eq!(
        s.ameyo_user("ada@example.com").unwrap()["userName"],
        json!("Countess")
    );

    // password change: an update carrying userData
    s.emulator.clear_requests();
    s.app
        .patch(
            &uri,
            patch(json!([{"op": "replace", "value": {"password": "Second-Pa55word!"}}])),
        )
        .await;
    s.drain(LIMIT).await;
    assert_eq!(s.calls("PUT", "cc/contactCenterUsers/").len(), 1);
    assert_eq!(
        s.emulator.user_data("ada@example.com").as_deref(),
        Some("Second-Pa55word!")
    );

    // deactivate (lock): end sessions, undisclosed password, mapping cleared
    s.emulator.clear_requests();
    s.app
        .patch(
            &uri,
            patch(json!([{"op": "replace", "value": {"active": false}}])),
        )
        .await;
    s.drain(LIMIT).await;
    let ends = s.calls("POST", "session/terminateAllSessionsForUser");
    assert_eq!(ends.len(), 1);
    assert_eq!(
        ends[0].body.as_ref().unwrap()["userId"],
        json!("ada@example.com")
    );
    assert_eq!(s.emulator.terminations("ada@example.com"), 1);
    let locked = s.ameyo_user("ada@example.com").unwrap();
    assert!(no_mapping(&locked), "{locked}");
    let rotated = s.emulator.user_data("ada@example.com").unwrap();
    assert_ne!(rotated, "Second-Pa55word!");
    assert!(rotated.len() >= 20);

    // reactivate: the SSO mapping comes back
    s.emulator.clear_requests();
    s.app
        .patch(
            &uri,
            patch(json!([{"op": "replace", "value": {"active": true}}])),
        )
        .await;
    s.drain(LIMIT).await;
    assert_eq!(s.calls("PUT", "cc/contactCenterUsers/").len(), 1);
    assert_eq!(
        s.ameyo_user("ada@example.com").unwrap()["mappingUserId"],
        json!("sso-ada@example.com")
    );

    // delete: DELETE user/users/<userId>, then the tombstone goes away
    s.emulator.clear_requests();
    assert_eq!(s.app.delete(&uri).await.status, 204);
    s.drain(LIMIT).await;
    assert_eq!(s.calls("DELETE", "user/users/ada@example.com").len(), 1);
    assert!(s.ameyo_user("ada@example.com").is_none());
    let rows = s.app.db.int("SELECT count(*) FROM users", &[]).await;
    assert_eq!(
        rows, 0,
        "the tombstone is removed once Ameyo has the delete"
    );
    // Every call is in the attempt log.
    let logged = s
        .app
        .db
        .int(
            "SELECT count(*) FROM sync_attempts WHERE user_id = $1",
            &[Arg::id(&id)],
        )
        .await;
    assert!(logged >= 8, "{logged} attempts logged");
}

both_backends!(on_deactivate_delete_and_on_delete_lock);
async fn on_deactivate_delete_and_on_delete_lock(db: TestDb) {
    let s = sync_app_with(&db, EmulatorOptions::default(), |st| {
        for t in &mut st.tenants {
            t.ameyo.mapping.on_deactivate = ameyo_scim::config::OnDeactivate::Delete;
            t.ameyo.mapping.on_delete = ameyo_scim::config::OnDelete::Lock;
        }
    })
    .await;
    let id = s.app.create_user(agent("bo@example.com")).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let uri = format!("/scim/v2/Users/{id}");
    s.drain(LIMIT).await;
    s.app
        .patch(
            &uri,
            patch(json!([{"op": "Replace", "path": "active", "value": "False"}])),
        )
        .await;
    s.drain(LIMIT).await;
    assert!(
        s.ameyo_user("bo@example.com").is_none(),
        "deactivation deleted the Ameyo user"
    );
    s.app
        .patch(
            &uri,
            patch(json!([{"op": "Replace", "path": "active", "value": "True"}])),
        )
        .await;
    s.drain(LIMIT).await;
    assert!(
        s.ameyo_user("bo@example.com").is_some(),
        "reactivation created it again"
    );
    assert_eq!(s.calls("POST", "cc/contactCenterUsers").len(), 2);
    // SCIM DELETE with on_delete = lock: the Ameyo user stays, locked.
    s.app.delete(&uri).await;
    s.drain(LIMIT).await;
    let u = s.ameyo_user("bo@example.com").unwrap();
    assert!(no_mapping(&u), "{u}");
    assert_eq!(s.emulator.terminations("bo@example.com"), 1);
}

both_backends!(a_hundred_rapid_updates_coalesce);
async fn a_hundred_rapid_updates_coalesce(db: TestDb) {
    let s = sync_app(&db).await;
    let id = s.app.create_user(agent("rapid@example.com")).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let uri = format!("/scim/v2/Users/{id}");
    s.drain(LIMIT).await;
    s.emulator.clear_requests();
    // Updates arrive while the worker runs.
    let worker = s.worker.clone();
    let pump = tokio::spawn(async move {
        for _ in 0..40 {
            worker.run_until_idle().await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    for i in 1..=100 {
        let r = s
            .app
            .patch(
                &uri,
                patch(json!([{"op": "replace", "path": "displayName", "value": format!("v{i}")}])),
            )
            .await;
        assert_eq!(r.status, 200);
    }
    pump.await.unwrap();
    s.drain(LIMIT).await;
    assert_eq!(
        s.ameyo_user("rapid@example.com").unwrap()["userName"],
        json!("v100")
    );
    // How many calls that took depends on how fast the machine ran the PATCHes against
    // the worker; never more than one per change.
    let updates = s.calls("PUT", "cc/contactCenterUsers/").len();
    assert!(
        (1..=100).contains(&updates),
        "{updates} updates for 100 changes"
    );
    let row = s.row(&id).await.unwrap();
    let (synced, desired) = (row.synced_version, row.desired_version);
    assert_eq!((synced, desired), (101, 101));

    // Changes made while no delivery runs coalesce into one call, whatever the timing.
    s.emulator.clear_requests();
    for i in 101..=150 {
        let r = s
            .app
            .patch(
                &uri,
                patch(json!([{"op": "replace", "path": "displayName", "value": format!("v{i}")}])),
            )
            .await;
        assert_eq!(r.status, 200);
    }
    s.drain(LIMIT).await;
    assert_eq!(s.calls("PUT", "cc/contactCenterUsers/").len(), 1);
    assert_eq!(
        s.ameyo_user("rapid@example.com").unwrap()["userName"],
        json!("v150")
    );
}

both_backends!(an_ameyo_outage_loses_nothing);
async fn an_ameyo_outage_loses_nothing(db: TestDb) {
    let s = sync_app(&db).await;
    for outage in [Outage::Unavailable, Outage::Refuse] {
        s.emulator.set_faults(Faults {
            outage: Some(outage),
            ..Faults::default()
        });
        let mut ids = Vec::new();
        for i in 0..20 {
            ids.push(
                s.app
                    .create_named(&format!("{outage:?}-{i}@example.com").to_lowercase())
                    .await,
            );
        }
        // Deliveries fail and are scheduled again; the IdP saw only successes.
        for _ in 0..3 {
            s.worker.run_until_idle().await.unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        for id in &ids {
            let (state, attempts, err) = s.sync_row(id).await;
            assert_eq!(state, "pending");
            assert!(attempts >= 1);
            assert!(err.is_some_and(|e| !e.is_empty()));
        }
        s.emulator.set_faults(Faults::default());
        s.drain(LIMIT).await;
        for i in 0..20 {
            let uid = format!("{outage:?}-{i}@example.com").to_lowercase();
            assert!(
                s.ameyo_user(&uid).is_some(),
                "{uid} delivered after the outage"
            );
        }
    }
    assert_eq!(s.emulator.users().len(), 40);
}

both_backends!(session_expiry_costs_one_login_and_no_failed_delivery);
async fn session_expiry_costs_one_login_and_no_failed_delivery(db: TestDb) {
    let s = sync_app(&db).await;
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(s.app.create_named(&format!("sess{i}@example.com")).await);
    }
    s.drain(LIMIT).await;
    assert_eq!(s.emulator.login_count(), 1);
    s.emulator.expire_sessions();
    for id in &ids {
        s.app
            .patch(
                &format!("/scim/v2/Users/{id}"),
                patch(json!([{"op": "replace", "path": "displayName", "value": "after"}])),
            )
            .await;
    }
    s.drain(LIMIT).await;
    assert_eq!(
        s.emulator.login_count(),
        2,
        "one login for the expiry, however many calls saw it"
    );
    let failed = s
        .app
        .db
        .int(
            "SELECT count(*) FROM sync_state WHERE attempts > 0 OR state <> 'done'",
            &[],
        )
        .await;
    assert_eq!(failed, 0, "no delivery failed");
    let expired_calls = s
        .emulator
        .requests()
        .iter()
        .filter(|r| !r.session_valid)
        .count();
    assert!(expired_calls >= 1, "calls did meet the expired session");
}

both_backends!(a_permanent_error_dead_letters_only_that_user);
async fn a_permanent_error_dead_letters_only_that_user(db: TestDb) {
    let s = sync_app(&db).await;
    s.emulator.set_faults(Faults {
        reject_user_ids: vec!["bad@example.com".into()],
        ..Faults::default()
    });
    let bad = s.app.create_named("bad@example.com").await;
    let mut good = Vec::new();
    for i in 0..5 {
        good.push(s.app.create_named(&format!("good{i}@example.com")).await);
    }
    s.drain(LIMIT).await;
    let (state, _, err) = s.sync_row(&bad).await;
    assert_eq!(state, "dead");
    let err = err.unwrap();
    assert!(
        err.contains("Ameyo answered 400") && err.contains("input"),
        "Ameyo's reason is kept: {err}"
    );
    for id in &good {
        assert_eq!(s.sync_row(id).await.0, "done");
    }
    assert_eq!(s.emulator.users().len(), 5);
    // A new SCIM write re-arms it.
    s.emulator.set_faults(Faults::default());
    s.app
        .patch(
            &format!("/scim/v2/Users/{bad}"),
            patch(json!([{"op": "replace", "path": "title", "value": "fixed"}])),
        )
        .await;
    assert_eq!(s.sync_row(&bad).await.0, "pending");
    s.drain(LIMIT).await;
    assert_eq!(s.sync_row(&bad).await.0, "done");
    assert!(s.ameyo_user("bad@example.com").is_some());
}

both_backends!(transient_faults_and_rate_limits_are_retried);
async fn transient_faults_and_rate_limits_are_retried(db: TestDb) {
    let s = sync_app(&db).await;
    s.emulator.set_faults(Faults {
        error_rate: 0.3,
        rate_limit_every: 7,
        retry_after_secs: 0,
        ..Faults::default()
    });
    for i in 0..30 {
        s.app.create_named(&format!("flaky{i}@example.com")).await;
    }
    s.drain(Duration::from_secs(60)).await;
    let dead = s
        .app
        .db
        .int("SELECT count(*) FROM sync_state WHERE state = 'dead'", &[])
        .await;
    assert_eq!(dead, 0);
    assert_eq!(
        s.emulator.users().len(),
        30,
        "each user once, despite failed and unknown-outcome creates"
    );
    let statuses: std::collections::HashSet<u16> =
        s.emulator.requests().iter().map(|r| r.status).collect();
    assert!(
        statuses.contains(&500) && statuses.contains(&429),
        "{statuses:?}"
    );
}

both_backends!(an_existing_ameyo_user_is_not_taken_over_by_default);
async fn an_existing_ameyo_user_is_not_taken_over_by_default(db: TestDb) {
    let s = sync_app(&db).await;
    let planted = json!({
        "userId": "legacy@example.com", "userType": "Agent", "userName": "Old Name",
        "systemUserType": "Agent", "contactCenterId": 1
    });
    s.emulator.add_user(planted.clone());
    let id = s.app.create_named("legacy@example.com").await;
    s.drain(LIMIT).await;
    let (state, _, error) = s.sync_row(&id).await;
    assert_eq!(state, "dead");
    assert!(error.unwrap_or_default().contains("adopt_existing"));
    assert_eq!(s.emulator.users().len(), 1, "no second account");
    let kept = s.ameyo_user("legacy@example.com").unwrap();
    assert_eq!(
        kept["userName"],
        json!("Old Name"),
        "the account is left alone"
    );
    assert!(s.calls("PUT", "cc/contactCenterUsers/").is_empty());
}

both_backends!(an_existing_ameyo_user_is_adopted_when_the_operator_allows_it);
async fn an_existing_ameyo_user_is_adopted_when_the_operator_allows_it(db: TestDb) {
    let s = sync_app_with(&db, Default::default(), |settings| {
        settings.tenants[0].ameyo.adopt_existing = true;
    })
    .await;
    s.emulator.add_user(json!({
        "userId": "legacy@example.com", "userType": "Agent", "userName": "Old Name",
        "systemUserType": "Agent", "contactCenterId": 1
    }));
    let id = s.app.create_named("legacy@example.com").await;
    s.drain(LIMIT).await;
    assert_eq!(s.sync_row(&id).await.0, "done");
    assert_eq!(s.emulator.users().len(), 1);
    assert_eq!(
        s.ameyo_user("legacy@example.com").unwrap()["userName"],
        json!("legacy@example.com")
    );
    let linked = s.row(&id).await.unwrap().ameyo_user_id;
    assert_eq!(linked.as_deref(), Some("legacy@example.com"));
}

both_backends!(a_user_recreated_under_the_same_name_waits_for_the_old_one_to_leave);
async fn a_user_recreated_under_the_same_name_waits_for_the_old_one_to_leave(db: TestDb) {
    let s = sync_app(&db).await;
    let old = s.app.create_named("again@example.com").await;
    s.drain(LIMIT).await;
    // Ameyo is down while the IdP deletes the user and creates it anew.
    s.emulator.set_faults(Faults {
        outage: Some(Outage::Unavailable),
        ..Faults::default()
    });
    assert_eq!(
        s.app.delete(&format!("/scim/v2/Users/{old}")).await.status,
        204
    );
    let new = s.app.create_named("again@example.com").await;
    assert_ne!(old, new);
    s.worker.run_until_idle().await.unwrap();
    s.emulator.set_faults(Faults::default());
    s.drain(LIMIT).await;
    // The old user's delete went first; the new one is in Ameyo and linked.
    let calls: Vec<String> = s
        .emulator
        .requests()
        .iter()
        .filter(|r| {
            r.status == 200
                && (r.path.contains("again@example.com") || r.path == "cc/contactCenterUsers")
        })
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    let delete = calls
        .iter()
        .rposition(|c| c.starts_with("DELETE"))
        .expect("deleted");
    let create = calls
        .iter()
        .rposition(|c| c.starts_with("POST"))
        .expect("created");
    assert!(delete < create, "{calls:?}");
    assert!(s.ameyo_user("again@example.com").is_some());
    assert_eq!(s.sync_row(&new).await.0, "done");
}

both_backends!(a_newer_version_is_not_dead_lettered_with_the_one_that_failed);
async fn a_newer_version_is_not_dead_lettered_with_the_one_that_failed(db: TestDb) {
    let s = sync_app(&db).await;
    s.emulator.set_faults(Faults {
        reject_user_ids: vec!["bad@example.com".into()],
        latency_ms: 400,
        ..Faults::default()
    });
    let id = s.app.create_named("bad@example.com").await;
    let worker = s.worker.clone();
    let inflight = tokio::spawn(async move { worker.run_until_idle().await });
    // While the doomed create is in flight, the IdP fixes the user.
    let started = std::time::Instant::now();
    while s.sync_row(&id).await.0 != "leased" {
        assert!(started.elapsed() < LIMIT);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = s
        .app
        .put(
            &format!("/scim/v2/Users/{id}"),
            json!({"userName": "good@example.com"}),
        )
        .await;
    assert_eq!(r.status, 200);
    inflight.await.unwrap().unwrap();
    s.emulator.set_faults(Faults::default());
    s.drain(LIMIT).await;
    assert_eq!(s.sync_row(&id).await.0, "done");
    assert!(s.ameyo_user("good@example.com").is_some());
}

both_backends!(an_unconfirmed_create_is_found_by_the_userid_it_was_for);
async fn an_unconfirmed_create_is_found_by_the_userid_it_was_for(db: TestDb) {
    let s = sync_app(&db).await;
    s.emulator.set_faults(Faults {
        outage: Some(Outage::Unavailable),
        ..Faults::default()
    });
    let id = s.app.create_named("ann@example.com").await;
    s.worker.run_until_idle().await.unwrap();
    // As if the create had reached Ameyo but its answer was lost (a crash right after
    // sending it leaves exactly this row)...
    // (the claim records the userId and the fields the create carries).
    s.app
        .db
        .exec(
            r#"UPDATE sync_state SET create_attempted = true, intended_user_id = 'ann@example.com',
            last_pushed = '{"user_id": "ann@example.com", "user_name": "ann@example.com",
              "user_type": "Agent", "system_user_type": "Agent", "contact_center_id": 1,
              "default_ready": false}'
           WHERE user_id = $1"#,
            &[Arg::id(&id)],
        )
        .await;
    s.emulator.set_faults(Faults::default());
    s.emulator.add_user(
        // What the bridge sent: its name is the user's.
        json!({"userId": "ann@example.com", "userType": "Agent", "userName": "ann@example.com",
        "systemUserType": "Agent", "contactCenterId": 1}),
    );
    // ...and the IdP renamed the user before the next attempt.
    s.app
        .patch(
            &format!("/scim/v2/Users/{id}"),
            patch(json!([{"op": "replace", "path": "userName", "value": "ann2@example.com"}])),
        )
        .await;
    s.drain(LIMIT).await;
    assert_eq!(
        s.emulator.users().len(),
        1,
        "no second account: {:?}",
        s.emulator.users()
    );
    let linked = s.row(&id).await.unwrap().ameyo_user_id;
    assert_eq!(
        linked.as_deref(),
        Some("ann@example.com"),
        "the userId is fixed once it exists"
    );
    assert_eq!(
        s.ameyo_user("ann@example.com").unwrap()["userName"],
        json!("ann2@example.com")
    );
}

both_backends!(a_password_sent_while_deactivated_waits_for_reactivation);
async fn a_password_sent_while_deactivated_waits_for_reactivation(db: TestDb) {
    let s = sync_app(&db).await;
    let id = s.app.create_named("pw-later@example.com").await;
    let uri = format!("/scim/v2/Users/{id}");
    s.drain(LIMIT).await;
    s.app
        .patch(
            &uri,
            patch(json!([{"op": "replace", "value": {"active": false}}])),
        )
        .await;
    s.drain(LIMIT).await;
    s.app
        .patch(
            &uri,
            patch(json!([{"op": "replace", "value": {"password": "Kept-Pa55word!"}}])),
        )
        .await;
    s.drain(LIMIT).await;
    assert_ne!(
        s.emulator.user_data("pw-later@example.com").as_deref(),
        Some("Kept-Pa55word!"),
        "not while locked"
    );
    s.app
        .patch(
            &uri,
            patch(json!([{"op": "replace", "value": {"active": true}}])),
        )
        .await;
    s.drain(LIMIT).await;
    assert_eq!(
        s.emulator.user_data("pw-later@example.com").as_deref(),
        Some("Kept-Pa55word!")
    );
    let pending = s.row(&id).await.unwrap().pending_password;
    assert!(pending.is_none());
}

both_backends!(colliding_ameyo_userids_dead_letter_instead_of_taking_over);
async fn colliding_ameyo_userids_dead_letter_instead_of_taking_over(db: TestDb) {
    let s = sync_app_with(&db, EmulatorOptions::default(), |st| {
        for t in &mut st.tenants {
            t.ameyo.mapping.user_id_transforms =
                vec![ameyo_scim::config::UserIdTransform::EmailLocalPart];
        }
    })
    .await;
    let first = s.app.create_named("ann@a.example").await;
    s.drain(LIMIT).await;
    let second = s.app.create_named("ann@b.example").await;
    s.drain(LIMIT).await;
    assert_eq!(s.sync_row(&first).await.0, "done");
    let (state, _, err) = s.sync_row(&second).await;
    assert_eq!(state, "dead");
    assert!(err.unwrap().contains("already belongs to another user"));
    assert_eq!(
        s.ameyo_user("ann").unwrap()["userName"],
        json!("ann@a.example"),
        "untouched"
    );
}

both_backends!(a_new_password_key_logs_in_afresh);
async fn a_new_password_key_logs_in_afresh(db: TestDb) {
    let s = sync_app(&db).await;
    let id = s.app.create_named("rekey@example.com").await;
    s.drain(LIMIT).await;
    // Restart with another key: the stored session cannot be opened.
    let mut settings = sync_settings(&s.emulator_url());
    settings.sync.password_key = Some(
        "MTExMTExMTExMTExMTExMTExMTExMTExMTExMTExMTE="
            .to_string()
            .into(),
    );
    let worker = std::sync::Arc::new(worker(&db.open(&settings).await, &settings));
    s.app
        .patch(
            &format!("/scim/v2/Users/{id}"),
            patch(json!([{"op": "replace", "path": "displayName", "value": "Rekeyed"}])),
        )
        .await;
    let started = std::time::Instant::now();
    worker.run_until_idle().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "no wait for a session nobody can open"
    );
    assert_eq!(s.sync_row(&id).await.0, "done");
    assert_eq!(s.emulator.login_count(), 2);
}
