//! Fuzz target: `FrameDecoder` fed arbitrary bytes in arbitrary chunk splits, and every frame
//! body it returns through `decode_request` / `decode_response`.
//!
//! Input layout (the seeds in `fuzz/seeds/frame_decoder/` follow it, see `make_seeds`):
//!
//! | byte      | meaning                                                             |
//! |-----------|---------------------------------------------------------------------|
//! | 0         | limits: bits 0-1 pick `max_body`, bits 2-3 `max_payload` from `LIMITS` |
//! | 1         | `n`: number of chunk-length bytes that follow (`n % 8`)             |
//! | 2..2+n    | chunk lengths, used cyclically; 0 means "push an empty slice"       |
//! | rest      | the byte stream                                                     |
//!
//! Checked, besides "never panics":
//! - the chunked decode yields exactly the frames (and the final error) of a one-shot decode;
//! - each frame agrees with its header and respects the limits;
//! - a body that decodes re-encodes to a body that decodes to the same message;
//! - the request engine (`dimstore_engine::StreamEngine`, an authenticated connection with
//!   the same limits), fed the same chunks, answers each request frame the decoder yields
//!   once and in order with its id, stays silent on notices, closes on a response frame,
//!   and closes with the decoder's error where the decoder stopped.

#![no_main]

use std::time::{Duration, Instant};

use dimstore_engine::{
    Action, Outcome as Answered, PeerInfo, Reply, ServeOptions, Service, StreamEngine, StreamError,
};
use dimstore_proto::{
    decode_request, decode_response, encode_request, encode_response, frame::Frame, ErrorReply,
    FrameDecoder, FrameError, FrameHeader, FrameKind, FrameLimits, Request, RequestLimits,
    Response, HEADER_LEN,
};
use libfuzzer_sys::fuzz_target;
use rkyv::util::AlignedVec;

/// Small limits, so declared lengths beyond them are exercised without large allocations.
const LIMITS: [u32; 4] = [0, 64, 512, 4096];

/// What a decoder made of a stream: the frames in order, then the error if one stopped it.
type Outcome = (Vec<Frame>, Option<FrameError>);

/// Takes every frame that is ready; returns false once the stream is unusable.
fn drain(dec: &mut FrameDecoder, out: &mut Outcome) -> bool {
    loop {
        match dec.next_frame() {
            Ok(Some(frame)) => out.0.push(frame),
            Ok(None) => return true,
            Err(e) => {
                out.1 = Some(e);
                return false;
            }
        }
    }
}

fn check_body(body: &[u8]) {
    let mut aligned = AlignedVec::<16>::new();
    aligned.extend_from_slice(body);
    if let Ok(req) = decode_request(&aligned) {
        let again = encode_request(&req);
        assert_eq!(
            decode_request(&again).as_ref(),
            Ok(&req),
            "request re-encode"
        );
    }
    if let Ok(resp) = decode_response(&aligned) {
        let again = encode_response(&resp);
        assert_eq!(
            decode_response(&again).as_ref(),
            Ok(&resp),
            "response re-encode"
        );
    }
}

/// A service that takes every payload and answers everything with `Done`; its sessions
/// count as authenticated, so the connection is held to the limits under test.
struct Accepting;

impl Service for Accepting {
    type Session = ();
    type Sink = Vec<u8>;
    type Source = Vec<u8>;

