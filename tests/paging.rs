//! Unfiltered lists: `totalResults` from the per-tenant counters, exact through every
//! kind of write, and pages walked in order (started from a remembered key) equal to
//! the same pages fetched cold, on both stores.

mod common;

use std::sync::Arc;

use ameyo_scim::scim::resource::parse_user;
use ameyo_scim::store::backend::{Backend, Db};
use ameyo_scim::store::sqlite::SqliteStore;
use ameyo_scim::store::{ListQuery, PgStore, UserStore};
use common::db::{Arg, Kind, TestDb};
use serde_json::json;
use uuid::Uuid;

const T: &str = "acme";

/// The concrete store of a backend, for what the trait does not show.
#[derive(Clone)]
enum Store {
    Pg(Arc<PgStore>),
    Lite(Arc<SqliteStore>),
}

impl Store {
    fn of(backend: &Backend) -> Self {
        match &backend.db {
            Db::Postgres(pool) => {
                Store::Pg(Arc::new(PgStore::new(pool.clone(), backend.cipher.clone())))
            }
            Db::Sqlite(pool) => Store::Lite(Arc::new(SqliteStore::new(
                pool.clone(),
                backend.cipher.clone(),
            ))),
        }
    }

    fn users(&self) -> Arc<dyn UserStore> {
        match self {
            Store::Pg(s) => s.clone(),
            Store::Lite(s) => s.clone(),
        }
    }

    async fn counts(&self) -> (i64, i64) {
        match self {
            Store::Pg(s) => s.user_counts(T).await.unwrap(),
            Store::Lite(s) => s.user_counts(T).await.unwrap(),
        }
    }

    fn remembers(&self, start: u64, shifts: i64) -> bool {
        match self {
            Store::Pg(s) => s.remembers_page(T, start, shifts),
            Store::Lite(s) => s.remembers_page(T, start, shifts),
        }
    }
}

fn page(start_index: u64, count: u64) -> ListQuery {
    ListQuery {
        filter: None,
        sort_by: None,
        descending: false,
        start_index,
        count,
    }
}

async fn create(store: &dyn UserStore, name: &str) -> Uuid {
    store
        .create(T, parse_user(json!({"userName": name})).unwrap())
        .await
        .unwrap()
        .id
}

/// A user row written by SQL, not by the store (as an import or a bulk load does),
/// created now or at `created`.
async fn insert_direct(db: &TestDb, id: Uuid, name: &str, created: Option<&str>) {
    let created = match (db.kind(), created) {
        (_, None) => "now()".to_string(),
        (Kind::Postgres, Some(t)) => format!("'{t}'::timestamptz"),
        (Kind::Sqlite, Some(t)) => format!("'{t}'"),
    };
    let key = match db.kind() {
        Kind::Postgres => "",
        Kind::Sqlite => ", user_name_key",
    };
    let key_value = match db.kind() {
        Kind::Postgres => "",
        Kind::Sqlite => ", $3",
    };
    db.exec(
        &format!(
            "INSERT INTO users (id, tenant_id, user_name{key}, active, resource, version, created,
                                last_modified)
             VALUES ($1, $2, $3{key_value}, TRUE, '{{}}', 1, {created}, {created})"
        ),
        &[Arg::id(id), Arg::Text(T.into()), Arg::Text(name.into())],
    )
    .await;
}

/// count(*) of the tenant's live users, and what the counters say.
async fn assert_exact(db: &TestDb, store: &Store) {
    let counted = db
        .int(
            "SELECT count(*) FROM users WHERE tenant_id = $1 AND deleted_at IS NULL",
            &[Arg::Text(T.into())],
        )
        .await;
    assert_eq!(store.counts().await.0, counted);
    let listed = store.users().list(T, &page(1, 0)).await.unwrap().total;
    assert_eq!(listed as i64, counted);
}

/// Every page of the tenant: in order from one store (remembered keys), and each one
/// cold from a fresh store.
async fn walk_and_compare(backend: &Backend, walker: &Store, n: u64) -> Vec<Uuid> {
    let mut all = Vec::new();
    let mut start = 1;
    loop {
        let warm = walker.users().list(T, &page(start, n)).await.unwrap();
        let cold = Store::of(backend)
            .users()
            .list(T, &page(start, n))
            .await
            .unwrap();
        let ids = |p: &ameyo_scim::store::Page| p.users.iter().map(|u| u.id).collect::<Vec<_>>();
        assert_eq!(ids(&warm), ids(&cold), "page at {start}");
        assert_eq!(warm.total, cold.total);
        if warm.users.is_empty() {
            return all;
        }
        all.extend(ids(&warm));
        start += n;
    }
}

