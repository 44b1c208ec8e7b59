//! Integration tests: one binary, helper modules, a private folder per test.

mod cli;
mod client;
mod docker;
mod docker_util;
mod faults;
mod hostile;
mod hosts;
mod lifecycle;
mod openenv;
mod openenv_client;
mod python_package;
mod python_worker;
mod second_engine;
mod ssh_hosts;
mod server;
mod stalled_engine;
mod swarm;
mod util;
mod warm_pool;
