//! Functions next to the data: [`Store::invoke`] runs a function of a WebAssembly module on
//! the owner of the input objects, in its sandbox, and returns the function's output.
//!
//! The module is named by the SHA-256 of its bytes; the bytes travel only when the owner
//! answers that it has not cached that module yet (the first call per server, or after the
//! server's cache dropped it).

use dimstore_proto::{Invoke, Invoked, Key, ModuleHash, Request, Response, Status};
use sha2::{Digest, Sha256};

use crate::error::RequestError;
use crate::store::{unexpected, Peer, Store};

/// Why an invocation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InvokeError {
    /// No input keys were given.
    #[error("invoke needs at least one input key")]
    NoInputs,
    /// The input keys name different owners: a function runs on one server.
    #[error("the keys of one invoke must share an owner, but {first} is owned by {} and {other} by {}", first.owner, other.owner)]
    NotSameOwner {
        /// A key of the first owner.
        first: Box<Key>,
        /// A key of another owner.
        other: Box<Key>,
    },
    /// An input object does not exist (or is not set).
    #[error("an input object is missing: {0}")]
    NotFound(String),
    /// The function returned a nonzero code.
    #[error("the function failed with code {code}")]
    FunctionFailed {
        /// The returned value.
        code: i32,
    },
    /// The module is not valid WebAssembly, does not fit the host interface, or lacks the
    /// function.
    #[error("invalid module: {0}")]
    InvalidModule(String),
    /// The function trapped.
    #[error("{0}")]
    Trapped(String),
    /// The function ran past the server's deadline.
    #[error("{0}")]
    Deadline(String),
    /// The function went over the sandbox's memory or output limit.
    #[error("{0}")]
    Limit(String),
    /// The module, argument or function name is over a limit of the server's.
    #[error("{0}")]
    TooLarge(String),
    /// The owner does not run functions.
    #[error("{0}")]
    Disabled(String),
    /// Anything on the way (connection, authentication, protocol).
    #[error(transparent)]
    Request(#[from] RequestError),
}

impl InvokeError {
    fn from_request(e: RequestError) -> Self {
        let message = e.to_string();
        match e.status() {
            Some(Status::NotFound) => InvokeError::NotFound(message),
            Some(Status::InvalidModule) => InvokeError::InvalidModule(message),
            Some(Status::FunctionTrapped) => InvokeError::Trapped(message),
            Some(Status::FunctionDeadline) => InvokeError::Deadline(message),
            Some(Status::FunctionLimit) => InvokeError::Limit(message),
            Some(Status::TooLarge) => InvokeError::TooLarge(message),
            Some(Status::FunctionsDisabled) => InvokeError::Disabled(message),
            _ => InvokeError::Request(e),
        }
    }
}

/// SHA-256 of a module's bytes: the name servers cache it by.
pub fn module_hash(module: &[u8]) -> ModuleHash {
    Sha256::digest(module).into()
}

impl Store {
    /// Runs `function` (type `() -> i32`) of the WebAssembly `module` on the owner of `keys`
    /// over their objects, with `arg` readable through `read_arg`, and returns its output.
    /// All keys must share an owner.
    pub fn invoke(
        &self,
        keys: &[Key],
        module: &[u8],
        function: &str,
        arg: &[u8],
    ) -> Result<Vec<u8>, InvokeError> {
        match self.invoke_on(keys, module, function, arg, false)? {
            (Invoked::Output { size }, payload) if payload.len() as u64 == size => Ok(payload),
            (other, _) => Err(self.unexpected(keys, other)),
        }
    }

    /// Like [`Store::invoke`], but the output is stored as a new object on the owner of
    /// `keys` (it never crosses the network): returns its key.
    pub fn invoke_to_key(
        &self,
        keys: &[Key],
        module: &[u8],
        function: &str,
        arg: &[u8],
    ) -> Result<Key, InvokeError> {
        match self.invoke_on(keys, module, function, arg, true)? {
            (Invoked::Stored { id, size }, _) => Ok(Key {
                owner: keys[0].owner.clone(),
                id,
                size: Some(size),
            }),
            (other, _) => Err(self.unexpected(keys, other)),
        }
    }

    fn unexpected(&self, keys: &[Key], answer: Invoked) -> InvokeError {
        InvokeError::Request(unexpected(&keys[0].owner, &Response::Invoked(answer)))
    }

    /// Sends the call by the module's hash; on `ModuleUnknown`, once more with its bytes.
    fn invoke_on(
        &self,
        keys: &[Key],
        module: &[u8],
        function: &str,
        arg: &[u8],
        to_key: bool,
    ) -> Result<(Invoked, Vec<u8>), InvokeError> {
        let owner = same_owner(keys)?;
        let mut request = Invoke {
            ids: keys.iter().map(|k| k.id).collect(),
            module: module_hash(module),
            with_module: false,
            function: function.to_string(),
            arg: arg.to_vec(),
            to_key,
        };
        // The output is at most what the owner could store as an object.
        let output_bound = Peer::largest_object;
        let reply = match self.call_expecting(
            owner,
            &Request::Invoke(request.clone()),
            &[],
            output_bound,
        ) {
            Err(e) if e.status() == Some(Status::ModuleUnknown) => {
                request.with_module = true;
                self.call_expecting(owner, &Request::Invoke(request), &[module], output_bound)
            }
            other => other,
        };
        let (_, reply) = reply.map_err(InvokeError::from_request)?;
        match reply.response {
            Response::Invoked(Invoked::Failed { code }) => {
                Err(InvokeError::FunctionFailed { code })
            }
            Response::Invoked(answer) => Ok((answer, reply.payload.as_slice().to_vec())),
            other => Err(InvokeError::Request(unexpected(owner, &other))),
        }
    }
}

/// The owner every key names, or the first pair that differs.
fn same_owner(keys: &[Key]) -> Result<&str, InvokeError> {
    let first = keys.first().ok_or(InvokeError::NoInputs)?;
    match keys.iter().find(|k| k.owner != first.owner) {
        Some(other) => Err(InvokeError::NotSameOwner {
            first: Box::new(first.clone()),
            other: Box::new(other.clone()),
        }),
        None => Ok(&first.owner),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dimstore_proto::ObjectId;

    fn key(owner: &str, id: u128) -> Key {
        Key {
            owner: owner.into(),
            id: ObjectId(id),
            size: Some(8),
        }
    }

    #[test]
    fn keys_of_two_owners_are_refused_naming_both() {
        let keys = [
            key("10.0.0.1:7000", 1),
            key("10.0.0.1:7000", 2),
            key("10.0.0.2:7000", 3),
        ];
        let e = same_owner(&keys).expect_err("two owners");
        let text = e.to_string();
        assert!(
            text.contains("10.0.0.1:7000") && text.contains("10.0.0.2:7000"),
            "{text}"
        );
        assert!(
            matches!(e, InvokeError::NotSameOwner { ref other, .. } if other.id == ObjectId(3))
        );
        assert_eq!(same_owner(&keys[..2]).expect("one owner"), "10.0.0.1:7000");
        assert!(matches!(same_owner(&[]), Err(InvokeError::NoInputs)));
    }

    #[test]
    fn the_hash_is_sha256() {
        let hash = module_hash(b"abc");
        assert_eq!(hash[..4], [0xba, 0x78, 0x16, 0xbf]);
    }
}
