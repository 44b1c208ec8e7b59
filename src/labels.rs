//! The labels Rayfine puts on everything it creates, and what they say about the owner.
//!
//! `rayfine.managed=true` marks images and containers as ours, so `rayfine ps`, `cleanup` and
//! the test suite's leak check find them by label and never touch anything else. A container also
//! names the process that owns it (pid and that process's start time, so a reused pid is not
//! mistaken for the owner): that is how `cleanup --orphans` tells what a dead owner left behind.
//! Secrets (the token, env var values) never go into labels: `docker inspect` shows labels to
//! every user of the engine.
//!
//! Not behind the `client` feature: the owner watchdog in `rayfine-server` finds containers by
//! these labels too.

/// Marks images and containers made by Rayfine.
pub const MANAGED: &str = "rayfine.managed";
/// `function` or `http`, on images and containers.
pub const ENV_TYPE: &str = "rayfine.env_type";
/// The Rayfine version that built the image or started the container.
pub const VERSION: &str = "rayfine.version";
/// The port an HTTP-based environment listens on inside its container.
pub const HTTP_PORT: &str = "rayfine.http_port";
/// `base` on the stage-1 image of a function-based environment.
pub const STAGE: &str = "rayfine.stage";
/// The environment's registry id.
pub const ENV_ID: &str = "rayfine.env_id";
/// The environment's name.
pub const NAME: &str = "rayfine.name";
/// Process id of the owning process.
pub const OWNER_PID: &str = "rayfine.owner_pid";
/// Start time of the owning process (clock ticks since boot), which makes the pid unambiguous.
pub const OWNER_START: &str = "rayfine.owner_start";
/// `true` on environments meant to outlive their owner (`run --keep`).
pub const KEEP: &str = "rayfine.keep";
/// `true` on images whose server reads the token and variables from the secrets file
/// (`protocol::SECRETS_PATH`). Images without it (older ones, affinetes') get them as
/// environment variables, as they always did.
pub const READS_SECRETS_FILE: &str = "rayfine.reads_secrets_file";

/// `true` on images whose server also takes the secrets as the first line of its stdin
/// (`--secrets-stdin`), which spares a started-from-here container the copy of the file.
pub const READS_SECRETS_STDIN: &str = "rayfine.reads_secrets_stdin";

/// This crate's version, for the `rayfine.version` label.
pub const RAYFINE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The start time of process `pid`, in clock ticks since boot (field 22 of /proc/PID/stat).
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the owner a container names is still running: same pid, same start time, and not a
/// zombie (a dead owner whose parent has not reaped it yet).
pub fn owner_alive(pid: Option<u32>, start: Option<u64>) -> bool {
    match (pid, start) {
        (Some(pid), Some(start)) if pid > 0 => process_start_time(pid) == Some(start) && is_running(pid),
        (Some(pid), None) if pid > 0 => is_running(pid),
        _ => false,
    }
}

/// Whether process `pid` exists and is not a zombie (dead, waiting to be reaped).
pub fn is_running(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    pid > 0 && stat.rfind(')').and_then(|end| stat[end + 1..].split_whitespace().next()).is_some_and(|state| state != "Z")
}

/// The labels that name this process as the owner of what it creates, not kept: the owner
/// watchdog and `cleanup --orphans` find by them what a dead owner left.
pub fn owned_by_this_process() -> Vec<(String, String)> {
    let me = std::process::id();
    vec![
        (MANAGED.to_string(), "true".to_string()),
        (OWNER_PID.to_string(), me.to_string()),
        (OWNER_START.to_string(), process_start_time(me).map(|s| s.to_string()).unwrap_or_default()),
        (KEEP.to_string(), "false".to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_wrong_start_time_is_not() {
        let me = std::process::id();
        let start = process_start_time(me);
        assert!(start.is_some());
        assert!(owner_alive(Some(me), start));
        assert!(!owner_alive(Some(me), start.map(|s| s + 1)));
        assert!(!owner_alive(None, None));
    }
}
