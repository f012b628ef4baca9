//! A stateful, in-memory emulator of the Ameyo REST API, for integration tests,
//! benchmarks and the quick start.
//!
//! It keeps users, sessions and recorded calls in memory and answers with the request
//! and answer shapes documented in `docs/AMEYO-API.md` and the vendor's create and
//! update pages: the `{"message","code","info","status"}` error body, 512 for failed
//! commands, 403 `invalid.session.id` for a dead session, and a bare HTML page for 500.
//! It is not a mock: a user created through it can be listed, updated and deleted.
//!
//! Faults (an outage, latency, rate limiting, random 500s, permanently rejected user
//! ids) can be switched on and off at run time, from Rust ([`Emulator::set_faults`])
//! or over HTTP (`PUT /emulator/faults`). The admin endpoints under `/emulator/` need
//! no session and are neither faulted nor recorded.
//!
//! Where the public sources leave something open, the emulator picks one behaviour
//! and says so: an update may name the user by `userId` or by numeric `ccUserId`, or
//! (as the vendor's own curl example does) leave the id out of the path and carry it
//! in the body only.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use rand::Rng;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// Every API path starts with this.
const API_PREFIX: &str = "/ameyorestapi";
/// Recorded calls kept; older ones are dropped first.
const MAX_RECORDED_REQUESTS: usize = 100_000;
/// Largest request body read, in bytes.
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// The vendor's sample answer shows this as the first `ccUserId`.
const FIRST_CC_USER_ID: i64 = 364;
/// The vendor's sample answer shows this `privilegePlanId`.
const PRIVILEGE_PLAN_ID: i64 = 13;
/// What replaces passwords in recorded request bodies.
const REDACTED: &str = "[redacted]";
/// Body fields that carry passwords.
const SECRET_FIELDS: [&str; 2] = ["userData", "token"];
/// The `userType` values Ameyo is known to accept.
const USER_TYPES: [&str; 6] = [
    "Agent",
    "Supervisor",
    "Executive",
    "Professional Agent",
    "Analyst",
    "Administrator",
];
/// The servlet container's page for a 500.
const HTML_500: &str =
    "<html><head><title>Error 500</title></head><body>Internal Server Error</body></html>";
/// The front proxy's page during an outage.
const HTML_503: &str =
    "<html><head><title>Error 503</title></head><body>Service Unavailable</body></html>";

/// How to start an [`Emulator`].
#[derive(Clone, Default)]
pub struct EmulatorOptions {
    /// When set, only this userId may log in.
    pub login_user: Option<String>,
    /// When set, only this token (password) is accepted at login.
    pub login_password: Option<String>,
    /// Sessions die this long after login; `None` keeps them alive until ended.
    pub session_ttl: Option<Duration>,
    /// Faults active from the start.
    pub faults: Faults,
}

impl fmt::Debug for EmulatorOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmulatorOptions")
            .field("login_user", &self.login_user)
            .field(
                "login_password",
                &self.login_password.as_ref().map(|_| REDACTED),
            )
            .field("session_ttl", &self.session_ttl)
            .field("faults", &self.faults)
            .finish()
    }
}

/// Misbehaviour to inject into API calls (never into the admin endpoints).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Faults {
    /// 0.0..=1.0: share of API calls answered 500 with an HTML page.
    pub error_rate: f64,
    /// Added to every API call.
    pub latency_ms: u64,
    /// Serde: `"unavailable"` | `"refuse"`.
    pub outage: Option<Outage>,
    /// 0 = off; else every Nth API call gets 429 with `Retry-After`.
    pub rate_limit_every: u64,
    /// Value of `Retry-After` on 429 and 503 (1 when 0).
    pub retry_after_secs: u64,
    /// Create and update of these userIds answer 400 InvalidInput (a permanent error).
    pub reject_user_ids: Vec<String>,
}

impl Faults {
    fn retry_after(&self) -> u64 {
        self.retry_after_secs.max(1)
    }
}

/// How Ameyo is down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outage {
    /// Every API call answers 503 with `Retry-After` and an HTML page.
    Unavailable,
    /// Connections are accepted and dropped at once (only when served over TCP by
    /// [`Emulator::serve`]; a router driven in-process answers normally).
    Refuse,
}

/// One API call the emulator received.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RecordedRequest {
    pub method: String,
    /// The path after `/ameyorestapi/`, as received (still percent-encoded), e.g.
    /// `cc/contactCenterUsers/alice`.
    pub path: String,
    pub query: Option<String>,
    /// The JSON body with every `userData` and `token` value replaced by
    /// `"[redacted]"`; a body that is not JSON is described, not kept.
    pub body: Option<Value>,
    pub status: u16,
    /// Whether the `sessionId` header named a live session when the call was handled.
    pub session_valid: bool,
}

/// The emulator: cheap to clone, every clone shares the same state.
#[derive(Clone)]
pub struct Emulator {
    state: Arc<Mutex<EmulatorState>>,
    /// Mirrors `faults.outage == Some(Refuse)` so the listener can check it without
    /// taking the lock on every read.
    refusing: Arc<AtomicBool>,
}

