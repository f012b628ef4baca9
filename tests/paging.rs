//! Unfiltered lists: `totalResults` from the per-tenant counters, exact through every
//! kind of write, pages walked in order (started from a remembered key) equal to the
//! same pages fetched cold, and jumps to any position (started from a remembered
//! anchor) equal to the same slice of the full ordered listing, on both stores.

mod common;

use std::sync::Arc;

use ameyo_scim::scim::resource::parse_user;
use ameyo_scim::store::backend::{Backend, Db};
use ameyo_scim::store::page_cursor::PageRead;
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

    /// A store that remembers an anchor every `every` users.
    fn anchored(backend: &Backend, every: u64) -> Self {
        match Self::of(backend) {
            Store::Pg(s) => Store::Pg(Arc::new((*s).clone().with_anchor_every(every))),
            Store::Lite(s) => Store::Lite(Arc::new((*s).clone().with_anchor_every(every))),
        }
    }

    /// The unfiltered page at `start` and how it was found.
    async fn read(&self, start: u64, count: u64) -> (ameyo_scim::store::Page, PageRead) {
        match self {
            Store::Pg(s) => s.list_unfiltered(T, &page(start, count)).await.unwrap(),
            Store::Lite(s) => s.list_unfiltered(T, &page(start, count)).await.unwrap(),
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

both_backends!(
    counts_stay_exact,
    walked_pages_equal_cold_pages,
    jumps_equal_the_ordered_listing,
    jumps_anywhere_stay_exact_through_writes
);

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

/// The tenant's live users in list order, as the database orders them.
async fn ordered(db: &TestDb) -> Vec<Uuid> {
    db.texts(
        "SELECT CAST(id AS TEXT) FROM users WHERE tenant_id = $1 AND deleted_at IS NULL
         ORDER BY created, id",
        &[Arg::Text(T.into())],
    )
    .await
    .into_iter()
    .map(|t| t.unwrap().parse().unwrap())
    .collect()
}

/// The page at `start` equals the same slice of the ordered listing, with its total;
/// returns how it was found.
async fn jump(db: &TestDb, store: &Store, start: u64, count: u64) -> PageRead {
    let all = ordered(db).await;
    let (page, read) = store.read(start, count).await;
    let from = (start as usize - 1).min(all.len());
    let to = (from + count as usize).min(all.len());
    assert_eq!(
        page.users.iter().map(|u| u.id).collect::<Vec<_>>(),
        all[from..to].to_vec(),
        "page at {start}, count {count}"
    );
    assert_eq!(page.total, all.len() as u64);
    read
}

fn read(after: u64, skipped: u64) -> PageRead {
    PageRead { after, skipped }
}

async fn jumps_equal_the_ordered_listing(db: TestDb) {
    let backend = db.open(&common::settings()).await;
    let store = Store::anchored(&backend, 5);
    let users = store.users();
    for i in 0..53 {
        create(&*users, &format!("j{i:02}")).await;
    }
    // A deep jump with nothing remembered reads the keys up to it once, remembering an
    // anchor every 5 users on the way.
    assert_eq!(jump(&db, &store, 37, 4).await, read(0, 36));
    // Later jumps skip fewer than 5 keys after the nearest anchor.
    assert_eq!(jump(&db, &store, 23, 4).await, read(20, 2));
    assert_eq!(jump(&db, &store, 6, 3).await, read(5, 0));
    assert_eq!(jump(&db, &store, 2, 3).await, read(0, 1));
    // A page served before: a seek from the key just before it.
    assert_eq!(jump(&db, &store, 37, 4).await, read(36, 0));
    // The page after a full page starts where that one ended.
    assert_eq!(jump(&db, &store, 41, 4).await, read(40, 0));
    // Past the last anchor: the keys from there on are read, and remembered.
    assert_eq!(jump(&db, &store, 52, 10).await, read(35, 16));
    assert_eq!(jump(&db, &store, 48, 10).await, read(45, 2));
    // Past the end: an empty page with the exact total.
    assert_eq!(jump(&db, &store, 80, 10).await, read(50, 29));
    assert_eq!(jump(&db, &store, 54, 10).await, read(50, 3));
    assert_eq!(jump(&db, &store, 1, 10).await, read(0, 0));
    // A fresh store (another replica) gives the same pages.
    let cold = Store::anchored(&backend, 5);
    assert_eq!(jump(&db, &cold, 48, 10).await, read(0, 47));
    // Concurrent jumps on a fresh store: one reads the anchors, the others wait for
    // them and skip fewer than 5 keys.
    let fresh = Store::anchored(&backend, 5);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..8 {
        let fresh = fresh.clone();
        set.spawn(async move { fresh.read(42 + i % 4, 3).await });
    }
    let all = ordered(&db).await;
    let mut scans = 0;
    while let Some(r) = set.join_next().await {
        let (page, read) = r.unwrap();
        let start = read.after + read.skipped + 1;
        assert_eq!(
            page.users.iter().map(|u| u.id).collect::<Vec<_>>(),
            all[start as usize - 1..start as usize + 2].to_vec()
        );
        if read.after == 0 {
            scans += 1;
        } else {
            assert!(read.skipped < 5, "{read:?}");
        }
    }
    assert_eq!(scans, 1, "one request read the anchors");

    // A create lands at the end: the anchors stay good.
    let (_, shifts) = store.counts().await;
    create(&*users, "j-new").await;
    assert_eq!(store.counts().await.1, shifts);
    assert_eq!(jump(&db, &store, 53, 10).await, read(50, 2));

    // A delete before the anchors moves every later user: they go, and the next jump
    // reads the keys again.
    let all = ordered(&db).await;
    users.delete(T, all[9], None).await.unwrap();
    assert_eq!(jump(&db, &store, 37, 4).await, read(0, 36));
    assert_eq!(jump(&db, &store, 29, 4).await, read(25, 3));
    // So does a delete after them (the counter does not say where it was).
    let all = ordered(&db).await;
    users.delete(T, all[50], None).await.unwrap();
    assert_eq!(jump(&db, &store, 29, 4).await, read(0, 28));
    // And a user inserted with an earlier creation time (an import).
    insert_direct(
        &db,
        Uuid::new_v4(),
        "early",
        Some("2000-01-01T00:00:00.000000Z"),
    )
    .await;
    assert_eq!(jump(&db, &store, 29, 4).await, read(0, 28));
    assert_eq!(jump(&db, &store, 29, 4).await, read(28, 0));
    // A user removed directly from the table.
    let all = ordered(&db).await;
    db.exec("DELETE FROM users WHERE id = $1", &[Arg::id(all[3])])
        .await;
    assert_eq!(jump(&db, &store, 29, 4).await, read(0, 28));
    assert_exact(&db, &store).await;
}

/// Jumps to every position, with writes in between, from stores that share nothing:
/// each page equals the slice of the ordered listing.
async fn jumps_anywhere_stay_exact_through_writes(db: TestDb) {
    let backend = db.open(&common::settings()).await;
    let store = Store::anchored(&backend, 4);
    let users = store.users();
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(create(&*users, &format!("a{i:02}")).await);
    }
    for round in 0..4u64 {
        for start in (1..=34).rev().step_by(3) {
            let read = jump(&db, &store, start, 1 + (start + round) % 6).await;
            if start == 34 {
                // After a delete every key is read again; after a create at the end
                // (round 1) the anchors stay good.
                assert_eq!(read.after == 0, round != 2, "round {round}: {read:?}");
            }
        }
        for start in 1..=32 {
            let read = jump(&db, &store, start, 3).await;
            // Everything was remembered on the way down: at most 3 keys skipped.
            assert!(read.skipped < 4, "at {start}: {read:?}");
        }
        match round {
            0 => users.delete(T, ids[20], None).await.unwrap(),
            1 => {
                create(&*users, "a-late").await;
            }
            _ => users.delete(T, ids[round as usize], None).await.unwrap(),
        }
    }
}
