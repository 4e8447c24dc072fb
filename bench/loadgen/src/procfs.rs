//! What the servers cost, read from /proc: CPU time (all threads) and memory.

use std::time::Duration;

fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: split after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// utime + stime of a process (every thread, dead ones included), in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    let Some(f) = stat_fields(pid) else { return 0 };
    // After the name: state(0) ppid(1) ... utime(11) stime(12).
    let u: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
    let s: u64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    u + s
}

fn parent(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// The direct children of a process (nginx's workers).
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            if let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) {
                if parent(p) == Some(pid) {
                    out.push(p);
                }
            }
        }
    }
    out
}

/// CPU ticks of a process and its direct children.
pub fn tree_cpu_ticks(pid: u32) -> u64 {
    cpu_ticks(pid) + children(pid).into_iter().map(cpu_ticks).sum::<u64>()
}

pub fn tick() -> Duration {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100)
        .max(1) as u64;
    Duration::from_nanos(1_000_000_000 / hz)
}

fn kib_field(path: &str, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(path).ok()?;
    s.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Resident set size in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    kib_field(&format!("/proc/{pid}/status"), "VmRSS:").unwrap_or(0)
}

/// Proportional set size in KiB (falls back to RSS where smaps_rollup is unreadable).
pub fn pss_kib(pid: u32) -> u64 {
    kib_field(&format!("/proc/{pid}/smaps_rollup"), "Pss:").unwrap_or_else(|| rss_kib(pid))
}

/// The machine's 1-minute load average (other tenants' work shows here).
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// Threads of a process.
pub fn threads(pid: u32) -> u64 {
    kib_field(&format!("/proc/{pid}/status"), "Threads:").unwrap_or(0)
}

/// Raise this process's open-file soft limit to the hard limit (children inherit it).
pub fn raise_nofile() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                hard
            } else {
                soft
            }
        }
        Ok((soft, _)) => soft,
        Err(_) => 1024,
    }
}

/// What the machine is, for the results table.
pub fn machine() -> Vec<(String, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mem = kib_field("/proc/meminfo", "MemTotal:").unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|s| s.trim_matches('"').to_string())
        .unwrap_or_default();
    vec![
        ("nproc".into(), nproc.to_string()),
        ("CPU".into(), model),
        (
            "memory".into(),
            format!("{:.1} GiB", mem as f64 / 1048576.0),
        ),
        ("kernel".into(), kernel),
        ("OS".into(), os),
    ]
}