struct Session {
    user_id: String,
    expires_at: Option<Instant>,
}

struct StoredUser {
    cc_user_id: i64,
    /// The object the create and list calls answer with.
    record: Map<String, Value>,
    /// The password, never part of `record`.
    user_data: Option<String>,
}

struct EmulatorState {
    login_user: Option<String>,
    login_password: Option<String>,
    session_ttl: Option<Duration>,
    faults: Faults,
    /// Keyed by userId.
    users: HashMap<String, StoredUser>,
    next_cc_user_id: i64,
    /// Keyed by session id.
    sessions: HashMap<String, Session>,
    logins: u64,
    terminations: HashMap<String, u64>,
    requests: VecDeque<RecordedRequest>,
    /// API calls that reached the rate limiter since the faults were last set.
    rate_limit_calls: u64,
}

impl Emulator {
    pub fn new(options: EmulatorOptions) -> Self {
        let refusing = options.faults.outage == Some(Outage::Refuse);
        let state = EmulatorState {
            login_user: options.login_user,
            login_password: options.login_password,
            session_ttl: options.session_ttl,
            faults: options.faults,
            users: HashMap::new(),
            next_cc_user_id: FIRST_CC_USER_ID,
            sessions: HashMap::new(),
            logins: 0,
            terminations: HashMap::new(),
            requests: VecDeque::new(),
            rate_limit_calls: 0,
        };
        Emulator {
            state: Arc::new(Mutex::new(state)),
            refusing: Arc::new(AtomicBool::new(refusing)),
        }
    }

    /// The whole HTTP app: the Ameyo API under `/ameyorestapi/` and the admin
    /// endpoints under `/emulator/`.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/emulator/state", get(admin_state))
            .route(
                "/emulator/requests",
                get(admin_requests).delete(admin_clear_requests),
            )
            .route("/emulator/faults", get(admin_faults).put(admin_set_faults))
            .route("/emulator/expire-sessions", post(admin_expire_sessions))
            .route("/emulator/users", post(admin_add_user))
            .route("/emulator/users/{user_id}", delete(admin_remove_user))
            .fallback(api)
            .with_state(self.clone())
    }

    /// Serves [`Emulator::router`] on `listener` until `shutdown` completes. While
    /// the outage is [`Outage::Refuse`], new connections are accepted and dropped at
    /// once, and kept-alive connections are closed at their next request.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> io::Result<()> {
        let router = self.router();
        let listener = RefusingListener {
            inner: listener,
            refusing: self.refusing.clone(),
        };
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
    }

    /// Binds 127.0.0.1 on a free port and serves there in a background task.
    pub async fn spawn(options: EmulatorOptions) -> io::Result<(Emulator, SocketAddr)> {
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let emulator = Emulator::new(options);
        let server = emulator.clone();
        tokio::spawn(async move {
            if let Err(error) = server.serve(listener, std::future::pending()).await {
                tracing::warn!(%error, "the Ameyo emulator stopped serving");
            }
        });
        Ok((emulator, addr))
    }

    /// Replaces the faults; the rate-limit count starts again from zero.
    pub fn set_faults(&self, faults: Faults) {
        let mut state = self.lock();
        self.refusing
            .store(faults.outage == Some(Outage::Refuse), Ordering::SeqCst);
        state.faults = faults;
        state.rate_limit_calls = 0;
    }

    pub fn faults(&self) -> Faults {
        self.lock().faults.clone()
    }

    /// Every live session becomes invalid now.
    pub fn expire_sessions(&self) {
        self.lock().sessions.clear();
    }

    /// The same objects the list call returns, over every contact center, sorted by
    /// `ccUserId`.
    pub fn users(&self) -> Vec<Value> {
        self.lock().sorted_users(None)
    }

    /// The password (`userData`) last delivered for a user.
    pub fn user_data(&self, user_id: &str) -> Option<String> {
        self.lock()
            .users
            .get(user_id)
            .and_then(|user| user.user_data.clone())
    }

    /// API calls received, oldest first (the last 100 000).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.iter().cloned().collect()
    }

    pub fn clear_requests(&self) {
        self.lock().requests.clear();
    }

    /// Successful logins so far.
    pub fn login_count(&self) -> u64 {
        self.lock().logins
    }

    /// How many times `session/terminateAllSessionsForUser` named this user.
    pub fn terminations(&self, user_id: &str) -> u64 {
        self.lock().terminations.get(user_id).copied().unwrap_or(0)
    }

    /// Plants a user directly, as if someone had created it in Ameyo's own UI (for
    /// drift tests). Fields missing from `user` get the create call's defaults; a
    /// `userData` field becomes the stored password. An integer `ccUserId` in `user`
    /// is kept, otherwise the next one is assigned; a user with the same userId is
    /// replaced. Returns the stored object as the list call shows it, or `Null` when
    /// `user` is not an object with a non-empty string `userId`.
    pub fn add_user(&self, user: Value) -> Value {
        self.lock().plant_user(user).unwrap_or(Value::Null)
    }

    /// Removes a user directly; false when there was none.
    pub fn remove_user(&self, user_id: &str) -> bool {
        self.lock().users.remove(user_id).is_some()
    }

    /// Never held across an `.await`; a panic elsewhere cannot leave the state
    /// half-written in a way that matters to a test double, so poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, EmulatorState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Faults first (outage, latency, rate limit, error rate), then the call itself.
    /// Returns the answer and, when the call got as far as checking it, whether the
    /// session was live.
    async fn answer(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        session_id: Option<&str>,
        body: &RequestBody,
    ) -> (Response, Option<bool>) {
        let faults = self.faults();
        if faults.outage == Some(Outage::Unavailable) {
            return (
                html_page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    HTML_503,
                    Some(faults.retry_after()),
                ),
                None,
            );
        }
        if faults.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
        }
        if faults.rate_limit_every > 0 {
            let mut state = self.lock();
            state.rate_limit_calls += 1;
            if state
                .rate_limit_calls
                .is_multiple_of(faults.rate_limit_every)
            {
                return (too_many_requests(faults.retry_after()), None);
            }
        }
        if faults.error_rate > 0.0 && rand::random::<f64>() < faults.error_rate {
            return (
                html_page(StatusCode::INTERNAL_SERVER_ERROR, HTML_500, None),
                None,
            );
        }
        let route = match Route::resolve(method, path) {
            Ok(route) => route,
            Err(error) => return (error.into_response(), None),
        };
        let mut state = self.lock();
        let (outcome, session_valid) = state.handle(route, query, session_id, body, &faults);
        let response = match outcome {
            Ok(answer) => (StatusCode::OK, Json(answer)).into_response(),
            Err(error) => error.into_response(),
        };
        (response, Some(session_valid))
    }

    fn record(&self, mut request: RecordedRequest, session_id: Option<&str>, valid: Option<bool>) {
        let mut state = self.lock();
        request.session_valid =
            valid.unwrap_or_else(|| session_id.is_some_and(|id| state.session_live(id)));
        if state.requests.len() >= MAX_RECORDED_REQUESTS {
            state.requests.pop_front();
        }
        state.requests.push_back(request);
    }
}

