//! The IdP lookups use indexes: checked on the plans Postgres really chooses for the
//! queries the store runs, over enough rows that a sequential scan would lose.

mod common;

use ameyo_scim::scim::filter;
use ameyo_scim::store::{ListQuery, PgStore};
use common::TestDb;
use sqlx::PgPool;

const USERS: i64 = 20_000;
const GROUPS: i64 = 500;

async fn seed(pool: &PgPool) {
    sqlx::query(
        "INSERT INTO users (id, tenant_id, user_name, external_id, active, resource, version, created, last_modified)
         SELECT gen_random_uuid(), CASE WHEN i % 2 = 0 THEN 'a' ELSE 'b' END,
                'user' || i || '@example.com', 'ext-' || i, true,
                jsonb_build_object(
                    'userName', 'user' || i || '@example.com',
                    'externalId', 'ext-' || i,
                    'emails', jsonb_build_array(
                        jsonb_build_object('value', 'user' || i || '@example.com', 'type', 'work', 'primary', true),
                        jsonb_build_object('value', 'home' || i || '@example.net', 'type', 'home'))),
                1, now() - make_interval(secs => i), now()
         FROM generate_series(1, $1) AS i",
    )
    .bind(USERS)
    .execute(pool)
    .await
    .unwrap();
    // Groups of tenant a, each user in two of them: every listed user's `groups` is
    // read through the membership and group indexes.
    sqlx::query(
        "INSERT INTO groups (id, tenant_id, display_name, version, created, last_modified)
         SELECT gen_random_uuid(), 'a', 'Group ' || i, 1, now(), now()
         FROM generate_series(1, $1) AS i",
    )
    .bind(GROUPS)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO group_members (group_id, user_id)
         SELECT g.id, u.id
         FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM users
               WHERE tenant_id = 'a') AS u
         JOIN (SELECT id, row_number() OVER (ORDER BY id) AS n FROM groups) AS g
           ON g.n IN (u.n % $1 + 1, (u.n + 1) % $1 + 1)",
    )
    .bind(GROUPS)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE users, groups, group_members")
        .execute(pool)
        .await
        .unwrap();
}

fn query(f: &str) -> ListQuery {
    ListQuery {
        filter: Some(filter::parse(f).unwrap()),
        sort_by: None,
        descending: false,
        start_index: 1,
        count: 100,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idp_lookups_use_their_indexes() {
    let db = TestDb::postgres().await;
    let pool = db.pg_pool();
    seed(&pool).await;
    let store = PgStore::new(
        pool.clone(),
        ameyo_scim::store::password::PasswordCipher::new(&[0u8; 32]),
    );
    let some_id: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM users WHERE tenant_id = 'a' LIMIT 1")
            .fetch_one(&pool)
            .await
            .unwrap();
    let cases = [
        (
            r#"userName eq "USER42@example.com""#.to_string(),
            "users_tenant_user_name_key",
        ),
        (
            r#"userName sw "user4242""#.to_string(),
            "users_tenant_user_name_key",
        ),
        (
            r#"externalId eq "ext-42""#.to_string(),
            "users_tenant_external_id",
        ),
        (format!(r#"id eq "{some_id}""#), "users_pkey"),
        (
            r#"emails.value eq "home42@example.net""#.to_string(),
            "users_emails",
        ),
        (
            r#"emails[type eq "work"].value eq "user42@example.com""#.to_string(),
            "users_emails",
        ),
        (
            r#"emails[type eq "work" and value eq "user42@example.com"]"#.to_string(),
            "users_emails",
        ),
    ];
    for (f, index) in cases {
        let plan = store.explain_list("a", &query(&f), false).await.unwrap();
        assert!(
            plan.contains(index),
            "{f}: expected {index} in plan:\n{plan}"
        );
        assert!(
            !plan.contains("Seq Scan"),
            "{f}: sequential scan in plan:\n{plan}"
        );
    }
    // The planner knows a userName matches one user (not 0.5% of them): at a million
    // users a bad guess walks the whole created-order index instead.
    let plan = store
        .explain_list("a", &query(r#"userName eq "user42@example.com""#), false)
        .await
        .unwrap();
    let index_line = plan
        .lines()
        .find(|l| l.contains("users_tenant_user_name_key"))
        .unwrap();
    assert!(index_line.contains("rows=1 "), "estimate: {index_line}");
    // And the answers are right.
    let analyzed = store
        .explain_list(
            "a",
            &query(r#"emails[type eq "work"].value eq "user42@example.com""#),
            true,
        )
        .await
        .unwrap();
    assert!(analyzed.contains("rows=1 "), "one row found:\n{analyzed}");
}

/// The adoption `serve` runs at every start looks only at the rows linked before
/// ownership was recorded, through their partial index, not at every outbox row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_adoption_reads_only_unowned_rows() {
    let db = TestDb::postgres().await;
    let pool = db.pg_pool();
    seed(&pool).await;
    // Every user has an outbox row, delivered and owned, as after a normal start.
    sqlx::query(
        "INSERT INTO sync_state (user_id, tenant_id, desired_version, synced_version, state,
                                 ameyo_user_id, ameyo_server)
         SELECT id, tenant_id, 1, 1, 'done', 'agent' || user_name, 'http://ameyo'
         FROM users",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE sync_state")
        .execute(&pool)
        .await
        .unwrap();
    let explain = format!(
        "EXPLAIN {}",
        ameyo_scim::store::outbox::ADOPT_SERVER_SQL
            .replace("$1", "'a'")
            .replace("$2", "'http://ameyo'")
    );
    let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(explain))
        .fetch_all(&pool)
        .await
        .unwrap();
    let plan = plan.join("\n");
    assert!(plan.contains("sync_state_unowned"), "{plan}");
    assert!(!plan.contains("Seq Scan on sync_state"), "{plan}");
}
