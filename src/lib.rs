//! Rayfine turns an environment folder (`env.py`, usually a `Dockerfile`) into an isolated service
//! and lets a program call it like a local object.
//!
//! - [`server`]: the generic `/call` server injected into every function-based environment.
//! - [`protocol`]: the wire types, shared by the server and the client.

pub mod protocol;
pub mod server;