/// A parsed API route; the user ids in it are percent-decoded.
enum Route {
    Login(LoginCall),
    Logout,
    TerminateAllSessions,
    KeepAlive,
    CreateUser,
    /// `PUT cc/contactCenterUsers` with the user named only in the body.
    UpdateUserFromBody,
    UpdateUser(String),
    ListUsers,
    DeleteUser(String),
}

/// The two documented login calls, which answer in different shapes.
#[derive(Clone, Copy)]
enum LoginCall {
    /// `POST userLogin/login`, used by real clients.
    UserLogin,
    /// `POST session/userLogin`, on the official page.
    Session,
}

enum RouteError {
    NotFound,
    MethodNotAllowed(&'static str),
}

impl Route {
    fn resolve(method: &Method, path: &str) -> Result<Route, RouteError> {
        let segments: Vec<&str> = path.split('/').collect();
        let post_only = |route: Route| {
            if method == Method::POST {
                Ok(route)
            } else {
                Err(RouteError::MethodNotAllowed("POST"))
            }
        };
        match segments.as_slice() {
            ["userLogin", "login"] => post_only(Route::Login(LoginCall::UserLogin)),
            ["session", "userLogin"] => post_only(Route::Login(LoginCall::Session)),
            ["session", "userLogout"] => post_only(Route::Logout),
            ["session", "terminateAllSessionsForUser"] => post_only(Route::TerminateAllSessions),
            ["session", "keepAliveWithPingPush"] => post_only(Route::KeepAlive),
            ["cc", "contactCenterUsers"] => match *method {
                Method::POST => Ok(Route::CreateUser),
                Method::PUT => Ok(Route::UpdateUserFromBody),
                _ => Err(RouteError::MethodNotAllowed("POST, PUT")),
            },
            ["cc", "contactCenterUsers", "getAllContactCenterUsers"] if method == Method::GET => {
                Ok(Route::ListUsers)
            }
            ["cc", "contactCenterUsers", id] if !id.is_empty() => match *method {
                Method::PUT => Ok(Route::UpdateUser(percent_decode(id))),
                _ if *id == "getAllContactCenterUsers" => {
                    Err(RouteError::MethodNotAllowed("GET, PUT"))
                }
                _ => Err(RouteError::MethodNotAllowed("PUT")),
            },
            ["user", "users", id] if !id.is_empty() => {
                if method == Method::DELETE {
                    Ok(Route::DeleteUser(percent_decode(id)))
                } else {
                    Err(RouteError::MethodNotAllowed("DELETE"))
                }
            }
            _ => Err(RouteError::NotFound),
        }
    }
}

impl IntoResponse for RouteError {
    fn into_response(self) -> Response {
        match self {
            RouteError::NotFound => AmeyoError {
                status: 404,
                message: Some("requested.resource.not.found"),
                code: 404,
                info: None,
            }
            .into_response(),
            RouteError::MethodNotAllowed(allow) => {
                let mut response = AmeyoError {
                    status: 405,
                    message: Some("method.not.allowed"),
                    code: 405,
                    info: None,
                }
                .into_response();
                response
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
                response
            }
        }
    }
}

/// Ameyo's error body: `{"message","code","info","status"}`.
#[derive(Debug)]
struct AmeyoError {
    status: u16,
    message: Option<&'static str>,
    code: i64,
    info: Option<String>,
}

impl AmeyoError {
    fn invalid_input(info: impl Into<String>) -> Self {
        AmeyoError {
            status: 400,
            message: Some("InvalidInput"),
            code: 40001,
            info: Some(info.into()),
        }
    }

