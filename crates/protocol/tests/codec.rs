//! Table-driven and property tests for the frame codec: every frame survives a round trip, and
//! arbitrary bytes never panic the decoder.

use ignite_protocol::*;
use proptest::prelude::*;

fn invoke() -> Frame {
    Frame::Invoke(Invoke {
        id: 7,
        execution_id: "01JABCDEF".into(),
        function_id: "acme-corp/tiny".into(),
        deadline_unix_ms: 1_700_000_000_000,
        env: vec![("GREETING".into(), "hi".into())],
        method: "POST".into(),
        path: "/".into(),
        query: "a=1".into(),
        headers: vec![("content-type".into(), "application/json".into())],
        body: br#"{"message":"hi there"}"#.to_vec(),
    })
}

#[test]
fn every_frame_kind_round_trips() {
    let frames = [
        Frame::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            sdk_version: "0.1.0".into(),
        }),
        invoke(),
        Frame::Response(Response {
            id: 7,
            status: 200,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: b"hello".to_vec(),
        }),
        Frame::Error(ErrorFrame {
            id: 7,
            kind: ErrorKind::Panic,
            status: 500,
            message: "boom".into(),
        }),
        Frame::Log(Log {
            id: 7,
            line: "a log line".into(),
        }),
        Frame::Shutdown,
    ];
    for frame in frames {
        let bytes = encode(&frame).unwrap();
        assert_eq!(&bytes[..2], b"IG");
        assert_eq!(
            decode_header(bytes[..HEADER_LEN].try_into().unwrap()).unwrap() as usize,
            bytes.len() - HEADER_LEN
        );
        let (back, used) = decode(&bytes).unwrap().unwrap();
        assert_eq!(back, frame);
        assert_eq!(used, bytes.len());
        // Blocking reader agrees.
        let mut buf = Vec::new();
        let back = read_frame(&mut bytes.as_slice(), &mut buf)
            .unwrap()
            .unwrap();
        assert_eq!(back, frame);
    }
}

#[test]
fn decoder_table() {
    let whole = encode(&invoke()).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "incomplete"),
        ("one magic byte", b"I".to_vec(), "incomplete"),
        ("header only", whole[..HEADER_LEN].to_vec(), "incomplete"),
        (
            "one byte short",
            whole[..whole.len() - 1].to_vec(),
            "incomplete",
        ),
        ("whole frame", whole.clone(), "frame"),
        ("println garbage", b"hello world\n".to_vec(), "not a frame"),
        ("one garbage byte", b"h".to_vec(), "not a frame"),
        (
            "too large",
            [b'I', b'G', 0xff, 0xff, 0xff, 0xff].to_vec(),
            "too large",
        ),
        (
            "bad payload",
            [b'I', b'G', 1, 0, 0, 0, 0xff].to_vec(),
            "malformed",
        ),
    ];
    for (name, bytes, expect) in cases {
        let got = match decode(&bytes) {
            Ok(None) => "incomplete",
            Ok(Some(_)) => "frame",
            Err(FrameError::NotAFrame { .. }) => "not a frame",
            Err(FrameError::TooLarge { .. }) => "too large",
            Err(FrameError::Malformed(_)) => "malformed",
            Err(e) => panic!("{name}: unexpected {e}"),
        };
        assert_eq!(got, expect, "{name}");
    }
}

#[test]
fn garbage_error_names_println_and_eprintln() {
    let err = decode(b"hello\n").unwrap_err().to_string();
    assert!(err.contains("println!()"), "{err}");
    assert!(err.contains("eprintln!()"), "{err}");
    assert!(err.contains("framing error"), "{err}");
}

#[test]
fn blocking_reader_refuses_garbage_without_waiting_for_a_full_header() {
    // Three bytes then end of input: the reader must not ask for more before refusing.
    let mut buf = Vec::new();
    let err = read_frame(&mut &b"hi\n"[..], &mut buf).unwrap_err();
    assert!(matches!(err, FrameError::NotAFrame { .. }), "{err}");
    // A clean close between frames is not an error.
    assert!(read_frame(&mut &b""[..], &mut buf).unwrap().is_none());
    // A close inside a frame is.
    let whole = encode(&invoke()).unwrap();
    let err = read_frame(&mut &whole[..10], &mut buf).unwrap_err();
    assert!(matches!(err, FrameError::Truncated), "{err}");
}

