//! Named prepared statements across pooled server connections (transaction
//! pooling).
//!
//! A client prepares `P_1` on whatever server connection it holds; its next
//! transaction may run on another one. So the proxy names statements on the
//! servers itself: `pgw_<hash of query and parameter types>`, the same name on
//! every connection for the same statement, and rewrites the client's
//! Parse/Bind/Describe/Close to those names:
//! - Parse of a statement the server already holds becomes a Parse of the
//!   unnamed statement (the client still gets its ParseComplete, in order);
//! - Bind/Describe of a statement the current server lacks is preceded by a
//!   separate Parse+Sync round trip, done before the batch is forwarded
//!   ([`Rewrite::prepare_first`]);
//! - Close of a named statement only forgets the client's name (other
//!   clients may use the server's statement); the server gets a Close of a
//!   name that does not exist, which PostgreSQL answers with CloseComplete.
//!
//! Pure: works on whole frames in memory, no I/O.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};

use bytes::BytesMut;
use pgwarden_wire::frame::split_frame;
use pgwarden_wire::frontend::{tag, FrontendMessage, Target};
use pgwarden_wire::WireError;

/// A statement as the server knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementDef {
    pub server_name: String,
    pub query: String,
    pub param_types: Vec<i32>,
}

impl StatementDef {
    pub fn new(query: &str, param_types: &[i32]) -> StatementDef {
        // A stable hash (SipHash with fixed keys) so every connection and
        // every proxy thread derives the same name for the same statement.
        #[allow(deprecated)]
        let mut h = std::hash::SipHasher::new_with_keys(0x7067_7761_7264_656e, 0x7374_6d74_7321);
        query.hash(&mut h);
        param_types.hash(&mut h);
        StatementDef {
            server_name: format!("pgw_{:016x}", h.finish()),
            query: query.to_string(),
            param_types: param_types.to_vec(),
        }
    }

    /// The Parse message that creates it on a server.
    pub fn parse_message(&self) -> FrontendMessage {
        FrontendMessage::Parse {
            statement: self.server_name.clone(),
            query: self.query.clone(),
            param_types: self.param_types.clone(),
        }
    }
}

/// The client's statement names.
#[derive(Debug, Default, Clone)]
pub struct ClientStatements {
    by_name: HashMap<String, StatementDef>,
}

