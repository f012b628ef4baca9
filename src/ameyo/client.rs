//! The Ameyo REST client: one per tenant, shared by every worker in the process. It
//! owns the session (log in, share the id, log in again once when a call says the
//! session is gone), caps concurrent calls, and classifies every failure.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use tokio::sync::{Mutex, RwLock, Semaphore};

use crate::config::{AmeyoSettings, LoginCall, UpdatePathId};

/// Largest Ameyo answer read, in bytes (the user list can be large).
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
/// Longest reason kept from an Ameyo error body.
const MAX_REASON_CHARS: usize = 300;

/// How a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// Try again later (connect error, timeout, 429, 5xx, some 512 reasons).
    #[error("{reason}")]
    Transient {
        reason: String,
        retry_after: Option<Duration>,
        status: Option<u16>,
        /// The request may have reached Ameyo (a timeout or a 5xx after sending).
        maybe_applied: bool,
    },
    /// Ameyo refused the request; repeating it will not help.
    #[error("{reason}")]
    Permanent { reason: String, status: Option<u16> },
    /// Ameyo does not know the user.
    #[error("{reason}")]
    NotFound { reason: String, status: Option<u16> },
    /// A create found the userId taken.
    #[error("{reason}")]
    AlreadyExists { reason: String, status: Option<u16> },
}

impl CallError {
    pub fn status(&self) -> Option<u16> {
        match self {
            CallError::Transient { status, .. }
            | CallError::Permanent { status, .. }
            | CallError::NotFound { status, .. }
            | CallError::AlreadyExists { status, .. } => *status,
        }
    }

    pub fn transient(reason: impl Into<String>) -> Self {
        CallError::Transient {
            reason: reason.into(),
            retry_after: None,
            status: None,
            maybe_applied: false,
        }
    }
}

/// The record of one HTTP call, for the attempt log and metrics.
#[derive(Debug, Clone)]
pub struct CallRecord {
    pub call: &'static str,
    pub status: Option<u16>,
    pub duration: Duration,
    pub error: Option<String>,
}

/// A user as the list call returns it (the fields we use).
#[derive(Debug, Clone, PartialEq)]
pub struct ListedUser {
    pub user_id: String,
    pub cc_user_id: Option<i64>,
    pub raw: Value,
}

/// Where the processes serving a tenant share its Ameyo session. Logging in with
/// `forceLogin` ends the admin user's other sessions, so replicas that each logged in
/// would end each other's sessions forever; instead one logs in and all adopt it.
#[async_trait::async_trait]
pub trait SessionStore: Send + Sync {
    /// The shared session (if there is one this process can use) and the current
    /// generation (0: none ever published).
    async fn load(&self) -> Result<(Option<SecretString>, u64), String>;
    /// Take the login lease if no session newer than `seen` exists and no one else holds
    /// the lease. `true`: this process logs in now.
    async fn begin_login(&self, seen: u64) -> Result<bool, String>;
    /// Publish a fresh session (ending the lease); returns its generation.
    async fn publish(&self, session: &SecretString) -> Result<u64, String>;
    /// Give the lease back after a failed login.
    async fn abandon_login(&self) -> Result<(), String>;
}

/// How long a process waits for another one's login before giving up this attempt.
const ADOPT_WAIT: Duration = Duration::from_secs(30);

enum Auth {
    Static(SecretString),
    Login {
        user: String,
        password: SecretString,
        domain: Option<String>,
        call: LoginCall,
    },
}

#[derive(Default)]
struct Session {
    id: Option<SecretString>,
    /// Bumped by every login, so callers that saw an expired session can tell whether
    /// someone already logged in again.
    generation: u64,
}

/// Ameyo for one tenant.
pub struct AmeyoClient {
    http: reqwest::Client,
    api: Url,
    auth: Auth,
    session: RwLock<Session>,
    login_lock: Mutex<()>,
    limiter: Semaphore,
    update_path_id: UpdatePathId,
    shared: Option<Arc<dyn SessionStore>>,
    /// For metrics labels.
    tenant: String,
}

/// Outcome of a call that may need a session.
enum Attempt {
    Done(Value),
    SessionExpired,
}

