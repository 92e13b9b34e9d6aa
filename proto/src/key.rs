//! Keys: what a put returns and what travels with a task to any node.
//!
//! A key names the owning server's control address, the object's 128-bit id and, once known,
//! its size. There is no directory service: a get goes straight to the owner named here. The
//! printable form round-trips exactly:
//!
//! ```text
//! dim://127.0.0.1:7100/0123456789abcdef0123456789abcdef/4096   (an object of 4096 bytes)
//! dim://127.0.0.1:7100/0123456789abcdef0123456789abcdef        (a deferred key, not set yet)
//! ```

use std::fmt;
use std::str::FromStr;

use rkyv::{Archive, Deserialize as RkyvDeserialize, Serialize as RkyvSerialize};
use serde::{Deserialize, Serialize};

/// Scheme prefix of a key's text form.
pub const KEY_SCHEME: &str = "dim://";

/// The id of an object inside its owning server.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Archive,
    RkyvSerialize,
    RkyvDeserialize,
    Serialize,
    Deserialize,
)]
#[rkyv(derive(Debug, PartialEq, Eq, Hash))]
pub struct ObjectId(pub u128);

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// A reference to an object in the fleet.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    /// Control address (`host:port`) of the server that owns the object.
    pub owner: String,
    /// The object's id at its owner.
    pub id: ObjectId,
    /// The object's size in bytes; `None` for a deferred key whose object is not set yet.
    pub size: Option<u64>,
}

/// Why a key's text form could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyParseError {
    /// The text does not start with `dim://`.
    #[error("a key starts with `{KEY_SCHEME}`")]
    MissingScheme,
    /// The owner address is empty or has no port.
    #[error("key owner `{0}` is not a host:port address")]
    BadOwner(String),
    /// The id is not 32 hexadecimal digits.
    #[error("key id `{0}` is not 32 hexadecimal digits")]
    BadId(String),
    /// The size is not a decimal number.
    #[error("key size `{0}` is not a decimal number")]
    BadSize(String),
    /// Extra path segments.
    #[error("a key has the form dim://HOST:PORT/ID[/SIZE]")]
    Shape,
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{KEY_SCHEME}{}/{}", self.owner, self.id)?;
        if let Some(size) = self.size {
            write!(f, "/{size}")?;
        }
        Ok(())
    }
}

impl FromStr for Key {
    type Err = KeyParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let rest = text
            .trim()
            .strip_prefix(KEY_SCHEME)
            .ok_or(KeyParseError::MissingScheme)?;
        let mut parts = rest.split('/');
        let owner = parts.next().unwrap_or_default();
        let id = parts.next().ok_or(KeyParseError::Shape)?;
        let size = parts.next();
        if parts.next().is_some() {
            return Err(KeyParseError::Shape);
        }
        if !valid_owner(owner) {
            return Err(KeyParseError::BadOwner(owner.to_string()));
        }
        if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(KeyParseError::BadId(id.to_string()));
        }
        let id = u128::from_str_radix(id, 16).map_err(|_| KeyParseError::BadId(id.to_string()))?;
        let size = size
            .map(|s| {
                if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(KeyParseError::BadSize(s.to_string()));
                }
                s.parse::<u64>()
                    .map_err(|_| KeyParseError::BadSize(s.to_string()))
            })
            .transpose()?;
        Ok(Key {
            owner: owner.to_string(),
            id: ObjectId(id),
            size,
        })
    }
}

fn valid_owner(owner: &str) -> bool {
    match owner.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && !port.is_empty()
                && port.parse::<u16>().is_ok()
                && !host.contains(char::is_whitespace)
        }
        None => false,
    }
}

impl Serialize for Key {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn text_form_is_stable() {
        let key = Key {
            owner: "10.0.0.1:7100".into(),
            id: ObjectId(0xabc),
            size: Some(42),
        };
        assert_eq!(
            key.to_string(),
            "dim://10.0.0.1:7100/00000000000000000000000000000abc/42"
        );
        let deferred = Key { size: None, ..key };
        assert_eq!(
            deferred.to_string(),
            "dim://10.0.0.1:7100/00000000000000000000000000000abc"
        );
    }

    #[test]
    fn malformed_keys_are_rejected() {
        let id = "0123456789abcdef0123456789abcdef";
        for (text, want) in [
            ("http://a:1/x", KeyParseError::MissingScheme),
            (
                &format!("dim://nohost/{id}") as &str,
                KeyParseError::BadOwner("nohost".into()),
            ),
            (
                &format!("dim://:1/{id}"),
                KeyParseError::BadOwner(":1".into()),
            ),
            ("dim://a:1/xyz", KeyParseError::BadId("xyz".into())),
            (
                &format!("dim://a:1/{id}/-4"),
                KeyParseError::BadSize("-4".into()),
            ),
            (&format!("dim://a:1/{id}/4/5"), KeyParseError::Shape),
            ("dim://a:1", KeyParseError::Shape),
        ] {
            assert_eq!(text.parse::<Key>(), Err(want), "{text}");
        }
    }

    proptest! {
        #[test]
        fn text_and_serde_roundtrip(host in "[a-z0-9.-]{1,20}|\\[::1\\]", port: u16, id: u128, size: Option<u64>) {
            let key = Key { owner: format!("{host}:{port}"), id: ObjectId(id), size };
            prop_assert_eq!(key.to_string().parse::<Key>(), Ok(key.clone()));
            let json = serde_json::to_string(&key).expect("serialize");
            prop_assert_eq!(serde_json::from_str::<Key>(&json).expect("deserialize"), key);
        }

        #[test]
        fn parsing_arbitrary_text_never_panics(text in "\\PC{0,80}") {
            let _ = text.parse::<Key>();
        }
    }
}
