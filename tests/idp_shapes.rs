//! Every request shape in `docs/IDP-BEHAVIOUR.md` (Okta and Microsoft Entra ID), driven
//! through the real HTTP API, with the answers that document requires.

mod common;
use common::*;

use std::collections::HashSet;

use axum::body::Body;
use axum::http::{Method, Request, header};
use serde_json::{Value, json};

const LIST_RESPONSE: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
/// What Okta sends on everything but POST.
const OKTA_CT: &str = "application/scim+json; charset=utf-8";
const MANAGER_PATH: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager";
const EMPLOYEE_NUMBER_PATH: &str =
    "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber";

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A request as an IdP sends it: bearer token of tenant `a`, `Accept:
/// application/scim+json`, and the given `Content-Type` (if any) on the body (if any).
async fn raw(
    app: &TestApp,
    method: Method,
    uri: &str,
    content_type: Option<&str>,
    body: Option<&Value>,
) -> Resp {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN_A}"))
        .header(header::ACCEPT, "application/scim+json");
    if let Some(ct) = content_type {
        req = req.header(header::CONTENT_TYPE, ct);
    }
    let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
    app.send(req.body(body).expect("request")).await
}

/// Okta's POST: `Content-Type: application/json`.
async fn okta_post(app: &TestApp, body: &Value) -> Resp {
    raw(
        app,
        Method::POST,
        "/scim/v2/Users",
        Some("application/json"),
        Some(body),
    )
    .await
}

/// Okta's GET (no body).
async fn okta_get(app: &TestApp, uri: &str) -> Resp {
    raw(app, Method::GET, uri, None, None).await
}

async fn okta_put(app: &TestApp, id: &str, body: &Value) -> Resp {
    raw(
        app,
        Method::PUT,
        &format!("/scim/v2/Users/{id}"),
        Some(OKTA_CT),
        Some(body),
    )
    .await
}

async fn okta_patch(app: &TestApp, id: &str, body: &Value) -> Resp {
    raw(
        app,
        Method::PATCH,
        &format!("/scim/v2/Users/{id}"),
        Some(OKTA_CT),
        Some(body),
    )
    .await
}

fn patch_body(ops: Value) -> Value {
    json!({"schemas": [PATCH_OP], "Operations": ops})
}

fn user_uri(id: &str) -> String {
    format!("/scim/v2/Users/{id}")
}

fn filter_uri(filter: &str) -> String {
    format!("/scim/v2/Users?filter={}", enc(filter))
}

/// The body Okta POSTs to create a user.
fn okta_user(user_name: &str, given: &str, family: &str, external_id: &str) -> Value {
    json!({
        "schemas": [USER_SCHEMA],
        "userName": user_name,
        "name": {"givenName": given, "familyName": family},
        "emails": [{"primary": true, "value": user_name, "type": "work"}],
        "displayName": format!("{given} {family}"),
        "locale": "en-US",
        "externalId": external_id,
        "groups": [{"value": "00g1emaKYZTWRYYRRTSK", "display": "Sales"}],
        "password": "0kta-Initial-Pa55!",
        "active": true
    })
}

/// The body Entra ID POSTs to create a user (no password, ever).
fn entra_user(user_name: &str, external_id: &str) -> Value {
    json!({
        "schemas": [USER_SCHEMA, ENTERPRISE],
        "externalId": external_id,
        "userName": user_name,
        "active": true,
        "displayName": "Ann Lee",
        "emails": [{"primary": true, "type": "work", "value": user_name}],
        "meta": {"resourceType": "User"},
        "name": {"formatted": "Ann Lee", "familyName": "Lee", "givenName": "Ann"},
        ENTERPRISE: {"department": "Support"}
    })
}

#[track_caller]
fn assert_scim_ct(r: &Resp) {
    let ct = r.header("content-type").unwrap_or("");
    assert!(
        ct.starts_with("application/scim+json"),
        "content type {ct:?} of {}",
        r.text
    );
}

/// A ListResponse with JSON-number counters of the given values.
#[track_caller]
fn assert_list(r: &Resp, total: u64, start: u64, items: u64) {
    assert_eq!(r.status, 200, "{}", r.text);
    assert_scim_ct(r);
    assert_eq!(r.body["schemas"], json!([LIST_RESPONSE]), "{}", r.text);
    for (k, want) in [
        ("totalResults", total),
        ("startIndex", start),
        ("itemsPerPage", items),
    ] {
        assert!(r.body[k].is_u64(), "{k} must be a JSON number: {}", r.text);
        assert_eq!(r.body[k], json!(want), "{k}: {}", r.text);
    }
    let n = match r.body.get("Resources") {
        None => 0,
        Some(Value::Array(a)) => a.len() as u64,
        Some(other) => panic!("Resources must be an array: {other}"),
    };
    assert_eq!(n, items, "Resources: {}", r.text);
}

