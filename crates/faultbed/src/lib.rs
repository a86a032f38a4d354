//! Fault-injection testbed for pgwarden (tests and benchmarks only, never shipped).
//!
//! Layout: [`bed`] builds N hosts as network namespaces behind a bridge, each
//! with its own cgroup, etcd member, PostgreSQL and agent, and injects faults;
//! [`workload`] records client operations on one monotonic clock; [`checker`]
//! is the pure verdict over that history and the final per-node state;
//! [`scenario`] is the F01-F20 matrix and its runner.
//!
//! It must only use addresses of the namespaces it creates and loopback, bound
//! every wait, and tear down everything it created (also after a panic).

pub mod bed;
pub mod checker;
pub mod history;
pub mod scenario;
pub mod workload;