both_backends!(counts_stay_exact, walked_pages_equal_cold_pages);

async fn counts_stay_exact(db: TestDb) {
    let backend = db.open(&common::settings()).await;
    let store = Store::of(&backend);
    let users = store.users();
    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(create(&*users, &format!("u{i}")).await);
    }
    assert_exact(&db, &store).await;
    // SCIM deletes (tombstones), then the hard delete of a tombstone.
    users.delete(T, ids[0], None).await.unwrap();
    users.delete(T, ids[1], None).await.unwrap();
    assert_exact(&db, &store).await;
    db.exec("DELETE FROM users WHERE id = $1", &[Arg::id(ids[0])])
        .await;
    assert_exact(&db, &store).await;
    // A live user removed directly, and rows inserted directly (as an import does).
    db.exec("DELETE FROM users WHERE id = $1", &[Arg::id(ids[2])])
        .await;
    for i in 0..5 {
        insert_direct(&db, Uuid::new_v4(), &format!("direct{i}"), None).await;
    }
    // Updates that do not change the live set leave the count alone.
    users
        .update(T, ids[3], None, &|u| {
            let mut r = u.resource.clone();
            r.insert("displayName".into(), json!("D"));
            let mut v = serde_json::Value::Object(r);
            v["userName"] = json!("u3-renamed");
            Ok(Some(parse_user(v).unwrap()))
        })
        .await
        .unwrap();
    assert_exact(&db, &store).await;
    assert_eq!(store.counts().await.0, 12 - 2 - 1 + 5);
    // Other tenants are counted apart.
    users
        .create("other", parse_user(json!({"userName": "u0"})).unwrap())
        .await
        .unwrap();
    assert_exact(&db, &store).await;
    if db.kind() == Kind::Postgres {
        // A burst of concurrent creates on many connections: exact, over several slots.
        let mut set = tokio::task::JoinSet::new();
        for i in 0..64 {
            let users = users.clone();
            set.spawn(async move { create(&*users, &format!("burst{i}")).await });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap();
        }
        assert_exact(&db, &store).await;
        assert_eq!(store.counts().await.0, 14 + 64);
        let slots = db
            .int(
                "SELECT count(*) FROM user_counts WHERE tenant_id = $1",
                &[Arg::Text(T.into())],
            )
            .await;
        assert!(slots > 1, "{slots} slot(s)");
    }
}

async fn walked_pages_equal_cold_pages(db: TestDb) {
    let backend = db.open(&common::settings()).await;
    let walker = Store::of(&backend);
    let users = walker.users();
    let mut ids = Vec::new();
    for i in 0..23 {
        ids.push(create(&*users, &format!("w{i:02}")).await);
    }
    let all = walk_and_compare(&backend, &walker, 5).await;
    assert_eq!(all, ids, "creation order");
    let (_, shifts) = walker.counts().await;
    assert!(
        walker.remembers(11, shifts),
        "the walk remembered its pages"
    );

    // A create lands at the end: the remembered keys stay good.
    ids.push(create(&*users, "w-new").await);
    assert_eq!(walker.counts().await.1, shifts);
    assert!(walker.remembers(11, shifts));
    assert_eq!(walk_and_compare(&backend, &walker, 5).await, ids);

    // A delete before a remembered position moves every later user: the keys go.
    users.delete(T, ids[2], None).await.unwrap();
    ids.remove(2);
    let (_, after) = walker.counts().await;
    assert_ne!(after, shifts);
    assert!(!walker.remembers(11, after));
    let p = walker.users().list(T, &page(11, 5)).await.unwrap();
    assert_eq!(
        p.users.iter().map(|u| u.id).collect::<Vec<_>>(),
        ids[10..15].to_vec()
    );
    assert_eq!(walk_and_compare(&backend, &walker, 5).await, ids);

    // A user inserted with an earlier creation time (an import) moves the later ones.
    let early = Uuid::new_v4();
    insert_direct(&db, early, "early", Some("2000-01-01T00:00:00.000000Z")).await;
    let (_, imported) = walker.counts().await;
    assert_ne!(imported, after);
    ids.insert(0, early);
    assert_eq!(walk_and_compare(&backend, &walker, 5).await, ids);
    assert_exact(&db, &walker).await;
}
