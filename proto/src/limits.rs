//! Bounds on what one request may ask of a server, checked on the validated archive before
//! the request is deserialized or handled.
//!
//! A frame's lengths are bounded by [`FrameLimits`]; within a body of bounded size a request
//! can still ask for far more than its size: `NewKeys {count}` is four bytes asking for
//! billions of table entries. [`RequestLimits::check`] bounds every count and batch length
//! so that the work and memory of one request stay proportional to a small constant, and
//! [`decode_request_within`] applies it before anything is allocated for the request.
//!
//! Before a connection has authenticated, only a `Hello` fits: [`FrameLimits::pre_auth`]
//! allows a small body and no payload.

use rkyv::rancor;

use crate::frame::FrameLimits;
use crate::message::{ArchivedRequest, DecodeError, Request};
use crate::status::{ErrorReply, Status};

/// Largest body a peer may send before its `Hello` succeeded (a `Hello` is a token, a node
/// name and a few numbers).
pub const PRE_AUTH_MAX_BODY: u32 = 8 << 10;

impl FrameLimits {
    /// The limits before authentication: a body that holds a `Hello`, and no payload.
    pub const fn pre_auth() -> FrameLimits {
        FrameLimits {
            max_body: PRE_AUTH_MAX_BODY,
            max_payload: 0,
        }
    }
}

/// Upper bounds on the counts inside one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Most items in one batch: ids of a get, exists, evict or set; sizes of a put, set or
    /// create; segments, leases and reservations.
    pub max_batch: u32,
    /// Most keys one `NewKeys` may reserve.
    pub max_new_keys: u32,
    /// Longest text or byte field (token, node and transport names, a channel address).
    pub max_field: u32,
    /// Longest argument of an `Invoke` (the bytes its function reads with `read_arg`).
    pub max_invoke_arg: u32,
    /// Longest function name of an `Invoke`.
    pub max_function_name: u32,
    /// Longest time to live or lease a put or extend may ask for, in milliseconds.
    pub max_lifetime_ms: u64,
}

/// Longest time to live or lease by default: 7 days, like the longest get wait.
pub const MAX_LIFETIME_MS: u64 = 7 * 24 * 3600 * 1000;

impl Default for RequestLimits {
    /// 65 536 items per batch and per `NewKeys` (a few milliseconds of table work), 64 KiB
    /// per field, 1 MiB per function argument, 256 bytes per function name.
    fn default() -> Self {
        RequestLimits {
            max_batch: 1 << 16,
            max_new_keys: 1 << 16,
            max_field: 64 << 10,
            max_invoke_arg: 1 << 20,
            max_function_name: 256,
            max_lifetime_ms: MAX_LIFETIME_MS,
        }
    }
}

/// Why a request was refused by [`RequestLimits::check`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitError {
    /// A batch holds more items than the limit.
    #[error("{request} with {len} {field} exceeds the limit of {limit} per request")]
    Batch {
        /// Request kind.
        request: &'static str,
        /// The list that is too long.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        limit: u32,
    },
    /// `NewKeys` asks for more keys than the limit.
    #[error("NewKeys asks for {count} keys, more than the limit of {limit} per request")]
    NewKeys {
        /// Keys asked for.
        count: u32,
        /// The limit.
        limit: u32,
    },
    /// A text or byte field is longer than the limit.
    #[error("{request} carries a {field} of {len} bytes, longer than the limit of {limit}")]
    Field {
        /// Request kind.
        request: &'static str,
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        limit: u32,
    },
    /// A time to live or lease is longer than the limit.
    #[error("{request} asks for a {field} of {ms} ms, longer than the limit of {limit} ms")]
    Lifetime {
        /// Request kind.
        request: &'static str,
        /// The field.
        field: &'static str,
        /// Milliseconds asked for.
        ms: u64,
        /// The limit.
        limit: u64,
    },
    /// Two lists that must pair up have different lengths.
    #[error("{request} names {left_len} {left} but {right_len} {right}")]
    Mismatch {
        /// Request kind.
        request: &'static str,
        /// First list.
        left: &'static str,
        /// Its length.
        left_len: usize,
        /// Second list.
        right: &'static str,
        /// Its length.
        right_len: usize,
    },
}

