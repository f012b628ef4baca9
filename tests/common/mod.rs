//! Shared test harness: the whole application router over a fresh database that
//! `#[sqlx::test]` creates for each test, driven in-process with `oneshot`.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use ameyo_scim::config::Settings;
use ameyo_scim::http::auth::token_digest;
use ameyo_scim::http::{AppState, router};
use ameyo_scim::store::PgStore;
use ameyo_scim::store::password::PasswordCipher;
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sqlx::PgPool;
use tower::ServiceExt;

pub const TOKEN_A: &str = "tenant-a-secret-token";
pub const TOKEN_A2: &str = "tenant-a-rotated-token";
pub const TOKEN_B: &str = "tenant-b-secret-token";
/// HS256 secret of tenant `c`, which authenticates with JWTs only.
pub const JWT_SECRET_C: &str = "tenant-c-shared-secret-at-least-32-bytes";
pub const JWT_ISSUER_C: &str = "https://idp.example.test/";
pub const JWT_AUDIENCE_C: &str = "ameyo-scim-c";

pub const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
pub const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
pub const AMEYO: &str = "urn:ietf:params:scim:schemas:extension:ameyo:2.0:User";
pub const PATCH_OP: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
pub const ERROR: &str = "urn:ietf:params:scim:api:messages:2.0:Error";

pub const PASSWORD_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
pub const AMEYO_ADMIN_PASSWORD: &str = "ameyo-admin-Pa55word";

/// Settings with three tenants: `a` (two tokens), `b` (one token), `c` (JWT only).
/// Their Ameyo is unreachable; see [`settings_for`] to point them at an emulator.
pub fn settings() -> Settings {
    settings_for("http://127.0.0.1:9")
}

/// The same tenants, with their Ameyo at `ameyo_url`.
pub fn settings_for(ameyo_url: &str) -> Settings {
    let text = format!(
        r#"
[server]
public_url = "https://scim.example.test"

[database]
url = "postgres://unused@127.0.0.1/unused"

[sync]
password_key = "{PASSWORD_KEY}"

[[tenants]]
id = "a"
token_sha256 = ["{a}", "{a2}"]
[tenants.ameyo]
base_url = "{ameyo_url}"
contact_center_id = 1
login_user = "admin"
login_password = "{AMEYO_ADMIN_PASSWORD}"

[[tenants]]
id = "b"
token_sha256 = ["{b}"]
[tenants.ameyo]
base_url = "{ameyo_url}"
contact_center_id = 2
login_user = "admin"
login_password = "{AMEYO_ADMIN_PASSWORD}"

[[tenants]]
id = "c"
[tenants.jwt]
issuer = "{JWT_ISSUER_C}"
audience = "{JWT_AUDIENCE_C}"
algorithms = ["HS256"]
hs_secret = "{JWT_SECRET_C}"
[tenants.ameyo]
base_url = "{ameyo_url}"
contact_center_id = 3
login_user = "admin"
login_password = "{AMEYO_ADMIN_PASSWORD}"
"#,
        a = token_digest(TOKEN_A),
        a2 = token_digest(TOKEN_A2),
        b = token_digest(TOKEN_B),
    );
    Settings::from_toml(&text).expect("test settings are valid")
}

pub const BASE: &str = "https://scim.example.test/scim/v2";

pub struct TestApp {
    pub router: Router,
    pub pool: PgPool,
}

/// A response, its body parsed as JSON (`Value::Null` when empty).
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Assert this is a SCIM error with the given status and scimType.
    #[track_caller]
    pub fn assert_error(&self, status: u16, scim_type: Option<&str>) {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.text);
        assert_eq!(self.body["schemas"], json!([ERROR]), "body: {}", self.text);
        assert_eq!(
            self.body["status"],
            json!(status.to_string()),
            "body: {}",
            self.text
        );
        assert_eq!(
            self.body.get("scimType").and_then(Value::as_str),
            scim_type,
            "body: {}",
            self.text
        );
        assert!(
            self.header("content-type")
                .unwrap_or("")
                .starts_with("application/scim+json"),
            "content type of {}",
            self.text
        );
    }
}

pub async fn app(pool: PgPool) -> TestApp {
    app_with(pool, settings()).await
}

pub async fn app_with(pool: PgPool, settings: Settings) -> TestApp {
    ameyo_scim::telemetry::metrics::install();
    let key = settings.password_key().expect("key");
    let store = PgStore::new(pool.clone(), PasswordCipher::new(&key));
    let tenants = ameyo_scim::tenants::build(&settings, &|_| None).expect("tenants");
    let state = AppState::new(&settings, &tenants, Arc::new(store)).expect("state");
    TestApp {
        router: router(state, Duration::from_secs(30)),
        pool,
    }
}

impl TestApp {
    /// Send any request.
    pub async fn send(&self, req: Request<Body>) -> Resp {
        let resp = self.router.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let text = String::from_utf8_lossy(&bytes).to_string();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        Resp {
            status,
            headers,
            body,
            text,
        }
    }

