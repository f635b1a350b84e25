//! The handler-facing API without a platform: table-driven checks of Request and Response.

use ignite::prelude::*;
use ignite::ErrorKind;
use serde_json::json;

#[test]
fn field_errors_name_the_key() {
    let cases: &[(&str, &str, Result<u32, ErrorKind>)] = &[
        ("present", r#"{"n": 3}"#, Ok(3)),
        (
            "absent",
            r#"{"m": 3}"#,
            Err(ErrorKind::MissingField { key: "n".into() }),
        ),
        (
            "empty body",
            "",
            Err(ErrorKind::MissingField { key: "n".into() }),
        ),
        (
            "not an object",
            "[1]",
            Err(ErrorKind::MissingField { key: "n".into() }),
        ),
        (
            "not json",
            "hello",
            Err(ErrorKind::MissingField { key: "n".into() }),
        ),
        (
            "wrong type",
            r#"{"n": "x"}"#,
            Err(ErrorKind::InvalidField { key: "n".into() }),
        ),
    ];
    for (name, body, expect) in cases {
        let req = Request::new("POST", "/", *body);
        match (req.field::<u32>("n"), expect) {
            (Ok(v), Ok(want)) => assert_eq!(v, *want, "{name}"),
            (Err(e), Err(kind)) => {
                assert_eq!(e.kind(), kind, "{name}");
                assert_eq!(e.status(), 400, "{name}");
                assert!(e.message().contains("`n`"), "{name}: {}", e.message());
            }
            (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn body_and_raw() {
    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct P {
        a: u8,
    }
    let req = Request::new("POST", "/", r#"{"a": 1}"#).with_header("X-Y", "z");
    assert_eq!(req.body::<P>().unwrap(), P { a: 1 });
    assert_eq!(req.raw(), br#"{"a": 1}"#);
    assert_eq!(req.header("x-y"), Some("z"));
    let empty = Request::new("POST", "/", "");
    let e = empty.body::<P>().unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::InvalidBody);
    assert!(e.message().contains("empty"), "{e}");
}

#[test]
fn into_response_table() {
    let cases: Vec<(Response, u16, &str, &[u8])> = vec![
        (
            json!({"a": 1}).into_response(),
            200,
            "application/json",
            br#"{"a":1}"#,
        ),
        (
            "hi".into_response(),
            200,
            "text/plain; charset=utf-8",
            b"hi",
        ),
        (
            String::from("hi").into_response(),
            200,
            "text/plain; charset=utf-8",
            b"hi",
        ),
        (
            vec![1u8, 2].into_response(),
            200,
            "application/octet-stream",
            &[1, 2],
        ),
        (
            (201, "made").into_response(),
            201,
            "text/plain; charset=utf-8",
            b"made",
        ),
        (
            Json(vec![1, 2]).into_response(),
            200,
            "application/json",
            b"[1,2]",
        ),
    ];
    for (resp, status, ctype, body) in cases {
        assert_eq!(resp.status(), status);
        assert_eq!(
            resp.headers(),
            &[("content-type".to_string(), ctype.to_string())]
        );
        assert_eq!(resp.body(), body);
    }
    assert_eq!(().into_response().status(), 204);
}

#[test]
fn any_std_error_converts_with_its_chain() {
    fn parse() -> Result<u32> {
        Ok("x".parse::<u32>()?)
    }
    let e = parse().unwrap_err();
    assert_eq!(e.status(), 500);
    assert_eq!(e.kind(), &ErrorKind::Handler);
    assert_eq!(e.message(), "invalid digit found in string");
    assert!(e.source().is_some());
}