    /// A failed command: HTTP 512 with the reason key in both `message` and `info`.
    fn command_failed(key: &'static str, code: i64) -> Self {
        AmeyoError {
            status: 512,
            message: Some(key),
            code,
            info: Some(key.to_owned()),
        }
    }

    fn invalid_session() -> Self {
        AmeyoError {
            status: 403,
            message: None,
            code: 99999,
            info: Some("invalid.session.id".to_owned()),
        }
    }

    fn invalid_credentials() -> Self {
        AmeyoError {
            status: 401,
            message: Some("invalid.authentication.token"),
            code: 909090,
            info: None,
        }
    }

    fn user_not_found() -> Self {
        Self::command_failed("user.not.found", 5123)
    }
}

impl IntoResponse for AmeyoError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = json!({
            "message": self.message,
            "code": self.code,
            "info": self.info,
            "status": self.status,
        });
        (status, Json(body)).into_response()
    }
}

fn html_page(status: StatusCode, page: &'static str, retry_after: Option<u64>) -> Response {
    let mut response = (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static("text/html"))],
        page,
    )
        .into_response();
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

fn too_many_requests(retry_after: u64) -> Response {
    let body = json!({
        "message": "too.many.requests",
        "code": 429,
        "info": null,
        "status": 429,
    });
    let mut response = (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    response
}

/// A request body as read off the wire.
enum RequestBody {
    Empty,
    Json(Value),
    Malformed(usize),
    TooLarge,
}

impl RequestBody {
    fn parse(bytes: &[u8]) -> Self {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return RequestBody::Empty;
        }
        match serde_json::from_slice(bytes) {
            Ok(value) => RequestBody::Json(value),
            Err(_) => RequestBody::Malformed(bytes.len()),
        }
    }

    /// The body as a JSON object, or the InvalidInput answer a servlet would give.
    fn object(&self) -> Result<&Map<String, Value>, AmeyoError> {
        match self {
            RequestBody::Json(Value::Object(map)) => Ok(map),
            RequestBody::Json(_) => {
                Err(AmeyoError::invalid_input("a JSON object expected in input"))
            }
            RequestBody::Empty => Err(AmeyoError::invalid_input("request body expected")),
            RequestBody::Malformed(_) => Err(AmeyoError::invalid_input("malformed JSON in input")),
            RequestBody::TooLarge => Err(AmeyoError::invalid_input("request body too large")),
        }
    }

    /// What the request log keeps: passwords redacted, unparseable bodies described.
    fn for_record(&self) -> Option<Value> {
        match self {
            RequestBody::Empty => None,
            RequestBody::Json(value) => {
                let mut value = value.clone();
                redact(&mut value);
                Some(value)
            }
            RequestBody::Malformed(len) => {
                Some(Value::String(format!("[malformed JSON body, {len} bytes]")))
            }
            RequestBody::TooLarge => Some(Value::String("[body over the size limit]".into())),
        }
    }
}

/// Replaces every `userData` and `token` value, at any depth.
fn redact(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, field) in map.iter_mut() {
                if SECRET_FIELDS.contains(&key.as_str()) {
                    *field = Value::String(REDACTED.to_owned());
                } else {
                    redact(field);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// Decodes `%XX` escapes; invalid escapes stay as they are.
fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                decoded.push(byte);
                i += 3;
            }
            None => {
                decoded.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// JSON types the documented fields have.
#[derive(Clone, Copy)]
enum JsonKind {
    String,
    Boolean,
    Integer,
}

impl JsonKind {
    fn matches(self, value: &Value) -> bool {
        match self {
            JsonKind::String => value.is_string(),
            JsonKind::Boolean => value.is_boolean(),
            JsonKind::Integer => value.is_i64(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            JsonKind::String => "string",
            JsonKind::Boolean => "boolean",
            JsonKind::Integer => "integer",
        }
    }
}

/// The fields a create or update may set (besides `userId`), with their documented
/// types. The two vendor pages disagree on `maxAllowedLogins`: a string on create,
/// an integer on update; the emulator holds clients to each page.
fn user_fields(update: bool) -> [(&'static str, JsonKind); 10] {
    let max_allowed_logins = if update {
        JsonKind::Integer
    } else {
        JsonKind::String
    };
    [
        ("userType", JsonKind::String),
        ("userName", JsonKind::String),
        ("systemUserType", JsonKind::String),
        ("defaultReady", JsonKind::Boolean),
        ("userData", JsonKind::String),
        ("contactCenterId", JsonKind::Integer),
        ("loginPolicy", JsonKind::String),
        ("maxAllowedLogins", max_allowed_logins),
        ("mappingUserId", JsonKind::String),
        ("description", JsonKind::String),
    ]
}

/// A field's value when present and not null; 400 when it has the wrong type.
fn optional_field<'a>(
    body: &'a Map<String, Value>,
    field: &str,
    kind: JsonKind,
) -> Result<Option<&'a Value>, AmeyoError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(value) if kind.matches(value) => Ok(Some(value)),
        Some(_) => Err(AmeyoError::invalid_input(format!(
            "parameter expected in input: {field} as {}",
            kind.name()
        ))),
    }
}

fn required_field<'a>(
    body: &'a Map<String, Value>,
    field: &str,
    kind: JsonKind,
) -> Result<&'a Value, AmeyoError> {
    optional_field(body, field, kind)?
        .ok_or_else(|| AmeyoError::invalid_input(format!("parameter expected in input: {field}")))
}

