//! Random identifiers and secrets from the operating system: environment ids, bearer tokens,
//! names of scratch containers.

use crate::error::{Error, Result};

/// `bytes` random bytes from the operating system, as lowercase hex.
pub(crate) fn hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|err| Error::Io { context: "cannot get random bytes".into(), source: std::io::Error::other(err.to_string()) })?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}
