//! The scenarios measured with the service in this process: lookups, pages, writes,
//! delivery and Groups, over real HTTP on loopback, delivering to an emulator in this
//! process too.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ameyo_emulator::{Emulator, EmulatorOptions};
use chrono::Utc;
use serde_json::json;
use uuid::Uuid;

use super::{
    DELIVERY_CONCURRENCY, Kind, Outcome, Scratch, Stats, StoreReport, TENANT, TOKEN, Target,
    baseline, enc, progress, run,
};
use crate::http::{AppState, router};
use crate::store::backend::{Access, Backend, Db};
use crate::store::sqlite::filter::{fold_case, search_document};

/// Users whose ids the `GET /Users/{id}` run picks from.
const ID_SAMPLE: usize = 5000;

/// The URL of a lookup's i-th request: `(scim base, k, i)`, k a seeded user's number.
type UrlOf = Box<dyn Fn(&str, usize, usize) -> String + Send + Sync>;

/// Seed PostgreSQL with SQL, one statement per 100,000 users; returns a sample of ids.
async fn seed_postgres(pool: &sqlx::PgPool, users: i64) -> anyhow::Result<Vec<Uuid>> {
    let batch = 100_000i64;
    let mut from = 1;
    while from <= users {
        let to = (from + batch - 1).min(users);
        sqlx::query(
            "WITH u AS (
               INSERT INTO users (id, tenant_id, user_name, external_id, active, resource, version, created, last_modified)
               SELECT gen_random_uuid(), 'bench', 'user' || i || '@example.com', 'ext-' || i, true,
                      jsonb_build_object('userName', 'user' || i || '@example.com', 'externalId', 'ext-' || i,
                        'name', jsonb_build_object('givenName', 'Given' || i, 'familyName', 'Family'),
                        'emails', jsonb_build_array(jsonb_build_object('value', 'user' || i || '@example.com', 'type', 'work', 'primary', true))),
                      1, now(), now()
               FROM generate_series($1::bigint, $2::bigint) AS i
               RETURNING id)
             INSERT INTO sync_state (user_id, tenant_id, desired_version, synced_version, state, pending_since)
             SELECT id, 'bench', 1, 1, 'done', NULL FROM u",
        )
        .bind(from)
        .bind(to)
        .execute(pool)
        .await?;
        from = to + 1;
    }
    // What autovacuum does soon after a bulk load: visibility map and statistics.
    sqlx::query("VACUUM ANALYZE users").execute(pool).await?;
    sqlx::query("VACUUM ANALYZE sync_state")
        .execute(pool)
        .await?;
    // Whole pages of users, about ID_SAMPLE of them (all of a small table).
    let percent = (ID_SAMPLE as f64 * 100.0 / users as f64).min(100.0);
    Ok(
        sqlx::query_scalar("SELECT id FROM users TABLESAMPLE SYSTEM ($1) LIMIT $2")
            .bind(percent as f32)
            .bind(ID_SAMPLE as i64)
            .fetch_all(pool)
            .await?,
    )
}

