//! `dimstore.Store`: a client of the fleet.

use std::path::PathBuf;
use std::time::Duration;

use dimstore::ClientConfig;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::buffer::{Contiguous, Object, Reservation};
use crate::errors;
use crate::key::{key_of, Key};
use crate::wait::interruptible;

/// A client of a dimstore fleet: puts go to this node's server, gets, checks, evictions and
/// sets go to whichever server a key names.
///
/// `Store()` is configured from the `DIMSTORE_*` environment (fleet file, node, server
/// address, or a server spawned on demand), like `dimstore::Store::from_env` in Rust; the
/// keyword arguments override single settings. Every call releases the GIL while it talks to
/// servers and ends within the timeout (seconds) with a `dimstore.Error` if it cannot
/// complete. Safe to share between threads.
#[pyclass(module = "dimstore", frozen)]
pub struct Store {
    inner: dimstore::Store,
}

#[pymethods]
impl Store {
    /// Connects to this node's server (found from the environment, or spawned).
    #[new]
    #[pyo3(signature = (server = None, *, fleet = None, node = None, timeout = None, listen = None))]
    fn new(
        py: Python<'_>,
        server: Option<String>,
        fleet: Option<PathBuf>,
        node: Option<String>,
        timeout: Option<f64>,
        listen: Option<String>,
    ) -> PyResult<Self> {
        let mut config = config(timeout)?;
        config.server = server.or(config.server);
        config.fleet = fleet.or(config.fleet);
        config.node = node.or(config.node);
        config.spawn_listen = listen.unwrap_or(config.spawn_listen);
        let inner = interruptible(py, move || dimstore::Store::with_config(config))?
            .map_err(errors::connect)?;
        Ok(Store { inner })
    }

    /// A store without a server of its own: it gets, checks, evicts and sets objects by key
    /// (on any node) but cannot put. Nothing is located or spawned.
    #[staticmethod]
    #[pyo3(signature = (*, timeout = None))]
    fn reader(timeout: Option<f64>) -> PyResult<Self> {
        Ok(Store {
            inner: dimstore::Store::without_local(config(timeout)?),
        })
    }

    /// The same store (sharing its connections) with another timeout, in seconds.
    fn with_timeout(&self, timeout: f64) -> PyResult<Self> {
        Ok(Store {
            inner: self.inner.with_timeout(seconds(timeout)?),
        })
    }

    /// The per-operation timeout, in seconds.
    #[getter]
    fn timeout(&self) -> f64 {
        self.inner.timeout().as_secs_f64()
    }

    /// Control address of this node's server (`None` for a reader).
    #[getter]
    fn local_address(&self) -> Option<&str> {
        self.inner.local_address()
    }

    /// This client's node identity.
    #[getter]
    fn node(&self) -> String {
        self.inner.node()
    }

    /// Whether gets from this node's server map its memory instead of copying.
    #[getter]
    fn maps_local_objects(&self, py: Python<'_>) -> bool {
        py.detach(|| self.inner.maps_local_objects())
    }

