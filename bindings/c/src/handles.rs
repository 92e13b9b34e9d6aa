//! Handles given to C: stores and views are kept in per-process tables, and C holds only
//! their numbers (a `dimstore_t *` is a token, never dereferenced). A closed, released or
//! made-up handle is therefore a typed error, never a use after free, and a handle used in a
//! forked child is recognised by the process id recorded when it was opened.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};

use client::{ObjectBytes, Reservation, Store};

use crate::status::{Failure, DIMSTORE_E_BAD_ARGUMENT, DIMSTORE_E_CLOSED, DIMSTORE_E_FORK};

/// Next handle number; never reused within a process, 0 is never a handle.
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

/// The open stores, by token.
static STORES: RwLock<BTreeMap<u64, Opened<Store>>> = RwLock::new(BTreeMap::new());

/// The unreleased views, by token.
static VIEWS: Mutex<BTreeMap<u64, Opened<ObjectBytes>>> = Mutex::new(BTreeMap::new());

/// The unsealed reservations, by token, with the store that made them.
static RESERVATIONS: Mutex<BTreeMap<u64, Opened<(Reservation, Store)>>> =
    Mutex::new(BTreeMap::new());

/// A value and the process that created it.
struct Opened<T> {
    value: T,
    pid: u32,
}

impl<T> Opened<T> {
    fn new(value: T) -> Self {
        Opened {
            value,
            pid: std::process::id(),
        }
    }

    /// Ok in the process that opened it; `DIMSTORE_E_FORK` in a forked child.
    fn check_process(&self, what: &str) -> Result<(), Failure> {
        let pid = std::process::id();
        if self.pid == pid {
            return Ok(());
        }
        Err(Failure::new(
            DIMSTORE_E_FORK,
            format!(
                "the {what} was opened by process {} and this is its forked child {pid}: \
                 open a new store in the child",
                self.pid
            ),
        ))
    }

    /// Drops the value, except in a forked child: there its connections and leases belong to
    /// the parent, and dropping them would send notices on the parent's sockets.
    fn dispose(self) {
        if self.pid == std::process::id() {
            drop(self.value);
        } else {
            std::mem::forget(self.value);
        }
    }
}

fn new_token() -> u64 {
    NEXT_TOKEN.fetch_add(1, Ordering::Relaxed)
}

/// Registers an opened store; returns its token.
pub(crate) fn insert_store(store: Store) -> u64 {
    let token = new_token();
    STORES
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(token, Opened::new(store));
    token
}

/// The store behind a token (a clone: it shares the connections).
pub(crate) fn store(token: u64) -> Result<Store, Failure> {
    if token == 0 {
        return Err(Failure::new(
            DIMSTORE_E_BAD_ARGUMENT,
            "the store handle is NULL",
        ));
    }
    let stores = STORES.read().unwrap_or_else(PoisonError::into_inner);
    let opened = stores.get(&token).ok_or_else(|| {
        Failure::new(
            DIMSTORE_E_CLOSED,
            "the store handle is closed (or was never opened)",
        )
    })?;
    opened.check_process("store")?;
    Ok(opened.value.clone())
}

/// Closes a store; false if the token names no open store.
pub(crate) fn remove_store(token: u64) -> bool {
    let removed = STORES
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&token);
    removed.map(Opened::dispose).is_some()
}

/// Registers a view's bytes; returns its token. The bytes do not move: the token keeps
/// the buffer (or mapping) they live in.
pub(crate) fn insert_view(bytes: ObjectBytes) -> u64 {
    let token = new_token();
    VIEWS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(token, Opened::new(bytes));
    token
}

/// Releases a view; false if the token names no unreleased view.
pub(crate) fn remove_view(token: u64) -> bool {
    let removed = VIEWS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&token);
    removed.map(Opened::dispose).is_some()
}

/// Registers a reservation; returns its token. Its bytes do not move (a mapping of the
/// server's memory, or a heap buffer).
pub(crate) fn insert_reservation(reservation: Reservation, store: Store) -> u64 {
    let token = new_token();
    RESERVATIONS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(token, Opened::new((reservation, store)));
    token
}

/// Takes a reservation out of the table if `accept` agrees (it stays otherwise). In a
/// forked child the parent's reservation is forgotten and `DIMSTORE_E_FORK` returned.
pub(crate) fn take_reservation(
    token: u64,
    accept: impl FnOnce(&Reservation) -> Result<(), Failure>,
) -> Result<(Reservation, Store), Failure> {
    let mut table = RESERVATIONS.lock().unwrap_or_else(PoisonError::into_inner);
    let opened = table.get(&token).ok_or_else(|| {
        Failure::new(
            DIMSTORE_E_CLOSED,
            "the reservation was sealed or aborted already (or never created)",
        )
    })?;
    if let Err(fork) = opened.check_process("reservation") {
        if let Some(opened) = table.remove(&token) {
            opened.dispose();
        }
        return Err(fork);
    }
    accept(&opened.value.0)?;
    let opened = table.remove(&token).expect("present: looked up above");
    Ok(opened.value)
}