/// Seed SQLite in one transaction of prepared INSERTs, the rows as the store writes
/// them: the derived `user_name_key` and `search` columns (the e-mail index follows by
/// trigger), users' times with microseconds, outbox times with milliseconds, and an
/// outbox row already delivered. No ANALYZE: a served store plans with the statistics
/// its migration wrote. Returns a sample of ids.
async fn seed_sqlite(pool: &sqlx::SqlitePool, users: i64) -> anyhow::Result<Vec<Uuid>> {
    const USER_SQL: &str = "
        INSERT INTO users (id, tenant_id, user_name, user_name_key, external_id, active,
                           resource, search, version, created, last_modified)
        VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6, ?7, 1, ?8, ?8)";
    const SYNC_SQL: &str = "
        INSERT INTO sync_state (user_id, tenant_id, desired_version, synced_version, state,
                                next_attempt_at, pending_since, updated_at)
        VALUES (?1, ?2, 1, 1, 'done', ?3, NULL, ?3)";
    // Distinct creation times, all before the users the run creates.
    let base = Utc::now() - chrono::Duration::microseconds(users + 1_000_000);
    let outbox_time = crate::store::sqlite::format_time(Utc::now());
    let every = (users as usize).div_ceil(ID_SAMPLE);
    let mut sample = Vec::with_capacity(ID_SAMPLE);
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    for i in 1..=users {
        let id = Uuid::new_v4();
        let user_name = format!("user{i}@example.com");
        let resource: serde_json::Map<String, serde_json::Value> = serde_json::from_value(json!({
            "userName": user_name,
            "externalId": format!("ext-{i}"),
            "name": {"givenName": format!("Given{i}"), "familyName": "Family"},
            "emails": [{"value": user_name, "type": "work", "primary": true}],
        }))?;
        // The store's format for the users' own times (see migrations-sqlite).
        let created = (base + chrono::Duration::microseconds(i))
            .format("%Y-%m-%dT%H:%M:%S%.6fZ")
            .to_string();
        sqlx::query(USER_SQL)
            .bind(id.to_string())
            .bind(TENANT)
            .bind(&user_name)
            .bind(fold_case(&user_name))
            .bind(format!("ext-{i}"))
            .bind(serde_json::to_string(&resource)?)
            .bind(serde_json::to_string(&search_document(&resource))?)
            .bind(&created)
            .execute(&mut *tx)
            .await?;
        sqlx::query(SYNC_SQL)
            .bind(id.to_string())
            .bind(TENANT)
            .bind(&outbox_time)
            .execute(&mut *tx)
            .await?;
        if (i as usize).is_multiple_of(every) {
            sample.push(id);
        }
    }
    tx.commit().await?;
    Ok(sample)
}

/// The Groups scenario: a large group built and changed 1,000 members at a time, and
/// the re-delivery of the users a watched group's membership change affects.
struct GroupReport {
    group_size: usize,
    rows: Vec<Stats>,
    /// Members added to the watched group in one PATCH, and its latency.
    redelivered: usize,
    patch_ms: f64,
    /// Until every affected user was in Ameyo with its new role.
    redelivery_secs: f64,
    /// Ameyo calls the re-delivery made (one update per affected user, no more).
    calls: usize,
    /// Rows an unwatched group's 1,000-member change made pending (none).
    unwatched_pending: i64,
}

/// Ids of up to `n` live users of the bench tenant, in creation order.
async fn user_ids(backend: &Backend, n: usize) -> anyhow::Result<Vec<String>> {
    let sql = "SELECT id FROM users WHERE tenant_id = 'bench' AND deleted_at IS NULL
               ORDER BY created, id LIMIT ";
    Ok(match &backend.db {
        Db::Postgres(pool) => {
            sqlx::query_scalar::<_, Uuid>(sqlx::AssertSqlSafe(format!("{sql}{n}")))
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|id| id.to_string())
                .collect()
        }
        Db::Sqlite(pool) => {
            sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(format!("{sql}{n}")))
                .fetch_all(pool)
                .await?
        }
    })
}

fn members_patch(add: &[String], remove: &[String]) -> serde_json::Value {
    let mut ops = Vec::new();
    if !remove.is_empty() {
        let values: Vec<_> = remove.iter().map(|id| json!({"value": id})).collect();
        ops.push(json!({"op": "Remove", "path": "members", "value": values}));
    }
    if !add.is_empty() {
        let values: Vec<_> = add.iter().map(|id| json!({"value": id})).collect();
        ops.push(json!({"op": "Add", "path": "members", "value": values}));
    }
    json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": ops})
}

async fn create_group(http: &reqwest::Client, scim: &str, name: &str) -> anyhow::Result<String> {
    let r = http
        .post(format!("{scim}/Groups"))
        .bearer_auth(TOKEN)
        .json(&json!({"displayName": name}))
        .send()
        .await?;
    anyhow::ensure!(r.status() == 201, "creating group {name}: {}", r.status());
    let body: serde_json::Value = r.json().await?;
    Ok(body["id"].as_str().unwrap_or_default().to_string())
}

