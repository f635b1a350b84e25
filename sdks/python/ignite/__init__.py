"""The Ignite SDK for Python handlers.

```python
import ignite

@ignite.main
async def handler(req: ignite.Request, ctx: ignite.Context):
    message = req.field("message", default="Hello from Python!")
    return {"message": message, "execution_id": ctx.execution_id}
```

`@ignite.main` only registers the handler; the platform's boot script (`ignite_boot.py`)
imports `main.py` and serves it. Everything here is the standard library.
"""

import json as _json
import sys as _sys
import time as _time

__all__ = ["main", "Request", "Context", "Response", "Error", "RawRequest", "__version__"]

#: Sent in the `Hello` frame.
__version__ = "0.1.0"

_MISSING = object()
_json_decode = _json.JSONDecoder().decode


# --------------------------------------------------------------------------------------------
# Errors.


class Error(Exception):
    """Raise to answer with this HTTP status and message: ``raise ignite.Error(404, "no such
    user")``. ``Error("message")`` answers 500. The request's execution records the message."""

    def __init__(self, status, message=None):
        if message is None and isinstance(status, str):
            status, message = 500, status
        if type(status) is not int or not 0 <= status <= 0xFFFF:
            raise TypeError(f"ignite.Error(status, message): status must be an HTTP status "
                            f"code (an int), not {status!r}")
        self.status = status
        self.message = "" if message is None else str(message)
        super().__init__(status, self.message)

    def __str__(self):
        return self.message

    def __repr__(self):
        return f"ignite.Error({self.status}, {self.message!r})"


def _bad_request(message):
    return Error(400, message)


# --------------------------------------------------------------------------------------------
# The request.


def _json_kind(value):
    if value is None:
        return "null"
    if value is True or value is False:
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


class RawRequest:
    """The request exactly as it arrived: `method`, `path`, `query` (without ``?``),
    `headers` (a list of ``(name, value)``, names lowercase) and `body` (bytes)."""

    __slots__ = ("method", "path", "query", "headers", "body")

    def __init__(self, method, path, query, headers, body):
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body

    def __repr__(self):
        return (f"RawRequest(method={self.method!r}, path={self.path!r}, query={self.query!r}, "
                f"headers={self.headers!r}, body={self.body!r})")


