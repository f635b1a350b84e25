"""The frames spoken between the node agent and a handler process (``crates/protocol``).

Every frame is ``b"IG"`` + the payload length (u32, little-endian) + the payload: the
postcard encoding of the Rust ``Frame`` enum. Postcard writes an enum as its variant index
(a varint), a struct as its fields in order, unsigned integers as LEB128 varints, and
``String`` / ``Vec<u8>`` as a varint length followed by the bytes; a ``Vec`` of pairs is a
varint count followed by the pairs.

This module is on every request's path: it builds each outgoing frame in one ``bytearray``
(the body is copied once) and decodes an incoming one by index, without slicing the payload
out of the read buffer first. One-byte varints (every id, count and length under 128) take a
table look-up on the way out and one comparison on the way in.
"""

import struct

__all__ = [
    "MAGIC", "HEADER_LEN", "MAX_FRAME_LEN", "PROTOCOL_VERSION",
    "HANDLER", "PANIC",
    "Hello", "Invoke", "Response", "ErrorFrame", "Log", "Shutdown", "SHUTDOWN",
    "FrameError", "NotAFrame", "TooLarge", "Malformed", "Truncated",
    "encode", "encode_hello", "encode_invoke", "encode_response", "encode_error",
    "encode_log", "encode_shutdown", "decode", "decode_header", "decode_payload",
    "FrameReader", "varint",
]

#: The two bytes every frame starts with.
MAGIC = b"IG"
#: Magic plus the payload length.
HEADER_LEN = 6
#: The largest payload either side accepts (16 MiB).
MAX_FRAME_LEN = 16 * 1024 * 1024
#: ``ignite_protocol::PROTOCOL_VERSION``: the agent refuses a handler that speaks another.
PROTOCOL_VERSION = 1

# Variant indexes of `Frame`.
_HELLO, _INVOKE, _RESPONSE, _ERROR, _LOG, _SHUTDOWN = range(6)
#: `ErrorKind::Handler`: the handler raised `ignite.Error`.
HANDLER = 0
#: `ErrorKind::Panic`: any other exception.
PANIC = 1

_U16 = (1 << 16) - 1
_U32 = (1 << 32) - 1
_U64 = (1 << 64) - 1

_len_struct = struct.Struct("<I")
_pack_len_into = _len_struct.pack_into
_unpack_len_from = _len_struct.unpack_from

# Every one-byte varint, ready to append.
_V1 = tuple(bytes((i,)) for i in range(128))


# --------------------------------------------------------------------------------------------
# Errors (the texts follow `ignite_protocol::FrameError`'s).


class FrameError(Exception):
    """The framing channel carried something that is not a valid frame."""


class NotAFrame(FrameError):
    def __init__(self, preview):
        self.preview = bytes(preview)
        super().__init__(
            "framing error: the bytes on the channel are not a runtime frame "
            f"(they start with {self.preview!r})"
        )


class TooLarge(FrameError):
    def __init__(self, length):
        self.length = length
        super().__init__(
            f"framing error: a frame of {length} bytes exceeds the {MAX_FRAME_LEN}-byte limit"
        )


class Malformed(FrameError):
    def __init__(self, what):
        super().__init__(f"framing error: malformed frame payload: {what}")


class Truncated(FrameError):
    def __init__(self):
        super().__init__("framing error: the channel closed mid-frame")


# --------------------------------------------------------------------------------------------
# The frames.


class _Frame:
    """What every frame with fields shares: equality and a repr by its fields (`__slots__`)."""

    __slots__ = ()

    def __eq__(self, other):
        return type(other) is type(self) and _fields(self) == _fields(other)

    def __repr__(self):
        return _repr(self)


class Hello(_Frame):
    __slots__ = ("protocol_version", "sdk_version")

    def __init__(self, protocol_version, sdk_version):
        self.protocol_version = protocol_version
        self.sdk_version = sdk_version


class Invoke(_Frame):
    __slots__ = (
        "id", "execution_id", "function_id", "deadline_unix_ms", "env",
        "method", "path", "query", "headers", "body",
    )

    def __init__(self, id, execution_id, function_id, deadline_unix_ms, env,
                 method, path, query, headers, body):
        self.id = id
        self.execution_id = execution_id
        self.function_id = function_id
        self.deadline_unix_ms = deadline_unix_ms
        self.env = env
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body


class Response(_Frame):
    __slots__ = ("id", "status", "headers", "body")

    def __init__(self, id, status, headers, body):
        self.id = id
        self.status = status
        self.headers = headers
        self.body = body


