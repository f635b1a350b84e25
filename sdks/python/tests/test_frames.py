"""The frame codec: byte-exact vectors worked out by hand from the postcard format (the same
frames and hex are checked against the Rust encoder in crates/protocol/tests/python_vectors.rs),
round trips, and refusal of bad input.

Run: /usr/bin/python3 -m unittest discover -s sdks/python/tests
"""

import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ignite import _frames as F  # noqa: E402


def text(s):
    """The hex of an ASCII string (its bytes, no length)."""
    return s.encode().hex()


def h(*parts):
    return bytes.fromhex("".join(p.replace(" ", "") for p in parts))


BODY = '{"message":"hi there"}'

# Each vector: (frame, hex of the whole frame). A string is its length (a one-byte varint
# here) and its bytes; 1_700_000_000_000 is the varint 80 d0 95 ff bc 31; 200 is c8 01 and
# 500 f4 03.
VECTORS = [
    (
        F.Hello(1, "0.1.0"),
        h("4947 08000000", "00", "01", "05", text("0.1.0")),
    ),
    (
        F.Invoke(7, "01JABCDEF", "acme-corp/tiny", 1_700_000_000_000, [("GREETING", "hi")],
                 "POST", "/", "a=1", [("content-type", "application/json")], BODY.encode()),
        h("4947 6f000000", "01", "07",
          "09", text("01JABCDEF"),
          "0e", text("acme-corp/tiny"),
          "80d095ffbc31",
          "01", "08", text("GREETING"), "02", text("hi"),
          "04", text("POST"),
          "01", text("/"),
          "03", text("a=1"),
          "01", "0c", text("content-type"), "10", text("application/json"),
          "16", text(BODY)),
    ),
    (
        F.Response(7, 200, [("content-type", "text/plain")], b"hello"),
        h("4947 23000000", "02", "07", "c801", "01", "0c", text("content-type"),
          "0a", text("text/plain"), "05", text("hello")),
    ),
    (
        F.ErrorFrame(7, F.PANIC, 500, "boom"),
        h("4947 0a000000", "03", "07", "01", "f403", "04", text("boom")),
    ),
    (
        F.ErrorFrame((1 << 64) - 1, F.HANDLER, 418, "teapot"),
        h("4947 15000000", "03", "ffffffffffffffffff01", "00", "a203", "06", text("teapot")),
    ),
    (
        F.Log(7, "a log line"),
        h("4947 0d000000", "04", "07", "0a", text("a log line")),
    ),
    (
        F.SHUTDOWN,
        h("4947 01000000", "05"),
    ),
    (
        # Multi-byte lengths: a 300-byte body (ac 02) and a non-ASCII string (é is two bytes).
        F.Response(128, 204, [("x-é", "ü")], b"\xff" * 300),
        h("4947 3c010000", "02", "8001", "cc01", "01", "04", text("x-"), "c3a9", "02", "c3bc",
          "ac02", "ff" * 300),
    ),
]


class Vectors(unittest.TestCase):
    def test_encode_matches_the_vectors(self):
        for frame, expected in VECTORS:
            with self.subTest(frame=frame):
                self.assertEqual(bytes(F.encode(frame)).hex(), expected.hex())

    def test_decode_matches_the_vectors(self):
        for frame, encoded in VECTORS:
            with self.subTest(frame=frame):
                self.assertEqual(F.decode(encoded), (frame, len(encoded)))

    def test_the_runtime_encoders_match(self):
        self.assertEqual(F.encode_response(7, 200, [("content-type", "text/plain")], b"hello"),
                         VECTORS[2][1])
        self.assertEqual(F.encode_error(7, F.PANIC, 500, "boom"), VECTORS[3][1])
        self.assertEqual(F.encode_log(7, "a log line"), VECTORS[5][1])
        self.assertEqual(F.encode_hello(1, "0.1.0"), VECTORS[0][1])


class Varints(unittest.TestCase):
    CASES = [
        (0, "00"), (1, "01"), (127, "7f"), (128, "8001"), (300, "ac02"), (16383, "ff7f"),
        (16384, "808001"), ((1 << 32) - 1, "ffffffff0f"), ((1 << 64) - 1, "ffffffffffffffffff01"),
    ]

    def test_encoding(self):
        for n, hexed in self.CASES:
            self.assertEqual(F.varint(n).hex(), hexed, n)

    def test_decoding(self):
        for n, hexed in self.CASES:
            data = bytes.fromhex(hexed)
            self.assertEqual(F._uint_at(data, 0, len(data), (1 << 64) - 1), (n, len(data)))

    def test_out_of_range_for_the_type(self):
        # A status is a u16: 65536 (80 80 04) does not fit.
        payload = h("02", "07", "808004", "00", "00")
        with self.assertRaises(F.Malformed):
            F.decode_payload(payload)
        # Eleven bytes is longer than any u64.
        with self.assertRaises(F.Malformed):
            F.decode_payload(h("04", "ff" * 10 + "01", "00"))


