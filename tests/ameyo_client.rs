//! The Ameyo client against a small, hostile fake Ameyo: answers the project's emulator
//! never makes (a proxy's HTML 404, a firewall's 403, late answers), to check that the
//! client never takes them for a missing user or an expired session. No database needed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ameyo_scim::ameyo::client::{AmeyoClient, CallError, CallRecord};
use ameyo_scim::config::AmeyoSettings;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::Response;
use serde_json::{Value, json};

/// One request the fake received.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    /// The path under `/ameyorestapi/`, with its query.
    path: String,
    session: Option<String>,
}

impl Seen {
    fn is_login(&self) -> bool {
        self.path == "userLogin/login"
    }

    fn is_list(&self) -> bool {
        self.path
            .starts_with("cc/contactCenterUsers/getAllContactCenterUsers")
    }
}

/// How the fake answers one request.
struct Reply {
    status: u16,
    body: String,
    html: bool,
    /// Sent after recording the request, so the request counts as applied.
    delay: Duration,
}

impl Reply {
    fn json(status: u16, body: Value) -> Self {
        Reply {
            status,
            body: body.to_string(),
            html: false,
            delay: Duration::ZERO,
        }
    }

    fn html(status: u16, page: &str) -> Self {
        Reply {
            status,
            body: page.to_string(),
            html: true,
            delay: Duration::ZERO,
        }
    }

    fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// Answers a request, given every request seen so far (this one last).
type Script = dyn Fn(&Seen, &[Seen]) -> Reply + Send + Sync;

#[derive(Clone)]
struct Fake {
    seen: Arc<Mutex<Vec<Seen>>>,
    script: Arc<Script>,
}

impl Fake {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("fake state").clone()
    }

    fn count(&self, what: impl Fn(&Seen) -> bool) -> usize {
        self.seen().iter().filter(|s| what(s)).count()
    }
}

async fn answer(
    State(fake): State<Fake>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let path = uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("")
        .trim_start_matches("/ameyorestapi/")
        .to_string();
    let seen = Seen {
        method,
        path,
        session: headers
            .get("sessionId")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    };
    let reply = {
        let mut all = fake.seen.lock().expect("fake state");
        all.push(seen.clone());
        (fake.script)(&seen, &all)
    };
    tokio::time::sleep(reply.delay).await;
    let content_type = if reply.html {
        "text/html"
    } else {
        "application/json"
    };
    Response::builder()
        .status(StatusCode::from_u16(reply.status).expect("a valid status"))
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(reply.body))
        .expect("a valid response")
}

/// Starts a fake Ameyo on 127.0.0.1; its base URL and its record.
async fn fake(script: impl Fn(&Seen, &[Seen]) -> Reply + Send + Sync + 'static) -> (String, Fake) {
    let fake = Fake {
        seen: Arc::default(),
        script: Arc::new(script),
    };
    let app = Router::new().fallback(answer).with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("fake Ameyo");
    });
    (format!("http://{addr}"), fake)
}

/// Answers a login with session `s-<n>`, n counting logins from 1.
fn login_reply(all: &[Seen]) -> Reply {
    let n = all.iter().filter(|s| s.is_login()).count();
    Reply::json(
        200,
        json!({"userSessionInfo": {"sessionId": format!("s-{n}")}}),
    )
}

fn client(tenant: &str, base_url: &str, auth: &str) -> Arc<AmeyoClient> {
    let text = format!("base_url = \"{base_url}\"\ncontact_center_id = 1\n{auth}\n");
    let settings: AmeyoSettings = toml::from_str(&text).expect("Ameyo settings");
    AmeyoClient::new(tenant, &settings, None).expect("client")
}

const STATIC: &str = r#"session_id = "static-session""#;
const LOGIN: &str = "login_user = \"admin\"\nlogin_password = \"admin-password\"";

const NGINX_404: &str = "<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n\
    <center><h1>404 Not Found</h1></center>\r\n<hr><center>nginx/1.24.0</center>\r\n\
    <!-- user accounts live elsewhere -->\r\n</body>\r\n</html>\r\n";

#[track_caller]
fn assert_transient(result: Result<(), CallError>, applied: bool, fragment: &str) {
    match result {
        Err(CallError::Transient {
            reason,
            maybe_applied,
            ..
        }) => {
            assert_eq!(maybe_applied, applied, "maybe_applied of {reason}");
            assert!(reason.contains(fragment), "{reason}");
        }
        other => panic!("expected Transient with {fragment:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn a_proxy_html_404_on_delete_is_not_a_missing_user() {
    let (url, fake) = fake(|_, _| Reply::html(404, NGINX_404)).await;
    let client = client("t404", &url, STATIC);
    let mut log = Vec::new();
    let result = client.delete_user("ann", &mut log).await;
    assert_transient(
        result,
        false,
        "Ameyo answered 404 without user.not.found (a proxy page or a wrong base_url?)",
    );
    assert_eq!(fake.count(|s| s.method == Method::DELETE), 1);
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].status, Some(404));
}