/// Build a group of every seeded user, 1,000 members per PATCH; then swap 1,000
/// members out and in again; then move `delivered` users into the watched group and
/// time their re-delivery.
async fn measure_groups(
    backend: &Backend,
    http: &reqwest::Client,
    scim: &str,
    users: usize,
    delivered: Vec<String>,
    emulator: &Emulator,
    worker: Arc<crate::sync::Worker>,
) -> anyhow::Result<GroupReport> {
    const BATCH: usize = 1000;
    let ids = Arc::new(user_ids(backend, users).await?);
    let big = create_group(http, scim, "Everyone").await?;
    let batches = ids.len().div_ceil(BATCH);
    let patch_big = {
        let (http, uri) = (http.clone(), format!("{scim}/Groups/{big}"));
        move |add: Vec<String>, remove: Vec<String>| {
            let request = http
                .patch(uri.clone())
                .bearer_auth(TOKEN)
                .json(&members_patch(&add, &remove));
            async move {
                let r = request.send().await.expect("request");
                assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
            }
        }
    };
    let mut rows = Vec::new();
    {
        let (ids, patch_big) = (ids.clone(), patch_big.clone());
        rows.push(
            run(
                "PATCH /Groups add 1,000 members (group growing to all users)",
                batches,
                1,
                move |i| {
                    let chunk = ids[i * BATCH..((i + 1) * BATCH).min(ids.len())].to_vec();
                    patch_big(chunk, vec![])
                },
            )
            .await,
        );
    }
    {
        // 1,000 members out and 1,000 back in, in a group of all users.
        let (ids, patch_big) = (ids.clone(), patch_big.clone());
        let swaps = 20.min(batches.max(1));
        rows.push(
            run(
                "PATCH /Groups remove 1,000 then add them back (full group)",
                swaps * 2,
                1,
                move |i| {
                    let chunk = ids[(i / 2) * BATCH..((i / 2 + 1) * BATCH).min(ids.len())].to_vec();
                    if i % 2 == 0 {
                        patch_big(vec![], chunk)
                    } else {
                        patch_big(chunk, vec![])
                    }
                },
            )
            .await,
        );
    }
    // An unwatched group's membership change makes nobody pending.
    let before = outstanding(backend).await?;
    let other = create_group(http, scim, "Unwatched").await?;
    let first: Vec<String> = ids.iter().take(BATCH).cloned().collect();
    let r = http
        .patch(format!("{scim}/Groups/{other}"))
        .bearer_auth(TOKEN)
        .json(&members_patch(&first, &[]))
        .send()
        .await?;
    anyhow::ensure!(r.status() == 200, "unwatched PATCH: {}", r.status());
    let unwatched_pending = outstanding(backend).await? - before;

    // The watched group: its members become Supervisors in Ameyo.
    let watched = create_group(http, scim, "CC Supervisors").await?;
    let moving: Vec<String> = delivered.into_iter().take(BATCH).collect();
    let calls_before = emulator.requests().len();
    let t = Instant::now();
    let r = http
        .patch(format!("{scim}/Groups/{watched}"))
        .bearer_auth(TOKEN)
        .json(&members_patch(&moving, &[]))
        .send()
        .await?;
    anyhow::ensure!(r.status() == 200, "watched PATCH: {}", r.status());
    let patch_ms = t.elapsed().as_secs_f64() * 1000.0;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(worker.run(shutdown.clone(), Duration::from_secs(10)));
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if outstanding(backend).await? == 0 {
            break;
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(600),
            "re-delivery did not finish in 10 minutes"
        );
    }
    let redelivery_secs = t.elapsed().as_secs_f64();
    shutdown.cancel();
    running.await?;
    let supervisors = emulator
        .users()
        .iter()
        .filter(|u| u["userType"] == json!("Supervisor"))
        .count();
    anyhow::ensure!(
        supervisors == moving.len(),
        "{supervisors} Supervisors in Ameyo, {} expected",
        moving.len()
    );
    Ok(GroupReport {
        group_size: ids.len(),
        rows,
        redelivered: moving.len(),
        patch_ms,
        redelivery_secs,
        calls: emulator.requests().len() - calls_before,
        unwatched_pending,
    })
}

