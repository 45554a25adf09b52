//! Tests of the SPDY framing: round trips through our encoder and decoder, the
//! shared zlib context across frames, and malformed input.

use super::*;

fn h(pairs: &[(&str, &str)]) -> Headers {
    pairs
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect()
}

async fn roundtrip(frames: &[Frame]) -> Vec<Frame> {
    let mut enc = HeaderEncoder::new().expect("encoder");
    let mut wire = Vec::new();
    for f in frames {
        wire.extend(encode_frame(f, &mut enc).expect("encode"));
    }
    let mut dec = HeaderDecoder::default();
    let mut r = wire.as_slice();
    let mut out = Vec::new();
    while let Some(f) = read_frame(&mut r, &mut dec).await.expect("read") {
        out.push(f);
    }
    out
}

#[tokio::test]
async fn frames_round_trip_with_one_zlib_stream_per_direction() {
    let frames = vec![
        Frame::SynStream {
            stream_id: 1,
            associated_to: 0,
            priority: 0,
            flags: 0,
            headers: h(&[("streamtype", "error")]),
        },
        Frame::SynStream {
            stream_id: 3,
            associated_to: 0,
            priority: 2,
            flags: FLAG_FIN,
            headers: h(&[("streamtype", "data"), ("port", "80"), ("requestid", "0")]),
        },
        Frame::SynReply {
            stream_id: 3,
            flags: 0,
            headers: vec![],
        },
        Frame::Headers {
            stream_id: 3,
            flags: 0,
            headers: h(&[("a", "1"), ("a", "2")]),
        },
        Frame::Data {
            stream_id: 3,
            flags: FLAG_FIN,
            data: b"hello".to_vec(),
        },
        Frame::Ping { id: 7 },
        Frame::RstStream {
            stream_id: 5,
            status: RST_CANCEL,
        },
        Frame::WindowUpdate {
            stream_id: 1,
            delta: 65536,
        },
        Frame::Settings,
        Frame::GoAway {
            last_good_stream_id: 3,
            status: 0,
        },
    ];
    assert_eq!(roundtrip(&frames).await, frames);
}

#[tokio::test]
async fn header_names_are_lowercased_on_the_wire() {
    let frames = [Frame::SynReply {
        stream_id: 1,
        flags: 0,
        headers: h(&[("X-Stream-Protocol-Version", "v4.channel.k8s.io")]),
    }];
    let got = roundtrip(&frames).await;
    assert_eq!(
        got,
        vec![Frame::SynReply {
            stream_id: 1,
            flags: 0,
            headers: h(&[("x-stream-protocol-version", "v4.channel.k8s.io")]),
        }]
    );
}

#[tokio::test]
async fn a_large_header_block_inflates_whole() {
    let big = "x".repeat(20_000);
    let frames = vec![Frame::SynStream {
        stream_id: 1,
        associated_to: 0,
        priority: 0,
        flags: 0,
        headers: h(&[("big", &big), ("after", "y")]),
    }];
    assert_eq!(roundtrip(&frames).await, frames);
}

#[tokio::test]
async fn truncated_and_foreign_input_is_an_error_not_a_panic() {
    let mut dec = HeaderDecoder::default();
    // A frame header promising 10 bytes, then the end.
    let mut r: &[u8] = &[0x80, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00, 0x0a, 1, 2];
    assert!(read_frame(&mut r, &mut dec).await.is_err());
    // An HTTP request where SPDY was expected: version 0x4554 is not 3.
    let mut r: &[u8] = b"GET / HTTP/1.1\r\n\r\n";
    let mut dec = HeaderDecoder::default();
    // "GET " has the high bit clear: a data frame on stream 0x47455420 with a huge
    // length, cut short.
    assert!(read_frame(&mut r, &mut dec).await.is_err());
    // A SYN_STREAM whose header block isn't zlib.
    let mut bad = vec![0x80, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00, 0x0e];
    bad.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef]);
    let mut r = bad.as_slice();
    let mut dec = HeaderDecoder::default();
    assert!(read_frame(&mut r, &mut dec).await.is_err());
    // An unknown control frame type.
    let mut r: &[u8] = &[0x80, 0x03, 0x00, 0x63, 0x00, 0x00, 0x00, 0x00];
    assert!(read_frame(&mut r, &mut dec).await.is_err());
    // A clean end between frames is no error.
    let mut r: &[u8] = &[];
    assert!(read_frame(&mut r, &mut dec).await.expect("eof").is_none());
}

#[test]
fn the_dictionary_is_spdy3s() {
    // Its zlib dictionary id (Adler-32), as every SPDY/3 implementation computes it.
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in DICTIONARY.iter() {
        a = (a + u32::from(byte)) % 65521;
        b = (b + a) % 65521;
    }
    assert_eq!(b << 16 | a, 0xe3c6_a7c2);
}