#[tokio::test]
async fn a_512_contactcenter_not_found_is_not_a_missing_user() {
    let (url, _fake) = fake(|_, _| {
        Reply::json(
            512,
            json!({"message": null, "code": 5124, "info": "contactcenter.not.found", "status": 512}),
        )
    })
    .await;
    let client = client("t512cc", &url, STATIC);
    let result = client.delete_user("ann", &mut Vec::new()).await;
    assert!(
        matches!(&result, Err(CallError::Transient { status: Some(512), reason, .. }) if reason.contains("contactcenter.not.found")),
        "{result:?}"
    );
}

#[tokio::test]
async fn a_512_listing_user_not_found_is_a_missing_user() {
    let (url, _fake) = fake(|_, _| Reply::json(512, json!({"message": "[user.not.found]"}))).await;
    let client = client("t512user", &url, STATIC);
    let result = client.delete_user("ann", &mut Vec::new()).await;
    assert!(
        matches!(
            &result,
            Err(CallError::NotFound {
                status: Some(512),
                ..
            })
        ),
        "{result:?}"
    );
}

#[tokio::test]
async fn a_403_access_denied_is_not_an_expired_session() {
    let (url, fake) = fake(|seen, all| {
        if seen.is_login() {
            login_reply(all)
        } else {
            Reply::json(
                403,
                json!({"message": null, "code": 403, "info": "access.denied", "status": 403}),
            )
        }
    })
    .await;
    let client = client("t403", &url, LOGIN);
    let result = client.delete_user("ann", &mut Vec::new()).await;
    assert_transient(
        result,
        false,
        "Ameyo answered 403 without invalid.session.id",
    );
    // The first login only (there was no session yet), no second one, no retry.
    assert_eq!(fake.count(Seen::is_login), 1);
    assert_eq!(fake.count(|s| s.method == Method::DELETE), 1);
}

#[tokio::test]
async fn a_403_invalid_session_id_logs_in_again_once_and_retries() {
    let (url, fake) = fake(|seen, all| {
        if seen.is_login() {
            login_reply(all)
        } else if seen.session.as_deref() == Some("s-2") {
            Reply::json(200, json!({"status": "success", "message": "User deleted successfully"}))
        } else {
            Reply::json(
                403,
                json!({"message": null, "code": 99999, "info": "invalid.session.id", "status": 403}),
            )
        }
    })
    .await;
    let client = client("t403session", &url, LOGIN);
    // Concurrent callers that all see the session expire share one login.
    let calls = (0..8).map(|i| {
        let client = client.clone();
        tokio::spawn(async move { client.delete_user(&format!("u{i}"), &mut Vec::new()).await })
    });
    let calls: Vec<_> = calls.collect();
    for call in calls {
        assert_eq!(call.await.expect("task"), Ok(()));
    }
    // The first login, and exactly one more after the expiry.
    assert_eq!(fake.count(Seen::is_login), 2);
    let deletes: Vec<Seen> = fake
        .seen()
        .into_iter()
        .filter(|s| s.method == Method::DELETE)
        .collect();
    assert_eq!(deletes.len(), 16, "{deletes:?}");
    assert_eq!(
        deletes
            .iter()
            .filter(|s| s.session.as_deref() == Some("s-2"))
            .count(),
        8
    );
}

#[tokio::test]
async fn a_refused_static_session_is_transient_and_a_failed_login() {
    let handle = ameyo_scim::telemetry::metrics::install();
    let (url, fake) = fake(|_, _| {
        Reply::json(
            403,
            json!({"message": null, "code": 99999, "info": "invalid.session.id", "status": 403}),
        )
    })
    .await;
    let client = client("tstatic", &url, STATIC);
    let result = client
        .update_user("ann", &json!({"userName": "Ann"}), &mut Vec::new())
        .await;
    assert_transient(
        result,
        false,
        "the configured session_id was refused by Ameyo (expired?); configure a fresh one or \
         login_user/login_password",
    );
    assert_eq!(fake.count(Seen::is_login), 0);
    assert_eq!(
        fake.count(|s| s.session.as_deref() == Some("static-session")),
        1
    );
    let rendered = handle.render();
    let failed = rendered
        .lines()
        .find(|l| {
            l.starts_with("ameyo_scim_ameyo_logins_total{")
                && l.contains("tenant=\"tstatic\"")
                && l.contains("outcome=\"error\"")
        })
        .unwrap_or_else(|| panic!("no failed login counted:\n{rendered}"));
    assert!(failed.ends_with(" 1"), "{failed}");
}

#[tokio::test]
async fn an_answer_after_the_timeout_may_have_been_applied() {
    let (url, fake) =
        fake(|_, _| Reply::json(200, json!({"status": "success"})).after(Duration::from_secs(2)))
            .await;
    let auth = format!("{STATIC}\nrequest_timeout_secs = 1");
    let client = client("ttimeout", &url, &auth);
    let result = client
        .update_user("ann", &json!({"userName": "Ann"}), &mut Vec::new())
        .await;
    assert_transient(result, true, "Ameyo did not answer in time");
    assert_eq!(fake.count(|s| s.method == Method::PUT), 1);
}