    fn open_session(&self, _: &'static str, _: PeerInfo) {}

    fn authenticated(&self, _: &()) -> bool {
        true
    }

    fn payload_sinks(&self, _: &mut (), _: &Request, len: u64) -> Result<Vec<Vec<u8>>, ErrorReply> {
        Ok(vec![vec![0; len as usize]])
    }

    fn handle(&self, _: &mut (), _: Request, _: Vec<Vec<u8>>) -> Answered<Vec<u8>> {
        Answered::Ready(Reply::message(Response::Done))
    }

    fn record_sent(&self, _: &'static str, _: u64) {}
}

/// Feeds `stream` to a stream engine in the pieces `pieces` yields and checks its answers
/// against what the decoder made of the same stream.
fn check_engine(limits: FrameLimits, pieces: &[&[u8]], decoded: &Outcome) {
    let service = Accepting;
    let options = ServeOptions {
        limits,
        requests: RequestLimits::default(),
        stall_timeout: Duration::from_secs(1),
    };
    let now = Instant::now();
    let mut engine = StreamEngine::new(&service, (), options, now);
    for mut piece in pieces.iter().copied() {
        while !piece.is_empty() && !engine.is_closed() {
            let buf = engine.recv_buffer();
            let n = buf.len().min(piece.len());
            buf[..n].copy_from_slice(&piece[..n]);
            engine.received(&service, n, now);
            piece = &piece[n..];
        }
    }
    let answer_id = |head: &[u8]| FrameHeader::peek_request_id(head).expect("a header");
    let mut actions = std::iter::from_fn(|| engine.poll_action());
    for frame in &decoded.0 {
        match frame.header.kind {
            FrameKind::Notice => continue,
            FrameKind::Request => match actions.next() {
                Some(Action::Send(reply)) => {
                    assert_eq!(answer_id(reply.head()), frame.header.request_id)
                }
                _ => panic!("a request frame the decoder accepted got no reply"),
            },
            FrameKind::Response => match actions.next() {
                Some(Action::Close(closing)) => {
                    assert!(closing.end.is_ok());
                    let last = closing.last.expect("a response frame is answered");
                    assert_eq!(answer_id(last.head()), frame.header.request_id);
                    return;
                }
                _ => panic!("a response frame did not close the connection"),
            },
        }
    }
    match (actions.next(), &decoded.1) {
        (Some(Action::Close(closing)), Some(error)) => match closing.end {
            Err(StreamError::Frame(e)) => assert_eq!(&e, error),
            other => panic!("closed with {other:?}, the decoder stopped on {error}"),
        },
        (None, None) => assert!(!engine.is_closed()),
        // The engine refuses a response frame on its header; the decoder yields the frame
        // only once its body and payload are in: a response header with its frame still
        // incomplete closes the engine while the decoder waits for more.
        (Some(Action::Close(closing)), None) => {
            let consumed: usize = decoded
                .0
                .iter()
                .map(|f| HEADER_LEN + f.body.len() + f.payload.len())
                .sum();
            let stream: Vec<u8> = pieces.concat();
            let rest = &stream[consumed..];
            let head: &[u8; HEADER_LEN] = rest
                .first_chunk()
                .expect("the engine closed before a whole header arrived");
            let header = FrameHeader::decode(head, &limits).expect("a valid header");
            assert_eq!(
                header.kind,
                FrameKind::Response,
                "closed on a {:?} frame",
                header.kind
            );
            assert!(closing.end.is_ok());
            let last = closing.last.expect("a response frame is answered");
            assert_eq!(answer_id(last.head()), header.request_id);
        }
        _ => panic!("the engine and the decoder disagree on where the stream breaks"),
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let limits = FrameLimits {
        max_body: LIMITS[usize::from(data[0] & 3)],
        max_payload: u64::from(LIMITS[usize::from((data[0] >> 2) & 3)]),
    };
    let n = usize::from(data[1] % 8);
    if data.len() < 2 + n {
        return;
    }
    let chunks = &data[2..2 + n];
    let stream = &data[2 + n..];

    // Reference: everything pushed at once.
    let mut whole: Outcome = (Vec::new(), None);
    let mut dec = FrameDecoder::new(limits);
    dec.push(stream);
    drain(&mut dec, &mut whole);

    // The same stream in the chunk pattern the input asks for.
    let mut split: Outcome = (Vec::new(), None);
    let mut dec = FrameDecoder::new(limits);
    let mut pieces: Vec<&[u8]> = Vec::new();
    if chunks.is_empty() {
        pieces.push(stream);
        dec.push(stream);
        drain(&mut dec, &mut split);
    } else {
        let mut rest = stream;
        let mut i = 0;
        while !rest.is_empty() {
            let mut len = usize::from(chunks[i % chunks.len()]);
            i += 1;
            if len == 0 {
                dec.push(&[]);
                if !drain(&mut dec, &mut split) {
                    break;
                }
                len = 1;
            }
            let (head, tail) = rest.split_at(len.min(rest.len()));
            rest = tail;
            pieces.push(head);
            dec.push(head);
            if !drain(&mut dec, &mut split) {
                break;
            }
        }
    }
    assert_eq!(whole, split, "chunked decode differs from one-shot decode");
    check_engine(limits, &pieces, &whole);

    for frame in &whole.0 {
        let h = &frame.header;
        assert_eq!(frame.body.len(), h.body_len as usize);
        assert_eq!(frame.payload.len() as u64, h.payload_len);
        assert!(h.body_len <= limits.max_body);
        assert!(h.payload_len <= limits.max_payload);
        check_body(&frame.body);
    }
});
