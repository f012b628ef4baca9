//! The embedded store as a newcomer meets it: `serve --dev` exactly as the README says,
//! one process per SQLite file, and `migrate-store` to PostgreSQL.

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
    let mut lines = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("banner");
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
