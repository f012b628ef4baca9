//! Delivery safety end to end: two SCIM users never share an Ameyo account, a
//! deprovisioning is never taken for done on an answer that does not prove it, the
//! bridge never takes over an account it does not own, and a refused static session
//! keeps the backlog instead of dead-lettering it.
//!
//! The deprovisioning tests put a hostile reverse proxy between the bridge and the
//! emulator: it forwards every call, except the ones it is told to answer itself (a
//! front proxy's HTML 404 page, an odd 512, a lying `user.not.found`).

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ameyo_emulator::{Emulator, EmulatorOptions};
use ameyo_scim::config::UserIdTransform;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use common::*;
use secrecy::SecretString;
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(30);

/// What nginx answers for a location it does not route.
const NGINX_404: &str = "<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n\
    <center><h1>404 Not Found</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";

fn user(user_name: &str) -> Value {
    json!({"schemas": [USER_SCHEMA], "userName": user_name, "active": true})
}

/// Create a user through SCIM as the tenant `token` authenticates; returns its id.
async fn create(s: &SyncApp, token: &str, body: Value) -> String {
    let r = s
        .app
        .call(Method::POST, "/scim/v2/Users", Some(token), Some(body))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    r.body["id"].as_str().expect("id").to_string()
}

/// A user's outbox row: tenant, state, last error and linked Ameyo userId; `None` once
/// the row is gone (a delivered tombstone).
async fn row(s: &SyncApp, id: &str) -> Option<(String, String, Option<String>, Option<String>)> {
    s.row(id)
        .await
        .map(|r| (r.tenant_id, r.state, r.last_error, r.ameyo_user_id))
}

/// Whether the users table still holds this user (live or as a tombstone).
async fn user_row_exists(s: &SyncApp, id: &str) -> bool {
    s.app.db.user_row_exists(id).await
}

/// Calls that change Ameyo users (create, update, delete, end sessions).
fn writes(s: &SyncApp) -> Vec<ameyo_emulator::RecordedRequest> {
    s.emulator
        .requests()
        .into_iter()
        .filter(|r| {
            r.method != "GET" && !r.path.starts_with("userLogin/") && r.path != "session/userLogin"
        })
        .collect()
}

// --- 1. One Ameyo account, one SCIM user ---------------------------------------------

both_backends!(colliding_users_delivered_at_once_never_share_an_account);
async fn colliding_users_delivered_at_once_never_share_an_account(db: TestDb) {
    const PAIRS: usize = 20;
    let s = sync_app_with(&db, EmulatorOptions::default(), |st| {
        st.sync.concurrency = 2 * PAIRS;
        st.tenants[0].ameyo.mapping.user_id_transforms = vec![UserIdTransform::EmailLocalPart];
    })
    .await;
    let mut pairs = Vec::new();
    for i in 0..PAIRS {
        let a = create(&s, TOKEN_A, user(&format!("user{i}@a.example"))).await;
        let b = create(&s, TOKEN_A, user(&format!("user{i}@b.example"))).await;
        pairs.push((a, b));
    }
    // Nothing was delivered yet: one claim takes all 40, so both users of a pair are in
    // flight together.
    s.drain(LIMIT).await;

    assert_eq!(s.emulator.users().len(), PAIRS, "{:?}", s.emulator.users());
    assert_eq!(
        s.calls("POST", "cc/contactCenterUsers").len(),
        PAIRS,
        "one create per account: the loser of a pair never sends one"
    );
    assert!(
        s.calls("PUT", "cc/contactCenterUsers").is_empty(),
        "no account was taken over and rewritten"
    );
    for (i, (a, b)) in pairs.iter().enumerate() {
        let want = format!("user{i}");
        let rows = [
            row(&s, a).await.expect("row"),
            row(&s, b).await.expect("row"),
        ];
        let done: Vec<_> = rows.iter().filter(|r| r.1 == "done").collect();
        let dead: Vec<_> = rows.iter().filter(|r| r.1 == "dead").collect();
        assert_eq!((done.len(), dead.len()), (1, 1), "pair {i}: {rows:?}");
        assert_eq!(
            done[0].3.as_deref(),
            Some(want.as_str()),
            "pair {i}: linked"
        );
        assert!(dead[0].3.is_none(), "pair {i}: the loser is not linked");
        let reason = dead[0].2.as_deref().unwrap_or("");
        assert!(reason.contains("already belongs"), "pair {i}: {reason}");
        // The account carries the winner's SSO id: nobody else wrote to it.
        let winner = if rows[0].1 == "done" {
            format!("user{i}@a.example")
        } else {
            format!("user{i}@b.example")
        };
        assert_eq!(
            s.ameyo_user(&want).expect("account")["mappingUserId"],
            json!(winner),
            "pair {i}"
        );
    }
    let shared = s
        .app
        .db
        .int(
            "SELECT count(*) FROM (SELECT 1 FROM sync_state WHERE ameyo_user_id IS NOT NULL \
             GROUP BY lower(ameyo_user_id) HAVING count(*) > 1) AS d",
            &[],
        )
        .await;
    assert_eq!(shared, 0, "no two rows are linked to one Ameyo userId");
}