class Request:
    """The request a handler is answering.

    For unit tests: ``Request({"message": "hi"})`` (a dict or list is sent as JSON, a str as
    UTF-8), with ``method``, ``path``, ``query`` and ``headers`` as keywords.
    """

    __slots__ = ("method", "path", "query", "headers", "_body", "_json")

    def __init__(self, body=b"", *, method="POST", path="/", query="", headers=None):
        if isinstance(body, (dict, list)):
            body = _json.dumps(body).encode()
        elif isinstance(body, str):
            body = body.encode()
        else:
            body = bytes(body)
        self.method = method
        self.path = path
        self.query = query
        self.headers = [(str(n).lower(), str(v)) for n, v in (
            headers.items() if isinstance(headers, dict) else headers or ())]
        self._body = body
        self._json = _MISSING

    @classmethod
    def _from_invoke(cls, invoke):
        self = cls.__new__(cls)
        self.method = invoke.method
        self.path = invoke.path
        self.query = invoke.query
        self.headers = invoke.headers
        self._body = invoke.body
        self._json = _MISSING
        return self

    def _parsed(self):
        """The body as JSON: ``(True, value)`` or ``(False, error text)``, parsed once."""
        parsed = self._json
        if parsed is _MISSING:
            try:
                # JSON is UTF-8 (as serde_json reads it); a str skips `loads`' sniffing.
                parsed = (True, _json_decode(self._body.decode("utf-8")))
            except (ValueError, UnicodeDecodeError) as e:
                parsed = (False, str(e))
            self._json = parsed
        return parsed

    def field(self, key, default=_MISSING):
        """One field of a JSON-object body.

        Without `default`, a missing field answers 400 (an ``ignite.Error``) naming the key, as
        does a body that is not a JSON object; with `default`, those cases return it.
        """
        ok, value = self._parsed()
        if ok and type(value) is dict:
            try:
                return value[key]
            except KeyError:
                pass
            message = f"missing field `{key}` in the request body"
        elif not self._body:
            message = f"missing field `{key}` in the request body"
        elif ok:
            message = (f"missing field `{key}`: the request body is JSON {_json_kind(value)} , "
                       "not an object")
        else:
            message = f"missing field `{key}`: the request body is not JSON ({value})"
        if default is not _MISSING:
            return default
        raise _bad_request(message)

    def body(self, cls=None):
        """The whole JSON body, parsed.

        With `cls` a dataclass, the body must be a JSON object: it is built with
        ``cls(**fields)`` (keys the dataclass does not declare are ignored, as serde does), and a
        missing field or a field of the wrong basic type answers 400 naming it. `cls` may also be
        ``dict``, ``list``, ``str``, ``int``, ``float`` or ``bool``, checked likewise.
        """
        if not self._body:
            raise _bad_request(
                "the request body is empty; send a JSON body (e.g. invoke -p '{...}')")
        ok, value = self._parsed()
        if not ok:
            raise _bad_request(
                f"the request body does not match what the handler expects: {value}")
        if cls is None:
            return value
        problem = _mismatch(value, cls)
        if problem is not None:
            raise _bad_request(
                f"the request body does not match what the handler expects: {problem}")
        if cls in _JSON_TYPES:
            return value
        import dataclasses
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        return cls(**{k: v for k, v in value.items() if k in names})

    def raw(self):
        """The request exactly as it arrived (see `RawRequest`)."""
        return RawRequest(self.method, self.path, self.query, self.headers, self._body)

    def header(self, name, default=None):
        """The first value of a header, matched case-insensitively (`default` when absent)."""
        name = name.lower()
        for n, v in self.headers:
            if n == name or n.lower() == name:
                return v
        return default

    def __repr__(self):
        return f"Request({self.method} {self.path}, {len(self._body)} bytes)"


_JSON_TYPES = {
    dict: "an object", list: "an array", str: "a string", int: "an integer",
    float: "a number", bool: "a boolean",
}


def _type_mismatch(value, expected):
    """Why `value` is not of the basic JSON type `expected`, or None."""
    if expected is float:
        fits = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif expected is int:
        fits = isinstance(value, int) and not isinstance(value, bool)
    else:
        fits = isinstance(value, expected)
    if fits:
        return None
    return f"invalid type: {_json_kind(value)}, expected {_JSON_TYPES[expected]}"


def _mismatch(value, cls):
    """Why the parsed body `value` does not fit `cls`, or None."""
    if cls in _JSON_TYPES:
        return _type_mismatch(value, cls)
    import dataclasses
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"req.body(cls): cls must be a dataclass or one of dict, list, str, "
                        f"int, float, bool, not {cls!r}")
    if type(value) is not dict:
        return f"invalid type: {_json_kind(value)}, expected an object ({cls.__name__})"
    try:
        import typing
        hints = typing.get_type_hints(cls)
    except Exception:  # an annotation that does not resolve: check presence only
        hints = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.name not in value:
            if (f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING):
                return f"missing field `{f.name}`"
            continue
        expected = hints.get(f.name)
        if expected in _JSON_TYPES:
            problem = _type_mismatch(value[f.name], expected)
            if problem is not None:
                return f"{problem} for field `{f.name}`"
    return None


# --------------------------------------------------------------------------------------------
# The context.


