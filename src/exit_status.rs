//! How a process ended, in words: said the same way for the worker (by the server) and for a
//! process-mode server (by the client).

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

/// `exit code 3`, `killed by SIGKILL`, `killed by SIGSEGV (segmentation fault)`,
/// `killed by signal 15`.
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(libc::SIGKILL)) => "killed by SIGKILL".into(),
        (None, Some(libc::SIGSEGV)) => "killed by SIGSEGV (segmentation fault)".into(),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "status unknown".into(),
    }
}

/// Whether the process was killed by SIGKILL (perhaps by the kernel's OOM killer).
pub fn is_sigkill(status: ExitStatus) -> bool {
    status.signal() == Some(libc::SIGKILL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_signals_are_told_apart() {
        assert_eq!(describe(ExitStatus::from_raw(3 << 8)), "exit code 3");
        assert_eq!(describe(ExitStatus::from_raw(libc::SIGKILL)), "killed by SIGKILL");
        assert!(is_sigkill(ExitStatus::from_raw(libc::SIGKILL)));
        assert_eq!(describe(ExitStatus::from_raw(libc::SIGTERM)), "killed by signal 15");
    }
}
