//! Which interpreter a local server's worker ran on, remembered per environment for the life of
//! this process, so the next start of the same environment skips the wrapper (a pyenv shim) the
//! configured `python3` went through. See `server::worker::interpreter` for what is found and
//! why replaying it is the same interpreter in the same environment.
//!
//! A start is the same when the folder, the variables given for it and this process's own
//! variables (`PATH`, `PYENV_VERSION`, a virtual environment's) are: all of them are the key.
//! What a wrapper reads besides variables (a `.python-version` file, pyenv's global version) is
//! taken as it was at the first start; `RAYFINE_PYTHON` set to the interpreter wanted names it
//! without any of this.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use once_cell::sync::Lazy;
use parking_lot::Mutex;

use crate::protocol::Interpreter;

/// Enough for every environment a process runs; a run that starts each one with variables of its
/// own (a seed per start) would otherwise grow the table without end, so it is emptied when full.
const MAX_KNOWN: usize = 256;

/// What decides which interpreter a start ends on. The variables are kept as a digest: their
/// values are API keys as often as not, and this table lives as long as the process.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct StartKey {
    folder: PathBuf,
    variables: u64,
}

impl StartKey {
    /// The key of a start of `folder` with `env_vars`, in this process's environment as it is now.
    pub fn new(folder: &Path, env_vars: &BTreeMap<String, String>) -> StartKey {
        let mut process_env: Vec<_> = std::env::vars_os().collect();
        process_env.sort();
        // SipHash with fixed keys: the same digest for the same variables within this process,
        // and a collision between two sets of variables out of reach of chance.
        let mut digest = std::collections::hash_map::DefaultHasher::new();
        (env_vars, process_env).hash(&mut digest);
        StartKey { folder: folder.to_path_buf(), variables: digest.finish() }
    }
}

static KNOWN: Lazy<Mutex<HashMap<StartKey, Interpreter>>> = Lazy::new(|| Mutex::new(HashMap::new()));

/// The interpreter an earlier start with this key ran on, if it is still there.
pub(crate) fn lookup(key: &StartKey) -> Option<Interpreter> {
    let mut known = KNOWN.lock();
    let found = known.get(key)?.clone();
    if !found.program.is_file() {
        known.remove(key);
        return None;
    }
    Some(found)
}

/// Remembers what a start with this key ran on.
pub(crate) fn remember(key: StartKey, interpreter: Interpreter) {
    let mut known = KNOWN.lock();
    if known.len() >= MAX_KNOWN && !known.contains_key(&key) {
        known.clear();
    }
    known.insert(key, interpreter);
}

/// Forgets it, after a start on it failed: the next one goes through the configured name again.
pub(crate) fn forget(key: &StartKey) {
    KNOWN.lock().remove(key);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remembered_interpreter_is_given_back_until_its_program_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("python3");
        std::fs::write(&program, "").unwrap();
        let key = StartKey::new(dir.path(), &BTreeMap::from([("SEED".to_string(), "1".to_string())]));
        let other = StartKey::new(dir.path(), &BTreeMap::from([("SEED".to_string(), "2".to_string())]));
        remember(key.clone(), Interpreter { program: program.clone(), ..Interpreter::default() });
        assert_eq!(lookup(&key).map(|found| found.program), Some(program.clone()));
        assert!(lookup(&other).is_none(), "other variables are another start");
        std::fs::remove_file(&program).unwrap();
        assert!(lookup(&key).is_none(), "a program that is gone is not used");
    }
}
