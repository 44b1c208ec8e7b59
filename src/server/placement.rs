//! Where the server and its worker run (`--cpu-placement`). By default the kernel places both,
//! and a call's two halves may meet on one core while another idles, or move between cores and
//! lose their caches. `split` gives the worker a core of its own, the last this process may use,
//! and the server's threads the others: a call then never waits for the other half's core, at
//! the price of a server that can no longer use the worker's core when the worker is idle.

use super::ServeError;

/// How the server and the worker share the CPUs this process may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum CpuPlacement {
    /// The kernel places both, anywhere in this process's CPU set.
    #[default]
    Shared,
    /// The worker on the last CPU of the set, the server's threads on the rest (with at least
    /// two CPUs; with one, as `shared`).
    Split,
}

/// Applies `placement` to every thread of this process; returns the CPU the worker is to run on
/// (and so everything it starts), if it gets one of its own.
pub(crate) fn apply(placement: CpuPlacement) -> Result<Option<usize>, ServeError> {
    if placement == CpuPlacement::Shared {
        return Ok(None);
    }
    let allowed = allowed_cpus(0)?;
    let Some((&worker_cpu, server_cpus)) = allowed.split_last().filter(|(_, rest)| !rest.is_empty()) else {
        tracing::info!("--cpu-placement split: only one CPU is available; the server and the worker share it");
        return Ok(None);
    };
    let tasks = std::fs::read_dir("/proc/self/task").map_err(|err| ServeError::Config(format!("--cpu-placement: cannot list this process's threads: {err}")))?;
    for task in tasks.flatten() {
        if let Some(tid) = task.file_name().to_str().and_then(|t| t.parse::<libc::pid_t>().ok()) {
            set_affinity(tid, server_cpus)?;
        }
    }
    tracing::info!("--cpu-placement split: the server on CPUs {server_cpus:?}, the worker on CPU {worker_cpu}");
    Ok(Some(worker_cpu))
}

/// The CPUs thread `tid` (0: the calling one) may run on.
fn allowed_cpus(tid: libc::pid_t) -> Result<Vec<usize>, ServeError> {
    // SAFETY: a zeroed cpu_set_t is an empty set, which sched_getaffinity fills.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the size passed is the set's own.
    if unsafe { libc::sched_getaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        return Err(ServeError::Config(format!("--cpu-placement: cannot read the CPU set: {}", std::io::Error::last_os_error())));
    }
    // SAFETY: CPU_ISSET reads the set within its size.
    Ok((0..libc::CPU_SETSIZE as usize).filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) }).collect())
}

/// Restricts thread `tid` (0: the calling one) to `cpus`.
fn set_affinity(tid: libc::pid_t, cpus: &[usize]) -> Result<(), ServeError> {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes within it for CPUs below
    // CPU_SETSIZE, which the set was read from.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: the size passed is the set's own.
    if unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(ServeError::Config(format!("--cpu-placement: cannot place thread {tid}: {}", std::io::Error::last_os_error())));
    }
    Ok(())
}

/// Pins the calling process to `cpu`; for the worker, between fork and exec. Only a system call,
/// so safe there; a refusal (a CPU taken away meanwhile) leaves the worker where it is.
pub(crate) fn pin_self_to(cpu: usize) {
    // SAFETY: as in set_affinity; sched_setaffinity is async-signal-safe.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_places_nothing() {
        assert_eq!(apply(CpuPlacement::Shared).unwrap(), None);
    }

    #[test]
    fn the_calling_threads_cpu_set_is_read_and_can_be_narrowed_and_restored() {
        let allowed = allowed_cpus(0).unwrap();
        assert!(!allowed.is_empty());
        std::thread::spawn(move || {
            set_affinity(0, &allowed[..1]).unwrap();
            assert_eq!(allowed_cpus(0).unwrap(), allowed[..1].to_vec());
            set_affinity(0, &allowed).unwrap();
            assert_eq!(allowed_cpus(0).unwrap(), allowed);
        })
        .join()
        .unwrap();
    }
}
