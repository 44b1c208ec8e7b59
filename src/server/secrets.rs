//! Reads the [`Secrets`] the client handed the server: a file it copied into the container, or
//! the first line of the owner's stdin.

use std::path::Path;
use std::time::Duration;

use crate::protocol::Secrets;

use super::owner_stdin::FirstLine;
use super::{ServeError, ServerConfig};

/// How long the server waits for the secrets line. The client writes it before the container
/// starts, so it is there at once; a start without it must fail, never serve without a token.
const SECRETS_LINE_WAIT: Duration = Duration::from_secs(30);

/// The secrets at `path`. The file stays, so that a kept container restarted by `docker restart`
/// finds it again; a missing one is an error, never a server without its token.
fn take(path: &Path) -> Result<Secrets, ServeError> {
    let bytes = std::fs::read(path).map_err(|err| ServeError::Config(format!("cannot read the secrets file {}: {err}", path.display())))?;
    serde_json::from_slice(&bytes).map_err(|err| ServeError::Config(format!("the secrets file {} is not valid: {err}", path.display())))
}

/// The secrets of this server: from stdin's first line (`--secrets-stdin`, whose reader is
/// `first_line`), from the file named by `--secrets-file`, or none.
pub(crate) async fn load(config: &ServerConfig, first_line: Option<FirstLine>) -> Result<Secrets, ServeError> {
    match first_line {
        Some(line) => from_line(tokio::time::timeout(SECRETS_LINE_WAIT, line).await).and_then(|secrets| with_token(secrets, config.no_auth)),
        None => config.secrets_file.as_deref().map(take).transpose().map(Option::unwrap_or_default),
    }
}

/// A secrets line is how an owner that authenticates hands over its token: one without a token is
/// a broken owner, never a request to serve everyone; that takes `--no-auth`, said out loud.
fn with_token(secrets: Secrets, no_auth: bool) -> Result<Secrets, ServeError> {
    if !no_auth && secrets.token.as_deref().is_none_or(str::is_empty) {
        return Err(ServeError::Config("--secrets-stdin: the secrets line carries no token; pass --no-auth to serve without one".into()));
    }
    Ok(secrets)
}

fn from_line(read: Result<Result<std::io::Result<Vec<u8>>, tokio::sync::oneshot::error::RecvError>, tokio::time::error::Elapsed>) -> Result<Secrets, ServeError> {
    let line = match read {
        Err(_) => return Err(ServeError::Config(format!("--secrets-stdin: no secrets line on stdin within {} s", SECRETS_LINE_WAIT.as_secs()))),
        Ok(Err(_)) => return Err(ServeError::Config("--secrets-stdin: the stdin reader stopped".into())),
        Ok(Ok(Err(err))) => return Err(ServeError::Config(format!("--secrets-stdin: cannot read stdin: {err}"))),
        Ok(Ok(Ok(line))) => line,
    };
    if line.last() != Some(&b'\n') {
        return Err(ServeError::Config("--secrets-stdin: stdin ended before a whole secrets line".into()));
    }
    serde_json::from_slice(&line).map_err(|err| ServeError::Config(format!("--secrets-stdin: the secrets line is not valid: {err}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(bytes: &[u8]) -> Result<Secrets, ServeError> {
        from_line(Ok(Ok(Ok(bytes.to_vec()))))
    }

    #[test]
    fn a_whole_line_gives_the_token_and_variables() {
        let secrets = line(b"{\"token\":\"t0k\",\"env\":{\"API_KEY\":\"k\"}}\n").unwrap();
        assert_eq!(secrets.token.as_deref(), Some("t0k"));
        assert_eq!(secrets.env.get("API_KEY").map(String::as_str), Some("k"));
    }

    #[test]
    fn a_cut_or_bad_line_is_refused_with_the_reason() {
        let cut = line(b"{\"token\":\"t0k\"}").err().unwrap().to_string();
        assert!(cut.contains("ended before a whole secrets line"), "{cut}");
        let bad = line(b"token=t0k\n").err().unwrap().to_string();
        assert!(bad.contains("secrets line is not valid"), "{bad}");
        let empty = line(b"").err().unwrap().to_string();
        assert!(empty.contains("ended before"), "{empty}");
    }

    #[test]
    fn a_line_without_a_token_is_refused_unless_auth_is_off() {
        for tokenless in [&b"{\"env\":{\"API_KEY\":\"k\"}}\n"[..], b"{\"token\":\"\"}\n"] {
            let refused = line(tokenless).and_then(|secrets| with_token(secrets, false)).err().unwrap().to_string();
            assert!(refused.contains("carries no token") && refused.contains("--no-auth"), "{refused}");
            let unauthenticated = line(tokenless).and_then(|secrets| with_token(secrets, true)).unwrap();
            assert!(unauthenticated.token.as_deref().is_none_or(str::is_empty));
        }
        assert_eq!(line(b"{\"token\":\"t\"}\n").and_then(|s| with_token(s, false)).unwrap().token.as_deref(), Some("t"));
    }
}
