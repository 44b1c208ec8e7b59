//! Affinity keys: which replica holds which episode. A call with a key goes where the key's first
//! call went, so a stateful environment sees the whole episode; the map is bounded, so a training
//! run that never ends its keys does not grow it without limit.

use std::collections::{HashMap, VecDeque};

/// Most keys remembered; past this the oldest are forgotten (their next call picks afresh).
const MAX_KEYS: usize = 1 << 16;

/// Keys and the replica (by its sequence number) each is bound to.
#[derive(Debug, Default)]
pub(super) struct Affinity {
    bound: HashMap<String, u64>,
    /// Keys in the order they were bound, for forgetting the oldest; may hold keys since
    /// released, skipped when reached.
    order: VecDeque<String>,
}

impl Affinity {
    /// The replica `key` is bound to, if any.
    pub fn replica_of(&self, key: &str) -> Option<u64> {
        self.bound.get(key).copied()
    }

    /// Binds `key` to replica `seq`.
    pub fn bind(&mut self, key: &str, seq: u64) {
        if self.bound.insert(key.to_string(), seq).is_none() {
            self.order.push_back(key.to_string());
        }
        while self.bound.len() > MAX_KEYS {
            let Some(oldest) = self.order.pop_front() else { break };
            self.bound.remove(&oldest);
        }
        // Released keys leave stale entries in `order`; drop them once they dominate.
        if self.order.len() > 2 * MAX_KEYS {
            let bound = &self.bound;
            self.order.retain(|key| bound.contains_key(key));
        }
    }

    /// Forgets `key`.
    pub fn release(&mut self, key: &str) {
        self.bound.remove(key);
    }

    /// How many keys are bound.
    pub fn len(&self) -> usize {
        self.bound.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_stay_bound_until_released() {
        let mut affinity = Affinity::default();
        affinity.bind("episode-1", 7);
        affinity.bind("episode-2", 8);
        assert_eq!(affinity.replica_of("episode-1"), Some(7));
        affinity.release("episode-1");
        assert_eq!(affinity.replica_of("episode-1"), None);
        assert_eq!(affinity.replica_of("episode-2"), Some(8));
    }

    #[test]
    fn the_oldest_keys_are_forgotten_past_the_bound() {
        let mut affinity = Affinity::default();
        for i in 0..MAX_KEYS + 10 {
            affinity.bind(&format!("k{i}"), 1);
            if i % 2 == 0 {
                affinity.release(&format!("k{i}"));
            }
        }
        assert!(affinity.len() <= MAX_KEYS);
        assert_eq!(affinity.replica_of(&format!("k{}", MAX_KEYS + 9)), Some(1));
        for i in 0..3 * MAX_KEYS {
            affinity.bind(&format!("m{i}"), 2);
        }
        assert_eq!(affinity.len(), MAX_KEYS);
        assert!(affinity.order.len() <= 2 * MAX_KEYS + 1, "{}", affinity.order.len());
    }
}
