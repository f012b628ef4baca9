//! A small run of `ameyo-scim bench`, every scenario on both stores, so the harness the
//! performance figures come from cannot rot. Speed is asserted by the benchmark itself,
//! never here: this checks that every scenario ran, beside its baseline, and reported.

mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_run_measures_every_scenario_on_both_stores() {
    // A database on the test's server: the benchmark creates its own beside it.
    let db = TestDb::postgres().await;
    let out_dir = std::env::temp_dir().join(format!("bench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&out_dir).expect("a folder");
    let markdown = out_dir.join("report.md");
    let url = db.url().to_string();
    let md = markdown.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_ameyo-scim"))
            .args([
                "bench",
                "--users",
                "300",
                "--requests",
                "40",
                "--deliveries",
                "40",
                "--sync-users",
                "120",
                "--walk-pages",
                "2",
                "--json",
                "--store",
                "both",
            ])
            .arg("--database-url")
            .arg(&url)
            .arg("--out")
            .arg(&md)
            .env_remove("DATABASE_URL")
            .output()
            .expect("run the benchmark")
    })
    .await
    .expect("the benchmark's thread");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench failed: {stderr}");
    // --json: the JSON document alone, no progress.
    assert!(
        stderr.trim().is_empty(),
        "progress in --json mode: {stderr}"
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("JSON on stdout");

    assert!(report["command"].as_str().unwrap().contains("bench"));
    assert!(report["machine"]["cores"].as_u64().unwrap() >= 1);
    assert!(report["machine"]["postgres"].as_str().is_some());
    let stores = report["stores"].as_array().unwrap();
    let names: Vec<&str> = stores
        .iter()
        .map(|s| s["store"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["postgres", "sqlite"]);
    for store in stores {
        let name = store["store"].as_str().unwrap();
        assert_eq!(store["seeded_users"], 300);
        let outcomes = store["outcomes"].as_array().unwrap();
        let find = |prefix: &str| -> &Value {
            outcomes
                .iter()
                .find(|o| o["scenario"].as_str().unwrap().starts_with(prefix))
                .unwrap_or_else(|| panic!("{name}: no scenario {prefix:?} in {outcomes:#?}"))
        };
        for o in outcomes {
            let figure = o["figure"].as_f64().unwrap();
            assert!(figure.is_finite() && figure > 0.0, "{name}: {o}");
        }
        // Each figure that has a baseline got it in this run, and its ratio.
        for prefix in [
            "create: POST /Users",
            "userName eq lookup, first 100",
            "userName eq lookup, 8 in flight (p99)",
            "delivery, no added latency",
            "delivery, 20 ms added",
            "the emulator alone, 20 ms added",
            "initial sync end to end",
        ] {
            let o = find(prefix);
            let baseline = o["baseline"].as_f64().unwrap_or(0.0);
            assert!(baseline > 0.0, "{name}: {prefix} has no baseline: {o}");
            let ratio = o["ratio"].as_f64().unwrap();
            assert!((ratio - o["figure"].as_f64().unwrap() / baseline).abs() < 1e-9);
        }
        if name == "postgres" {
            assert!(
                find("create: POST /Users")["baseline_is"]
                    .as_str()
                    .unwrap()
                    .starts_with("pgbench"),
                "the write baseline on PostgreSQL is pgbench"
            );
        }
        // Judged against the targets.
        for prefix in [
            "unfiltered page of 100, first page",
            "unfiltered page of 100, jumps to any depth",
            "unfiltered page of 100, in-order walk from the start",
            "unfiltered page of 100, in-order walk from the middle",
            "recovery after SIGKILL",
            "peak resident memory of serve",
        ] {
            assert!(find(prefix)["met"].is_boolean(), "{name}: {prefix}");
        }
        assert!(
            find("PATCH /Groups adding 1,000 members")["figure"]
                .as_f64()
                .unwrap()
                > 0.0
        );
        let details = store["details"].as_array().unwrap();
        assert!(details.iter().any(|d| d["operation"] == "POST /Users"));
        let notes: Vec<&str> = store["notes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap())
            .collect();
        assert!(notes.iter().any(|n| n.contains("none twice")), "{notes:?}");
        // Where a create's CPU went, beside the baseline's, and the ceiling they give.
        assert!(
            notes
                .iter()
                .any(|n| n.starts_with("create: CPU per create: POST /Users ")
                    && n.contains("% busy; the baseline ")),
            "{notes:?}"
        );
    }

    // The same report as a Markdown table, with the machine and the command.
    let md = std::fs::read_to_string(&markdown).expect("the --out report");
    assert!(
        md.contains("| scenario | store | figure | baseline (same run) | ratio | target | met |")
    );
    assert!(md.contains("Machine: "));
    assert!(md.contains("Command: `"));
    assert!(md.contains("| initial sync end to end"));
    let _ = std::fs::remove_dir_all(&out_dir);
}
