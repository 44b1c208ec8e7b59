//! The worker script the server runs: a file given by the caller, or the embedded copy in a
//! sealed in-memory file.

use std::io::Write;
use std::path::PathBuf;

use super::WORKER_SCRIPT;
use crate::server::ServeError;

/// The worker script: a file given by the caller, or the embedded copy in an anonymous
/// in-memory file (memfd). Nothing is written to disk, so a server killed by SIGKILL leaves no
/// script behind in the temporary folder. The worker opens it as `/proc/self/fd/N`; the fd is
/// close-on-exec here and made inheritable only in the worker's own fork.
pub(crate) enum ScriptFile {
    Given(PathBuf),
    Memory(std::os::fd::OwnedFd),
}

impl ScriptFile {
    pub(crate) fn prepare(configured: Option<&PathBuf>) -> Result<ScriptFile, ServeError> {
        if let Some(path) = configured {
            return Ok(ScriptFile::Given(path.clone()));
        }
        let failed = |source| ServeError::WorkerScript { path: PathBuf::from("memfd:rayfine-worker"), source };
        // SAFETY: memfd_create takes a NUL-terminated name and flags; the fd it returns is ours.
        let fd = unsafe { libc::memfd_create(c"rayfine-worker.py".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
        if fd < 0 {
            return Err(failed(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let mut file = std::fs::File::from(fd);
        file.write_all(WORKER_SCRIPT.as_bytes()).map_err(failed)?;
        // Sealed: the environment runs with this descriptor and must not rewrite the script the
        // next worker runs.
        let seals = libc::F_SEAL_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
        // SAFETY: fcntl on a descriptor we own.
        if unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&file), libc::F_ADD_SEALS, seals) } != 0 {
            return Err(failed(std::io::Error::last_os_error()));
        }
        Ok(ScriptFile::Memory(file.into()))
    }

    /// The path the worker opens.
    pub(crate) fn path(&self) -> PathBuf {
        match self {
            ScriptFile::Given(path) => path.clone(),
            ScriptFile::Memory(fd) => PathBuf::from(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(fd))),
        }
    }

    /// The descriptor the worker must inherit, if any.
    pub(crate) fn inherited_fd(&self) -> Option<std::os::fd::RawFd> {
        match self {
            ScriptFile::Given(_) => None,
            ScriptFile::Memory(fd) => Some(std::os::fd::AsRawFd::as_raw_fd(fd)),
        }
    }
}

