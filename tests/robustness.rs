//! Failure modes at the edges: a database that drops us, clients that send odd methods,
//! a rotated encryption key, and IdPs that unassign `active`. The transient database
//! errors and the shared session are PostgreSQL's; the rest runs on both stores.

mod common;

use std::sync::Arc;
use std::time::Duration;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use ameyo_scim::ameyo::client::SessionStore;
use ameyo_scim::store::password::PasswordCipher;
use ameyo_scim::store::session::PgSessionStore;
use axum::body::Body;
use axum::http::{Method, Request};
use common::*;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use sqlx::postgres::PgPoolOptions;

const LIMIT: Duration = Duration::from_secs(30);

// --- transient database errors --------------------------------------------------

/// The app over its own PostgreSQL pool.
fn app_on_pool(pool: sqlx::PgPool) -> TestApp {
    let settings = settings();
    let cipher = PasswordCipher::from_settings(&settings).unwrap();
    let backend = ameyo_scim::store::backend::Backend::postgres(pool, cipher);
    app_over(backend, &settings, Duration::from_secs(30))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_server_ended_answers_503() {
    let db = TestDb::postgres().await;
    let pool = db.pg_pool();
    // One connection, not pinged before use: the request runs on the very connection
    // the server is about to end, as it does when a failover catches a query in flight.
    let options = (*pool.connect_options()).clone();
    let app_pool = PgPoolOptions::new()
        .max_connections(1)
        .test_before_acquire(false)
        .connect_with(options)
        .await
        .unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&app_pool)
        .await
        .unwrap();
    // The pool checks a connection as it takes it back, in a task of its own; wait for
    // that, or the check could meet the ended session and replace it with a fresh one.
    let started = std::time::Instant::now();
    while app_pool.num_idle() != 1 {
        assert!(started.elapsed() < LIMIT, "the connection never came back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let app = app_on_pool(app_pool);
    // The server ends the session (57P01, admin_shutdown) and, with a timeout, waits
    // until the backend is gone, so the request cannot slip in before.
    let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1, 10000)")
        .bind(pid)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(ended);

    let r = app.get("/scim/v2/Users").await;
    r.assert_error(503, None);
    assert_eq!(r.header("retry-after"), Some("5"), "{:?}", r.headers);
    assert!(!r.text.contains("57P01"), "nothing internal: {}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_timeout_answers_503() {
    let db = TestDb::postgres().await;
    let pool = db.pg_pool();
    // A migration (say) holds the users table; our statement gives up waiting.
    let options = (*pool.connect_options())
        .clone()
        .options([("lock_timeout", "100ms")]);
    let app_pool = PgPoolOptions::new().connect_with(options).await.unwrap();
    let app = app_on_pool(app_pool);
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *holder)
        .await
        .unwrap();

    let r = app.get("/scim/v2/Users").await;
    r.assert_error(503, None);
    assert_eq!(r.header("retry-after"), Some("5"), "{:?}", r.headers);
    holder.rollback().await.unwrap();
    assert_eq!(app.get("/scim/v2/Users").await.status, 200);
}

// --- the method label -----------------------------------------------------------

both_backends!(unknown_methods_share_one_metrics_label);
async fn unknown_methods_share_one_metrics_label(db: TestDb) {
    let app = app(&db).await;
    for method in ["FOO1", "FOO2", "XYZZY"] {
        for uri in ["/scim/v2/Users", "/nowhere"] {
            let req = Request::builder()
                .method(Method::from_bytes(method.as_bytes()).unwrap())
                .uri(uri)
                .header("authorization", format!("Bearer {TOKEN_A}"))
                .body(Body::empty())
                .unwrap();
            let r = app.send(req).await;
            assert!(r.status.is_client_error(), "{method} {uri}: {}", r.status);
        }
    }
    assert_eq!(app.get("/scim/v2/Users").await.status, 200);

    let text = ameyo_scim::telemetry::metrics::install().render();
    let http: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("ameyo_scim_http_request"))
        .collect();
    for method in ["FOO1", "FOO2", "XYZZY"] {
        assert!(
            !http.iter().any(|l| l.contains(method)),
            "{method} became a label:\n{}",
            http.join("\n")
        );
    }
    assert!(
        http.iter().any(|l| l.contains("method=\"other\"")),
        "{}",
        http.join("\n")
    );
    assert!(
        http.iter().any(|l| l.contains("method=\"GET\"")),
        "{}",
        http.join("\n")
    );
}

// --- key rotation ---------------------------------------------------------------

