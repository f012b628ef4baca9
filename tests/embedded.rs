//! The embedded store as a newcomer meets it: `serve --dev` exactly as the README says,
//! one process per SQLite file, and `migrate-store` to PostgreSQL.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ameyo-scim-embedded-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sigterm(child: &Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
}

/// Start `serve --dev` in `dir` and read its banner up to the second curl line.
fn serve_dev(dir: &Path) -> (Proc, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ameyo-scim"))
        .args(["serve", "--dev"])
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("serve --dev");
    let stdout = child.stdout.take().unwrap();
    let proc = Proc(child);
    let (tx, rx) = std::sync::mpsc::channel();
    // Keep reading to the end, as a terminal would.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) {
        let done = line.starts_with("curl -s http");
        lines.push(line);
        if done {
            break;
        }
    }
    (proc, lines)
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").args(["-c", cmd]).output().expect("sh");
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn banner_value(lines: &[String], label: &str) -> String {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(label))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {label} in {lines:?}"))
}

#[test]
fn the_quick_start_works_as_printed_and_keeps_its_data() {
    let dir = tempdir();
    let (first, lines) = serve_dev(&dir);
    let curls: Vec<&String> = lines.iter().filter(|l| l.starts_with("curl ")).collect();
    assert_eq!(curls.len(), 2, "{lines:?}");
    let token = banner_value(&lines, "Bearer token:");
    let base = banner_value(&lines, "SCIM base URL:");

    // The printed create line, as a person pastes it.
    let created: serde_json::Value = serde_json::from_str(&sh(curls[0])).expect("JSON");
    assert_eq!(created["userName"], "jdoe@example.com", "{created}");
    let id = created["id"].as_str().expect("an id").to_string();

    // The printed check line shows the user arriving in the emulator.
    let started = Instant::now();
    loop {
        let state = sh(curls[1]);
        if state.contains("\"userId\":\"jdoe@example.com\"")
            || state.contains("\"userId\": \"jdoe@example.com\"")
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the user never reached the emulator: {state}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    sigterm(&first.0);
    drop(first);

    // A second start reuses the folder: same token, same data.
    let (_second, lines) = serve_dev(&dir);
    assert_eq!(banner_value(&lines, "Bearer token:"), token);
    let base2 = banner_value(&lines, "SCIM base URL:");
    let got = sh(&format!(
        "curl -s -H 'Authorization: Bearer {token}' {base2}/Users/{id}"
    ));
    assert!(got.contains("jdoe@example.com"), "{got}");
    let _ = base;
    let secrets = std::fs::read_to_string(dir.join("ameyo-scim-dev/secrets.json")).unwrap();
    assert!(secrets.contains(&token));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("ameyo-scim-dev/secrets.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o077,
            0,
            "the secrets are readable by their owner only"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn config(dir: &Path, port: u16) -> PathBuf {
    let path = dir.join(format!("config-{port}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"
[server]
listen = "127.0.0.1:{port}"
[database]
url = "sqlite://{db}"
[sync]
password_key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
[[tenants]]
id = "a"
token_sha256 = ["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]
[tenants.ameyo]
base_url = "http://127.0.0.1:9"
contact_center_id = 1
login_user = "admin"
login_password = "x"
"#,
            db = dir.join("store.db").display()
        ),
    )
    .unwrap();
    path
}

#[test]
fn a_second_process_on_one_file_is_refused_naming_the_file_and_the_holder() {
    let dir = tempdir();
    let port = free_port();
    let first = Proc(
        Command::new(env!("CARGO_BIN_EXE_ameyo-scim"))
            .args(["serve", "--config"])
            .arg(config(&dir, port))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "serve did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let second = Command::new(env!("CARGO_BIN_EXE_ameyo-scim"))
        .args(["serve", "--config"])
        .arg(config(&dir, free_port()))
        .output()
        .unwrap();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains(&dir.join("store.db").display().to_string()),
        "{err}"
    );
    assert!(err.contains(&format!("pid {}", first.0.id())), "{err}");
    drop(first);
    let _ = std::fs::remove_dir_all(&dir);
}

mod migrate {
    //! `migrate-store`: an embedded install with changes still to deliver moves to
    //! PostgreSQL, and the new workers deliver exactly what was pending.

    use std::sync::Arc;
    use std::time::Duration;

    use ameyo_emulator::{Emulator, EmulatorOptions, Faults, Outage};
    use ameyo_scim::config::Settings;
    use ameyo_scim::scim::group::{GroupInput, StoredGroup};
    use ameyo_scim::scim::resource::parse_user;
    use ameyo_scim::store::backend::{Access, Backend};
    use ameyo_scim::store::{IfMatch, ListQuery, StoreError};
    use ameyo_scim::sync::Worker;
    use serde_json::{Value, json};

    use crate::common::TestDb;

    const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

    fn settings(db: &str, ameyo: &str) -> Settings {
        let mut s = Settings::from_toml(&format!(
            r#"
[database]
url = "{db}"
[sync]
password_key = "{KEY}"
retry_base_ms = 20
retry_cap_secs = 1
[[tenants]]
id = "a"
token_sha256 = ["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]
[tenants.ameyo]
base_url = "{ameyo}"
contact_center_id = 1
login_user = "admin"
login_password = "x"
"#
        ))
        .unwrap();
        s.sync.concurrency = 4;
        s
    }

    fn worker(settings: &Settings, backend: &Backend) -> Arc<Worker> {
        let owner = ameyo_scim::sync::this_owner();
        let tenants = ameyo_scim::tenants::build(settings, &backend.sessions(&owner)).unwrap();
        Arc::new(Worker::from_tenants(
            &settings.sync,
            &tenants,
            backend.outbox.clone(),
            backend.cipher.clone(),
            owner,
        ))
    }

    async fn drain(w: &Arc<Worker>, backend: &Backend) {
        let started = std::time::Instant::now();
        loop {
            w.run_until_idle().await.unwrap();
            let open: i64 = backend
                .outbox
                .counts()
                .await
                .unwrap()
                .iter()
                .filter(|c| c.state == "pending" || c.state == "leased")
                .map(|c| c.users)
                .sum();
            if open == 0 {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{open} undelivered"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn create(backend: &Backend, body: Value) -> uuid::Uuid {
        backend
            .users
            .create("a", parse_user(body).unwrap())
            .await
            .unwrap()
            .id
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_embedded_install_moves_to_postgres_with_its_pending_changes() {
        let db = TestDb::postgres().await;
        let (emulator, addr) = Emulator::spawn(EmulatorOptions::default()).await.unwrap();
        let dir = super::tempdir();
        let file = format!("sqlite://{}", dir.join("store.db").display());
        let lite_settings = settings(&file, &format!("http://{addr}"));
        let lite = Backend::open(&lite_settings, Access::Migrate)
            .await
            .unwrap();
        let lite_worker = worker(&lite_settings, &lite);

        // Delivered: one that will change, one that will be deleted.
        let changed = create(&lite, json!({"userName": "changed@example.com"})).await;
        let gone = create(&lite, json!({"userName": "gone@example.com"})).await;
        drain(&lite_worker, &lite).await;
        assert_eq!(emulator.users().len(), 2);

        // Ameyo is down while the IdP goes on: a change, a new user with a password, a
        // deletion. All three wait in the embedded outbox.
        emulator.set_faults(Faults {
            outage: Some(Outage::Unavailable),
            ..Faults::default()
        });
        lite.users
            .update("a", changed, None::<&IfMatch>, &|u| {
                let mut r = u.resource.clone();
                r.insert("displayName".into(), json!("Changed Name"));
                Ok(Some(parse_user(Value::Object(r)).unwrap()))
            })
            .await
            .unwrap();
        create(
            &lite,
            json!({"userName": "new@example.com", "password": "Moved-Pa55word!"}),
        )
        .await;
        lite.users.delete("a", gone, None).await.unwrap();
        lite_worker.run_until_idle().await.unwrap();
        drop(lite_worker);
        drop(lite);

        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ameyo-scim"))
            .args(["migrate-store", "--json", "--from", &file, "--to"])
            .arg(db.url())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let copied: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(copied["users"], 3, "{copied}");
        assert_eq!(copied["outbox_rows"], 3, "{copied}");
        assert_eq!(copied["pending"], 3, "{copied}");
        assert!(copied["attempts"].as_u64().unwrap() > 0, "{copied}");
        assert!(out.stderr.is_empty(), "--json prints no progress");

        // PostgreSQL's workers deliver exactly what was pending.
        emulator.set_faults(Faults::default());
        emulator.clear_requests();
        let pg_settings = settings(db.url(), &format!("http://{addr}"));
        let pg = Backend::postgres(db.pg_pool(), lite_settings_cipher(&pg_settings));
        let pg_worker = worker(&pg_settings, &pg);
        drain(&pg_worker, &pg).await;
        let users = emulator.users();
        let names: Vec<&str> = users.iter().filter_map(|u| u["userId"].as_str()).collect();
        assert_eq!(users.len(), 2, "{names:?}");
        let changed_user = users
            .iter()
            .find(|u| u["userId"] == "changed@example.com")
            .unwrap();
        assert_eq!(changed_user["userName"], "Changed Name");
        assert_eq!(
            emulator.user_data("new@example.com").as_deref(),
            Some("Moved-Pa55word!"),
            "the sealed password moved and opens"
        );
        let creates = emulator
            .requests()
            .iter()
            .filter(|r| r.method == "POST" && r.path.ends_with("cc/contactCenterUsers"))
            .count();
        assert_eq!(
            creates, 1,
            "only the new user is created; the others keep their links"
        );

        // A second run into the same database is refused.
        let again = std::process::Command::new(env!("CARGO_BIN_EXE_ameyo-scim"))
            .args(["migrate-store", "--from", &file, "--to"])
            .arg(db.url())
            .output()
            .unwrap();
        assert!(!again.status.success());
        assert!(String::from_utf8_lossy(&again.stderr).contains("already holds"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A group as both stores must hold it, members included.
    fn group_fields(g: &StoredGroup) -> Value {
        json!({
            "id": g.id,
            "displayName": g.display_name,
            "externalId": g.external_id,
            "version": g.version,
            "created": g.created.to_rfc3339(),
            "lastModified": g.last_modified.to_rfc3339(),
            "members": g.members.iter().flatten().map(|m| json!([m.id, m.display])).collect::<Vec<_>>(),
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn groups_and_memberships_move_with_the_users() {
        let db = TestDb::postgres().await;
        let dir = super::tempdir();
        let file = format!("sqlite://{}", dir.join("store.db").display());
        let lite_settings = settings(&file, "http://127.0.0.1:9");
        let lite = Backend::open(&lite_settings, Access::Migrate)
            .await
            .unwrap();
        let unwatched = |_: &str, _: Option<&str>| false;
        let ann = create(
            &lite,
            json!({"userName": "ann@example.com", "displayName": "Ann Ångström"}),
        )
        .await;
        let bob = create(&lite, json!({"userName": "bob@example.com"})).await;
        let gone = create(&lite, json!({"userName": "gone@example.com"})).await;
        let agents = lite
            .groups
            .create_group(
                "a",
                GroupInput {
                    display_name: "ÉQUIPE Agents".into(),
                    external_id: Some("0f1e2d3c".into()),
                    members: vec![ann, bob, gone],
                },
                &unwatched,
                false,
            )
            .await
            .unwrap();
        let supervisors = lite
            .groups
            .create_group(
                "a",
                GroupInput {
                    display_name: "Supervisors".into(),
                    external_id: None,
                    members: vec![ann],
                },
                &unwatched,
                false,
            )
            .await
            .unwrap();
        lite.groups
            .create_group(
                "a",
                GroupInput {
                    display_name: "Empty".into(),
                    external_id: None,
                    members: vec![],
                },
                &unwatched,
                false,
            )
            .await
            .unwrap();
        // A deleted user leaves its groups; its tombstone moves without them.
        lite.users.delete("a", gone, None).await.unwrap();
        let all = ListQuery {
            filter: None,
            sort_by: None,
            descending: false,
            start_index: 1,
            count: 100,
        };
        let before: Vec<_> = lite
            .groups
            .list_groups("a", &all, true)
            .await
            .unwrap()
            .groups
            .iter()
            .map(group_fields)
            .collect();
        assert_eq!(before.len(), 3);
        assert_eq!(
            before[0]["members"].as_array().unwrap().len(),
            2,
            "{before:?}"
        );
        let ann_groups = lite.users.get("a", ann).await.unwrap().unwrap().groups;
        assert_eq!(ann_groups.len(), 2);
        drop(lite);

        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ameyo-scim"))
            .args(["migrate-store", "--json", "--from", &file, "--to"])
            .arg(db.url())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let copied: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(copied["users"], 3, "{copied}");
        assert_eq!(copied["groups"], 3, "{copied}");
        assert_eq!(copied["members"], 3, "{copied}");

        let pg_settings = settings(db.url(), "http://127.0.0.1:9");
        let pg = Backend::postgres(db.pg_pool(), lite_settings_cipher(&pg_settings));
        let after: Vec<_> = pg
            .groups
            .list_groups("a", &all, true)
            .await
            .unwrap()
            .groups
            .iter()
            .map(group_fields)
            .collect();
        assert_eq!(after, before);
        let moved = pg.users.get("a", ann).await.unwrap().unwrap();
        assert_eq!(moved.groups, ann_groups);
        assert_eq!(
            moved
                .groups
                .iter()
                .map(|g| (g.id, g.display.as_str(), g.external_id.as_deref()))
                .collect::<Vec<_>>(),
            // By display name, in code-point order.
            vec![
                (supervisors.id, "Supervisors", None),
                (agents.id, "ÉQUIPE Agents", Some("0f1e2d3c")),
            ]
        );
        assert!(
            pg.users
                .get("a", bob)
                .await
                .unwrap()
                .unwrap()
                .groups
                .iter()
                .map(|g| g.id)
                .eq([agents.id])
        );
        // The moved rows obey PostgreSQL's rules: the name is taken whatever its case.
        let taken = pg
            .groups
            .create_group(
                "a",
                GroupInput {
                    display_name: "équipe AGENTS".into(),
                    external_id: None,
                    members: vec![],
                },
                &unwatched,
                false,
            )
            .await;
        assert!(
            matches!(taken, Err(StoreError::DisplayNameTaken)),
            "{taken:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn lite_settings_cipher(s: &Settings) -> ameyo_scim::store::password::PasswordCipher {
        ameyo_scim::store::password::PasswordCipher::from_settings(s).unwrap()
    }
}
