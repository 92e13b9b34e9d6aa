//! Framing: the fixed header that precedes every message, and a push-style decoder.
//!
//! Layout (little endian, 32 bytes):
//!
//! | offset | size | field                                   |
//! |--------|------|-----------------------------------------|
//! | 0      | 4    | magic `b"DIMS"`                         |
//! | 4      | 2    | protocol version                        |
//! | 6      | 2    | kind ([`FrameKind`])                    |
//! | 8      | 8    | request id (a response echoes it)       |
//! | 16     | 4    | body length (rkyv archive)              |
//! | 20     | 4    | reserved, must be zero                  |
//! | 24     | 8    | payload length (raw bytes after body)   |
//!
//! Lengths are checked against [`FrameLimits`] before anything is allocated, so a declared
//! length of 2^63 costs the receiver nothing.

use crate::PROTOCOL_VERSION;

/// Size of the fixed frame header in bytes.
pub const HEADER_LEN: usize = 32;
/// First four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"DIMS";

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// A client request; the body is a [`crate::Request`].
    Request,
    /// A server response; the body is a [`crate::Response`].
    Response,
    /// A one-way client request that gets no response (releasing leases, aborting
    /// reservations); the body is a [`crate::Request`].
    Notice,
}

impl FrameKind {
    fn to_wire(self) -> u16 {
        match self {
            FrameKind::Request => 1,
            FrameKind::Response => 2,
            FrameKind::Notice => 3,
        }
    }

    fn from_wire(v: u16) -> Option<Self> {
        match v {
            1 => Some(FrameKind::Request),
            2 => Some(FrameKind::Response),
            3 => Some(FrameKind::Notice),
            _ => None,
        }
    }
}

/// The decoded fixed header of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Request or response.
    pub kind: FrameKind,
    /// Correlates a response with its request.
    pub request_id: u64,
    /// Length of the archived message body.
    pub body_len: u32,
    /// Length of the raw payload that follows the body.
    pub payload_len: u64,
}

/// Upper bounds a receiver enforces before allocating anything for a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    /// Largest accepted message body.
    pub max_body: u32,
    /// Largest accepted payload.
    pub max_payload: u64,
}

impl Default for FrameLimits {
    fn default() -> Self {
        FrameLimits {
            max_body: 16 << 20,
            max_payload: 1 << 40,
        }
    }
}

/// Why a frame was refused. Every variant leaves the stream unusable: the receiver should
/// answer with an error if it can and close the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The first four bytes are not `DIMS`.
    #[error("bad magic {0:02x?}: not a dimstore peer")]
    BadMagic([u8; 4]),
    /// The peer speaks another protocol version.
    #[error("protocol version {got} not supported (this side speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion {
        /// Version found in the header.
        got: u16,
    },
    /// The kind field names no known frame kind.
    #[error("unknown frame kind {0}")]
    UnknownKind(u16),
    /// Reserved bits were set.
    #[error("reserved header field is {0:#x}, expected 0")]
    Reserved(u32),
    /// The declared body is larger than the limit.
    #[error("declared body length {declared} exceeds the limit of {limit} bytes")]
    BodyTooLarge {
        /// Declared length.
        declared: u32,
        /// Receiver's limit.
        limit: u32,
    },
    /// The declared payload is larger than the limit.
    #[error("declared payload length {declared} exceeds the limit of {limit} bytes")]
    PayloadTooLarge {
        /// Declared length.
        declared: u64,
        /// Receiver's limit.
        limit: u64,
    },
    /// A frame head held in one message (header and body) is shorter than a header.
    #[error("a frame head of {0} bytes is shorter than a frame header")]
    ShortHead(usize),
    /// A frame head held in one message carries another body length than its header says.
    #[error("frame header announces a {declared}-byte body, the message carries {carried}")]
    BodyLength {
        /// Body length in the header.
        declared: u32,
        /// Body bytes present.
        carried: usize,
    },
}

impl FrameHeader {
    /// Serializes the header into its fixed 32-byte form.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..4].copy_from_slice(&MAGIC);
        out[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        out[6..8].copy_from_slice(&self.kind.to_wire().to_le_bytes());
        out[8..16].copy_from_slice(&self.request_id.to_le_bytes());
        out[16..20].copy_from_slice(&self.body_len.to_le_bytes());
        out[24..32].copy_from_slice(&self.payload_len.to_le_bytes());
        out
    }

    /// The header followed by `body`, for a frame with `payload_len` bytes of payload to
    /// follow, appended to `out` (after anything already there, e.g. a transport's own
    /// prefix).
    pub fn write_head(
        out: &mut Vec<u8>,
        kind: FrameKind,
        request_id: u64,
        body: &[u8],
        payload_len: u64,
    ) {
        let header = FrameHeader {
            kind,
            request_id,
            body_len: body.len() as u32,
            payload_len,
        };
        out.reserve(HEADER_LEN + body.len());
        out.extend_from_slice(&header.encode());
        out.extend_from_slice(body);
    }