class Context:
    """What the platform knows about the execution a request belongs to.

    `execution_id` (a ULID), `function_id` (``<org>/<name>``), `env` (the app's environment, a
    dict), `deadline` (Unix seconds, or None), `remaining()` and `log(line)`. For unit tests:
    ``Context("01J...", "acme/tiny", env={...})``.
    """

    __slots__ = ("execution_id", "function_id", "env", "deadline", "_id", "_server")

    def __init__(self, execution_id="", function_id="", env=None, deadline=None):
        self.execution_id = execution_id
        self.function_id = function_id
        self.env = dict(env or {})
        self.deadline = deadline
        self._id = 0
        self._server = None

    @classmethod
    def _from_invoke(cls, invoke, server):
        self = cls.__new__(cls)
        self.execution_id = invoke.execution_id
        self.function_id = invoke.function_id
        self.env = dict(invoke.env)
        ms = invoke.deadline_unix_ms
        self.deadline = ms / 1000 if ms else None
        self._id = invoke.id
        self._server = server
        return self

    def remaining(self):
        """Seconds left before the deadline (0.0 once it has passed), or None without one."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - _time.time())

    def log(self, line):
        """Logs a line attributed to this execution alone, even when the instance serves several
        requests at once. (``print()`` and ``logging`` write to the logs too.)"""
        line = str(line)
        if self._server is not None:
            self._server.log(self._id, line)
        else:
            print(line, file=_sys.stderr)

    def __repr__(self):
        return f"Context(execution_id={self.execution_id!r}, function_id={self.function_id!r})"


# --------------------------------------------------------------------------------------------
# The response.


class Response:
    """A response with a status and headers of the handler's choosing.

    `body` is a dict or list (sent as JSON), a str (UTF-8 text), bytes, or None (empty). The
    content type follows the body unless `headers` (a dict or a list of pairs) sets one.
    """

    __slots__ = ("body", "status", "headers")

    def __init__(self, body=None, status=200, headers=None):
        if type(status) is not int or not 0 <= status <= 0xFFFF:
            raise TypeError(f"ignite.Response: status must be an HTTP status code (an int), "
                            f"not {status!r}")
        self.body = body
        self.status = status
        self.headers = headers

    def __repr__(self):
        return f"Response(status={self.status}, body={self.body!r}, headers={self.headers!r})"


_JSON_CT = ("content-type", "application/json")
_TEXT_CT = ("content-type", "text/plain; charset=utf-8")
_BYTES_CT = ("content-type", "application/octet-stream")
_json_encode = _json.JSONEncoder(ensure_ascii=False, allow_nan=False,
                                 separators=(",", ":")).encode


def _fast_json_encoder():
    """The C encoder, built once: `JSONEncoder.encode` builds it anew on every call (half the
    cost of encoding a small response). Without a markers dict it does not look for cycles
    itself; a cyclic value ends in RecursionError, reported like any value JSON cannot hold.
    Falls back to `JSONEncoder.encode` where the C accelerator is missing or differs."""
    try:
        from json import encoder

        def default(o):
            raise TypeError(f"Object of type {o.__class__.__name__} is not JSON serializable")

        c_encode = encoder.c_make_encoder(None, default, encoder.c_encode_basestring, None,
                                          ":", ",", False, False, False)

        def encode(value):
            return "".join(c_encode(value, 0))

        if encode({"a": [1, 2.5, None, True, "é"]}) != '{"a":[1,2.5,null,true,"é"]}':
            return _json_encode
        return encode
    except Exception:
        return _json_encode


_json_encode = _fast_json_encoder()


class _NotAResponse(TypeError):
    pass


def _parts(value):
    """``(status, headers, body)`` for what a handler returned. Raises `_NotAResponse`."""
    t = type(value)
    if t is dict or t is list:
        return _json_parts(value, 200, None)
    if t is str:
        return 200, [_TEXT_CT], value.encode("utf-8")
    if value is None:
        return 204, [], b""
    if t is bytes:
        return 200, [_BYTES_CT], value
    if t is Response:
        return _response_parts(value)
    if isinstance(value, (dict, list)):
        return _json_parts(value, 200, None)
    if isinstance(value, str):
        return 200, [_TEXT_CT], str(value).encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return 200, [_BYTES_CT], bytes(value)
    if isinstance(value, Response):
        return _response_parts(value)
    raise _NotAResponse(
        f"the handler returned {_describe(value)}, which is not a response: return a dict or "
        "list (sent as JSON), a str (text), bytes, None (204 No Content) or an ignite.Response")


def _describe(value):
    t = type(value)
    name = t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"
    return f"a value of type {name}"


def _json_parts(value, status, headers):
    try:
        body = _json_encode(value).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as e:
        message = f"the handler's response could not be encoded as JSON: {e}"
        print(f"ignite: {message}", file=_sys.stderr)
        return 500, [_TEXT_CT], message.encode("utf-8")
    return status, _with_headers(_JSON_CT, headers), body


def _response_parts(r):
    body = r.body
    if body is None:
        return r.status, _with_headers(None, r.headers), b""
    if isinstance(body, (dict, list)):
        return _json_parts(body, r.status, r.headers)
    if isinstance(body, str):
        return r.status, _with_headers(_TEXT_CT, r.headers), body.encode("utf-8")
    if isinstance(body, (bytes, bytearray, memoryview)):
        return r.status, _with_headers(_BYTES_CT, r.headers), bytes(body)
    raise _NotAResponse(
        f"ignite.Response got a body of {_describe(body)}: use a dict or list (JSON), a str, "
        "bytes or None")


def _with_headers(content_type, headers):
    """The response's headers: the handler's own (names lowercase), and the content type of
    the body unless the handler set one."""
    if not headers:
        return [content_type] if content_type else []
    pairs = headers.items() if isinstance(headers, dict) else headers
    out = []
    has_type = False
    for name, value in pairs:
        if not isinstance(name, str) or not isinstance(value, str):
            raise _NotAResponse(
                f"a response header must be a pair of str, not ({name!r}, {value!r})")
        name = name.lower()
        if name == "content-type":
            has_type = True
        out.append((name, value))
    if content_type and not has_type:
        out.insert(0, content_type)
    return out


# --------------------------------------------------------------------------------------------
# Registration.


class _Registry:
    handler = None
    is_async = False
    where = None


_registry = _Registry()


def _where(fn):
    code = getattr(fn, "__code__", None)
    name = getattr(fn, "__qualname__", None) or repr(fn)
    module = getattr(fn, "__module__", None)
    place = f"{module}.{name}" if module else name
    if code is not None:
        return f"{place} ({code.co_filename}:{code.co_firstlineno})"
    return place


def _is_coroutine_function(fn):
    import inspect
    while True:
        if inspect.iscoroutinefunction(fn):
            return True
        # A callable object with an async __call__.
        call = getattr(type(fn), "__call__", None)
        if call is not None and not inspect.isfunction(fn) and inspect.iscoroutinefunction(call):
            return True
        wrapped = getattr(fn, "__wrapped__", None)
        if wrapped is None:
            return False
        fn = wrapped


def main(handler):
    """Registers the app's handler: ``async def handler(req, ctx)`` (a plain ``def`` works too,
    run in a worker thread). Exactly one per app. Returns the function unchanged, so it can
    still be called directly in tests."""
    if not callable(handler):
        raise TypeError(f"@ignite.main decorates the handler function, not {handler!r}")
    if _registry.handler is not None:
        raise RuntimeError(
            f"@ignite.main is used twice: on {_registry.where} and on {_where(handler)}; "
            "an app has exactly one handler")
    _registry.handler = handler
    _registry.is_async = _is_coroutine_function(handler)
    _registry.where = _where(handler)
    return handler


def _registered():
    """``(handler, is_async, where)``, or None when nothing was registered."""
    if _registry.handler is None:
        return None
    return _registry.handler, _registry.is_async, _registry.where