/// Another key, base64 of 32 bytes.
const NEW_KEY: &str = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODk=";

fn key(b64: &str) -> [u8; 32] {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
        .try_into()
        .unwrap()
}

/// Seal as releases before key ids did: `nonce || ciphertext`.
fn legacy_seal(key: &[u8; 32], aad: &[u8], secret: &str) -> Vec<u8> {
    let nonce = [5u8; 12];
    let ct = Aes256Gcm::new(key.into())
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: secret.as_bytes(),
                aad,
            },
        )
        .unwrap();
    [nonce.as_slice(), &ct].concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_sealed_under_the_old_key_is_adopted_after_rotation() {
    let db = TestDb::postgres().await;
    let pool = db.pg_pool();
    let old = key(PASSWORD_KEY);
    let new = key(NEW_KEY);
    let before = PgSessionStore::new(pool.clone(), PasswordCipher::new(&old), "a", "p1");
    assert!(before.begin_login(0).await.unwrap());
    let generation = before
        .publish(&SecretString::from("session-before-rotation"))
        .await
        .unwrap();

    let rotated = PgSessionStore::new(
        pool.clone(),
        PasswordCipher::with_previous(&new, &[old]),
        "a",
        "p2",
    );
    let (session, seen) = rotated.load().await.unwrap();
    assert_eq!(
        session.expect("adopted").expose_secret(),
        "session-before-rotation"
    );
    assert_eq!(seen, generation);
    // Without the previous key it would be lost (and the service would log in again).
    let forgetful = PgSessionStore::new(pool.clone(), PasswordCipher::new(&new), "a", "p3");
    assert!(forgetful.load().await.unwrap().0.is_none());

    // A session stored in the format before key ids is adopted too.
    sqlx::query("UPDATE ameyo_sessions SET sealed = $2 WHERE tenant_id = $1")
        .bind("a")
        .bind(legacy_seal(&old, b"ameyo-session:a", "legacy-session"))
        .execute(&pool)
        .await
        .unwrap();
    let (session, _) = rotated.load().await.unwrap();
    assert_eq!(session.expect("adopted").expose_secret(), "legacy-session");

    // The next login seals with the new key: the old one can be dropped after it.
    assert!(rotated.begin_login(seen).await.unwrap());
    rotated
        .publish(&SecretString::from("session-after-rotation"))
        .await
        .unwrap();
    let (session, _) = forgetful.load().await.unwrap();
    assert_eq!(
        session.expect("new key").expose_secret(),
        "session-after-rotation"
    );
}

both_backends!(rotating_the_password_key_loses_no_pending_password);
async fn rotating_the_password_key_loses_no_pending_password(db: TestDb) {
    let s = sync_app(&db).await;
    // Delivered under the old key: a session sealed with it is now in the database.
    s.app.create_named("first@example.com").await;
    s.drain(LIMIT).await;
    assert_eq!(s.emulator.login_count(), 1);
    // A password waits, sealed with the old key.
    s.app
        .create_user(json!({
            "schemas": [USER_SCHEMA],
            "userName": "second@example.com",
            "password": "Before-R0tation!"
        }))
        .await;

    // Restart with a new key, the old one kept as previous.
    let mut settings = sync_settings(&s.emulator_url());
    settings.sync.password_key = Some(NEW_KEY.to_string().into());
    settings.sync.previous_password_keys = vec![PASSWORD_KEY.to_string().into()];
    let worker = Arc::new(worker(&db.open(&settings).await, &settings));
    worker.run_until_idle().await.unwrap();

    assert_eq!(
        s.emulator.user_data("second@example.com").as_deref(),
        Some("Before-R0tation!")
    );
    assert_eq!(s.emulator.login_count(), 1, "the old session was adopted");
    let dead = db
        .int("SELECT count(*) FROM sync_state WHERE state <> 'done'", &[])
        .await;
    assert_eq!(dead, 0);
}