    /// Parses a frame head held whole in one message (header, then exactly its body, as
    /// [`write_head`](Self::write_head) lays it out) and returns the header and the body.
    pub fn decode_head<'a>(
        head: &'a [u8],
        limits: &FrameLimits,
    ) -> Result<(FrameHeader, &'a [u8]), FrameError> {
        let (raw, body) = head
            .split_first_chunk::<HEADER_LEN>()
            .ok_or(FrameError::ShortHead(head.len()))?;
        let header = FrameHeader::decode(raw, limits)?;
        if body.len() != header.body_len as usize {
            return Err(FrameError::BodyLength {
                declared: header.body_len,
                carried: body.len(),
            });
        }
        Ok((header, body))
    }

    /// The request id of header bytes that may not decode (`None` if too short), so that
    /// an error about a malformed frame still reaches the request that sent it.
    pub fn peek_request_id(bytes: &[u8]) -> Option<u64> {
        bytes.get(8..16).map(|id| u64::from_le_bytes(le_array(id)))
    }

    /// Parses and validates a header against `limits`. Nothing is allocated.
    pub fn decode(bytes: &[u8; HEADER_LEN], limits: &FrameLimits) -> Result<Self, FrameError> {
        let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
        if magic != MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        if version != PROTOCOL_VERSION {
            return Err(FrameError::UnsupportedVersion { got: version });
        }
        let kind_raw = u16::from_le_bytes([bytes[6], bytes[7]]);
        let kind = FrameKind::from_wire(kind_raw).ok_or(FrameError::UnknownKind(kind_raw))?;
        let request_id = u64::from_le_bytes(le_array(&bytes[8..16]));
        let body_len = u32::from_le_bytes(le_array(&bytes[16..20]));
        let reserved = u32::from_le_bytes(le_array(&bytes[20..24]));
        let payload_len = u64::from_le_bytes(le_array(&bytes[24..32]));
        if reserved != 0 {
            return Err(FrameError::Reserved(reserved));
        }
        if body_len > limits.max_body {
            return Err(FrameError::BodyTooLarge {
                declared: body_len,
                limit: limits.max_body,
            });
        }
        if payload_len > limits.max_payload {
            return Err(FrameError::PayloadTooLarge {
                declared: payload_len,
                limit: limits.max_payload,
            });
        }
        Ok(FrameHeader {
            kind,
            request_id,
            body_len,
            payload_len,
        })
    }
}

fn le_array<const N: usize>(slice: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(slice);
    out
}

/// One complete frame as collected by [`FrameDecoder`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The validated header.
    pub header: FrameHeader,
    /// The message body bytes (still to be decoded with [`crate::decode_request`] or
    /// [`crate::decode_response`]).
    pub body: Vec<u8>,
    /// The raw payload bytes.
    pub payload: Vec<u8>,
}

/// A push-style decoder: feed it bytes as they arrive, take out complete frames.
///
/// Runtimes with their own zero-copy read paths use [`FrameHeader::decode`] directly; this
/// decoder serves tests, fuzzing and simple peers. It never buffers more than one frame's
/// validated lengths.
#[derive(Debug)]
pub struct FrameDecoder {
    limits: FrameLimits,
    buf: Vec<u8>,
    header: Option<FrameHeader>,
}