/// A required, non-empty string such as `userId`.
fn required_text<'a>(body: &'a Map<String, Value>, field: &str) -> Result<&'a str, AmeyoError> {
    match required_field(body, field, JsonKind::String)?.as_str() {
        Some(text) if !text.is_empty() => Ok(text),
        _ => Err(AmeyoError::invalid_input(format!(
            "parameter expected in input: {field}"
        ))),
    }
}

fn check_field_types(body: &Map<String, Value>, update: bool) -> Result<(), AmeyoError> {
    for (field, kind) in user_fields(update) {
        optional_field(body, field, kind)?;
    }
    Ok(())
}

/// Whether two values of a field mean the same; `maxAllowedLogins` is a string on
/// create and an integer on update, so `"2"` and `2` are the same there.
fn same_value(field: &str, old: &Value, new: &Value) -> bool {
    if field == "maxAllowedLogins" {
        let as_number = |value: &Value| match value {
            Value::String(text) => text.trim().parse::<i64>().ok(),
            other => other.as_i64(),
        };
        if let (Some(a), Some(b)) = (as_number(old), as_number(new)) {
            return a == b;
        }
    }
    old == new
}

/// The list object of a user with every documented key, in the vendor's order.
fn user_template(cc_user_id: i64, user_id: &str) -> Map<String, Value> {
    let mut record = Map::new();
    record.insert("ccUserId".into(), json!(cc_user_id));
    record.insert("userId".into(), json!(user_id));
    record.insert("userType".into(), Value::Null);
    record.insert("skillLevelIds".into(), json!([]));
    record.insert("skillIds".into(), Value::Null);
    record.insert("userName".into(), Value::Null);
    record.insert("systemUserType".into(), Value::Null);
    record.insert("privilegePlanId".into(), json!(PRIVILEGE_PLAN_ID));
    record.insert("defaultReady".into(), Value::Null);
    record.insert("maskedPrivileges".into(), Value::Null);
    record.insert("maxAllowedLogins".into(), Value::Null);
    record.insert("loginPolicy".into(), Value::Null);
    record.insert("mappingUserId".into(), Value::Null);
    record.insert("contactCenterId".into(), Value::Null);
    record.insert("description".into(), Value::Null);
    record
}

/// `d898-<hex8>-ses-<userId>-<40 random letters and digits>`; characters a header
/// cannot carry are replaced in the userId part.
fn new_session_id(user_id: &str) -> String {
    let mut rng = rand::rng();
    let shard: u32 = rng.random();
    let tail: String = (&mut rng)
        .sample_iter(rand::distr::Alphanumeric)
        .take(40)
        .map(char::from)
        .collect();
    let user: String = user_id
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect();
    format!("d898-{shard:08x}-ses-{user}-{tail}")
}

impl EmulatorState {
    /// Whether `session_id` names a live session; forgets it when it has expired.
    fn session_live(&mut self, session_id: &str) -> bool {
        let expired = match self.sessions.get(session_id) {
            None => return false,
            Some(session) => session
                .expires_at
                .is_some_and(|deadline| Instant::now() >= deadline),
        };
        if expired {
            self.sessions.remove(session_id);
        }
        !expired
    }

    fn forget_expired_sessions(&mut self) {
        let now = Instant::now();
        self.sessions
            .retain(|_, session| session.expires_at.is_none_or(|deadline| now < deadline));
    }

    fn end_sessions_of(&mut self, user_id: &str) {
        self.sessions
            .retain(|_, session| session.user_id != user_id);
    }

    fn sorted_users(&self, contact_center_id: Option<i64>) -> Vec<Value> {
        let mut users: Vec<&StoredUser> = self
            .users
            .values()
            .filter(|user| {
                contact_center_id.is_none_or(|cc| {
                    user.record.get("contactCenterId").and_then(Value::as_i64) == Some(cc)
                })
            })
            .collect();
        users.sort_by_key(|user| user.cc_user_id);
        users
            .into_iter()
            .map(|user| Value::Object(user.record.clone()))
            .collect()
    }

