//! Lazy proxies: a handle that travels as its key and resolves to the value on first use.

use std::marker::PhantomData;
use std::sync::OnceLock;

use rkyv::api::high::{HighDeserializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{ConnectError, GetError};
use crate::store::Store;
use dimstore_proto::Key;
use dimstore_transport::Cause;

/// A lazily resolved value of type `T` stored in the fleet.
///
/// Serializing a proxy (serde) writes only its key; the receiver resolves it with
/// [`Proxy::resolve`] (or [`Proxy::get`], which uses the process's default store), which
/// fetches the bytes from the owner once and deserializes them.
pub struct Proxy<T> {
    key: Key,
    value: OnceLock<T>,
    _type: PhantomData<fn() -> T>,
}

impl<T> Proxy<T> {
    /// A proxy for the object under `key` (stored with [`Store::put_archived`]).
    pub fn from_key(key: Key) -> Self {
        Proxy {
            key,
            value: OnceLock::new(),
            _type: PhantomData,
        }
    }

    /// The key this proxy stands for.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// Whether the value has been fetched already.
    pub fn is_resolved(&self) -> bool {
        self.value.get().is_some()
    }
}

impl<T> Proxy<T>
where
    T: rkyv::Archive + 'static,
    T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
        + rkyv::Deserialize<T, HighDeserializer<rancor::Error>>,
{
    /// The value, fetched through `store` on first access.
    pub fn resolve(&self, store: &Store) -> Result<&T, GetError> {
        if let Some(v) = self.value.get() {
            return Ok(v);
        }
        let archived = store.get_archived::<T>(&self.key)?;
        let value =
            rkyv::deserialize::<T, rancor::Error>(&*archived).map_err(|e| GetError::Invalid {
                key: self.key.clone(),
                source: Cause::new(e),
            })?;
        Ok(self.value.get_or_init(|| value))
    }

    /// The value, fetched through the process's default store ([`Store::from_env`]) on
    /// first access.
    pub fn get(&self) -> Result<&T, ProxyError> {
        let store = default_store()?;
        Ok(self.resolve(store)?)
    }
}

/// Why [`Proxy::get`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// No default store could be set up.
    #[error(transparent)]
    Connect(#[from] &'static ConnectError),
    /// Fetching failed.
    #[error(transparent)]
    Get(#[from] GetError),
}

fn default_store() -> Result<&'static Store, &'static ConnectError> {
    static DEFAULT: OnceLock<Result<Store, ConnectError>> = OnceLock::new();
    DEFAULT.get_or_init(Store::from_env).as_ref()
}

impl Store {
    /// Stores `value` and returns a proxy for it.
    pub fn proxy<T>(&self, value: &T) -> Result<Proxy<T>, crate::error::PutError>
    where
        T: for<'a> rkyv::Serialize<
            rkyv::api::high::HighSerializer<
                rkyv::util::AlignedVec,
                rkyv::ser::allocator::ArenaHandle<'a>,
                rancor::Error,
            >,
        >,
    {
        Ok(Proxy::from_key(self.put_archived(value)?))
    }
}

impl<T> Serialize for Proxy<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.key.serialize(serializer)
    }
}

impl<'de, T> Deserialize<'de> for Proxy<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Proxy::from_key(Key::deserialize(deserializer)?))
    }
}

impl<T> std::fmt::Debug for Proxy<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("key", &self.key.to_string())
            .field("resolved", &self.is_resolved())
            .finish()
    }
}
