//! The pure HA decision engine.
//!
//! `decide(&Observation, &Memory) -> Decision` turns what the agent observed in
//! one cycle into the list of actions to run and the one-line reason that is
//! logged and shown by the REST API. It never performs I/O, never reads a
//! clock (time is the `now_ms` input, a monotonic millisecond counter) and
//! never depends on tokio, etcd or PostgreSQL client crates, so every branch is
//! unit-tested with exact action lists and property-tested over random
//! observation sequences.
//!
//! Safety rules the engine owns:
//! * a node only acts as primary while it holds the leader key *and* its last
//!   successful lease renewal (by send time) is younger than the fence deadline;
//! * a primary that cannot confirm its lease demotes before the lease could
//!   have expired in etcd, whatever etcd says, and never renews or races in
//!   that cycle;
//! * a primary whose key sits on a lease with a fresh confirmed renewal keeps
//!   running through an unreachable store or a slow cycle: nobody else can
//!   hold the key while that lease lives. After a real freeze the renewal is
//!   stale (the keepalive task was frozen too), so the first action is to fence.

mod bootstrap;
mod decide;
mod fencing;
mod follower;
mod leader;
mod observation;
mod race;
mod recover;
mod sync;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod testkit;
#[cfg(test)]
mod tests;

pub use decide::decide;
pub use observation::{
    Action, DcsView, Decision, DemoteMode, Memory, NodeIdentity, Observation, OperatorRequest,
    PeerReport, SyncBarrier, SyncWrite, TaskKind, TaskOutcome,
};
