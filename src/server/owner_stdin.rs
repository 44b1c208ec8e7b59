//! The owner's stdin: a pipe (process mode) or the container's attach connection (Docker mode)
//! that only the owner writes to. Its end means the owner is gone; with `--secrets-stdin` its
//! first line is the [`Secrets`](crate::protocol::Secrets).

use std::io::{BufRead, Read};

use tokio::sync::oneshot;

use super::ServeError;

/// The longest secrets line read; the rest of a longer one is left unread and the line is refused
/// as cut short.
const MAX_SECRETS_LINE: u64 = 16 * 1024 * 1024;

/// Completes with the first line, its newline included (none if stdin ended first).
pub(crate) type FirstLine = oneshot::Receiver<std::io::Result<Vec<u8>>>;

/// What the reader of stdin reports.
pub(crate) struct OwnerStdin {
    /// The first line, when asked for.
    pub first_line: Option<FirstLine>,
    /// Completes when stdin reaches end of file.
    pub closed: oneshot::Receiver<()>,
}

/// Starts reading stdin: the first line first if `first_line`, then to end of file. A plain
/// thread reads it: stdin may be a pipe or a file, and blocking reads work for both.
pub(crate) fn watch(first_line: bool) -> Result<OwnerStdin, ServeError> {
    let (closed_tx, closed) = oneshot::channel();
    let (line_tx, line_rx) = if first_line {
        let (tx, rx) = oneshot::channel();
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    std::thread::Builder::new()
        .name("rayfine-stdin-watch".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            if let Some(line_tx) = line_tx {
                let mut line = Vec::new();
                let read = (&mut stdin).take(MAX_SECRETS_LINE).read_until(b'\n', &mut line).map(|_| line);
                let _ = line_tx.send(read);
            }
            let mut sink = [0u8; 256];
            while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
            let _ = closed_tx.send(());
        })
        .map_err(|err| ServeError::Config(format!("cannot start a thread to watch stdin (is the pids limit too low?): {err}")))?;
    Ok(OwnerStdin { first_line: line_rx, closed })
}