impl LimitError {
    /// The status a server answers with: `TooLarge` for counts and lengths over a limit,
    /// `BadRequest` for inconsistent requests.
    pub fn status(&self) -> Status {
        match self {
            LimitError::Batch { .. }
            | LimitError::NewKeys { .. }
            | LimitError::Field { .. }
            | LimitError::Lifetime { .. } => Status::TooLarge,
            LimitError::Mismatch { .. } => Status::BadRequest,
        }
    }
}

impl From<LimitError> for ErrorReply {
    fn from(e: LimitError) -> Self {
        ErrorReply::new(e.status(), e.to_string())
    }
}

impl RequestLimits {
    /// Checks every count, batch length and field of a validated request archive. Nothing
    /// is allocated.
    pub fn check(&self, request: &ArchivedRequest) -> Result<(), LimitError> {
        let batch = |request: &'static str, field: &'static str, len: usize| {
            if len > self.max_batch as usize {
                return Err(LimitError::Batch {
                    request,
                    field,
                    len,
                    limit: self.max_batch,
                });
            }
            Ok(())
        };
        let text = |request: &'static str, field: &'static str, len: usize| {
            if len > self.max_field as usize {
                return Err(LimitError::Field {
                    request,
                    field,
                    len,
                    limit: self.max_field,
                });
            }
            Ok(())
        };
        let pair = |request: &'static str,
                    (left, left_len): (&'static str, usize),
                    (right, right_len): (&'static str, usize)| {
            if left_len != right_len {
                return Err(LimitError::Mismatch {
                    request,
                    left,
                    left_len,
                    right,
                    right_len,
                });
            }
            Ok(())
        };
        let lifetime = |request: &'static str, field: &'static str, ms: u64| {
            if ms > self.max_lifetime_ms {
                return Err(LimitError::Lifetime {
                    request,
                    field,
                    ms,
                    limit: self.max_lifetime_ms,
                });
            }
            Ok(())
        };
        match request {
            ArchivedRequest::Hello(hello) => {
                if let Some(token) = hello.token.as_ref() {
                    text("Hello", "token", token.len())?;
                }
                text("Hello", "client node", hello.client_node.len())
            }
            ArchivedRequest::Put { sizes } => batch("Put", "sizes", sizes.len()),
            ArchivedRequest::Get { ids, .. } => batch("Get", "ids", ids.len()),
            ArchivedRequest::Exists { ids } => batch("Exists", "ids", ids.len()),
            ArchivedRequest::Evict { ids } => batch("Evict", "ids", ids.len()),
            ArchivedRequest::NewKeys { count } => {
                let count = count.to_native();
                if count > self.max_new_keys {
                    return Err(LimitError::NewKeys {
                        count,
                        limit: self.max_new_keys,
                    });
                }
                Ok(())
            }
            ArchivedRequest::Set { ids, sizes } => {
                batch("Set", "ids", ids.len())?;
                pair("Set", ("ids", ids.len()), ("sizes", sizes.len()))
            }
            ArchivedRequest::Stats | ArchivedRequest::Shutdown => Ok(()),
            ArchivedRequest::MapSegments { ids } => batch("MapSegments", "segments", ids.len()),
            ArchivedRequest::Create { sizes } => batch("Create", "sizes", sizes.len()),
            ArchivedRequest::Seal { reservations, lens } => {
                batch("Seal", "reservations", reservations.len())?;
                pair(
                    "Seal",
                    ("reservations", reservations.len()),
                    ("lengths", lens.len()),
                )
            }
            ArchivedRequest::Release { leases } => batch("Release", "leases", leases.len()),
            ArchivedRequest::Abort { reservations } => {
                batch("Abort", "reservations", reservations.len())
            }
            ArchivedRequest::UseOneSided { transport, .. } => {
                text("UseOneSided", "transport name", transport.len())
            }
            ArchivedRequest::SegmentKeys { ids } => batch("SegmentKeys", "segments", ids.len()),
            ArchivedRequest::OpenChannel { transport, address } => {
                text("OpenChannel", "transport name", transport.len())?;
                text("OpenChannel", "address", address.len())
            }
            ArchivedRequest::PutWith { sizes, options } => {
                batch("PutWith", "sizes", sizes.len())?;
                lifetime("PutWith", "time to live", options.ttl_ms.to_native())?;
                lifetime("PutWith", "lease", options.lease_ms.to_native())?;
                match options.owner.as_ref() {
                    Some(owner) => text("PutWith", "owner tag", owner.len()),
                    None => Ok(()),
                }
            }
            ArchivedRequest::GetAndEvict { ids } => batch("GetAndEvict", "ids", ids.len()),
            ArchivedRequest::ReleaseOwner { owner } => {
                text("ReleaseOwner", "owner tag", owner.len())
            }
            ArchivedRequest::Extend { ids, lease_ms } => {
                batch("Extend", "ids", ids.len())?;
                lifetime("Extend", "lease", lease_ms.to_native())
            }
            ArchivedRequest::Invoke(invoke) => {
                batch("Invoke", "ids", invoke.ids.len())?;
                let within = |field: &'static str, len: usize, limit: u32| {
                    if len > limit as usize {
                        return Err(LimitError::Field {
                            request: "Invoke",
                            field,
                            len,
                            limit,
                        });
                    }
                    Ok(())
                };
                within(
                    "function name",
                    invoke.function.len(),
                    self.max_function_name,
                )?;
                within("argument", invoke.arg.len(), self.max_invoke_arg)
            }
        }
    }
}

