//! The Ameyo REST client: one per tenant, shared by every worker in the process. It
//! owns the session (log in, share the id, log in again once when a call says the
//! session is gone), caps concurrent calls, and classifies every failure.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::{Method, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::{Mutex, RwLock, Semaphore};

use crate::config::{AmeyoSettings, LoginCall, UpdatePathId};

/// Largest Ameyo answer read, in bytes (the user list can be large).
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
/// Longest reason kept from an Ameyo error body.
const MAX_REASON_CHARS: usize = 300;
/// The reason key by which Ameyo says it does not know the user. Only this exact key
/// (whole key, ASCII case aside) means absence: the worker treats absence as "already
/// gone" for deletes and locks, so anything looser would fail open.
const USER_NOT_FOUND: &str = "user.not.found";
/// The reason key of a 403 for an expired or unknown session.
const INVALID_SESSION: &str = "invalid.session.id";
/// The name of the create call, the only one whose duplicate answer means AlreadyExists.
const CREATE: &str = "create";
/// How long a contact center's listing may be reused by [`AmeyoClient::lookup_listing`].
const LISTING_TTL: Duration = Duration::from_secs(10);
/// Most contact centers whose listing is kept at once (see [`ListingCache`]).
const MAX_CACHED_LISTINGS: usize = 32;

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

/// The fields of a listed user that lookups need; the raw JSON is not kept, so cached
/// listings stay small.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedSummary {
    pub user_id: String,
    pub cc_user_id: Option<i64>,
    pub user_name: Option<String>,
    pub mapping_user_id: Option<String>,
    pub user_type: Option<String>,
}

/// One contact center's users as one list call returned them.
#[derive(Debug, Clone, PartialEq)]
pub struct Listing {
    /// When the list request was sent: the listing shows Ameyo as it was at some moment
    /// after this.
    pub started: DateTime<Utc>,
    /// By Ameyo userId, exactly as Ameyo spells it.
    pub users: HashMap<String, ListedSummary>,
}

impl Listing {
    /// The user with exactly this userId (no case folding: Ameyo's ids are compared as
    /// given).
    pub fn get(&self, user_id: &str) -> Option<&ListedSummary> {
        self.users.get(user_id)
    }
}

/// What is known of one contact center's listing. Its tokio mutex is held while a list
/// call for that contact center is in flight, so concurrent lookups wait for that one
/// call instead of each making their own.
#[derive(Default)]
struct ListingSlot {
    /// The last listing and when (monotonic clock) its request was sent.
    listing: Option<(Instant, Arc<Listing>)>,
    /// The last failed list call and when it failed: callers that were already waiting
    /// when it failed get the same error rather than each trying again in turn.
    failure: Option<(Instant, CallError)>,
}

/// Listings by contact center. Memory bound: at most [`MAX_CACHED_LISTINGS`] contact
/// centers are kept (the least recently looked-up one is dropped to make room), each
/// holding one listing of [`ListedSummary`] values only (no raw JSON), so the cache
/// holds at most 32 listings' worth of summaries. A dropped slot that still has a call
/// in flight finishes for its waiters; only later lookups start afresh.
#[derive(Default)]
struct ListingCache {
    slots: HashMap<i64, (Arc<Mutex<ListingSlot>>, Instant)>,
}

impl ListingCache {
    fn slot(&mut self, cc_id: i64) -> Arc<Mutex<ListingSlot>> {
        let now = Instant::now();
        if let Some((slot, used)) = self.slots.get_mut(&cc_id) {
            *used = now;
            return slot.clone();
        }
        if self.slots.len() >= MAX_CACHED_LISTINGS
            && let Some(oldest) = self
                .slots
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(cc, _)| *cc)
        {
            self.slots.remove(&oldest);
        }
        let slot = Arc::new(Mutex::new(ListingSlot::default()));
        self.slots.insert(cc_id, (slot.clone(), now));
        slot
    }
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
    /// Recent listings per contact center, for [`AmeyoClient::lookup_listing`]. A std
    /// mutex: it is only held to find a slot, never across an await.
    listings: std::sync::Mutex<ListingCache>,
}