both_backends!(tenants_on_one_ameyo_server_never_share_an_account);
async fn tenants_on_one_ameyo_server_never_share_an_account(db: TestDb) {
    let s = sync_app(&db).await;
    let a = create(&s, TOKEN_A, user("shared@x.example")).await;
    let b = create(&s, TOKEN_B, user("shared@x.example")).await;
    s.drain(LIMIT).await;

    assert_eq!(s.emulator.users().len(), 1, "{:?}", s.emulator.users());
    assert_eq!(s.calls("POST", "cc/contactCenterUsers").len(), 1);
    assert!(s.calls("PUT", "cc/contactCenterUsers").is_empty());
    let (ra, rb) = (row(&s, &a).await.expect("a"), row(&s, &b).await.expect("b"));
    let (winner, loser) = match (ra.1.as_str(), rb.1.as_str()) {
        ("done", "dead") => (ra, rb),
        ("dead", "done") => (rb, ra),
        other => panic!("one done and one dead, got {other:?}"),
    };
    assert_eq!(winner.3.as_deref(), Some("shared@x.example"));
    assert!(loser.3.is_none(), "the loser is not linked");
    let reason = loser.2.unwrap_or_default();
    assert!(
        reason.contains(&format!("tenant '{}'", winner.0)) && reason.contains("same Ameyo server"),
        "the reason names the owning tenant: {reason}"
    );
}

// --- 2. Deprovisioning never fails open ----------------------------------------------

/// An answer the proxy gives itself instead of forwarding.
#[derive(Clone)]
struct Canned {
    method: Method,
    /// Matched against the path after `/ameyorestapi/`.
    path_prefix: &'static str,
    status: u16,
    content_type: &'static str,
    body: String,
}

#[derive(Clone)]
struct ProxyState {
    upstream: String,
    http: reqwest::Client,
    canned: Arc<Mutex<Option<Canned>>>,
}

/// A reverse proxy to the emulator that answers chosen calls itself.
struct Proxy {
    url: String,
    canned: Arc<Mutex<Option<Canned>>>,
}