/// Users waiting for delivery or being delivered, in every tenant: counted along the
/// outbox's two partial indexes (pending rows, leased rows), so asking often while a
/// delivery is measured costs the database next to nothing. (The outbox's `counts`,
/// which the metrics use, groups every row: at a million users a quarter of a second
/// of a core each time, which slowed the very delivery it was waiting for.)
async fn outstanding(backend: &Backend) -> anyhow::Result<i64> {
    const SQL: &str = "SELECT (SELECT count(*) FROM sync_state WHERE state = 'pending')
                            + (SELECT count(*) FROM sync_state WHERE state = 'leased')";
    Ok(match &backend.db {
        Db::Postgres(pool) => sqlx::query_scalar(SQL).fetch_one(pool).await?,
        Db::Sqlite(pool) => sqlx::query_scalar(SQL).fetch_one(pool).await?,
    })
}

/// What the in-process part hands to the rest of the run.
pub(super) struct Handoff {
    /// The read baseline (userName lookups without HTTP) at `--lookup-concurrency`.
    pub lookup_baseline: Option<baseline::Lookups>,
}

/// Seed the store, then measure with the service in this process. Leaves the store
/// closed (an embedded store's lock released) for the process part.
pub(super) async fn measure(
    kind: Kind,
    scratch: &Scratch,
    args: &super::BenchArgs,
    alone: &baseline::Alone,
    report: &mut StoreReport,
) -> anyhow::Result<Handoff> {
    let (emulator, emu_addr) = Emulator::spawn(EmulatorOptions::default()).await?;
    let settings = super::settings(&scratch.url(), &format!("http://{emu_addr}"))?;
    // As `serve` opens it (for SQLite: the file locked to this process).
    let backend = Backend::open(&settings, Access::Serve).await?;

    progress(format!("seeding {} users...", args.users));
    let t = Instant::now();
    let ids = match &backend.db {
        Db::Postgres(pool) => seed_postgres(pool, args.users).await?,
        Db::Sqlite(pool) => seed_sqlite(pool, args.users).await?,
    };
    report.seeded_in_secs = t.elapsed().as_secs_f64();
    progress(format!("seeded in {:.1}s", report.seeded_in_secs));
    anyhow::ensure!(!ids.is_empty(), "no ids sampled from the seeded users");

    let owner = crate::sync::this_owner();
    let tenants = crate::tenants::build(&settings, &backend.sessions(&owner))?;
    // As `serve` does before it reports ready.
    backend
        .users
        .clone()
        .warm_up(tenants.iter().map(|t| t.id.clone()).collect())
        .await?;
    let state = AppState::new(&settings, &tenants, &backend).map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, router(state, Duration::from_secs(30))).await;
    });
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let scim = format!("http://{addr}/scim/v2");
    let n = args.requests as usize;
    let concurrency = args.concurrency as usize;
    let users = args.users as usize;
    let mut rows = Vec::new();

    // Lookups, each request to the URL `url_of` gives.
    let get = |name: &'static str, n: usize, url_of: UrlOf| {
        let (http, scim) = (http.clone(), scim.clone());
        run(name, n, concurrency, move |i| {
            let k = (i * 7919) % users + 1;
            let request = http.get(url_of(&scim, k, i)).bearer_auth(TOKEN);
            async move {
                let r = request.send().await.expect("request");
                assert!(r.status().is_success(), "{}", r.status());
                let _ = r.bytes().await;
            }
        })
    };
    rows.push(
        get(
            "GET /Users?filter=userName eq",
            n,
            Box::new(|scim, k, _| {
                format!(
                    "{scim}/Users?filter={}",
                    enc(format!("userName eq \"USER{k}@example.com\""))
                )
            }),
        )
        .await,
    );
    rows.push(
        get(
            "GET /Users?filter=externalId eq",
            n,
            Box::new(|scim, k, _| {
                format!(
                    "{scim}/Users?filter={}",
                    enc(format!("externalId eq \"ext-{k}\""))
                )
            }),
        )
        .await,
    );
    rows.push(
        get(
            "GET /Users?filter=emails[type eq \"work\"].value eq",
            n,
            Box::new(|scim, k, _| {
                format!(
                    "{scim}/Users?filter={}",
                    enc(format!(
                        "emails[type eq \"work\"].value eq \"user{k}@example.com\""
                    ))
                )
            }),
        )
        .await,
    );
    let ids = Arc::new(ids);
    {
        let ids = ids.clone();
        rows.push(
            get(
                "GET /Users/{id}",
                n,
                Box::new(move |scim, _, i| format!("{scim}/Users/{}", ids[i % ids.len()])),
            )
            .await,
        );
    }

    // The read baseline: the same lookups without HTTP, at the process part's
    // concurrency (the figure it is compared with).
    let lookup_baseline = baseline::lookups(&backend, scratch, args, users).await?;

    // Writes: creates, then PATCHes of those users.
    let create = |prefix: &'static str| {
        let (http, scim) = (http.clone(), scim.clone());
        let created = Arc::new(std::sync::Mutex::new(Vec::new()));
        let out = created.clone();
        let f = move |i: usize| {
            let (created, user_name) = (created.clone(), format!("{prefix}{i}@example.com"));
            let request = http.post(format!("{scim}/Users")).bearer_auth(TOKEN).json(
                &json!({"userName": user_name, "emails": [{"value": user_name, "type": "work"}]}),
            );
            async move {
                let r = request.send().await.expect("request");
                assert_eq!(r.status(), 201);
                let body: serde_json::Value = r.json().await.expect("json");
                let id = body["id"].as_str().unwrap_or_default().to_string();
                created.lock().expect("lock").push(id);
            }
        };
        (f, out)
    };
    let (post, created) = create("new");
    let cpu_before = super::cpu::Reading::now();
    let posts = run("POST /Users", n, concurrency, post).await;
    let post_cpu = super::cpu::Reading::now().per_op_since(&cpu_before, n);
    // The write baseline right after, while the machine is in the same state.
    let writes = baseline::creates(&backend, scratch, args).await?;
    if let (Some(base_cpu), Some(base_rate)) = (writes.cpu, writes.per_second) {
        report.notes.push(create_cpu_note(
            kind,
            &post_cpu,
            posts.per_second(),
            &base_cpu,
            base_rate,
        ));
    }
    report.outcomes.push(
        Outcome::new(
            &format!("create: POST /Users, {concurrency} in flight"),
            kind,
            posts.per_second(),
            "/s",
            Target::RatioAtLeast(0.90),
        )
        .against(writes.per_second, writes.what.clone()),
    );
    rows.push(posts);
    let created = Arc::new(created.lock().expect("lock").clone());
    {
        let (http, scim, created) = (http.clone(), scim.clone(), created.clone());
        rows.push(
            run("PATCH /Users/{id}", n, concurrency, move |i| {
                let request = http
                    .patch(format!("{scim}/Users/{}", created[i % created.len()]))
                    .bearer_auth(TOKEN)
                    .json(&json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                        "Operations": [{"op": "replace", "path": "displayName", "value": format!("D{i}")}]}));
                async move {
                    let r = request.send().await.expect("request");
                    assert_eq!(r.status(), 200);
                }
            })
            .await,
        );
    }

    // Delivery of `--deliveries` pending users to the emulator, with no added latency,
    // then (another batch) with `--ameyo-latency-ms` added to every call.
    let worker = Arc::new(crate::sync::Worker::from_tenants(
        &settings.sync,
        &tenants,
        backend.outbox.clone(),
        backend.cipher.clone(),
        owner,
    ));
    let mut latencies = vec![0];
    if args.ameyo_latency_ms > 0 {
        latencies.push(args.ameyo_latency_ms);
    }
    for (round, &latency_ms) in latencies.iter().enumerate() {
        let waiting = outstanding(&backend).await? as usize;
        let wanted = args.deliveries as usize;
        if waiting < wanted {
            let (post, _) = create(if round == 0 { "extra" } else { "slow" });
            run(
                "POST /Users (delivery top-up, not reported)",
                wanted - waiting,
                concurrency,
                post,
            )
            .await;
        }
        let drain = deliver(&backend, &emulator, worker.clone(), latency_ms).await?;
        let calls_per_sec = drain.calls as f64 / drain.secs;
        let users_per_sec = drain.users as f64 / drain.secs;
        if latency_ms == 0 {
            report.outcomes.push(
                Outcome::new(
                    "delivery, no added latency (users/s)",
                    kind,
                    users_per_sec,
                    "/s",
                    Target::None,
                )
                .against(alone.per_second, alone.what.clone()),
            );
        } else {
            // Each delivery makes one call at a time: `sync.concurrency` calls in
            // flight at best, each taking the added latency.
            let ideal = DELIVERY_CONCURRENCY as f64 * 1000.0 / latency_ms as f64;
            report.outcomes.push(
                Outcome::new(
                    &format!("delivery, {latency_ms} ms added per Ameyo call (calls/s)"),
                    kind,
                    calls_per_sec,
                    "/s",
                    Target::RatioAtLeast(0.90),
                )
                .against(
                    Some(ideal),
                    format!("concurrency / latency = {DELIVERY_CONCURRENCY} / {latency_ms} ms"),
                ),
            );
            // What an emulator like this one, in this process, answers with that
            // latency to a client that does nothing else, as many in flight: the
            // ceiling the machine allows (a timer rounds each wait up, and the HTTP
            // exchange comes on top). One of its own: the client's forced login would
            // end the worker's session on this one.
            let (alike, alike_addr) = Emulator::spawn(EmulatorOptions {
                faults: ameyo_emulator::Faults {
                    latency_ms,
                    ..Default::default()
                },
                ..EmulatorOptions::default()
            })
            .await?;
            let straight = super::baseline::creates_straight(
                &format!("the emulator alone, {latency_ms} ms added"),
                &format!("http://{alike_addr}"),
                "straight",
                (drain.calls as usize).max(DELIVERY_CONCURRENCY),
                DELIVERY_CONCURRENCY,
            )
            .await?;
            // Its listener stays (idle) until the run ends; nothing calls it again.
            drop(alike);
            report.outcomes.push(
                Outcome::new(
                    &format!("the emulator alone, {latency_ms} ms added per call (calls/s)"),
                    kind,
                    straight,
                    "/s",
                    Target::None,
                )
                .against(
                    Some(ideal),
                    format!("concurrency / latency = {DELIVERY_CONCURRENCY} / {latency_ms} ms"),
                ),
            );
            report.notes.push(format!(
                "delivery with {latency_ms} ms added: {calls_per_sec:.0} calls/s, {:.2} of the {straight:.0} calls/s an emulator alike answers a client doing nothing else, {DELIVERY_CONCURRENCY} in flight",
                calls_per_sec / straight,
            ));
        }
        report.notes.push(format!(
            "delivery with {latency_ms} ms added: {} pending users delivered in {:.1}s ({users_per_sec:.0} users/s; {} Ameyo calls, {calls_per_sec:.0} calls/s; {} logins)",
            drain.users,
            drain.secs,
            drain.calls,
            emulator.login_count(),
        ));
    }

    if args.groups {
        progress("groups...");
        let g = measure_groups(
            &backend,
            &http,
            &scim,
            users,
            created.to_vec(),
            &emulator,
            worker,
        )
        .await?;
        let patch_p50 = g.rows[0].quantile_ms(0.5);
        report.outcomes.push(Outcome::new(
            "PATCH /Groups adding 1,000 members, p50",
            kind,
            patch_p50,
            "ms",
            Target::None,
        ));
        report.notes.push(format!(
            "groups: group of {} members; PATCH adding {} members to a watched group answered in {:.0} ms, all {} re-delivered in {:.1}s ({:.0} users/s, {} Ameyo calls); an unwatched group's 1,000-member change made {} users pending",
            g.group_size,
            g.redelivered,
            g.patch_ms,
            g.redelivered,
            g.redelivery_secs,
            g.redelivered as f64 / g.redelivery_secs,
            g.calls,
            g.unwatched_pending,
        ));
        rows.extend(g.rows);
    }

    server.abort();
    let _ = server.await;
    match &backend.db {
        Db::Postgres(pool) => pool.close().await,
        Db::Sqlite(pool) => pool.close().await,
    }
    drop(backend);
    report
        .details
        .extend(rows.iter().map(|r| r.detail(kind.name())));
    Ok(Handoff { lookup_baseline })
}