    fn take_cc_user_id(&mut self) -> i64 {
        let id = self.next_cc_user_id;
        self.next_cc_user_id += 1;
        id
    }

    fn handle(
        &mut self,
        route: Route,
        query: Option<&str>,
        session_id: Option<&str>,
        body: &RequestBody,
        faults: &Faults,
    ) -> (Result<Value, AmeyoError>, bool) {
        let session_valid = session_id.is_some_and(|id| self.session_live(id));
        let outcome = match route {
            // Logging in is the one call that needs no session.
            Route::Login(call) => self.login(call, body),
            _ if !session_valid => Err(AmeyoError::invalid_session()),
            Route::Logout => self.logout(body, session_id),
            Route::TerminateAllSessions => self.terminate_all_sessions(body),
            Route::KeepAlive => Ok(json!({"status": "success"})),
            Route::CreateUser => self.create_user(body, faults),
            Route::UpdateUserFromBody => body
                .object()
                .and_then(|map| required_text(map, "userId").map(str::to_owned))
                .and_then(|user_id| self.update_user(&user_id, body, faults)),
            Route::UpdateUser(id) => self.update_user(&id, body, faults),
            Route::ListUsers => self.list_users(query),
            Route::DeleteUser(user_id) => self.delete_user(&user_id),
        };
        (outcome, session_valid)
    }

    fn login(&mut self, call: LoginCall, body: &RequestBody) -> Result<Value, AmeyoError> {
        let body = body.object()?;
        let user_id = required_text(body, "userId")?;
        let token = required_field(body, "token", JsonKind::String)?
            .as_str()
            .unwrap_or_default();
        let wrong_user = self
            .login_user
            .as_deref()
            .is_some_and(|expected| expected != user_id);
        let wrong_token = self
            .login_password
            .as_deref()
            .is_some_and(|expected| expected != token);
        if wrong_user || wrong_token {
            return Err(AmeyoError::invalid_credentials());
        }
        let force = match body.get("forceLogin") {
            Some(Value::Bool(force)) => *force,
            Some(Value::String(force)) => force.eq_ignore_ascii_case("true"),
            _ => false,
        };
        self.forget_expired_sessions();
        if self.sessions.values().any(|s| s.user_id == user_id) {
            if !force {
                return Err(AmeyoError::command_failed("user.already.logged.in", 5120));
            }
            self.end_sessions_of(user_id);
        }
        let session_id = new_session_id(user_id);
        self.sessions.insert(
            session_id.clone(),
            Session {
                user_id: user_id.to_owned(),
                expires_at: self.session_ttl.map(|ttl| Instant::now() + ttl),
            },
        );
        self.logins += 1;
        Ok(match call {
            LoginCall::UserLogin => json!({
                "requestId": uuid::Uuid::new_v4().to_string(),
                "contactCenterId": 1,
                "userSessionInfo": {
                    "sessionId": session_id,
                    "userId": user_id,
                    "userType": "Administrator",
                },
            }),
            LoginCall::Session => json!({
                "userId": user_id,
                "terminalInfo": body.get("terminalInfo").cloned().unwrap_or(Value::Null),
                "sessionId": session_id,
            }),
        })
    }

    fn logout(
        &mut self,
        body: &RequestBody,
        header_session: Option<&str>,
    ) -> Result<Value, AmeyoError> {
        let named = match body {
            RequestBody::Empty => None,
            other => other
                .object()?
                .get("sessionId")
                .and_then(Value::as_str)
                .map(str::to_owned),
        };
        if let Some(session_id) = named.as_deref().or(header_session) {
            self.sessions.remove(session_id);
        }
        Ok(json!({"status": "success"}))
    }

    fn terminate_all_sessions(&mut self, body: &RequestBody) -> Result<Value, AmeyoError> {
        let user_id = required_text(body.object()?, "userId")?;
        self.end_sessions_of(user_id);
        *self.terminations.entry(user_id.to_owned()).or_default() += 1;
        Ok(json!({"status": "success"}))
    }

    fn create_user(&mut self, body: &RequestBody, faults: &Faults) -> Result<Value, AmeyoError> {
        let body = body.object()?;
        let user_id = required_text(body, "userId")?;
        if faults.reject_user_ids.iter().any(|id| id == user_id) {
            return Err(AmeyoError::invalid_input("invalid value in input: userId"));
        }
        let user_type = required_field(body, "userType", JsonKind::String)?;
        required_field(body, "userName", JsonKind::String)?;
        required_field(body, "contactCenterId", JsonKind::Integer)?;
        check_field_types(body, false)?;
        if !user_type
            .as_str()
            .is_some_and(|user_type| USER_TYPES.contains(&user_type))
        {
            return Err(AmeyoError::command_failed("invalid.user.type", 5121));
        }
        if self.users.contains_key(user_id) {
            return Err(AmeyoError::command_failed("user.already.exists", 5122));
        }
        let cc_user_id = self.take_cc_user_id();
        let mut record = user_template(cc_user_id, user_id);
        for (field, _) in user_fields(false) {
            if field != "userData"
                && let Some(value) = body.get(field)
            {
                record.insert(field.to_owned(), value.clone());
            }
        }
        let user_data = body
            .get("userData")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let answer = Value::Object(record.clone());
        self.users.insert(
            user_id.to_owned(),
            StoredUser {
                cc_user_id,
                record,
                user_data,
            },
        );
        Ok(answer)
    }

