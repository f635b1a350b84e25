//! The byte-exact vectors of the Python SDK's codec (`sdks/python/tests/test_frames.py`, worked
//! out by hand from the postcard format), checked against this crate's encoder: the two
//! implementations of the wire format agree byte for byte.

use ignite_protocol::*;

/// The hex of an ASCII string's bytes.
fn text(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn check(frame: Frame, parts: &[&str]) {
    let expected: String = parts.concat().replace(' ', "");
    let encoded: String = encode(&frame)
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(encoded, expected, "{frame:?}");
    let bytes: Vec<u8> = (0..expected.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&expected[i..i + 2], 16).unwrap())
        .collect();
    assert_eq!(decode(&bytes).unwrap(), Some((frame, bytes.len())));
}

#[test]
fn the_python_sdk_vectors_match_the_rust_encoder() {
    let body = r#"{"message":"hi there"}"#;
    check(
        Frame::Hello(Hello {
            protocol_version: 1,
            sdk_version: "0.1.0".into(),
        }),
        &["4947 08000000", "00", "01", "05", &text("0.1.0")],
    );
    check(
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
            body: body.as_bytes().to_vec(),
        }),
        &[
            "4947 6f000000",
            "01",
            "07",
            "09",
            &text("01JABCDEF"),
            "0e",
            &text("acme-corp/tiny"),
            "80d095ffbc31",
            "01",
            "08",
            &text("GREETING"),
            "02",
            &text("hi"),
            "04",
            &text("POST"),
            "01",
            &text("/"),
            "03",
            &text("a=1"),
            "01",
            "0c",
            &text("content-type"),
            "10",
            &text("application/json"),
            "16",
            &text(body),
        ],
    );
    check(
        Frame::Response(Response {
            id: 7,
            status: 200,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: b"hello".to_vec(),
        }),
        &[
            "4947 23000000",
            "02",
            "07",
            "c801",
            "01",
            "0c",
            &text("content-type"),
            "0a",
            &text("text/plain"),
            "05",
            &text("hello"),
        ],
    );
    check(
        Frame::Error(ErrorFrame {
            id: 7,
            kind: ErrorKind::Panic,
            status: 500,
            message: "boom".into(),
        }),
        &[
            "4947 0a000000",
            "03",
            "07",
            "01",
            "f403",
            "04",
            &text("boom"),
        ],
    );
    check(
        Frame::Error(ErrorFrame {
            id: u64::MAX,
            kind: ErrorKind::Handler,
            status: 418,
            message: "teapot".into(),
        }),
        &[
            "4947 15000000",
            "03",
            "ffffffffffffffffff01",
            "00",
            "a203",
            "06",
            &text("teapot"),
        ],
    );
    check(
        Frame::Log(Log {
            id: 7,
            line: "a log line".into(),
        }),
        &["4947 0d000000", "04", "07", "0a", &text("a log line")],
    );
    check(Frame::Shutdown, &["4947 01000000", "05"]);
    check(
        Frame::Response(Response {
            id: 128,
            status: 204,
            headers: vec![("x-é".into(), "ü".into())],
            body: vec![0xff; 300],
        }),
        &[
            "4947 3c010000",
            "02",
            "8001",
            "cc01",
            "01",
            "04",
            &text("x-"),
            "c3a9",
            "02",
            "c3bc",
            "ac02",
            &"ff".repeat(300),
        ],
    );
}
