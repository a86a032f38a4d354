//! The decision function (implementation in progress).

use crate::observation::{Decision, Memory, Observation};

/// Decides what this node does in this cycle.
pub fn decide(obs: &Observation, memory: &Memory) -> Decision {
    let _ = obs;
    Decision { actions: Vec::new(), reason: String::new(), memory: memory.clone() }
}
