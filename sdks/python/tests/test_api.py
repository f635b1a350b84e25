"""The handler API without the platform: Request, Context, Response, Error, @ignite.main.

Run: /usr/bin/python3 -m unittest discover -s sdks/python/tests
"""

import dataclasses
import io
import os
import sys
import time
import unittest
from contextlib import redirect_stderr

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import ignite  # noqa: E402


# As the Rust SDK words it, space before the comma included.
NOT_AN_OBJECT = "missing field `message`: the request body is JSON {} , not an object"


class Field(unittest.TestCase):
    def test_a_present_field(self):
        req = ignite.Request({"message": "hi", "n": 3, "nested": {"a": [1]}})
        self.assertEqual(req.field("message"), "hi")
        self.assertEqual(req.field("n"), 3)
        self.assertEqual(req.field("nested"), {"a": [1]})
        # A null is a value, not a missing field.
        self.assertIsNone(ignite.Request(b'{"x": null}').field("x", default=5))

    def test_a_default_for_every_kind_of_missing(self):
        for body in (b"", b"{}", b"[1]", b"\"text\"", b"not json"):
            self.assertEqual(ignite.Request(body).field("message", default="d"), "d", body)

    def test_missing_fields_answer_400_with_the_rust_sdk_texts(self):
        cases = [
            (b"{}", "missing field `message` in the request body"),
            (b"", "missing field `message` in the request body"),
            (b"[1, 2]", NOT_AN_OBJECT.format("an array")),
            (b"null", NOT_AN_OBJECT.format("null")),
            (b"12", NOT_AN_OBJECT.format("a number")),
            (b"true", NOT_AN_OBJECT.format("a boolean")),
            (b"\"s\"", NOT_AN_OBJECT.format("a string")),
        ]
        for body, message in cases:
            with self.subTest(body=body):
                with self.assertRaises(ignite.Error) as raised:
                    ignite.Request(body).field("message")
                self.assertEqual(raised.exception.status, 400)
                self.assertEqual(raised.exception.message, message)

    def test_a_body_that_is_not_json(self):
        with self.assertRaises(ignite.Error) as raised:
            ignite.Request(b"{nope").field("message")
        self.assertEqual(raised.exception.status, 400)
        self.assertTrue(raised.exception.message.startswith(
            "missing field `message`: the request body is not JSON ("), raised.exception.message)


@dataclasses.dataclass
class Greeting:
    name: str
    times: int = 1
    loud: bool = False
    ratio: float = 1.0


class Body(unittest.TestCase):
    def test_parsed_json(self):
        self.assertEqual(ignite.Request(b'{"a": [1, 2.5]}').body(), {"a": [1, 2.5]})
        self.assertEqual(ignite.Request(b"[1]").body(list), [1])

    def test_an_empty_body(self):
        with self.assertRaises(ignite.Error) as raised:
            ignite.Request(b"").body()
        self.assertEqual((raised.exception.status, raised.exception.message), (
            400, "the request body is empty; send a JSON body (e.g. invoke -p '{...}')"))

    def test_not_json(self):
        with self.assertRaises(ignite.Error) as raised:
            ignite.Request(b"{").body()
        self.assertEqual(raised.exception.status, 400)
        self.assertTrue(raised.exception.message.startswith(
            "the request body does not match what the handler expects: "))

    def test_a_dataclass(self):
        g = ignite.Request({"name": "ada", "times": 2, "extra": "ignored"}).body(Greeting)
        self.assertEqual(g, Greeting("ada", 2))
        # An int where a float is declared is fine, as in JSON.
        self.assertEqual(ignite.Request({"name": "x", "ratio": 2}).body(Greeting).ratio, 2)

    def test_a_dataclass_mismatch_names_the_problem(self):
        prefix = "the request body does not match what the handler expects: "
        cases = [
            ({"times": 2}, "missing field `name`"),
            ({"name": 3}, "invalid type: a number, expected a string for field `name`"),
            ({"name": "x", "times": "2"},
             "invalid type: a string, expected an integer for field `times`"),
            ({"name": "x", "times": True},
             "invalid type: a boolean, expected an integer for field `times`"),
            ({"name": "x", "loud": 1},
             "invalid type: a number, expected a boolean for field `loud`"),
            ([1], "invalid type: an array, expected an object (Greeting)"),
        ]
        for body, problem in cases:
            with self.subTest(body=body):
                with self.assertRaises(ignite.Error) as raised:
                    ignite.Request(body).body(Greeting)
                self.assertEqual(raised.exception.status, 400)
                self.assertEqual(raised.exception.message, prefix + problem)

    def test_basic_types(self):
        with self.assertRaises(ignite.Error) as raised:
            ignite.Request(b"[1]").body(dict)
        self.assertEqual(raised.exception.message, "the request body does not match what the "
                         "handler expects: invalid type: an array, expected an object")

    def test_a_class_that_is_not_a_dataclass_is_a_programming_error(self):
        class Plain:
            pass
        with self.assertRaises(TypeError):
            ignite.Request(b"{}").body(Plain)


class Raw(unittest.TestCase):
    def test_raw_and_headers(self):
        req = ignite.Request(b"\x00\xff", method="PUT", path="/p", query="a=1",
                             headers=[("X-Token", "abc"), ("x-token", "second")])
        raw = req.raw()
        self.assertEqual((raw.method, raw.path, raw.query, raw.body),
                         ("PUT", "/p", "a=1", b"\x00\xff"))
        self.assertEqual(raw.headers, [("x-token", "abc"), ("x-token", "second")])
        self.assertEqual(req.header("X-TOKEN"), "abc")
        self.assertIsNone(req.header("nope"))
        self.assertEqual(req.header("nope", "d"), "d")
        self.assertEqual((req.method, req.path, req.query), ("PUT", "/p", "a=1"))


