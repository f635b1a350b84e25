// The codec against byte-exact vectors: the same ones `crates/protocol/tests/python_vectors.rs`
// checks against the Rust encoder (worked out by hand from the postcard format), so the Deno
// SDK, the Python SDK and the agent agree byte for byte.

import { assertEquals, assertThrows } from "./assert.ts";
import {
  decode,
  encode,
  type Frame,
  FrameError,
  FrameReader,
  HANDLER,
  MAX_FRAME_LEN,
  PANIC,
} from "../frames.ts";

const text = (s: string) => [...new TextEncoder().encode(s)].map(hex2).join("");
const hex2 = (b: number) => b.toString(16).padStart(2, "0");
const hex = (b: Uint8Array) => [...b].map(hex2).join("");
const bytes = (h: string) => {
  h = h.replaceAll(" ", "");
  const out = new Uint8Array(h.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(h.slice(2 * i, 2 * i + 2), 16);
  return out;
};

function check(frame: Frame, parts: string[]) {
  const expected = parts.join("").replaceAll(" ", "");
  assertEquals(hex(encode(frame)), expected);
  const b = bytes(expected);
  assertEquals(decode(b), [frame, b.length]);
}

const body = '{"message":"hi there"}';

Deno.test("the vectors match the Rust encoder's bytes", () => {
  check({ type: "hello", protocolVersion: 1, sdkVersion: "0.1.0" }, [
    "4947 08000000",
    "00",
    "01",
    "05",
    text("0.1.0"),
  ]);
  check({
    type: "invoke",
    id: 7,
    executionId: "01JABCDEF",
    functionId: "acme-corp/tiny",
    deadlineUnixMs: 1_700_000_000_000,
    env: [["GREETING", "hi"]],
    method: "POST",
    path: "/",
    query: "a=1",
    headers: [["content-type", "application/json"]],
    body: new TextEncoder().encode(body),
  }, [
    "4947 6f000000",
    "01",
    "07",
    "09",
    text("01JABCDEF"),
    "0e",
    text("acme-corp/tiny"),
    "80d095ffbc31",
    "01",
    "08",
    text("GREETING"),
    "02",
    text("hi"),
    "04",
    text("POST"),
    "01",
    text("/"),
    "03",
    text("a=1"),
    "01",
    "0c",
    text("content-type"),
    "10",
    text("application/json"),
    "16",
    text(body),
  ]);
  check({
    type: "response",
    id: 7,
    status: 200,
    headers: [["content-type", "text/plain"]],
    body: new TextEncoder().encode("hello"),
  }, [
    "4947 23000000",
    "02",
    "07",
    "c801",
    "01",
    "0c",
    text("content-type"),
    "0a",
    text("text/plain"),
    "05",
    text("hello"),
  ]);
  check(
    { type: "error", id: 7, kind: PANIC, status: 500, message: "boom" },
    ["4947 0a000000", "03", "07", "01", "f403", "04", text("boom")],
  );
  check(
    { type: "error", id: (1n << 64n) - 1n, kind: HANDLER, status: 418, message: "teapot" },
    ["4947 15000000", "03", "ffffffffffffffffff01", "00", "a203", "06", text("teapot")],
  );
  check({ type: "log", id: 7, line: "a log line" }, [
    "4947 0d000000",
    "04",
    "07",
    "0a",
    text("a log line"),
  ]);
  check({ type: "shutdown" }, ["4947 01000000", "05"]);
  check({
    type: "response",
    id: 128,
    status: 204,
    headers: [["x-é", "ü"]],
    body: new Uint8Array(300).fill(0xff),
  }, [
    "4947 3c010000",
    "02",
    "8001",
    "cc01",
    "01",
    "04",
    text("x-"),
    "c3a9",
    "02",
    "c3bc",
    "ac02",
    "ff".repeat(300),
  ]);
});

Deno.test("u64 values past 2^53 come back unchanged, and smaller ones as numbers", () => {
  for (const id of [0, 127, 128, 2 ** 31, 2 ** 32 + 5, Number.MAX_SAFE_INTEGER, 2n ** 53n + 1n]) {
    const [frame] = decode(encode({ type: "log", id, line: "" }))!;
    assertEquals((frame as { id: unknown }).id, id);
  }
});

Deno.test("strings of every width round-trip", () => {
  for (
    const line of ["", "a", "é".repeat(50), "日本".repeat(100), "😀".repeat(40), "x".repeat(200)]
  ) {
    const [frame] = decode(encode({ type: "log", id: 1, line }))!;
    assertEquals(frame, { type: "log", id: 1, line });
  }
});

Deno.test("the reader splits a stream at any byte and keeps what is incomplete", () => {
  const a = encode({ type: "log", id: 1, line: "one" });
  const b = encode({ type: "shutdown" });
  const c = encode({ type: "log", id: 2, line: "x".repeat(100_000) });
  const stream = new Uint8Array([...a, ...b, ...c]);
  for (const step of [1, 7, 4096, stream.length]) {
    const reader = new FrameReader();
    const got: Frame[] = [];
    for (let i = 0; i < stream.length; i += step) {
      got.push(...reader.feed(stream.subarray(i, i + step)));
    }
    assertEquals(got.map((f) => f.type), ["log", "shutdown", "log"]);
    reader.eof();
  }
  const reader = new FrameReader();
  reader.feed(a.subarray(0, 5));
  assertThrows(() => reader.eof(), FrameError, "closed mid-frame");
});

Deno.test("garbage, an oversized length and a bad payload are refused", () => {
  assertThrows(() => decode(new TextEncoder().encode("hello")), FrameError, "not a runtime frame");
  assertThrows(() => decode(new TextEncoder().encode("{")), FrameError, "not a runtime frame");
  const big = new Uint8Array([0x49, 0x47, 0, 0, 0, 0, 0]);
  new DataView(big.buffer).setUint32(2, MAX_FRAME_LEN + 1, true);
  assertThrows(() => decode(big), FrameError, "exceeds");
  assertThrows(() => decode(bytes("4947 01000000 09")), FrameError, "unknown frame variant 9");
  assertThrows(() => decode(bytes("4947 03000000 04 07 05")), FrameError, "past the end");
  assertThrows(() => decode(bytes("4947 04000000 04 07 01 ff")), FrameError, "not UTF-8");
  assertThrows(
    () => decode(bytes("4947 05000000 03 07 02 00 00")),
    FrameError,
    "unknown error kind",
  );
  assertEquals(decode(bytes("4947 05000000 04")), null);
});
