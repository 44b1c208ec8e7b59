//! `rayfine-server --supervise -- COMMAND...`: the first process of an HTTP-based environment's
//! container.
//!
//! An HTTP-based environment is the user's own server, so Rayfine's server does not stand in front
//! of its calls. It still must not outlive the program that started it, even one killed by
//! SIGKILL. So the container runs this instead of the user's command: it runs that command, passes
//! SIGTERM and SIGINT on to it, and stops it when stdin reaches its end, which is what the engine
//! does to the container's stdin when the owner's attach connection closes.

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use super::{reaper, shutdown_signal, stdin_eof, ServeError};

/// Runs `command` until it exits, a signal asks us to stop, or (if `exit_on_stdin_eof`) stdin
/// ends. Returns the exit code to leave with: the command's own, or 128 + the signal that ended it.
pub async fn supervise(command: &[String], exit_on_stdin_eof: bool, grace: Duration) -> Result<u8, ServeError> {
    let Some((program, args)) = command.split_first() else {
        return Err(ServeError::Config("--supervise needs the command to run after `--`".into()));
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        // Its own process group, so that stopping it reaches the workers it started too.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| ServeError::Spawn { program: program.clone(), source })?;
    reaper::own(child.id());
    reaper::start_if_pid1();
    let stdin_closed = async {
        if exit_on_stdin_eof {
            let _ = stdin_eof().await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        status = child.wait() => return Ok(exit_code(status.ok())),
        _ = shutdown_signal() => tracing::info!("stopping `{program}`"),
        _ = stdin_closed => tracing::info!("stdin closed: the owner is gone; stopping `{program}`"),
    }
    Ok(stop(&mut child, grace).await)
}

/// SIGTERM to the command's process group, then SIGKILL after `grace`.
async fn stop(child: &mut Child, grace: Duration) -> u8 {
    let Some(pid) = child.id() else {
        return exit_code(child.wait().await.ok());
    };
    let group = -(pid as libc::pid_t);
    // SAFETY: kill() with a negative pid signals the process group the child leads.
    unsafe { libc::kill(group, libc::SIGTERM) };
    if let Ok(status) = tokio::time::timeout(grace, child.wait()).await {
        return exit_code(status.ok());
    }
    tracing::warn!("the command did not stop within {grace:?}; killing it");
    // SAFETY: as above.
    unsafe { libc::kill(group, libc::SIGKILL) };
    exit_code(child.wait().await.ok())
}

fn exit_code(status: Option<std::process::ExitStatus>) -> u8 {
    match status {
        Some(status) => match (status.code(), status.signal()) {
            (Some(code), _) => u8::try_from(code).unwrap_or(1),
            (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(1),
            _ => 1,
        },
        None => 1,
    }
}
