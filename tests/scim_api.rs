//! The SCIM API end to end over a real database: CRUD, filters, paging, sorting,
//! projection, ETags, authentication, tenants, errors and the outbox rows.

mod common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use common::*;
use serde_json::{Value, json};

fn full_user(user_name: &str) -> Value {
    json!({
        "schemas": [USER_SCHEMA, ENTERPRISE, AMEYO],
        "userName": user_name,
        "externalId": format!("ext-{user_name}"),
        "name": {"givenName": "Grace", "familyName": "Hopper", "formatted": "Grace Hopper"},
        "displayName": "Grace Hopper",
        "title": "Rear Admiral",
        "active": true,
        "emails": [
            {"value": format!("{user_name}"), "type": "work", "primary": true},
            {"value": "grace@home.example", "type": "home"}
        ],
        "phoneNumbers": [{"value": "+1 555 0100", "type": "mobile"}],
        "password": "Sup3r-S3cret-Passw0rd!",
        ENTERPRISE: {"employeeNumber": "701", "department": "Navy", "manager": {"value": "m-1"}},
        AMEYO: {"userType": "Supervisor", "maxAllowedLogins": 2, "defaultReady": true, "loginPolicy": "disallow.after.limit"}
    })
}

both_backends!(create_answers_201_with_location_etag_and_meta);
async fn create_answers_201_with_location_etag_and_meta(db: TestDb) {
    let app = app(&db).await;
    let r = app
        .post("/scim/v2/Users", full_user("grace@navy.example"))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let id = r.body["id"].as_str().unwrap().to_string();
    assert_eq!(
        r.header("location"),
        Some(format!("{BASE}/Users/{id}").as_str())
    );
    assert_eq!(r.header("etag"), Some("W/\"1\""));
    assert_eq!(r.header("content-type"), Some("application/scim+json"));
    let meta = &r.body["meta"];
    assert_eq!(meta["resourceType"], json!("User"));
    assert_eq!(meta["version"], json!("W/\"1\""));
    assert_eq!(meta["location"], json!(format!("{BASE}/Users/{id}")));
    assert_eq!(meta["created"], meta["lastModified"]);
    assert!(chrono::DateTime::parse_from_rfc3339(meta["created"].as_str().unwrap()).is_ok());
    assert_eq!(r.body["schemas"], json!([USER_SCHEMA, ENTERPRISE, AMEYO]));
    assert_eq!(r.body[ENTERPRISE]["department"], json!("Navy"));
    assert_eq!(r.body[AMEYO]["userType"], json!("Supervisor"));
    assert!(
        r.body.get("password").is_none(),
        "password is never returned"
    );
    assert!(
        !r.text.contains("Sup3r-S3cret"),
        "password is never returned"
    );

    // What was stored is exactly what GET returns.
    let g = app.get(&format!("/scim/v2/Users/{id}")).await;
    assert_eq!(g.status, 200);
    assert_eq!(g.body, r.body);
}

both_backends!(the_password_is_kept_only_encrypted_until_delivery);
async fn the_password_is_kept_only_encrypted_until_delivery(db: TestDb) {
    let app = app(&db).await;
    let id = app.create_user(full_user("pw@example.com")).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let snap = app.snapshot().await.to_string();
    assert!(
        !snap.contains("Sup3r-S3cret"),
        "password reached the database: {snap}"
    );
    let id = uuid::Uuid::parse_str(&id).unwrap();
    let row = db.outbox_row(id).await.unwrap();
    let (sealed, version) = (row.pending_password.unwrap(), row.password_version.unwrap());
    assert_eq!(version, 1);
    let key = settings().password_key().unwrap();
    let cipher = ameyo_scim::store::password::PasswordCipher::new(&key);
    use secrecy::ExposeSecret;
    assert_eq!(
        cipher.open(id.as_bytes(), &sealed).unwrap().expose_secret(),
        "Sup3r-S3cret-Passw0rd!"
    );
    // A password change is a write of its own, even when nothing else changes.
    let r = app
        .patch(
            &format!("/scim/v2/Users/{id}"),
            json!({"Operations": [{"op": "replace", "value": {"password": "N3w-Passw0rd!"}}]}),
        )
        .await;
    assert_eq!(r.header("etag"), Some("W/\"2\""));
    let row = db.outbox_row(id).await.unwrap();
    let (sealed, version) = (row.pending_password.unwrap(), row.password_version.unwrap());
    assert_eq!(version, 2);
    assert_eq!(
        cipher.open(id.as_bytes(), &sealed).unwrap().expose_secret(),
        "N3w-Passw0rd!"
    );
    // Deleting the user erases a password that was never delivered.
    assert_eq!(
        app.delete(&format!("/scim/v2/Users/{id}")).await.status,
        204
    );
    let sealed = db.outbox_row(id).await.unwrap().pending_password;
    assert!(sealed.is_none());
}

