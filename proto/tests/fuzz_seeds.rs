//! The checked-in fuzz seeds (`fuzz/seeds/`, written by `scripts/make-fuzz-seeds.sh`) are valid
//! current frames: every `frame_decoder` seed decodes into whole frames whose bodies decode
//! as requests (request and notice frames) or responses, with no bytes left over, and
//! together they cover every request and response variant. Seeds that stopped decoding after
//! a wire change would leave the fuzzer starting from nothing.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use dimstore_proto::{
    decode_request, decode_response, FrameDecoder, FrameHeader, FrameKind, FrameLimits, Request,
    Response, HEADER_LEN,
};
use rkyv::util::AlignedVec;

/// `max_body` / `max_payload` choices of the `frame_decoder` target (its `LIMITS`).
const LIMITS: [u32; 4] = [0, 64, 512, 4096];

fn seed_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(target)
}

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = seed_dir(target);
    let mut out: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("directory entry").path();
            let bytes = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (
                path.file_name().unwrap().to_string_lossy().into_owned(),
                bytes,
            )
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no seeds in {}", dir.display());
    out
}

/// Position of a request variant in the enum (exhaustive: a new variant must get a seed).
fn request_variant(request: &Request) -> usize {
    match request {
        Request::Hello(_) => 0,
        Request::Put { .. } => 1,
        Request::Get { .. } => 2,
        Request::Exists { .. } => 3,
        Request::Evict { .. } => 4,
        Request::NewKeys { .. } => 5,
        Request::Set { .. } => 6,
        Request::Stats => 7,
        Request::Shutdown => 8,
        Request::MapSegments { .. } => 9,
        Request::Create { .. } => 10,
        Request::Seal { .. } => 11,
        Request::Release { .. } => 12,
        Request::Abort { .. } => 13,
        Request::UseOneSided { .. } => 14,
        Request::SegmentKeys { .. } => 15,
        Request::OpenChannel { .. } => 16,
        Request::Invoke(_) => 17,
        Request::PutWith { .. } => 18,
        Request::GetAndEvict { .. } => 19,
        Request::ReleaseOwner { .. } => 20,
        Request::Extend { .. } => 21,
    }
}
const REQUEST_VARIANTS: usize = 22;

/// Position of a response variant in the enum (exhaustive, as [`request_variant`]).
fn response_variant(response: &Response) -> usize {
    match response {
        Response::Hello(_) => 0,
        Response::Put { .. } => 1,
        Response::Get { .. } => 2,
        Response::Exists { .. } => 3,
        Response::Evict { .. } => 4,
        Response::NewKeys { .. } => 5,
        Response::Done => 6,
        Response::Stats(_) => 7,
        Response::Segments { .. } => 8,
        Response::SegmentKeys { .. } => 9,
        Response::Created { .. } => 10,
        Response::Error(_) => 11,
        Response::Channel { .. } => 12,
        Response::Invoked(_) => 13,
        Response::Released { .. } => 14,
    }
}
const RESPONSE_VARIANTS: usize = 15;

#[test]
fn every_frame_decoder_seed_decodes_to_whole_valid_frames() {
    let mut requests = BTreeSet::new();
    let mut responses = BTreeSet::new();
    for (name, input) in seeds("frame_decoder") {
        // The target's input layout: limits byte, chunk count, chunk lengths, stream.
        assert!(input.len() >= 2, "{name}: shorter than the control prefix");
        let limits = FrameLimits {
            max_body: LIMITS[usize::from(input[0] & 3)],
            max_payload: u64::from(LIMITS[usize::from((input[0] >> 2) & 3)]),
        };
        let n = usize::from(input[1] % 8);
        let stream = &input[2 + n..];
        let mut decoder = FrameDecoder::new(limits);
        decoder.push(stream);
        let mut consumed = 0;
        let mut frames = 0;
        while let Some(frame) = decoder
            .next_frame()
            .unwrap_or_else(|e| panic!("{name}: frame {frames} refused: {e}"))
        {
            consumed += HEADER_LEN + frame.body.len() + frame.payload.len();
            frames += 1;
            let mut body = AlignedVec::<16>::new();
            body.extend_from_slice(&frame.body);
            match frame.header.kind {
                FrameKind::Request | FrameKind::Notice => {
                    let request = decode_request(&body)
                        .unwrap_or_else(|e| panic!("{name}: request body: {e}"));
                    requests.insert(request_variant(&request));
                }
                FrameKind::Response => {
                    let response = decode_response(&body)
                        .unwrap_or_else(|e| panic!("{name}: response body: {e}"));
                    responses.insert(response_variant(&response));
                }
            }
        }
        assert!(frames > 0, "{name}: no frame");
        assert_eq!(
            consumed,
            stream.len(),
            "{name}: trailing bytes after the frames"
        );
    }
    let missing: Vec<_> = (0..REQUEST_VARIANTS)
        .filter(|v| !requests.contains(v))
        .collect();
    assert!(
        missing.is_empty(),
        "request variants without a seed: {missing:?}"
    );
    let missing: Vec<_> = (0..RESPONSE_VARIANTS)
        .filter(|v| !responses.contains(v))
        .collect();
    assert!(
        missing.is_empty(),
        "response variants without a seed: {missing:?}"
    );
}

#[test]
fn every_header_seed_is_a_valid_header() {
    for (name, input) in seeds("header") {
        let raw: [u8; HEADER_LEN] = input
            .get(..HEADER_LEN)
            .and_then(|raw| raw.try_into().ok())
            .unwrap_or_else(|| panic!("{name}: shorter than a header"));
        FrameHeader::decode(&raw, &FrameLimits::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn every_server_requests_seed_is_a_config_byte_then_request_frames() {
    for (name, input) in seeds("server_requests") {
        let (_config, stream) = input
            .split_first()
            .unwrap_or_else(|| panic!("{name}: empty"));
        let mut decoder = FrameDecoder::new(FrameLimits::default());
        decoder.push(stream);
        let mut consumed = 0;
        while let Some(frame) = decoder
            .next_frame()
            .unwrap_or_else(|e| panic!("{name}: frame refused: {e}"))
        {
            consumed += HEADER_LEN + frame.body.len() + frame.payload.len();
            assert_ne!(frame.header.kind, FrameKind::Response, "{name}: a response");
            let mut body = AlignedVec::<16>::new();
            body.extend_from_slice(&frame.body);
            decode_request(&body).unwrap_or_else(|e| panic!("{name}: request body: {e}"));
        }
        assert!(consumed > 0, "{name}: no frame");
        assert_eq!(
            consumed,
            stream.len(),
            "{name}: trailing bytes after the frames"
        );
    }
}