    /// `id` is the path's id: a numeric `ccUserId` when one matches, else a userId.
    fn update_user(
        &mut self,
        id: &str,
        body: &RequestBody,
        faults: &Faults,
    ) -> Result<Value, AmeyoError> {
        let body = body.object()?;
        let user_id = required_text(body, "userId")?;
        if faults
            .reject_user_ids
            .iter()
            .any(|rejected| rejected == user_id || rejected == id)
        {
            return Err(AmeyoError::invalid_input("invalid value in input: userId"));
        }
        check_field_types(body, true)?;
        let by_cc_user_id = id.parse::<i64>().ok().and_then(|cc_user_id| {
            self.users
                .iter()
                .find(|(_, user)| user.cc_user_id == cc_user_id)
                .map(|(key, _)| key.clone())
        });
        let key = by_cc_user_id
            .or_else(|| self.users.contains_key(id).then(|| id.to_owned()))
            .ok_or_else(AmeyoError::user_not_found)?;
        if key != user_id {
            return Err(AmeyoError::invalid_input(
                "invalid value in input: userId does not match the user in the path",
            ));
        }
        if let Some(user_type) = optional_field(body, "userType", JsonKind::String)?
            && !user_type
                .as_str()
                .is_some_and(|user_type| USER_TYPES.contains(&user_type))
        {
            return Err(AmeyoError::command_failed("invalid.user.type", 5121));
        }
        let user = self
            .users
            .get_mut(&key)
            .ok_or_else(AmeyoError::user_not_found)?;
        let mut updated_fields = Vec::new();
        for (field, _) in user_fields(true) {
            let Some(sent) = body.get(field).filter(|value| !value.is_null()) else {
                continue;
            };
            if field == "userData" {
                let password = sent.as_str().map(str::to_owned);
                if user.user_data != password {
                    user.user_data = password;
                    updated_fields.push(field);
                }
                continue;
            }
            // An empty mapping id is how a client clears the mapping.
            let new = if field == "mappingUserId" && sent.as_str() == Some("") {
                Value::Null
            } else {
                sent.clone()
            };
            let old = user.record.get(field).unwrap_or(&Value::Null);
            if !same_value(field, old, &new) {
                user.record.insert(field.to_owned(), new);
                updated_fields.push(field);
            }
        }
        Ok(json!({
            "status": "success",
            "message": "User updated successfully",
            "userId": user_id,
            "contactCenterId": user.record.get("contactCenterId").cloned().unwrap_or(Value::Null),
            "updatedFields": updated_fields,
        }))
    }

    fn list_users(&self, query: Option<&str>) -> Result<Value, AmeyoError> {
        let contact_center_id = query
            .and_then(|query| {
                form_urlencoded::parse(query.as_bytes())
                    .find(|(name, _)| name == "ccId")
                    .map(|(_, value)| value.into_owned())
            })
            .and_then(|value| value.trim().parse::<i64>().ok())
            .ok_or_else(|| AmeyoError::invalid_input("parameter expected in input: ccId"))?;
        Ok(Value::Array(self.sorted_users(Some(contact_center_id))))
    }

    fn delete_user(&mut self, user_id: &str) -> Result<Value, AmeyoError> {
        if self.users.remove(user_id).is_none() {
            return Err(AmeyoError::user_not_found());
        }
        // A deleted user can no longer be logged in.
        self.end_sessions_of(user_id);
        Ok(json!({
            "status": "success",
            "message": "User deleted successfully",
            "userId": user_id,
        }))
    }

    fn plant_user(&mut self, user: Value) -> Option<Value> {
        let Value::Object(mut fields) = user else {
            return None;
        };
        let user_id = fields
            .get("userId")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty())?
            .to_owned();
        let user_data = fields
            .remove("userData")
            .and_then(|value| value.as_str().map(str::to_owned));
        let existing = self.users.get(&user_id).map(|user| user.cc_user_id);
        let cc_user_id = match fields.get("ccUserId").and_then(Value::as_i64) {
            Some(given) => {
                self.next_cc_user_id = self.next_cc_user_id.max(given.saturating_add(1));
                given
            }
            None => match existing {
                Some(id) => id,
                None => self.take_cc_user_id(),
            },
        };
        let mut record = user_template(cc_user_id, &user_id);
        for (field, value) in fields {
            if field != "ccUserId" {
                record.insert(field, value);
            }
        }
        let answer = Value::Object(record.clone());
        self.users.insert(
            user_id,
            StoredUser {
                cc_user_id,
                record,
                user_data,
            },
        );
        Some(answer)
    }
}

