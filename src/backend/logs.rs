//! [`LogRing`]: the last lines an environment wrote, kept to explain a failed start or a death,
//! and passed on to tracing (target `rayfine::env`) as they come.

use std::collections::VecDeque;

use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// How many lines are kept.
const CAPACITY: usize = 200;

/// The last [`CAPACITY`] lines of an environment's log. A plain mutex: nothing is awaited while
/// it is held.
#[derive(Debug)]
pub(crate) struct LogRing {
    /// The environment's name, prefixed to each traced line.
    name: String,
    lines: Mutex<VecDeque<String>>,
}

impl LogRing {
    /// An empty ring for environment `name`.
    pub fn new(name: &str) -> LogRing {
        LogRing { name: name.to_string(), lines: Mutex::new(VecDeque::with_capacity(CAPACITY)) }
    }

    /// Keeps `line` (dropping the oldest when full) and traces it.
    pub fn push(&self, line: String) {
        tracing::info!(target: "rayfine::env", "[{}] {line}", self.name);
        let mut lines = self.lines.lock();
        if lines.len() == CAPACITY {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// The last `n` lines, oldest first.
    pub fn last(&self, n: usize) -> Vec<String> {
        let lines = self.lines.lock();
        lines.iter().skip(lines.len().saturating_sub(n)).cloned().collect()
    }

    /// Reads `reader` line by line into the ring until it ends.
    pub async fn collect(&self, reader: impl AsyncRead + Unpin) {
        let mut lines = BufReader::new(reader).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            self.push(line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_last_lines_in_order() {
        let ring = LogRing::new("t");
        for i in 0..CAPACITY + 5 {
            ring.push(format!("line {i}"));
        }
        assert_eq!(ring.last(2), vec![format!("line {}", CAPACITY + 3), format!("line {}", CAPACITY + 4)]);
        assert_eq!(ring.last(usize::MAX).len(), CAPACITY);
        assert_eq!(ring.last(usize::MAX)[0], "line 5");
    }
}
