//! How many connections a server holds at once: a bound on those that have not
//! authenticated yet (cheap for a peer to open, so a flood of them must not crowd out the
//! rest) and a bound on all of them (derived from the descriptor limit, so a flood cannot
//! take the descriptors spill files, segments and one-sided workers need).
//!
//! The accept loop asks the [`ConnectionGate`] before serving a new connection: an
//! [`Admission`] holds its place until dropped, and is told when its connection
//! authenticated; a [`Refusal`] means the connection is closed at once. When the pending
//! bound is full, a new connection still gets in: the *oldest* connection that has not
//! authenticated is evicted ([`Admission::evicted`] completes for it). A peer that holds
//! the pending places with silent connections therefore cannot lock new clients out: a
//! client authenticates within a round trip of connecting, long before the flood has
//! cycled through every place. Pure bookkeeping: no I/O, no clock.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// The bounds a [`ConnectionGate`] enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open and not yet authenticated (no successful `Hello`); past it the
    /// oldest of them is evicted.
    pub max_pending: usize,
    /// Connections open, authenticated or not; past it new ones are refused.
    pub max_open: usize,
}

/// Why a new connection was closed at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// Too many connections are open.
    #[error("{0} connections are open already")]
    TooManyOpen(usize),
}

/// Connections counted now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionCounts {
    /// Open, authenticated or not (evicted ones until they are closed).
    pub open: usize,
    /// Of which not authenticated yet (evicted ones no longer count).
    pub pending: usize,
}

/// The gate's state behind its lock.
#[derive(Debug, Default)]
struct State {
    counts: ConnectionCounts,
    /// The pending connections by id (ids grow, so the first is the oldest), with their
    /// eviction signals.
    queue: BTreeMap<u64, Arc<Eviction>>,
    next_id: u64,
}

/// Tells a pending connection that it was evicted.
#[derive(Debug, Default)]
struct Eviction {
    evicted: AtomicBool,
    notify: Notify,
}

impl Eviction {
    fn evict(&self) {
        self.evicted.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::Acquire)
    }
}

/// Counts the connections of every listener of a server against [`ConnectionLimits`].
#[derive(Debug)]
pub struct ConnectionGate {
    limits: ConnectionLimits,
    state: Mutex<State>,
}

impl ConnectionGate {
    /// A gate enforcing `limits`, shared by the listeners it is handed to.
    pub fn new(limits: ConnectionLimits) -> Arc<ConnectionGate> {
        Arc::new(ConnectionGate {
            limits,
            state: Mutex::default(),
        })
    }

    /// The bounds enforced.
    pub fn limits(&self) -> ConnectionLimits {
        self.limits
    }

    /// Connections counted now.
    pub fn counts(&self) -> ConnectionCounts {
        self.lock().counts
    }

