//! The interpreter a worker really runs on. The configured name (`python3`) may reach it through
//! a wrapper, a pyenv shim above all: a shell script that runs `pyenv exec`, which picks the
//! version for the folder, sets `PATH` and a few `PYENV_*` variables and only then runs the
//! interpreter, 150 ms and more of every start on a machine with pyenv. The worker says where it
//! runs and what its variables were at start; the difference from what was passed is what the
//! wrapper did. Restarts (and, through the `ready` event, the next start of the same environment
//! by the same owner) run the interpreter directly with those variables: the same interpreter in
//! the same environment, without the wrapper.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::protocol::worker::WorkerInterpreter;
use crate::protocol::Interpreter;

/// The variables a worker starts with: this process's, without `hidden`, with `extra` on top.
/// None when one of this process's is not UTF-8, which the worker could not report faithfully.
pub(super) fn passed_env(hidden: &[String], extra: &[(String, String)]) -> Option<BTreeMap<String, String>> {
    let mut passed = BTreeMap::new();
    for (key, value) in std::env::vars_os() {
        let (key, value) = (key.into_string().ok()?, value.into_string().ok()?);
        if !hidden.contains(&key) {
            passed.insert(key, value);
        }
    }
    passed.extend(extra.iter().cloned());
    Some(passed)
}

/// The interpreter the worker reported, with what its wrapper changed of `passed`; None unless
/// it names an absolute path to a file that exists.
pub(super) fn resolve(reported: WorkerInterpreter, passed: &BTreeMap<String, String>) -> Option<Interpreter> {
    let program = PathBuf::from(reported.executable);
    if !program.is_absolute() || !program.is_file() {
        return None;
    }
    let unset = passed.keys().filter(|key| !reported.environ.contains_key(*key)).cloned().collect();
    let set = reported.environ.into_iter().filter(|(key, value)| passed.get(key) != Some(value)).collect();
    Some(Interpreter { program, set, unset })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn what_the_wrapper_set_changed_or_removed_is_kept_and_nothing_else() {
        let passed = vars(&[("PATH", "/shims:/usr/bin"), ("HOME", "/root"), ("OLDPWD", "/tmp")]);
        let reported = WorkerInterpreter {
            executable: std::env::current_exe().unwrap().display().to_string(),
            environ: vars(&[("PATH", "/versions/3.11/bin:/shims:/usr/bin"), ("HOME", "/root"), ("PYENV_VERSION", "3.11.7")]),
        };
        let found = resolve(reported, &passed).unwrap();
        assert_eq!(found.set, vars(&[("PATH", "/versions/3.11/bin:/shims:/usr/bin"), ("PYENV_VERSION", "3.11.7")]));
        assert_eq!(found.unset, vec!["OLDPWD".to_string()]);
    }

    #[test]
    fn a_relative_or_missing_program_is_not_used() {
        for executable in ["python3", "/no/such/python3", ""] {
            let reported = WorkerInterpreter { executable: executable.into(), environ: BTreeMap::new() };
            assert!(resolve(reported, &BTreeMap::new()).is_none(), "{executable:?}");
        }
    }
}
