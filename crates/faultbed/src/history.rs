//! The recorded history of one scenario run: client operations and faults.
//!
//! Every timestamp is nanoseconds since the run's origin `Instant`
//! (CLOCK_MONOTONIC), shared by all clients and the fault injector of one
//! process, so real-time precedence between any two events is exact.
//! This module is plain data plus JSON-lines (de)serialisation; no I/O
//! beyond the writer/reader it is given.

use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

/// What a client knows about one write after it returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The server acknowledged the commit.
    Ok,
    /// The server certainly did not commit (read-only, starting up, ...).
    Failed,
    /// The statement was sent but no answer came (timeout, reset): it may or
    /// may not have committed.
    Unknown,
}

/// One write operation: insert of a unique id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    pub id: i64,
    pub client: u32,
    pub invoke_ns: u64,
    pub complete_ns: u64,
    pub outcome: Outcome,
    /// Server address the client talked to.
    pub node: String,
    /// Timeline the server was writing on (from its WAL file name), if it answered.
    pub timeline: Option<u32>,
    /// WAL insert position the server returned, as text (`0/3000060`).
    pub lsn: Option<String>,
    /// SQLSTATE or error text for failed/unknown operations.
    pub error: Option<String>,
}

/// One injected fault or heal, for the timeline of the report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultEvent {
    pub at_ns: u64,
    pub what: String,
}

/// Writes `items` as JSON lines.
pub fn write_jsonl<T: Serialize>(mut w: impl Write, items: &[T]) -> std::io::Result<()> {
    for item in items {
        serde_json::to_writer(&mut w, item)?;
        w.write_all(b"\n")?;
    }
    w.flush()
}

/// Reads JSON lines written by [`write_jsonl`]; blank lines are skipped.
pub fn read_jsonl<T: for<'de> Deserialize<'de>>(r: impl BufRead) -> std::io::Result<Vec<T>> {
    let mut out = Vec::new();
    for line in r.lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(serde_json::from_str(&line)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_round_trip_through_jsonl() {
        let ops = vec![Op {
            id: 7,
            client: 1,
            invoke_ns: 10,
            complete_ns: 20,
            outcome: Outcome::Unknown,
            node: "10.213.1.11".into(),
            timeline: Some(2),
            lsn: Some("0/3000060".into()),
            error: Some("timeout".into()),
        }];
        let mut buf = Vec::new();
        write_jsonl(&mut buf, &ops).unwrap();
        assert!(String::from_utf8_lossy(&buf).contains("\"outcome\":\"unknown\""));
        let back: Vec<Op> = read_jsonl(&buf[..]).unwrap();
        assert_eq!(back, ops);
    }
}
