//! How many connections a server holds at once: a bound on those that have not
//! authenticated yet (cheap for a peer to open, so a flood of them must not crowd out the
//! rest) and a bound on all of them (derived from the descriptor limit, so a flood cannot
//! take the descriptors spill files, segments and one-sided workers need).
//!
//! The accept loop asks the [`ConnectionGate`] before serving a new connection: an
//! [`Admission`] holds its place until dropped, and is told when its connection
//! authenticated; a [`Refusal`] means the connection is closed at once. Pure counting: no
//! I/O, no clock.

use std::sync::{Arc, Mutex};

/// The bounds a [`ConnectionGate`] enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open and not yet authenticated (no successful `Hello`).
    pub max_pending: usize,
    /// Connections open, authenticated or not.
    pub max_open: usize,
}

/// Why a new connection was closed at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Too many connections have not authenticated yet.
    #[error("{0} connections are waiting for their Hello already")]
    TooManyPending(usize),
    /// Too many connections are open.
    #[error("{0} connections are open already")]
    TooManyOpen(usize),
}

/// Connections counted now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionCounts {
    /// Open, authenticated or not.
    pub open: usize,
    /// Of which not authenticated yet.
    pub pending: usize,
}

impl ConnectionCounts {
    /// Counts a new, unauthenticated connection, unless `limits` refuse it.
    fn admit(&mut self, limits: &ConnectionLimits) -> Result<(), Refusal> {
        if self.open >= limits.max_open {
            return Err(Refusal::TooManyOpen(self.open));
        }
        if self.pending >= limits.max_pending {
            return Err(Refusal::TooManyPending(self.pending));
        }
        self.open += 1;
        self.pending += 1;
        Ok(())
    }
}

/// Counts the connections of every listener of a server against [`ConnectionLimits`].
#[derive(Debug)]
pub struct ConnectionGate {
    limits: ConnectionLimits,
    counts: Mutex<ConnectionCounts>,
}

impl ConnectionGate {
    /// A gate enforcing `limits`, shared by the listeners it is handed to.
    pub fn new(limits: ConnectionLimits) -> Arc<ConnectionGate> {
        Arc::new(ConnectionGate {
            limits,
            counts: Mutex::new(ConnectionCounts::default()),
        })
    }

    /// The bounds enforced.
    pub fn limits(&self) -> ConnectionLimits {
        self.limits
    }

    /// Connections counted now.
    pub fn counts(&self) -> ConnectionCounts {
        *self.lock()
    }

    /// Lets a new connection in (as not authenticated), or says why not.
    pub fn admit(self: &Arc<Self>) -> Result<Admission, Refusal> {
        self.lock().admit(&self.limits)?;
        Ok(Admission {
            gate: Arc::clone(self),
            pending: true,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ConnectionCounts> {
        // The counts are plain integers, consistent after every statement.
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A connection's place in its [`ConnectionGate`], given back when dropped.
#[derive(Debug)]
pub struct Admission {
    gate: Arc<ConnectionGate>,
    pending: bool,
}

impl Admission {
    /// Whether the connection has not authenticated yet.
    pub fn is_pending(&self) -> bool {
        self.pending
    }

    /// The connection authenticated: it no longer counts against the pending bound.
    pub fn authenticated(&mut self) {
        if std::mem::take(&mut self.pending) {
            self.gate.lock().pending -= 1;
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut counts = self.gate.lock();
        counts.open -= 1;
        if self.pending {
            counts.pending -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(max_pending: usize, max_open: usize) -> Arc<ConnectionGate> {
        ConnectionGate::new(ConnectionLimits {
            max_pending,
            max_open,
        })
    }

    #[test]
    fn pending_connections_are_bounded_and_authenticated_ones_are_not_counted() {
        let gate = gate(2, 10);
        let mut first = gate.admit().expect("room");
        let _second = gate.admit().expect("room");
        assert_eq!(gate.admit().unwrap_err(), Refusal::TooManyPending(2));
        first.authenticated();
        assert!(!first.is_pending());
        // Saying it twice changes nothing.
        first.authenticated();
        assert_eq!(
            gate.counts(),
            ConnectionCounts {
                open: 2,
                pending: 1
            }
        );
        let _third = gate.admit().expect("the authenticated one left room");
        assert_eq!(gate.admit().unwrap_err(), Refusal::TooManyPending(2));
    }

    #[test]
    fn open_connections_are_bounded_whether_authenticated_or_not() {
        let gate = gate(10, 3);
        let mut held: Vec<Admission> = (0..3).map(|_| gate.admit().expect("room")).collect();
        for admission in &mut held {
            admission.authenticated();
        }
        assert_eq!(gate.admit().unwrap_err(), Refusal::TooManyOpen(3));
        held.pop();
        let _again = gate.admit().expect("a closed one left room");
    }

    #[test]
    fn dropping_gives_back_what_was_counted() {
        let gate = gate(4, 4);
        let pending = gate.admit().expect("room");
        let mut authenticated = gate.admit().expect("room");
        authenticated.authenticated();
        drop(pending);
        assert_eq!(
            gate.counts(),
            ConnectionCounts {
                open: 1,
                pending: 0
            }
        );
        drop(authenticated);
        assert_eq!(gate.counts(), ConnectionCounts::default());
        let all: Vec<Admission> = (0..4)
            .map(|_| gate.admit().expect("all room back"))
            .collect();
        assert_eq!(all.len(), 4);
    }
}
