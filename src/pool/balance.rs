//! Which replica takes the next call.
//!
//! By default the one with the least load: its calls in flight, weighted by how long its calls
//! take lately (a peak-sensitive moving average of its latency, as Finagle's and Linkerd's
//! "peak EWMA" balancers do). Counting calls in flight alone is not enough: a replica ten times
//! slower than the others still gets its share of in-flight calls, and each of those is slow, so
//! the slow tenth of calls sets the p99. Weighted by latency, a slow replica gets a call only
//! when the others are that much busier; its estimate decays while it gets none, so it is probed
//! again now and then and returns to full use once it is fast again.
//!
//! Plain least-outstanding and random (affinetes' balancing) remain, to compare against.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How a pool spreads calls over its replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balancing {
    /// The replica with the lowest (calls in flight + 1) × recent latency; ties go to a random
    /// one of them.
    #[default]
    LeastLoaded,
    /// The replica with the fewest calls in flight, whatever its latency.
    LeastOutstanding,
    /// Any serving replica, uniformly at random, whatever it is doing.
    Random,
}

impl std::str::FromStr for Balancing {
    type Err = String;

    fn from_str(text: &str) -> Result<Balancing, String> {
        match text {
            "least-loaded" => Ok(Balancing::LeastLoaded),
            "least-outstanding" => Ok(Balancing::LeastOutstanding),
            "random" => Ok(Balancing::Random),
            other => Err(format!("`{other}` is no balancing: least-loaded, least-outstanding or random")),
        }
    }
}

/// What the chooser sees of one replica.
pub(super) trait Candidate {
    /// Calls in flight on it now.
    fn outstanding(&self) -> usize;
    /// Its recent latency in seconds, decayed to now (0 before its first call).
    fn latency(&self) -> f64;
}

/// How fast a latency estimate forgets: after about this long without a call, a slow replica's
/// estimate has fallen far enough for it to be tried again.
const DECAY: Duration = Duration::from_secs(2);

/// A peak-sensitive exponentially weighted moving average of a replica's latency: a sample above
/// the estimate replaces it at once (a replica turning slow is seen on its first slow call);
/// below, it is averaged in, weighted by the time since the last sample; with no samples, the
/// estimate decays toward zero.
#[derive(Debug, Clone, Copy)]
pub(super) struct PeakEwma {
    estimate: f64,
    at: Instant,
}

impl Default for PeakEwma {
    fn default() -> PeakEwma {
        PeakEwma { estimate: 0.0, at: Instant::now() }
    }
}

impl PeakEwma {
    /// Takes one call's latency.
    pub fn observe(&mut self, latency: Duration) {
        let now = Instant::now();
        let sample = latency.as_secs_f64();
        let decay = (-(now - self.at).as_secs_f64() / DECAY.as_secs_f64()).exp();
        self.estimate = if sample > self.estimate { sample } else { self.estimate * decay + sample * (1.0 - decay) };
        self.at = now;
    }

    /// The estimate decayed to now.
    pub fn now(&self) -> f64 {
        self.estimate * (-self.at.elapsed().as_secs_f64() / DECAY.as_secs_f64()).exp()
    }
}

/// The index of the replica to use among `candidates` (serving ones, not yet tried by this
/// call); None when there are none.
pub(super) fn choose<C: Candidate>(candidates: &[C], balancing: Balancing) -> Option<usize> {
    if candidates.is_empty() {
        return None;
    }
    let start = (next_random() % candidates.len() as u64) as usize;
    // Scanning from a random start breaks ties at random, so equal replicas share the load.
    let in_turn = (0..candidates.len()).map(|i| (start + i) % candidates.len());
    match balancing {
        Balancing::Random => Some(start),
        Balancing::LeastOutstanding => in_turn.min_by_key(|&i| candidates[i].outstanding()),
        Balancing::LeastLoaded => in_turn.min_by(|&a, &b| load(&candidates[a]).total_cmp(&load(&candidates[b]))),
    }
}

/// A replica's load: its calls in flight and the one to come, each costing its recent latency.
/// Before any latency is known every replica counts as 1 ms a call, so calls in flight decide.
fn load<C: Candidate>(candidate: &C) -> f64 {
    let latency = candidate.latency().max(1e-3);
    latency * (candidate.outstanding() + 1) as f64
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

    struct Busy(usize, f64);

    impl Candidate for Busy {
        fn outstanding(&self) -> usize {
            self.0
        }
        fn latency(&self) -> f64 {
            self.1
        }
    }

    #[test]
    fn the_least_busy_replica_is_chosen() {
        let replicas = [Busy(3, 0.01), Busy(0, 0.01), Busy(7, 0.01)];
        for balancing in [Balancing::LeastOutstanding, Balancing::LeastLoaded] {
            for _ in 0..50 {
                assert_eq!(choose(&replicas, balancing), Some(1));
            }
        }
        assert_eq!(choose::<Busy>(&[], Balancing::LeastOutstanding), None);
    }

    #[test]
    fn a_slow_replica_gets_calls_only_when_the_others_are_that_much_busier() {
        // Ten times slower: idle, it still costs more than a fast one with 8 calls in flight.
        let replicas = [Busy(2, 0.010), Busy(0, 0.100), Busy(2, 0.010)];
        assert_ne!(choose(&replicas, Balancing::LeastLoaded), Some(1));
        assert_eq!(choose(&replicas, Balancing::LeastOutstanding), Some(1), "counting calls alone picks the slow one");
        let swamped = [Busy(10, 0.010), Busy(0, 0.100)];
        assert_eq!(choose(&swamped, Balancing::LeastLoaded), Some(1));
    }

    #[test]
    fn the_estimate_jumps_to_a_slow_sample_and_decays_without_samples() {
        let mut ewma = PeakEwma::default();
        ewma.observe(Duration::from_millis(10));
        assert!((ewma.now() - 0.010).abs() < 1e-3, "{}", ewma.now());
        ewma.observe(Duration::from_millis(100));
        assert!(ewma.now() > 0.099, "a slow call is seen at once: {}", ewma.now());
        ewma.at -= DECAY * 3;
        assert!(ewma.now() < 0.006, "after three decay times the estimate is a twentieth: {}", ewma.now());
        // A fast sample right after a slow one moves the estimate only a little.
        let mut ewma = PeakEwma::default();
        ewma.observe(Duration::from_millis(100));
        ewma.observe(Duration::from_millis(10));
        assert!(ewma.now() > 0.09, "{}", ewma.now());
    }

    #[test]
    fn ties_and_random_balancing_spread_over_every_replica() {
        for balancing in [Balancing::LeastLoaded, Balancing::LeastOutstanding, Balancing::Random] {
            let replicas = [Busy(1, 0.01), Busy(1, 0.01), Busy(1, 0.01), Busy(1, 0.01)];
            let mut seen = [0usize; 4];
            for _ in 0..4000 {
                seen[choose(&replicas, balancing).unwrap()] += 1;
            }
            assert!(seen.iter().all(|&n| n > 800), "{balancing:?}: {seen:?}");
        }
    }
}
