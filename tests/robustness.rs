//! Failure modes at the edges: a database that drops us, clients that send odd methods,
//! a rotated encryption key, and IdPs that unassign `active`.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request};
use common::*;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

const LIMIT: Duration = Duration::from_secs(30);

// --- transient database errors --------------------------------------------------

#[sqlx::test(migrator = "ameyo_scim::store::postgres::MIGRATOR")]
async fn a_connection_the_server_ended_answers_503(pool: PgPool) {
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
    let app = app_with(app_pool, settings()).await;
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

#[sqlx::test(migrator = "ameyo_scim::store::postgres::MIGRATOR")]
async fn a_lock_timeout_answers_503(pool: PgPool) {
    // A migration (say) holds the users table; our statement gives up waiting.
    let options = (*pool.connect_options())
        .clone()
        .options([("lock_timeout", "100ms")]);
    let app_pool = PgPoolOptions::new().connect_with(options).await.unwrap();
    let app = app_with(app_pool, settings()).await;
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

#[sqlx::test(migrator = "ameyo_scim::store::postgres::MIGRATOR")]
async fn unknown_methods_share_one_metrics_label(pool: PgPool) {
    let app = app(pool).await;
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