both_backends!(every_write_marks_the_outbox_row_pending_in_the_same_statement);
async fn every_write_marks_the_outbox_row_pending_in_the_same_statement(db: TestDb) {
    let app = app(&db).await;
    let id = app.create_named("outbox@example.com").await;
    let row = |id: String| {
        let db = db.sql();
        async move {
            let version = db
                .int("SELECT version FROM users WHERE id = $1", &[Arg::id(&id)])
                .await;
            let s = db.outbox_row(&id).await.unwrap();
            (s.desired_version, version, s.state, s.tenant_id)
        }
    };
    assert_eq!(row(id.clone()).await, (1, 1, "pending".into(), "a".into()));
    // Pretend a worker delivered version 1.
    db.exec(
        "UPDATE sync_state SET state = 'done', synced_version = 1",
        &[],
    )
    .await;
    let r = app
        .patch(
            &format!("/scim/v2/Users/{id}"),
            json!({"schemas": [PATCH_OP], "Operations": [{"op": "replace", "path": "title", "value": "CTO"}]}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("etag"), Some("W/\"2\""));
    assert_eq!(row(id.clone()).await, (2, 2, "pending".into(), "a".into()));

    // A PUT that changes nothing is not a write: no new version, nothing to deliver.
    db.exec(
        "UPDATE sync_state SET state = 'done', synced_version = 2",
        &[],
    )
    .await;
    let current = app.get(&format!("/scim/v2/Users/{id}")).await.body;
    let r = app.put(&format!("/scim/v2/Users/{id}"), current).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("etag"), Some("W/\"2\""));
    assert_eq!(row(id.clone()).await, (2, 2, "done".into(), "a".into()));

    // DELETE is a write too: the tombstone waits for delivery.
    assert_eq!(
        app.delete(&format!("/scim/v2/Users/{id}")).await.status,
        204
    );
    assert_eq!(row(id.clone()).await, (3, 3, "pending".into(), "a".into()));
}

both_backends!(get_unknown_or_malformed_id_is_404);
async fn get_unknown_or_malformed_id_is_404(db: TestDb) {
    let app = app(&db).await;
    app.get("/scim/v2/Users/00000000-0000-0000-0000-000000000000")
        .await
        .assert_error(404, None);
    app.get("/scim/v2/Users/not-a-uuid")
        .await
        .assert_error(404, None);
    app.put("/scim/v2/Users/not-a-uuid", json!({"userName": "x"}))
        .await
        .assert_error(404, None);
    app.delete("/scim/v2/Users/00000000-0000-0000-0000-000000000000")
        .await
        .assert_error(404, None);
}

both_backends!(bad_users_are_refused_with_the_right_scim_type);
async fn bad_users_are_refused_with_the_right_scim_type(db: TestDb) {
    let app = app(&db).await;
    let cases = [
        (json!({"schemas": [USER_SCHEMA]}), "invalidValue"),
        (
            json!({"schemas": [USER_SCHEMA], "userName": "  "}),
            "invalidValue",
        ),
        (
            json!({"schemas": [USER_SCHEMA], "userName": 42}),
            "invalidValue",
        ),
        (
            json!({"schemas": [USER_SCHEMA], "userName": "a", "active": "sometimes"}),
            "invalidValue",
        ),
        (
            json!({"schemas": [USER_SCHEMA], "userName": "a", "emails": "a@b.c"}),
            "invalidValue",
        ),
        (
            json!({"schemas": [USER_SCHEMA], "userName": "a", "name": ["x"]}),
            "invalidValue",
        ),
        (
            json!({"schemas": ["urn:example:params:scim:schemas:Unknown"], "userName": "a"}),
            "invalidSyntax",
        ),
        (
            json!({"schemas": [USER_SCHEMA, "urn:example:ext:1.0:User"], "userName": "a"}),
            "invalidSyntax",
        ),
        (
            json!({"schemas": [USER_SCHEMA], "userName": "a", AMEYO: {"userType": "Wizard"}}),
            "invalidValue",
        ),
        (json!("just a string"), "invalidSyntax"),
    ];
    for (body, scim_type) in cases {
        let r = app.post("/scim/v2/Users", body.clone()).await;
        r.assert_error(400, Some(scim_type));
        assert!(
            !r.body["detail"].as_str().unwrap_or("").is_empty(),
            "{body}"
        );
    }
    assert_eq!(
        app.snapshot().await,
        json!({"users": [], "sync": [], "groups": [], "members": []})
    );
}