/// Okta's required attributes in answers.
#[track_caller]
fn assert_required(u: &Value) {
    assert!(u["id"].as_str().is_some_and(|s| !s.is_empty()), "id: {u}");
    assert!(u["userName"].is_string(), "userName: {u}");
    assert!(u["name"]["givenName"].is_string(), "name.givenName: {u}");
    assert!(u["name"]["familyName"].is_string(), "name.familyName: {u}");
    assert!(
        u["emails"].as_array().is_some_and(|e| !e.is_empty()),
        "emails: {u}"
    );
    assert!(u["active"].is_boolean(), "active must be a boolean: {u}");
}

/// No attribute anywhere is null: null attributes are skipped, not sent.
#[track_caller]
fn assert_no_nulls(v: &Value, at: &str) {
    match v {
        Value::Null => panic!("null at {at}"),
        Value::Object(m) => m
            .iter()
            .for_each(|(k, v)| assert_no_nulls(v, &format!("{at}.{k}"))),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, v)| assert_no_nulls(v, &format!("{at}[{i}]"))),
        _ => {}
    }
}

/// The password never comes back, under any key or as any value.
#[track_caller]
fn assert_no_password(r: &Resp, secret: &str) {
    assert!(
        !r.text.to_ascii_lowercase().contains("password"),
        "{}",
        r.text
    );
    assert!(!r.text.contains(secret), "{}", r.text);
}

/// A successful single-user answer: 200/201, SCIM JSON, an ETag matching meta.version.
#[track_caller]
fn assert_user_resp(r: &Resp, status: u16) {
    assert_eq!(r.status, status, "{}", r.text);
    assert_scim_ct(r);
    assert_eq!(r.body["schemas"][0], json!(USER_SCHEMA), "{}", r.text);
    assert_eq!(r.body["meta"]["resourceType"], json!("User"), "{}", r.text);
    assert_eq!(
        r.header("etag"),
        r.body["meta"]["version"].as_str(),
        "ETag vs meta.version: {}",
        r.text
    );
    assert_no_nulls(&r.body, "$");
}

/// The body without `meta`, for comparing a user across requests.
fn without_meta(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("meta");
    }
    v
}

/// PATCH with `application/scim+json` (as Entra sends it), then GET: both must be 200
/// and show the same user. Returns the GET body.
async fn patch_then_get(app: &TestApp, id: &str, ops: Value) -> Value {
    let r = app.patch(&user_uri(id), patch_body(ops.clone())).await;
    assert_user_resp(&r, 200);
    assert_eq!(r.body["id"], json!(id), "{}", r.text);
    let g = app.get(&user_uri(id)).await;
    assert_user_resp(&g, 200);
    assert_eq!(
        without_meta(&r.body),
        without_meta(&g.body),
        "PATCH {ops} answered one user and GET shows another"
    );
    g.body
}

// ---------------------------------------------------------------------------------------
// Okta
// ---------------------------------------------------------------------------------------

both_backends!(okta_create_flow);
async fn okta_create_flow(db: TestDb) {
    let app = app(&db).await;

    // 1. "Does the user exist?" -> 200 with totalResults 0.
    let lookup = format!(
        "/scim/v2/Users?filter={}&startIndex=1&count=100",
        enc(r#"userName eq "jdoe@example.com""#)
    );
    let r = okta_get(&app, &lookup).await;
    assert_list(&r, 0, 1, 0);

    // 2. POST with application/json.
    let body = okta_user("jdoe@example.com", "John", "Doe", "00u1abcdEXT");
    let r = okta_post(&app, &body).await;
    assert_user_resp(&r, 201);
    assert_required(&r.body);
    let id = r.body["id"].as_str().expect("id").to_string();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "id {id}");
    assert_eq!(
        r.header("location"),
        Some(format!("{BASE}/Users/{id}").as_str())
    );
    assert_eq!(
        r.body["meta"]["location"],
        json!(format!("{BASE}/Users/{id}"))
    );
    assert!(r.header("etag").is_some_and(|e| !e.is_empty()));
    assert_eq!(r.body["userName"], json!("jdoe@example.com"));
    assert_eq!(
        r.body["name"],
        json!({"givenName": "John", "familyName": "Doe"})
    );
    assert_eq!(
        r.body["emails"],
        json!([{"primary": true, "value": "jdoe@example.com", "type": "work"}])
    );
    assert_eq!(r.body["displayName"], json!("John Doe"));
    assert_eq!(r.body["locale"], json!("en-US"));
    assert_eq!(r.body["externalId"], json!("00u1abcdEXT"));
    assert_eq!(r.body["active"], json!(true));
    assert!(
        r.body.get("groups").is_none(),
        "groups are read-only: {}",
        r.text
    );
    assert_no_password(&r, "0kta-Initial-Pa55!");

    // 3. The same lookup now finds it.
    let r = okta_get(&app, &lookup).await;
    assert_list(&r, 1, 1, 1);
    assert_eq!(r.body["Resources"][0]["id"], json!(id));
    assert_required(&r.body["Resources"][0]);
    assert_no_password(&r, "0kta-Initial-Pa55!");

    // 4. GET by id: the same user.
    let g = okta_get(&app, &user_uri(&id)).await;
    assert_user_resp(&g, 200);
    assert_required(&g.body);
    assert_no_password(&g, "0kta-Initial-Pa55!");
    assert!(g.body.get("groups").is_none(), "{}", g.text);
    assert_eq!(g.body["userName"], json!("jdoe@example.com"));
    assert_eq!(g.body["externalId"], json!("00u1abcdEXT"));
}

