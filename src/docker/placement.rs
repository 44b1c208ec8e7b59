//! Choosing the engine each new environment runs on, by free capacity: the one with the fewest
//! running containers per CPU, counting the starts this process has under way there (which the
//! engine does not count yet), so that concurrent `load_env`s and a pool's replicas spread out.

use std::collections::HashMap;
use std::time::Duration;

use once_cell::sync::Lazy;
use parking_lot::Mutex;

use super::engine::{Capacity, Engine};
use super::host::DockerHost;
use crate::error::{Error, Result};

/// How long an engine may take to say what it holds before it is left out of this placement.
const CAPACITY_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts under way per engine: placed, not yet running (or failed).
static STARTING: Lazy<Mutex<HashMap<DockerHost, u32>>> = Lazy::new(|| Mutex::new(HashMap::new()));

/// One placed start: counted against its engine until dropped (the start ended, either way).
#[derive(Debug)]
pub(crate) struct Placed {
    /// The engine chosen.
    pub host: DockerHost,
}

impl Drop for Placed {
    fn drop(&mut self) {
        let mut starting = STARTING.lock();
        if let Some(count) = starting.get_mut(&self.host) {
            *count = count.saturating_sub(1);
        }
    }
}

/// Places `count` starts: on Swarm, all on the first host (the manager; Swarm's scheduler picks
/// the nodes); otherwise over `hosts` by free capacity ([`place`]).
pub(crate) async fn place_for(mode: crate::client::Mode, hosts: &[DockerHost], count: usize) -> Result<Vec<Placed>> {
    match (mode, hosts.first()) {
        (crate::client::Mode::Swarm, Some(manager)) => {
            if hosts.len() > 1 {
                tracing::warn!("Swarm mode uses the first host named, {manager}, as the manager; the others are not used");
            }
            Ok(assign(vec![(manager.clone(), Capacity { cpus: 1, ..Capacity::default() })], count))
        }
        _ => place(hosts, count).await,
    }
}

/// Places `count` starts over `hosts` by free capacity. An engine that does not answer is left
/// out (with a warning); an error names each engine's problem when none answers. One host needs
/// no question.
async fn place(hosts: &[DockerHost], count: usize) -> Result<Vec<Placed>> {
    if hosts.is_empty() {
        return Err(Error::InvalidInput("no Docker host to place environments on".into()));
    }
    if hosts.len() == 1 {
        return Ok(assign(vec![(hosts[0].clone(), Capacity { cpus: 1, ..Capacity::default() })], count));
    }
    let asked = hosts.iter().map(|host| async move {
        let capacity = tokio::time::timeout(CAPACITY_TIMEOUT, async { Engine::connect_to(host).await?.capacity().await }).await;
        (host.clone(), capacity)
    });
    let mut answered = Vec::new();
    let mut problems = Vec::new();
    for (host, capacity) in futures_util::future::join_all(asked).await {
        match capacity {
            Ok(Ok(capacity)) => answered.push((host, capacity)),
            Ok(Err(err)) => problems.push(format!("{host}: {err}")),
            Err(_) => problems.push(format!("{host}: no answer within {} s", CAPACITY_TIMEOUT.as_secs())),
        }
    }
    if answered.is_empty() {
        return Err(Error::InvalidInput(format!("no Docker host answers: {}", problems.join("; "))));
    }
    for problem in &problems {
        tracing::warn!("left out of placement: {problem}");
    }
    Ok(assign(answered, count))
}

/// Greedy placement: each start goes where running plus starting containers per CPU is lowest
/// (the earlier host on a tie).
fn assign(mut hosts: Vec<(DockerHost, Capacity)>, count: usize) -> Vec<Placed> {
    let mut starting = STARTING.lock();
    for (host, capacity) in &mut hosts {
        capacity.running += starting.get(host).copied().unwrap_or(0);
    }
    let mut placed = Vec::with_capacity(count);
    for _ in 0..count {
        let (host, capacity) = hosts
            .iter_mut()
            .min_by(|(_, a), (_, b)| (f64::from(a.running) / f64::from(a.cpus)).total_cmp(&(f64::from(b.running) / f64::from(b.cpus))))
            .expect("at least one host");
        capacity.running += 1;
        *starting.entry(host.clone()).or_default() += 1;
        placed.push(Placed { host: host.clone() });
    }
    placed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str) -> DockerHost {
        DockerHost::Tcp { host: name.into(), port: 2375, certs: None }
    }

    #[test]
    fn starts_go_where_fewest_containers_run_per_cpu() {
        let hosts = vec![(host("busy"), Capacity { cpus: 2, memory_bytes: 0, running: 6 }), (host("big"), Capacity { cpus: 8, memory_bytes: 0, running: 8 })];
        let placed: Vec<String> = assign(hosts, 6).iter().map(|p| p.host.to_string()).collect();
        // big: 1/CPU, busy: 3/CPU; big takes starts until it reaches 3/CPU (16 more), so all six.
        assert!(placed.iter().all(|h| h.contains("big")), "{placed:?}");
    }

    #[test]
    fn starts_under_way_count_until_they_end() {
        let two = || vec![(host("a1"), Capacity { cpus: 1, memory_bytes: 0, running: 0 }), (host("b1"), Capacity { cpus: 1, memory_bytes: 0, running: 0 })];
        let first = assign(two(), 1);
        assert_eq!(first[0].host, host("a1"));
        // a1 now has a start under way, so the next goes to b1, until that start ends.
        let second = assign(two(), 1);
        assert_eq!(second[0].host, host("b1"));
        drop((first, second));
        assert_eq!(assign(two(), 1)[0].host, host("a1"));
    }
}