both_backends!(user_name_is_unique_per_tenant_case_insensitively);
async fn user_name_is_unique_per_tenant_case_insensitively(db: TestDb) {
    let app = app(&db).await;
    app.create_named("Dup@Example.com").await;
    app.post("/scim/v2/Users", json!({"userName": "dup@example.COM"}))
        .await
        .assert_error(409, Some("uniqueness"));
    // Renaming another user onto it is refused too.
    let other = app.create_named("other@example.com").await;
    app.put(
        &format!("/scim/v2/Users/{other}"),
        json!({"userName": "DUP@example.com"}),
    )
    .await
    .assert_error(409, Some("uniqueness"));
    // Another tenant may use the same userName.
    let r = app
        .call(
            Method::POST,
            "/scim/v2/Users",
            Some(TOKEN_B),
            Some(json!({"userName": "dup@example.com"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
}

both_backends!(tenants_never_see_each_others_users);
async fn tenants_never_see_each_others_users(db: TestDb) {
    let app = app(&db).await;
    let a_id = app.create_named("same@example.com").await;
    let r = app
        .call(
            Method::POST,
            "/scim/v2/Users",
            Some(TOKEN_B),
            Some(json!({"userName": "same@example.com"})),
        )
        .await;
    let b_id = r.body["id"].as_str().unwrap().to_string();
    assert_ne!(a_id, b_id);

    let as_b = |m: Method, uri: String, body: Option<Value>| {
        let app = &app;
        async move { app.call(m, &uri, Some(TOKEN_B), body).await }
    };
    let a_uri = format!("/scim/v2/Users/{a_id}");
    as_b(Method::GET, a_uri.clone(), None)
        .await
        .assert_error(404, None);
    as_b(
        Method::PUT,
        a_uri.clone(),
        Some(json!({"userName": "stolen"})),
    )
    .await
    .assert_error(404, None);
    as_b(
        Method::PATCH,
        a_uri.clone(),
        Some(json!({"Operations": [{"op": "replace", "path": "active", "value": false}]})),
    )
    .await
    .assert_error(404, None);
    as_b(Method::DELETE, a_uri.clone(), None)
        .await
        .assert_error(404, None);

    let list = as_b(Method::GET, "/scim/v2/Users".into(), None).await;
    assert_eq!(list.body["totalResults"], json!(1));
    assert_eq!(list.body["Resources"][0]["id"], json!(b_id));
    let by_id = as_b(
        Method::GET,
        format!(
            "/scim/v2/Users?filter={}",
            enc(&format!("id eq \"{a_id}\""))
        ),
        None,
    )
    .await;
    assert_eq!(by_id.body["totalResults"], json!(0));

    // Tenant a's user is untouched.
    let mine = app.get(&a_uri).await;
    assert_eq!(mine.body["userName"], json!("same@example.com"));
    assert_eq!(mine.header("etag"), Some("W/\"1\""));
}

both_backends!(authentication);
async fn authentication(db: TestDb) {
    let app = app(&db).await;
    for token in [None, Some("wrong-token"), Some("")] {
        let r = app.call(Method::GET, "/scim/v2/Users", token, None).await;
        r.assert_error(401, None);
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"ameyo-scim\"")
        );
    }
    // Basic and other schemes are not bearer tokens.
    let req = Request::get("/scim/v2/Users")
        .header(header::AUTHORIZATION, format!("Basic {TOKEN_A}"))
        .body(Body::empty())
        .unwrap();
    app.send(req).await.assert_error(401, None);
    // Discovery needs credentials too.
    app.call(Method::GET, "/scim/v2/Schemas", None, None)
        .await
        .assert_error(401, None);
    // Both of a tenant's tokens work (rotation).
    for t in [TOKEN_A, TOKEN_A2] {
        assert_eq!(
            app.call(Method::GET, "/scim/v2/Users", Some(t), None)
                .await
                .status,
            200
        );
    }
    // /healthz needs none.
    assert_eq!(
        app.call(Method::GET, "/healthz", None, None).await.status,
        200
    );
}

both_backends!(jwt_bearer_selects_its_tenant_and_is_fully_checked);
async fn jwt_bearer_selects_its_tenant_and_is_fully_checked(db: TestDb) {
    let app = app(&db).await;
    let good = jwt_c(json!({}));
    let r = app
        .call(
            Method::POST,
            "/scim/v2/Users",
            Some(&good),
            Some(json!({"userName": "jwt@example.com"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    // The user belongs to tenant c, not a.
    let a = app.get("/scim/v2/Users").await;
    assert_eq!(a.body["totalResults"], json!(0));
    let c = app
        .call(Method::GET, "/scim/v2/Users", Some(&good), None)
        .await;
    assert_eq!(c.body["totalResults"], json!(1));

    let now = chrono::Utc::now().timestamp();
    let bad = [
        jwt_c(json!({"exp": now - 3600})),
        jwt_c(json!({"nbf": now + 3600})),
        jwt_c(json!({"aud": "someone-else"})),
        jwt_c(json!({"iss": "https://evil.example/"})),
        format!("{}x", &good[..good.len() - 1]),
        {
            // Signed with another key.
            let claims = json!({"iss": JWT_ISSUER_C, "aud": JWT_AUDIENCE_C, "exp": now + 300});
            jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(b"another-secret-of-at-least-32-bytes!!"),
            )
            .unwrap()
        },
    ];
    for token in bad {
        app.call(Method::GET, "/scim/v2/Users", Some(&token), None)
            .await
            .assert_error(401, None);
    }
}

both_backends!(filters_cover_the_grammar);
async fn filters_cover_the_grammar(db: TestDb) {
    let app = app(&db).await;
    let mut ids = std::collections::HashMap::new();
    for (name, given, title, ext, active, emp) in [
        ("alice@example.com", "Alice", "Engineer", "EXT-A", true, "1"),
        ("bob@example.org", "Bob", "Manager", "ext-b", false, "2"),
        ("carol@example.com", "Carol", "", "EXT-C", true, "3"),
    ] {
        let mut body = json!({
            "userName": name,
            "externalId": ext,
            "name": {"givenName": given, "familyName": "Test"},
            "active": active,
            "emails": [{"value": name, "type": "work", "primary": true}, {"value": format!("{given}@home.example"), "type": "home"}],
            ENTERPRISE: {"employeeNumber": emp, "department": if given == "Bob" { "Sales" } else { "R&D" }},
            AMEYO: {"maxAllowedLogins": emp.parse::<i64>().unwrap()}
        });
        if !title.is_empty() {
            body["title"] = json!(title);
        }
        let u = app.create_user(body).await;
        ids.insert(given, u["id"].as_str().unwrap().to_string());
    }
    let names = |f: &str| {
        let app = &app;
        let f = f.to_string();
        async move {
            let r = app
                .get(&format!(
                    "/scim/v2/Users?sortBy=userName&filter={}",
                    enc(&f)
                ))
                .await;
            assert_eq!(r.status, 200, "{f}: {}", r.text);
            let mut v: Vec<String> = r.body["Resources"]
                .as_array()
                .unwrap()
                .iter()
                .map(|u| u["name"]["givenName"].as_str().unwrap().to_string())
                .collect();
            assert_eq!(r.body["totalResults"], json!(v.len()), "{f}");
            v.sort();
            v.join(",")
        }
    };
    let cases = [
        (r#"userName eq "ALICE@example.com""#, "Alice"),
        (r#"USERNAME Eq "alice@example.com""#, "Alice"),
        (
            r#"urn:ietf:params:scim:schemas:core:2.0:User:userName eq "bob@example.org""#,
            "Bob",
        ),
        (r#"userName ne "alice@example.com""#, "Bob,Carol"),
        (r#"userName co "@EXAMPLE.""#, "Alice,Bob,Carol"),
        (r#"userName sw "car""#, "Carol"),
        (r#"userName ew ".org""#, "Bob"),
        (r#"userName gt "b""#, "Bob,Carol"),
        (r#"userName ge "bob@example.org""#, "Bob,Carol"),
        (r#"userName lt "b""#, "Alice"),
        (r#"userName le "bob@example.org""#, "Alice,Bob"),
        // externalId is caseExact
        (r#"externalId eq "EXT-A""#, "Alice"),
        (r#"externalId eq "ext-a""#, ""),
        (r#"externalId eq "ext-b""#, "Bob"),
        (r#"title pr"#, "Alice,Bob"),
        (r#"not (title pr)"#, "Carol"),
        (r#"active eq false"#, "Bob"),
        (r#"active eq true and title pr"#, "Alice"),
        (
            r#"title eq "Manager" or name.givenName eq "carol""#,
            "Bob,Carol",
        ),
        (
            r#"(title eq "Manager" or title eq "Engineer") and not (userName sw "bob")"#,
            "Alice",
        ),
        (r#"emails.value eq "CAROL@example.com""#, "Carol"),
        (r#"emails co "home.example""#, "Alice,Bob,Carol"),
        (
            r#"emails[type eq "work" and value co "example.org"]"#,
            "Bob",
        ),
        (
            r#"emails[type eq "home"].value eq "alice@home.example""#,
            "Alice",
        ),
        (
            r#"emails[type eq "work"].value eq "alice@home.example""#,
            "",
        ),
        (r#"emails.type eq "work""#, "Alice,Bob,Carol"),
        (
            r#"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department eq "sales""#,
            "Bob",
        ),
        (
            r#"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber pr"#,
            "Alice,Bob,Carol",
        ),
        (
            r#"urn:ietf:params:scim:schemas:extension:ameyo:2.0:User:maxAllowedLogins ge 2"#,
            "Bob,Carol",
        ),
        (
            r#"urn:ietf:params:scim:schemas:extension:ameyo:2.0:User:maxAllowedLogins lt 2"#,
            "Alice",
        ),
        (
            r#"meta.created gt "2000-01-01T00:00:00Z""#,
            "Alice,Bob,Carol",
        ),
        (r#"meta.lastModified lt "2000-01-01T00:00:00Z""#, ""),
        (r#"meta.resourceType eq "User""#, "Alice,Bob,Carol"),
        (r#"title eq null"#, "Carol"),
        (r#"userName eq "x\" or 1=1 --""#, ""),
        (r#"userName eq "%""#, ""),
        (r#"userName co "_""#, ""),
    ];
    for (f, want) in cases {
        assert_eq!(names(f).await, want, "filter {f}");
    }
    let alice = &ids["Alice"];
    assert_eq!(names(&format!("id eq \"{alice}\"")).await, "Alice");
    assert_eq!(
        names(&format!(
            "meta.version eq \"W/\\\"1\\\"\" and id eq \"{alice}\""
        ))
        .await,
        "Alice"
    );
    assert_eq!(names(r#"id eq "not-a-uuid""#).await, "");
}

both_backends!(bad_filters_are_400_invalid_filter_and_change_nothing);
async fn bad_filters_are_400_invalid_filter_and_change_nothing(db: TestDb) {
    let app = app(&db).await;
    app.create_named("keep@example.com").await;
    let before = app.snapshot().await;
    let deep = format!("{}userName eq \"x\"{}", "(".repeat(200), ")".repeat(200));
    let long = format!("userName eq \"{}\"", "a".repeat(10_000));
    let wide = vec!["userName eq \"x\""; 500].join(" or ");
    let hostile = [
        "userName eq",
        "userName eq 'x'",
        "userName eq \"x\"; DROP TABLE users; --",
        "userName eq \"x\" OR 1=1",
        "userName ) or (1=1",
        "nosuchattribute eq \"x\"",
        "name eq \"x\"",
        "active gt true",
        "password eq \"x\"",
        "emails[type eq \"work\"",
        "emails[value eq \"a\" and emails[value eq \"b\"]]",
        "userName eq \"unterminated",
        "meta.created gt \"last tuesday\"",
        "meta.location eq \"x\"",
        "\u{0}",
        deep.as_str(),
        long.as_str(),
        wide.as_str(),
    ];
    for f in hostile {
        let r = app.get(&format!("/scim/v2/Users?filter={}", enc(f))).await;
        r.assert_error(400, Some("invalidFilter"));
        let r = app
            .post("/scim/v2/Users/.search", json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"], "filter": f}))
            .await;
        r.assert_error(400, Some("invalidFilter"));
    }
    assert_eq!(app.snapshot().await, before);
    // The table is still there and intact.
    assert_eq!(
        app.get("/scim/v2/Users").await.body["totalResults"],
        json!(1)
    );
}

both_backends!(paging_sorting_and_count);
async fn paging_sorting_and_count(db: TestDb) {
    let app = app(&db).await;
    for i in 0..25 {
        app.create_user(json!({"userName": format!("user{i:02}@example.com"), "displayName": format!("{}", 100 - i)}))
            .await;
    }
    let page = |q: &str| {
        let app = &app;
        let q = q.to_string();
        async move {
            let r = app.get(&format!("/scim/v2/Users?{q}")).await;
            assert_eq!(r.status, 200, "{q}: {}", r.text);
            r.body
        }
    };
    let p = page("startIndex=1&count=10&sortBy=userName").await;
    assert_eq!(p["totalResults"], json!(25));
    assert_eq!(p["itemsPerPage"], json!(10));
    assert_eq!(p["startIndex"], json!(1));
    assert_eq!(p["Resources"][0]["userName"], json!("user00@example.com"));
    let p = page("startIndex=21&count=10&sortBy=userName").await;
    assert_eq!(p["itemsPerPage"], json!(5));
    assert_eq!(p["Resources"][4]["userName"], json!("user24@example.com"));
    let p = page("startIndex=26&count=10").await;
    assert_eq!(p["totalResults"], json!(25));
    assert_eq!(p["itemsPerPage"], json!(0));
    assert_eq!(p["Resources"], json!([]));
    // count=0: the total only
    let p = page("count=0").await;
    assert_eq!(p["totalResults"], json!(25));
    assert_eq!(p["Resources"], json!([]));
    // out-of-range values are clamped as RFC 7644 §3.4.2.4 says
    let p = page("startIndex=0&count=-5").await;
    assert_eq!(p["startIndex"], json!(1));
    assert_eq!(p["itemsPerPage"], json!(0));
    let p = page("count=100000").await;
    assert_eq!(p["itemsPerPage"], json!(25));
    // descending
    let p = page("sortBy=userName&sortOrder=descending&count=1").await;
    assert_eq!(p["Resources"][0]["userName"], json!("user24@example.com"));
    // sort by another attribute (displayName is a string: "100" < "76" < "99")
    let p = page("sortBy=displayName&count=2").await;
    assert_eq!(p["Resources"][0]["displayName"], json!("100"));
    assert_eq!(p["Resources"][1]["displayName"], json!("76"));
    // the default order is stable: walking pages visits everyone once
    let mut seen = std::collections::HashSet::new();
    for start in [1, 8, 15, 22] {
        let p = page(&format!("startIndex={start}&count=7")).await;
        for u in p["Resources"].as_array().unwrap() {
            assert!(seen.insert(u["id"].as_str().unwrap().to_string()));
        }
    }
    assert_eq!(seen.len(), 25);
    // bad paging parameters
    for q in [
        "startIndex=abc",
        "count=1.5",
        "sortOrder=sideways",
        "sortBy=nosuch",
        "sortBy=name",
    ] {
        app.get(&format!("/scim/v2/Users?{q}"))
            .await
            .assert_error(400, Some("invalidValue"));
    }
}

both_backends!(max_page_size_is_advertised_and_enforced);
async fn max_page_size_is_advertised_and_enforced(db: TestDb) {
    let mut s = settings();
    s.scim.max_page_size = 3;
    s.scim.default_page_size = 2;
    let app = app_with(&db, s).await;
    for i in 0..5 {
        app.create_named(&format!("p{i}@example.com")).await;
    }
    let spc = app.get("/scim/v2/ServiceProviderConfig").await;
    assert_eq!(spc.body["filter"]["maxResults"], json!(3));
    assert_eq!(
        app.get("/scim/v2/Users").await.body["itemsPerPage"],
        json!(2)
    );
    assert_eq!(
        app.get("/scim/v2/Users?count=50").await.body["itemsPerPage"],
        json!(3)
    );
}

both_backends!(search_endpoint_matches_get);
async fn search_endpoint_matches_get(db: TestDb) {
    let app = app(&db).await;
    app.create_user(full_user("s1@example.com")).await;
    app.create_user(full_user("s2@example.com")).await;
    for uri in ["/scim/v2/Users/.search", "/scim/v2/.search"] {
        let r = app
            .post(
                uri,
                json!({
                    "schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
                    "filter": "userName sw \"s\"",
                    "sortBy": "userName",
                    "sortOrder": "descending",
                    "startIndex": 1,
                    "count": 1,
                    "attributes": ["userName", "name.familyName"]
                }),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body["totalResults"], json!(2));
        let u = &r.body["Resources"][0];
        assert_eq!(u["userName"], json!("s2@example.com"));
        assert_eq!(u["name"], json!({"familyName": "Hopper"}));
        assert!(u.get("emails").is_none() && u.get("meta").is_none());
        assert!(u.get("id").is_some(), "id is always returned");
    }
    app.post("/scim/v2/Users/.search", json!({"count": "many"}))
        .await
        .assert_error(400, Some("invalidValue"));
}

both_backends!(attributes_and_excluded_attributes);
async fn attributes_and_excluded_attributes(db: TestDb) {
    let app = app(&db).await;
    let id = app.create_user(full_user("proj@example.com")).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = app
        .get(&format!(
            "/scim/v2/Users/{id}?attributes=userName,emails.value,{ENTERPRISE}:department"
        ))
        .await;
    assert_eq!(
        r.body,
        json!({
            "schemas": [USER_SCHEMA, ENTERPRISE],
            "id": id,
            "userName": "proj@example.com",
            "emails": [{"value": "proj@example.com"}, {"value": "grace@home.example"}],
            ENTERPRISE: {"department": "Navy"}
        })
    );
    let r = app
        .get(&format!(
            "/scim/v2/Users/{id}?excludedAttributes=emails,name.givenName,meta,id,{AMEYO}"
        ))
        .await;
    assert!(r.body.get("emails").is_none());
    assert!(r.body.get("meta").is_none());
    assert_eq!(r.body["id"], json!(id), "id cannot be excluded");
    assert_eq!(
        r.body["name"],
        json!({"familyName": "Hopper", "formatted": "Grace Hopper"})
    );
    assert_eq!(r.body["schemas"], json!([USER_SCHEMA, ENTERPRISE]));
    let list = app.get("/scim/v2/Users?attributes=displayName").await;
    assert_eq!(
        list.body["Resources"][0],
        json!({"schemas": [USER_SCHEMA], "id": id, "displayName": "Grace Hopper"})
    );
    // on writes too
    let r = app
        .patch(
            &format!("/scim/v2/Users/{id}?attributes=title"),
            json!({"Operations": [{"op": "replace", "path": "title", "value": "Commodore"}]}),
        )
        .await;
    assert_eq!(
        r.body,
        json!({"schemas": [USER_SCHEMA], "id": id, "title": "Commodore"})
    );
}

both_backends!(put_replaces_and_ignores_read_only_attributes);
async fn put_replaces_and_ignores_read_only_attributes(db: TestDb) {
    let app = app(&db).await;
    let created = app.create_user(full_user("put@example.com")).await;
    let id = created["id"].as_str().unwrap();
    let r = app
        .put(
            &format!("/scim/v2/Users/{id}"),
            json!({
                "schemas": [USER_SCHEMA],
                "id": "11111111-1111-1111-1111-111111111111",
                "meta": {"created": "1999-01-01T00:00:00Z", "version": "W/\"99\""},
                "userName": "put@example.com",
                "displayName": "Replaced",
                "groups": [{"value": "admins"}]
            }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["id"], json!(id));
    assert_eq!(r.body["displayName"], json!("Replaced"));
    assert_eq!(r.body["meta"]["created"], created["meta"]["created"]);
    assert_eq!(r.body["meta"]["version"], json!("W/\"2\""));
    // Full replace: what was not sent is gone.
    for gone in [
        "name",
        "emails",
        "title",
        ENTERPRISE,
        AMEYO,
        "groups",
        "externalId",
    ] {
        assert!(
            r.body.get(gone).is_none(),
            "{gone} should be gone: {}",
            r.text
        );
    }
    assert_eq!(r.body["schemas"], json!([USER_SCHEMA]));
    assert!(r.body["meta"]["lastModified"].as_str() >= created["meta"]["lastModified"].as_str());
}

both_backends!(etags_and_preconditions);
async fn etags_and_preconditions(db: TestDb) {
    let app = app(&db).await;
    let id = app.create_named("etag@example.com").await;
    let uri = format!("/scim/v2/Users/{id}");
    let with = |m: Method, h: (&'static str, &'static str), body: Option<Value>| {
        let mut req = Request::builder()
            .method(m)
            .uri(uri.clone())
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN_A}"))
            .header(h.0, h.1);
        let body = match body {
            Some(b) => {
                req = req.header(header::CONTENT_TYPE, "application/scim+json");
                Body::from(b.to_string())
            }
            None => Body::empty(),
        };
        req.body(body).unwrap()
    };
    let patch = json!({"Operations": [{"op": "replace", "path": "title", "value": "t"}]});
    // If-None-Match with the current tag: 304
    let r = app
        .send(with(Method::GET, ("if-none-match", "W/\"1\""), None))
        .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert_eq!(r.header("etag"), Some("W/\"1\""));
    // stale If-Match: 412 and nothing changes
    let before = app.snapshot().await;
    app.send(with(
        Method::PATCH,
        ("if-match", "W/\"7\""),
        Some(patch.clone()),
    ))
    .await
    .assert_error(412, None);
    app.send(with(
        Method::PUT,
        ("if-match", "\"7\""),
        Some(json!({"userName": "etag@example.com", "title": "x"})),
    ))
    .await
    .assert_error(412, None);
    app.send(with(Method::DELETE, ("if-match", "W/\"7\""), None))
        .await
        .assert_error(412, None);
    assert_eq!(app.snapshot().await, before);
    // current If-Match: applies
    let r = app
        .send(with(
            Method::PATCH,
            ("if-match", "W/\"1\""),
            Some(patch.clone()),
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("etag"), Some("W/\"2\""));
    let r = app
        .send(with(
            Method::PATCH,
            ("if-match", "*"),
            Some(json!({"Operations": [{"op": "replace", "path": "title", "value": "u"}]})),
        ))
        .await;
    assert_eq!(r.header("etag"), Some("W/\"3\""));
    let r = app
        .send(with(Method::DELETE, ("if-match", "W/\"3\""), None))
        .await;
    assert_eq!(r.status, 204);
}

both_backends!(delete_removes_the_user_for_scim_at_once);
async fn delete_removes_the_user_for_scim_at_once(db: TestDb) {
    let app = app(&db).await;
    let id = app.create_named("gone@example.com").await;
    let r = app.delete(&format!("/scim/v2/Users/{id}")).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(r.text.is_empty());
    app.get(&format!("/scim/v2/Users/{id}"))
        .await
        .assert_error(404, None);
    app.delete(&format!("/scim/v2/Users/{id}"))
        .await
        .assert_error(404, None);
    app.patch(
        &format!("/scim/v2/Users/{id}"),
        json!({"Operations": [{"op": "replace", "path": "title", "value": "x"}]}),
    )
    .await
    .assert_error(404, None);
    let list = app
        .get(&format!(
            "/scim/v2/Users?filter={}",
            enc("userName eq \"gone@example.com\"")
        ))
        .await;
    assert_eq!(list.body["totalResults"], json!(0));
    // The userName is free again; the new user has a new id.
    let again = app.create_named("gone@example.com").await;
    assert_ne!(again, id);
}

both_backends!(http_level_errors_are_scim_errors);
async fn http_level_errors_are_scim_errors(db: TestDb) {
    let app = app(&db).await;
    app.get("/scim/v2/Devices").await.assert_error(404, None);
    app.get("/nowhere").await.assert_error(404, None);
    app.call(Method::DELETE, "/scim/v2/Users", Some(TOKEN_A), None)
        .await
        .assert_error(405, None);
    app.call(
        Method::POST,
        "/scim/v2/ServiceProviderConfig",
        Some(TOKEN_A),
        Some(json!({})),
    )
    .await
    .assert_error(405, None);
    let before = app.snapshot().await;
    let raw = |ct: &'static str, body: Vec<u8>| {
        Request::post("/scim/v2/Users")
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN_A}"))
            .header(header::CONTENT_TYPE, ct)
            .body(Body::from(body))
            .unwrap()
    };
    for bad in [&b"{"[..], b"{\"userName\": }", b"null x", b"", b"\xff\xfe"] {
        app.send(raw("application/scim+json", bad.to_vec()))
            .await
            .assert_error(400, Some("invalidSyntax"));
    }
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    app.send(raw("application/json", deep.into_bytes()))
        .await
        .assert_error(400, Some("invalidSyntax"));
    let big = format!(
        "{{\"userName\": \"big\", \"displayName\": \"{}\"}}",
        "x".repeat(1024 * 1024)
    );
    app.send(raw("application/scim+json", big.into_bytes()))
        .await
        .assert_error(413, None);
    app.send(raw("text/plain", br#"{"userName":"x"}"#.to_vec()))
        .await
        .assert_error(415, None);
    assert_eq!(app.snapshot().await, before, "nothing was written");
}

both_backends!(bad_patches_change_nothing);
async fn bad_patches_change_nothing(db: TestDb) {
    let app = app(&db).await;
    let id = app.create_user(full_user("patch@example.com")).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let uri = format!("/scim/v2/Users/{id}");
    let before = app.snapshot().await;
    let ok = json!({"op": "replace", "path": "title", "value": "applied?"});
    let cases = [
        (
            json!({"Operations": [ok, {"op": "replace", "path": "nosuch", "value": 1}]}),
            "invalidPath",
        ),
        (
            json!({"Operations": [ok, {"op": "replace", "path": "emails[type eq \"work\"", "value": 1}]}),
            "invalidPath",
        ),
        (
            json!({"Operations": [ok, {"op": "replace", "path": "name[givenName eq \"x\"]", "value": 1}]}),
            "invalidPath",
        ),
        (
            json!({"Operations": [ok, {"op": "replace", "path": "emails[type eq \"x\" or type eq \"y\"].value", "value": "v"}]}),
            "noTarget",
        ),
        (json!({"Operations": [ok, {"op": "remove"}]}), "noTarget"),
        (
            json!({"Operations": [ok, {"op": "replace", "path": "id", "value": "x"}]}),
            "mutability",
        ),
        (
            json!({"Operations": [ok, {"op": "add", "path": "groups", "value": [{"value": "g"}]}]}),
            "mutability",
        ),
        (
            json!({"Operations": [ok, {"op": "replace", "path": "active", "value": "perhaps"}]}),
            "invalidValue",
        ),
        (
            json!({"Operations": [ok, {"op": "remove", "path": "userName"}]}),
            "invalidValue",
        ),
        (
            json!({"Operations": [ok, {"op": "copy", "path": "title"}]}),
            "invalidSyntax",
        ),
        (json!({"Operations": []}), "invalidSyntax"),
        (json!({"Operations": "replace"}), "invalidSyntax"),
        (
            json!({"schemas": ["urn:wrong"], "Operations": [ok]}),
            "invalidSyntax",
        ),
        (
            json!({"Operations": [ok, {"op": "add", "value": 5}]}),
            "invalidValue",
        ),
    ];
    for (body, scim_type) in cases {
        let r = app.patch(&uri, body.clone()).await;
        assert_eq!(r.body["scimType"], json!(scim_type), "{body}: {}", r.text);
        r.assert_error(400, Some(scim_type));
    }
    assert_eq!(
        app.snapshot().await,
        before,
        "a failed PATCH applies none of its operations"
    );
}

both_backends!(concurrent_patches_to_one_user_all_apply);
async fn concurrent_patches_to_one_user_all_apply(db: TestDb) {
    let app = app(&db).await;
    let id = app.create_named("busy@example.com").await;
    let uri = format!("/scim/v2/Users/{id}");
    let mut tasks = Vec::new();
    for i in 0..24 {
        let router = app.router.clone();
        let uri = uri.clone();
        tasks.push(tokio::spawn(async move {
            let body = json!({"Operations": [{"op": "add", "path": "emails", "value": [{"value": format!("e{i}@example.com")}]}]});
            let req = Request::patch(uri)
                .header(header::AUTHORIZATION, format!("Bearer {TOKEN_A}"))
                .header(header::CONTENT_TYPE, "application/scim+json")
                .body(Body::from(body.to_string()))
                .unwrap();
            tower::ServiceExt::oneshot(router, req).await.unwrap().status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    let u = app.get(&uri).await;
    assert_eq!(
        u.body["emails"].as_array().unwrap().len(),
        24,
        "no update was lost"
    );
    assert_eq!(u.header("etag"), Some("W/\"25\""));
}

both_backends!(discovery_documents);
async fn discovery_documents(db: TestDb) {
    let app = app(&db).await;
    let spc = app.get("/scim/v2/ServiceProviderConfig").await;
    assert_eq!(spc.status, 200);
    assert_eq!(spc.body["patch"]["supported"], json!(true));
    assert_eq!(spc.body["bulk"]["supported"], json!(false));
    assert_eq!(spc.body["filter"]["supported"], json!(true));
    assert_eq!(spc.body["etag"]["supported"], json!(true));
    assert_eq!(spc.body["sort"]["supported"], json!(true));
    assert_eq!(
        spc.body["authenticationSchemes"][0]["type"],
        json!("oauthbearertoken")
    );

    let schemas = app.get("/scim/v2/Schemas").await;
    let ids: Vec<&str> = schemas.body["Resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            USER_SCHEMA,
            "urn:ietf:params:scim:schemas:core:2.0:Group",
            ENTERPRISE,
            AMEYO
        ]
    );
    let ameyo = app.get(&format!("/scim/v2/Schemas/{AMEYO}")).await;
    let attrs: Vec<&str> = ameyo.body["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        attrs,
        [
            "userType",
            "contactCenterId",
            "loginPolicy",
            "maxAllowedLogins",
            "defaultReady"
        ]
    );
    let user = app.get(&format!("/scim/v2/Schemas/{USER_SCHEMA}")).await;
    let password = user.body["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "password")
        .unwrap();
    assert_eq!(password["returned"], json!("never"));
    assert_eq!(password["mutability"], json!("writeOnly"));
    app.get("/scim/v2/Schemas/urn:nope")
        .await
        .assert_error(404, None);

    let rts = app.get("/scim/v2/ResourceTypes").await;
    assert_eq!(rts.body["totalResults"], json!(2));
    assert_eq!(rts.body["Resources"][0]["endpoint"], json!("/Users"));
    assert_eq!(rts.body["Resources"][1]["endpoint"], json!("/Groups"));
    let rt = app.get("/scim/v2/ResourceTypes/User").await;
    assert_eq!(rt.body["schemaExtensions"][0]["schema"], json!(ENTERPRISE));
    let rt = app.get("/scim/v2/ResourceTypes/Group").await;
    assert_eq!(rt.status, 200, "{}", rt.text);
    assert_eq!(rt.body["endpoint"], json!("/Groups"));
    app.get("/scim/v2/ResourceTypes/Device")
        .await
        .assert_error(404, None);
}

both_backends!(a_request_past_its_deadline_gets_a_scim_503);
async fn a_request_past_its_deadline_gets_a_scim_503(db: TestDb) {
    let settings = settings();
    let backend = db.open(&settings).await;
    // Every connection of the store is taken, so the request cannot finish in time.
    let held = hold_every_connection(&backend).await;
    let app = app_over(backend, &settings, std::time::Duration::from_millis(1));
    let r = app.get("/scim/v2/Users").await;
    r.assert_error(503, None);
    assert_eq!(r.header("retry-after"), Some("1"));
    drop(held);
}

both_backends!(request_ids_are_honoured_or_made_and_echoed);
async fn request_ids_are_honoured_or_made_and_echoed(db: TestDb) {
    let app = app(&db).await;
    let with_id = |id: &str| {
        Request::get("/scim/v2/Users")
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN_A}"))
            .header("x-request-id", id)
            .body(Body::empty())
            .unwrap()
    };
    let r = app.send(with_id("okta-7f3a-42")).await;
    assert_eq!(r.header("x-request-id"), Some("okta-7f3a-42"));
    // Absent, too long or with spaces: a fresh UUID instead.
    for bad in [None, Some("x".repeat(200)), Some("has space".to_string())] {
        let r = match &bad {
            Some(id) => app.send(with_id(id)).await,
            None => app.get("/scim/v2/Users").await,
        };
        let got = r.header("x-request-id").expect("always echoed");
        assert!(uuid::Uuid::parse_str(got).is_ok(), "{bad:?} -> {got}");
    }
    // Errors carry it too.
    let r = app
        .send(
            Request::get("/nowhere")
                .header("x-request-id", "err-1")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.header("x-request-id"), Some("err-1"));
}
