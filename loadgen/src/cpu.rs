//! CPU time of a process from `/proc/<pid>/stat` (Linux only; elsewhere nothing is reported).

/// Clock ticks per second of `utime`/`stime`. `USER_HZ` is 100 on every mainstream Linux
/// architecture; reading `sysconf(_SC_CLK_TCK)` would need `libc` and `unsafe` for no gain.
const TICKS_PER_SEC: f64 = 100.0;

/// User plus system CPU time of `pid` (this process if `None`), in seconds.
pub fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    parse_stat(&stat)
}

/// Parses `utime + stime` from the text of a `stat` file, in seconds.
fn parse_stat(stat: &str) -> Option<f64> {
    // The command name (field 2) may contain spaces and parentheses; fields after the last
    // ')' start at field 3 (state). utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_SEC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_utime_and_stime_after_an_awkward_name() {
        let stat = "1234 (my (odd) name) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0";
        assert_eq!(parse_stat(stat), Some(3.0));
        assert_eq!(parse_stat("garbage"), None);
        if cfg!(target_os = "linux") {
            assert!(cpu_seconds(None).is_some());
        }
    }
}