/// One delivery run's outcome.
struct Drain {
    users: i64,
    secs: f64,
    calls: u64,
}

/// Run the worker `serve` runs until nothing is pending, the emulator adding
/// `latency_ms` to every call.
async fn deliver(
    backend: &Backend,
    emulator: &Emulator,
    worker: Arc<crate::sync::Worker>,
    latency_ms: u64,
) -> anyhow::Result<Drain> {
    let pending = outstanding(backend).await?;
    let held_before = emulator.user_count() as i64;
    emulator.set_faults(ameyo_emulator::Faults {
        latency_ms,
        ..Default::default()
    });
    let calls_before = emulator.request_count();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let t = Instant::now();
    let running = tokio::spawn(worker.run(shutdown.clone(), Duration::from_secs(10)));
    // Every user delivered is new to the emulator, which answers how many it holds
    // cheaply; the outbox (a count over every seeded user) is asked once they are all
    // there, or now and then in case some never arrive.
    let mut last_asked = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let arrived = emulator.user_count() as i64 - held_before >= pending;
        if !arrived && last_asked.elapsed() < Duration::from_secs(1) {
            continue;
        }
        last_asked = Instant::now();
        if outstanding(backend).await? == 0 {
            break;
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(600),
            "delivery did not finish in 10 minutes"
        );
    }
    let secs = t.elapsed().as_secs_f64();
    let calls = emulator.request_count() - calls_before;
    shutdown.cancel();
    running.await?;
    emulator.set_faults(ameyo_emulator::Faults::default());
    progress(format!(
        "delivered {pending} in {secs:.1}s ({latency_ms} ms added)"
    ));
    Ok(Drain {
        users: pending,
        secs,
        calls,
    })
}