impl Proxy {
    async fn spawn(upstream: SocketAddr) -> Proxy {
        let canned = Arc::new(Mutex::new(None));
        let state = ProxyState {
            upstream: format!("http://{upstream}"),
            http: reqwest::Client::new(),
            canned: canned.clone(),
        };
        let app = axum::Router::new().fallback(relay).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let url = format!("http://{}", listener.local_addr().expect("proxy address"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Proxy { url, canned }
    }

    /// From now on, answer `method` calls under `path_prefix` with this.
    fn answer(&self, method: Method, path_prefix: &'static str, status: u16, body: &str) {
        let content_type = if body.starts_with('<') {
            "text/html"
        } else {
            "application/json"
        };
        *self.canned.lock().unwrap_or_else(PoisonError::into_inner) = Some(Canned {
            method,
            path_prefix,
            status,
            content_type,
            body: body.to_string(),
        });
    }

    /// From now on, forward everything.
    fn pass_through(&self) {
        *self.canned.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

async fn relay(State(st): State<ProxyState>, req: Request) -> Response {
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let api_path = req
        .uri()
        .path()
        .strip_prefix("/ameyorestapi/")
        .unwrap_or_default()
        .to_string();
    let canned = st
        .canned
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
        .filter(|c| c.method == req.method() && api_path.starts_with(c.path_prefix));
    if let Some(c) = canned {
        let status = StatusCode::from_u16(c.status).expect("status");
        return (status, [(header::CONTENT_TYPE, c.content_type)], c.body).into_response();
    }
    let mut out = st.http.request(
        req.method().clone(),
        format!("{}{path_and_query}", st.upstream),
    );
    for name in ["sessionId", "content-type"] {
        if let Some(v) = req.headers().get(name) {
            out = out.header(name, v);
        }
    }
    let body = axum::body::to_bytes(req.into_body(), usize::MAX)
        .await
        .expect("request body");
    let resp = out.body(body).send().await.expect("emulator answers");
    let status = resp.status();
    let content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
    let bytes = resp.bytes().await.expect("emulator body");
    let mut answer = Response::new(Body::from(bytes));
    *answer.status_mut() = status;
    if let Some(ct) = content_type {
        answer.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    answer
}

/// Tenant `a` reaches the emulator through a [`Proxy`]. Retries start at 200 ms, so one
/// `run_until_idle` is about one attempt, far from the attempt limit.
async fn proxied(db: &TestDb) -> (SyncApp, Proxy) {
    let (emulator, addr) = Emulator::spawn(EmulatorOptions::default())
        .await
        .expect("emulator");
    let proxy = Proxy::spawn(addr).await;
    let mut settings = sync_settings(&format!("http://{addr}"));
    settings.tenants[0].ameyo.base_url = proxy.url.clone();
    settings.sync.retry_base_ms = 200;
    (sync_app_on(db, emulator, addr, settings).await, proxy)
}

/// A delivered user of tenant `a`, then deleted in SCIM; returns its id.
async fn delivered_then_deleted(s: &SyncApp, user_name: &str) -> String {
    let id = create(s, TOKEN_A, user(user_name)).await;
    s.drain(LIMIT).await;
    assert!(s.ameyo_user(user_name).is_some(), "delivered first");
    let r = s.app.delete(&format!("/scim/v2/Users/{id}")).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    id
}

/// After one delivery attempt the tombstone is kept, pending with an error containing
/// each of `fragments`, and Ameyo still has the user.
async fn tombstone_kept(s: &SyncApp, id: &str, user_name: &str, fragments: &[&str]) {
    s.worker.run_until_idle().await.expect("deliveries");
    let (_, state, error, linked) = row(s, id).await.expect("the tombstone's row is kept");
    assert!(user_row_exists(s, id).await, "the tombstone is kept");
    assert_eq!(state, "pending", "retried, not dead-lettered: {error:?}");
    assert_eq!(linked.as_deref(), Some(user_name), "still linked");
    let error = error.unwrap_or_default();
    for f in fragments {
        assert!(error.contains(f), "last_error {error:?} lacks {f:?}");
    }
    assert!(
        s.ameyo_user(user_name).is_some(),
        "Ameyo still has the user"
    );
}

/// Once the proxy forwards again, the delete goes through and the tombstone goes.
async fn removed_after_recovery(s: &SyncApp, proxy: &Proxy, id: &str, user_name: &str) {
    proxy.pass_through();
    s.drain(LIMIT).await;
    assert!(s.ameyo_user(user_name).is_none(), "removed from Ameyo");
    assert!(row(s, id).await.is_none(), "the outbox row is gone");
    assert!(!user_row_exists(s, id).await, "the tombstone is gone");
}

both_backends!(a_proxy_404_page_on_delete_keeps_the_tombstone);
async fn a_proxy_404_page_on_delete_keeps_the_tombstone(db: TestDb) {
    let (s, proxy) = proxied(&db).await;
    let id = delivered_then_deleted(&s, "behind.nginx@example.com").await;
    proxy.answer(Method::DELETE, "user/users/", 404, NGINX_404);
    tombstone_kept(
        &s,
        &id,
        "behind.nginx@example.com",
        &["Ameyo answered 404 without user.not.found"],
    )
    .await;
    removed_after_recovery(&s, &proxy, &id, "behind.nginx@example.com").await;
}

both_backends!(a_512_with_another_not_found_key_on_delete_keeps_the_tombstone);
async fn a_512_with_another_not_found_key_on_delete_keeps_the_tombstone(db: TestDb) {
    let (s, proxy) = proxied(&db).await;
    let id = delivered_then_deleted(&s, "odd.answer@example.com").await;
    proxy.answer(
        Method::DELETE,
        "user/users/",
        512,
        r#"{"message":"contactcenter.not.found","code":1,"info":"contactcenter.not.found","status":512}"#,
    );
    tombstone_kept(
        &s,
        &id,
        "odd.answer@example.com",
        &["Ameyo answered 512: contactcenter.not.found"],
    )
    .await;
    removed_after_recovery(&s, &proxy, &id, "odd.answer@example.com").await;
}

both_backends!(user_not_found_on_delete_while_ameyo_still_lists_the_user_keeps_the_tombstone);
async fn user_not_found_on_delete_while_ameyo_still_lists_the_user_keeps_the_tombstone(db: TestDb) {
    let (s, proxy) = proxied(&db).await;
    let id = delivered_then_deleted(&s, "liar@example.com").await;
    proxy.answer(
        Method::DELETE,
        "user/users/",
        512,
        r#"{"message":"user.not.found","code":5123,"info":"user.not.found","status":512}"#,
    );
    tombstone_kept(&s, &id, "liar@example.com", &["still lists"]).await;
    assert!(
        !s.calls("GET", "cc/contactCenterUsers/getAllContactCenterUsers")
            .is_empty(),
        "the absence was checked against the listing"
    );
    removed_after_recovery(&s, &proxy, &id, "liar@example.com").await;
}

both_backends!(a_proxy_404_page_on_the_lock_does_not_count_as_locked);
async fn a_proxy_404_page_on_the_lock_does_not_count_as_locked(db: TestDb) {
    let (s, proxy) = proxied(&db).await;
    let name = "lockme@example.com";
    let id = create(&s, TOKEN_A, user(name)).await;
    s.drain(LIMIT).await;
    let password = s.emulator.user_data(name).expect("a password");
    assert_eq!(
        s.ameyo_user(name).expect("user")["mappingUserId"],
        json!(name)
    );

    proxy.answer(Method::PUT, "cc/contactCenterUsers", 404, NGINX_404);
    let r = s
        .app
        .patch(
            &format!("/scim/v2/Users/{id}"),
            json!({"schemas": [PATCH_OP], "Operations": [{"op": "replace", "path": "active", "value": false}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    s.worker.run_until_idle().await.expect("deliveries");

    let (_, state, error, _) = row(&s, &id).await.expect("row");
    assert_eq!(state, "pending", "retried: {error:?}");
    let error = error.unwrap_or_default();
    assert!(
        error.contains("Ameyo answered 404 without user.not.found"),
        "{error}"
    );
    let locked = s.row(&id).await.expect("row").ameyo_locked;
    assert!(!locked, "not recorded as locked");
    assert_eq!(
        s.ameyo_user(name).expect("user")["mappingUserId"],
        json!(name),
        "the SSO mapping is still there"
    );
    assert_eq!(s.emulator.user_data(name), Some(password.clone()));

    proxy.pass_through();
    s.drain(LIMIT).await;
    assert_eq!(row(&s, &id).await.expect("row").1, "done");
    let u = s.ameyo_user(name).expect("user");
    assert!(
        u["mappingUserId"].as_str().unwrap_or("").is_empty(),
        "locked: {u}"
    );
    assert_ne!(
        s.emulator.user_data(name),
        Some(password),
        "password rotated"
    );
}

// --- 3. Never adopt an account the bridge does not own -------------------------------

both_backends!(the_login_user_is_never_provisioned);
async fn the_login_user_is_never_provisioned(db: TestDb) {
    // Even where taking over existing accounts is allowed and Ameyo has the account.
    let s = sync_app_with(&db, EmulatorOptions::default(), |st| {
        st.tenants[0].ameyo.adopt_existing = true;
    })
    .await;
    s.emulator.add_user(
        json!({"userId": "admin", "userName": "Ameyo Administrator", "userType": "Administrator"}),
    );
    let id = create(&s, TOKEN_A, user("admin")).await;
    s.drain(LIMIT).await;

    let (_, state, error, linked) = row(&s, &id).await.expect("row");
    assert_eq!(state, "dead");
    assert!(linked.is_none(), "not linked to the login user");
    let error = error.unwrap_or_default();
    assert!(error.contains("login user"), "{error}");
    assert!(
        writes(&s).is_empty(),
        "no call touched Ameyo users: {:?}",
        writes(&s)
    );
    assert_eq!(
        s.ameyo_user("admin").expect("admin")["userName"],
        json!("Ameyo Administrator")
    );
}

both_backends!(an_administrator_is_created_only_where_the_tenant_allows_it);
async fn an_administrator_is_created_only_where_the_tenant_allows_it(db: TestDb) {
    let s = sync_app(&db).await;
    let boss = json!({
        "schemas": [USER_SCHEMA, AMEYO],
        "userName": "boss@example.com",
        AMEYO: {"userType": "Administrator"},
    });
    let id = create(&s, TOKEN_A, boss).await;
    s.drain(LIMIT).await;
    let (_, state, error, _) = row(&s, &id).await.expect("row");
    assert_eq!(state, "dead");
    let error = error.unwrap_or_default();
    assert!(error.contains("allowed_user_types"), "{error}");
    assert!(s.emulator.users().is_empty(), "nothing created");

    // The operator allows administrators for this tenant and re-arms the user.
    let allowing = sync_app_with(&db, EmulatorOptions::default(), |st| {
        st.tenants[0]
            .ameyo
            .allowed_user_types
            .push("Administrator".into());
    })
    .await;
    let uuid = id.parse().expect("uuid");
    let rearmed = allowing
        .app
        .backend
        .outbox
        .rearm_dead(Some(uuid), None)
        .await
        .expect("rearm");
    assert_eq!(rearmed, 1);
    allowing.drain(LIMIT).await;
    assert_eq!(row(&allowing, &id).await.expect("row").1, "done");
    let u = allowing.ameyo_user("boss@example.com").expect("created");
    assert_eq!(u["userType"], json!("Administrator"), "{u}");
}

both_backends!(a_contact_center_outside_the_tenants_bounds_is_refused);
async fn a_contact_center_outside_the_tenants_bounds_is_refused(db: TestDb) {
    let s = sync_app(&db).await;
    let elsewhere = json!({
        "schemas": [USER_SCHEMA, AMEYO],
        "userName": "roamer@example.com",
        AMEYO: {"contactCenterId": 99},
    });
    let id = create(&s, TOKEN_A, elsewhere).await;
    s.drain(LIMIT).await;
    let (_, state, error, _) = row(&s, &id).await.expect("row");
    assert_eq!(state, "dead");
    let error = error.unwrap_or_default();
    assert!(error.contains("allowed_contact_center_ids"), "{error}");
    assert!(s.emulator.users().is_empty(), "nothing created");
    assert!(writes(&s).is_empty(), "{:?}", writes(&s));
}

// --- 4. A refused static session keeps the backlog -----------------------------------

/// `ameyo_scim_ameyo_logins_total` of tenant `a` with this outcome.
fn logins(outcome: &str) -> f64 {
    let text = ameyo_scim::telemetry::metrics::install().render();
    let fragments = ["tenant=\"a\"", &format!("outcome=\"{outcome}\"")];
    text.lines()
        .filter(|l| l.starts_with("ameyo_scim_ameyo_logins_total"))
        .find(|l| fragments.iter().all(|f| l.contains(f)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

both_backends!(a_refused_static_session_keeps_users_pending);
async fn a_refused_static_session_keeps_users_pending(db: TestDb) {
    let s = sync_app_with(&db, EmulatorOptions::default(), |st| {
        let a = &mut st.tenants[0].ameyo;
        a.session_id = Some(SecretString::from("stale"));
        a.login_user = None;
        a.login_password = None;
        st.sync.max_attempts = 10;
    })
    .await;
    let before = logins("error");
    let ids = [
        create(&s, TOKEN_A, user("one@example.com")).await,
        create(&s, TOKEN_A, user("two@example.com")).await,
    ];
    // A few rounds, until each user has been tried at least three times.
    let started = std::time::Instant::now();
    loop {
        s.worker.run_until_idle().await.expect("deliveries");
        let tried = s
            .app
            .db
            .int("SELECT CAST(min(attempts) AS BIGINT) FROM sync_state", &[])
            .await;
        if tried >= 3 {
            break;
        }
        assert!(started.elapsed() < LIMIT, "not retried");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for id in &ids {
        let (_, state, error, _) = row(&s, id).await.expect("row");
        assert_eq!(state, "pending", "kept for an operator to fix: {error:?}");
        let error = error.unwrap_or_default();
        assert!(error.contains("session_id"), "{error}");
    }
    assert!(s.emulator.users().is_empty());
    assert!(
        logins("error") > before,
        "the refused session counts as a failed login"
    );
}