/// A list answer whose one user's name tells which list request this was.
fn list_reply(all: &[Seen]) -> Reply {
    let n = all.iter().filter(|s| s.is_list()).count();
    Reply::json(
        200,
        json!([
            {"userId": "ann", "ccUserId": 11, "userName": format!("Ann {n}"), "userType": "Agent",
             "mappingUserId": "ann@x.example", "userData": "not kept"},
            {"userId": "Bob", "ccUserId": "12"},
            {"userName": "no userId"}
        ]),
    )
    .after(Duration::from_millis(200))
}

#[tokio::test]
async fn concurrent_lookups_of_one_contact_center_share_one_list_call() {
    let (url, fake) = fake(|_, all| list_reply(all)).await;
    let client = client("tsingle", &url, STATIC);
    let not_before = chrono::Utc::now();
    let lookups = (0..40).map(|_| {
        let client = client.clone();
        tokio::spawn(async move {
            let mut log: Vec<CallRecord> = Vec::new();
            let listing = client.lookup_listing(7, not_before, &mut log).await;
            (listing, log)
        })
    });
    let lookups: Vec<_> = lookups.collect();
    let mut listings = Vec::new();
    let mut records = 0;
    for lookup in lookups {
        let (listing, log) = lookup.await.expect("task");
        listings.push(listing.expect("listing"));
        records += log.len();
    }
    assert_eq!(fake.count(Seen::is_list), 1);
    assert_eq!(
        fake.seen()[0].path,
        "cc/contactCenterUsers/getAllContactCenterUsers?ccId=7"
    );
    assert_eq!(records, 1, "only the caller that made the call records it");
    assert!(listings.iter().all(|l| Arc::ptr_eq(l, &listings[0])));
    let listing = &listings[0];
    assert!(listing.started >= not_before);
    assert_eq!(listing.users.len(), 2);
    let ann = listing.get("ann").expect("ann is listed");
    assert_eq!(ann.cc_user_id, Some(11));
    assert_eq!(ann.user_name.as_deref(), Some("Ann 1"));
    assert_eq!(ann.mapping_user_id.as_deref(), Some("ann@x.example"));
    assert_eq!(ann.user_type.as_deref(), Some("Agent"));
    assert_eq!(listing.get("Bob").and_then(|b| b.cc_user_id), Some(12));
    assert!(listing.get("bob").is_none(), "userIds compare exactly");
}

#[tokio::test]
async fn a_listing_older_than_not_before_is_not_reused() {
    let (url, fake) = fake(|_, all| list_reply(all)).await;
    let client = client("tfresh", &url, STATIC);
    let before = chrono::Utc::now();
    let mut log = Vec::new();
    let first = client
        .lookup_listing(3, before, &mut log)
        .await
        .expect("first");
    assert_eq!(log.len(), 1);
    // Young enough and started after `before`: reused, without a call or a record.
    let mut hit_log = Vec::new();
    let again = client
        .lookup_listing(3, before, &mut hit_log)
        .await
        .expect("hit");
    assert!(Arc::ptr_eq(&first, &again));
    assert!(hit_log.is_empty());
    assert_eq!(fake.count(Seen::is_list), 1);
    // A change made after the first listing started needs a newer one.
    let changed = chrono::Utc::now();
    let fresh = client
        .lookup_listing(3, changed, &mut log)
        .await
        .expect("fresh");
    assert_eq!(fake.count(Seen::is_list), 2);
    assert!(fresh.started >= changed);
    assert_eq!(
        fresh.get("ann").and_then(|a| a.user_name.as_deref()),
        Some("Ann 2")
    );
    assert_eq!(log.len(), 2);
    // Another contact center has its own listing.
    client
        .lookup_listing(4, before, &mut log)
        .await
        .expect("other contact center");
    assert_eq!(fake.count(Seen::is_list), 3);
}

#[tokio::test]
async fn concurrent_lookups_share_a_failed_list_call() {
    let (url, fake) = fake(|_, _| {
        Reply::html(503, "<html>Service Unavailable</html>").after(Duration::from_millis(200))
    })
    .await;
    let client = client("tfail", &url, STATIC);
    let not_before = chrono::Utc::now();
    let lookups = (0..10).map(|_| {
        let client = client.clone();
        tokio::spawn(async move { client.lookup_listing(9, not_before, &mut Vec::new()).await })
    });
    let lookups: Vec<_> = lookups.collect();
    for lookup in lookups {
        let result = lookup.await.expect("task");
        assert!(
            matches!(
                &result,
                Err(CallError::Transient {
                    status: Some(503),
                    ..
                })
            ),
            "{result:?}"
        );
    }
    assert_eq!(fake.count(Seen::is_list), 1);
    // A lookup after the failure tries again.
    let _ = client.lookup_listing(9, not_before, &mut Vec::new()).await;
    assert_eq!(fake.count(Seen::is_list), 2);
}
