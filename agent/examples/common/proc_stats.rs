//! What the benches read from /proc: a process's CPU time, its peak memory, the machine's load.
//! Shared by the bench examples through `#[path]` (an example's own `mod`), Linux only.
#![allow(dead_code)]

/// CPU time (user + system, every thread) of `pid` ("self" for this process) in seconds; `None`
/// when /proc does not say. Linux's clock tick is 1/100 s.
pub fn cpu_seconds_of(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the parenthesised command name, utime and stime are fields 12 and 13 (14th and 15th of
    // the whole line).
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
    Some((ticks(11)? + ticks(12)?) / 100.0)
}

/// This process's CPU time in seconds (0 when /proc does not say).
pub fn cpu_seconds() -> f64 {
    cpu_seconds_of("self").unwrap_or(0.0)
}

/// Peak resident memory (`VmHWM`) of `pid` in KiB (0 when /proc does not say).
pub fn vm_hwm_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The 1, 5 and 15 minute load averages: the conditions a bench's figures were taken in.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}
