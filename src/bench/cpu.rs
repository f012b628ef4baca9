//! Where the machine's CPU time goes during a scenario, read from `/proc` (Linux): a
//! process's, every process of one name's (PostgreSQL's backends), and the whole
//! machine's busy time. The figures explain a rate: with every core busy, the rate is
//! the cores divided by the CPU time one operation costs all processes together.

/// CPU time a process has used (user and system), in seconds; 0 if it is gone.
pub(super) fn process_secs(pid: u32) -> f64 {
    stat_secs(pid, false)
}

/// `/proc/{pid}/stat`'s user and system time, with its ended children's if `children`.
fn stat_secs(pid: u32, children: bool) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    secs_of(&stat, children)
}

/// The seconds in a `/proc/{pid}/stat` line.
fn secs_of(stat: &str, children: bool) -> f64 {
    // After the command name in parentheses: state is field 3, utime 14, stime 15,
    // cutime 16, cstime 17.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let own = ticks(11) + ticks(12);
    let ended = if children { ticks(13) + ticks(14) } else { 0.0 };
    // Linux reports in USER_HZ, 100 on every platform it runs on.
    (own + ended) / 100.0
}

/// CPU time every process named `name` on this machine has used, in seconds, with
/// that of their children that have ended: PostgreSQL's postmaster is charged with the
/// time of each backend that exits (such as those of a `pgbench` run, gone by the time
/// it is read).
pub(super) fn named_secs(name: &str) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim() == name)
                .unwrap_or(false)
        })
        .map(|pid| stat_secs(pid, true))
        .sum()
}

/// CPU time the whole machine has spent busy (every core, every process and the
/// kernel), in seconds.
pub(super) fn machine_busy_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    busy_of(stat.lines().next().unwrap_or_default())
}

/// The busy time of `/proc/stat`'s `cpu` line: user, nice, system, irq, softirq and
/// steal (not idle or iowait; guest time is inside user already).
fn busy_of(line: &str) -> f64 {
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0.0);
    (at(0) + at(1) + at(2) + at(5) + at(6) + at(7)) / 100.0
}

/// The machine's cores.
pub(super) fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
}

/// One reading: this process (the benchmark, and in its in-process part the service
/// too), PostgreSQL's processes, and the machine.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Reading {
    own: f64,
    postgres: f64,
    machine: f64,
}

impl Reading {
    pub fn now() -> Self {
        Reading {
            own: process_secs(std::process::id()),
            postgres: named_secs("postgres"),
            machine: machine_busy_secs(),
        }
    }

    /// CPU milliseconds per operation since `before`, for `ops` operations.
    pub fn per_op_since(&self, before: &Reading, ops: usize) -> PerOp {
        let ms = |now: f64, then: f64| ((now - then) * 1000.0 / ops.max(1) as f64).max(0.0);
        let own = ms(self.own, before.own);
        let postgres = ms(self.postgres, before.postgres);
        let machine = ms(self.machine, before.machine);
        PerOp {
            own,
            postgres,
            rest: (machine - own - postgres).max(0.0),
        }
    }
}

/// CPU milliseconds one operation cost: this process, PostgreSQL, and everything else
/// that ran meanwhile (a client of its own, such as `pgbench`, the kernel's share not
/// charged to a process, other load).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct PerOp {
    pub own: f64,
    pub postgres: f64,
    pub rest: f64,
}

impl PerOp {
    pub fn total(&self) -> f64 {
        self.own + self.postgres + self.rest
    }

    /// The share of the machine's cores kept busy at `per_second` operations a second.
    pub fn busy(&self, per_second: f64) -> f64 {
        per_second * self.total() / 1000.0 / cores()
    }
}

/// With every core busy in both runs, the most a run costing `run` per operation can
/// reach of the rate of one costing `baseline`.
pub(super) fn ceiling(run: &PerOp, baseline: &PerOp) -> f64 {
    baseline.total() / run.total().max(1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_time_leaves_idle_and_iowait_out() {
        // user nice system idle iowait irq softirq steal guest guest_nice
        let line = "cpu  1000 50 300 9000 400 10 20 5 0 0";
        assert!((busy_of(line) - 13.85).abs() < 1e-9);
        assert_eq!(busy_of(""), 0.0);
    }

    #[test]
    fn a_process_time_with_or_without_its_ended_children() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt
        // cmajflt utime stime cutime cstime ...
        let stat = "42 (post gres) S 1 42 42 0 -1 4194560 10 0 0 0 150 50 700 300 20 0";
        assert!((secs_of(stat, false) - 2.0).abs() < 1e-9);
        assert!((secs_of(stat, true) - 12.0).abs() < 1e-9);
        assert_eq!(secs_of("", true), 0.0);
    }

    #[test]
    fn the_ceiling_is_the_ratio_of_costs() {
        let http = PerOp {
            own: 0.4,
            postgres: 0.5,
            rest: 0.1,
        };
        let pgbench = PerOp {
            own: 0.0,
            postgres: 0.45,
            rest: 0.05,
        };
        assert!((ceiling(&http, &pgbench) - 0.5).abs() < 1e-9);
        assert!((http.total() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn this_process_uses_cpu_and_the_machine_is_busy() {
        let before = Reading::now();
        let mut x = 0u64;
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_millis(200) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let after = Reading::now();
        let per = after.per_op_since(&before, 1);
        assert!(per.own >= 50.0, "{per:?}");
        assert!(per.own + per.rest >= 50.0, "{per:?}");
    }
}