/// Why a request body was refused by [`decode_request_within`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The body is not a valid request archive.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The request asks for more than the limits allow.
    #[error(transparent)]
    Limit(#[from] LimitError),
}

impl RequestError {
    /// The status a server answers with.
    pub fn status(&self) -> Status {
        match self {
            RequestError::Decode(_) => Status::BadRequest,
            RequestError::Limit(e) => e.status(),
        }
    }
}

impl From<RequestError> for ErrorReply {
    fn from(e: RequestError) -> Self {
        ErrorReply::new(e.status(), e.to_string())
    }
}

/// Validates a request body, checks it against `limits`, then decodes it (same alignment
/// rule as [`crate::decode_request`]). A request over the limits is refused before any of
/// it is deserialized.
pub fn decode_request_within(body: &[u8], limits: &RequestLimits) -> Result<Request, RequestError> {
    let archived = rkyv::access::<ArchivedRequest, rancor::Error>(body)
        .map_err(|e| DecodeError(e.to_string()))?;
    limits.check(archived)?;
    rkyv::deserialize::<Request, rancor::Error>(archived)
        .map_err(|e| RequestError::Decode(DecodeError(e.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{FrameError, FrameHeader, FrameKind};
    use crate::key::ObjectId;
    use crate::message::{encode_request, Hello, PutOptions};

    fn small() -> RequestLimits {
        RequestLimits {
            max_batch: 4,
            max_new_keys: 8,
            max_field: 16,
            max_invoke_arg: 32,
            max_function_name: 8,
            max_lifetime_ms: 1000,
        }
    }

    fn invoke(ids: Vec<ObjectId>, function: &str, arg: usize) -> Request {
        Request::Invoke(crate::message::Invoke {
            ids,
            module: [7; 32],
            with_module: false,
            function: function.into(),
            arg: vec![1; arg],
            to_key: false,
        })
    }

    fn decode(request: &Request) -> Result<Request, RequestError> {
        decode_request_within(&encode_request(request), &small())
    }

    fn status(request: &Request) -> Status {
        decode(request).expect_err("over the limits").status()
    }

    fn ids(n: u128) -> Vec<ObjectId> {
        (0..n).map(ObjectId).collect()
    }

    #[test]
    fn requests_within_the_limits_decode_unchanged() {
        let within = [
            Request::NewKeys { count: 8 },
            Request::Get {
                ids: ids(4),
                wait_ms: u64::MAX,
            },
            Request::Put {
                sizes: vec![1, 2, 3, 4],
            },
            Request::Set {
                ids: ids(2),
                sizes: vec![5, 6],
            },
            Request::Seal {
                reservations: vec![1],
                lens: vec![2],
            },
            Request::OpenChannel {
                transport: "ucx".into(),
                address: vec![7; 16],
            },
            Request::Stats,
            invoke(ids(4), "sum_f64", 32),
            Request::PutWith {
                sizes: vec![1],
                options: PutOptions {
                    ttl_ms: 1000,
                    lease_ms: 1000,
                    owner: Some("o".repeat(16)),
                },
            },
            Request::GetAndEvict { ids: ids(4) },
            Request::Extend {
                ids: ids(4),
                lease_ms: 1000,
            },
        ];
        for request in within {
            assert_eq!(decode(&request), Ok(request.clone()));
        }
    }

    #[test]
    fn counts_and_batches_over_the_limits_are_too_large() {
        assert_eq!(
            decode(&Request::NewKeys { count: u32::MAX }),
            Err(RequestError::Limit(LimitError::NewKeys {
                count: u32::MAX,
                limit: 8
            }))
        );
        let over = [
            Request::Put { sizes: vec![0; 5] },
            Request::Get {
                ids: ids(5),
                wait_ms: 0,
            },
            Request::Exists { ids: ids(5) },
            Request::Evict { ids: ids(5) },
            Request::Set {
                ids: ids(5),
                sizes: vec![0; 5],
            },
            Request::MapSegments { ids: vec![0; 5] },
            Request::Create { sizes: vec![0; 5] },
            Request::Seal {
                reservations: vec![0; 5],
                lens: vec![0; 5],
            },
            Request::Release { leases: vec![0; 5] },
            Request::Abort {
                reservations: vec![0; 5],
            },
            Request::SegmentKeys { ids: vec![0; 5] },
            Request::OpenChannel {
                transport: "ucx".into(),
                address: vec![0; 17],
            },
            Request::UseOneSided {
                transport: "x".repeat(17),
                from: 0,
            },
            invoke(ids(5), "f", 0),
            invoke(ids(1), "too_long_name", 0),
            invoke(ids(1), "f", 33),
            Request::PutWith {
                sizes: vec![1],
                options: PutOptions {
                    ttl_ms: 1001,
                    ..PutOptions::default()
                },
            },
            Request::PutWith {
                sizes: vec![1],
                options: PutOptions {
                    lease_ms: u64::MAX,
                    ..PutOptions::default()
                },
            },
            Request::PutWith {
                sizes: vec![1],
                options: PutOptions {
                    owner: Some("o".repeat(17)),
                    ..PutOptions::default()
                },
            },
            Request::PutWith {
                sizes: vec![0; 5],
                options: PutOptions::default(),
            },
            Request::GetAndEvict { ids: ids(5) },
            Request::ReleaseOwner {
                owner: "o".repeat(17),
            },
            Request::Extend {
                ids: ids(5),
                lease_ms: 1,
            },
            Request::Extend {
                ids: ids(1),
                lease_ms: 1001,
            },
            Request::Hello(Hello {
                token: Some("t".repeat(17)),
                client_node: "n".into(),
                client_pid: 1,
                map: false,
                map_from: 0,
            }),
        ];
        for request in over {
            assert_eq!(status(&request), Status::TooLarge, "{request:?}");
        }
    }

    #[test]
    fn lists_that_must_pair_up_are_bad_requests() {
        let set = Request::Set {
            ids: ids(2),
            sizes: vec![1],
        };
        assert_eq!(status(&set), Status::BadRequest);
        let seal = Request::Seal {
            reservations: vec![1, 2],
            lens: vec![],
        };
        assert_eq!(status(&seal), Status::BadRequest);
        let error = ErrorReply::from(decode(&seal).expect_err("mismatch"));
        assert!(error.message.contains("2 reservations"), "{error}");
    }

    #[test]
    fn garbage_is_a_decode_error() {
        let mut body = rkyv::util::AlignedVec::<16>::new();
        body.extend_from_slice(&[0xff; 40]);
        let e = decode_request_within(&body, &small()).expect_err("garbage");
        assert!(matches!(e, RequestError::Decode(_)));
        assert_eq!(e.status(), Status::BadRequest);
    }

    #[test]
    fn before_authentication_only_a_small_body_and_no_payload_pass() {
        let limits = FrameLimits::pre_auth();
        let head = |body: u32, payload: u64| {
            FrameHeader {
                kind: FrameKind::Request,
                request_id: 1,
                body_len: body,
                payload_len: payload,
            }
            .encode()
        };
        assert!(FrameHeader::decode(&head(PRE_AUTH_MAX_BODY, 0), &limits).is_ok());
        assert!(matches!(
            FrameHeader::decode(&head(16 << 20, 0), &limits),
            Err(FrameError::BodyTooLarge { .. })
        ));
        assert!(matches!(
            FrameHeader::decode(&head(64, 1), &limits),
            Err(FrameError::PayloadTooLarge { .. })
        ));
        // A real Hello fits with room to spare.
        let hello = encode_request(&Request::Hello(Hello {
            token: Some("0123456789abcdef".repeat(4)),
            client_node: "a-rather-long-compute-node-name.cluster.example.org".into(),
            client_pid: u32::MAX,
            map: true,
            map_from: u64::MAX,
        }));
        assert!(hello.len() < PRE_AUTH_MAX_BODY as usize / 8);
    }
}