both_backends!(okta_duplicate_user_name_conflicts);
async fn okta_duplicate_user_name_conflicts(db: TestDb) {
    let app = app(&db).await;
    let r = okta_post(&app, &okta_user("jdoe@example.com", "John", "Doe", "e1")).await;
    assert_user_resp(&r, 201);
    let id = r.body["id"].as_str().unwrap().to_string();

    let r = okta_post(&app, &okta_user("jdoe@example.com", "Jane", "Doe", "e2")).await;
    r.assert_error(409, Some("uniqueness"));
    assert!(r.body["detail"].is_string(), "{}", r.text);

    // Differing only in case is the same userName.
    let r = okta_post(&app, &okta_user("JDoe@Example.COM", "Jane", "Doe", "e3")).await;
    r.assert_error(409, Some("uniqueness"));

    // Nothing was created, and the original is untouched.
    let r = okta_get(&app, "/scim/v2/Users?startIndex=1&count=100").await;
    assert_list(&r, 1, 1, 1);
    assert_eq!(r.body["Resources"][0]["id"], json!(id));
    assert_eq!(r.body["Resources"][0]["name"]["givenName"], json!("John"));
}

both_backends!(okta_get_then_full_put);
async fn okta_get_then_full_put(db: TestDb) {
    let app = app(&db).await;
    let created = okta_post(&app, &okta_user("jdoe@example.com", "John", "Doe", "e1")).await;
    assert_user_resp(&created, 201);
    let id = created.body["id"].as_str().unwrap().to_string();

    // GET, change, PUT the whole thing back (id, meta and schemas included, as Okta does).
    let g = okta_get(&app, &user_uri(&id)).await;
    assert_user_resp(&g, 200);
    let mut body = g.body.clone();
    body["name"] = json!({"givenName": "Johnny", "familyName": "Doe-Smith"});
    body["displayName"] = json!("Johnny Doe-Smith");
    body["emails"] = json!([{"primary": true, "value": "johnny@example.com", "type": "work"}]);
    body["title"] = json!("Agent");
    body["password"] = json!("Put-Pa55!");
    let r = okta_put(&app, &id, &body).await;
    assert_user_resp(&r, 200);
    assert_required(&r.body);
    assert_no_password(&r, "Put-Pa55!");
    assert_eq!(r.body["id"], json!(id));
    assert_eq!(
        r.body["name"],
        json!({"givenName": "Johnny", "familyName": "Doe-Smith"})
    );
    assert_eq!(r.body["displayName"], json!("Johnny Doe-Smith"));
    assert_eq!(
        r.body["emails"],
        json!([{"primary": true, "value": "johnny@example.com", "type": "work"}])
    );
    assert_eq!(r.body["title"], json!("Agent"));
    assert_eq!(r.body["locale"], json!("en-US"));
    assert_eq!(r.body["externalId"], json!("e1"));
    assert_ne!(
        r.header("etag"),
        created.header("etag"),
        "a change makes a new ETag"
    );

    let g = okta_get(&app, &user_uri(&id)).await;
    assert_user_resp(&g, 200);
    assert_eq!(without_meta(&g.body), without_meta(&r.body));
}

both_backends!(okta_put_active_false_and_true);
async fn okta_put_active_false_and_true(db: TestDb) {
    let app = app(&db).await;
    let created = okta_post(&app, &okta_user("jdoe@example.com", "John", "Doe", "e1")).await;
    let id = created.body["id"].as_str().unwrap().to_string();
    let mut body = okta_user("jdoe@example.com", "John", "Doe", "e1");
    body.as_object_mut().unwrap().remove("groups");

    // Wizard apps: everything by PUT, active included. The last is a stale event.
    for active in [false, true, false, true] {
        body["active"] = json!(active);
        let r = okta_put(&app, &id, &body).await;
        assert_user_resp(&r, 200);
        assert_required(&r.body);
        assert_eq!(r.body["active"], json!(active), "{}", r.text);
        let g = okta_get(&app, &user_uri(&id)).await;
        assert_user_resp(&g, 200);
        assert_eq!(g.body["active"], json!(active), "{}", g.text);
        assert_eq!(g.body["userName"], json!("jdoe@example.com"));
    }
}

