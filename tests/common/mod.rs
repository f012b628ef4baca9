//! Shared test harness: the whole application router over a fresh store of either
//! backend ([`db::TestDb`]), driven in-process with `oneshot`, and a delivery worker
//! against the in-process Ameyo emulator.
#![allow(dead_code)]

pub mod db;

use std::sync::Arc;
use std::time::Duration;

use ameyo_scim::config::Settings;
use ameyo_scim::http::auth::token_digest;
use ameyo_scim::http::{AppState, router};
use ameyo_scim::store::backend::Backend;
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

#[allow(unused_imports)]
pub use db::{Arg, Kind, OutboxRow, Sql, TestDb, hold_every_connection};

pub const TOKEN_A: &str = "tenant-a-secret-token";
pub const TOKEN_A2: &str = "tenant-a-rotated-token";
pub const TOKEN_B: &str = "tenant-b-secret-token";
/// HS256 secret of tenant `c`, which authenticates with JWTs only.
pub const JWT_SECRET_C: &str = "tenant-c-shared-secret-at-least-32-bytes";
pub const JWT_ISSUER_C: &str = "https://idp.example.test/";
pub const JWT_AUDIENCE_C: &str = "ameyo-scim-c";

pub const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
pub const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
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
    /// The store the router serves, as `serve` opens it.
    pub backend: Backend,
    /// Direct SQL on the same store.
    pub db: Sql,
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

pub async fn app(db: &TestDb) -> TestApp {
    app_with(db, settings()).await
}

/// The app over `db` opened with `settings`.
pub async fn app_with(db: &TestDb, settings: Settings) -> TestApp {
    let backend = db.open(&settings).await;
    app_over(backend, &settings, Duration::from_secs(30))
}

/// The app over an open store, wired as `serve` wires it, with this request deadline.
pub fn app_over(backend: Backend, settings: &Settings, deadline: Duration) -> TestApp {
    ameyo_scim::telemetry::metrics::install();
    let owner = ameyo_scim::sync::this_owner();
    let tenants = ameyo_scim::tenants::build(settings, &backend.sessions(&owner)).expect("tenants");
    let state = AppState::new(settings, &tenants, &backend).expect("state");
    TestApp {
        router: router(state, deadline),
        db: Sql::of(&backend),
        backend,
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
        self.call_with(method, uri, token, body, &[]).await
    }

    /// [`TestApp::call`] with extra headers (`If-Match`, say).
    pub async fn call_with(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
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
        self.db.snapshot().await
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

pub async fn sync_app(db: &TestDb) -> SyncApp {
    sync_app_with(db, Default::default(), |_| {}).await
}

pub async fn sync_app_with(
    db: &TestDb,
    options: ameyo_emulator::EmulatorOptions,
    tweak: impl FnOnce(&mut Settings),
) -> SyncApp {
    let (emulator, addr) = ameyo_emulator::Emulator::spawn(options)
        .await
        .expect("emulator");
    let mut settings = sync_settings(&format!("http://{addr}"));
    tweak(&mut settings);
    sync_app_on(db, emulator, addr, settings).await
}

/// The app and a worker built from `settings` (already pointing where the test wants),
/// with `emulator` as the Ameyo behind them.
pub async fn sync_app_on(
    db: &TestDb,
    emulator: ameyo_emulator::Emulator,
    emulator_addr: std::net::SocketAddr,
    settings: Settings,
) -> SyncApp {
    let app = app_with(db, settings.clone()).await;
    let worker = worker(&app.backend, &settings);
    SyncApp {
        app,
        worker: Arc::new(worker),
        emulator,
        emulator_addr,
    }
}

/// A delivery worker over `backend` for the tenants of `settings`, as `serve` builds
/// it: the tenants share their Ameyo session through the store under its name.
pub fn worker(backend: &Backend, settings: &Settings) -> ameyo_scim::sync::Worker {
    let owner = ameyo_scim::sync::this_owner();
    let tenants = ameyo_scim::tenants::build(settings, &backend.sessions(&owner)).expect("tenants");
    ameyo_scim::sync::Worker::from_tenants(
        &settings.sync,
        &tenants,
        backend.outbox.clone(),
        backend.cipher.clone(),
        owner,
    )
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
            let open: i64 = self
                .app
                .backend
                .outbox
                .counts()
                .await
                .expect("outbox counts")
                .iter()
                .filter(|c| c.state == "pending" || c.state == "leased")
                .map(|c| c.users)
                .sum();
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

    /// State, attempts and last error of a user's outbox row, as the store reports it.
    pub async fn sync_row(&self, id: &str) -> (String, i32, Option<String>) {
        let user = id.parse().expect("a user id");
        let r = self
            .app
            .backend
            .outbox
            .row_report(user)
            .await
            .expect("row report")
            .unwrap_or_else(|| panic!("no outbox row for {id}"));
        (
            r["state"].as_str().expect("state").to_string(),
            r["attempts"]
                .as_i64()
                .and_then(|n| i32::try_from(n).ok())
                .expect("attempts"),
            r["last_error"].as_str().map(str::to_string),
        )
    }

    /// The user's outbox row, read directly.
    pub async fn row(&self, id: &str) -> Option<OutboxRow> {
        self.app.db.outbox_row(id).await
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
