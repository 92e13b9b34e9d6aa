//! Typed zero-copy access: objects stored as rkyv archives and read back as validated
//! archived views, without deserializing.

use rkyv::api::high::{HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;
use rkyv::Archive;
use yoke::Yoke;

use crate::error::{GetError, PutError};
use crate::object::ObjectBytes;
use crate::store::Store;
use dimstore_proto::Key;
use dimstore_transport::Cause;

/// A validated archived `T` over the bytes it was received in. Dereferences to
/// `T::Archived`; validation happened once, when it was fetched.
pub struct Archived<T: Archive + 'static> {
    view: Yoke<&'static T::Archived, Box<ObjectBytes>>,
}

impl<T: Archive + 'static> std::ops::Deref for Archived<T> {
    type Target = T::Archived;
    fn deref(&self) -> &T::Archived {
        self.view.get()
    }
}

impl<T: Archive + 'static> std::fmt::Debug for Archived<T>
where
    T::Archived: std::fmt::Debug,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Archived").field(self.view.get()).finish()
    }
}

impl<T: Archive + 'static> Archived<T>
where
    T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>,
{
    /// Validates `bytes` as an archived `T`.
    pub fn validate(bytes: ObjectBytes) -> Result<Self, rancor::Error> {
        let view = Yoke::try_attach_to_cart(Box::new(bytes), |data: &ObjectBytes| {
            rkyv::access::<T::Archived, rancor::Error>(data)
        })?;
        Ok(Archived { view })
    }
}

impl Store {
    /// Serializes `value` with rkyv and stores the archive on this node's server.
    pub fn put_archived<T>(&self, value: &T) -> Result<Key, PutError>
    where
        T: for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
    {
        let bytes = rkyv::to_bytes::<rancor::Error>(value)
            .map_err(|e| PutError::Serialize(Cause::new(e)))?;
        self.put(&bytes)
    }

    /// Fetches an object stored with [`Store::put_archived`] and returns a validated view of
    /// it, without deserializing.
    pub fn get_archived<T>(&self, key: &Key) -> Result<Archived<T>, GetError>
    where
        T: Archive + 'static,
        T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>,
    {
        let bytes = self.get(key)?;
        Archived::validate(bytes).map_err(|e| GetError::Invalid {
            key: key.clone(),
            source: Cause::new(e),
        })
    }
}
