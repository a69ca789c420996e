//! What `/proc` says of a process: finding the launchers already running, and
//! telling a reused pid apart. Events themselves never depend on it.

/// The task name, without its newline; empty when the process is gone.
pub fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim_end().to_string())
        .unwrap_or_default()
}

/// The argument vector; empty when the process is gone.
pub fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            c.split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Field `n` of /proc/PID/stat counted from the one after the task name,
/// which may hold spaces and parentheses itself.
fn stat_field<T: std::str::FromStr>(pid: u32, n: usize) -> Option<T> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..]
        .split_whitespace()
        .nth(n)?
        .parse()
        .ok()
}

/// The parent's pid (field 4).
pub fn parent_of(pid: u32) -> Option<u32> {
    stat_field(pid, 1)
}

/// The start time (field 22), which tells a reused pid apart.
pub fn process_start(pid: u32) -> Option<u64> {
    stat_field(pid, 19)
}

/// Every process id now in `/proc`.
pub fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}
