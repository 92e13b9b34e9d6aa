//! `dimstore.Key`: an object's name, `dim://HOST:PORT/ID[/SIZE]`.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyString, PyType};

/// The name of an object: its owner's address, its id there, and its size (`None` for a
/// deferred key not set yet). `str(key)` is its text form, `Key(text)` parses it back, and
/// keys pickle as that text, so they can be sent to any process of the fleet.
#[pyclass(module = "dimstore", frozen, eq, hash)]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub(crate) inner: dimstore::Key,
}

#[pymethods]
impl Key {
    /// Parses a key's text form (`dim://HOST:PORT/ID[/SIZE]`).
    #[new]
    fn new(text: &str) -> PyResult<Self> {
        parse(text)
    }

    /// Control address (`host:port`) of the server that owns the object.
    #[getter]
    fn owner(&self) -> &str {
        &self.inner.owner
    }

    /// The object's id at its owner (32 hexadecimal digits).
    #[getter]
    fn id(&self) -> String {
        self.inner.id.to_string()
    }

    /// The object's size in bytes; `None` for a deferred key whose object is not set yet.
    #[getter]
    fn size(&self) -> Option<u64> {
        self.inner.size
    }

    fn __str__(&self) -> String {
        self.inner.to_string()
    }

    fn __repr__(&self) -> String {
        format!("Key('{}')", self.inner)
    }

    /// Pickles as `Key(text)`.
    fn __reduce__<'py>(
        slf: &Bound<'py, Self>,
    ) -> PyResult<(Bound<'py, PyType>, (Bound<'py, PyString>,))> {
        let text = PyString::new(slf.py(), &slf.get().inner.to_string());
        Ok((slf.get_type(), (text,)))
    }
}

impl From<dimstore::Key> for Key {
    fn from(inner: dimstore::Key) -> Self {
        Key { inner }
    }
}

fn parse(text: &str) -> PyResult<Key> {
    text.parse::<dimstore::Key>()
        .map(Key::from)
        .map_err(|e| PyValueError::new_err(format!("{text:?} is not a dimstore key: {e}")))
}

/// A key given as a `Key` or as its text form.
pub(crate) fn key_of(obj: &Bound<'_, PyAny>) -> PyResult<dimstore::Key> {
    if let Ok(key) = obj.cast::<Key>() {
        return Ok(key.get().inner.clone());
    }
    if let Ok(text) = obj.cast::<PyString>() {
        return Ok(parse(text.to_str()?)?.inner);
    }
    Err(PyTypeError::new_err(format!(
        "expected a dimstore.Key or its text form, got {}",
        obj.get_type().name()?
    )))
}
