//! `rayfine-server --supervise -- COMMAND...`: an HTTP-based environment's own server, run as a
//! command guarded by its owner's life; the first process of the environment's container.
//!
//! An HTTP-based environment is the user's own server, so Rayfine's server does not stand in front
//! of its calls. It still must not outlive the program that started it, even one killed by
//! SIGKILL. So the container runs this instead of the user's command: it runs that command, passes
//! SIGTERM and SIGINT on to it, and stops it when stdin reaches its end, which is what the engine
//! does to the container's stdin when the owner's attach connection closes.
//!
//! A frozen owner keeps that connection open, so the supervisor also holds the owner's lease, as
//! the `/call` server does: renewals come to `POST /_rayfine/lease` on a port of its own
//! (`--lease-port`), with the token from the secrets file, and the clock starts at the first one.

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use tokio::signal::unix::{signal, Signal, SignalKind};

use super::app::{bearer_credentials, constant_time_eq};
use super::lease::{Lease, LEASE_PATH};
use super::{reaper, secrets, signal_group, watch_owner_stdin, ServeError, ServerConfig};
use crate::protocol::{AUTH_HEADER, SECRETS_FILE_ENV, TOKEN_ENV};

/// Runs `command` until it exits, a signal asks us to stop, stdin ends (with
/// `--exit-on-stdin-eof`) or the lease lapses. Returns the exit code to leave with: the command's
/// own, or 128 + the signal that ended it.
pub async fn supervise(command: &[String], config: &ServerConfig) -> Result<u8, ServeError> {
    let Some((program, args)) = command.split_first() else {
        return Err(ServeError::Config("--supervise needs the command to run after `--`".into()));
    };
    let grace = config.shutdown_grace();
    let (first_line, stdin_watch) = watch_owner_stdin(config)?;
    let secrets = secrets::load(config, first_line).await?;
    let lapsed = hold_lease(config, secrets.token.as_deref()).await?;
    // Handlers first: a signal that came between the start of the command and their installation
    // would end this process with the default action and leave the command running.
    let watch = |kind| signal(kind).map_err(|err| ServeError::Config(format!("cannot watch stop signals: {err}")));
    let (mut terminate, mut interrupt) = (watch(SignalKind::terminate())?, watch(SignalKind::interrupt())?);
    let forwarded: Vec<(libc::c_int, Signal)> = FORWARDED
        .into_iter()
        .filter_map(|number| match signal(SignalKind::from_raw(number)) {
            Ok(arrivals) => Some((number, arrivals)),
            Err(err) => {
                tracing::warn!("cannot pass signal {number} on: {err}");
                None
            }
        })
        .collect();
    let mut command = Command::new(program);
    command
        .args(args)
        .env_remove(TOKEN_ENV)
        .env_remove(SECRETS_FILE_ENV)
        .env_remove("RAYFINE_LEASE")
        .envs(&secrets.env)
        .stdin(Stdio::null())
        // Its own process group, so that stopping it reaches the workers it started too.
        .process_group(0)
        .kill_on_drop(true);
    reaper::start();
    let mut child = reaper::spawn_owned(&mut command).map_err(|source| ServeError::Spawn { program: program.clone(), source })?;
    let leader = child.id();
    for (number, mut arrivals) in forwarded {
        tokio::spawn(async move {
            while arrivals.recv().await.is_some() {
                signal_group(leader, number);
            }
        });
    }
    let stdin_closed = async {
        match stdin_watch {
            Some(closed) => {
                let _ = closed.await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        status = child.wait() => return Ok(exit_code(status.ok())),
        _ = terminate.recv() => tracing::info!("stopping `{program}`"),
        _ = interrupt.recv() => tracing::info!("stopping `{program}`"),
        _ = stdin_closed => tracing::info!("stdin closed: the owner is gone; stopping `{program}`"),
        _ = lapsed => tracing::warn!("the lease lapsed: no renewal from the owner, which is gone or frozen; stopping `{program}`"),
    }
    Ok(stop(&mut child, grace).await)
}

/// Serves lease renewals when a lease and a token are configured; returns what completes when
/// the lease lapses (never, without a lease).
async fn hold_lease(config: &ServerConfig, token: Option<&str>) -> Result<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>, ServeError> {
    let Some(lease) = config.lease_duration()?.map(Lease::new) else { return Ok(Box::pin(std::future::pending())) };
    let Some(token) = token.map(std::sync::Arc::<str>::from) else {
        tracing::warn!("a lease without a token cannot be renewed safely; not holding it");
        return Ok(Box::pin(std::future::pending()));
    };
    let addr = format!("{}:{}", config.host, config.lease_port);
    let listener = tokio::net::TcpListener::bind(&addr).await.map_err(|source| ServeError::Bind { addr, source })?;
    let (first, mut renewed) = tokio::sync::watch::channel(false);
    let renewals = {
        let lease = lease.clone();
        axum::Router::new().route(
            LEASE_PATH,
            axum::routing::post(move |headers: axum::http::HeaderMap| async move {
                let given = headers.get(AUTH_HEADER).and_then(|v| v.to_str().ok()).and_then(bearer_credentials).unwrap_or_default();
                if !constant_time_eq(given.as_bytes(), token.as_bytes()) {
                    return axum::http::StatusCode::UNAUTHORIZED;
                }
                lease.renew();
                first.send_replace(true);
                axum::http::StatusCode::OK
            }),
        )
    };
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, renewals).await {
            tracing::error!("lease renewals: {err}");
        }
    });
    let start_grace = Duration::from_secs_f64(config.lease_start_grace.clamp(0.0, 1e6));
    Ok(Box::pin(async move {
        // The clock starts once the owner has seen the server ready and renews, or when the
        // start was given up on: an owner frozen before its first renewal is caught too.
        tokio::select! {
            _ = renewed.wait_for(|first| *first) => {}
            _ = tokio::time::sleep(start_grace) => {}
        }
        lease.watch().await
    }))
}

/// Signals that mean something to servers (reload, graceful stop, log rotation) and are passed on
/// to the command's process group as they come, as an init such as tini does.
const FORWARDED: [libc::c_int; 5] = [libc::SIGHUP, libc::SIGQUIT, libc::SIGUSR1, libc::SIGUSR2, libc::SIGWINCH];

/// SIGTERM to the command's process group, then SIGKILL after `grace`.
async fn stop(child: &mut Child, grace: Duration) -> u8 {
    let leader = child.id();
    signal_group(leader, libc::SIGTERM);
    if let Ok(status) = tokio::time::timeout(grace, child.wait()).await {
        return exit_code(status.ok());
    }
    tracing::warn!("the command did not stop within {grace:?}; killing it");
    signal_group(leader, libc::SIGKILL);
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