def sample_frames():
    yield F.Hello(1, "")
    yield F.Invoke(0, "", "", 0, [], "", "", "", [], b"")
    yield F.Invoke(2 ** 40, "01J" * 50, "org/name", 2 ** 63,
                   [("K%d" % i, "v" * i) for i in range(200)], "GET", "/a/b?c", "x=1&y=2",
                   [("h", "é" * 100)] * 3, bytes(range(256)) * 600)
    yield F.Response(1, 0, [], b"")
    yield F.Response(99, 65535, [("a", "b")] * 130, b"\x00" * 70000)
    yield F.ErrorFrame(3, F.HANDLER, 400, "missing field `message` in the request body")
    yield F.Log(5, "ünïcødé " * 40)
    yield F.SHUTDOWN


class RoundTrips(unittest.TestCase):
    def test_every_frame_round_trips(self):
        for frame in sample_frames():
            encoded = F.encode(frame)
            self.assertEqual(bytes(encoded[:2]), b"IG")
            self.assertEqual(F.decode_header(bytes(encoded[:6])), len(encoded) - 6)
            self.assertEqual(F.decode(bytes(encoded)), (frame, len(encoded)))

    def test_the_reader_splits_a_stream_cut_anywhere(self):
        frames = list(sample_frames())
        stream = b"".join(bytes(F.encode(f)) for f in frames)
        for step in (1, 2, 5, 6, 7, 100, 4096, 65536, len(stream)):
            reader = F.FrameReader()
            got = []
            for i in range(0, len(stream), step):
                got += reader.feed(stream[i:i + step])
            self.assertEqual(got, frames, step)
            self.assertEqual(reader.pending(), 0)
            reader.eof()

    def test_a_stream_that_ends_mid_frame_is_truncated(self):
        encoded = bytes(F.encode(F.Log(1, "x")))
        reader = F.FrameReader()
        self.assertEqual(reader.feed(encoded[:-1]), [])
        with self.assertRaises(F.Truncated):
            reader.eof()

    def test_the_reader_takes_a_large_frame_in_small_pieces_in_linear_time(self):
        body = os.urandom(F.MAX_FRAME_LEN - 64)
        encoded = bytes(F.encode_response(1, 200, [], body))
        reader = F.FrameReader()
        got = []
        for i in range(0, len(encoded), 65536):
            got += reader.feed(encoded[i:i + 65536])
        self.assertEqual(len(got), 1)
        self.assertEqual(got[0].body, body)


class Refusals(unittest.TestCase):
    def test_garbage_is_refused_from_its_first_byte(self):
        for data in (b"h", b"hello world", b"Ix", b"{\"a\": 1}"):
            with self.assertRaises(F.NotAFrame):
                F.FrameReader().feed(data)
            with self.assertRaises(F.NotAFrame):
                F.decode(data)
        # A lone correct first byte waits for the rest.
        self.assertEqual(F.FrameReader().feed(b"I"), [])
        self.assertIsNone(F.decode(b"IG\x01"))

    def test_a_frame_over_16_mib_is_refused_from_its_header(self):
        header = b"IG" + (F.MAX_FRAME_LEN + 1).to_bytes(4, "little")
        with self.assertRaises(F.TooLarge):
            F.FrameReader().feed(header)
        with self.assertRaises(F.TooLarge):
            F.decode_header(header)
        self.assertEqual(F.FrameReader().feed(b"IG" + F.MAX_FRAME_LEN.to_bytes(4, "little")), [])
        with self.assertRaises(F.TooLarge):
            F.encode_response(1, 200, [], b"x" * F.MAX_FRAME_LEN)

    def test_malformed_payloads(self):
        bad = [
            h("06"),                      # no such variant
            h(""),                        # empty
            h("04", "07"),                # a Log without its line
            h("04", "07", "05", "6869"),  # a line shorter than its length
            h("04", "07", "02", "ff fe"),  # not UTF-8
            h("03", "07", "02", "c801", "00"),  # no such error kind
            h("01", "07", "00", "00", "00", "ffffffff0f"),  # an env count that cannot fit
        ]
        for payload in bad:
            with self.subTest(payload=payload.hex()):
                with self.assertRaises(F.Malformed):
                    F.decode_payload(payload)

    def test_every_truncation_is_malformed_even_with_bytes_after_it(self):
        # The Invoke decoder reads one-byte fields without checking them against the payload's
        # end: a payload cut short must still fail, whatever follows it in the buffer.
        for frame in sample_frames():
            payload = bytes(F.encode(frame))[6:]
            if len(payload) > 3000:
                continue  # the short frames have every kind of field boundary
            for cut in range(len(payload)):
                for tail in (b"", b"\x00" * 64, b"\x7f" * 64, b"\xff" * 64):
                    data = payload[:cut] + tail
                    with self.subTest(frame=type(frame).__name__, cut=cut, tail=tail[:1]):
                        if type(frame) is F.Shutdown or (cut == 0 and not tail):
                            continue
                        try:
                            got = F.decode_payload(data, 0, cut)
                        except F.Malformed:
                            continue
                        self.fail(f"decoded {got!r} from {cut} of {len(payload)} bytes")

    def test_out_of_range_values_are_not_encoded(self):
        with self.assertRaises(ValueError):
            F.encode_response(1, 70000, [], b"")
        with self.assertRaises(ValueError):
            F.encode_response(-1, 200, [], b"")
        with self.assertRaises(ValueError):
            F.encode_error(1, 2, 500, "")
        with self.assertRaises(ValueError):
            F.encode_response(1, True, [], b"")


if __name__ == "__main__":
    unittest.main()
