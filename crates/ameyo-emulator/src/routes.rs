//! The HTTP side: the admin endpoints, the Ameyo API's routes and wire formats (its
//! error body, request bodies as read and as recorded).

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde_json::{Map, Value, json};

use crate::{Emulator, Faults, REDACTED, RecordedRequest};

/// Every API path starts with this.
const API_PREFIX: &str = "/ameyorestapi";
/// Largest request body read, in bytes.
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Body fields that carry passwords.
const SECRET_FIELDS: [&str; 2] = ["userData", "token"];

/// A parsed API route; the user ids in it are percent-decoded.
pub(crate) enum Route {
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
pub(crate) enum LoginCall {
    /// `POST userLogin/login`, used by real clients.
    UserLogin,
    /// `POST session/userLogin`, on the official page.
    Session,
}

pub(crate) enum RouteError {
    NotFound,
    MethodNotAllowed(&'static str),
}

impl Route {
    pub(crate) fn resolve(method: &Method, path: &str) -> Result<Route, RouteError> {
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
pub(crate) struct AmeyoError {
    status: u16,
    message: Option<&'static str>,
    code: i64,
    info: Option<String>,
}

impl AmeyoError {
    pub(crate) fn invalid_input(info: impl Into<String>) -> Self {
        AmeyoError {
            status: 400,
            message: Some("InvalidInput"),
            code: 40001,
            info: Some(info.into()),
        }
    }

    /// A failed command: HTTP 512 with the reason key in both `message` and `info`.
    pub(crate) fn command_failed(key: &'static str, code: i64) -> Self {
        AmeyoError {
            status: 512,
            message: Some(key),
            code,
            info: Some(key.to_owned()),
        }
    }

    pub(crate) fn invalid_session() -> Self {
        AmeyoError {
            status: 403,
            message: None,
            code: 99999,
            info: Some("invalid.session.id".to_owned()),
        }
    }

    pub(crate) fn invalid_credentials() -> Self {
        AmeyoError {
            status: 401,
            message: Some("invalid.authentication.token"),
            code: 909090,
            info: None,
        }
    }

    pub(crate) fn user_not_found() -> Self {
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

/// A request body as read off the wire.
pub(crate) enum RequestBody {
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
    pub(crate) fn object(&self) -> Result<&Map<String, Value>, AmeyoError> {
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

/// The admin endpoints under `/emulator/`, and the Ameyo API for every other path.
pub(crate) fn router(emulator: Emulator) -> Router {
    Router::new()
        .route("/emulator/state", get(admin_state))
        .route("/emulator/counts", get(admin_counts))
        .route(
            "/emulator/requests",
            get(admin_requests).delete(admin_clear_requests),
        )
        .route("/emulator/faults", get(admin_faults).put(admin_set_faults))
        .route("/emulator/expire-sessions", post(admin_expire_sessions))
        .route("/emulator/users", post(admin_add_user))
        .route("/emulator/users/{user_id}", delete(admin_remove_user))
        .fallback(api)
        .with_state(emulator)
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

/// What `/emulator/state` counts, without its user list: cheap to poll while
/// thousands of users arrive.
async fn admin_counts(State(emulator): State<Emulator>) -> Json<Value> {
    let state = emulator.lock();
    Json(json!({
        "users": state.users.len(),
        "logins": state.logins,
        "requests": state.requests_received,
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
