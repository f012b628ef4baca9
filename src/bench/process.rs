//! The scenarios measured with `serve` and the Ameyo emulator as processes of their
//! own, as operators run them: lookups from the first request after start, pages at
//! several depths, an initial sync end to end, the recovery after a SIGKILL, and the
//! service's peak resident memory.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{
    BenchArgs, Kind, Outcome, Scratch, Stats, StoreReport, TOKEN, Target, baseline, enc, progress,
    run,
};

/// The URL of the i-th request, from the SCIM base.
type UrlOf = Box<dyn Fn(&str, usize) -> String + Send + Sync>;

/// A free port on loopback (bound and released: another process may take it first,
/// which the start then reports).
fn free_port() -> anyhow::Result<std::net::SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

fn this_binary() -> anyhow::Result<PathBuf> {
    Ok(std::env::current_exe()?)
}

/// The last lines of a log, for an error.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Where the CPU went between two readings.
#[derive(Clone, Copy, Default)]
struct Cpu {
    serve: f64,
    emulator: f64,
    postgres: f64,
    client: f64,
}

impl Cpu {
    fn read(serve: u32, emulator: u32) -> Self {
        Cpu {
            serve: super::cpu::process_secs(serve),
            emulator: super::cpu::process_secs(emulator),
            postgres: super::cpu::named_secs("postgres"),
            client: super::cpu::process_secs(std::process::id()),
        }
    }

    /// Per user, in CPU milliseconds, from `before` to `self`, and the rate the
    /// machine's cores allow at that cost.
    fn per_user(&self, before: &Cpu, users: usize) -> String {
        let ms = |now: f64, then: f64| (now - then) * 1000.0 / users as f64;
        let (s, e, p, c) = (
            ms(self.serve, before.serve),
            ms(self.emulator, before.emulator),
            ms(self.postgres, before.postgres),
            ms(self.client, before.client),
        );
        let total = s + e + p + c;
        let cores = super::cpu::cores();
        format!(
            "CPU per user: serve {s:.2} ms, PostgreSQL {p:.2} ms, emulator {e:.2} ms, the benchmark's client {c:.2} ms; {total:.2} ms in all, so {cores:.0} cores allow at most {:.0} users/s",
            cores * 1000.0 / total.max(1e-9)
        )
    }
}

/// `ameyo-scim emulator` as a child process.
pub(super) struct Emulator {
    child: tokio::process::Child,
    addr: std::net::SocketAddr,
    http: reqwest::Client,
}