/// Every request the admin routes do not claim: the Ameyo API, or a plain 404.
async fn api(State(emulator): State<Emulator>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let Some(path) = parts
        .uri
        .path()
        .strip_prefix(API_PREFIX)
        .filter(|rest| rest.is_empty() || rest.starts_with('/'))
    else {
        return RouteError::NotFound.into_response();
    };
    let path = path.strip_prefix('/').unwrap_or(path).to_owned();
    let query = parts.uri.query().map(str::to_owned);
    let session_id = parts
        .headers
        .get("sessionId")
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|value| !value.is_empty())
        .map(str::to_owned);
    let body = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(bytes) => RequestBody::parse(&bytes),
        Err(_) => RequestBody::TooLarge,
    };
    let (response, session_valid) = emulator
        .answer(
            &parts.method,
            &path,
            query.as_deref(),
            session_id.as_deref(),
            &body,
        )
        .await;
    let recorded = RecordedRequest {
        method: parts.method.to_string(),
        path,
        query,
        body: body.for_record(),
        status: response.status().as_u16(),
        session_valid: false,
    };
    emulator.record(recorded, session_id.as_deref(), session_valid);
    response
}

fn admin_error(status: StatusCode, detail: impl Into<String>) -> Response {
    (status, Json(json!({"error": detail.into()}))).into_response()
}

async fn admin_state(State(emulator): State<Emulator>) -> Json<Value> {
    let state = emulator.lock();
    Json(json!({
        "users": state.sorted_users(None),
        "logins": state.logins,
        "faults": state.faults,
        "requests": state.requests.len(),
    }))
}

async fn admin_requests(State(emulator): State<Emulator>) -> Json<Vec<RecordedRequest>> {
    Json(emulator.requests())
}

async fn admin_clear_requests(State(emulator): State<Emulator>) -> StatusCode {
    emulator.clear_requests();
    StatusCode::NO_CONTENT
}

async fn admin_faults(State(emulator): State<Emulator>) -> Json<Faults> {
    Json(emulator.faults())
}

async fn admin_set_faults(State(emulator): State<Emulator>, body: Bytes) -> Response {
    let faults: Faults = match serde_json::from_slice(&body) {
        Ok(faults) => faults,
        Err(error) => {
            return admin_error(StatusCode::BAD_REQUEST, format!("invalid faults: {error}"));
        }
    };
    if !(0.0..=1.0).contains(&faults.error_rate) {
        return admin_error(
            StatusCode::BAD_REQUEST,
            "invalid faults: error_rate must be within 0.0..=1.0",
        );
    }
    emulator.set_faults(faults.clone());
    Json(faults).into_response()
}

async fn admin_expire_sessions(State(emulator): State<Emulator>) -> StatusCode {
    emulator.expire_sessions();
    StatusCode::NO_CONTENT
}

async fn admin_add_user(State(emulator): State<Emulator>, body: Bytes) -> Response {
    let user: Value = match serde_json::from_slice(&body) {
        Ok(user) => user,
        Err(error) => {
            return admin_error(StatusCode::BAD_REQUEST, format!("invalid user: {error}"));
        }
    };
    match emulator.add_user(user) {
        Value::Null => admin_error(
            StatusCode::BAD_REQUEST,
            "invalid user: a JSON object with a non-empty string userId expected",
        ),
        planted => (StatusCode::CREATED, Json(planted)).into_response(),
    }
}

async fn admin_remove_user(
    State(emulator): State<Emulator>,
    Path(user_id): Path<String>,
) -> Response {
    if emulator.remove_user(&user_id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        admin_error(StatusCode::NOT_FOUND, format!("no user {user_id}"))
    }
}

/// A TCP listener that, during an [`Outage::Refuse`], drops every connection it
/// accepts, and hands out connections that close themselves at their next read.
struct RefusingListener {
    inner: TcpListener,
    refusing: Arc<AtomicBool>,
}

impl axum::serve::Listener for RefusingListener {
    type Io = RefusableStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
            if self.refusing.load(Ordering::SeqCst) {
                drop(stream);
                continue;
            }
            let stream = RefusableStream {
                inner: stream,
                refusing: self.refusing.clone(),
            };
            return (stream, addr);
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection that reads as closed once the outage is `Refuse`, so a kept-alive
/// connection from before the outage does not keep working through it.
struct RefusableStream {
    inner: TcpStream,
    refusing: Arc<AtomicBool>,
}

impl AsyncRead for RefusableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.refusing.load(Ordering::SeqCst) {
            // Reading nothing is end of stream: the server closes the connection.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for RefusableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{HeaderMap, Request};
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tower::ServiceExt;

    struct Answer {
        status: StatusCode,
        headers: HeaderMap,
        text: String,
    }

    impl Answer {
        fn json(&self) -> Value {
            serde_json::from_str(&self.text)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
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
            Some(
                json!({"domain": "x", "userId": "admin", "token": "anything", "forceLogin": false}),
            ),
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
}