both_backends!(okta_patch_deactivate_and_reactivate);
async fn okta_patch_deactivate_and_reactivate(db: TestDb) {
    let app = app(&db).await;
    let created = okta_post(&app, &okta_user("jdoe@example.com", "John", "Doe", "e1")).await;
    let id = created.body["id"].as_str().unwrap().to_string();

    // Deactivate: path-less replace.
    let deactivate = patch_body(json!([{"op": "replace", "value": {"active": false}}]));
    let r = okta_patch(&app, &id, &deactivate).await;
    assert_user_resp(&r, 200);
    assert_required(&r.body);
    assert_eq!(r.body["active"], json!(false), "{}", r.text);
    assert_eq!(r.body["name"]["givenName"], json!("John"));

    // Still there for GET (Okta never deletes) ...
    let g = okta_get(&app, &user_uri(&id)).await;
    assert_user_resp(&g, 200);
    assert_required(&g.body);
    assert_eq!(g.body["active"], json!(false));
    assert_eq!(without_meta(&g.body), without_meta(&r.body));

    // ... for the lookup filter and in the plain listing.
    let r = okta_get(
        &app,
        &format!(
            "{}&startIndex=1&count=100",
            filter_uri(r#"userName eq "jdoe@example.com""#)
        ),
    )
    .await;
    assert_list(&r, 1, 1, 1);
    assert_eq!(r.body["Resources"][0]["id"], json!(id));
    assert_eq!(r.body["Resources"][0]["active"], json!(false));
    let r = okta_get(&app, "/scim/v2/Users?startIndex=1&count=100").await;
    assert_list(&r, 1, 1, 1);
    assert_eq!(r.body["Resources"][0]["active"], json!(false));

    // Reactivate: the same PATCH with true.
    let reactivate = patch_body(json!([{"op": "replace", "value": {"active": true}}]));
    let r = okta_patch(&app, &id, &reactivate).await;
    assert_user_resp(&r, 200);
    assert_required(&r.body);
    assert_eq!(r.body["active"], json!(true), "{}", r.text);
    let g = okta_get(&app, &user_uri(&id)).await;
    assert_eq!(g.body["active"], json!(true), "{}", g.text);
}

both_backends!(okta_password_sync_patch);
async fn okta_password_sync_patch(db: TestDb) {
    let app = app(&db).await;
    let created = okta_post(&app, &okta_user("jdoe@example.com", "John", "Doe", "e1")).await;
    let id = created.body["id"].as_str().unwrap().to_string();

    let body = patch_body(json!([{"op": "replace", "value": {"password": "N3w-Synced-Pa55!"}}]));
    let r = okta_patch(&app, &id, &body).await;
    assert_user_resp(&r, 200);
    assert_required(&r.body);
    assert_no_password(&r, "N3w-Synced-Pa55!");
    assert_eq!(r.body["id"], json!(id));
    // The user's attributes are unchanged.
    assert_eq!(without_meta(&r.body), without_meta(&created.body));

    let g = okta_get(&app, &user_uri(&id)).await;
    assert_user_resp(&g, 200);
    assert_no_password(&g, "N3w-Synced-Pa55!");
    assert_eq!(without_meta(&g.body), without_meta(&created.body));
}

/// Walk `/Users` as Okta does over 250 users: count=100, startIndex 1, 101, 201.
async fn read_all_pages(app: &TestApp) -> Vec<String> {
    let mut ids = Vec::new();
    for (start, items) in [(1u64, 100u64), (101, 100), (201, 50)] {
        let r = okta_get(app, &format!("/scim/v2/Users?startIndex={start}&count=100")).await;
        assert_list(&r, 250, start, items);
        for u in r.body["Resources"].as_array().unwrap() {
            assert_required(u);
            ids.push(u["id"].as_str().unwrap().to_string());
        }
    }
    ids
}

both_backends!(okta_paging_250_users);
async fn okta_paging_250_users(db: TestDb) {
    let app = app(&db).await;
    let mut created = Vec::new();
    for i in 0..250 {
        let un = format!("user{i:03}@example.com");
        let r = okta_post(&app, &okta_user(&un, "Given", &format!("F{i:03}"), &un)).await;
        assert_eq!(r.status, 201, "{}", r.text);
        created.push(r.body["id"].as_str().unwrap().to_string());
    }

    let first = read_all_pages(&app).await;
    assert_eq!(first.len(), 250);
    let unique: HashSet<&String> = first.iter().collect();
    assert_eq!(unique.len(), 250, "a user appeared on two pages");
    let want: HashSet<&String> = created.iter().collect();
    assert_eq!(unique, want, "users missing from the pages");

    // The order is stable: the same walk gives the same sequence.
    let second = read_all_pages(&app).await;
    assert_eq!(first, second, "order changed between walks");

    // Past the end: no resources, the total still a number.
    let r = okta_get(&app, "/scim/v2/Users?startIndex=301&count=100").await;
    assert_list(&r, 250, 301, 0);
}

both_backends!(okta_content_types_accepted_and_answered_as_scim_json);
async fn okta_content_types_accepted_and_answered_as_scim_json(db: TestDb) {
    let app = app(&db).await;
    // POST: application/json (and with a charset).
    let r = okta_post(&app, &okta_user("a@example.com", "A", "One", "e1")).await;
    assert_user_resp(&r, 201);
    let id = r.body["id"].as_str().unwrap().to_string();
    let r = raw(
        &app,
        Method::POST,
        "/scim/v2/Users",
        Some("application/json; charset=utf-8"),
        Some(&okta_user("b@example.com", "B", "Two", "e2")),
    )
    .await;
    assert_user_resp(&r, 201);

    // Elsewhere: application/scim+json; charset=utf-8.
    let mut body = okta_user("a@example.com", "A", "Uno", "e1");
    body.as_object_mut().unwrap().remove("groups");
    let r = okta_put(&app, &id, &body).await;
    assert_user_resp(&r, 200);
    assert_eq!(r.body["name"]["familyName"], json!("Uno"));
    let r = okta_patch(
        &app,
        &id,
        &patch_body(json!([{"op": "replace", "value": {"active": false}}])),
    )
    .await;
    assert_user_resp(&r, 200);
    assert_eq!(r.body["active"], json!(false));
    let r = raw(
        &app,
        Method::POST,
        "/scim/v2/Users",
        Some(OKTA_CT),
        Some(&okta_user("c@example.com", "C", "Three", "e3")),
    )
    .await;
    assert_user_resp(&r, 201);

    // Every answer is application/scim+json, errors and lists included.
    let r = okta_get(&app, &user_uri(&id)).await;
    assert_user_resp(&r, 200);
    let r = okta_get(&app, "/scim/v2/Users?startIndex=1&count=100").await;
    assert_list(&r, 3, 1, 3);
    let r = okta_post(&app, &okta_user("a@example.com", "A", "One", "e1")).await;
    r.assert_error(409, Some("uniqueness"));
    let r = okta_get(&app, &user_uri(&uuid::Uuid::new_v4().to_string())).await;
    r.assert_error(404, None);
}

// ---------------------------------------------------------------------------------------
// Microsoft Entra ID
// ---------------------------------------------------------------------------------------

both_backends!(entra_lookups_by_user_name_external_id_and_value_path);
async fn entra_lookups_by_user_name_external_id_and_value_path(db: TestDb) {
    let app = app(&db).await;
    let ann = app
        .create_user(entra_user("ann.lee@contoso.com", "ext-ANN-1"))
        .await;
    let ann_id = ann["id"].as_str().unwrap();
    assert!(ann.get("password").is_none());
    let other = app
        .create_user(entra_user("bob@contoso.com", "ext-BOB-2"))
        .await;

    let found = |r: &Resp| {
        assert_list(r, 1, 1, 1);
        assert_eq!(r.body["Resources"][0]["id"], json!(ann_id), "{}", r.text);
        assert_eq!(
            r.body["Resources"][0]["userName"],
            json!("ann.lee@contoso.com")
        );
    };
    found(
        &app.get(&filter_uri(r#"userName eq "ann.lee@contoso.com""#))
            .await,
    );
    found(&app.get(&filter_uri(r#"externalId eq "ext-ANN-1""#)).await);
    found(
        &app.get(&filter_uri(
            r#"emails[type eq "work"].value eq "ann.lee@contoso.com""#,
        ))
        .await,
    );
    found(
        &app.get(&filter_uri(
            r#"userName eq "ann.lee@contoso.com" and externalId eq "ext-ANN-1""#,
        ))
        .await,
    );

    // Misses are 200 with nothing in them.
    for f in [
        r#"externalId eq "ext-nobody""#,
        r#"emails[type eq "home"].value eq "ann.lee@contoso.com""#,
        r#"userName eq "ann.lee@contoso.com" and externalId eq "ext-BOB-2""#,
    ] {
        assert_list(&app.get(&filter_uri(f)).await, 0, 1, 0);
    }
    assert_eq!(other["externalId"], json!("ext-BOB-2"));
}

both_backends!(entra_test_connection_random_guid);
async fn entra_test_connection_random_guid(db: TestDb) {
    let app = app(&db).await;
    // Before and after there are users: a random GUID matches nobody.
    for round in 0..2 {
        if round == 1 {
            app.create_user(entra_user("ann@contoso.com", "ext-1"))
                .await;
        }
        let guid = uuid::Uuid::new_v4().to_string();
        for f in [
            format!(r#"userName eq "{guid}""#),
            format!(r#"externalId eq "{guid}""#),
        ] {
            let r = app.get(&filter_uri(&f)).await;
            assert_list(&r, 0, 1, 0);
        }
    }
}

both_backends!(entra_patch_without_flag_one_op_per_attribute);
async fn entra_patch_without_flag_one_op_per_attribute(db: TestDb) {
    let app = app(&db).await;
    let user = app
        .create_user(entra_user("ann@contoso.com", "ext-ann"))
        .await;
    let id = user["id"].as_str().unwrap().to_string();
    let mgr = app.create_named("boss@contoso.com").await;
    let mgr2 = app.create_named("boss2@contoso.com").await;

    // Booleans as strings, capitalised ops.
    let u = patch_then_get(
        &app,
        &id,
        json!([{"op": "Replace", "path": "active", "value": "False"}]),
    )
    .await;
    assert_eq!(u["active"], json!(false));
    let u = patch_then_get(
        &app,
        &id,
        json!([{"op": "Replace", "path": "active", "value": "True"}]),
    )
    .await;
    assert_eq!(u["active"], json!(true));

    // emails[type eq "work"].value
    let u = patch_then_get(
        &app,
        &id,
        json!([{"op": "Replace", "path": "emails[type eq \"work\"].value", "value": "ann.new@contoso.com"}]),
    )
    .await;
    assert_eq!(
        u["emails"],
        json!([{"primary": true, "type": "work", "value": "ann.new@contoso.com"}])
    );
    // ... and the value-path filter now finds the new address only.
    let r = app
        .get(&filter_uri(
            r#"emails[type eq "work"].value eq "ann.new@contoso.com""#,
        ))
        .await;
    assert_list(&r, 1, 1, 1);
    assert_list(
        &app.get(&filter_uri(
            r#"emails[type eq "work"].value eq "ann@contoso.com""#,
        ))
        .await,
        0,
        1,
        0,
    );

    // name.givenName
    let u = patch_then_get(
        &app,
        &id,
        json!([{"op": "Replace", "path": "name.givenName", "value": "Annie"}]),
    )
    .await;
    assert_eq!(u["name"]["givenName"], json!("Annie"));
    assert_eq!(u["name"]["familyName"], json!("Lee"));

    // enterprise employeeNumber, URN-qualified.
    let u = patch_then_get(
        &app,
        &id,
        json!([{"op": "Add", "path": EMPLOYEE_NUMBER_PATH, "value": "E-0042"}]),
    )
    .await;
    assert_eq!(u[ENTERPRISE]["employeeNumber"], json!("E-0042"));
    assert_eq!(u[ENTERPRISE]["department"], json!("Support"));
    assert!(
        u["schemas"]
            .as_array()
            .unwrap()
            .contains(&json!(ENTERPRISE)),
        "{u}"
    );

    // manager as [{"$ref": null, "value": id}]: the null $ref is not kept or sent.
    let u = patch_then_get(
        &app,
        &id,
        json!([{"op": "Add", "path": MANAGER_PATH, "value": [{"$ref": null, "value": mgr}]}]),
    )
    .await;
    assert_eq!(u[ENTERPRISE]["manager"], json!({"value": mgr}));

    // the short path `manager`, same shape
    let u = patch_then_get(
        &app,
        &id,
        json!([{"op": "Add", "path": "manager", "value": [{"$ref": null, "value": mgr2}]}]),
    )
    .await;
    assert_eq!(u[ENTERPRISE]["manager"], json!({"value": mgr2}));

    // manager as a bare string
    let u = patch_then_get(
        &app,
        &id,
        json!([{"op": "Replace", "path": MANAGER_PATH, "value": mgr}]),
    )
    .await;
    assert_eq!(u[ENTERPRISE]["manager"], json!({"value": mgr}));

    // "" clears it
    let u = patch_then_get(
        &app,
        &id,
        json!([{"op": "Replace", "path": MANAGER_PATH, "value": ""}]),
    )
    .await;
    assert!(u[ENTERPRISE].get("manager").is_none(), "{u}");
    assert_eq!(u[ENTERPRISE]["employeeNumber"], json!("E-0042"));

    // "Remove"
    let u = patch_then_get(
        &app,
        &id,
        json!([{"op": "Remove", "path": EMPLOYEE_NUMBER_PATH}]),
    )
    .await;
    assert!(u[ENTERPRISE].get("employeeNumber").is_none(), "{u}");
    assert_eq!(u[ENTERPRISE]["department"], json!("Support"));

    // Other attributes survived all of it.
    assert_eq!(u["userName"], json!("ann@contoso.com"));
    assert_eq!(u["externalId"], json!("ext-ann"));
    assert_eq!(u["displayName"], json!("Ann Lee"));
    assert_eq!(u["active"], json!(true));
}

both_backends!(entra_patch_without_flag_manager_bare_string_add_and_empty_add);
async fn entra_patch_without_flag_manager_bare_string_add_and_empty_add(db: TestDb) {
    let app = app(&db).await;
    let user = app
        .create_user(entra_user("ann@contoso.com", "ext-ann"))
        .await;
    let id = user["id"].as_str().unwrap().to_string();
    let mgr = app.create_named("boss@contoso.com").await;

    // The validator's shapes with op "Add": a bare string, then "" to clear.
    let u = patch_then_get(
        &app,
        &id,
        json!([{"op": "Add", "path": "manager", "value": mgr}]),
    )
    .await;
    assert_eq!(u[ENTERPRISE]["manager"], json!({"value": mgr}));
    let u = patch_then_get(
        &app,
        &id,
        json!([{"op": "Add", "path": "manager", "value": ""}]),
    )
    .await;
    assert!(
        u[ENTERPRISE].get("manager").is_none(),
        "\"\" must clear the manager: {u}"
    );
}

both_backends!(entra_patch_without_flag_batched_request);
async fn entra_patch_without_flag_batched_request(db: TestDb) {
    let app = app(&db).await;
    let user = app
        .create_user(json!({
            "schemas": [USER_SCHEMA],
            "externalId": "ext-ann",
            "userName": "ann@contoso.com",
            "active": true,
            "name": {"familyName": "Lee", "givenName": "Ann"},
            "emails": [{"primary": true, "type": "home", "value": "ann@home.example"}]
        }))
        .await;
    let id = user["id"].as_str().unwrap().to_string();
    let mgr = app.create_named("boss@contoso.com").await;

    // What one sync cycle sends: one operation per changed attribute.
    let u = patch_then_get(
        &app,
        &id,
        json!([
            {"op": "Add", "path": "emails[type eq \"work\"].value", "value": "ann@contoso.com"},
            {"op": "Replace", "path": "emails[type eq \"work\"].primary", "value": "True"},
            {"op": "Add", "path": "phoneNumbers[type eq \"mobile\"].value", "value": "+1 555 0100"},
            {"op": "Replace", "path": "name.givenName", "value": "Ann-Marie"},
            {"op": "Add", "path": "title", "value": "Agent"},
            {"op": "Add", "path": EMPLOYEE_NUMBER_PATH, "value": "7"},
            {"op": "Add", "path": MANAGER_PATH, "value": [{"$ref": null, "value": mgr}]},
            {"op": "Replace", "path": "active", "value": "False"}
        ]),
    )
    .await;
    assert_eq!(
        u["emails"],
        json!([
            {"primary": false, "type": "home", "value": "ann@home.example"},
            {"type": "work", "value": "ann@contoso.com", "primary": true}
        ])
    );
    assert_eq!(
        u["phoneNumbers"],
        json!([{"type": "mobile", "value": "+1 555 0100"}])
    );
    assert_eq!(
        u["name"],
        json!({"familyName": "Lee", "givenName": "Ann-Marie"})
    );
    assert_eq!(u["title"], json!("Agent"));
    assert_eq!(
        u[ENTERPRISE],
        json!({"employeeNumber": "7", "manager": {"value": mgr}})
    );
    assert_eq!(u["active"], json!(false));
}

both_backends!(entra_patch_with_flag);
async fn entra_patch_with_flag(db: TestDb) {
    let app = app(&db).await;
    let user = app
        .create_user(entra_user("ann@contoso.com", "ext-ann"))
        .await;
    let id = user["id"].as_str().unwrap().to_string();

    // Lowercase ops, real booleans.
    let u = patch_then_get(
        &app,
        &id,
        json!([{"op": "replace", "path": "active", "value": false}]),
    )
    .await;
    assert_eq!(u["active"], json!(false));
    let u = patch_then_get(
        &app,
        &id,
        json!([{"op": "replace", "path": "active", "value": true}]),
    )
    .await;
    assert_eq!(u["active"], json!(true));
    let u = patch_then_get(
        &app,
        &id,
        json!([{"op": "add", "path": "emails[type eq \"work\"].value", "value": "ann.w@contoso.com"}]),
    )
    .await;
    assert_eq!(
        u["emails"],
        json!([{"primary": true, "type": "work", "value": "ann.w@contoso.com"}])
    );

    // The exact example of the document.
    let u = patch_then_get(
        &app,
        &id,
        json!([{"op":"replace","value":{"name.givenName":"Ann","urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department":"Sales","active":false}}]),
    )
    .await;
    assert_eq!(u["name"]["givenName"], json!("Ann"));
    assert_eq!(u["name"]["familyName"], json!("Lee"));
    assert_eq!(u["name"]["formatted"], json!("Ann Lee"));
    assert_eq!(u[ENTERPRISE]["department"], json!("Sales"));
    assert_eq!(u["active"], json!(false));

    // And with a different given name, to see the dotted key really applies.
    let u = patch_then_get(
        &app,
        &id,
        json!([{"op":"replace","value":{"name.givenName":"Anna","urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department":"Ops","active":true}}]),
    )
    .await;
    assert_eq!(u["name"]["givenName"], json!("Anna"));
    assert_eq!(u[ENTERPRISE]["department"], json!("Ops"));
    assert_eq!(u["active"], json!(true));
    assert_eq!(u["userName"], json!("ann@contoso.com"));
}

both_backends!(entra_soft_delete_then_hard_delete);
async fn entra_soft_delete_then_hard_delete(db: TestDb) {
    let app = app(&db).await;
    let user = app
        .create_user(entra_user("ann@contoso.com", "ext-ann"))
        .await;
    let id = user["id"].as_str().unwrap().to_string();

    // Soft delete: active false; the user is still there.
    let u = patch_then_get(
        &app,
        &id,
        json!([{"op": "Replace", "path": "active", "value": "False"}]),
    )
    .await;
    assert_eq!(u["active"], json!(false));
    let r = app.get(&filter_uri(r#"externalId eq "ext-ann""#)).await;
    assert_list(&r, 1, 1, 1);
    assert_eq!(r.body["Resources"][0]["active"], json!(false));

    // Hard delete.
    let r = app.delete(&user_uri(&id)).await;
    assert_eq!(r.status, 204, "{}", r.text);
    assert!(r.text.is_empty(), "204 has no body: {}", r.text);

    let r = app.get(&user_uri(&id)).await;
    r.assert_error(404, None);
    assert!(r.body["detail"].is_string(), "{}", r.text);
    assert_list(
        &app.get(&filter_uri(r#"externalId eq "ext-ann""#)).await,
        0,
        1,
        0,
    );
    assert_list(
        &app.get(&filter_uri(r#"userName eq "ann@contoso.com""#))
            .await,
        0,
        1,
        0,
    );
    // A repeated DELETE or a late PATCH: 404 as well.
    app.delete(&user_uri(&id)).await.assert_error(404, None);
    app.patch(
        &user_uri(&id),
        patch_body(json!([{"op": "Replace", "path": "active", "value": "True"}])),
    )
    .await
    .assert_error(404, None);
}

both_backends!(schemas_and_discovery_served);
async fn schemas_and_discovery_served(db: TestDb) {
    let app = app(&db).await;
    let r = app.get("/scim/v2/Schemas").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_scim_ct(&r);
    assert_eq!(r.body["schemas"], json!([LIST_RESPONSE]));
    let resources = r.body["Resources"].as_array().expect("Resources");
    assert!(r.body["totalResults"].is_u64());
    assert_eq!(r.body["totalResults"], json!(resources.len()));
    let ids: Vec<&str> = resources.iter().filter_map(|s| s["id"].as_str()).collect();
    assert!(ids.contains(&USER_SCHEMA), "{ids:?}");
    assert!(ids.contains(&ENTERPRISE), "{ids:?}");

    let r = app.get(&format!("/scim/v2/Schemas/{USER_SCHEMA}")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_scim_ct(&r);
    assert_eq!(r.body["id"], json!(USER_SCHEMA));
    let attrs = r.body["attributes"].as_array().expect("attributes");
    let user_name = attrs
        .iter()
        .find(|a| a["name"] == json!("userName"))
        .expect("userName attribute");
    assert_eq!(user_name["uniqueness"], json!("server"));
    assert_eq!(user_name["required"], json!(true));

    let r = app.get(&format!("/scim/v2/Schemas/{ENTERPRISE}")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["id"], json!(ENTERPRISE));

    // scim2-tester stops early without these two.
    let r = app.get("/scim/v2/ServiceProviderConfig").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_scim_ct(&r);
    assert_eq!(r.body["patch"]["supported"], json!(true), "{}", r.text);
    let r = app.get("/scim/v2/ResourceTypes").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_scim_ct(&r);
    assert_eq!(
        r.body["Resources"][0]["endpoint"],
        json!("/Users"),
        "{}",
        r.text
    );
}

both_backends!(values_and_types_stored_exactly_as_sent);
async fn values_and_types_stored_exactly_as_sent(db: TestDb) {
    let app = app(&db).await;
    let emails = json!([
        {"value": "Ann.Lee@Contoso.COM", "type": "work", "primary": true},
        {"value": "ann@home.example", "type": "Home"},
        {"value": "ann@other.example", "type": "custom-Type 1"}
    ]);
    let phones = json!([
        {"value": "+1 (555) 0100", "type": "mobile"},
        {"value": "+1 555 0101", "type": "Work"},
        {"value": "+1 555 0102", "type": "fax"}
    ]);
    let addresses = json!([
        {"type": "work", "streetAddress": "1 Main St", "locality": "Springfield", "country": "US"},
        {"type": "Other", "formatted": "PO Box 9"}
    ]);
    let r = app
        .post(
            "/scim/v2/Users",
            json!({
                "schemas": [USER_SCHEMA],
                "userName": "Ann.Lee@Contoso.COM",
                "name": {"givenName": "Zoë", "familyName": "Ångström"},
                "displayName": "  Zoë Ångström  ",
                "nickName": null,
                "title": null,
                "emails": emails,
                "phoneNumbers": phones,
                "addresses": addresses,
                "active": true
            }),
        )
        .await;
    assert_user_resp(&r, 201);
    for u in [
        &r.body,
        &app.get(&user_uri(r.body["id"].as_str().unwrap()))
            .await
            .body,
    ] {
        assert_eq!(u["userName"], json!("Ann.Lee@Contoso.COM"));
        assert_eq!(
            u["name"],
            json!({"givenName": "Zoë", "familyName": "Ångström"})
        );
        assert_eq!(u["displayName"], json!("  Zoë Ångström  "));
        assert_eq!(u["emails"], emails);
        assert_eq!(u["phoneNumbers"], phones);
        assert_eq!(u["addresses"], addresses);
        assert!(
            u.get("nickName").is_none() && u.get("title").is_none(),
            "{u}"
        );
        assert_no_nulls(u, "$");
    }
    let id = r.body["id"].as_str().unwrap().to_string();

    // A PATCH through one typed element leaves the others and their types alone.
    let u = patch_then_get(
        &app,
        &id,
        json!([{"op": "Replace", "path": "phoneNumbers[type eq \"mobile\"].value", "value": "+44 20 7946 0000"}]),
    )
    .await;
    assert_eq!(
        u["phoneNumbers"],
        json!([
            {"value": "+44 20 7946 0000", "type": "mobile"},
            {"value": "+1 555 0101", "type": "Work"},
            {"value": "+1 555 0102", "type": "fax"}
        ])
    );
    assert_eq!(u["emails"], emails);
    assert_eq!(u["addresses"], addresses);
}
