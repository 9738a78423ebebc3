//! CPU accounting from /proc, to show who used the machine during a measurement.

/// Linux reports process and system times in USER_HZ ticks, 100 per second on
/// every mainstream architecture.
const TICKS_PER_SECOND: f64 = 100.0;

/// User + system CPU time of process `pid` (this process when `None`), in seconds,
/// over all its threads.
pub fn process_seconds(pid: Option<u32>) -> Option<f64> {
    let path = pid.map_or_else(
        || "/proc/self/stat".to_string(),
        |p| format!("/proc/{p}/stat"),
    );
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name may contain spaces; fields after it start at `state` (field 3).
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15, i.e. indexes 11 and 12 from `state`.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SECOND)
}

/// User + system CPU seconds of `pid` and every live descendant, each with the
/// time of its reaped children (cutime + cstime), so processes that came and
/// went during a run (Postfix's smtpd, cleanup, …) still count. 0 when `pid` is
/// gone.
pub fn tree_seconds(pid: u32) -> f64 {
    // (pid, ppid, own + reaped children's ticks) of every process.
    let mut procs = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(p) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
            let Some(close) = stat.rfind(')') else { continue };
            let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
            // From `state` (index 0): ppid 1, utime 11, stime 12, cutime 13, cstime 14.
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            let ppid = f.get(1).and_then(|v| v.parse::<u32>().ok()).unwrap_or(0);
            procs.push((p, ppid, num(11) + num(12) + num(13) + num(14)));
        }
    }
    let mut members = vec![pid];
    let mut total = 0.0;
    let mut i = 0;
    while i < members.len() {
        let parent = members[i];
        for (p, ppid, ticks) in &procs {
            if *p == parent {
                total += ticks;
            }
            if *ppid == parent && !members.contains(p) {
                members.push(*p);
            }
        }
        i += 1;
    }
    total / TICKS_PER_SECOND
}

/// Machine-wide (busy, total) CPU seconds since boot, summed over all CPUs.
pub fn machine_seconds() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let get = |i: usize| v.get(i).copied().unwrap_or(0.0);
    let busy = get(0) + get(1) + get(2) + get(5) + get(6) + get(7);
    let total = busy + get(3) + get(4);
    Some((busy / TICKS_PER_SECOND, total / TICKS_PER_SECOND))
}

/// A snapshot of the three clocks.
#[derive(Clone, Copy)]
pub struct Snapshot {
    server: Option<f64>,
    loadgen: Option<f64>,
    machine: Option<(f64, f64)>,
}

impl Snapshot {
    pub fn take(server_pid: Option<u32>) -> Self {
        Self {
            server: server_pid.and_then(|p| process_seconds(Some(p))),
            loadgen: process_seconds(None),
            machine: machine_seconds(),
        }
    }
}

/// CPU seconds used between two snapshots.
#[derive(serde::Serialize, Default)]
pub struct Usage {
    pub server_seconds: Option<f64>,
    pub loadgen_seconds: Option<f64>,
    /// Busy time of all CPUs, everyone included.
    pub machine_busy_seconds: Option<f64>,
    /// Busy + idle time of all CPUs (CPUs × wall time).
    pub machine_total_seconds: Option<f64>,
}

impl Usage {
    pub fn between(a: Snapshot, b: Snapshot) -> Self {
        let diff = |x: Option<f64>, y: Option<f64>| Some(y? - x?);
        Self {
            server_seconds: diff(a.server, b.server),
            loadgen_seconds: diff(a.loadgen, b.loadgen),
            machine_busy_seconds: diff(a.machine.map(|m| m.0), b.machine.map(|m| m.0)),
            machine_total_seconds: diff(a.machine.map(|m| m.1), b.machine.map(|m| m.1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_and_machine_times() {
        let mine = process_seconds(None).expect("own stat");
        assert!(mine >= 0.0);
        let (busy, total) = machine_seconds().expect("/proc/stat");
        assert!(total >= busy && busy > 0.0);
        let tree = tree_seconds(std::process::id());
        assert!(tree >= 0.0 && tree + 0.02 >= mine, "{tree} vs {mine}");
        assert_eq!(tree_seconds(u32::MAX), 0.0);
    }
}
