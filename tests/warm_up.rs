//! A serving PostgreSQL pool warms every connection it opens (at start, and later in
//! place of a closed one), and a lookup by a unique key tells its exact total from its
//! one statement, on both stores.

mod common;

use std::collections::HashSet;

use ameyo_scim::scim::filter::parse;
use ameyo_scim::scim::resource::parse_user;
use ameyo_scim::store::backend::{Access, Backend, Db};
use ameyo_scim::store::{ListQuery, UserStore, warm_connections};
use common::db::TestDb;
use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

const T: &str = "acme";

/// The statements this connection has prepared (the warm-up prepares the store's
/// fixed statements: a user by id, the tenant's counters, the unfiltered pages).
async fn prepared(conn: &mut PgConnection) -> Vec<String> {
    sqlx::query_scalar("SELECT statement FROM pg_prepared_statements")
        .fetch_all(conn)
        .await
        .unwrap()
}

async fn backend_pid(conn: &mut PgConnection) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(conn)
        .await
        .unwrap()
}

fn assert_warm(statements: &[String]) {
    for part in ["FROM user_counts", "u.id = $2 AND u.deleted_at IS NULL"] {
        assert!(
            statements.iter().any(|s| s.contains(part)),
            "no prepared statement with {part:?} in {statements:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serving_pool_warms_every_connection_it_opens() {
    let db = TestDb::postgres().await;
    let mut settings = common::settings();
    settings.database.url = db.url().to_string().into();
    settings.database.max_connections = 3;
    let backend = Backend::open(&settings, Access::Serve).await.unwrap();
    let Db::Postgres(pool) = &backend.db else {
        unreachable!()
    };
    // Migrations ran on a connection of their own: the pool has not opened one yet.
    assert_eq!(pool.size(), 0);
    let warming = backend.users.clone().warm_up(vec![T.into()]);
    warming.await.unwrap();
    backend.users.ready().await.unwrap();
    assert_eq!(warm_connections(3), 3);
    assert_eq!(pool.size(), 3, "the warm-up opens the whole pool");

    let mut held = Vec::new();
    let mut pids = HashSet::new();
    for _ in 0..3 {
        let mut conn = pool.acquire().await.unwrap();
        assert_warm(&prepared(&mut conn).await);
        pids.insert(backend_pid(&mut conn).await);
        held.push(conn);
    }
    assert_eq!(pids.len(), 3);

    // A connection closed (as one past its lifetime is) gives way to a new one: warm too.
    held.pop().unwrap().close().await.unwrap();
    let mut fresh = pool.acquire().await.unwrap();
    let pid = backend_pid(&mut fresh).await;
    assert!(!pids.contains(&pid), "a new connection");
    assert_warm(&prepared(&mut fresh).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_for_other_work_is_not_warmed() {
    let db = TestDb::postgres().await;
    let mut settings = common::settings();
    settings.database.url = db.url().to_string().into();
    let backend = Backend::open(&settings, Access::Migrate).await.unwrap();
    let Db::Postgres(pool) = &backend.db else {
        unreachable!()
    };
    let mut conn = pool.acquire().await.unwrap();
    let statements = prepared(&mut conn).await;
    assert!(
        !statements.iter().any(|s| s.contains("FROM user_counts")),
        "{statements:#?}"
    );
}

async fn jit_of(url: &str, access: Access) -> String {
    let mut settings = common::settings();
    settings.database.url = url.to_string().into();
    let backend = Backend::open(&settings, access).await.unwrap();
    let Db::Postgres(pool) = &backend.db else {
        unreachable!()
    };
    sqlx::query_scalar("SHOW jit")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The service's statements read a handful of rows: JIT compiling them costs far more
/// than it saves, and PostgreSQL decides on it from estimates that can be far off
/// (docs/performance.md), so every connection the service opens has it off, unless
/// the operator's URL sets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_run_without_jit_unless_the_url_says_otherwise() {
    let db = TestDb::postgres().await;
    // Whatever the server's configuration, this database has it on.
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&db.pg_pool())
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        r#"ALTER DATABASE "{name}" SET jit = on"#
    )))
    .execute(&db.pg_pool())
    .await
    .unwrap();
    let plain = sqlx::PgPool::connect(db.url()).await.unwrap();
    let default: String = sqlx::query_scalar("SHOW jit")
        .fetch_one(&plain)
        .await
        .unwrap();
    assert_eq!(default, "on");
    assert_eq!(jit_of(db.url(), Access::Serve).await, "off");
    assert_eq!(jit_of(db.url(), Access::Migrate).await, "off");
    let sep = if db.url().contains('?') { '&' } else { '?' };
    let chosen = format!("{}{sep}options=-c%20jit%3Don", db.url());
    assert_eq!(jit_of(&chosen, Access::Serve).await, "on");
}

