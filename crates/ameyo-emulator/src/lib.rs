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

mod faults;
mod routes;
mod state;
#[cfg(test)]
mod tests;

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::net::TcpListener;

pub use faults::{Faults, Outage};
use faults::{HTML_500, HTML_503, RefusingListener, html_page, too_many_requests};
use routes::{RequestBody, Route};
use state::EmulatorState;

/// Recorded calls kept; older ones are dropped first.
const MAX_RECORDED_REQUESTS: usize = 100_000;
/// What replaces passwords in recorded request bodies.
const REDACTED: &str = "[redacted]";

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
    /// API calls being answered now, and the most there ever were at once.
    calls: Arc<CallsInFlight>,
}

#[derive(Default)]
struct CallsInFlight {
    now: AtomicUsize,
    most: AtomicUsize,
}

/// One API call being answered, for [`Emulator::most_in_flight`].
struct InFlight(Arc<CallsInFlight>);

impl InFlight {
    fn start(calls: &Arc<CallsInFlight>) -> Self {
        let now = calls.now.fetch_add(1, Ordering::SeqCst) + 1;
        calls.most.fetch_max(now, Ordering::SeqCst);
        InFlight(calls.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Emulator {
    pub fn new(options: EmulatorOptions) -> Self {
        let refusing = options.faults.outage == Some(Outage::Refuse);
        Emulator {
            state: Arc::new(Mutex::new(EmulatorState::new(options))),
            refusing: Arc::new(AtomicBool::new(refusing)),
            calls: Arc::default(),
        }
    }

    /// The whole HTTP app: the Ameyo API under `/ameyorestapi/` and the admin
    /// endpoints under `/emulator/`.
    pub fn router(&self) -> Router {
        routes::router(self.clone())
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

    /// How many users it holds (cheap, unlike [`Emulator::users`]).
    pub fn user_count(&self) -> usize {
        self.lock().users.len()
    }

    /// API calls received since it started, however many [`Emulator::requests`] keeps.
    pub fn request_count(&self) -> u64 {
        self.lock().requests_received
    }

    /// The most API calls it was answering at once (latency included) since it started.
    pub fn most_in_flight(&self) -> usize {
        self.calls.most.load(Ordering::SeqCst)
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
        let _in_flight = InFlight::start(&self.calls);
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
        state.requests_received += 1;
        if state.requests.len() >= MAX_RECORDED_REQUESTS {
            state.requests.pop_front();
        }
        state.requests.push_back(request);
    }
}
