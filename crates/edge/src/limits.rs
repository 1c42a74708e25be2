//! Limits that keep bad clients from hurting the edge: how long a client may take over a
//! request head, a body and an idle keep-alive connection, how long a machine may take to start
//! its answer, and how many connections the edge and each client address may hold. Each has a
//! default as tight as nginx's or tighter, and each can be set (`colo up` and `colo edge` flags).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The edge's limits on client connections and machines' answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// A request head must arrive whole within this long of its first byte (nginx's
    /// client_header_timeout is 60 s); a client past it gets 408 and the connection closes.
    pub head_timeout: Duration,
    /// Each read of a request body must bring bytes within this long (nginx's
    /// client_body_timeout is 60 s).
    pub body_timeout: Duration,
    /// A keep-alive connection with no request in flight is closed after this long (nginx's
    /// keepalive_timeout is 75 s).
    pub idle_timeout: Duration,
    /// A machine must start its answer (the response head) within this long of the request
    /// reaching it; past it the request fails with 504. Long: a non-streaming generation sends
    /// its head only when the whole text is done.
    pub upstream_head_timeout: Duration,
    /// Client connections the edge holds at most; one more is answered 503 and closed.
    pub max_connections: usize,
    /// Client connections one address may hold at most; one more is answered 503 and closed.
    pub max_connections_per_addr: usize,
}

impl Limits {
    /// The defaults, for settings that name them.
    pub const DEFAULT: Limits = Limits {
        head_timeout: Duration::from_secs(30),
        body_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(60),
        upstream_head_timeout: Duration::from_secs(600),
        max_connections: 50_000,
        max_connections_per_addr: 4_096,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

/// The client connections the edge holds, in all and per address.
#[derive(Debug, Default)]
pub(crate) struct Connections {
    total: AtomicUsize,
    by_addr: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection; it stops counting when dropped.
#[derive(Debug)]
pub(crate) struct Admitted {
    connections: Arc<Connections>,
    addr: IpAddr,
}

/// Why a connection was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The edge holds `max_connections` already.
    Full(usize),
    /// The client's address holds `max_connections_per_addr` already.
    AddrFull(usize),
}

// === impl Connections ===

impl Connections {
    /// Counts a new connection from `addr`, or says which limit it would pass.
    pub(crate) fn admit(self: &Arc<Self>, addr: IpAddr, limits: &Limits) -> Result<Admitted, Refused> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= limits.max_connections {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::Full(limits.max_connections));
        }
        let mut by_addr = self.by_addr.lock().unwrap_or_else(|p| p.into_inner());
        let held = by_addr.entry(addr).or_insert(0);
        if *held >= limits.max_connections_per_addr {
            drop(by_addr);
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::AddrFull(limits.max_connections_per_addr));
        }
        *held += 1;
        Ok(Admitted {
            connections: self.clone(),
            addr,
        })
    }

    /// Connections held now.
    pub(crate) fn held(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut by_addr = self.connections.by_addr.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(held) = by_addr.get_mut(&self.addr) {
            *held -= 1;
            if *held == 0 {
                by_addr.remove(&self.addr);
            }
        }
        drop(by_addr);
        self.connections.total.fetch_sub(1, Ordering::AcqRel);
    }
}

// === impl Refused ===

impl Refused {
    /// The whole answer to a refused connection: 503 with Retry-After, closed after.
    pub(crate) fn response(self) -> Vec<u8> {
        let message = match self {
            Refused::Full(n) => format!("the edge holds its limit of {n} connections; retry shortly"),
            Refused::AddrFull(n) => format!("your address holds this edge's limit of {n} connections; reuse them, or close some"),
        };
        let body =
            serde_json::json!({"error": {"message": message, "type": "unavailable_error", "param": null, "code": "too_many_connections"}})
                .to_string();
        format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_capped_in_all_and_per_address() {
        let limits = Limits {
            max_connections: 3,
            max_connections_per_addr: 2,
            ..Limits::default()
        };
        let connections = Arc::new(Connections::default());
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = connections.admit(a, &limits).unwrap();
        let _second = connections.admit(a, &limits).unwrap();
        assert_eq!(connections.admit(a, &limits).unwrap_err(), Refused::AddrFull(2));
        let _third = connections.admit(b, &limits).unwrap();
        assert_eq!(connections.admit(b, &limits).unwrap_err(), Refused::Full(3));
        assert_eq!(connections.held(), 3);
        drop(first);
        assert_eq!(connections.held(), 2);
        let _again = connections.admit(a, &limits).unwrap();
        let answer = String::from_utf8(Refused::Full(3).response()).unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 503") && answer.contains("too_many_connections"),
            "{answer}"
        );
    }
}
