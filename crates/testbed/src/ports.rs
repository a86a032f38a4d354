//! Free loopback ports for test servers.
//!
//! A port is found by binding 127.0.0.1:0 and reading what the kernel chose;
//! the socket is closed before the port is handed out, so another process may
//! in theory take it first (the window is small; callers that need certainty
//! must bind the listener themselves and pass it on). Never returns a fixed port.

use std::net::TcpListener;

/// One free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` distinct free TCP ports on 127.0.0.1.
///
/// All listeners are held until every port is known, so the kernel cannot hand
/// out the same port twice within one call.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    listeners
        .iter()
        .map(|l| {
            l.local_addr()
                .expect("local_addr of a bound listener")
                .port()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn ports_are_distinct_and_nonzero() {
        let ports = free_ports(8);
        let unique: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(unique.len(), 8);
        assert!(ports.iter().all(|p| *p != 0));
        assert_ne!(free_port(), 0);
    }
}
