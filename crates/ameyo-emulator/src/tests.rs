//! Drives the emulator through its router (and, for the refused outage, over TCP),
//! as a client of the Ameyo API and of the admin endpoints would.

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower::ServiceExt;

use crate::faults::HTML_500;
use crate::{Emulator, EmulatorOptions, Faults, Outage, REDACTED};

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
}

async fn send(
    router: &Router,
    method: Method,
    path: &str,
    session: Option<&str>,
    body: Option<&str>,
) -> Answer {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(session) = session {
        request = request.header("sessionId", session);
    }
    if body.is_some() {
        request = request.header(header::CONTENT_TYPE, "application/json");
    }
    let request = request
        .body(Body::from(body.unwrap_or_default().to_owned()))
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        text: String::from_utf8(bytes.to_vec()).unwrap(),
    }
}

async fn call(
    router: &Router,
    method: Method,
    path: &str,
    session: Option<&str>,
    body: Option<Value>,
) -> Answer {
    let body = body.map(|b| b.to_string());
    send(router, method, path, session, body.as_deref()).await
}

async fn login(router: &Router, user: &str) -> String {
    let answer = call(
        router,
        Method::POST,
        "/ameyorestapi/userLogin/login",
        None,
        Some(json!({"userId": user, "token": "pw", "forceLogin": true})),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    answer.json()["userSessionInfo"]["sessionId"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn alice() -> Value {
    json!({
        "userId": "alice",
        "userType": "Agent",
        "userName": "Alice Liddell",
        "contactCenterId": 1,
        "userData": "s3cret-alice",
        "defaultReady": true,
        "systemUserType": "Agent",
        "loginPolicy": "verify.before.force.login",
        "maxAllowedLogins": "1",
        "mappingUserId": "alice@example.com",
    })
}

async fn create(router: &Router, session: &str, user: Value) -> Answer {
    call(
        router,
        Method::POST,
        "/ameyorestapi/cc/contactCenterUsers",
        Some(session),
        Some(user),
    )
    .await
}

fn error_body(status: u16, message: Value, code: i64, info: Value) -> Value {
    json!({"message": message, "code": code, "info": info, "status": status})
}

fn invalid_session_body() -> Value {
    error_body(403, Value::Null, 99999, json!("invalid.session.id"))
}

#[tokio::test]
async fn user_login_answers_session_info() {
    let emulator = Emulator::new(EmulatorOptions::default());
    let router = emulator.router();
    let answer = call(
        &router,
        Method::POST,
        "/ameyorestapi/userLogin/login",
        None,
        Some(json!({"domain": "x", "userId": "admin", "token": "anything", "forceLogin": false})),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    let body = answer.json();
    assert!(body["requestId"].as_str().is_some_and(|id| !id.is_empty()));
    assert_eq!(body["contactCenterId"], 1);
    assert_eq!(body["userSessionInfo"]["userId"], "admin");
    assert_eq!(body["userSessionInfo"]["userType"], "Administrator");
    let session = body["userSessionInfo"]["sessionId"].as_str().unwrap();
    let parts: Vec<&str> = session.split('-').collect();
    assert_eq!(parts[0], "d898");
    assert_eq!(parts[1].len(), 8);
    assert!(parts[1].chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(parts[2], "ses");
    assert_eq!(parts[3], "admin");
    assert_eq!(parts[4].len(), 40);
    assert!(parts[4].chars().all(|c| c.is_ascii_alphanumeric()));
    assert_eq!(emulator.login_count(), 1);

    // The session works, with the header name in any case.
    let list = send(
        &router,
        Method::GET,
        "/ameyorestapi/cc/contactCenterUsers/getAllContactCenterUsers?ccId=1",
        None,
        None,
    )
    .await;
    assert_eq!(list.status, StatusCode::FORBIDDEN);
    let request =
        Request::get("/ameyorestapi/cc/contactCenterUsers/getAllContactCenterUsers?ccId=1")
            .header("SESSIONID", session)
            .body(Body::empty())
            .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn session_user_login_answers_flat_shape() {
    let emulator = Emulator::new(EmulatorOptions::default());
    let router = emulator.router();
    let answer = call(
        &router,
        Method::POST,
        "/ameyorestapi/session/userLogin",
        None,
        Some(json!({"userId": "admin", "token": "pw", "forceLogin": true, "terminalInfo": "scim"})),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    let body = answer.json();
    assert_eq!(body["userId"], "admin");
    assert_eq!(body["terminalInfo"], "scim");
    let session = body["sessionId"].as_str().unwrap();
    assert!(session.starts_with("d898-"));
    let keep_alive = call(
        &router,
        Method::POST,
        "/ameyorestapi/session/keepAliveWithPingPush",
        Some(session),
        Some(json!({"sessionId": session})),
    )
    .await;
    assert_eq!(keep_alive.status, StatusCode::OK);
}

#[tokio::test]
async fn restricted_credentials_are_checked() {
    let emulator = Emulator::new(EmulatorOptions {
        login_user: Some("admin".into()),
        login_password: Some("right".into()),
        ..EmulatorOptions::default()
    });
    let router = emulator.router();
    let path = "/ameyorestapi/userLogin/login";
    let wrong_body = error_body(
        401,
        json!("invalid.authentication.token"),
        909090,
        Value::Null,
    );
    for body in [
        json!({"userId": "admin", "token": "wrong", "forceLogin": true}),
        json!({"userId": "intruder", "token": "right", "forceLogin": true}),
    ] {
        let answer = call(&router, Method::POST, path, None, Some(body)).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert_eq!(answer.json(), wrong_body);
    }
    let missing = call(
        &router,
        Method::POST,
        path,
        None,
        Some(json!({"userId": "admin"})),
    )
    .await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert_eq!(missing.json()["message"], "InvalidInput");
    assert_eq!(missing.json()["code"], 40001);
    assert_eq!(emulator.login_count(), 0);

    let right = call(
        &router,
        Method::POST,
        path,
        None,
        Some(json!({"userId": "admin", "token": "right", "forceLogin": true})),
    )
    .await;
    assert_eq!(right.status, StatusCode::OK);
    assert_eq!(emulator.login_count(), 1);
}

#[tokio::test]
async fn second_login_needs_force_and_force_ends_the_older_session() {
    let emulator = Emulator::new(EmulatorOptions::default());
    let router = emulator.router();
    let first = login(&router, "admin").await;
    let refused = call(
        &router,
        Method::POST,
        "/ameyorestapi/session/userLogin",
        None,
        Some(json!({"userId": "admin", "token": "pw", "forceLogin": false})),
    )
    .await;
    assert_eq!(refused.status.as_u16(), 512);
    assert_eq!(
        refused.json(),
        error_body(
            512,
            json!("user.already.logged.in"),
            5120,
            json!("user.already.logged.in")
        )
    );
    let second = login(&router, "admin").await;
    assert_ne!(first, second);
    let list = "/ameyorestapi/cc/contactCenterUsers/getAllContactCenterUsers?ccId=1";
    let old = call(&router, Method::GET, list, Some(&first), None).await;
    assert_eq!(old.status, StatusCode::FORBIDDEN);
    let new = call(&router, Method::GET, list, Some(&second), None).await;
    assert_eq!(new.status, StatusCode::OK);
    assert_eq!(emulator.login_count(), 2);
}

#[tokio::test]
async fn missing_or_unknown_session_answers_403_invalid_session_id() {
    let emulator = Emulator::new(EmulatorOptions::default());
    let router = emulator.router();
    let path = "/ameyorestapi/cc/contactCenterUsers";
    for session in [None, Some("d898-00000000-ses-admin-nope")] {
        let answer = call(&router, Method::POST, path, session, Some(alice())).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN);
        assert_eq!(answer.json(), invalid_session_body());
    }
    assert!(emulator.users().is_empty());
    let recorded = emulator.requests();
    assert_eq!(recorded.len(), 2);
    assert!(recorded.iter().all(|r| !r.session_valid && r.status == 403));
}

#[tokio::test]
async fn create_echoes_fields_and_refuses_duplicates_and_bad_input() {
    let emulator = Emulator::new(EmulatorOptions::default());
    let router = emulator.router();
    let session = login(&router, "admin").await;
    let created = create(&router, &session, alice()).await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.text);
    let expected = json!({
        "ccUserId": 364,
        "userId": "alice",
        "userType": "Agent",
        "skillLevelIds": [],
        "skillIds": null,
        "userName": "Alice Liddell",
        "systemUserType": "Agent",
        "privilegePlanId": 13,
        "defaultReady": true,
        "maskedPrivileges": null,
        "maxAllowedLogins": "1",
        "loginPolicy": "verify.before.force.login",
        "mappingUserId": "alice@example.com",
        "contactCenterId": 1,
        "description": null,
    });
    assert_eq!(created.json(), expected);
    assert_eq!(emulator.users(), vec![expected]);
    assert_eq!(emulator.user_data("alice").as_deref(), Some("s3cret-alice"));

    let minimal = create(
        &router,
        &session,
        json!({"userId": "bob", "userType": "Supervisor", "userName": "Bob", "contactCenterId": 1}),
    )
    .await;
    assert_eq!(minimal.status, StatusCode::OK);
    let minimal = minimal.json();
    assert_eq!(minimal["ccUserId"], 365);
    assert_eq!(minimal["defaultReady"], Value::Null);
    assert_eq!(minimal["maxAllowedLogins"], Value::Null);
    assert_eq!(emulator.user_data("bob"), None);

    let duplicate = create(&router, &session, alice()).await;
    assert_eq!(duplicate.status.as_u16(), 512);
    assert_eq!(
        duplicate.json(),
        error_body(
            512,
            json!("user.already.exists"),
            5122,
            json!("user.already.exists")
        )
    );

    let mut bad_type = alice();
    bad_type["userId"] = json!("carol");
    bad_type["userType"] = json!("Janitor");
    let bad_type = create(&router, &session, bad_type).await;
    assert_eq!(bad_type.status.as_u16(), 512);
    assert_eq!(
        bad_type.json(),
        error_body(
            512,
            json!("invalid.user.type"),
            5121,
            json!("invalid.user.type")
        )
    );

    for missing in ["userId", "userType", "userName", "contactCenterId"] {
        let mut body = alice();
        body["userId"] = json!("dave");
        body.as_object_mut().unwrap().remove(missing);
        let answer = create(&router, &session, body).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{missing}");
        assert_eq!(
            answer.json(),
            error_body(
                400,
                json!("InvalidInput"),
                40001,
                json!(format!("parameter expected in input: {missing}"))
            )
        );
    }
    let mut empty_id = alice();
    empty_id["userId"] = json!("");
    assert_eq!(
        create(&router, &session, empty_id).await.status,
        StatusCode::BAD_REQUEST
    );
    let mut string_cc = alice();
    string_cc["userId"] = json!("erin");
    string_cc["contactCenterId"] = json!("1");
    assert_eq!(
        create(&router, &session, string_cc).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(emulator.users().len(), 2);
}

#[tokio::test]
async fn max_allowed_logins_is_a_string_on_create_and_an_integer_on_update() {
    let emulator = Emulator::new(EmulatorOptions::default());
    let router = emulator.router();
    let session = login(&router, "admin").await;
    let mut body = alice();
    body["maxAllowedLogins"] = json!(1);
    let answer = create(&router, &session, body).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        answer.json(),
        error_body(
            400,
            json!("InvalidInput"),
            40001,
            json!("parameter expected in input: maxAllowedLogins as string")
        )
    );
    assert!(emulator.users().is_empty());
    assert_eq!(
        create(&router, &session, alice()).await.status,
        StatusCode::OK
    );

    let path = "/ameyorestapi/cc/contactCenterUsers/alice";
    let as_string = call(
        &router,
        Method::PUT,
        path,
        Some(&session),
        Some(json!({"userId": "alice", "maxAllowedLogins": "2"})),
    )
    .await;
    assert_eq!(as_string.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        as_string.json()["info"],
        "parameter expected in input: maxAllowedLogins as integer"
    );
    let same = call(
        &router,
        Method::PUT,
        path,
        Some(&session),
        Some(json!({"userId": "alice", "maxAllowedLogins": 1})),
    )
    .await;
    assert_eq!(same.status, StatusCode::OK);
    assert_eq!(same.json()["updatedFields"], json!([]));
    let changed = call(
        &router,
        Method::PUT,
        path,
        Some(&session),
        Some(json!({"userId": "alice", "maxAllowedLogins": 3})),
    )
    .await;
    assert_eq!(changed.json()["updatedFields"], json!(["maxAllowedLogins"]));
    assert_eq!(emulator.users()[0]["maxAllowedLogins"], 3);
}

#[tokio::test]
async fn update_by_user_id_applies_changed_fields_and_password() {
    let emulator = Emulator::new(EmulatorOptions::default());
    let router = emulator.router();
    let session = login(&router, "admin").await;
    create(&router, &session, alice()).await;
    let answer = call(
        &router,
        Method::PUT,
        "/ameyorestapi/cc/contactCenterUsers/alice",
        Some(&session),
        Some(json!({
            "userId": "alice",
            "userType": "Supervisor",
            "userName": "Alice Liddell",
            "userData": "new-password",
            "mappingUserId": "",
            "defaultReady": true,
            "contactCenterId": 1,
        })),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    assert_eq!(
        answer.json(),
        json!({
            "status": "success",
            "message": "User updated successfully",
            "userId": "alice",
            "contactCenterId": 1,
            "updatedFields": ["userType", "userData", "mappingUserId"],
        })
    );
    let stored = &emulator.users()[0];
    assert_eq!(stored["userType"], "Supervisor");
    assert_eq!(stored["mappingUserId"], Value::Null);
    assert!(stored.get("userData").is_none());
    assert_eq!(emulator.user_data("alice").as_deref(), Some("new-password"));

    // The vendor's curl example leaves the id out of the path.
    let from_body = call(
        &router,
        Method::PUT,
        "/ameyorestapi/cc/contactCenterUsers",
        Some(&session),
        Some(json!({"userId": "alice", "userName": "A. Liddell"})),
    )
    .await;
    assert_eq!(from_body.json()["updatedFields"], json!(["userName"]));

    let bad_type = call(
        &router,
        Method::PUT,
        "/ameyorestapi/cc/contactCenterUsers/alice",
        Some(&session),
        Some(json!({"userId": "alice", "userType": "Boss"})),
    )
    .await;
    assert_eq!(bad_type.status.as_u16(), 512);
    assert_eq!(bad_type.json()["info"], "invalid.user.type");
}

#[tokio::test]
async fn update_by_cc_user_id_and_failures() {
    let emulator = Emulator::new(EmulatorOptions::default());
    let router = emulator.router();
    let session = login(&router, "admin").await;
    create(&router, &session, alice()).await;
    let by_number = call(
        &router,
        Method::PUT,
        "/ameyorestapi/cc/contactCenterUsers/364",
        Some(&session),
        Some(json!({"userId": "alice", "userName": "Alice L."})),
    )
    .await;
    assert_eq!(by_number.status, StatusCode::OK, "{}", by_number.text);
    assert_eq!(by_number.json()["updatedFields"], json!(["userName"]));
    assert_eq!(emulator.users()[0]["userName"], "Alice L.");

    let unknown = call(
        &router,
        Method::PUT,
        "/ameyorestapi/cc/contactCenterUsers/nobody",
        Some(&session),
        Some(json!({"userId": "nobody", "userName": "X"})),
    )
    .await;
    assert_eq!(unknown.status.as_u16(), 512);
    assert_eq!(
        unknown.json(),
        error_body(512, json!("user.not.found"), 5123, json!("user.not.found"))
    );

    let mismatch = call(
        &router,
        Method::PUT,
        "/ameyorestapi/cc/contactCenterUsers/364",
        Some(&session),
        Some(json!({"userId": "bob", "userName": "X"})),
    )
    .await;
    assert_eq!(mismatch.status, StatusCode::BAD_REQUEST);
    assert_eq!(mismatch.json()["message"], "InvalidInput");

    let no_user_id = call(
        &router,
        Method::PUT,
        "/ameyorestapi/cc/contactCenterUsers/alice",
        Some(&session),
        Some(json!({"userName": "X"})),
    )
    .await;
    assert_eq!(no_user_id.status, StatusCode::BAD_REQUEST);
    assert_eq!(emulator.users()[0]["userName"], "Alice L.");
}

#[tokio::test]
async fn list_filters_by_contact_center_and_delete_removes() {
    let emulator = Emulator::new(EmulatorOptions::default());
    let router = emulator.router();
    let session = login(&router, "admin").await;
    create(&router, &session, alice()).await;
    let mut bob = alice();
    bob["userId"] = json!("bob");
    bob["contactCenterId"] = json!(2);
    create(&router, &session, bob).await;
    let list = |cc: &'static str| {
        let router = router.clone();
        let session = session.clone();
        async move {
            call(
                &router,
                Method::GET,
                &format!("/ameyorestapi/cc/contactCenterUsers/getAllContactCenterUsers{cc}"),
                Some(&session),
                None,
            )
            .await
        }
    };
    let one = list("?ccId=1").await;
    assert_eq!(one.status, StatusCode::OK);
    let one = one.json();
    assert_eq!(one.as_array().map(Vec::len), Some(1));
    assert_eq!(one[0]["userId"], "alice");
    assert!(one[0].get("userData").is_none());
    assert_eq!(list("?ccId=2").await.json()[0]["userId"], "bob");
    assert_eq!(list("?ccId=3").await.json(), json!([]));
    for bad in ["", "?ccId=", "?ccId=one"] {
        let answer = list(bad).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(answer.json()["info"], "parameter expected in input: ccId");
    }

    let deleted = call(
        &router,
        Method::DELETE,
        "/ameyorestapi/user/users/alice",
        Some(&session),
        None,
    )
    .await;
    assert_eq!(deleted.status, StatusCode::OK);
    assert_eq!(
        deleted.json(),
        json!({"status": "success", "message": "User deleted successfully", "userId": "alice"})
    );
    assert_eq!(list("?ccId=1").await.json(), json!([]));
    let again = call(
        &router,
        Method::DELETE,
        "/ameyorestapi/user/users/alice",
        Some(&session),
        None,
    )
    .await;
    assert_eq!(again.status.as_u16(), 512);
    assert_eq!(again.json()["message"], "user.not.found");
    assert_eq!(emulator.users().len(), 1);
}

#[tokio::test]
async fn unknown_paths_wrong_methods_and_malformed_bodies() {
    let emulator = Emulator::new(EmulatorOptions::default());
    let router = emulator.router();
    let session = login(&router, "admin").await;
    for path in [
        "/ameyorestapi/cc/nothing",
        "/ameyorestapi/CC/contactCenterUsers",
        "/ameyorestapi/",
    ] {
        let answer = call(&router, Method::GET, path, Some(&session), None).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(
            answer.json(),
            error_body(404, json!("requested.resource.not.found"), 404, Value::Null)
        );
    }
    let wrong = call(
        &router,
        Method::GET,
        "/ameyorestapi/cc/contactCenterUsers",
        Some(&session),
        None,
    )
    .await;
    assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        wrong.json(),
        error_body(405, json!("method.not.allowed"), 405, Value::Null)
    );
    assert_eq!(wrong.headers[header::ALLOW], "POST, PUT");
    let wrong_login = call(
        &router,
        Method::GET,
        "/ameyorestapi/userLogin/login",
        None,
        None,
    )
    .await;
    assert_eq!(wrong_login.status, StatusCode::METHOD_NOT_ALLOWED);

    let malformed = send(
        &router,
        Method::POST,
        "/ameyorestapi/cc/contactCenterUsers",
        Some(&session),
        Some("{\"userId\": \"x\", \"userData\": \"leak\""),
    )
    .await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert_eq!(malformed.json()["message"], "InvalidInput");
    assert_eq!(malformed.json()["code"], 40001);
    let recorded = emulator.requests().pop().unwrap();
    assert!(!recorded.body.unwrap().to_string().contains("leak"));

    let login_malformed = send(
        &router,
        Method::POST,
        "/ameyorestapi/userLogin/login",
        None,
        Some("not json"),
    )
    .await;
    assert_eq!(login_malformed.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn outage_unavailable_answers_503_html_with_retry_after() {
    let emulator = Emulator::new(EmulatorOptions::default());
    let router = emulator.router();
    emulator.set_faults(Faults {
        outage: Some(Outage::Unavailable),
        retry_after_secs: 7,
        ..Faults::default()
    });
    let answer = call(
        &router,
        Method::POST,
        "/ameyorestapi/userLogin/login",
        None,
        Some(json!({"userId": "admin", "token": "pw", "forceLogin": true})),
    )
    .await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.headers[header::RETRY_AFTER], "7");
    assert_eq!(answer.headers[header::CONTENT_TYPE], "text/html");
    assert!(answer.text.starts_with("<html>"));
    assert_eq!(emulator.login_count(), 0);
    let recorded = emulator.requests();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].status, 503);

    // Admin endpoints are not faulted.
    let state = call(&router, Method::GET, "/emulator/state", None, None).await;
    assert_eq!(state.status, StatusCode::OK);
    assert_eq!(state.json()["faults"]["outage"], "unavailable");
    emulator.set_faults(Faults::default());
    login(&router, "admin").await;
    // The counts: the failed login and the one that worked, one user-less login.
    let counts = call(&router, Method::GET, "/emulator/counts", None, None).await;
    assert_eq!(counts.status, StatusCode::OK);
    assert_eq!(
        counts.json(),
        json!({"users": 0, "logins": emulator.login_count(), "requests": 2})
    );
}

#[tokio::test]
async fn rate_limit_answers_every_nth_call_429_with_retry_after() {
    let emulator = Emulator::new(EmulatorOptions::default());
    let router = emulator.router();
    let session = login(&router, "admin").await;
    emulator.set_faults(Faults {
        rate_limit_every: 3,
        ..Faults::default()
    });
    let path = "/ameyorestapi/cc/contactCenterUsers/getAllContactCenterUsers?ccId=1";
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let answer = call(&router, Method::GET, path, Some(&session), None).await;
        if answer.status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(answer.headers[header::RETRY_AFTER], "1");
        }
        statuses.push(answer.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 429, 200, 200, 429]);
}

#[tokio::test]
async fn error_rate_one_answers_html_500_and_latency_delays() {
    let emulator = Emulator::new(EmulatorOptions::default());
    let router = emulator.router();
    emulator.set_faults(Faults {
        error_rate: 1.0,
        latency_ms: 30,
        ..Faults::default()
    });
    let started = Instant::now();
    let answer = call(
        &router,
        Method::POST,
        "/ameyorestapi/userLogin/login",
        None,
        Some(json!({"userId": "admin", "token": "pw"})),
    )
    .await;
    assert!(started.elapsed() >= Duration::from_millis(30));
    assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(answer.headers[header::CONTENT_TYPE], "text/html");
    assert_eq!(answer.text, HTML_500);
    assert_eq!(emulator.login_count(), 0);
    let recorded = emulator.requests();
    assert_eq!(recorded[0].status, 500);
    assert_eq!(recorded[0].body.as_ref().unwrap()["token"], REDACTED);
}

#[tokio::test]
async fn rejected_user_ids_answer_400_on_create_and_update() {
    let emulator = Emulator::new(EmulatorOptions::default());
    let router = emulator.router();
    let session = login(&router, "admin").await;
    create(&router, &session, alice()).await;
    emulator.set_faults(Faults {
        reject_user_ids: vec!["alice".into(), "bob".into()],
        ..Faults::default()
    });
    let mut bob = alice();
    bob["userId"] = json!("bob");
    let created = create(&router, &session, bob).await;
    assert_eq!(created.status, StatusCode::BAD_REQUEST);
    assert_eq!(created.json()["message"], "InvalidInput");
    assert_eq!(created.json()["code"], 40001);
    let updated = call(
        &router,
        Method::PUT,
        "/ameyorestapi/cc/contactCenterUsers/alice",
        Some(&session),
        Some(json!({"userId": "alice", "userName": "X"})),
    )
    .await;
    assert_eq!(updated.status, StatusCode::BAD_REQUEST);
    assert_eq!(emulator.users().len(), 1);
    assert_eq!(emulator.users()[0]["userName"], "Alice Liddell");
}

#[tokio::test]
async fn sessions_expire_after_ttl_and_on_demand() {
    let emulator = Emulator::new(EmulatorOptions {
        session_ttl: Some(Duration::from_millis(50)),
        ..EmulatorOptions::default()
    });
    let router = emulator.router();
    let path = "/ameyorestapi/cc/contactCenterUsers/getAllContactCenterUsers?ccId=1";
    let session = login(&router, "admin").await;
    assert_eq!(
        call(&router, Method::GET, path, Some(&session), None)
            .await
            .status,
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(80)).await;
    let expired = call(&router, Method::GET, path, Some(&session), None).await;
    assert_eq!(expired.status, StatusCode::FORBIDDEN);
    assert_eq!(expired.json(), invalid_session_body());
    // An expired session does not block a login without forceLogin.
    let relogin = call(
        &router,
        Method::POST,
        "/ameyorestapi/userLogin/login",
        None,
        Some(json!({"userId": "admin", "token": "pw", "forceLogin": false})),
    )
    .await;
    assert_eq!(relogin.status, StatusCode::OK);

    let emulator = Emulator::new(EmulatorOptions::default());
    let router = emulator.router();
    let session = login(&router, "admin").await;
    emulator.expire_sessions();
    assert_eq!(
        call(&router, Method::GET, path, Some(&session), None)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let session = login(&router, "admin").await;
    let expire = call(
        &router,
        Method::POST,
        "/emulator/expire-sessions",
        None,
        None,
    )
    .await;
    assert_eq!(expire.status, StatusCode::NO_CONTENT);
    assert_eq!(
        call(&router, Method::GET, path, Some(&session), None)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn logout_and_terminate_all_sessions_end_sessions() {
    let emulator = Emulator::new(EmulatorOptions::default());
    let router = emulator.router();
    let path = "/ameyorestapi/cc/contactCenterUsers/getAllContactCenterUsers?ccId=1";
    let session = login(&router, "admin").await;
    let logout = call(
        &router,
        Method::POST,
        "/ameyorestapi/session/userLogout",
        Some(&session),
        Some(json!({"sessionId": session, "reason": "done"})),
    )
    .await;
    assert_eq!(logout.json(), json!({"status": "success"}));
    assert_eq!(
        call(&router, Method::GET, path, Some(&session), None)
            .await
            .status,
        StatusCode::FORBIDDEN
    );

    let admin = login(&router, "admin").await;
    let agent = login(&router, "agent7").await;
    let terminate = call(
        &router,
        Method::POST,
        "/ameyorestapi/session/terminateAllSessionsForUser",
        Some(&admin),
        Some(json!({"userId": "agent7", "reason": "deprovisioned"})),
    )
    .await;
    assert_eq!(terminate.status, StatusCode::OK);
    assert_eq!(terminate.json(), json!({"status": "success"}));
    assert_eq!(emulator.terminations("agent7"), 1);
    assert_eq!(emulator.terminations("admin"), 0);
    assert_eq!(
        call(&router, Method::GET, path, Some(&agent), None)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(&router, Method::GET, path, Some(&admin), None)
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn recorded_requests_redact_passwords() {
    let emulator = Emulator::new(EmulatorOptions::default());
    let router = emulator.router();
    let session = login(&router, "admin").await;
    create(&router, &session, alice()).await;
    call(
        &router,
        Method::PUT,
        "/ameyorestapi/cc/contactCenterUsers/alice?x=1",
        Some(&session),
        Some(json!({"userId": "alice", "userData": "another-secret"})),
    )
    .await;
    let recorded = emulator.requests();
    assert_eq!(recorded.len(), 3);
    assert_eq!(recorded[0].path, "userLogin/login");
    assert_eq!(recorded[0].body.as_ref().unwrap()["token"], REDACTED);
    assert!(!recorded[0].session_valid);
    assert_eq!(recorded[1].method, "POST");
    assert_eq!(recorded[1].path, "cc/contactCenterUsers");
    assert_eq!(recorded[1].body.as_ref().unwrap()["userData"], REDACTED);
    assert_eq!(
        recorded[1].body.as_ref().unwrap()["userName"],
        "Alice Liddell"
    );
    assert!(recorded[1].session_valid);
    assert_eq!(recorded[2].path, "cc/contactCenterUsers/alice");
    assert_eq!(recorded[2].query.as_deref(), Some("x=1"));
    assert_eq!(recorded[2].status, 200);
    let printed = serde_json::to_string(&recorded).unwrap();
    assert!(!printed.contains("s3cret-alice"));
    assert!(!printed.contains("another-secret"));
    assert!(!printed.contains("\"pw\""));
    assert_eq!(
        emulator.user_data("alice").as_deref(),
        Some("another-secret")
    );

    let over_http = call(&router, Method::GET, "/emulator/requests", None, None).await;
    assert_eq!(over_http.json().as_array().map(Vec::len), Some(3));
    let cleared = call(&router, Method::DELETE, "/emulator/requests", None, None).await;
    assert_eq!(cleared.status, StatusCode::NO_CONTENT);
    assert!(emulator.requests().is_empty());
}

#[tokio::test]
async fn admin_endpoints_plant_users_and_set_faults() {
    let emulator = Emulator::new(EmulatorOptions::default());
    let router = emulator.router();
    let planted = call(
        &router,
        Method::POST,
        "/emulator/users",
        None,
        Some(json!({"userId": "drifted", "userType": "Agent", "contactCenterId": 1, "userData": "pw1"})),
    )
    .await;
    assert_eq!(planted.status, StatusCode::CREATED);
    let planted = planted.json();
    assert_eq!(planted["ccUserId"], 364);
    assert_eq!(planted["privilegePlanId"], 13);
    assert!(planted.get("userData").is_none());
    assert_eq!(emulator.user_data("drifted").as_deref(), Some("pw1"));
    let direct =
        emulator.add_user(json!({"userId": "other", "ccUserId": 900, "contactCenterId": 1}));
    assert_eq!(direct["ccUserId"], 900);
    assert_eq!(emulator.add_user(json!({"userName": "no id"})), Value::Null);
    let bad = call(
        &router,
        Method::POST,
        "/emulator/users",
        None,
        Some(json!([1])),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    let session = login(&router, "admin").await;
    let mut bob = alice();
    bob["userId"] = json!("bob");
    assert_eq!(create(&router, &session, bob).await.json()["ccUserId"], 901);
    let ids: Vec<Value> = emulator
        .users()
        .iter()
        .map(|u| u["userId"].clone())
        .collect();
    assert_eq!(ids, [json!("drifted"), json!("other"), json!("bob")]);

    let removed = call(&router, Method::DELETE, "/emulator/users/other", None, None).await;
    assert_eq!(removed.status, StatusCode::NO_CONTENT);
    let missing = call(&router, Method::DELETE, "/emulator/users/other", None, None).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(!emulator.remove_user("other"));
    assert!(emulator.remove_user("drifted"));

    let set = call(
        &router,
        Method::PUT,
        "/emulator/faults",
        None,
        Some(json!({"latency_ms": 5, "outage": "refuse", "reject_user_ids": ["x"]})),
    )
    .await;
    assert_eq!(set.status, StatusCode::OK);
    let faults = emulator.faults();
    assert_eq!(faults.latency_ms, 5);
    assert_eq!(faults.outage, Some(Outage::Refuse));
    assert_eq!(faults.reject_user_ids, ["x"]);
    let got = call(&router, Method::GET, "/emulator/faults", None, None).await;
    assert_eq!(got.json()["outage"], "refuse");
    let invalid = call(
        &router,
        Method::PUT,
        "/emulator/faults",
        None,
        Some(json!({"error_rate": 2.0})),
    )
    .await;
    assert_eq!(invalid.status, StatusCode::BAD_REQUEST);
    let unparsable = call(
        &router,
        Method::PUT,
        "/emulator/faults",
        None,
        Some(json!({"outage": "sometimes"})),
    )
    .await;
    assert_eq!(unparsable.status, StatusCode::BAD_REQUEST);

    let state = call(&router, Method::GET, "/emulator/state", None, None)
        .await
        .json();
    assert_eq!(state["logins"], 1);
    assert_eq!(state["requests"], 2);
    assert_eq!(state["users"].as_array().map(Vec::len), Some(1));
    assert_eq!(state["faults"]["latency_ms"], 5);
}

#[tokio::test]
async fn refuse_outage_drops_tcp_connections_until_cleared() {
    let (emulator, addr) = Emulator::spawn(EmulatorOptions::default()).await.unwrap();
    let base = format!("http://{addr}/ameyorestapi");
    let client = reqwest::Client::new();
    let login_body = json!({"userId": "admin", "token": "pw", "forceLogin": true});
    let ok = client
        .post(format!("{base}/userLogin/login"))
        .json(&login_body)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);

    emulator.set_faults(Faults {
        outage: Some(Outage::Refuse),
        ..Faults::default()
    });
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // The write may or may not fail, depending on when the close arrives.
    let _ = stream
        .write_all(b"GET /ameyorestapi/x HTTP/1.1\r\nHost: emulator\r\n\r\n")
        .await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("the emulator should close the connection");
    assert!(matches!(read, Ok(0) | Err(_)), "read {read:?}");

    // The kept-alive connection from before the outage is closed too.
    let refused = client
        .post(format!("{base}/userLogin/login"))
        .json(&login_body)
        .send()
        .await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(emulator.login_count(), 1);

    emulator.set_faults(Faults::default());
    let restored = client
        .post(format!("{base}/userLogin/login"))
        .json(&login_body)
        .send()
        .await
        .unwrap();
    assert_eq!(restored.status(), 200);
    assert_eq!(emulator.login_count(), 2);
}

#[tokio::test]
async fn counts_users_and_every_call_received() {
    let emulator = Emulator::new(EmulatorOptions::default());
    let router = emulator.router();
    assert_eq!((emulator.user_count(), emulator.request_count()), (0, 0));
    let session = login(&router, "admin").await;
    create(&router, &session, alice()).await;
    let refused = create(&router, &session, alice()).await;
    assert_eq!(refused.status.as_u16(), 512, "{}", refused.text);
    // Admin endpoints are not API calls.
    call(&router, Method::GET, "/emulator/state", None, None).await;
    assert_eq!((emulator.user_count(), emulator.request_count()), (1, 3));
    // Clearing the recorded calls does not forget how many arrived.
    emulator.clear_requests();
    assert_eq!(emulator.request_count(), 3);
    assert!(emulator.remove_user("alice"));
    assert_eq!(emulator.user_count(), 0);
}