    /// A request with a bearer token (if any) and a JSON body (if any).
    pub async fn call(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Resp {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = match body {
            Some(b) => req
                .header(header::CONTENT_TYPE, "application/scim+json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        };
        self.send(req.expect("request")).await
    }

    pub async fn get(&self, uri: &str) -> Resp {
        self.call(Method::GET, uri, Some(TOKEN_A), None).await
    }
    pub async fn post(&self, uri: &str, body: Value) -> Resp {
        self.call(Method::POST, uri, Some(TOKEN_A), Some(body))
            .await
    }
    pub async fn put(&self, uri: &str, body: Value) -> Resp {
        self.call(Method::PUT, uri, Some(TOKEN_A), Some(body)).await
    }
    pub async fn patch(&self, uri: &str, body: Value) -> Resp {
        self.call(Method::PATCH, uri, Some(TOKEN_A), Some(body))
            .await
    }
    pub async fn delete(&self, uri: &str) -> Resp {
        self.call(Method::DELETE, uri, Some(TOKEN_A), None).await
    }

    /// Create a user in tenant `a`; returns its JSON (with `id`).
    pub async fn create_user(&self, body: Value) -> Value {
        let r = self.post("/scim/v2/Users", body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        r.body
    }

    /// Create a minimal user by userName in tenant `a`; returns its id.
    pub async fn create_named(&self, user_name: &str) -> String {
        let u = self
            .create_user(json!({"schemas": [USER_SCHEMA], "userName": user_name}))
            .await;
        u["id"].as_str().expect("id").to_string()
    }

    /// Everything the store holds, for "nothing changed" assertions.
    pub async fn snapshot(&self) -> Value {
        let users: Option<Value> =
            sqlx::query_scalar("SELECT jsonb_agg(to_jsonb(u) ORDER BY u.id) FROM users u")
                .fetch_one(&self.pool)
                .await
                .expect("snapshot users");
        let sync: Option<Value> = sqlx::query_scalar(
            "SELECT jsonb_agg(to_jsonb(s) ORDER BY s.user_id) FROM sync_state s",
        )
        .fetch_one(&self.pool)
        .await
        .expect("snapshot sync");
        json!({"users": users, "sync": sync})
    }
}

/// Percent-encode a filter for a query string.
pub fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A signed HS256 JWT for tenant `c` with the given claims merged over valid defaults.
pub fn jwt_c(overrides: Value) -> String {
    let now = chrono::Utc::now().timestamp();
    let mut claims = json!({
        "iss": JWT_ISSUER_C,
        "aud": JWT_AUDIENCE_C,
        "sub": "okta-provisioning",
        "iat": now,
        "exp": now + 300,
    });
    if let (Some(c), Value::Object(o)) = (claims.as_object_mut(), overrides) {
        c.extend(o);
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET_C.as_bytes()),
    )
    .expect("sign")
}

/// The app plus a delivery worker, both pointed at an in-process Ameyo emulator.
pub struct SyncApp {
    pub app: TestApp,
    pub worker: std::sync::Arc<ameyo_scim::sync::Worker>,
    pub emulator: ameyo_emulator::Emulator,
    pub emulator_addr: std::net::SocketAddr,
}

/// Fast retries so tests can watch a backoff play out.
pub fn sync_settings(ameyo_url: &str) -> Settings {
    let mut s = settings_for(ameyo_url);
    s.sync.retry_base_ms = 20;
    s.sync.retry_cap_secs = 1;
    s.sync.concurrency = 8;
    s
}

pub async fn sync_app(pool: PgPool) -> SyncApp {
    sync_app_with(pool, Default::default(), |_| {}).await
}

pub async fn sync_app_with(
    pool: PgPool,
    options: ameyo_emulator::EmulatorOptions,
    tweak: impl FnOnce(&mut Settings),
) -> SyncApp {
    ameyo_scim::telemetry::metrics::install();
    let (emulator, addr) = ameyo_emulator::Emulator::spawn(options)
        .await
        .expect("emulator");
    let mut settings = sync_settings(&format!("http://{addr}"));
    tweak(&mut settings);
    let key = settings.password_key().expect("key");
    let worker = ameyo_scim::sync::Worker::new(&settings, pool.clone(), PasswordCipher::new(&key))
        .expect("worker");
    SyncApp {
        app: app_with(pool, settings).await,
        worker: std::sync::Arc::new(worker),
        emulator,
        emulator_addr: addr,
    }
}

impl SyncApp {
    pub fn emulator_url(&self) -> String {
        format!("http://{}", self.emulator_addr)
    }

    /// Deliver until every user is done or dead (waiting out retry delays), or panic
    /// after `limit`.
    pub async fn drain(&self, limit: Duration) {
        let started = std::time::Instant::now();
        loop {
            self.worker.run_until_idle().await.expect("deliveries");
            let open: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM sync_state WHERE state IN ('pending', 'leased')",
            )
            .fetch_one(&self.app.pool)
            .await
            .expect("count");
            if open == 0 {
                return;
            }
            assert!(
                started.elapsed() < limit,
                "{open} users still not delivered after {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// State, attempts and last error of a user's outbox row.
    pub async fn sync_row(&self, id: &str) -> (String, i32, Option<String>) {
        sqlx::query_as(
            "SELECT state, attempts, last_error FROM sync_state WHERE user_id = $1::uuid",
        )
        .bind(id)
        .fetch_one(&self.app.pool)
        .await
        .expect("sync row")
    }

    /// The emulator's user with this Ameyo userId.
    pub fn ameyo_user(&self, user_id: &str) -> Option<Value> {
        self.emulator
            .users()
            .into_iter()
            .find(|u| u["userId"] == json!(user_id))
    }

    /// API calls of a kind: (method, path prefix).
    pub fn calls(&self, method: &str, path_prefix: &str) -> Vec<ameyo_emulator::RecordedRequest> {
        self.emulator
            .requests()
            .into_iter()
            .filter(|r| r.method == method && r.path.starts_with(path_prefix))
            .collect()
    }
}
