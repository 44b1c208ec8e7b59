//! The interpreter a worker really runs on. The configured name (`python3`) may reach it through
//! a wrapper, a pyenv shim above all: a shell script that runs `pyenv exec`, which picks the
//! version for the folder, sets `PATH` and a few `PYENV_*` variables and only then runs the
//! interpreter, 150 ms and more of every start on a machine with pyenv. The worker says where it
//! runs and what its variables were at start; the difference from what was passed is what the
//! wrapper did. Restarts (and, through the `ready` event, the next start of the same environment
//! by the same owner) run the interpreter directly with those variables: the same interpreter in
//! the same environment, without the wrapper. A wrapper that changed a resource limit (`ulimit`
//! before `exec`) is never skipped: the limit would be lost, and limits are often what keeps a
//! process-mode environment from taking the machine.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::protocol::worker::{ResourceLimit, WorkerInterpreter};
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
/// it names an absolute path to a file that exists and runs with this process's resource limits,
/// which a worker started directly inherits.
pub(super) fn resolve(reported: WorkerInterpreter, passed: &BTreeMap<String, String>) -> Option<Interpreter> {
    let program = PathBuf::from(reported.executable);
    if !program.is_absolute() || !program.is_file() {
        return None;
    }
    // A wrapper is skipped only when it is known to have changed no limit.
    let Some(limits) = reported.limits else {
        tracing::debug!("the worker's interpreter is started through its wrapper every time: the worker reported no resource limits");
        return None;
    };
    if let Some((resource, theirs, ours)) = changed_limit(&limits) {
        tracing::debug!("the worker's interpreter is started through its wrapper every time: resource limit {resource} is {theirs:?} there, {ours:?} here");
        return None;
    }
    let unset = passed.keys().filter(|key| !reported.environ.contains_key(*key)).cloned().collect();
    let set = reported.environ.into_iter().filter(|(key, value)| passed.get(key) != Some(value)).collect();
    Some(Interpreter { program, set, unset })
}

/// A `(soft, hard)` limit; `None` is unlimited.
type Limit = (Option<u64>, Option<u64>);

/// The first of `limits` that differs from this process's own, as (resource, the worker's, ours).
/// A limit this process cannot read counts as changed.
fn changed_limit(limits: &[ResourceLimit]) -> Option<(i32, Limit, Option<Limit>)> {
    limits.iter().find_map(|&(resource, soft, hard)| {
        let ours = own_limit(resource);
        (ours != Some((soft, hard))).then_some((resource, (soft, hard), ours))
    })
}

/// This process's limit of `resource`, None if it cannot be read.
fn own_limit(resource: i32) -> Option<Limit> {
    let resource = u32::try_from(resource).ok()?;
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes the struct it is given; an unknown resource is EINVAL.
    if unsafe { libc::getrlimit(resource as _, &mut limit) } != 0 {
        return None;
    }
    let value = |v: libc::rlim_t| (v != libc::RLIM_INFINITY).then_some(v);
    Some((value(limit.rlim_cur), value(limit.rlim_max)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// This process's limits, as a worker that inherited them would report them.
    fn inherited_limits() -> Option<Vec<ResourceLimit>> {
        Some((0..16).filter_map(|resource| own_limit(resource).map(|(soft, hard)| (resource, soft, hard))).collect())
    }

    fn reported(executable: &str, limits: Option<Vec<ResourceLimit>>) -> WorkerInterpreter {
        WorkerInterpreter { executable: executable.into(), environ: BTreeMap::new(), limits }
    }

    #[test]
    fn what_the_wrapper_set_changed_or_removed_is_kept_and_nothing_else() {
        let passed = vars(&[("PATH", "/shims:/usr/bin"), ("HOME", "/root"), ("OLDPWD", "/tmp")]);
        let reported = WorkerInterpreter {
            executable: std::env::current_exe().unwrap().display().to_string(),
            environ: vars(&[("PATH", "/versions/3.11/bin:/shims:/usr/bin"), ("HOME", "/root"), ("PYENV_VERSION", "3.11.7")]),
            limits: inherited_limits(),
        };
        let found = resolve(reported, &passed).unwrap();
        assert_eq!(found.set, vars(&[("PATH", "/versions/3.11/bin:/shims:/usr/bin"), ("PYENV_VERSION", "3.11.7")]));
        assert_eq!(found.unset, vec!["OLDPWD".to_string()]);
    }

    #[test]
    fn a_relative_or_missing_program_is_not_used() {
        for executable in ["python3", "/no/such/python3", ""] {
            assert!(resolve(reported(executable, inherited_limits()), &BTreeMap::new()).is_none(), "{executable:?}");
        }
    }

    #[test]
    fn a_wrapper_that_changed_a_limit_or_did_not_say_is_not_skipped() {
        let program = std::env::current_exe().unwrap().display().to_string();
        assert!(resolve(reported(&program, inherited_limits()), &BTreeMap::new()).is_some());
        let mut lowered = inherited_limits().unwrap();
        let open_files = lowered.iter_mut().find(|(resource, ..)| *resource == libc::RLIMIT_NOFILE as i32).unwrap();
        open_files.1 = Some(open_files.1.map_or(64, |soft| soft.min(65) - 1));
        assert!(resolve(reported(&program, Some(lowered)), &BTreeMap::new()).is_none(), "a lowered open-files limit");
        assert!(resolve(reported(&program, None), &BTreeMap::new()).is_none(), "no limits reported");
        let unknown = vec![(999, None, None)];
        assert!(resolve(reported(&program, Some(unknown)), &BTreeMap::new()).is_none(), "a limit this process cannot read");
    }
}