#[test]
fn encoder_refuses_frames_over_the_cap() {
    let frame = Frame::Response(Response {
        id: 1,
        status: 200,
        headers: vec![],
        body: vec![0; MAX_FRAME_LEN as usize + 1],
    });
    let mut out = b"keep".to_vec();
    assert!(matches!(
        encode_into(&frame, &mut out),
        Err(FrameError::TooLarge { .. })
    ));
    assert_eq!(out, b"keep", "a refused frame leaves the buffer as it was");
}

/// The async reader: frames arriving a few bytes at a time, back to back, come out whole and
/// in order; a clean close between frames is `None`, a close mid-frame `Truncated`.
#[cfg(feature = "tokio")]
#[tokio::test]
async fn async_reader_reassembles_split_frames() {
    use tokio::io::AsyncWriteExt;
    let frames = [invoke(), Frame::Shutdown, invoke()];
    let mut bytes = Vec::new();
    for f in &frames {
        encode_into(f, &mut bytes).unwrap();
    }
    let (mut tx, mut rx) = tokio::io::duplex(7);
    let sent = bytes.clone();
    let writer = tokio::spawn(async move {
        for chunk in sent.chunks(5) {
            tx.write_all(chunk).await.unwrap();
        }
    });
    let mut buf = Vec::new();
    for f in &frames {
        assert_eq!(
            read_frame_async(&mut rx, &mut buf).await.unwrap().as_ref(),
            Some(f)
        );
    }
    writer.await.unwrap();
    assert!(read_frame_async(&mut rx, &mut buf).await.unwrap().is_none());

    let cut = &bytes[..bytes.len() - 3];
    let mut buf = Vec::new();
    let mut reader = cut;
    for _ in 0..2 {
        assert!(read_frame_async(&mut reader, &mut buf)
            .await
            .unwrap()
            .is_some());
    }
    assert!(matches!(
        read_frame_async(&mut reader, &mut buf).await,
        Err(FrameError::Truncated)
    ));
}

fn arb_string() -> impl Strategy<Value = String> {
    ".{0,40}"
}

fn arb_pairs() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec((arb_string(), arb_string()), 0..5)
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (any::<u32>(), arb_string()).prop_map(|(v, s)| Frame::Hello(Hello {
            protocol_version: v,
            sdk_version: s
        })),
        (
            any::<u64>(),
            arb_string(),
            arb_string(),
            any::<u64>(),
            arb_pairs(),
            arb_string(),
            arb_pairs(),
            prop::collection::vec(any::<u8>(), 0..300)
        )
            .prop_map(|(id, e, f, d, env, m, h, body)| Frame::Invoke(Invoke {
                id,
                execution_id: e,
                function_id: f,
                deadline_unix_ms: d,
                env,
                method: m.clone(),
                path: m,
                query: String::new(),
                headers: h,
                body
            })),
        (
            any::<u64>(),
            any::<u16>(),
            arb_pairs(),
            prop::collection::vec(any::<u8>(), 0..300)
        )
            .prop_map(|(id, status, headers, body)| Frame::Response(Response {
                id,
                status,
                headers,
                body
            })),
        (any::<u64>(), any::<bool>(), any::<u16>(), arb_string()).prop_map(
            |(id, panic, status, message)| Frame::Error(ErrorFrame {
                id,
                kind: if panic {
                    ErrorKind::Panic
                } else {
                    ErrorKind::Handler
                },
                status,
                message
            })
        ),
        (any::<u64>(), arb_string()).prop_map(|(id, line)| Frame::Log(Log { id, line })),
        Just(Frame::Shutdown),
    ]
}

proptest! {
    #[test]
    fn frames_round_trip(frame in arb_frame()) {
        let bytes = encode(&frame).unwrap();
        let (back, used) = decode(&bytes).unwrap().unwrap();
        prop_assert_eq!(back, frame);
        prop_assert_eq!(used, bytes.len());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode(&bytes);
        let mut buf = Vec::new();
        let _ = read_frame(&mut bytes.as_slice(), &mut buf);
    }

    #[test]
    fn arbitrary_payloads_behind_a_valid_header_never_panic(
        payload in prop::collection::vec(any::<u8>(), 0..2048)
    ) {
        let mut bytes = b"IG".to_vec();
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&payload);
        let _ = decode(&bytes);
    }

    #[test]
    fn a_frame_split_anywhere_decodes_only_when_whole(frame in arb_frame(), cut in any::<prop::sample::Index>()) {
        let bytes = encode(&frame).unwrap();
        let cut = cut.index(bytes.len());
        prop_assert!(decode(&bytes[..cut]).unwrap().is_none());
    }
}
