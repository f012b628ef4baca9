//! What operators see and do: metrics after a flow, readiness, the admin CLI against a
//! seeded database, and reconcile against the emulator with planted drift.

mod common;

use std::process::Command;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use common::*;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

const LIMIT: Duration = Duration::from_secs(30);

async fn scrape(s: &SyncApp) -> String {
    let router = ameyo_scim::http::metrics_router(
        s.app.backend.clone(),
        vec!["a".into(), "b".into(), "c".into()],
        16,
    );
    let resp = router
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers().get("content-type").unwrap(),
        "text/plain; version=0.0.4; charset=utf-8"
    );
    String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap()
}

/// The value of the first series whose line contains every fragment.
fn series(text: &str, name: &str, fragments: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .find(|l| fragments.iter().all(|f| l.contains(f)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

both_backends!(metrics_after_a_flow);
async fn metrics_after_a_flow(db: TestDb) {
    let s = sync_app(&db).await;
    s.emulator.set_faults(ameyo_emulator::Faults {
        reject_user_ids: vec!["dead@example.com".into()],
        ..Default::default()
    });
    let id = s.app.create_named("metrics@example.com").await;
    s.app.create_named("dead@example.com").await;
    s.drain(LIMIT).await;
    s.app
        .patch(
            &format!("/scim/v2/Users/{id}"),
            json!({"Operations": [{"op": "replace", "path": "displayName", "value": "M"}]}),
        )
        .await;
    s.drain(LIMIT).await;
    s.app.create_named("waiting@example.com").await;
    let text = scrape(&s).await;

    let has = |name: &str, fragments: &[&str]| {
        series(&text, name, fragments)
            .unwrap_or_else(|| panic!("no {name} with {fragments:?} in\n{text}"))
    };
    assert!(
        has(
            "ameyo_scim_http_requests_total",
            &[
                r#"route="/scim/v2/Users""#,
                r#"method="POST""#,
                r#"status="201""#
            ]
        ) >= 3.0
    );
    assert!(
        has(
            "ameyo_scim_http_requests_total",
            &[
                r#"route="/scim/v2/Users/{id}""#,
                r#"method="PATCH""#,
                r#"status="200""#
            ]
        ) >= 1.0
    );
    assert!(
        has(
            "ameyo_scim_http_request_duration_seconds_bucket",
            &[r#"route="/scim/v2/Users""#, r#"le="+Inf""#]
        ) >= 3.0
    );
    assert_eq!(
        has(
            "ameyo_scim_sync_users",
            &[r#"tenant="a""#, r#"state="done""#]
        ),
        1.0
    );
    assert_eq!(
        has(
            "ameyo_scim_sync_users",
            &[r#"tenant="a""#, r#"state="dead""#]
        ),
        1.0
    );
    assert_eq!(
        has(
            "ameyo_scim_sync_users",
            &[r#"tenant="a""#, r#"state="pending""#]
        ),
        1.0
    );
    assert_eq!(
        has(
            "ameyo_scim_sync_users",
            &[r#"tenant="b""#, r#"state="pending""#]
        ),
        0.0
    );
    assert!(has("ameyo_scim_sync_oldest_pending_seconds", &[r#"tenant="a""#]) >= 0.0);
    assert!(
        has(
            "ameyo_scim_sync_deliveries_total",
            &[r#"tenant="a""#, r#"action="create""#, r#"outcome="ok""#]
        ) >= 1.0
    );
    assert!(
        has(
            "ameyo_scim_sync_deliveries_total",
            &[r#"tenant="a""#, r#"action="update""#, r#"outcome="ok""#]
        ) >= 1.0
    );
    assert!(
        has(
            "ameyo_scim_sync_deliveries_total",
            &[r#"tenant="a""#, r#"outcome="dead""#]
        ) >= 1.0
    );
    assert!(
        has(
            "ameyo_scim_ameyo_requests_total",
            &[r#"tenant="a""#, r#"call="create""#, r#"status="200""#]
        ) >= 1.0
    );
    assert!(
        has(
            "ameyo_scim_ameyo_requests_total",
            &[r#"tenant="a""#, r#"call="create""#, r#"status="400""#]
        ) >= 1.0
    );
    assert!(
        has(
            "ameyo_scim_ameyo_request_duration_seconds_count",
            &[r#"tenant="a""#, r#"call="login""#]
        ) >= 1.0
    );
    assert!(
        has(
            "ameyo_scim_ameyo_logins_total",
            &[r#"tenant="a""#, r#"outcome="ok""#]
        ) >= 1.0
    );
    assert_eq!(has("ameyo_scim_db_pool_max_connections", &[]), 16.0);
    assert!(has("ameyo_scim_db_pool_connections", &[r#"state="idle""#]) >= 0.0);
    assert_eq!(
        has(
            "ameyo_scim_build_info",
            &[
                &format!(r#"version="{}""#, env!("CARGO_PKG_VERSION")),
                "commit="
            ]
        ),
        1.0
    );
    // Every series we export is declared.
    for name in ameyo_scim::telemetry::metrics::exported_names() {
        if !name.ends_with("_bucket") && !name.ends_with("_sum") && !name.ends_with("_count") {
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} undeclared"
            );
        }
    }
    // /readyz feeds the ready gauge.
    let r = s
        .app
        .call(axum::http::Method::GET, "/readyz", None, None)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, json!({"status": "ready"}));
    assert_eq!(
        series(&scrape(&s).await, "ameyo_scim_ready", &[]),
        Some(1.0)
    );
}

both_backends!(readyz_reports_missing_migrations);
async fn readyz_reports_missing_migrations(db: TestDb) {
    let app = app(&db).await;
    assert_eq!(
        app.call(axum::http::Method::GET, "/readyz", None, None)
            .await
            .status,
        200
    );
    db.exec("DELETE FROM _sqlx_migrations", &[]).await;
    let r = app
        .call(axum::http::Method::GET, "/readyz", None, None)
        .await;
    assert_eq!(r.status, 503);
    assert!(
        r.body["reason"].as_str().unwrap().contains("not applied"),
        "{}",
        r.text
    );
}

/// Run the CLI against the test's database, off the test's runtime thread (the
/// emulator it may call lives on that runtime).
async fn cli(config: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let config = config.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_ameyo-scim"))
            .args(&args)
            .arg("--config")
            .arg(&config)
            .output()
    })
    .await
    .expect("join")
    .expect("run the CLI");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

async fn cli_json(config: &std::path::Path, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let (ok, out, err) = cli(config, &all).await;
    assert!(ok, "{args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

fn write_cli_config(db: &TestDb, ameyo_url: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    write_cli_config_with(db, ameyo_url, "")
}

/// The CLI's configuration, with `extra` appended to tenant `a`'s `[tenants.ameyo]`.
fn write_cli_config_with(
    db: &TestDb,
    ameyo_url: &str,
    extra: &str,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let url = db.url();
    let dir = common::db::run_dir().join(format!("cli-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[database]
url = "{url}"
[sync]
password_key = "{PASSWORD_KEY}"
[[tenants]]
id = "a"
token_sha256 = ["{digest}"]
[tenants.ameyo]
base_url = "{ameyo_url}"
contact_center_id = 1
login_user = "admin"
login_password = "{AMEYO_ADMIN_PASSWORD}"
{extra}
"#,
            digest = ameyo_scim::http::auth::token_digest(TOKEN_A)
        ),
    )
    .unwrap();
    (path, dir)
}

both_backends!(admin_cli_against_a_seeded_database);
async fn admin_cli_against_a_seeded_database(db: TestDb) {
    let s = sync_app(&db).await;
    let (config, _dir) = write_cli_config(&db, "http://127.0.0.1:9");
    s.emulator.set_faults(ameyo_emulator::Faults {
        reject_user_ids: vec!["broken@example.com".into()],
        ..Default::default()
    });
    let ok = s.app.create_named("fine@example.com").await;
    let broken = s.app.create_named("broken@example.com").await;
    s.drain(LIMIT).await;
    s.app.create_named("later@example.com").await;

    let status = cli_json(&config, &["sync", "status"]).await;
    let a = status
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tenant"] == "a")
        .unwrap()
        .clone();
    assert_eq!(
        (
            a["pending"].as_i64(),
            a["done"].as_i64(),
            a["dead"].as_i64()
        ),
        (Some(1), Some(1), Some(1))
    );
    assert!(a["oldest_pending_secs"].as_f64().is_some());
    let (ok_run, table, _) = cli(&config, &["sync", "status"]).await;
    assert!(
        ok_run && table.contains("oldest pending") && table.lines().any(|l| l.starts_with("a ")),
        "{table}"
    );

    let dead = cli_json(&config, &["sync", "list", "--dead"]).await;
    assert_eq!(dead.as_array().unwrap().len(), 1);
    assert_eq!(dead[0]["user_name"], json!("broken@example.com"));
    assert!(dead[0]["last_error"].as_str().unwrap().contains("400"));
    let pending = cli_json(&config, &["sync", "list", "--pending"]).await;
    assert_eq!(pending[0]["user_name"], json!("later@example.com"));

    let shown = cli_json(&config, &["users", "show", "FINE@example.com"]).await;
    assert_eq!(shown["resource"]["id"], json!(ok));
    assert_eq!(shown["sync"]["ameyo_user_id"], json!("fine@example.com"));
    assert_eq!(shown["sync"]["state"], json!("done"));
    assert!(
        shown["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["call"] == "create")
    );
    let (found, _, err) = cli(&config, &["users", "show", "nobody@example.com"]).await;
    assert!(
        !found && err.contains("no user nobody@example.com"),
        "{err}"
    );

    // retry: the operator fixed Ameyo; the dead user goes through.
    s.emulator.set_faults(Default::default());
    assert_eq!(
        cli_json(&config, &["sync", "retry", &broken]).await,
        json!({"re-armed": 1})
    );
    s.drain(LIMIT).await;
    assert_eq!(s.sync_row(&broken).await.0, "done");
    assert_eq!(
        cli_json(&config, &["sync", "retry", "--all-dead"]).await,
        json!({"re-armed": 0})
    );

    // resync: push a user again even though nothing changed.
    s.emulator.clear_requests();
    assert_eq!(
        cli_json(&config, &["sync", "resync", "fine@example.com"]).await,
        json!({"queued_for_resync": 1})
    );
    s.drain(LIMIT).await;
    assert_eq!(
        s.calls("PUT", "cc/contactCenterUsers/fine@example.com")
            .len(),
        1
    );
    assert_eq!(
        cli_json(&config, &["sync", "resync", "--tenant", "a"]).await,
        json!({"queued_for_resync": 3})
    );

    // bad input: a clear error, non-zero exit
    let (ok_run, _, err) = cli(&config, &["sync", "retry"]).await;
    assert!(!ok_run && !err.is_empty());
}

both_backends!(reconcile_finds_planted_drift_and_fixes_ours);
async fn reconcile_finds_planted_drift_and_fixes_ours(db: TestDb) {
    let s = sync_app(&db).await;
    for u in ["keep", "lost", "drift"] {
        s.app
            .create_user(
                json!({"userName": format!("{u}@example.com"), "displayName": format!("{u} user"),
                "emails": [{"value": format!("{u}@example.com"), "type": "work"}]}),
            )
            .await;
    }
    s.drain(LIMIT).await;
    // Plant drift: one user deleted by hand, one edited by hand, one stranger.
    assert!(s.emulator.remove_user("lost@example.com"));
    let mut edited = s.ameyo_user("drift@example.com").unwrap();
    edited["userName"] = json!("Edited In Ameyo");
    edited["mappingUserId"] = json!("someone.else@example.com");
    s.emulator.add_user(edited);
    s.emulator.add_user(
        json!({"userId": "stranger", "userType": "Agent", "userName": "Stranger",
        "systemUserType": "Agent", "contactCenterId": 1}),
    );

    let (config, _dir) = write_cli_config(&db, &s.emulator_url());
    let r = cli_json(&config, &["reconcile", "--tenant", "a"]).await;
    assert_eq!(r["checked"], json!(3));
    assert_eq!(r["missing_in_ameyo"].as_array().unwrap().len(), 1);
    assert_eq!(
        r["missing_in_ameyo"][0]["ameyo_user_id"],
        json!("lost@example.com")
    );
    assert_eq!(r["unknown_in_ameyo"], json!(["stranger"]));
    let drift = r["field_differences"].as_array().unwrap();
    assert_eq!(drift.len(), 1);
    let fields: Vec<&str> = drift[0]["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["userName", "mappingUserId"]);
    assert_eq!(r["queued"], json!(0), "a dry run changes nothing");
    let (_, table, _) = cli(&config, &["reconcile", "--tenant", "a"]).await;
    assert!(
        table.contains("missing in Ameyo (1)") && table.contains("--apply"),
        "{table}"
    );

    let r = cli_json(&config, &["reconcile", "--tenant", "a", "--apply"]).await;
    assert_eq!(r["queued"], json!(2));
    s.drain(LIMIT).await;
    assert!(s.ameyo_user("lost@example.com").is_some(), "created again");
    let fixed = s.ameyo_user("drift@example.com").unwrap();
    assert_eq!(fixed["userName"], json!("drift user"));
    assert_eq!(fixed["mappingUserId"], json!("drift@example.com"));
    assert!(
        s.ameyo_user("stranger").is_some(),
        "never deletes an Ameyo user we did not create"
    );
    let r = cli_json(&config, &["reconcile", "--tenant", "a"]).await;
    assert_eq!(r["missing_in_ameyo"], json!([]));
    assert_eq!(r["field_differences"], json!([]));
    // The CLI shared the service's session instead of logging in over it.
    assert_eq!(s.emulator.login_count(), 1);
}

/// Tenant `a`'s group rules, as the service and the CLI both read them.
const GROUP_RULES: &str = r#"
[[tenants.ameyo.mapping.rules]]
group = "CC Supervisors"
user_type = "Supervisor"
max_allowed_logins = 2
"#;

both_backends!(users_show_and_reconcile_follow_group_roles);
async fn users_show_and_reconcile_follow_group_roles(db: TestDb) {
    let s = sync_app_with(&db, Default::default(), |settings| {
        settings.tenants[0].ameyo.mapping.rules = vec![ameyo_scim::config::MappingRule {
            group: Some("CC Supervisors".into()),
            user_type: Some("Supervisor".into()),
            max_allowed_logins: Some(2),
            ..Default::default()
        }];
    })
    .await;
    let id = s.app.create_named("lead@example.com").await;
    let r = s
        .app
        .post(
            "/scim/v2/Groups",
            json!({"displayName": "CC Supervisors", "externalId": "sup-1", "members": [{"value": id}]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    s.drain(LIMIT).await;
    assert_eq!(
        s.ameyo_user("lead@example.com").unwrap()["userType"],
        json!("Supervisor")
    );
    let (config, _dir) = write_cli_config_with(&db, &s.emulator_url(), GROUP_RULES);

    // users show: the groups, and which rule set each Ameyo field.
    let shown = cli_json(&config, &["users", "show", "lead@example.com"]).await;
    assert_eq!(shown["groups"][0]["display_name"], json!("CC Supervisors"));
    assert_eq!(shown["groups"][0]["external_id"], json!("sup-1"));
    assert_eq!(shown["mapping"]["user_id"], json!("lead@example.com"));
    let field = |name: &str| {
        shown["mapping"]["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["field"] == json!(name))
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {shown}"))
    };
    assert_eq!(field("userType")["value"], json!("Supervisor"));
    assert!(
        field("userType")["set_by"]
            .as_str()
            .unwrap()
            .starts_with("rules[0]"),
        "{shown}"
    );
    assert_eq!(field("maxAllowedLogins")["value"], json!(2));
    assert_eq!(field("defaultReady")["set_by"], json!("default"));
    let (ok, table, _) = cli(&config, &["users", "show", "lead@example.com"]).await;
    assert!(
        ok && table.contains("CC Supervisors") && table.contains("rules[0]"),
        "{table}"
    );

    // Role drift: someone made the supervisor an Agent by hand in Ameyo.
    let mut edited = s.ameyo_user("lead@example.com").unwrap();
    edited["userType"] = json!("Agent");
    edited["systemUserType"] = json!("Agent");
    s.emulator.add_user(edited);
    let r = cli_json(&config, &["reconcile", "--tenant", "a"]).await;
    let drift = r["field_differences"].as_array().unwrap();
    assert_eq!(drift.len(), 1, "{r}");
    let fields: Vec<&str> = drift[0]["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    assert!(fields.contains(&"userType"), "{r}");
    assert_eq!(drift[0]["differences"][0]["ours"], json!("Supervisor"));
    let r = cli_json(&config, &["reconcile", "--tenant", "a", "--apply"]).await;
    assert_eq!(r["queued"], json!(1));
    s.drain(LIMIT).await;
    assert_eq!(
        s.ameyo_user("lead@example.com").unwrap()["userType"],
        json!("Supervisor")
    );
    let r = cli_json(&config, &["reconcile", "--tenant", "a"]).await;
    assert_eq!(r["field_differences"], json!([]));
}

#[test]
fn hash_token_and_check_config() {
    use std::io::Write;
    let bin = env!("CARGO_BIN_EXE_ameyo-scim");
    let mut child = Command::new(bin)
        .arg("hash-token")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"change-me-acme-token\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "bc17e2a52ce74057b03a3fa9731154cc05f34e17aa4393ac4161df762250f808"
    );
    let empty = Command::new(bin)
        .arg("hash-token")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!empty.status.success());

    // The shipped example is valid; its secrets never print.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.toml");
    let out = Command::new(bin)
        .args(["check-config", "--config", example])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("[server]") && printed.contains("REDACTED"));
    for secret in [
        "change-me-ameyo-password",
        "SUzJlrOM5/sMv79rWVl4lL6DCn7HPZKx6FXU55yNW70=",
    ] {
        assert!(!printed.contains(secret));
    }
    // A mistake: non-zero exit and the key named.
    let bad = std::env::temp_dir().join(format!("ameyo-scim-bad-{}.toml", uuid::Uuid::new_v4()));
    std::fs::write(
        &bad,
        std::fs::read_to_string(example)
            .unwrap()
            .replace("contact_center_id = 1", "contact_center_id = 0"),
    )
    .unwrap();
    let out = Command::new(bin)
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&bad);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tenants[0].ameyo.contact_center_id"));
}