/// Where a create's CPU went, over HTTP and in the baseline, and the share of the
/// baseline's rate the POSTs could reach with the cores as the limit.
fn create_cpu_note(
    kind: Kind,
    post: &super::cpu::PerOp,
    post_rate: f64,
    base: &super::cpu::PerOp,
    base_rate: f64,
) -> String {
    let ceiling = super::cpu::ceiling(post, base);
    let reached = post_rate / base_rate.max(1e-9);
    let (post_parts, base_parts) = match kind {
        Kind::Postgres => (
            format!(
                "the service and the benchmark's HTTP client {:.2} ms, PostgreSQL {:.2} ms, the rest {:.2} ms",
                post.own, post.postgres, post.rest
            ),
            format!(
                "PostgreSQL {:.2} ms, pgbench and the rest {:.2} ms",
                base.postgres,
                base.own + base.rest
            ),
        ),
        Kind::Sqlite => (
            format!(
                "the service, SQLite and the benchmark's HTTP client (one process) {:.2} ms, the rest {:.2} ms",
                post.own,
                post.postgres + post.rest
            ),
            format!(
                "the store and SQLite {:.2} ms, the rest {:.2} ms",
                base.own,
                base.postgres + base.rest
            ),
        ),
    };
    let (busy, base_busy) = (post.busy(post_rate), base.busy(base_rate));
    let limit = if busy >= 0.9 && base_busy >= 0.9 {
        format!(
            "With the cores the limit of both, POST can reach at most {ceiling:.2} of the baseline's rate; it reached {reached:.2}"
        )
    } else {
        format!(
            "The cores were not the limit of both (POST {reached:.2} of the baseline's rate, the cost ratio {ceiling:.2})"
        )
    };
    format!(
        "create: CPU per create: POST /Users {:.2} ms ({post_parts}), cores {:.0}% busy; the baseline {:.2} ms ({base_parts}), cores {:.0}% busy. {limit}",
        post.total(),
        busy * 100.0,
        base.total(),
        base_busy * 100.0,
    )
}
