//! Fuzz target: `FrameHeader::decode` on 32 arbitrary bytes (inputs shorter than 32 bytes are
//! skipped, bytes after the first 32 ignored). A header that decodes must re-encode to exactly
//! the input bytes, what small limits accept the default limits accept identically, and a
//! `FrameDecoder` fed just these bytes agrees with `FrameHeader::decode`.

#![no_main]

use dimstore_proto::{FrameDecoder, FrameHeader, FrameLimits, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(raw) = data.get(..HEADER_LEN) else {
        return;
    };
    let bytes: [u8; HEADER_LEN] = raw.try_into().expect("slice of HEADER_LEN bytes");

    let default = FrameHeader::decode(&bytes, &FrameLimits::default());
    if let Ok(h) = &default {
        assert_eq!(
            h.encode(),
            bytes,
            "decode then encode must give back the input"
        );
    }

    // The decoder refuses exactly what `decode` refuses, and with nothing after the header
    // completes a frame only when the header declares no body and no payload.
    let mut dec = FrameDecoder::new(FrameLimits::default());
    dec.push(&bytes);
    match (dec.next_frame(), &default) {
        (Err(e), Err(expected)) => assert_eq!(&e, expected),
        (Ok(None), Ok(h)) => assert!(h.body_len > 0 || h.payload_len > 0),
        (Ok(Some(frame)), Ok(h)) => {
            assert_eq!(&frame.header, h);
            assert!(h.body_len == 0 && h.payload_len == 0);
        }
        (got, expected) => panic!("decoder gave {got:?}, FrameHeader::decode gave {expected:?}"),
    }

    let small = FrameLimits {
        max_body: 64,
        max_payload: 64,
    };
    if let Ok(h) = FrameHeader::decode(&bytes, &small) {
        assert_eq!(h.encode(), bytes);
        assert_eq!(
            default,
            Ok(h),
            "accepted under small limits but not under defaults"
        );
    }
});
