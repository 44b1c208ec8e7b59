//! Finding Rayfine's own programs: the server a process-mode environment (and the owner
//! watchdog) runs as a local child, and the static `rayfine-server` that stage 2 injects into
//! images.
//!
//! The injected one must be statically linked to run in any image (Debian, alpine, distroless, scratch), and
//! the one cargo builds by default is not, so a dynamic binary is refused with the command that
//! builds the right one, instead of an image that fails at start with "no such file".

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The program that serves an environment, and whether it needs the `serve` subcommand.
#[derive(Debug, Clone)]
pub struct ServerProgram {
    /// Path of the executable.
    pub path: PathBuf,
    /// True for the `rayfine` CLI (`rayfine serve ...`), false for `rayfine-server`.
    pub needs_serve: bool,
}

impl ServerProgram {
    /// The program at `path`; `rayfine` (the CLI) is run as `rayfine serve`.
    pub fn at(path: &Path) -> ServerProgram {
        let needs_serve = path.file_name().is_some_and(|n| n == "rayfine");
        ServerProgram { path: path.to_path_buf(), needs_serve }
    }

    /// Finds the server: `RAYFINE_SERVER_BIN`, this very program if it is the `rayfine` CLI, a
    /// `rayfine-server` or `rayfine` next to this program or one folder up (cargo puts tests and
    /// examples one level below the binaries), then `PATH`.
    pub fn locate() -> Result<ServerProgram> {
        let classify = |path: PathBuf| ServerProgram::at(&path);
        if let Some(path) = std::env::var_os("RAYFINE_SERVER_BIN") {
            let path = PathBuf::from(path);
            if !path.is_file() {
                return Err(Error::InvalidInput(format!("RAYFINE_SERVER_BIN points to `{}`, which is not a file", path.display())));
            }
            return Ok(classify(path));
        }
        let exe = std::env::current_exe().ok();
        if let Some(exe) = &exe {
            if exe.file_name().is_some_and(|n| n == "rayfine") {
                return Ok(classify(exe.clone()));
            }
        }
        let mut folders: Vec<PathBuf> = Vec::new();
        if let Some(dir) = exe.as_deref().and_then(Path::parent) {
            folders.push(dir.to_path_buf());
            folders.extend(dir.parent().map(Path::to_path_buf));
        }
        folders.extend(std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default());
        for folder in folders {
            for name in ["rayfine-server", "rayfine"] {
                let candidate = folder.join(name);
                if candidate.is_file() {
                    return Ok(classify(candidate));
                }
            }
        }
        Err(Error::InvalidInput(
            "cannot find the rayfine-server program: build it (`cargo build`), put it on PATH, or set RAYFINE_SERVER_BIN".into(),
        ))
    }
}

/// Where cargo puts the static build, relative to a target folder.
const STATIC_RELATIVE: &str = "x86_64-unknown-linux-gnu/release/rayfine-server";

/// The command that builds the static server.
pub const BUILD_COMMAND: &str = "RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --release --no-default-features \
                                 --bin rayfine-server --target x86_64-unknown-linux-gnu";

/// Finds the static server for images: `explicit` if given, else `RAYFINE_SERVER_BIN` when it is static
/// (process mode also reads that variable and is happy with a dynamic build), else the newest of
/// a `rayfine-server` next to this program and cargo's static builds in any target folder above
/// it (`<target>/x86_64-unknown-linux-gnu/release`, or `<target>/static-server/...`, where
/// `.ci/setup` and the tests build it). The newest, so a stale build never shadows a fresh one.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        return check(path).map(|()| path.to_path_buf());
    }
    let is_static = |path: &Path| path.is_file() && is_static_elf(path).unwrap_or(false);
    let from_env = std::env::var_os("RAYFINE_SERVER_BIN").map(PathBuf::from);
    if let Some(path) = from_env.as_ref().filter(|p| is_static(p)) {
        return Ok(path.clone());
    }
    let exe = std::env::current_exe().map_err(|source| Error::Io { context: "cannot find this program's path".into(), source })?;
    let mut candidates: Vec<PathBuf> = from_env.into_iter().collect();
    if let Some(dir) = exe.parent() {
        candidates.push(dir.join("rayfine-server"));
    }
    for ancestor in exe.ancestors().skip(1) {
        candidates.push(ancestor.join(STATIC_RELATIVE));
        candidates.push(ancestor.join("static-server").join(STATIC_RELATIVE));
        if ancestor.file_name().is_some_and(|n| n == "target") {
            break;
        }
    }
    let newest = candidates
        .iter()
        .filter(|c| is_static(c))
        .max_by_key(|c| std::fs::metadata(c).and_then(|m| m.modified()).unwrap_or(std::time::SystemTime::UNIX_EPOCH));
    if let Some(found) = newest {
        return Ok(found.clone());
    }
    Err(Error::InvalidInput(format!(
        "cannot find a statically linked rayfine-server to put into the image; build it with `{BUILD_COMMAND}` \
         or set RAYFINE_SERVER_BIN (looked at: {})",
        candidates.iter().map(|c| c.display().to_string()).collect::<Vec<_>>().join(", ")
    )))
}

fn check(path: &Path) -> Result<()> {
    match is_static_elf(path) {
        Ok(true) => Ok(()),
        Ok(false) => Err(Error::InvalidInput(format!(
            "`{}` is dynamically linked and would not run in every image; build the static server with `{BUILD_COMMAND}`",
            path.display()
        ))),
        Err(source) => Err(Error::Io { context: format!("cannot read the server binary `{}`", path.display()), source }),
    }
}

/// Whether `path` is a 64-bit ELF executable without a program interpreter (so, static).
pub fn is_static_elf(path: &Path) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    let mut header = [0u8; 64];
    if file.read(&mut header)? < 64 || &header[..4] != b"\x7fELF" || header[4] != 2 || header[5] != 1 {
        return Ok(false);
    }
    let u16_at = |at: usize| u16::from_le_bytes([header[at], header[at + 1]]) as u64;
    let phoff = u64::from_le_bytes(header[32..40].try_into().expect("8 bytes"));
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    if phentsize < 4 || phnum == 0 {
        return Ok(false);
    }
    for index in 0..phnum {
        file.seek(SeekFrom::Start(phoff + index * phentsize))?;
        let mut kind = [0u8; 4];
        file.read_exact(&mut kind)?;
        if u32::from_le_bytes(kind) == 3 {
            return Ok(false); // PT_INTERP: needs a dynamic loader
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_programs_and_non_elf_files_are_not_static() {
        assert!(!is_static_elf(Path::new("/bin/sh")).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("x");
        std::fs::write(&text, "#!/bin/sh\n").unwrap();
        assert!(!is_static_elf(&text).unwrap());
        assert!(check(&text).is_err());
    }
}