    /// Lets a new connection in (as not authenticated), evicting the oldest pending one if
    /// the pending bound is full, or says why not.
    pub fn admit(self: &Arc<Self>) -> Result<Admission, Refusal> {
        let mut state = self.lock();
        if state.counts.open >= self.limits.max_open {
            return Err(Refusal::TooManyOpen(state.counts.open));
        }
        let mut evicted_another = false;
        if state.counts.pending >= self.limits.max_pending.max(1) {
            if let Some((_, oldest)) = state.queue.pop_first() {
                oldest.evict();
                state.counts.pending -= 1;
                evicted_another = true;
            }
        }
        state.counts.open += 1;
        state.counts.pending += 1;
        let id = state.next_id;
        state.next_id += 1;
        let eviction = Arc::new(Eviction::default());
        state.queue.insert(id, Arc::clone(&eviction));
        Ok(Admission {
            gate: Arc::clone(self),
            id,
            eviction,
            pending: true,
            evicted_another,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Plain counters and a queue, consistent after every statement.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    /// Forgets pending connection `id` (authenticated or gone), unless it was evicted
    /// (which took it off already).
    fn leave_pending(&mut self, id: u64, eviction: &Eviction) {
        if eviction.is_evicted() {
            return;
        }
        self.queue.remove(&id);
        self.counts.pending -= 1;
    }
}

/// A connection's place in its [`ConnectionGate`], given back when dropped.
#[derive(Debug)]
pub struct Admission {
    gate: Arc<ConnectionGate>,
    id: u64,
    eviction: Arc<Eviction>,
    pending: bool,
    evicted_another: bool,
}

impl Admission {
    /// Whether the connection has not authenticated yet.
    pub fn is_pending(&self) -> bool {
        self.pending
    }

    /// Whether letting this connection in evicted the oldest pending one.
    pub fn evicted_another(&self) -> bool {
        self.evicted_another
    }

    /// The connection authenticated: it no longer counts against the pending bound and can
    /// no longer be evicted. (One evicted meanwhile stays evicted: it closes.)
    pub fn authenticated(&mut self) {
        if std::mem::take(&mut self.pending) {
            self.gate.lock().leave_pending(self.id, &self.eviction);
        }
    }

    /// Completes once a newer connection evicted this one (only ever while it is pending);
    /// the connection must then close.
    pub async fn evicted(&self) {
        loop {
            let notified = self.eviction.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.eviction.is_evicted() {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut state = self.gate.lock();
        state.counts.open -= 1;
        if self.pending {
            state.leave_pending(self.id, &self.eviction);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;

    fn gate(max_pending: usize, max_open: usize) -> Arc<ConnectionGate> {
        ConnectionGate::new(ConnectionLimits {
            max_pending,
            max_open,
        })
    }

    /// Whether `admission`'s eviction has completed (polled once, without a runtime).
    fn is_evicted(admission: &Admission) -> bool {
        let future = admission.evicted();
        tokio::pin!(future);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        future.as_mut().poll(&mut cx).is_ready()
    }

    #[test]
    fn a_full_pending_bound_evicts_the_oldest_pending_connection() {
        let gate = gate(2, 10);
        let first = gate.admit().expect("room");
        let second = gate.admit().expect("room");
        assert!(!first.evicted_another() && !second.evicted_another());
        let third = gate.admit().expect("the oldest makes room");
        assert!(third.evicted_another());
        assert!(is_evicted(&first), "the oldest goes");
        assert!(!is_evicted(&second) && !is_evicted(&third));
        assert_eq!(
            gate.counts(),
            ConnectionCounts {
                open: 3,
                pending: 2
            },
            "the evicted one is open until it closes, no longer pending"
        );
        drop(first);
        assert_eq!(
            gate.counts(),
            ConnectionCounts {
                open: 2,
                pending: 2
            }
        );
        // Next in line: the second.
        let _fourth = gate.admit().expect("room");
        assert!(is_evicted(&second));
    }

    #[test]
    fn authenticated_connections_are_neither_counted_as_pending_nor_evicted() {
        let gate = gate(2, 10);
        let mut first = gate.admit().expect("room");
        let _second = gate.admit().expect("room");
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
        let third = gate.admit().expect("room");
        assert!(!third.evicted_another(), "the authenticated one left room");
        let fourth = gate.admit().expect("the oldest pending makes room");
        assert!(fourth.evicted_another());
        assert!(!is_evicted(&first), "authenticated: never evicted");
    }

    #[test]
    fn an_evicted_connection_that_authenticates_late_is_counted_once() {
        let gate = gate(1, 10);
        let mut first = gate.admit().expect("room");
        let second = gate.admit().expect("evicts the first");
        first.authenticated();
        drop(first);
        assert_eq!(
            gate.counts(),
            ConnectionCounts {
                open: 1,
                pending: 1
            }
        );
        drop(second);
        assert_eq!(gate.counts(), ConnectionCounts::default());
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
        assert!(all.iter().all(|a| !a.evicted_another()));
    }
}