fn query(filter: &str, start_index: u64, count: u64) -> ListQuery {
    ListQuery {
        filter: Some(parse(filter).unwrap()),
        sort_by: None,
        descending: false,
        start_index,
        count,
    }
}

async fn create(store: &dyn UserStore, name: &str) -> Uuid {
    let user = json!({"userName": name, "name": {"familyName": "Family"}});
    store.create(T, parse_user(user).unwrap()).await.unwrap().id
}

/// (totalResults, the page's ids) of a list.
async fn list(store: &dyn UserStore, q: ListQuery) -> (u64, Vec<Uuid>) {
    let page = store.list(T, &q).await.unwrap();
    (page.total, page.users.iter().map(|u| u.id).collect())
}

async fn unique_lookups_count_exactly(db: TestDb) {
    let backend = db.open(&common::settings()).await;
    let store = backend.users.as_ref();
    let alice = create(store, "Alice@example.com").await;
    let bob = create(store, "bob@example.com").await;
    create(store, "carol@example.com").await;
    // A tombstone and a live user of the same name.
    let gone = create(store, "dave@example.com").await;
    store.delete(T, gone, None).await.unwrap();
    let dave = create(store, "DAVE@example.com").await;
    // Another tenant's user of the same name is not counted.
    store
        .create(
            "other",
            parse_user(json!({"userName": "alice@example.com"})).unwrap(),
        )
        .await
        .unwrap();

    let by_name = r#"userName eq "alice@EXAMPLE.com""#;
    assert_eq!(list(store, query(by_name, 1, 10)).await, (1, vec![alice]));
    assert_eq!(list(store, query(by_name, 1, 1)).await, (1, vec![alice]));
    assert_eq!(list(store, query(by_name, 0, 10)).await, (1, vec![alice]));
    assert_eq!(list(store, query(by_name, 2, 10)).await, (1, vec![]));
    assert_eq!(list(store, query(by_name, 1, 0)).await, (1, vec![]));
    assert_eq!(list(store, query(by_name, 5, 0)).await, (1, vec![]));
    let nobody = r#"userName eq "nobody@example.com""#;
    assert_eq!(list(store, query(nobody, 1, 10)).await, (0, vec![]));
    assert_eq!(list(store, query(nobody, 1, 0)).await, (0, vec![]));
    assert_eq!(list(store, query(nobody, 3, 10)).await, (0, vec![]));
    let dave_q = r#"userName eq "dave@example.com""#;
    assert_eq!(list(store, query(dave_q, 1, 10)).await, (1, vec![dave]));

    let by_id = |id: Uuid| format!(r#"id eq "{id}""#);
    assert_eq!(list(store, query(&by_id(bob), 1, 10)).await, (1, vec![bob]));
    assert_eq!(list(store, query(&by_id(bob), 2, 10)).await, (1, vec![]));
    assert_eq!(list(store, query(&by_id(bob), 1, 0)).await, (1, vec![]));
    assert_eq!(list(store, query(&by_id(gone), 1, 10)).await, (0, vec![]));

    // Filters that can match more than one user are counted.
    let either = r#"userName eq "alice@example.com" or userName eq "bob@example.com""#;
    let (total, page) = list(store, query(either, 1, 1)).await;
    assert_eq!((total, page.len()), (2, 1));
    let family = r#"name.familyName eq "Family""#;
    let (total, page) = list(store, query(family, 1, 2)).await;
    assert_eq!((total, page.len()), (4, 2));
    let (total, page) = list(store, query(family, 4, 2)).await;
    assert_eq!((total, page.len()), (4, 1));
    assert_eq!(list(store, query(family, 1, 0)).await, (4, vec![]));
    let (total, page) = list(store, query(r#"userName ne "bob@example.com""#, 1, 10)).await;
    assert_eq!((total, page.len()), (3, 3));
    let (total, page) = list(store, query(r#"userName sw "a""#, 1, 10)).await;
    assert_eq!((total, page), (1, vec![alice]));
}

both_backends!(unique_lookups_count_exactly);