class ErrorFrame(_Frame):
    __slots__ = ("id", "kind", "status", "message")

    def __init__(self, id, kind, status, message):
        self.id = id
        self.kind = kind
        self.status = status
        self.message = message


class Log(_Frame):
    __slots__ = ("id", "line")

    def __init__(self, id, line):
        self.id = id
        self.line = line


class Shutdown:
    """`Frame::Shutdown`: the agent asks the handler to exit. Use the `SHUTDOWN` instance."""

    __slots__ = ()

    def __eq__(self, other):
        return type(other) is Shutdown

    def __hash__(self):
        return 0

    def __repr__(self):
        return "Shutdown()"


SHUTDOWN = Shutdown()


def _fields(frame):
    return tuple(getattr(frame, name) for name in frame.__slots__)


def _repr(frame):
    inner = ", ".join(f"{name}={getattr(frame, name)!r}" for name in frame.__slots__)
    return f"{type(frame).__name__}({inner})"


# --------------------------------------------------------------------------------------------
# Encoding.


def varint(n):
    """The LEB128 encoding of the unsigned integer `n`."""
    if n < 0x80:
        return _V1[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _uint(n, limit, what):
    # `bool` is an `int`; a status of `True` is a bug, not 1.
    if type(n) is not int or not 0 <= n <= limit:
        raise ValueError(f"{what} must be an integer from 0 to {limit}, not {n!r}")
    return varint(n)


def _put_str(buf, s):
    b = s.encode("utf-8")
    n = len(b)
    buf += _V1[n] if n < 0x80 else varint(n)
    buf += b


def _put_bytes(buf, b):
    n = len(b)
    buf += _V1[n] if n < 0x80 else varint(n)
    buf += b


def _put_pairs(buf, pairs):
    n = len(pairs)
    buf += _V1[n] if n < 0x80 else varint(n)
    for name, value in pairs:
        _put_str(buf, name)
        _put_str(buf, value)


def _finish(buf):
    n = len(buf) - HEADER_LEN
    if n > MAX_FRAME_LEN:
        raise TooLarge(n)
    _pack_len_into(buf, 2, n)
    return buf


def encode_hello(protocol_version, sdk_version):
    buf = bytearray(b"IG\0\0\0\0\x00")
    buf += _uint(protocol_version, _U32, "protocol_version")
    _put_str(buf, sdk_version)
    return _finish(buf)


def encode_invoke(id, execution_id, function_id, deadline_unix_ms, env, method, path, query,
                  headers, body):
    buf = bytearray(b"IG\0\0\0\0\x01")
    buf += _uint(id, _U64, "id")
    _put_str(buf, execution_id)
    _put_str(buf, function_id)
    buf += _uint(deadline_unix_ms, _U64, "deadline_unix_ms")
    _put_pairs(buf, env)
    _put_str(buf, method)
    _put_str(buf, path)
    _put_str(buf, query)
    _put_pairs(buf, headers)
    _put_bytes(buf, body)
    return _finish(buf)


def encode_response(id, status, headers, body):
    """A whole `Response` frame (header included), as a `bytearray`."""
    buf = bytearray(b"IG\0\0\0\0\x02")
    buf += varint(id) if type(id) is int and 0 <= id <= _U64 else _uint(id, _U64, "id")
    buf += _V1[status] if type(status) is int and 0 <= status < 0x80 else _uint(
        status, _U16, "status")
    _put_pairs(buf, headers)
    _put_bytes(buf, body)
    return _finish(buf)


def encode_error(id, kind, status, message):
    buf = bytearray(b"IG\0\0\0\0\x03")
    buf += _uint(id, _U64, "id")
    if kind not in (HANDLER, PANIC):
        raise ValueError(f"an error kind is HANDLER (0) or PANIC (1), not {kind!r}")
    buf += _V1[kind]
    buf += _uint(status, _U16, "status")
    _put_str(buf, message)
    return _finish(buf)


def encode_log(id, line):
    buf = bytearray(b"IG\0\0\0\0\x04")
    buf += _uint(id, _U64, "id")
    _put_str(buf, line)
    return _finish(buf)


def encode_shutdown():
    return bytearray(b"IG\x01\0\0\0\x05")


def encode(frame):
    """Any frame object of this module, header included."""
    t = type(frame)
    if t is Response:
        return encode_response(frame.id, frame.status, frame.headers, frame.body)
    if t is Invoke:
        return encode_invoke(frame.id, frame.execution_id, frame.function_id,
                             frame.deadline_unix_ms, frame.env, frame.method, frame.path,
                             frame.query, frame.headers, frame.body)
    if t is ErrorFrame:
        return encode_error(frame.id, frame.kind, frame.status, frame.message)
    if t is Log:
        return encode_log(frame.id, frame.line)
    if t is Hello:
        return encode_hello(frame.protocol_version, frame.sdk_version)
    if t is Shutdown:
        return encode_shutdown()
    raise TypeError(f"not a frame: {frame!r}")


# --------------------------------------------------------------------------------------------
# Decoding. Each reader takes the buffer, a position and the payload's end, and returns the
# value and the next position.


def _varint_at(data, i, end, limit):
    """The varint at `data[i]` (`i < end` checked by the caller's fast path or here)."""
    value = 0
    shift = 0
    # A u64 takes at most 10 bytes; fewer for smaller types, which `limit` then rejects.
    while True:
        if i >= end:
            raise Malformed("unexpected end of the payload")
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            break
        shift += 7
        if shift >= 70:
            raise Malformed("a varint longer than 10 bytes")
    if value > limit:
        raise Malformed(f"the integer {value} is out of range")
    return value, i


def _uint_at(data, i, end, limit):
    if i < end:
        b = data[i]
        if b < 0x80:
            return b, i + 1
    return _varint_at(data, i, end, limit)


def _bytes_at(data, i, end):
    n, i = _uint_at(data, i, end, _U64)
    j = i + n
    if j > end:
        raise Malformed("a length runs past the end of the payload")
    return data[i:j], j


def _str_at(data, i, end):
    n, i = _uint_at(data, i, end, _U64)
    j = i + n
    if j > end:
        raise Malformed("a length runs past the end of the payload")
    try:
        return str(data[i:j], "utf-8"), j
    except UnicodeDecodeError as e:
        raise Malformed(f"a string that is not UTF-8 ({e})") from None


def _pairs_at(data, i, end):
    n, i = _uint_at(data, i, end, _U64)
    # Every pair takes at least two bytes: refuse a count that cannot fit before allocating.
    if 2 * n > end - i:
        raise Malformed("a sequence length runs past the end of the payload")
    pairs = []
    append = pairs.append
    for _ in range(n):
        name, i = _str_at(data, i, end)
        value, i = _str_at(data, i, end)
        append((name, value))
    return pairs, i


def _decode_invoke(data, i, end):
    """`Invoke`, the frame every request starts with: inlined, one-byte varints read in place.

    A one-byte read (`data[i]`) is not checked against `end` (only against the buffer, which
    raises IndexError): every read moves `i` past what it read, so a frame that ran past its
    end is caught by the one check at the bottom. Lengths are checked before they are used."""
    try:
        id = data[i]
        if id < 0x80:
            i += 1
        else:
            id, i = _varint_at(data, i, end, _U64)

        n = data[i]
        if n < 0x80:
            i += 1
        else:
            n, i = _varint_at(data, i, end, _U64)
        j = i + n
        if j > end:
            raise Malformed("a length runs past the end of the payload")
        execution_id = data[i:j].decode("utf-8")

        n = data[j]
        if n < 0x80:
            i = j + 1
        else:
            n, i = _varint_at(data, j, end, _U64)
        j = i + n
        if j > end:
            raise Malformed("a length runs past the end of the payload")
        function_id = data[i:j].decode("utf-8")

        deadline = data[j]
        if deadline < 0x80:
            i = j + 1
        else:
            deadline, i = _varint_at(data, j, end, _U64)

        if data[i] == 0:
            env = []
            i += 1
        else:
            env, i = _pairs_at(data, i, end)

        n = data[i]
        if n < 0x80:
            i += 1
        else:
            n, i = _varint_at(data, i, end, _U64)
        j = i + n
        if j > end:
            raise Malformed("a length runs past the end of the payload")
        method = data[i:j].decode("utf-8")

        n = data[j]
        if n < 0x80:
            i = j + 1
        else:
            n, i = _varint_at(data, j, end, _U64)
        j = i + n
        if j > end:
            raise Malformed("a length runs past the end of the payload")
        path = data[i:j].decode("utf-8")

        n = data[j]
        if n < 0x80:
            i = j + 1
        else:
            n, i = _varint_at(data, j, end, _U64)
        j = i + n
        if j > end:
            raise Malformed("a length runs past the end of the payload")
        query = data[i:j].decode("utf-8")

        headers, i = _pairs_at(data, j, end)

        n = data[i]
        if n < 0x80:
            i += 1
        else:
            n, i = _varint_at(data, i, end, _U64)
        j = i + n
        if j > end:
            raise Malformed("a length runs past the end of the payload")
        body = data[i:j]
    except IndexError:
        raise Malformed("unexpected end of the payload") from None
    except UnicodeDecodeError as e:
        raise Malformed(f"a string that is not UTF-8 ({e})") from None
    if i > end:
        raise Malformed("unexpected end of the payload")
    return Invoke(id, execution_id, function_id, deadline, env, method, path, query, headers,
                  body if type(body) is bytes else bytes(body))


def decode_payload(data, start=0, end=None):
    """Decodes the frame whose payload is ``data[start:end]``.

    Like postcard's ``from_bytes``, bytes after the frame's last field are ignored.
    """
    if end is None:
        end = len(data)
    if start >= end:
        raise Malformed("an empty payload")
    tag = data[start]
    i = start + 1
    try:
        if tag == _INVOKE:
            return _decode_invoke(data, i, end)
        if tag == _SHUTDOWN:
            return SHUTDOWN
        if tag == _RESPONSE:
            id, i = _uint_at(data, i, end, _U64)
            status, i = _uint_at(data, i, end, _U16)
            headers, i = _pairs_at(data, i, end)
            body, i = _bytes_at(data, i, end)
            return Response(id, status, headers, bytes(body))
        if tag == _ERROR:
            id, i = _uint_at(data, i, end, _U64)
            kind, i = _uint_at(data, i, end, _U32)
            if kind not in (HANDLER, PANIC):
                raise Malformed(f"unknown error kind {kind}")
            status, i = _uint_at(data, i, end, _U16)
            message, i = _str_at(data, i, end)
            return ErrorFrame(id, kind, status, message)
        if tag == _LOG:
            id, i = _uint_at(data, i, end, _U64)
            line, i = _str_at(data, i, end)
            return Log(id, line)
        if tag == _HELLO:
            version, i = _uint_at(data, i, end, _U32)
            sdk_version, i = _str_at(data, i, end)
            return Hello(version, sdk_version)
    except IndexError:  # pragma: no cover - every index is checked; belt and braces
        raise Malformed("unexpected end of the payload") from None
    # A variant index is a varint too: anything that is not one of the six is unknown.
    raise Malformed(f"unknown frame variant {tag}")


def decode_header(header):
    """Checks a 6-byte frame header and returns the payload length it announces."""
    if header[:2] != MAGIC:
        raise NotAFrame(header[:HEADER_LEN])
    n = _unpack_len_from(header, 2)[0]
    if n > MAX_FRAME_LEN:
        raise TooLarge(n)
    return n


def _check_magic(data, pos):
    """Refuses garbage from its first byte rather than waiting for a header that never comes."""
    head = data[pos:pos + 2]
    if head != MAGIC[:len(head)]:
        raise NotAFrame(data[pos:pos + HEADER_LEN])


def decode(data):
    """Decodes one whole frame from the front of `data`: ``(frame, bytes used)``, or ``None``
    when `data` holds only part of a frame."""
    if len(data) < HEADER_LEN:
        _check_magic(data, 0)
        return None
    n = decode_header(data[:HEADER_LEN])
    end = HEADER_LEN + n
    if len(data) < end:
        return None
    return decode_payload(data, HEADER_LEN, end), end


class FrameReader:
    """Splits a byte stream into frames. `feed` takes what one read returned and gives back the
    whole frames it completed; a partial frame waits in a `bytearray` (appended to, never
    re-copied, so a 16 MiB body read in 64 KiB pieces costs linear time)."""

    __slots__ = ("_buf",)

    def __init__(self):
        self._buf = None

    def feed(self, data):
        if self._buf is not None:
            self._buf += data
            data = self._buf
        frames = []
        pos = 0
        size = len(data)
        while True:
            left = size - pos
            if left < HEADER_LEN:
                if left:
                    _check_magic(data, pos)
                break
            if data[pos] != 0x49 or data[pos + 1] != 0x47:  # b"IG"
                raise NotAFrame(data[pos:pos + HEADER_LEN])
            n = _unpack_len_from(data, pos + 2)[0]
            if n > MAX_FRAME_LEN:
                raise TooLarge(n)
            end = pos + HEADER_LEN + n
            if end > size:
                break
            frames.append(decode_payload(data, pos + HEADER_LEN, end))
            pos = end
        if pos == size:
            self._buf = None
        elif data is self._buf:
            del self._buf[:pos]
        else:
            self._buf = bytearray(data[pos:])
        return frames

    def pending(self):
        """How many bytes of an unfinished frame are waiting."""
        return 0 if self._buf is None else len(self._buf)

    def eof(self):
        """The stream ended: raises `Truncated` if it ended inside a frame."""
        if self._buf:
            raise Truncated()
