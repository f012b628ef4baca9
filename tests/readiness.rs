//! /readyz follows the database: a throwaway Postgres cluster of this test's own (made
//! with the machine's initdb and pg_ctl on a free port) is stopped and started again.
//! The shared server is never touched.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use axum::http::Method;
use common::db::{pg_bin, running_as_root};
use common::*;

/// Run a Postgres tool, as the `postgres` user when we are root (Postgres refuses root).
fn pg(tool: &str, args: &[&str]) {
    let root = running_as_root();
    let status = if root {
        Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg_bin(tool))
            .args(args)
            .status()
    } else {
        Command::new(pg_bin(tool)).args(args).status()
    }
    .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"));
    assert!(status.success(), "{tool} {args:?} failed");
}

struct Cluster {
    dir: PathBuf,
    port: u16,
}

impl Cluster {
    fn create() -> Self {
        let dir = std::env::temp_dir().join(format!("ameyo-scim-pg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        if running_as_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(ok.success());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let data = dir.join("data");
        pg(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        let c = Cluster { dir, port };
        c.start();
        c
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn start(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("postgres.log");
        pg(
            "pg_ctl",
            &[
                "-D",
                self.data().to_str().unwrap(),
                "-o",
                &opts,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ],
        );
    }

    fn stop(&self) {
        pg(
            "pg_ctl",
            &[
                "-D",
                self.data().to_str().unwrap(),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        );
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if Path::new(&self.data().join("postmaster.pid")).exists() {
            let _ = std::panic::catch_unwind(|| self.stop());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn readyz(app: &TestApp) -> u16 {
    app.call(Method::GET, "/readyz", None, None)
        .await
        .status
        .as_u16()
}

async fn wait_for(app: &TestApp, want: u16) {
    let started = Instant::now();
    loop {
        let got = readyz(app).await;
        if got == want {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "/readyz stayed {got}, wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn readyz_goes_503_when_the_database_stops_and_200_when_it_returns() {
    let cluster = Cluster::create();
    let mut settings = settings();
    settings.database.url = cluster.url().into();
    settings.database.acquire_timeout_secs = 1;
    let store = ameyo_scim::server::migrate(&settings)
        .await
        .expect("migrate the throwaway cluster");
    let app = app_over(store, &settings, Duration::from_secs(30));

    assert_eq!(readyz(&app).await, 200);
    cluster.stop();
    wait_for(&app, 503).await;
    let r = app.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(r.body["status"], "not ready");
    assert!(r.body["reason"].as_str().is_some_and(|s| !s.is_empty()));
    // SCIM requests meanwhile get a SCIM 503, not a hang.
    app.get("/scim/v2/Users").await.assert_error(503, None);
    cluster.start();
    wait_for(&app, 200).await;
    assert_eq!(app.get("/scim/v2/Users").await.status, 200);
}
