//! The usual `process_*` metrics of a Prometheus client, read from `/proc/self` at scrape
//! time (Linux; elsewhere they are left out): resident and virtual memory, CPU seconds, open
//! and maximum file descriptors, start time.

/// What `/proc/self` says now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessInfo {
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub cpu_seconds: f64,
    pub open_fds: u64,
    pub max_fds: Option<u64>,
    pub start_time_seconds: Option<f64>,
}

/// Reads `/proc/self`; `None` where there is no such file system.
pub fn read() -> Option<ProcessInfo> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name (which may hold spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // man 5 proc: utime 14, stime 15, starttime 22, vsize 23, rss 24 (1-based, from pid).
    let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let ticks = clock_ticks();
    let page = page_size();
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("btime ")?.trim().parse::<u64>().ok()));
    let open_fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count() as u64).unwrap_or(0);
    let max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Max open files"))?.split_whitespace().nth(3)?.parse().ok());
    Some(ProcessInfo {
        resident_bytes: field(24)? * page,
        virtual_bytes: field(23)?,
        cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
        open_fds,
        max_fds,
        start_time_seconds: boot.zip(field(22)).map(|(b, s)| b as f64 + s as f64 / ticks),
    })
}

#[cfg(target_os = "linux")]
fn clock_ticks() -> f64 {
    // SAFETY: sysconf reads a constant of the system; no memory is touched.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

#[cfg(target_os = "linux")]
fn page_size() -> u64 {
    // SAFETY: as above.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as u64 } else { 4096 }
}

#[cfg(not(target_os = "linux"))]
fn clock_ticks() -> f64 {
    100.0
}

#[cfg(not(target_os = "linux"))]
fn page_size() -> u64 {
    4096
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn reads_this_process() {
        let p = super::read().expect("/proc/self");
        assert!(p.resident_bytes > 1 << 20, "{p:?}");
        assert!(p.virtual_bytes >= p.resident_bytes);
        assert!(p.open_fds >= 3, "stdin, stdout, stderr at least: {p:?}");
        assert!(p.max_fds.is_some_and(|m| m >= p.open_fds));
        let now = chrono::Utc::now().timestamp() as f64;
        assert!(p.start_time_seconds.is_some_and(|s| s <= now + 1.0 && s > now - 86_400.0), "{p:?}");
    }
}
