//! Which worker process holds each OpenEnv session's instance, and where the next one goes.
//!
//! With several worker processes (`--session-workers`), a session's Actor lives in one of them
//! for its whole life, so every call of that session must go to the same process. A new instance
//! goes to the serving process that holds the fewest: thousands of sessions spread evenly, so
//! that no process's GIL carries more threads than the others. Instance 0 (what `/call` uses)
//! always lives in the first process, which is why it is never placed here.

use std::collections::HashMap;

/// The instances of each worker process.
#[derive(Debug)]
pub(super) struct Placement {
    /// The process holding each placed instance, by instance number.
    holder: HashMap<u64, usize>,
    /// How many placed instances each process holds.
    load: Vec<usize>,
}

impl Placement {
    /// No instance placed yet, over `processes` worker processes (at least one).
    pub(super) fn new(processes: usize) -> Placement {
        Placement { holder: HashMap::new(), load: vec![0; processes.max(1)] }
    }

    /// Puts `instance` on the process that holds the fewest among those `serving` says yes to
    /// (the first of them on a tie), and returns it; on the first process if none is serving,
    /// whose own error then tells the caller why. Placing an instance again keeps its process.
    pub(super) fn place(&mut self, instance: u64, serving: impl Fn(usize) -> bool) -> usize {
        if let Some(&process) = self.holder.get(&instance) {
            return process;
        }
        let process = (0..self.load.len()).filter(|&p| serving(p)).min_by_key(|&p| (self.load[p], p)).unwrap_or(0);
        self.load[process] += 1;
        self.holder.insert(instance, process);
        process
    }

    /// The process holding `instance`, if it was placed and not forgotten since.
    pub(super) fn holder(&self, instance: u64) -> Option<usize> {
        self.holder.get(&instance).copied()
    }

    /// Forgets `instance`; returns the process that held it.
    pub(super) fn forget(&mut self, instance: u64) -> Option<usize> {
        let process = self.holder.remove(&instance)?;
        self.load[process] -= 1;
        Some(process)
    }

    /// How many instances each process holds.
    #[cfg(test)]
    fn load(&self) -> &[usize] {
        &self.load
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_spread_evenly_over_serving_processes() {
        let mut placement = Placement::new(3);
        let placed: Vec<usize> = (1..=7).map(|i| placement.place(i, |_| true)).collect();
        assert_eq!(placed, [0, 1, 2, 0, 1, 2, 0]);
        assert_eq!(placement.load(), [3, 2, 2]);
    }

    #[test]
    fn a_process_that_is_not_serving_gets_no_instance() {
        let mut placement = Placement::new(3);
        let placed: Vec<usize> = (1..=4).map(|i| placement.place(i, |p| p != 1)).collect();
        assert_eq!(placed, [0, 2, 0, 2]);
        assert_eq!(placement.load(), [2, 0, 2]);
    }

    #[test]
    fn with_no_process_serving_the_first_takes_it() {
        let mut placement = Placement::new(2);
        assert_eq!(placement.place(5, |_| false), 0);
        assert_eq!(placement.holder(5), Some(0));
    }

    #[test]
    fn a_forgotten_instance_frees_its_place_for_the_next() {
        let mut placement = Placement::new(2);
        for i in 1..=4 {
            placement.place(i, |_| true);
        }
        assert_eq!(placement.forget(2), Some(1));
        assert_eq!(placement.forget(2), None, "forgetting twice changes nothing");
        assert_eq!(placement.holder(2), None);
        assert_eq!(placement.load(), [2, 1]);
        assert_eq!(placement.place(9, |_| true), 1);
    }

    #[test]
    fn placing_an_instance_again_keeps_its_process() {
        let mut placement = Placement::new(2);
        assert_eq!(placement.place(1, |_| true), 0);
        assert_eq!(placement.place(1, |_| true), 0);
        assert_eq!(placement.load(), [1, 0]);
    }
}