impl FrameDecoder {
    /// A decoder enforcing `limits`.
    pub fn new(limits: FrameLimits) -> Self {
        FrameDecoder {
            limits,
            buf: Vec::new(),
            header: None,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Returns the next complete frame, `Ok(None)` if more bytes are needed, or the error
    /// that makes the stream unusable.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let header = match self.header {
            Some(h) => h,
            None => {
                if self.buf.len() < HEADER_LEN {
                    return Ok(None);
                }
                let raw: [u8; HEADER_LEN] = le_array(&self.buf[..HEADER_LEN]);
                let h = FrameHeader::decode(&raw, &self.limits)?;
                self.buf.drain(..HEADER_LEN);
                self.header = Some(h);
                h
            }
        };
        let body_len = header.body_len as usize;
        let total = (body_len as u64).saturating_add(header.payload_len);
        if (self.buf.len() as u64) < total {
            return Ok(None);
        }
        let payload_end = body_len + header.payload_len as usize;
        let payload = self.buf[body_len..payload_end].to_vec();
        let body = self.buf[..body_len].to_vec();
        self.buf.drain(..payload_end);
        self.header = None;
        Ok(Some(Frame {
            header,
            body,
            payload,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn heads_held_in_one_message_round_trip_and_are_checked() {
        let mut head = b"prefix".to_vec();
        FrameHeader::write_head(&mut head, FrameKind::Notice, 42, b"body", 7);
        let (header, body) =
            FrameHeader::decode_head(&head[6..], &FrameLimits::default()).expect("valid head");
        assert_eq!(header, self::header(FrameKind::Notice, 42, 4, 7));
        assert_eq!(body, b"body");
        assert_eq!(FrameHeader::peek_request_id(&head[6..]), Some(42));
        assert_eq!(FrameHeader::peek_request_id(&head[6..15]), None);
        let limits = FrameLimits::default();
        assert_eq!(
            FrameHeader::decode_head(&head[6..20], &limits),
            Err(FrameError::ShortHead(14))
        );
        assert_eq!(
            FrameHeader::decode_head(&head[6..head.len() - 1], &limits),
            Err(FrameError::BodyLength {
                declared: 4,
                carried: 3
            })
        );
    }

    fn header(kind: FrameKind, id: u64, body: u32, payload: u64) -> FrameHeader {
        FrameHeader {
            kind,
            request_id: id,
            body_len: body,
            payload_len: payload,
        }
    }

    #[test]
    fn rejects_wrong_magic_version_kind_and_reserved() {
        let limits = FrameLimits::default();
        let good = header(FrameKind::Request, 7, 10, 0).encode();
        assert!(FrameHeader::decode(&good, &limits).is_ok());

        let mut bad = good;
        bad[0] = b'X';
        assert!(matches!(
            FrameHeader::decode(&bad, &limits),
            Err(FrameError::BadMagic(_))
        ));
        let mut bad = good;
        bad[4] = 9;
        assert_eq!(
            FrameHeader::decode(&bad, &limits),
            Err(FrameError::UnsupportedVersion { got: 9 })
        );
        let mut bad = good;
        bad[6] = 77;
        assert_eq!(
            FrameHeader::decode(&bad, &limits),
            Err(FrameError::UnknownKind(77))
        );
        let mut bad = good;
        bad[21] = 1;
        assert!(matches!(
            FrameHeader::decode(&bad, &limits),
            Err(FrameError::Reserved(_))
        ));
    }

    #[test]
    fn huge_declared_lengths_are_refused_before_allocation() {
        let limits = FrameLimits {
            max_body: 1024,
            max_payload: 1 << 20,
        };
        let h = header(FrameKind::Request, 1, 0, 1 << 63).encode();
        assert_eq!(
            FrameHeader::decode(&h, &limits),
            Err(FrameError::PayloadTooLarge {
                declared: 1 << 63,
                limit: 1 << 20
            })
        );
        let h = header(FrameKind::Request, 1, u32::MAX, 0).encode();
        assert!(matches!(
            FrameHeader::decode(&h, &limits),
            Err(FrameError::BodyTooLarge { .. })
        ));
        let mut dec = FrameDecoder::new(limits);
        dec.push(&header(FrameKind::Request, 1, 0, u64::MAX).encode());
        assert!(dec.next_frame().is_err());
    }

    proptest! {
        #[test]
        fn header_roundtrips(id: u64, body in 0u32..(16 << 20), payload in 0u64..(1 << 40), req: bool) {
            let kind = if req { FrameKind::Request } else { FrameKind::Response };
            let h = header(kind, id, body, payload);
            prop_assert_eq!(FrameHeader::decode(&h.encode(), &FrameLimits::default()), Ok(h));
        }

        #[test]
        fn decoder_reassembles_frames_split_anywhere(
            frames in proptest::collection::vec((any::<u64>(), proptest::collection::vec(any::<u8>(), 0..64), proptest::collection::vec(any::<u8>(), 0..200)), 1..6),
            split in 1usize..50,
        ) {
            let mut wire = Vec::new();
            for (id, body, payload) in &frames {
                wire.extend_from_slice(&header(FrameKind::Response, *id, body.len() as u32, payload.len() as u64).encode());
                wire.extend_from_slice(body);
                wire.extend_from_slice(payload);
            }
            let mut dec = FrameDecoder::new(FrameLimits::default());
            let mut out = Vec::new();
            for chunk in wire.chunks(split) {
                dec.push(chunk);
                while let Some(f) = dec.next_frame().expect("valid stream") {
                    out.push((f.header.request_id, f.body, f.payload));
                }
            }
            prop_assert_eq!(out, frames);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut dec = FrameDecoder::new(FrameLimits { max_body: 128, max_payload: 128 });
            dec.push(&bytes);
            for _ in 0..8 {
                match dec.next_frame() {
                    Ok(Some(_)) => continue,
                    _ => break,
                }
            }
        }
    }
}
