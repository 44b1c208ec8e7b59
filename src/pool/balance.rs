//! Which replica takes the next call: the one with the fewest calls outstanding (a slow or stuck
//! replica accumulates them and so stops getting new ones), or one at random (affinetes'
//! balancing, kept to compare against).

use std::sync::atomic::{AtomicU64, Ordering};

/// How a pool spreads calls over its replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balancing {
    /// The replica with the fewest calls in flight; ties go to a random one of them.
    #[default]
    LeastOutstanding,
    /// Any serving replica, uniformly at random, whatever it is doing.
    Random,
}

/// What the chooser sees of one replica.
pub(super) trait Candidate {
    /// Calls in flight on it now.
    fn outstanding(&self) -> usize;
}

/// The index of the replica to use among `candidates` (serving ones, not yet tried by this
/// call); None when there are none.
pub(super) fn choose<C: Candidate>(candidates: &[C], balancing: Balancing) -> Option<usize> {
    if candidates.is_empty() {
        return None;
    }
    let start = (next_random() % candidates.len() as u64) as usize;
    match balancing {
        Balancing::Random => Some(start),
        // Scanning from a random start breaks ties at random, so equal replicas share the load.
        Balancing::LeastOutstanding => (0..candidates.len()).map(|i| (start + i) % candidates.len()).min_by_key(|&i| candidates[i].outstanding()),
    }
}

/// A fast, well-mixed pseudo-random number (splitmix64 over a shared counter): balancing needs
/// spread, not secrecy.
fn next_random() -> u64 {
    static STATE: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
    let mut z = STATE.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Busy(usize);

    impl Candidate for Busy {
        fn outstanding(&self) -> usize {
            self.0
        }
    }

    #[test]
    fn the_least_busy_replica_is_chosen() {
        let replicas = [Busy(3), Busy(0), Busy(7)];
        for _ in 0..50 {
            assert_eq!(choose(&replicas, Balancing::LeastOutstanding), Some(1));
        }
        assert_eq!(choose::<Busy>(&[], Balancing::LeastOutstanding), None);
    }

    #[test]
    fn ties_and_random_balancing_spread_over_every_replica() {
        for balancing in [Balancing::LeastOutstanding, Balancing::Random] {
            let replicas = [Busy(1), Busy(1), Busy(1), Busy(1)];
            let mut seen = [0usize; 4];
            for _ in 0..4000 {
                seen[choose(&replicas, balancing).unwrap()] += 1;
            }
            assert!(seen.iter().all(|&n| n > 800), "{balancing:?}: {seen:?}");
        }
    }
}