#[test]
fn previous_keys_come_from_the_environment_redacted() {
    let dir = std::env::temp_dir().join(format!("ameyo-scim-test-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[database]
url = "postgres://u@127.0.0.1/d"
[sync]
password_key = "{NEW_KEY}"
[[tenants]]
id = "a"
token_sha256 = ["{digest}"]
[tenants.ameyo]
base_url = "https://cc.example.test"
contact_center_id = 1
login_user = "admin"
login_password = "x"
"#,
            digest = ameyo_scim::http::auth::token_digest(TOKEN_A),
        ),
    )
    .unwrap();
    let run = |keys: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ameyo-scim"))
            .args(["check-config", "--config"])
            .arg(&config)
            .env("AMEYO_SCIM__SYNC__PREVIOUS_PASSWORD_KEYS", keys)
            .output()
            .unwrap()
    };

    let out = run(&format!("{PASSWORD_KEY}, {PASSWORD_KEY}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: toml::Value = toml::from_str(&stdout).unwrap();
    assert_eq!(
        shown["sync"]["previous_password_keys"],
        toml::Value::Array(vec!["REDACTED".into(), "REDACTED".into()]),
        "{stdout}"
    );
    assert!(!stdout.contains(&PASSWORD_KEY[..12]), "{stdout}");

    let out = run(&format!("{PASSWORD_KEY},c2hvcnQ="));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("sync.previous_password_keys[1]"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

// --- unassigning active ---------------------------------------------------------

async fn active_of(app: &TestApp, id: &str) -> (Value, bool) {
    let r = app.get(&format!("/scim/v2/Users/{id}")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let column = app
        .db
        .int(
            "SELECT count(*) FROM users WHERE id = $1 AND active",
            &[Arg::id(id)],
        )
        .await
        == 1;
    (r.body["active"].clone(), column)
}

fn ops(ops: Value) -> Value {
    json!({"schemas": [PATCH_OP], "Operations": ops})
}

both_backends!(unassigning_active_never_reactivates);
async fn unassigning_active_never_reactivates(db: TestDb) {
    let app = app(&db).await;
    let shapes = [
        json!([{"op": "remove", "path": "active"}]),
        json!([{"op": "replace", "path": "active", "value": null}]),
        json!([{"op": "replace", "value": {"active": null}}]),
    ];
    for (i, shape) in shapes.iter().enumerate() {
        // A deactivated user stays deactivated.
        let id = app.create_named(&format!("off{i}@example.com")).await;
        let uri = format!("/scim/v2/Users/{id}");
        let r = app
            .patch(
                &uri,
                ops(json!([{"op": "replace", "path": "active", "value": false}])),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let r = app.patch(&uri, ops(shape.clone())).await;
        assert_eq!(r.status, 200, "{shape}: {}", r.text);
        // Removed from the representation (RFC 7644 §3.5.2.2), and off for the bridge.
        assert_eq!(r.body.get("active"), None, "{shape}");
        assert_eq!(active_of(&app, &id).await, (Value::Null, false), "{shape}");
        // A later change of something else does not bring it back to life.
        let r = app
            .patch(
                &uri,
                ops(json!([{"op": "replace", "path": "displayName", "value": "Later"}])),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(active_of(&app, &id).await, (Value::Null, false), "{shape}");

        // An active user is deactivated.
        let id = app.create_named(&format!("on{i}@example.com")).await;
        let uri = format!("/scim/v2/Users/{id}");
        let r = app.patch(&uri, ops(shape.clone())).await;
        assert_eq!(r.status, 200, "{shape}: {}", r.text);
        assert_eq!(active_of(&app, &id).await, (Value::Null, false), "{shape}");
    }
}

both_backends!(put_without_active_keeps_the_current_state);
async fn put_without_active_keeps_the_current_state(db: TestDb) {
    let app = app(&db).await;
    let id = app
        .create_user(
            json!({"schemas": [USER_SCHEMA], "userName": "put@example.com", "active": false}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let uri = format!("/scim/v2/Users/{id}");
    for body in [
        json!({"schemas": [USER_SCHEMA], "userName": "put@example.com", "displayName": "P"}),
        json!({"schemas": [USER_SCHEMA], "userName": "put@example.com", "displayName": "Q", "active": null}),
    ] {
        let r = app.put(&uri, body.clone()).await;
        assert_eq!(r.status, 200, "{body}: {}", r.text);
        // Stored as sent; the user stays off.
        assert_eq!(active_of(&app, &id).await, (Value::Null, false), "{body}");
    }
    // What a PUT says still counts.
    let r = app
        .put(
            &uri,
            json!({"schemas": [USER_SCHEMA], "userName": "put@example.com", "active": true}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(active_of(&app, &id).await, (json!(true), true));
    // Nor does omitting it deactivate an active user.
    let r = app
        .put(
            &uri,
            json!({"schemas": [USER_SCHEMA], "userName": "put@example.com", "displayName": "R"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(active_of(&app, &id).await, (Value::Null, true));
    // POST without `active` creates an active user, as before.
    let id = app.create_named("post@example.com").await;
    assert!(active_of(&app, &id).await.1);
}
