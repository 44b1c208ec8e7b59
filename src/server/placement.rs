//! Where the server and its worker run (`--cpu-placement`). By default the kernel places both,
//! and a call's two halves may meet on one core while another idles, or move between cores and
//! lose their caches. `split` gives the worker a core of its own, chosen by the server's pid among
//! those this process may use (so the servers on one host spread their workers over the cores),
//! and the server's threads the others: a call then never waits for the other half's core, at
//! the price of a server that can no longer use the worker's core when the worker is idle.

use super::ServeError;

/// How the server and the worker share the CPUs this process may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum CpuPlacement {
    /// The kernel places both, anywhere in this process's CPU set.
    #[default]
    Shared,
    /// The worker on one CPU of the set, the server's threads on the rest (with at least two
    /// CPUs; with one, or a set this build cannot read, as `shared`).
    Split,
}

/// Applies `placement` to every thread of this process; returns the CPU the worker is to run on
/// (and so everything it starts), if it gets one of its own.
pub(crate) fn apply(placement: CpuPlacement) -> Result<Option<usize>, ServeError> {
    if placement == CpuPlacement::Shared {
        return Ok(None);
    }
    let allowed = match allowed_cpus(0) {
        Ok(allowed) => allowed,
        // A CPU set larger than `cpu_set_t` (more than 1,024 CPUs): the kernel refuses to read it
        // into one, and placing threads by a part of it would be worse than not placing them.
        Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {
            tracing::warn!("--cpu-placement split: this host's CPU set is too large to read; the server and the worker share it");
            return Ok(None);
        }
        Err(err) => return Err(ServeError::Config(format!("--cpu-placement: cannot read the CPU set: {err}"))),
    };
    let Some((worker_cpu, server_cpus)) = split(&allowed, std::process::id()) else {
        tracing::info!("--cpu-placement split: only one CPU is available; the server and the worker share it");
        return Ok(None);
    };
    let tasks = std::fs::read_dir("/proc/self/task").map_err(|err| ServeError::Config(format!("--cpu-placement: cannot list this process's threads: {err}")))?;
    for task in tasks.flatten() {
        if let Some(tid) = task.file_name().to_str().and_then(|t| t.parse::<libc::pid_t>().ok()) {
            place_thread(tid, &server_cpus)?;
        }
    }
    tracing::info!("--cpu-placement split: the server on CPUs {server_cpus:?}, the worker on CPU {worker_cpu}");
    Ok(Some(worker_cpu))
}

/// The worker's CPU and the server's, out of `allowed`, for the server with process id `pid`;
/// None with fewer than two CPUs. Chosen by pid, so that several servers on one host do not all
/// put their workers on the same CPU and their servers on the others.
fn split(allowed: &[usize], pid: u32) -> Option<(usize, Vec<usize>)> {
    if allowed.len() < 2 {
        return None;
    }
    let index = pid as usize % allowed.len();
    let server = allowed.iter().enumerate().filter(|&(i, _)| i != index).map(|(_, &cpu)| cpu).collect();
    Some((allowed[index], server))
}

/// Restricts thread `tid` to `cpus`; a thread that ended since it was listed needs no place.
fn place_thread(tid: libc::pid_t, cpus: &[usize]) -> Result<(), ServeError> {
    match set_affinity(tid, cpus) {
        Err(err) if err.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        placed => placed.map_err(|err| ServeError::Config(format!("--cpu-placement: cannot place thread {tid}: {err}"))),
    }
}

/// The CPUs thread `tid` (0: the calling one) may run on.
fn allowed_cpus(tid: libc::pid_t) -> std::io::Result<Vec<usize>> {
    // SAFETY: a zeroed cpu_set_t is an empty set, which sched_getaffinity fills.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the size passed is the set's own.
    if unsafe { libc::sched_getaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: CPU_ISSET reads the set within its size.
    Ok((0..libc::CPU_SETSIZE as usize).filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) }).collect())
}

/// Restricts thread `tid` (0: the calling one) to `cpus`.
fn set_affinity(tid: libc::pid_t, cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes within it for CPUs below
    // CPU_SETSIZE, which the set was read from.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: the size passed is the set's own.
    if unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(std::io::Error::last_os_error());
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

    #[test]
    fn servers_with_different_pids_put_their_workers_on_different_cpus() {
        let allowed = [0, 1, 2, 3];
        let workers: Vec<usize> = (100..104).map(|pid| split(&allowed, pid).unwrap().0).collect();
        assert_eq!(workers, [0, 1, 2, 3], "one worker per CPU");
        let (worker, server) = split(&[0, 1], 7).unwrap();
        assert_eq!((worker, server), (1, vec![0]));
        assert!(split(&[3], 7).is_none(), "one CPU: nothing to split");
    }

    #[test]
    fn a_thread_that_ended_before_it_was_placed_is_no_error() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(unsafe { libc::gettid() }).unwrap()).join().unwrap();
        let gone = rx.recv().unwrap();
        let allowed = allowed_cpus(0).unwrap();
        assert_eq!(set_affinity(gone, &allowed).unwrap_err().raw_os_error(), Some(libc::ESRCH));
        place_thread(gone, &allowed).unwrap();
    }
}