impl ClientStatements {
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// The batch to forward and what must happen around it.
#[derive(Debug, Default)]
pub struct Rewrite {
    /// Bytes for the server.
    pub out: BytesMut,
    /// Statements to create on the server (Parse + Sync, answers hidden)
    /// before `out` is sent.
    pub prepare_first: Vec<StatementDef>,
    /// Requests in `out` that end with ReadyForQuery (Sync, Query, FunctionCall).
    pub syncs: u32,
    /// Extended-protocol messages after the last Sync: the server owes no
    /// ReadyForQuery for them yet.
    pub open_extended: bool,
    /// The client sent Terminate (not forwarded).
    pub terminate: bool,
}

/// A server name that no statement ever has.
const NO_STATEMENT: &str = "pgw_none";

/// Takes every complete frame off `input` and rewrites it for a server that
/// holds `server_prepared`. Incomplete trailing bytes stay in `input`.
/// `track_statements` is false in session mode (names pass through untouched).
pub fn rewrite_batch(
    input: &mut BytesMut,
    client: &mut ClientStatements,
    server_prepared: &mut HashSet<String>,
    track_statements: bool,
    max_message: usize,
) -> Result<Rewrite, WireError> {
    let mut rw = Rewrite::default();
    if let Some(fast) = pass_through(input, track_statements, max_message)? {
        return Ok(fast);
    }
    let mut open = false;
    while let Some((tag, body)) = split_frame(input, max_message)? {
        match tag {
            // Each of these is answered with ReadyForQuery.
            tag::SYNC | tag::QUERY | tag::FUNCTION_CALL => {
                rw.syncs += 1;
                open = false;
                put_raw(&mut rw.out, tag, &body);
            }
            tag::TERMINATE => {
                rw.terminate = true;
                break;
            }
            tag::PARSE | tag::BIND | tag::DESCRIBE | tag::CLOSE if track_statements => {
                open = true;
                let msg = FrontendMessage::decode(tag, &body)?;
                rewrite_message(msg, client, server_prepared, &mut rw).encode(&mut rw.out);
            }
            tag::PARSE | tag::BIND | tag::DESCRIBE | tag::CLOSE | tag::EXECUTE | tag::FLUSH => {
                open = true;
                put_raw(&mut rw.out, tag, &body);
            }
            _ => put_raw(&mut rw.out, tag, &body),
        }
    }
    rw.open_extended = open;
    Ok(rw)
}

/// The common case without a copy: no message needs rewriting (no named
/// statement, no Terminate), so the complete frames are split off as they
/// are. `None` when the slow path must run.
fn pass_through(
    input: &mut BytesMut,
    track_statements: bool,
    max_message: usize,
) -> Result<Option<Rewrite>, WireError> {
    let mut pos = 0;
    let mut syncs = 0;
    let mut open = false;
    while let Some(h) = pgwarden_wire::frame::parse_header(&input[pos..], max_message)? {
        if input.len() - pos < h.frame_len() {
            break;
        }
        match h.tag {
            tag::TERMINATE => return Ok(None),
            tag::PARSE | tag::BIND | tag::DESCRIBE | tag::CLOSE if track_statements => {
                // Unnamed statements need no rewriting: the name is the
                // first string of Parse and the second of Bind.
                let body = &input[pos + 5..pos + h.frame_len()];
                let named = match h.tag {
                    tag::PARSE => body.first() != Some(&0),
                    tag::BIND => {
                        let portal_end = body.iter().position(|b| *b == 0);
                        portal_end.is_none_or(|e| body.get(e + 1) != Some(&0))
                    }
                    // Describe/Close: kind byte, then the name.
                    _ => body.first() != Some(&b'P') && body.get(1) != Some(&0),
                };
                if named {
                    return Ok(None);
                }
                open = true;
            }
            tag::SYNC | tag::QUERY | tag::FUNCTION_CALL => {
                syncs += 1;
                open = false;
            }
            tag::PARSE | tag::BIND | tag::DESCRIBE | tag::CLOSE | tag::EXECUTE | tag::FLUSH => {
                open = true
            }
            _ => {}
        }
        pos += h.frame_len();
    }
    Ok(Some(Rewrite {
        out: input.split_to(pos),
        prepare_first: Vec::new(),
        syncs,
        open_extended: open,
        terminate: false,
    }))
}

fn put_raw(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.extend_from_slice(&[tag]);
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
}

fn rewrite_message(
    msg: FrontendMessage,
    client: &mut ClientStatements,
    server: &mut HashSet<String>,
    rw: &mut Rewrite,
) -> FrontendMessage {
    use FrontendMessage as M;
    // Makes sure the server holds the statement `name` refers to; its server name.
    let mut ensure = |name: &str, rw: &mut Rewrite| -> Option<String> {
        let def = client.by_name.get(name)?;
        if server.insert(def.server_name.clone()) {
            rw.prepare_first.push(def.clone());
        }
        Some(def.server_name.clone())
    };
    match msg {
        M::Parse {
            statement,
            query,
            param_types,
        } if !statement.is_empty() => {
            let def = StatementDef::new(&query, &param_types);
            let server_name = def.server_name.clone();
            client.by_name.insert(statement, def);
            if server.insert(server_name.clone()) {
                M::Parse {
                    statement: server_name,
                    query,
                    param_types,
                }
            } else {
                M::Parse {
                    statement: String::new(),
                    query,
                    param_types,
                }
            }
        }
        M::Bind {
            portal,
            statement,
            rest,
        } if !statement.is_empty() => match ensure(&statement, rw) {
            Some(server_name) => M::Bind {
                portal,
                statement: server_name,
                rest,
            },
            // Unknown to us: the server answers "does not exist", as it should.
            None => M::Bind {
                portal,
                statement,
                rest,
            },
        },
        M::Describe {
            target: Target::Statement,
            name,
        } if !name.is_empty() => M::Describe {
            target: Target::Statement,
            name: ensure(&name, rw).unwrap_or(name),
        },
        M::Close {
            target: Target::Statement,
            name,
        } if !name.is_empty() => {
            client.by_name.remove(&name);
            M::Close {
                target: Target::Statement,
                name: NO_STATEMENT.into(),
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgwarden_wire::MAX_MESSAGE_LEN;

    fn encode(msgs: &[FrontendMessage]) -> BytesMut {
        let mut b = BytesMut::new();
        for m in msgs {
            m.encode(&mut b);
        }
        b
    }

    fn decode_all(mut b: BytesMut) -> Vec<FrontendMessage> {
        let mut out = Vec::new();
        while let Some((t, body)) = split_frame(&mut b, MAX_MESSAGE_LEN).unwrap() {
            out.push(FrontendMessage::decode(t, &body).unwrap());
        }
        out
    }

    fn parse(name: &str, q: &str) -> FrontendMessage {
        FrontendMessage::Parse {
            statement: name.into(),
            query: q.into(),
            param_types: vec![23],
        }
    }

    fn bind(stmt: &str) -> FrontendMessage {
        FrontendMessage::Bind {
            portal: String::new(),
            statement: stmt.into(),
            rest: vec![0, 0, 0, 0, 0, 0],
        }
    }

    #[test]
    fn a_statement_moves_with_the_client_to_another_server() {
        let mut client = ClientStatements::default();
        let mut server_a = HashSet::new();
        let mut server_b = HashSet::new();
        let q = "select $1";
        let def = StatementDef::new(q, &[23]);

        // Transaction 1 on server A: Parse P_1, Bind, Execute, Sync.
        let mut input = encode(&[
            parse("P_1", q),
            bind("P_1"),
            FrontendMessage::Execute {
                portal: String::new(),
                max_rows: 0,
            },
            FrontendMessage::Sync,
        ]);
        let rw = rewrite_batch(
            &mut input,
            &mut client,
            &mut server_a,
            true,
            MAX_MESSAGE_LEN,
        )
        .unwrap();
        assert!(input.is_empty());
        assert_eq!(
            (rw.syncs, rw.open_extended, rw.terminate),
            (1, false, false)
        );
        assert!(rw.prepare_first.is_empty());
        let sent = decode_all(rw.out);
        assert_eq!(sent[0], parse(&def.server_name, q));
        assert_eq!(sent[1], bind(&def.server_name));
        assert!(server_a.contains(&def.server_name));

        // Transaction 2 on server B: only Bind; B must prepare it first.
        let mut input = encode(&[bind("P_1"), FrontendMessage::Sync]);
        let rw = rewrite_batch(
            &mut input,
            &mut client,
            &mut server_b,
            true,
            MAX_MESSAGE_LEN,
        )
        .unwrap();
        assert_eq!(rw.prepare_first, vec![def.clone()]);
        assert_eq!(decode_all(rw.out)[0], bind(&def.server_name));

        // Another client parsing the same query on A reuses it: unnamed Parse.
        let mut other = ClientStatements::default();
        let mut input = encode(&[parse("S_9", q), FrontendMessage::Sync]);
        let rw =
            rewrite_batch(&mut input, &mut other, &mut server_a, true, MAX_MESSAGE_LEN).unwrap();
        assert_eq!(decode_all(rw.out)[0], parse("", q));
    }

    #[test]
    fn close_forgets_only_the_client_name_and_unknown_names_pass_through() {
        let mut client = ClientStatements::default();
        let mut server = HashSet::new();
        let mut input = encode(&[
            parse("a", "select 1"),
            FrontendMessage::Close {
                target: Target::Statement,
                name: "a".into(),
            },
            bind("never_prepared"),
            FrontendMessage::Flush,
        ]);
        let rw =
            rewrite_batch(&mut input, &mut client, &mut server, true, MAX_MESSAGE_LEN).unwrap();
        let sent = decode_all(rw.out);
        assert_eq!(
            sent[1],
            FrontendMessage::Close {
                target: Target::Statement,
                name: NO_STATEMENT.into()
            }
        );
        assert_eq!(sent[2], bind("never_prepared"));
        assert!(client.is_empty());
        assert_eq!(server.len(), 1, "the server keeps the statement for others");
        assert!(rw.open_extended && rw.syncs == 0);
    }

    #[test]
    fn partial_frames_wait_and_terminate_stops_the_batch() {
        let mut client = ClientStatements::default();
        let mut server = HashSet::new();
        let full = encode(&[FrontendMessage::Query("select 1".into())]);
        let mut input = BytesMut::from(&full[..full.len() - 2]);
        let rw =
            rewrite_batch(&mut input, &mut client, &mut server, true, MAX_MESSAGE_LEN).unwrap();
        assert!(rw.out.is_empty() && rw.syncs == 0);
        input.extend_from_slice(&full[full.len() - 2..]);
        FrontendMessage::Terminate.encode(&mut input);
        let rw =
            rewrite_batch(&mut input, &mut client, &mut server, true, MAX_MESSAGE_LEN).unwrap();
        assert_eq!(rw.syncs, 1);
        assert!(rw.terminate);
        assert_eq!(
            decode_all(rw.out),
            vec![FrontendMessage::Query("select 1".into())]
        );
    }

    #[test]
    fn unnamed_statements_and_simple_queries_pass_through_unchanged() {
        let mut client = ClientStatements::default();
        let mut server = HashSet::new();
        let msgs = [
            parse("", "select $1"),
            bind(""),
            FrontendMessage::Describe {
                target: Target::Portal,
                name: String::new(),
            },
            FrontendMessage::Execute {
                portal: String::new(),
                max_rows: 0,
            },
            FrontendMessage::Sync,
            FrontendMessage::Query("select 1".into()),
            parse("", "select 2"),
        ];
        let bytes = encode(&msgs);
        let mut input = bytes.clone();
        input.extend_from_slice(b"Q\0\0"); // a partial frame stays behind
        let rw =
            rewrite_batch(&mut input, &mut client, &mut server, true, MAX_MESSAGE_LEN).unwrap();
        assert_eq!(rw.out, bytes);
        assert_eq!(&input[..], b"Q\0\0");
        assert_eq!((rw.syncs, rw.open_extended), (2, true));
        assert!(server.is_empty() && client.is_empty());
    }

    #[test]
    fn session_mode_leaves_names_alone() {
        let mut client = ClientStatements::default();
        let mut server = HashSet::new();
        let msgs = [
            parse("P_1", "select $1"),
            bind("P_1"),
            FrontendMessage::Sync,
        ];
        let mut input = encode(&msgs);
        let rw =
            rewrite_batch(&mut input, &mut client, &mut server, false, MAX_MESSAGE_LEN).unwrap();
        assert_eq!(decode_all(rw.out), msgs.to_vec());
        assert!(server.is_empty());
    }

    #[test]
    fn oversized_and_malformed_frames_are_errors() {
        let mut client = ClientStatements::default();
        let mut server = HashSet::new();
        let mut input = BytesMut::from(&b"Q\x7f\xff\xff\xffxx"[..]);
        assert!(rewrite_batch(&mut input, &mut client, &mut server, true, 1 << 20).is_err());
        let mut input = BytesMut::from(&b"P\x00\x00\x00\x06ab"[..]);
        assert!(rewrite_batch(&mut input, &mut client, &mut server, true, 1 << 20).is_err());
    }
}