class ContextTests(unittest.TestCase):
    def test_fields_and_remaining(self):
        ctx = ignite.Context("01J", "acme/tiny", env={"A": "b"}, deadline=time.time() + 5)
        self.assertEqual((ctx.execution_id, ctx.function_id, ctx.env), ("01J", "acme/tiny",
                                                                        {"A": "b"}))
        self.assertTrue(4 < ctx.remaining() <= 5)
        self.assertEqual(ignite.Context(deadline=time.time() - 1).remaining(), 0.0)
        self.assertIsNone(ignite.Context().remaining())

    def test_log_without_the_platform_goes_to_stderr(self):
        err = io.StringIO()
        with redirect_stderr(err):
            ignite.Context().log("a line")
        self.assertEqual(err.getvalue(), "a line\n")


class Responses(unittest.TestCase):
    def test_what_a_handler_may_return(self):
        J, T, B = ("content-type", "application/json"), \
            ("content-type", "text/plain; charset=utf-8"), \
            ("content-type", "application/octet-stream")
        cases = [
            ({"a": "é", "n": [1, 2.5, None]}, (200, [J], '{"a":"é","n":[1,2.5,null]}'.encode())),
            ([1], (200, [J], b"[1]")),
            ("héllo", (200, [T], "héllo".encode())),
            (b"\x00", (200, [B], b"\x00")),
            (bytearray(b"ab"), (200, [B], b"ab")),
            (None, (204, [], b"")),
            (ignite.Response({"x": 1}, status=201), (201, [J], b'{"x":1}')),
            (ignite.Response("t", headers={"X-A": "1"}), (200, [T, ("x-a", "1")], b"t")),
            (ignite.Response(b"<p>", headers=[("Content-Type", "text/html"), ("set-cookie", "a"),
                                              ("set-cookie", "b")]),
             (200, [("content-type", "text/html"), ("set-cookie", "a"), ("set-cookie", "b")],
              b"<p>")),
            (ignite.Response(status=302, headers={"location": "/x"}),
             (302, [("location", "/x")], b"")),
        ]
        for value, expected in cases:
            with self.subTest(value=value):
                self.assertEqual(ignite._parts(value), expected)

    def test_a_value_json_cannot_hold_answers_500_naming_it(self):
        err = io.StringIO()
        with redirect_stderr(err):
            status, headers, body = ignite._parts({"when": object()})
            self.assertEqual(status, 500)
            self.assertTrue(body.decode().startswith(
                "the handler's response could not be encoded as JSON: Object of type object is "
                "not JSON serializable"), body)
            self.assertEqual(ignite._parts({"x": float("nan")})[0], 500)
            cyclic = []
            cyclic.append(cyclic)
            self.assertEqual(ignite._parts(cyclic)[0], 500)
        self.assertIn("could not be encoded as JSON", err.getvalue())

    def test_what_is_not_a_response(self):
        for value in (42, 1.5, object(), (200, "x")):
            with self.assertRaises(ignite._NotAResponse):
                ignite._parts(value)
        with self.assertRaises(ignite._NotAResponse):
            ignite._parts(ignite.Response(42))
        with self.assertRaises(ignite._NotAResponse):
            ignite._parts(ignite.Response("x", headers={"a": 1}))
        with self.assertRaises(TypeError):
            ignite.Response("x", status="200")


class Errors(unittest.TestCase):
    def test_status_and_message(self):
        e = ignite.Error(418, "teapot")
        self.assertEqual((e.status, e.message, str(e)), (418, "teapot", "teapot"))
        self.assertEqual((ignite.Error("plain").status, ignite.Error("plain").message),
                         (500, "plain"))
        with self.assertRaises(TypeError):
            ignite.Error("418", "x")
        with self.assertRaises(TypeError):
            ignite.Error(70000, "x")


class Registration(unittest.TestCase):
    def setUp(self):
        self.saved = (ignite._registry.handler, ignite._registry.is_async,
                      ignite._registry.where)
        ignite._registry.handler = None

    def tearDown(self):
        (ignite._registry.handler, ignite._registry.is_async,
         ignite._registry.where) = self.saved

    def test_one_handler_returned_unchanged(self):
        async def handler(req, ctx):
            return "x"
        self.assertIs(ignite.main(handler), handler)
        registered = ignite._registered()
        self.assertIs(registered[0], handler)
        self.assertTrue(registered[1])
        self.assertIn("handler", registered[2])

    def test_sync_and_wrapped_handlers(self):
        import functools

        def sync(req, ctx):
            return "x"
        ignite.main(sync)
        self.assertFalse(ignite._registered()[1])
        ignite._registry.handler = None

        async def inner(req, ctx):
            return "x"

        @functools.wraps(inner)
        def wrapper(*a):
            return inner(*a)
        ignite.main(wrapper)
        self.assertTrue(ignite._registered()[1])

    def test_a_second_handler_is_an_error_naming_both(self):
        def first(req, ctx):
            pass

        def second(req, ctx):
            pass
        ignite.main(first)
        with self.assertRaises(RuntimeError) as raised:
            ignite.main(second)
        message = str(raised.exception)
        self.assertIn("first", message)
        self.assertIn("second", message)
        self.assertIn("exactly one handler", message)

    def test_not_callable(self):
        with self.assertRaises(TypeError):
            ignite.main("handler")


if __name__ == "__main__":
    unittest.main()
