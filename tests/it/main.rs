//! Integration tests: one binary, helper modules, a private folder per test.

mod cli;
mod client;
mod server;
mod util;