/// Outcome of a call that may need a session: its answer decoded as `T` (a JSON
/// `Value` unless the call needs only some fields of a large answer).
#[derive(Debug)]
enum Attempt<T = Value> {
    Done(T),
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
        // Unset only where settings were not loaded through `Settings` (which fills
        // in `sync.concurrency`): the default concurrency.
        let max_calls = s.max_concurrent_calls.unwrap_or(8).max(1);
        // One connection per call in flight, kept open between calls.
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(s.connect_timeout_secs))
            .timeout(Duration::from_secs(s.request_timeout_secs))
            .user_agent(concat!("ameyo-scim/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(max_calls);
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
            limiter: Semaphore::new(max_calls),
            update_path_id: s.update_path_id,
            shared,
            tenant: tenant.to_string(),
            listings: std::sync::Mutex::new(ListingCache::default()),
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
        let answer: Value = self
            .call(
                CREATE,
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
        self.call::<Value>("update", Method::PUT, &path, Some(body), log)
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
        self.call::<Value>("delete", Method::DELETE, &path, None, log)
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
        self.call::<Value>(
            "end_sessions",
            Method::POST,
            "session/terminateAllSessionsForUser",
            Some(&body),
            log,
        )
        .await?;
        Ok(())
    }

    /// `GET cc/contactCenterUsers/getAllContactCenterUsers?ccId=`, every user with its
    /// raw JSON (for reconcile). Not cached: see [`Self::lookup_listing`].
    pub async fn list_users(
        &self,
        cc_id: i64,
        log: &mut Vec<CallRecord>,
    ) -> Result<Vec<ListedUser>, CallError> {
        Ok(self
            .fetch_list(cc_id, log)
            .await?
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

    /// A listing of contact center `cc_id` whose request was sent at or after
    /// `not_before`: a cached one younger than [`LISTING_TTL`] if there is one (no call,
    /// nothing added to `log`), else a fresh one (the freshest there can be, even if
    /// `not_before` lies in the future). Concurrent lookups of one contact center share
    /// one list call and get the same `Arc`; callers that waited for a list call that
    /// failed get its error.
    pub async fn lookup_listing(
        &self,
        cc_id: i64,
        not_before: DateTime<Utc>,
        log: &mut Vec<CallRecord>,
    ) -> Result<Arc<Listing>, CallError> {
        let arrived = Instant::now();
        let slot = self
            .listings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .slot(cc_id);
        // Held across the list call: this is the single flight.
        let mut slot = slot.lock().await;
        if let Some((sent, listing)) = &slot.listing
            && listing.started >= not_before
            && sent.elapsed() < LISTING_TTL
        {
            return Ok(listing.clone());
        }
        if let Some((failed, e)) = &slot.failure
            && *failed >= arrived
        {
            return Err(e.clone());
        }
        let started = Utc::now();
        let sent = Instant::now();
        match self.fetch_summaries(cc_id, log).await {
            Ok(items) => {
                let users = items
                    .into_iter()
                    .filter_map(ListEntry::summary)
                    .map(|u| (u.user_id.clone(), u))
                    .collect();
                let listing = Arc::new(Listing { started, users });
                slot.listing = Some((sent, listing.clone()));
                slot.failure = None;
                Ok(listing)
            }
            Err(e) => {
                slot.failure = Some((Instant::now(), e.clone()));
                Err(e)
            }
        }
    }

    /// The list call, each user decoded into the few fields a lookup keeps: a
    /// contact center of 100,000 agents is never held as a tree of JSON values.
    async fn fetch_summaries(
        &self,
        cc_id: i64,
        log: &mut Vec<CallRecord>,
    ) -> Result<Vec<ListEntry>, CallError> {
        let path = format!("cc/contactCenterUsers/getAllContactCenterUsers?ccId={cc_id}");
        match self
            .call::<Option<Vec<ListEntry>>>("list", Method::GET, &path, None, log)
            .await
        {
            Ok(Some(items)) => Ok(items),
            Ok(None) => Err(CallError::transient("the user list is not a JSON array")),
            Err(CallError::Transient { reason, .. }) if reason == SUCCESS_NOT_JSON => {
                Err(CallError::transient("the user list is not a JSON array"))
            }
            Err(e) => Err(e),
        }
    }

    async fn fetch_list(
        &self,
        cc_id: i64,
        log: &mut Vec<CallRecord>,
    ) -> Result<Vec<Value>, CallError> {
        let path = format!("cc/contactCenterUsers/getAllContactCenterUsers?ccId={cc_id}");
        match self.call("list", Method::GET, &path, None, log).await? {
            Value::Array(items) => Ok(items),
            _ => Err(CallError::transient("the user list is not a JSON array")),
        }
    }

    /// A call with the shared session; on an expired session, one login (shared with
    /// every concurrent caller that saw the same expiry) and one retry.
    async fn call<T: DeserializeOwned>(
        &self,
        name: &'static str,
        method: Method,
        path: &str,
        body: Option<&Value>,
        log: &mut Vec<CallRecord>,
    ) -> Result<T, CallError> {
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
            // Not permanent: the user's change is fine, only the session is not, and an
            // operator can fix that; dead-lettering every user would lose the backlog.
            // Counted as a failed login, so the login-failure alert fires.
            crate::telemetry::metrics::login(&self.tenant, false);
            return Err(CallError::transient(
                "the configured session_id was refused by Ameyo (expired?); configure a fresh \
                 one or login_user/login_password",
            ));
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
        let answer: Value = match self
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
    async fn send<T: DeserializeOwned>(
        &self,
        name: &'static str,
        method: Method,
        path: &str,
        body: Option<&Value>,
        session: Option<&SecretString>,
        log: &mut Vec<CallRecord>,
    ) -> Result<Attempt<T>, CallError> {
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
            Ok(resp) => classify(name, resp).await,
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

/// A text or a number in a listed user (Ameyo sends some fields either way); anything
/// else is skipped without being kept.
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Text(String),
    Number(serde_json::Number),
    Other(serde::de::IgnoredAny),
}

impl Scalar {
    fn text(self) -> Option<String> {
        match self {
            Scalar::Text(s) => Some(s),
            Scalar::Number(n) => Some(n.to_string()),
            Scalar::Other(_) => None,
        }
    }

    fn int(self) -> Option<i64> {
        match self {
            Scalar::Text(s) => s.trim().parse().ok(),
            Scalar::Number(n) => n.as_i64(),
            Scalar::Other(_) => None,
        }
    }
}

/// The fields of one listed user a lookup keeps; every other field is skipped as it is
/// read. An entry that is not an object, or has no string userId, is skipped.
#[derive(Deserialize)]
#[serde(untagged)]
enum ListEntry {
    User {
        #[serde(rename = "userId", default)]
        user_id: Option<Scalar>,
        #[serde(rename = "ccUserId", default)]
        cc_user_id: Option<Scalar>,
        #[serde(rename = "userName", default)]
        user_name: Option<Scalar>,
        #[serde(rename = "mappingUserId", default)]
        mapping_user_id: Option<Scalar>,
        #[serde(rename = "userType", default)]
        user_type: Option<Scalar>,
    },
    Other(serde::de::IgnoredAny),
}

impl ListEntry {
    /// Its summary; `None` without a string userId.
    fn summary(self) -> Option<ListedSummary> {
        let ListEntry::User {
            user_id: Some(Scalar::Text(user_id)),
            cc_user_id,
            user_name,
            mapping_user_id,
            user_type,
        } = self
        else {
            return None;
        };
        Some(ListedSummary {
            user_id,
            cc_user_id: cc_user_id.and_then(Scalar::int),
            user_name: user_name.and_then(Scalar::text),
            mapping_user_id: mapping_user_id.and_then(Scalar::text),
            user_type: user_type.and_then(Scalar::text),
        })
    }
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

/// What an Ameyo error answer says.
#[derive(Debug, PartialEq)]
struct ErrorBody {
    /// The reason keys of `info` and then `message` (each a key or a bracketed,
    /// comma-separated list of keys), trimmed, without repeats.
    keys: Vec<String>,
    /// For messages: the keys, or an excerpt of a body without keys (an HTML page).
    text: String,
}

impl ErrorBody {
    fn parse(body: &str) -> Self {
        let mut keys: Vec<String> = Vec::new();
        if let Ok(v) = serde_json::from_str::<Value>(body) {
            for field in ["info", "message"] {
                let texts: Vec<&str> = match v.get(field) {
                    Some(Value::String(s)) => vec![s.as_str()],
                    Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
                    _ => Vec::new(),
                };
                for key in texts.into_iter().flat_map(split_keys) {
                    if !keys.iter().any(|k| k == key) {
                        keys.push(key.to_string());
                    }
                }
            }
        }
        let text = if !keys.is_empty() {
            keys.join(", ")
        } else if body.trim().is_empty() {
            "an empty body".into()
        } else {
            // Not Ameyo's error shape (an HTML page, say): a short, single-line excerpt.
            body.split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .chars()
                .filter(|c| !c.is_control())
                .collect()
        };
        ErrorBody {
            keys,
            text: text.chars().take(MAX_REASON_CHARS).collect(),
        }
    }

    /// Whether one key is exactly `key` (ASCII case aside); never a substring match.
    fn has(&self, key: &str) -> bool {
        self.keys.iter().any(|k| k.eq_ignore_ascii_case(key))
    }

    /// Whether a key says the userId is taken. A loose match is safe here: the worker
    /// lists the users to confirm before adopting an existing one.
    fn says_duplicate(&self) -> bool {
        self.keys.iter().any(|k| {
            let k = k.to_ascii_lowercase();
            ["already", "exists", "duplicate"]
                .iter()
                .any(|w| k.contains(w))
        })
    }
}

/// `"[user.not.found, x.y]"` -> `["user.not.found", "x.y"]`; `"user.not.found"` ->
/// `["user.not.found"]`.
fn split_keys(text: &str) -> impl Iterator<Item = &str> {
    let t = text.trim();
    let t = t
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(t);
    t.split(',')
        .map(|k| k.trim().trim_matches(|c| c == '"' || c == '\'').trim())
        .filter(|k| !k.is_empty())
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

async fn classify<T: DeserializeOwned>(
    call: &str,
    resp: reqwest::Response,
) -> Result<Attempt<T>, CallError> {
    let code = resp.status().as_u16();
    let after = retry_after(&resp);
    let body = read_body(resp).await?;
    classify_answer(call, code, &body, after)
}

/// The meaning of an HTTP answer to `call`. Fails closed: an answer is absence
/// (NotFound) or an expired session only when Ameyo says so with its exact reason key,
/// so a proxy's or firewall's page is retried and visible rather than taken for either.
const SUCCESS_NOT_JSON: &str = "Ameyo answered success with a body that is not JSON";

fn classify_answer<T: DeserializeOwned>(
    call: &str,
    code: u16,
    body: &[u8],
    after: Option<Duration>,
) -> Result<Attempt<T>, CallError> {
    let text = String::from_utf8_lossy(body);
    if (200..300).contains(&code) {
        // Decoded straight into `T`: a list of every user is never held as a tree of
        // `Value`s, only as the fields the caller keeps.
        let text: &str = if text.trim().is_empty() {
            "null"
        } else {
            &text
        };
        return serde_json::from_str(text)
            .map(Attempt::Done)
            .map_err(|_| CallError::Transient {
                reason: SUCCESS_NOT_JSON.into(),
                retry_after: None,
                status: Some(code),
                maybe_applied: true,
            });
    }
    let answer = ErrorBody::parse(&text);
    let why = &answer.text;
    let transient = |reason: String, maybe_applied: bool| {
        Err(CallError::Transient {
            reason,
            retry_after: after,
            status: Some(code),
            maybe_applied,
        })
    };
    let status = Some(code);
    match code {
        401 => Ok(Attempt::SessionExpired),
        403 if answer.has(INVALID_SESSION) => Ok(Attempt::SessionExpired),
        // Not a session Ameyo ended: logging in again would not help and could end the
        // administrator's other sessions for nothing.
        403 => transient(
            format!(
                "Ameyo answered 403 without {INVALID_SESSION} (a proxy or firewall page, or \
                 missing rights?): {why}"
            ),
            false,
        ),
        400 | 404 | 512 if answer.has(USER_NOT_FOUND) => Err(CallError::NotFound {
            reason: format!("Ameyo answered {code}: {why}"),
            status,
        }),
        400 | 409 | 512 if call == CREATE && answer.says_duplicate() => {
            Err(CallError::AlreadyExists {
                reason: format!("Ameyo answered {code}: {why}"),
                status,
            })
        }
        404 => transient(
            format!(
                "Ameyo answered 404 without {USER_NOT_FOUND} (a proxy page or a wrong \
                 base_url?): {why}"
            ),
            false,
        ),
        408 | 429 => transient(format!("Ameyo answered {code}: {why}"), false),
        // Only Ameyo's own keys can make a 512 permanent; a 512 without them is odd
        // enough to retry.
        512 if !answer.keys.is_empty() && permanent_512(why) => Err(CallError::Permanent {
            reason: format!("Ameyo answered 512: {why}"),
            status,
        }),
        500..=599 => transient(format!("Ameyo answered {code}: {why}"), true),
        _ => Err(CallError::Permanent {
            reason: format!("Ameyo answered {code}: {why}"),
            status,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NGINX_404: &str = "<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n\
        <center><h1>404 Not Found</h1></center>\r\n<hr><center>nginx</center>\r\n\
        <p>The user you are looking for is not here.</p></body>\r\n</html>\r\n";

    fn answer(call: &str, code: u16, body: &str) -> Result<Attempt, CallError> {
        classify_answer(call, code, body.as_bytes(), None)
    }

    fn is_not_found(r: &Result<Attempt, CallError>) -> bool {
        matches!(r, Err(CallError::NotFound { .. }))
    }

    fn is_expired(r: &Result<Attempt, CallError>) -> bool {
        matches!(r, Ok(Attempt::SessionExpired))
    }

    /// A Transient that is not maybe_applied, with the given reason fragment.
    #[track_caller]
    fn assert_unapplied_transient(r: Result<Attempt, CallError>, code: u16, fragment: &str) {
        match r {
            Err(CallError::Transient {
                reason,
                status,
                maybe_applied: false,
                ..
            }) => {
                assert_eq!(status, Some(code));
                assert!(reason.contains(fragment), "{reason}");
            }
            other => panic!("expected a Transient not applied, got {other:?}"),
        }
    }

    #[test]
    fn keys_come_from_info_and_message_split_and_trimmed() {
        let b = ErrorBody::parse(
            r#"{"message":null,"code":99999,"info":"invalid.session.id","status":403}"#,
        );
        assert_eq!(b.keys, ["invalid.session.id"]);
        assert_eq!(b.text, "invalid.session.id");
        let b = ErrorBody::parse(r#"{"message":"[ user.not.found , x.y ]","info":"a.b"}"#);
        assert_eq!(b.keys, ["a.b", "user.not.found", "x.y"]);
        assert_eq!(b.text, "a.b, user.not.found, x.y");
        // The emulator and some servers repeat the key in both fields.
        let b = ErrorBody::parse(r#"{"message":"user.not.found","info":"user.not.found"}"#);
        assert_eq!(b.keys, ["user.not.found"]);
        let b = ErrorBody::parse(r#"{"message":"InvalidInput","code":40001,"info":""}"#);
        assert_eq!(b.keys, ["InvalidInput"]);
        let b = ErrorBody::parse(r#"{"message":["user.not.found"],"info":null}"#);
        assert_eq!(b.keys, ["user.not.found"]);
        let b = ErrorBody::parse(r#"{"message":"[]"}"#);
        assert!(b.keys.is_empty());
        assert_eq!(b.text, r#"{"message":"[]"}"#);
        let b = ErrorBody::parse("<html><body>\n Internal   Server Error</body></html>");
        assert!(b.keys.is_empty());
        assert_eq!(b.text, "<html><body> Internal Server Error</body></html>");
        assert_eq!(ErrorBody::parse("  ").text, "an empty body");
        assert_eq!(
            ErrorBody::parse(&"x".repeat(1000)).text.len(),
            MAX_REASON_CHARS
        );
    }

    #[test]
    fn not_found_only_for_the_exact_user_not_found_key() {
        for body in [
            r#"{"message":"user.not.found","code":5123,"info":"user.not.found","status":512}"#,
            r#"{"message":"[user.not.found]"}"#,
            r#"{"message":"[x.y, USER.NOT.FOUND]"}"#,
            r#"{"info":"User.Not.Found"}"#,
        ] {
            for call in ["delete", "update", "end_sessions"] {
                for code in [400, 404, 512] {
                    assert!(is_not_found(&answer(call, code, body)), "{code} {body}");
                }
            }
        }
        // The right key on another status is not absence.
        for code in [403, 409, 500, 503] {
            assert!(
                !is_not_found(&answer("delete", code, r#"{"info":"user.not.found"}"#)),
                "{code}"
            );
        }
        // Substrings and look-alikes are not absence.
        for body in [
            r#"{"info":"contactcenter.not.found"}"#,
            r#"{"info":"user.not.found.in.campaign"}"#,
            r#"{"message":"no user.not.found here"}"#,
            r#"{"info":"requested.resource.not.found"}"#,
            r#"{"info":"user.does.not.exist"}"#,
            "user.not.found",
            NGINX_404,
            "",
        ] {
            for code in [400, 404, 512] {
                assert!(
                    !is_not_found(&answer("delete", code, body)),
                    "{code} {body}"
                );
            }
        }
    }

    #[test]
    fn every_other_404_is_a_visible_transient() {
        for body in [
            NGINX_404,
            r#"{"message":"requested.resource.not.found","code":404,"info":null,"status":404}"#,
            r#"{"info":"contactcenter.not.found"}"#,
            "",
        ] {
            for call in ["delete", "update", "create", "list"] {
                assert_unapplied_transient(
                    answer(call, 404, body),
                    404,
                    "Ameyo answered 404 without user.not.found (a proxy page or a wrong base_url?)",
                );
            }
        }
        assert_unapplied_transient(answer("delete", 404, NGINX_404), 404, "nginx");
        assert_unapplied_transient(answer("delete", 404, ""), 404, "an empty body");
    }

    #[test]
    fn a_512_with_another_not_found_key_is_retried() {
        match answer("delete", 512, r#"{"info":"contactcenter.not.found"}"#) {
            Err(CallError::Transient {
                reason,
                status: Some(512),
                ..
            }) => assert!(reason.contains("contactcenter.not.found"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn session_expiry_is_401_or_403_with_exactly_invalid_session_id() {
        assert!(is_expired(&answer("update", 401, "")));
        assert!(is_expired(&answer(
            "update",
            401,
            r#"{"message":"invalid.authentication.token","code":909090}"#
        )));
        assert!(is_expired(&answer(
            "update",
            403,
            r#"{"message":null,"code":99999,"info":"invalid.session.id","status":403}"#
        )));
        assert!(is_expired(&answer(
            "update",
            403,
            r#"{"message":"[Invalid.Session.Id]"}"#
        )));
        for body in [
            r#"{"info":"access.denied"}"#,
            r#"{"info":"invalid.session.id.format"}"#,
            r#"{"message":"session expired"}"#,
            "<html><body>Request blocked: invalid.session.id</body></html>",
            "",
        ] {
            assert_unapplied_transient(
                answer("update", 403, body),
                403,
                "Ameyo answered 403 without invalid.session.id",
            );
        }
    }

    #[test]
    fn already_exists_only_on_create_and_only_on_512_409_400() {
        for code in [400, 409, 512] {
            for body in [
                r#"{"message":"user.already.exists","info":"user.already.exists"}"#,
                r#"{"info":"duplicate.user.id"}"#,
                r#"{"message":"[userId.exists]"}"#,
            ] {
                assert!(
                    matches!(
                        answer("create", code, body),
                        Err(CallError::AlreadyExists { status: Some(c), .. }) if c == code
                    ),
                    "{code} {body}"
                );
            }
        }
        let dup = r#"{"info":"user.already.exists"}"#;
        for code in [403, 404, 500] {
            assert!(
                !matches!(
                    answer("create", code, dup),
                    Err(CallError::AlreadyExists { .. })
                ),
                "{code}"
            );
        }
        for call in ["update", "delete", "login", "end_sessions"] {
            assert!(
                !matches!(answer(call, 512, dup), Err(CallError::AlreadyExists { .. })),
                "{call}"
            );
        }
        // A proxy page mentioning "already" is no duplicate either.
        assert!(!matches!(
            answer("create", 409, "<html>Request already in progress</html>"),
            Err(CallError::AlreadyExists { .. })
        ));
    }

    #[test]
    fn other_answers_keep_their_classes() {
        match answer(
            "update",
            512,
            r#"{"message":"InvalidInput","info":"invalid.user.type"}"#,
        ) {
            Err(CallError::Permanent {
                status: Some(512), ..
            }) => {}
            other => panic!("{other:?}"),
        }
        // A 512 without Ameyo's keys is not taken as a verdict on the data.
        match answer("update", 512, "<html>invalid request</html>") {
            Err(CallError::Transient {
                maybe_applied: true,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        match answer(
            "login",
            512,
            r#"{"info":"SessionService.login.failed.not.able.to.fetch.user.info"}"#,
        ) {
            Err(CallError::Transient {
                maybe_applied: true,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        match classify_answer::<Value>("update", 429, b"", Some(Duration::from_secs(7))) {
            Err(CallError::Transient {
                retry_after: Some(d),
                maybe_applied: false,
                ..
            }) => assert_eq!(d, Duration::from_secs(7)),
            other => panic!("{other:?}"),
        }
        match answer("update", 500, "<html>Internal Server Error</html>") {
            Err(CallError::Transient {
                maybe_applied: true,
                status: Some(500),
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        match answer(
            "update",
            400,
            r#"{"message":"InvalidInput","code":40001,"info":"parameter expected in input: userId"}"#,
        ) {
            Err(CallError::Permanent { reason, .. }) => assert_eq!(
                reason,
                "Ameyo answered 400: parameter expected in input: userId, InvalidInput"
            ),
            other => panic!("{other:?}"),
        }
        match answer("update", 405, r#"{"message":"method.not.allowed"}"#) {
            Err(CallError::Permanent {
                status: Some(405), ..
            }) => {}
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            answer("delete", 200, ""),
            Ok(Attempt::Done(Value::Null))
        ));
        assert!(matches!(
            answer("list", 200, "[]"),
            Ok(Attempt::Done(Value::Array(_)))
        ));
        match answer("delete", 200, NGINX_404) {
            Err(CallError::Transient {
                maybe_applied: true,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn permanent_512_reasons() {
        assert!(permanent_512("InvalidInput"));
        assert!(!permanent_512(
            "SessionService.login.failed.not.able.to.fetch.user.info"
        ));
    }

    fn summarise(raw: &Value) -> Option<ListedSummary> {
        serde_json::from_value::<ListEntry>(raw.clone())
            .ok()?
            .summary()
    }

    #[test]
    fn a_list_is_decoded_into_summaries_only() {
        let body = br#"[{"userId": "a", "ccUserId": 1, "extra": {"deep": [1, 2, {"x": null}]}},
                        null, 7, "text", [1],
                        {"userName": "no id"},
                        {"userId": "b", "ccUserId": "2", "mappingUserId": 9, "userType": null}]"#;
        let Ok(Attempt::Done(Some(items))) =
            classify_answer::<Option<Vec<ListEntry>>>("list", 200, body, None)
        else {
            panic!("a list decodes");
        };
        let users: Vec<ListedSummary> = items.into_iter().filter_map(ListEntry::summary).collect();
        assert_eq!(users.len(), 2);
        assert_eq!(users[0].user_id, "a");
        assert_eq!(users[0].cc_user_id, Some(1));
        assert_eq!(users[1].cc_user_id, Some(2));
        assert_eq!(users[1].mapping_user_id.as_deref(), Some("9"));
        assert_eq!(users[1].user_type, None);
        // Not a list, or not JSON: transient, never an empty listing.
        for body in [&br#"{"users": []}"#[..], b"<html>502</html>"] {
            assert!(matches!(
                classify_answer::<Option<Vec<ListEntry>>>("list", 200, body, None),
                Err(CallError::Transient { .. })
            ));
        }
    }

    #[test]
    fn listed_users_are_summarised_and_looked_up_exactly() {
        let raw = json!({"userId": "Ann@x.example", "ccUserId": "42", "userName": "Ann",
            "mappingUserId": 77, "userType": "Agent", "userData": "secret"});
        let summary = summarise(&raw).expect("has a userId");
        assert_eq!(
            summary,
            ListedSummary {
                user_id: "Ann@x.example".into(),
                cc_user_id: Some(42),
                user_name: Some("Ann".into()),
                mapping_user_id: Some("77".into()),
                user_type: Some("Agent".into()),
            }
        );
        assert_eq!(summarise(&json!({"userName": "no id"})), None);
        assert_eq!(summarise(&json!({"userId": 5})), None);
        let listing = Listing {
            started: Utc::now(),
            users: HashMap::from([(summary.user_id.clone(), summary.clone())]),
        };
        assert_eq!(listing.get("Ann@x.example"), Some(&summary));
        assert_eq!(listing.get("ann@x.example"), None);
    }

    #[test]
    fn the_listing_cache_keeps_at_most_32_contact_centers() {
        let mut cache = ListingCache::default();
        let first = cache.slot(0);
        for cc in 1..MAX_CACHED_LISTINGS as i64 {
            cache.slot(cc);
        }
        // Using cc 0 again makes cc 1 the least recently used.
        assert!(Arc::ptr_eq(&first, &cache.slot(0)));
        cache.slot(1000);
        assert_eq!(cache.slots.len(), MAX_CACHED_LISTINGS);
        assert!(cache.slots.contains_key(&0));
        assert!(!cache.slots.contains_key(&1));
        assert!(cache.slots.contains_key(&1000));
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(encode_segment("a b/c"), "a%20b%2Fc");
        assert_eq!(encode_segment("ann@x.example"), "ann@x.example");
        assert_eq!(encode_segment("50%?#"), "50%25%3F%23");
    }
}