impl AmeyoClient {
    /// `shared`: where replicas share the session (none: this process only).
    pub fn new(
        tenant: &str,
        s: &AmeyoSettings,
        shared: Option<Arc<dyn SessionStore>>,
    ) -> Result<Arc<Self>, String> {
        let mut base = Url::parse(&s.base_url).map_err(|e| format!("base_url: {e}"))?;
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let api = base
            .join("ameyorestapi/")
            .map_err(|e| format!("base_url: {e}"))?;
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(s.connect_timeout_secs))
            .timeout(Duration::from_secs(s.request_timeout_secs))
            .user_agent(concat!("ameyo-scim/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(s.max_concurrent_calls);
        if let Some(ca) = &s.ca_file {
            let pem = std::fs::read(ca).map_err(|e| format!("ca_file {}: {e}", ca.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("ca_file {}: {e}", ca.display()))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(|e| format!("HTTP client: {e}"))?;
        let auth = match (&s.session_id, &s.login_user, &s.login_password) {
            (Some(id), _, _) => Auth::Static(id.clone()),
            (None, Some(user), Some(password)) => Auth::Login {
                user: user.clone(),
                password: password.clone(),
                domain: s.login_domain.clone(),
                call: s.login_call,
            },
            _ => return Err("set login_user and login_password, or session_id".into()),
        };
        let session = match &auth {
            Auth::Static(id) => Session {
                id: Some(id.clone()),
                generation: 1,
            },
            Auth::Login { .. } => Session::default(),
        };
        Ok(Arc::new(Self {
            http,
            api,
            auth,
            session: RwLock::new(session),
            login_lock: Mutex::new(()),
            limiter: Semaphore::new(s.max_concurrent_calls),
            update_path_id: s.update_path_id,
            shared,
            tenant: tenant.to_string(),
        }))
    }

    pub fn update_path_id(&self) -> UpdatePathId {
        self.update_path_id
    }

    /// `POST cc/contactCenterUsers`; the new user's ccUserId when Ameyo says it.
    pub async fn create_user(
        &self,
        body: &Value,
        log: &mut Vec<CallRecord>,
    ) -> Result<Option<i64>, CallError> {
        let answer = self
            .call(
                "create",
                Method::POST,
                "cc/contactCenterUsers",
                Some(body),
                log,
            )
            .await?;
        Ok(answer.get("ccUserId").and_then(as_i64))
    }

    /// `PUT cc/contactCenterUsers/<id>`.
    pub async fn update_user(
        &self,
        path_id: &str,
        body: &Value,
        log: &mut Vec<CallRecord>,
    ) -> Result<(), CallError> {
        let path = format!("cc/contactCenterUsers/{}", encode_segment(path_id));
        self.call("update", Method::PUT, &path, Some(body), log)
            .await?;
        Ok(())
    }

    /// `DELETE user/users/<userId>`.
    pub async fn delete_user(
        &self,
        user_id: &str,
        log: &mut Vec<CallRecord>,
    ) -> Result<(), CallError> {
        let path = format!("user/users/{}", encode_segment(user_id));
        self.call("delete", Method::DELETE, &path, None, log)
            .await?;
        Ok(())
    }

    /// `POST session/terminateAllSessionsForUser`.
    pub async fn end_sessions(
        &self,
        user_id: &str,
        log: &mut Vec<CallRecord>,
    ) -> Result<(), CallError> {
        let body = json!({"userId": user_id, "reason": "deactivated by identity provider"});
        self.call(
            "end_sessions",
            Method::POST,
            "session/terminateAllSessionsForUser",
            Some(&body),
            log,
        )
        .await?;
        Ok(())
    }

    /// `GET cc/contactCenterUsers/getAllContactCenterUsers?ccId=`.
    pub async fn list_users(
        &self,
        cc_id: i64,
        log: &mut Vec<CallRecord>,
    ) -> Result<Vec<ListedUser>, CallError> {
        let path = format!("cc/contactCenterUsers/getAllContactCenterUsers?ccId={cc_id}");
        let answer = self.call("list", Method::GET, &path, None, log).await?;
        let Value::Array(items) = answer else {
            return Err(CallError::transient("the user list is not a JSON array"));
        };
        Ok(items
            .into_iter()
            .filter_map(|raw| {
                Some(ListedUser {
                    user_id: raw.get("userId")?.as_str()?.to_string(),
                    cc_user_id: raw.get("ccUserId").and_then(as_i64),
                    raw,
                })
            })
            .collect())
    }

    /// A call with the shared session; on an expired session, one login (shared with
    /// every concurrent caller that saw the same expiry) and one retry.
    async fn call(
        &self,
        name: &'static str,
        method: Method,
        path: &str,
        body: Option<&Value>,
        log: &mut Vec<CallRecord>,
    ) -> Result<Value, CallError> {
        let _permit = self
            .limiter
            .acquire()
            .await
            .map_err(|_| CallError::transient("client is shutting down"))?;
        let (session, generation) = self.current_session(log).await?;
        match self
            .send(name, method.clone(), path, body, Some(&session), log)
            .await?
        {
            Attempt::Done(v) => Ok(v),
            Attempt::SessionExpired => {
                let (session, _) = self.relogin(generation, log).await?;
                match self
                    .send(name, method, path, body, Some(&session), log)
                    .await?
                {
                    Attempt::Done(v) => Ok(v),
                    Attempt::SessionExpired => Err(CallError::transient(
                        "Ameyo refused a fresh session; will retry",
                    )),
                }
            }
        }
    }

    async fn current_session(
        &self,
        log: &mut Vec<CallRecord>,
    ) -> Result<(SecretString, u64), CallError> {
        {
            let s = self.session.read().await;
            if let Some(id) = &s.id {
                return Ok((id.clone(), s.generation));
            }
        }
        self.relogin(0, log).await
    }

    /// A session newer than `seen`: one that someone (in this process or, through the
    /// shared store, another one) already made, or a fresh login.
    async fn relogin(
        &self,
        seen: u64,
        log: &mut Vec<CallRecord>,
    ) -> Result<(SecretString, u64), CallError> {
        let Auth::Login { .. } = &self.auth else {
            return Err(CallError::Permanent {
                reason: "the configured static session id was refused by Ameyo".into(),
                status: None,
            });
        };
        let _single_flight = self.login_lock.lock().await;
        {
            let s = self.session.read().await;
            if let Some(id) = &s.id
                && s.generation > seen
            {
                return Ok((id.clone(), s.generation));
            }
        }
        let (id, generation) = match &self.shared {
            None => {
                let id = self.login(log).await?;
                (id, self.session.read().await.generation + 1)
            }
            Some(shared) => self.shared_login(shared.as_ref(), seen, log).await?,
        };
        let mut s = self.session.write().await;
        s.id = Some(id.clone());
        s.generation = generation;
        Ok((id, generation))
    }

    async fn shared_login(
        &self,
        shared: &dyn SessionStore,
        seen: u64,
        log: &mut Vec<CallRecord>,
    ) -> Result<(SecretString, u64), CallError> {
        let store_err = |e: String| CallError::transient(format!("shared session: {e}"));
        let started = Instant::now();
        loop {
            let (id, generation) = shared.load().await.map_err(store_err)?;
            if let Some(id) = id
                && generation > seen
            {
                return Ok((id, generation));
            }
            // A newer session we cannot use (sealed with an older key) is replaced too.
            if shared
                .begin_login(seen.max(generation))
                .await
                .map_err(store_err)?
            {
                return match self.login(log).await {
                    Ok(id) => {
                        let generation = shared.publish(&id).await.map_err(store_err)?;
                        Ok((id, generation))
                    }
                    Err(e) => {
                        let _ = shared.abandon_login().await;
                        Err(e)
                    }
                };
            }
            // Another process is logging in: adopt its session once it is published.
            if started.elapsed() > ADOPT_WAIT {
                return Err(CallError::transient(
                    "waited too long for another replica's Ameyo login",
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn login(&self, log: &mut Vec<CallRecord>) -> Result<SecretString, CallError> {
        let result = self.try_login(log).await;
        crate::telemetry::metrics::login(&self.tenant, result.is_ok());
        result
    }

    async fn try_login(&self, log: &mut Vec<CallRecord>) -> Result<SecretString, CallError> {
        let Auth::Login {
            user,
            password,
            domain,
            call,
        } = &self.auth
        else {
            return Err(CallError::transient("no login configured"));
        };
        let (path, mut body) = match call {
            LoginCall::UserLogin => (
                "userLogin/login",
                json!({"userId": user, "token": password.expose_secret(), "forceLogin": true}),
            ),
            LoginCall::SessionUserLogin => (
                "session/userLogin",
                json!({"userId": user, "token": password.expose_secret(), "forceLogin": true, "terminalInfo": "ameyo-scim"}),
            ),
        };
        if let Some(d) = domain {
            body["domain"] = d.as_str().into();
        }
        let answer = match self
            .send("login", Method::POST, path, Some(&body), None, log)
            .await
        {
            Ok(Attempt::Done(v)) => v,
            Ok(Attempt::SessionExpired) => {
                return Err(CallError::transient("Ameyo refused the login credentials"));
            }
            // A failed login fails this delivery for now, whatever the reason: the
            // next attempt logs in again (a wrong password shows in every attempt).
            Err(e) => return Err(CallError::transient(format!("login failed: {e}"))),
        };
        let id = answer
            .get("userSessionInfo")
            .and_then(|i| i.get("sessionId"))
            .or_else(|| answer.get("sessionId"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| CallError::transient("the login answer carries no sessionId"))?;
        tracing::info!("logged in to Ameyo");
        Ok(SecretString::from(id.to_string()))
    }

    /// One HTTP exchange, classified.
    async fn send(
        &self,
        name: &'static str,
        method: Method,
        path: &str,
        body: Option<&Value>,
        session: Option<&SecretString>,
        log: &mut Vec<CallRecord>,
    ) -> Result<Attempt, CallError> {
        let url = self.api.join(path).map_err(|e| CallError::Permanent {
            reason: format!("bad Ameyo path: {e}"),
            status: None,
        })?;
        let mut req = self.http.request(method, url);
        if let Some(s) = session {
            req = req.header("sessionId", s.expose_secret());
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let started = Instant::now();
        let result = match req.send().await {
            Ok(resp) => classify(resp).await,
            Err(e) => Err(CallError::Transient {
                reason: describe_transport_error(&e),
                retry_after: None,
                status: None,
                maybe_applied: !e.is_connect(),
            }),
        };
        let (status, error) = match &result {
            Ok(Attempt::Done(_)) => (Some(200), None),
            Ok(Attempt::SessionExpired) => (None, Some("session expired".to_string())),
            Err(e) => (e.status(), Some(e.to_string())),
        };
        crate::telemetry::metrics::ameyo_call(
            &self.tenant,
            name,
            status,
            started.elapsed().as_secs_f64(),
        );
        log.push(CallRecord {
            call: name,
            status,
            duration: started.elapsed(),
            error,
        });
        result
    }
}

fn as_i64(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_str()?.trim().parse().ok())
}

/// One path segment, percent-encoded except for the characters RFC 3986 allows there
/// as they are (so an e-mail userId keeps its `@`).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~@:!$&'()*+,;=".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn describe_transport_error(e: &reqwest::Error) -> String {
    // reqwest's Display includes the URL, which holds no secret (the session id
    // travels in a header), but keep the message short and stable.
    if e.is_timeout() {
        "Ameyo did not answer in time".into()
    } else if e.is_connect() {
        "cannot connect to Ameyo".into()
    } else {
        "the connection to Ameyo failed".into()
    }
}

/// The reason key of an Ameyo error body: `info`, else `message`, else the text.
fn reason(body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let key = parsed.as_ref().and_then(|v| {
        ["info", "message"]
            .iter()
            .filter_map(|k| v.get(*k)?.as_str())
            .find(|s| !s.trim().is_empty())
            .map(str::to_string)
    });
    let text = match key {
        Some(k) => k,
        None if parsed.is_some() => "no reason given".into(),
        // Not JSON (an HTML error page, say): a short, single-line excerpt.
        None => body
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .chars()
            .filter(|c| !c.is_control())
            .collect(),
    };
    text.chars().take(MAX_REASON_CHARS).collect()
}

fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    let v = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// 512 reasons that will not change by retrying.
fn permanent_512(reason: &str) -> bool {
    let r = reason.to_ascii_lowercase();
    [
        "invalid",
        "expected",
        "not.allowed",
        "notallowed",
        "illegal",
        "exceed",
        "mandatory",
        "required",
        "format",
    ]
    .iter()
    .any(|k| r.contains(k))
}

async fn read_body(mut resp: reqwest::Response) -> Result<Vec<u8>, CallError> {
    let mut out = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if out.len() + chunk.len() > MAX_RESPONSE_BYTES {
                    return Err(CallError::transient("Ameyo's answer is too large"));
                }
                out.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(out),
            Err(_) => {
                return Err(CallError::Transient {
                    reason: "the answer from Ameyo was cut off".into(),
                    retry_after: None,
                    status: None,
                    maybe_applied: true,
                });
            }
        }
    }
}

async fn classify(resp: reqwest::Response) -> Result<Attempt, CallError> {
    let status = resp.status();
    let code = status.as_u16();
    let after = retry_after(&resp);
    let bytes = read_body(resp).await?;
    let text = String::from_utf8_lossy(&bytes);
    if status.is_success() {
        if text.trim().is_empty() {
            return Ok(Attempt::Done(Value::Null));
        }
        return serde_json::from_str(&text)
            .map(Attempt::Done)
            .map_err(|_| CallError::Transient {
                reason: "Ameyo answered success with a body that is not JSON".into(),
                retry_after: None,
                status: Some(code),
                maybe_applied: true,
            });
    }
    let why = reason(&text);
    let lower = why.to_ascii_lowercase();
    match status {
        StatusCode::UNAUTHORIZED => Ok(Attempt::SessionExpired),
        StatusCode::FORBIDDEN if lower.contains("session") || lower.contains("authentication") => {
            Ok(Attempt::SessionExpired)
        }
        StatusCode::TOO_MANY_REQUESTS | StatusCode::REQUEST_TIMEOUT => Err(CallError::Transient {
            reason: format!("Ameyo answered {code}: {why}"),
            retry_after: after,
            status: Some(code),
            maybe_applied: false,
        }),
        StatusCode::NOT_FOUND if lower.contains("user") => Err(CallError::NotFound {
            reason: format!("Ameyo answered {code}: {why}"),
            status: Some(code),
        }),
        s if code == 512 => {
            let reason = format!("Ameyo answered 512: {why}");
            if lower.contains("not.found")
                || lower.contains("notfound")
                || lower.contains("does.not.exist")
            {
                Err(CallError::NotFound {
                    reason,
                    status: Some(code),
                })
            } else if lower.contains("already")
                || lower.contains("duplicate")
                || lower.contains("exists")
            {
                Err(CallError::AlreadyExists {
                    reason,
                    status: Some(code),
                })
            } else if permanent_512(&why) {
                Err(CallError::Permanent {
                    reason,
                    status: Some(code),
                })
            } else {
                let _ = s;
                Err(CallError::Transient {
                    reason,
                    retry_after: after,
                    status: Some(code),
                    maybe_applied: true,
                })
            }
        }
        s if s.is_server_error() => Err(CallError::Transient {
            reason: format!("Ameyo answered {code}: {why}"),
            retry_after: after,
            status: Some(code),
            maybe_applied: true,
        }),
        _ => Err(CallError::Permanent {
            reason: format!("Ameyo answered {code}: {why}"),
            status: Some(code),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_come_from_info_then_message_then_text() {
        assert_eq!(
            reason(r#"{"message":null,"code":99999,"info":"invalid.session.id","status":403}"#),
            "invalid.session.id"
        );
        assert_eq!(
            reason(r#"{"message":"InvalidInput","code":40001,"info":""}"#),
            "InvalidInput"
        );
        assert_eq!(
            reason("<html><body>\n Internal   Server Error</body></html>"),
            "<html><body> Internal Server Error</body></html>"
        );
        assert_eq!(reason(&"x".repeat(1000)).len(), MAX_REASON_CHARS);
        assert!(permanent_512("InvalidInput"));
        assert!(!permanent_512(
            "SessionService.login.failed.not.able.to.fetch.user.info"
        ));
        assert_eq!(encode_segment("a b/c"), "a%20b%2Fc");
        assert_eq!(encode_segment("ann@x.example"), "ann@x.example");
        assert_eq!(encode_segment("50%?#"), "50%25%3F%23");
    }
}