impl Emulator {
    pub async fn start() -> anyhow::Result<Self> {
        let addr = free_port()?;
        let child = tokio::process::Command::new(this_binary()?)
            .arg("emulator")
            .arg("--listen")
            .arg(addr.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let emulator = Emulator {
            child,
            addr,
            http: reqwest::Client::new(),
        };
        let t = Instant::now();
        while emulator.counts().await.is_err() {
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(30),
                "the emulator did not start on {addr}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(emulator)
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// (users held, API calls received).
    pub async fn counts(&self) -> anyhow::Result<(u64, u64)> {
        let v: serde_json::Value = self
            .http
            .get(format!("{}/emulator/counts", self.base_url()))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok((
            v["users"].as_u64().unwrap_or(0),
            v["requests"].as_u64().unwrap_or(0),
        ))
    }

    pub async fn set_latency(&self, latency_ms: u64) -> anyhow::Result<()> {
        self.http
            .put(format!("{}/emulator/faults", self.base_url()))
            .json(&json!({"latency_ms": latency_ms}))
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    /// Wait until it holds `users`; `Err` after `limit`.
    pub async fn wait_for(&self, users: u64, limit: Duration) -> anyhow::Result<()> {
        let t = Instant::now();
        loop {
            if self.counts().await?.0 >= users {
                return Ok(());
            }
            anyhow::ensure!(
                t.elapsed() < limit,
                "the emulator holds {} users after {:?}, {users} expected",
                self.counts().await?.0,
                limit
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// `ameyo-scim serve` as a child process.
struct Service {
    child: tokio::process::Child,
    pid: u32,
}

impl Service {
    /// Start it and wait until `/readyz` answers 200. Returns it and how long that took.
    async fn start(
        config: &Path,
        log: &Path,
        listen: std::net::SocketAddr,
    ) -> anyhow::Result<(Self, Duration)> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let t = Instant::now();
        let mut child = tokio::process::Command::new(this_binary()?)
            .arg("serve")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow::anyhow!("serve exited at once"))?;
        let http = reqwest::Client::new();
        loop {
            if let Ok(r) = http.get(format!("http://{listen}/readyz")).send().await
                && r.status().is_success()
            {
                break;
            }
            if let Some(status) = child.try_wait()? {
                anyhow::bail!("serve exited ({status}):\n{}", tail(log));
            }
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(300),
                "serve was not ready in 5 minutes:\n{}",
                tail(log)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok((Service { child, pid }, t.elapsed()))
    }

    /// The peak resident memory so far (VmHWM), in MiB.
    fn peak_rss_mib(&self) -> anyhow::Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .ok_or_else(|| anyhow::anyhow!("no VmHWM for {}", self.pid))?;
        Ok(kb / 1024.0)
    }

    async fn kill9(mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    /// SIGTERM, and wait for it to finish its work and exit.
    async fn stop(mut self) -> anyhow::Result<()> {
        let sent = tokio::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status()
            .await;
        if sent.map(|s| s.success()).unwrap_or(false)
            && tokio::time::timeout(Duration::from_secs(30), self.child.wait())
                .await
                .is_ok()
        {
            return Ok(());
        }
        self.child.kill().await?;
        Ok(())
    }
}

/// POST `n` new users named `{prefix}{i}@example.com`, `concurrency` at once.
async fn post_users(
    http: &reqwest::Client,
    scim: &str,
    name: &str,
    prefix: &'static str,
    n: usize,
    concurrency: usize,
) -> Stats {
    let (http, scim) = (http.clone(), scim.to_string());
    run(name, n, concurrency, move |i| {
        let user_name = format!("{prefix}{i}@example.com");
        let request = http.post(format!("{scim}/Users")).bearer_auth(TOKEN).json(
            &json!({"userName": user_name, "emails": [{"value": user_name, "type": "work"}]}),
        );
        async move {
            let r = request.send().await.expect("request");
            assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
        }
    })
    .await
}

pub(super) async fn measure(
    kind: Kind,
    scratch: &Scratch,
    args: &BenchArgs,
    alone: &baseline::Alone,
    lookup_baseline: Option<&baseline::Lookups>,
    report: &mut StoreReport,
) -> anyhow::Result<()> {
    let emulator = Emulator::start().await?;
    let listen = free_port()?;
    let config = scratch.dir().join("serve.toml");
    std::fs::write(
        &config,
        super::config_toml(&scratch.url(), &emulator.base_url(), Some(listen)),
    )?;
    let log = scratch.dir().join("serve.log");
    progress("starting serve...");
    let (service, ready_in) = Service::start(&config, &log, listen).await?;
    progress(format!("serve ready in {:.1}s", ready_in.as_secs_f64()));
    let ready_rss = service.peak_rss_mib()?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let scim = format!("http://{listen}/scim/v2");
    let n = args.requests as usize;
    let clients = args.lookup_concurrency as usize;
    let users = args.users as usize;
    let mut rows = Vec::new();

    // From the very first request after ready.
    let get = |name: String, n: usize, clients: usize, url_of: UrlOf| {
        let (http, scim) = (http.clone(), scim.clone());
        async move {
            run(&name, n, clients, move |i| {
                let request = http.get(url_of(&scim, i)).bearer_auth(TOKEN);
                async move {
                    let r = request.send().await.expect("request");
                    assert!(r.status().is_success(), "{}", r.status());
                    let _ = r.bytes().await;
                }
            })
            .await
        }
    };
    let lookups = get(
        "serve: GET /Users?filter=userName eq, from the first request after ready".into(),
        n,
        clients,
        Box::new(move |scim, i| {
            let k = (i * 7919) % users + 1;
            format!(
                "{scim}/Users?filter={}",
                enc(format!("userName eq \"USER{k}@example.com\""))
            )
        }),
    )
    .await;
    let first = lookups.first(100);
    let (b_p50, b_p99, b_rate, b_what) =
        lookup_baseline.map_or((None, None, None, String::new()), |b| {
            (
                Some(b.p50_ms),
                Some(b.p99_ms),
                Some(b.per_second),
                b.what.clone(),
            )
        });
    report.outcomes.push(
        Outcome::new(
            &format!(
                "userName eq lookup, first 100 requests after start, {clients} in flight (p99)"
            ),
            kind,
            first.quantile_ms(0.99),
            "ms",
            Target::Below(10.0),
        )
        .against(b_p99, b_what.clone()),
    );
    report.outcomes.push(
        Outcome::new(
            &format!("userName eq lookup, {clients} in flight (p99)"),
            kind,
            lookups.quantile_ms(0.99),
            "ms",
            Target::Below(10.0),
        )
        .against(b_p99, b_what.clone()),
    );
    report.outcomes.push(
        Outcome::new(
            &format!("userName eq lookup, {clients} in flight (p50)"),
            kind,
            lookups.quantile_ms(0.5),
            "ms",
            Target::None,
        )
        .against(b_p50, b_what.clone()),
    );
    report.outcomes.push(
        Outcome::new(
            &format!("userName eq lookups, {clients} in flight (per second)"),
            kind,
            lookups.per_second(),
            "/s",
            Target::None,
        )
        .against(b_rate, b_what),
    );
    rows.push(lookups);

    let mut rss_steps = vec![("ready", ready_rss), ("lookups", service.peak_rss_mib()?)];
    // Unfiltered pages of 100 (an IdP's import) at several depths.
    let pages = (n / 10).max(20);
    let page_url = |start: Box<dyn Fn(usize) -> usize + Send + Sync>| -> UrlOf {
        Box::new(move |scim, i| format!("{scim}/Users?startIndex={}&count=100", start(i)))
    };
    let depths: Vec<(String, Stats)> = vec![
        (
            "first page".into(),
            get(
                "serve: GET /Users?startIndex=1&count=100".into(),
                pages,
                clients,
                page_url(Box::new(|_| 1)),
            )
            .await,
        ),
        (
            "jumps to any depth".into(),
            get(
                "serve: GET /Users?startIndex=<random>&count=100".into(),
                pages,
                clients,
                page_url(Box::new(move |i| (i * 104_729) % users.max(1) + 1)),
            )
            .await,
        ),
        (
            "in-order walk from the start".into(),
            get(
                "serve: GET /Users walk in order from startIndex=1 (1 client)".into(),
                users.div_ceil(100).min(args.walk_pages as usize),
                1,
                page_url(Box::new(|i| i * 100 + 1)),
            )
            .await,
        ),
        (
            "in-order walk from the middle".into(),
            get(
                "serve: GET /Users walk in order from the middle (1 client)".into(),
                (users / 2).div_ceil(100).min(args.walk_pages as usize),
                1,
                page_url(Box::new(move |i| users / 2 + i * 100 + 1)),
            )
            .await,
        ),
    ];
    for (what, stats) in depths {
        let in_flight = if what.starts_with("in-order") {
            1
        } else {
            clients
        };
        report.outcomes.push(Outcome::new(
            &format!("unfiltered page of 100, {what}, {in_flight} in flight (p50)"),
            kind,
            stats.quantile_ms(0.5),
            "ms",
            Target::Below(20.0),
        ));
        rows.push(stats);
    }

    rss_steps.push(("pages", service.peak_rss_mib()?));
    // The initial sync: every user POSTed, until the emulator holds them all.
    let sync = args.sync_users as usize;
    let (held, _) = emulator.counts().await?;
    let cpu_before = Cpu::read(service.pid, emulator.pid());
    let t = Instant::now();
    let posts = post_users(
        &http,
        &scim,
        "serve: POST /Users (initial sync)",
        "sync",
        sync,
        args.concurrency as usize,
    )
    .await;
    emulator
        .wait_for(held + sync as u64, Duration::from_secs(1800))
        .await?;
    let secs = t.elapsed().as_secs_f64();
    let cpu = Cpu::read(service.pid, emulator.pid()).per_user(&cpu_before, sync);
    let rate = sync as f64 / secs;
    progress(format!("initial sync: {sync} users in Ameyo in {secs:.1}s"));
    report.outcomes.push(
        Outcome::new(
            &format!(
                "initial sync end to end: {sync} users POSTed until the emulator holds them (users/s)"
            ),
            kind,
            rate,
            "/s",
            Target::AtLeast(2000.0),
        )
        .against(alone.per_second, alone.what.clone()),
    );
    report.notes.push(format!(
        "initial sync: {sync} users POSTed in {:.1}s ({:.0}/s), all in Ameyo after {secs:.1}s ({rate:.0} users/s; 100,000 users would take {:.0}s); serve was ready {:.1}s after it started. {cpu}",
        posts.seconds,
        posts.per_second(),
        100_000.0 / rate,
        ready_in.as_secs_f64(),
    ));
    rows.push(posts);

    rss_steps.push(("initial sync", service.peak_rss_mib()?));
    // Recovery: kill -9 while deliveries are in flight, start again, until every user
    // is in Ameyo, once.
    let batch = (sync / 4).clamp(100, 5000);
    let (held, _) = emulator.counts().await?;
    emulator.set_latency(50).await?;
    post_users(
        &http,
        &scim,
        "serve: POST /Users (before the kill)",
        "crash",
        batch,
        args.concurrency as usize,
    )
    .await;
    // Some delivered, the rest pending or in flight.
    emulator
        .wait_for(held + (batch / 4) as u64, Duration::from_secs(600))
        .await?;
    let peak_rss = service.peak_rss_mib()?;
    service.kill9().await?;
    let (at_kill, _) = emulator.counts().await?;
    emulator.set_latency(0).await?;
    let t = Instant::now();
    let (service, restart_ready) = Service::start(&config, &log, listen).await?;
    emulator
        .wait_for(held + batch as u64, Duration::from_secs(600))
        .await?;
    let recovery = t.elapsed().as_secs_f64();
    // Nothing created twice: the emulator refuses a second create of one userId, and
    // holds exactly the users sent.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (finally, _) = emulator.counts().await?;
    anyhow::ensure!(
        finally == held + batch as u64,
        "after the restart the emulator holds {finally} users, {} expected",
        held + batch as u64
    );
    report.outcomes.push(Outcome::new(
        "recovery after SIGKILL: restart until every user is in Ameyo (s)",
        kind,
        recovery,
        "s",
        Target::Below(10.0),
    ));
    report.notes.push(format!(
        "recovery: killed with {} of {batch} users in Ameyo, restarted (ready in {:.1}s), all {batch} in Ameyo {recovery:.1}s after the restart, none twice",
        at_kill - held,
        restart_ready.as_secs_f64(),
    ));
    let restarted_rss = service.peak_rss_mib()?;
    let steps: Vec<String> = rss_steps
        .iter()
        .map(|(step, mib)| format!("{mib:.0} MiB after {step}"))
        .collect();
    report.notes.push(format!(
        "peak resident memory of serve: {}; {restarted_rss:.0} MiB for the restarted process",
        steps.join(", ")
    ));
    service.stop().await?;
    emulator.stop().await;
    report.outcomes.push(Outcome::new(
        "peak resident memory of serve (lookups, pages, initial sync)",
        kind,
        peak_rss.max(restarted_rss),
        "MiB",
        Target::Below(64.0),
    ));
    report
        .details
        .extend(rows.iter().map(|r| r.detail(kind.name())));
    Ok(())
}
