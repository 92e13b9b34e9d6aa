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
//! - a body that decodes re-encodes to a body that decodes to the same message.

#![no_main]

use dimstore_proto::{
    decode_request, decode_response, encode_request, encode_response, frame::Frame, FrameDecoder,
    FrameError, FrameLimits,
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
    if chunks.is_empty() {
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
            dec.push(head);
            if !drain(&mut dec, &mut split) {
                break;
            }
        }
    }
    assert_eq!(whole, split, "chunked decode differs from one-shot decode");

    for frame in &whole.0 {
        let h = &frame.header;
        assert_eq!(frame.body.len(), h.body_len as usize);
        assert_eq!(frame.payload.len() as u64, h.payload_len);
        assert!(h.body_len <= limits.max_body);
        assert!(h.payload_len <= limits.max_payload);
        check_body(&frame.body);
    }
});