    /// Stores the bytes of a contiguous buffer (bytes, bytearray, memoryview, numpy array)
    /// on this node's server; returns its key.
    fn put(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<Key> {
        let data = Contiguous::of(data)?;
        let bytes = data.bytes();
        py.detach(|| self.inner.put(bytes))
            .map(Key::from)
            .map_err(errors::put)
    }

    /// Stores several objects in one round trip; returns their keys in order.
    fn put_batch(&self, py: Python<'_>, objects: &Bound<'_, PyAny>) -> PyResult<Vec<Key>> {
        let buffers = objects
            .try_iter()?
            .map(|o| Contiguous::of(&o?))
            .collect::<PyResult<Vec<_>>>()?;
        let slices: Vec<&[u8]> = buffers.iter().map(Contiguous::bytes).collect();
        py.detach(|| self.inner.put_batch(&slices))
            .map(|keys| keys.into_iter().map(Key::from).collect())
            .map_err(errors::put)
    }

    /// The object under `key` (a `Key` or its text), as a read-only buffer. A deferred key
    /// not set yet is waited for, up to `timeout` seconds (default: the store's); Ctrl-C
    /// interrupts the wait. Raises `NotFound`, `NotSet`, `Timeout`, `ConnectionLost`, ...
    #[pyo3(signature = (key, timeout = None))]
    fn get(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        timeout: Option<f64>,
    ) -> PyResult<Object> {
        let key = key_of(key)?;
        let store = self.timed(timeout)?;
        let bytes = if key.size.is_some() {
            // Stored objects are answered at once: no wait worth a helper thread.
            py.detach(|| store.get(&key))
        } else {
            interruptible(py, move || store.get(&key))?
        };
        bytes.map(Object::new).map_err(errors::get)
    }

    /// Several objects, one round trip per owner, in key order; `None` where the owner has
    /// no such object (or a deferred one was not set within `timeout`).
    #[pyo3(signature = (keys, timeout = None))]
    fn get_batch<'py>(
        &self,
        py: Python<'py>,
        keys: &Bound<'py, PyAny>,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyList>> {
        let keys = keys_of(keys)?;
        let store = self.timed(timeout)?;
        let objects = if keys.iter().all(|k| k.size.is_some()) {
            py.detach(|| store.get_batch(&keys))
        } else {
            interruptible(py, move || store.get_batch(&keys))?
        }
        .map_err(errors::get)?;
        let objects = objects
            .into_iter()
            .map(|o| o.map(Object::new).map(|o| Py::new(py, o)).transpose())
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, objects)
    }

    /// Whether the object exists at its owner (a deferred key not set yet does not).
    fn exists(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        let key = key_of(key)?;
        py.detach(|| self.inner.exists(&key))
            .map_err(errors::request)
    }

    /// Removes the object at its owner; `False` if it was not there.
    fn evict(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        let key = key_of(key)?;
        py.detach(|| self.inner.evict(&key))
            .map_err(errors::request)
    }

    /// Removes several objects, one round trip per owner; which ones were there.
    fn evict_batch(&self, py: Python<'_>, keys: &Bound<'_, PyAny>) -> PyResult<Vec<bool>> {
        let keys = keys_of(keys)?;
        py.detach(|| self.inner.evict_batch(&keys))
            .map_err(errors::request)
    }

    /// Reserves a key on this node's server for an object `set` later (a future); gets wait
    /// for it until it is set.
    fn new_key(&self, py: Python<'_>) -> PyResult<Key> {
        py.detach(|| self.inner.new_key())
            .map(Key::from)
            .map_err(errors::request)
    }

    /// Sets a reserved key's object, at its owner (whichever node); returns the key with its
    /// size. Raises `AlreadySet` if it holds an object, `NotReserved` if it was never reserved.
    fn set(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        data: &Bound<'_, PyAny>,
    ) -> PyResult<Key> {
        let key = key_of(key)?;
        let data = Contiguous::of(data)?;
        let bytes = data.bytes();
        py.detach(|| self.inner.set(&key, bytes))
            .map(Key::from)
            .map_err(errors::set)
    }

    /// Reserves `size` bytes for an object written in place: a writable buffer; fill it,
    /// release its views, then `.seal()`.
    fn create(&self, py: Python<'_>, size: u64) -> PyResult<Reservation> {
        py.detach(|| self.inner.create(size))
            .map(Reservation::new)
            .map_err(errors::put)
    }

    /// Counters of this node's server (or of the server at `address`), as a dict.
    #[pyo3(signature = (address = None))]
    fn stats<'py>(&self, py: Python<'py>, address: Option<String>) -> PyResult<Bound<'py, PyDict>> {
        let stats = py
            .detach(|| match &address {
                Some(address) => self.inner.stats_of(address),
                None => self.inner.stats(),
            })
            .map_err(errors::request)?;
        let out = PyDict::new(py);
        out.set_item("pid", stats.pid)?;
        out.set_item("node", stats.node)?;
        out.set_item("address", stats.advertised)?;
        out.set_item("objects", stats.objects)?;
        out.set_item("reserved", stats.reserved)?;
        out.set_item("bytes_used", stats.bytes_used)?;
        out.set_item("memory_limit", stats.memory_limit)?;
        out.set_item("puts", stats.puts)?;
        out.set_item("gets", stats.gets)?;
        out.set_item("get_hits", stats.get_hits)?;
        out.set_item("evictions", stats.evictions)?;
        out.set_item("mapped_gets", stats.mapped_gets)?;
        out.set_item("copied_local_gets", stats.copied_local_gets)?;
        out.set_item("leases", stats.leases)?;
        out.set_item("reservations", stats.reservations)?;
        out.set_item("store_full", stats.store_full)?;
        let p = &stats.pressure;
        out.set_item("eviction_policy", p.policy.as_str())?;
        out.set_item("policy_evictions", p.policy_evictions)?;
        out.set_item("expired", p.expired)?;
        out.set_item("owner_evictions", p.owner_evictions)?;
        out.set_item("consumed", p.consumed)?;
        out.set_item("with_lifetime", p.with_lifetime)?;
        out.set_item("spilled_bytes", p.spilled_bytes)?;
        out.set_item("spilled_objects", p.spilled_objects)?;
        out.set_item("spill_kept_bytes", p.spill_kept_bytes)?;
        out.set_item("respills", p.respills)?;
        out.set_item("restores", p.restores)?;
        out.set_item("spill_failures", p.spill_failures)?;
        out.set_item("spill_written", p.spill_written)?;
        out.set_item("spill_write_ns", p.spill_write_ns)?;
        out.set_item("spill_read", p.spill_read)?;
        out.set_item("spill_read_ns", p.spill_read_ns)?;
        Ok(out)
    }

    fn __repr__(&self) -> String {
        match self.inner.local_address() {
            Some(address) => format!("<dimstore.Store of {address}>"),
            None => "<dimstore.Store reader>".into(),
        }
    }
}

impl Store {
    /// The store, or a handle on it with another timeout.
    fn timed(&self, timeout: Option<f64>) -> PyResult<dimstore::Store> {
        Ok(match timeout {
            Some(t) => self.inner.with_timeout(seconds(t)?),
            None => self.inner.clone(),
        })
    }
}

/// The environment's configuration, with `timeout` (seconds) if given.
fn config(timeout: Option<f64>) -> PyResult<ClientConfig> {
    let mut config = ClientConfig::from_env().map_err(errors::ConnectFailed::new_err)?;
    if let Some(t) = timeout {
        config.timeout = seconds(t)?;
    }
    Ok(config)
}

/// A positive, finite number of seconds.
fn seconds(value: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            PyValueError::new_err(format!(
                "timeout must be a positive number of seconds, got {value}"
            ))
        })
}

fn keys_of(keys: &Bound<'_, PyAny>) -> PyResult<Vec<dimstore::Key>> {
    keys.try_iter()?.map(|k| key_of(&k?)).collect()
}
