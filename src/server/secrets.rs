//! Reads the [`Secrets`] file the client copied into the container.

use std::path::Path;

use crate::protocol::Secrets;

use super::ServeError;

/// The secrets at `path`. The file stays, so that a kept container restarted by `docker restart`
/// finds it again; a missing one is an error, never a server without its token.
pub(crate) fn take(path: &Path) -> Result<Secrets, ServeError> {
    let bytes = std::fs::read(path).map_err(|err| ServeError::Config(format!("cannot read the secrets file {}: {err}", path.display())))?;
    serde_json::from_slice(&bytes).map_err(|err| ServeError::Config(format!("the secrets file {} is not valid: {err}", path.display())))
}

/// The secrets of this server: from the file named by `--secrets-file`, if any.
pub(crate) fn load(file: Option<&Path>) -> Result<Secrets, ServeError> {
    file.map(take).transpose().map(Option::unwrap_or_default)
}
