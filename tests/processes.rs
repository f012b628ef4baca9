//! The real binary, as operators run it: killed with SIGKILL mid-sync, two replicas on
//! one database, and its logs searched for secrets.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ameyo_emulator::{Emulator, EmulatorOptions, Faults, Outage};
use common::*;
use serde_json::{Value, json};

const DB_PASSWORD: &str = "db-Pa55word-never-logged";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The URL of the test's own database; on PostgreSQL with a password (trust auth
/// ignores it) that must never show up in a log.
fn database_url(db: &TestDb) -> String {
    match db.kind() {
        Kind::Sqlite => db.url().to_string(),
        Kind::Postgres => {
            let mut url = reqwest::Url::parse(db.url()).expect("a URL");
            if url.username().is_empty() {
                let _ = url.set_username("postgres");
            }
            let _ = url.set_password(Some(DB_PASSWORD));
            url.to_string()
        }
    }
}

struct Serve {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Serve {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
    fn kill(&mut self) {
        // Child::kill sends SIGKILL on Unix: no shutdown code runs.
        self.child.kill().expect("kill");
        self.child.wait().expect("wait");
    }
    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_config(
    dir: &std::path::Path,
    port: u16,
    db_url: &str,
    ameyo: &str,
    extra_sync: &str,
) -> PathBuf {
    let path = dir.join(format!("config-{port}.toml"));
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
shutdown_grace_secs = 10

[database]
url = "{db_url}"
max_connections = 12

[sync]
password_key = "{PASSWORD_KEY}"
retry_base_ms = 50
retry_cap_secs = 1
{extra_sync}

[log]
format = "json"
level = "debug"

[[tenants]]
id = "a"
token_sha256 = ["{digest}"]
[tenants.ameyo]
base_url = "{ameyo}"
contact_center_id = 1
login_user = "admin"
login_password = "{AMEYO_ADMIN_PASSWORD}"
"#,
        digest = ameyo_scim::http::auth::token_digest(TOKEN_A),
    );
    std::fs::write(&path, text).expect("config");
    path
}

async fn start(config: &std::path::Path, port: u16, dir: &std::path::Path, tag: &str) -> Serve {
    let log = dir.join(format!("serve-{tag}-{port}.log"));
    let file = std::fs::File::create(&log).expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_ameyo-scim"))
        .args(["serve", "--config"])
        .arg(config)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .expect("spawn serve");
    let serve = Serve { child, port, log };
    let http = reqwest::Client::new();
    let started = Instant::now();
    loop {
        if http
            .get(serve.url("/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            return serve;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "serve did not start:\n{}",
            serve.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn scim(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = http.request(method, url).bearer_auth(TOKEN_A);
    if let Some(b) = body {
        req = req
            .header("content-type", "application/scim+json")
            .body(b.to_string());
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// Run `n` requests with bounded concurrency.
async fn fan_out<F, Fut>(n: usize, f: F)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let f = Arc::new(f);
    let limit = Arc::new(tokio::sync::Semaphore::new(16));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let f = f.clone();
        let permit = limit.clone().acquire_owned().await.unwrap();
        set.spawn(async move {
            f(i).await;
            drop(permit);
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("task");
    }
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    db.int(sql, &[]).await
}

fn successful_creates(emulator: &Emulator) -> std::collections::HashMap<String, usize> {
    let mut m = std::collections::HashMap::new();
    for r in emulator.requests() {
        if r.method == "POST" && r.path == "cc/contactCenterUsers" && r.status == 200 {
            let id = r
                .body
                .as_ref()
                .and_then(|b| b["userId"].as_str())
                .unwrap_or("")
                .to_string();
            *m.entry(id).or_insert(0) += 1;
        }
    }
    m
}

both_backends!(sigkill_mid_sync_loses_nothing_and_creates_nobody_twice);
async fn sigkill_mid_sync_loses_nothing_and_creates_nobody_twice(db: TestDb) {
    const USERS: usize = 1000;
    let (emulator, addr) = Emulator::spawn(EmulatorOptions {
        faults: Faults {
            latency_ms: 8,
            ..Faults::default()
        },
        ..EmulatorOptions::default()
    })
    .await
    .unwrap();
    let dir = tempdir();
    let db_url = database_url(&db);
    let port = free_port();
    let config = write_config(
        &dir,
        port,
        &db_url,
        &format!("http://{addr}"),
        // The default lease (120 s): recovery must not wait for it.
        "concurrency = 4",
    );
    let mut serve = start(&config, port, &dir, "first").await;
    let http = reqwest::Client::new();

    let base = serve.url("/scim/v2/Users");
    let ids = Arc::new(std::sync::Mutex::new(vec![String::new(); USERS]));
    {
        let (http, base, ids) = (http.clone(), base.clone(), ids.clone());
        fan_out(USERS, move |i| {
            let (http, base, ids) = (http.clone(), base.clone(), ids.clone());
            async move {
                let (status, body) = scim(
                    &http,
                    reqwest::Method::POST,
                    base,
                    Some(json!({"userName": format!("k{i}@example.com")})),
                )
                .await;
                assert_eq!(status, 201, "{body}");
                ids.lock().unwrap()[i] = body["id"].as_str().unwrap().to_string();
            }
        })
        .await;
    }
    // The final state: every user renamed once more.
    {
        let (http, base, ids) = (http.clone(), base.clone(), ids.clone());
        fan_out(USERS, move |i| {
            let (http, base, ids) = (http.clone(), base.clone(), ids.clone());
            async move {
                let id = ids.lock().unwrap()[i].clone();
                let (status, body) = scim(
                    &http,
                    reqwest::Method::PATCH,
                    format!("{base}/{id}"),
                    Some(json!({"Operations": [{"op": "replace", "path": "displayName", "value": format!("final-{i}")}]})),
                )
                .await;
                assert_eq!(status, 200, "{body}");
            }
        })
        .await;
    }
    // Kill it while deliveries are in flight.
    let started = Instant::now();
    loop {
        let done = count(
            &db,
            "SELECT count(*) FROM sync_state WHERE state = 'done' AND synced_version = 2",
        )
        .await;
        if done >= 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no progress: {done}\n{}",
            serve.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    serve.kill();
    let at_kill = count(
        &db,
        "SELECT count(*) FROM sync_state WHERE state = 'done' AND synced_version = 2",
    )
    .await;
    assert!(
        at_kill < USERS as i64,
        "the kill came too late to test anything"
    );
    // The rows the killed process held when it died.
    let leased_by = || {
        db.texts(
            "SELECT lease_owner FROM sync_state WHERE state = 'leased'",
            &[],
        )
    };
    let orphaned = leased_by().await;

    let in_flight = count(
        &db,
        "SELECT count(*) FROM sync_state WHERE state = 'leased'",
    )
    .await;

    let _serve = start(&config, port, &dir, "second").await;
    let started = Instant::now();
    let mut taken_back = None;
    loop {
        if taken_back.is_none() {
            let still = leased_by()
                .await
                .iter()
                .filter(|owner| orphaned.contains(owner))
                .count();
            if still == 0 {
                taken_back = Some(started.elapsed());
            }
        }
        let done = count(&db, "SELECT count(*) FROM sync_state WHERE state = 'done' AND synced_version = desired_version").await;
        if done == USERS as i64 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "only {done} delivered after restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let converged = started.elapsed();
    let taken_back = taken_back.unwrap_or(converged);
    println!(
        "recovery after SIGKILL: {} leased rows of the killed worker taken back {:.1} s after \
         restart; all {USERS} users converged {:.1} s after restart (lease: 120 s)",
        in_flight,
        taken_back.as_secs_f64(),
        converged.as_secs_f64()
    );
    assert!(
        taken_back < Duration::from_secs(10),
        "in-flight rows waited {taken_back:?} for the killed worker"
    );
    let users = emulator.users();
    assert_eq!(users.len(), USERS);
    for i in 0..USERS {
        let u = users
            .iter()
            .find(|u| u["userId"] == json!(format!("k{i}@example.com")))
            .expect("in Ameyo");
        assert_eq!(u["userName"], json!(format!("final-{i}")), "final state");
    }
    let creates = successful_creates(&emulator);
    assert_eq!(creates.len(), USERS);
    assert!(
        creates.values().all(|n| *n == 1),
        "a user was created twice"
    );
}

/// PostgreSQL only: an embedded store serves one process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_the_work_and_deliver_each_version_once() {
    let db = TestDb::postgres().await;
    const USERS: usize = 400;
    let (emulator, addr) = Emulator::spawn(EmulatorOptions {
        faults: Faults {
            latency_ms: 3,
            ..Faults::default()
        },
        ..EmulatorOptions::default()
    })
    .await
    .unwrap();
    let dir = tempdir();
    let db_url = database_url(&db);
    let ameyo = format!("http://{addr}");
    let (p1, p2) = (free_port(), free_port());
    let c1 = write_config(&dir, p1, &db_url, &ameyo, "concurrency = 4");
    let c2 = write_config(&dir, p2, &db_url, &ameyo, "concurrency = 4");
    let s1 = start(&c1, p1, &dir, "one").await;
    let s2 = start(&c2, p2, &dir, "two").await;
    let http = reqwest::Client::new();
    let bases = Arc::new([s1.url("/scim/v2/Users"), s2.url("/scim/v2/Users")]);
    fan_out(USERS, move |i| {
        let (http, bases) = (http.clone(), bases.clone());
        async move {
            let (status, body) = scim(
                &http,
                reqwest::Method::POST,
                bases[i % 2].clone(),
                Some(json!({"userName": format!("r{i}@example.com")})),
            )
            .await;
            assert_eq!(status, 201, "{body}");
        }
    })
    .await;
    let started = Instant::now();
    while count(&db, "SELECT count(*) FROM sync_state WHERE state = 'done'").await < USERS as i64 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "not delivered in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(emulator.users().len(), USERS);
    let creates = successful_creates(&emulator);
    assert!(
        creates.values().all(|n| *n == 1),
        "a user was created twice"
    );
    // Each (user, version) was delivered by one worker in one delivery.
    let twice = count(
        &db,
        "SELECT count(*) FROM (SELECT user_id, version FROM sync_attempts WHERE call = 'create'
         GROUP BY user_id, version HAVING count(*) > 1) d",
    )
    .await;
    assert_eq!(twice, 0);
    let workers = count(&db, "SELECT count(DISTINCT worker) FROM sync_attempts").await;
    assert_eq!(workers, 2, "both replicas delivered");
    // One login, shared: replicas that each logged in with forceLogin would end each
    // other's sessions over and over.
    assert_eq!(emulator.login_count(), 1);
    let expired = emulator
        .requests()
        .iter()
        .filter(|r| !r.session_valid && r.path != "userLogin/login")
        .count();
    assert_eq!(
        expired, 0,
        "no call met a session another replica had ended"
    );
}

both_backends!(no_secret_reaches_the_logs_or_the_database_in_clear);
async fn no_secret_reaches_the_logs_or_the_database_in_clear(db: TestDb) {
    const FIRST: &str = "Fir5t-Secret-Pa55word";
    const SECOND: &str = "Sec0nd-Secret-Pa55word";
    let (emulator, addr) = Emulator::spawn(EmulatorOptions {
        login_user: Some("admin".into()),
        login_password: Some(AMEYO_ADMIN_PASSWORD.into()),
        session_ttl: None,
        faults: Faults {
            outage: Some(Outage::Unavailable),
            ..Faults::default()
        },
    })
    .await
    .unwrap();
    let dir = tempdir();
    let db_url = database_url(&db);
    let port = free_port();
    let config = write_config(&dir, port, &db_url, &format!("http://{addr}"), "");
    let mut serve = start(&config, port, &dir, "secrets").await;
    let http = reqwest::Client::new();
    let base = serve.url("/scim/v2/Users");

    // Ameyo is down: the password waits in the database, encrypted.
    let (status, created) = scim(
        &http,
        reqwest::Method::POST,
        base.clone(),
        Some(json!({
            "userName": "secretive@example.com", "password": FIRST,
            "emails": [{"value": "secretive@example.com", "type": "work"}]
        })),
    )
    .await;
    assert_eq!(status, 201);
    let id = created["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dump = dump_database(&db).await;
    assert!(!dump.contains(FIRST), "clear-text password in the database");

    // A wrong token and a filter on the password, both refused.
    let r = http
        .get(&base)
        .bearer_auth("wrong-token-value")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let (status, _) = scim(
        &http,
        reqwest::Method::GET,
        format!("{base}?filter=password%20eq%20%22{FIRST}%22"),
        None,
    )
    .await;
    assert_eq!(status, 400);

    // Ameyo returns; the password is delivered, then changed, then delivered again.
    emulator.set_faults(Faults::default());
    wait_done(&db, 1).await;
    let (status, _) = scim(
        &http,
        reqwest::Method::PATCH,
        format!("{base}/{id}"),
        Some(json!({
            "Operations": [{"op": "replace", "value": {"password": SECOND}}]
        })),
    )
    .await;
    assert_eq!(status, 200);
    wait_done(&db, 1).await;
    emulator.expire_sessions();
    scim(
        &http,
        reqwest::Method::PATCH,
        format!("{base}/{id}"),
        Some(json!({
            "Operations": [{"op": "replace", "value": {"active": false}}]
        })),
    )
    .await;
    wait_done(&db, 1).await;
    assert_eq!(emulator.login_count(), 2);
    let dump = dump_database(&db).await;
    for secret in [FIRST, SECOND] {
        assert!(
            !dump.contains(secret),
            "clear-text password in the database"
        );
    }
    let pending = count(
        &db,
        "SELECT count(*) FROM sync_state WHERE pending_password IS NOT NULL",
    )
    .await;
    assert_eq!(pending, 0, "delivered passwords are erased");

    // Graceful stop, then read everything it logged.
    sigterm(&serve.child);
    let _ = serve.child.wait();
    let logs = serve.logs();
    assert!(logs.contains("delivered"), "the flow was logged:\n{logs}");
    assert!(
        logs.lines()
            .all(|l| serde_json::from_str::<Value>(l).is_ok()),
        "every line is JSON"
    );
    for secret in [
        FIRST,
        SECOND,
        AMEYO_ADMIN_PASSWORD,
        TOKEN_A,
        "wrong-token-value",
        DB_PASSWORD,
        PASSWORD_KEY,
    ] {
        assert!(!logs.contains(secret), "a secret reached the logs");
    }
    assert!(
        !logs.contains("-ses-"),
        "an Ameyo session id reached the logs"
    );
    assert!(
        !logs.to_ascii_lowercase().contains("bearer "),
        "an Authorization header reached the logs"
    );
    serve.kill();
}

async fn wait_done(db: &TestDb, n: i64) {
    let started = Instant::now();
    while count(
        db,
        "SELECT count(*) FROM sync_state WHERE state = 'done' AND synced_version = desired_version",
    )
    .await
        < n
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "not delivered in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn dump_database(db: &TestDb) -> String {
    let mut out = String::new();
    for (table, key) in [
        ("users", "id"),
        ("sync_state", "user_id"),
        ("sync_attempts", "id"),
        ("ameyo_sessions", "tenant_id"),
    ] {
        out.push_str(&Value::from(db.rows(table, key).await).to_string());
    }
    out
}

fn sigterm(child: &Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
}

fn tempdir() -> PathBuf {
    let dir = common::db::run_dir().join(format!("processes-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

both_backends!(sigterm_lets_an_in_flight_delivery_finish);
async fn sigterm_lets_an_in_flight_delivery_finish(db: TestDb) {
    // Each Ameyo call takes 1.5 s, so the delivery (login, then create) is surely in
    // flight when the signal comes.
    let (emulator, addr) = Emulator::spawn(EmulatorOptions {
        faults: Faults {
            latency_ms: 1500,
            ..Faults::default()
        },
        ..EmulatorOptions::default()
    })
    .await
    .unwrap();
    let dir = tempdir();
    let db_url = database_url(&db);
    let port = free_port();
    let config = write_config(&dir, port, &db_url, &format!("http://{addr}"), "");
    let mut serve = start(&config, port, &dir, "graceful").await;
    let http = reqwest::Client::new();
    let (status, _) = scim(
        &http,
        reqwest::Method::POST,
        serve.url("/scim/v2/Users"),
        Some(json!({"userName": "inflight@example.com"})),
    )
    .await;
    assert_eq!(status, 201);
    let started = Instant::now();
    while count(
        &db,
        "SELECT count(*) FROM sync_state WHERE state = 'leased'",
    )
    .await
        == 0
    {
        assert!(started.elapsed() < Duration::from_secs(10), "never claimed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    sigterm(&serve.child);
    let exited = tokio::task::spawn_blocking(move || {
        let status = serve.child.wait();
        (status, serve)
    })
    .await
    .unwrap();
    let (status, serve) = exited;
    assert!(
        status.expect("wait").success(),
        "exit 0 after SIGTERM:\n{}",
        serve.logs()
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM sync_state WHERE state = 'done'").await,
        1,
        "{}",
        serve.logs()
    );
    assert!(
        emulator
            .users()
            .iter()
            .any(|u| u["userId"] == "inflight@example.com")
    );
    let logs = serve.logs();
    assert!(logs.contains("finishing in-flight"), "{logs}");
    assert!(logs.contains("sync worker stopped"), "{logs}");
}
