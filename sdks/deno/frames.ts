/**
 * The frames spoken between the node agent and a handler process (`crates/protocol`).
 *
 * Every frame is `"IG"` + the payload length (u32, little-endian) + the payload: the postcard
 * encoding of the Rust `Frame` enum. Postcard writes an enum as its variant index (a varint), a
 * struct as its fields in order, unsigned integers as LEB128 varints, and `String` / `Vec<u8>`
 * as a varint length followed by the bytes; a `Vec` of pairs is a varint count followed by the
 * pairs.
 *
 * A u64 (a request id, a deadline) is a `number` while it is a safe integer and a `bigint`
 * past 2^53, so every value the agent sends comes back unchanged.
 *
 * @module
 */

/** The two bytes every frame starts with (`"IG"`). */
export const MAGIC: readonly [number, number] = [0x49, 0x47];
/** Magic plus the payload length. */
export const HEADER_LEN = 6;
/** The largest payload either side accepts (16 MiB). */
export const MAX_FRAME_LEN = 16 * 1024 * 1024;
/** `ignite_protocol::PROTOCOL_VERSION`: the agent refuses a handler that speaks another. */
export const PROTOCOL_VERSION = 1;

/** `ErrorKind::Handler`: the handler threw an `IgniteError`. */
export const HANDLER = 0;
/** `ErrorKind::Panic`: anything else the handler threw. */
export const PANIC = 1;

const HELLO = 0, INVOKE = 1, RESPONSE = 2, ERROR = 3, LOG = 4, SHUTDOWN = 5;

/** A u64 on the wire. */
export type U64 = number | bigint;
/** `(name, value)` pairs, in order. */
export type Pairs = [string, string][];

export interface Hello {
  type: "hello";
  protocolVersion: number;
  sdkVersion: string;
}
export interface Invoke {
  type: "invoke";
  id: U64;
  executionId: string;
  functionId: string;
  /** Milliseconds since the Unix epoch; 0 without a deadline. */
  deadlineUnixMs: U64;
  env: Pairs;
  method: string;
  path: string;
  query: string;
  headers: Pairs;
  body: Uint8Array;
}
export interface Response {
  type: "response";
  id: U64;
  status: number;
  headers: Pairs;
  body: Uint8Array;
}
export interface ErrorFrame {
  type: "error";
  id: U64;
  kind: typeof HANDLER | typeof PANIC;
  status: number;
  message: string;
}
export interface Log {
  type: "log";
  id: U64;
  line: string;
}
export interface Shutdown {
  type: "shutdown";
}
export type Frame = Hello | Invoke | Response | ErrorFrame | Log | Shutdown;

/** The channel carried something that is not a valid frame (texts as `FrameError`'s). */
export class FrameError extends Error {
  override name = "FrameError";
}

const U16 = 0xffff;
const U32 = 0xffff_ffff;
const U64_MAX = (1n << 64n) - 1n;

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

// ------------------------------------------------------------------------------------------
// Encoding.

/** A growable byte buffer that frames are written into. */
class Writer {
  buf: Uint8Array;
  len = 0;

  constructor(capacity: number) {
    this.buf = new Uint8Array(Math.max(capacity, 64));
  }

  reserve(n: number): void {
    if (this.len + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.len + n) size *= 2;
    const grown = new Uint8Array(size);
    grown.set(this.buf.subarray(0, this.len));
    this.buf = grown;
  }

  byte(b: number): void {
    this.reserve(1);
    this.buf[this.len++] = b;
  }

  uint(n: U64, limit: number | bigint, what: string): void {
    if (typeof n === "bigint") {
      if (n < 0n || n > BigInt(limit)) throw new RangeError(`${what} is out of range: ${n}`);
      if (n <= BigInt(Number.MAX_SAFE_INTEGER)) {
        this.uint(Number(n), limit, what);
        return;
      }
      this.reserve(10);
      while (n >= 0x80n) {
        this.buf[this.len++] = Number(n & 0x7fn) | 0x80;
        n >>= 7n;
      }
      this.buf[this.len++] = Number(n);
      return;
    }
    if (!Number.isSafeInteger(n) || n < 0 || n > Number(limit)) {
      throw new RangeError(`${what} must be an integer from 0 to ${limit}, not ${n}`);
    }
    this.reserve(10);
    // Past 2^31 the bit operators would wrap: divide instead.
    while (n >= 0x80) {
      this.buf[this.len++] = (n % 0x80) | 0x80;
      n = Math.floor(n / 0x80);
    }
    this.buf[this.len++] = n;
  }

  bytes(b: Uint8Array): void {
    this.uint(b.length, U64_MAX, "a length");
    this.reserve(b.length);
    this.buf.set(b, this.len);
    this.len += b.length;
  }

  str(s: string): void {
    // One UTF-16 unit is at most three bytes of UTF-8: encode in place after room for the
    // longest length prefix a string of this size needs, then move it if the prefix is shorter.
    const max = s.length * 3;
    const prefix = varintLength(max);
    this.reserve(prefix + max);
    const start = this.len + prefix;
    const { written } = encoder.encodeInto(s, this.buf.subarray(start, start + max));
    const actual = varintLength(written);
    this.uint(written, U64_MAX, "a length");
    if (actual !== prefix) this.buf.copyWithin(this.len, start, start + written);
    this.len += written;
  }

  pairs(pairs: Pairs): void {
    this.uint(pairs.length, U64_MAX, "a count");
    for (const [name, value] of pairs) {
      this.str(String(name));
      this.str(String(value));
    }
  }

  finish(): Uint8Array {
    const n = this.len - HEADER_LEN;
    if (n > MAX_FRAME_LEN) {
      throw new FrameError(
        `framing error: a frame of ${n} bytes exceeds the ${MAX_FRAME_LEN}-byte limit`,
      );
    }
    new DataView(this.buf.buffer, this.buf.byteOffset).setUint32(2, n, true);
    return this.buf.subarray(0, this.len);
  }
}

function varintLength(n: number): number {
  let len = 1;
  while (n >= 0x80) {
    n = Math.floor(n / 0x80);
    len++;
  }
  return len;
}

function start(tag: number, capacity = 64): Writer {
  const w = new Writer(capacity + HEADER_LEN + 1);
  w.buf.set(MAGIC, 0);
  w.len = HEADER_LEN;
  w.byte(tag);
  return w;
}

/** Encodes any frame, header included. */
export function encode(frame: Frame): Uint8Array {
  switch (frame.type) {
    case "hello": {
      const w = start(HELLO);
      w.uint(frame.protocolVersion, U32, "protocolVersion");
      w.str(frame.sdkVersion);
      return w.finish();
    }
    case "invoke": {
      const w = start(INVOKE, 256 + frame.body.length);
      w.uint(frame.id, U64_MAX, "id");
      w.str(frame.executionId);
      w.str(frame.functionId);
      w.uint(frame.deadlineUnixMs, U64_MAX, "deadlineUnixMs");
      w.pairs(frame.env);
      w.str(frame.method);
      w.str(frame.path);
      w.str(frame.query);
      w.pairs(frame.headers);
      w.bytes(frame.body);
      return w.finish();
    }
    case "response": {
      const w = start(RESPONSE, 64 + frame.body.length);
      w.uint(frame.id, U64_MAX, "id");
      w.uint(frame.status, U16, "status");
      w.pairs(frame.headers);
      w.bytes(frame.body);
      return w.finish();
    }
    case "error": {
      if (frame.kind !== HANDLER && frame.kind !== PANIC) {
        throw new RangeError(`an error kind is HANDLER (0) or PANIC (1), not ${frame.kind}`);
      }
      const w = start(ERROR);
      w.uint(frame.id, U64_MAX, "id");
      w.byte(frame.kind);
      w.uint(frame.status, U16, "status");
      w.str(frame.message);
      return w.finish();
    }
    case "log": {
      const w = start(LOG);
      w.uint(frame.id, U64_MAX, "id");
      w.str(frame.line);
      return w.finish();
    }
    case "shutdown":
      return start(SHUTDOWN).finish();
  }
}

// ------------------------------------------------------------------------------------------
// Decoding.

class Cursor {
  constructor(readonly data: Uint8Array, public i: number, readonly end: number) {}

  uint(limit: number | bigint): U64 {
    const { data, end } = this;
    // One byte: every id, count and length under 128.
    if (this.i < end && data[this.i] < 0x80) return data[this.i++];
    let value = 0n;
    let shift = 0n;
    for (;;) {
      if (this.i >= end) throw malformed("unexpected end of the payload");
      const b = data[this.i++];
      value |= BigInt(b & 0x7f) << shift;
      if (b < 0x80) break;
      shift += 7n;
      if (shift >= 70n) throw malformed("a varint longer than 10 bytes");
    }
    if (value > BigInt(limit)) throw malformed(`the integer ${value} is out of range`);
    return value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : value;
  }

  small(limit: number): number {
    return Number(this.uint(limit));
  }

  length(): number {
    const n = this.uint(U64_MAX);
    if (typeof n === "bigint" || this.i + n > this.end) {
      throw malformed("a length runs past the end of the payload");
    }
    return n;
  }

  bytes(): Uint8Array {
    const n = this.length();
    const b = this.data.slice(this.i, this.i + n);
    this.i += n;
    return b;
  }

  str(): string {
    const n = this.length();
    try {
      return decoder.decode(this.data.subarray(this.i, this.i + n));
    } catch (e) {
      throw malformed(`a string that is not UTF-8 (${(e as Error).message})`);
    } finally {
      this.i += n;
    }
  }

  pairs(): Pairs {
    const n = this.uint(U64_MAX);
    // Every pair takes at least two bytes: refuse a count that cannot fit before allocating.
    if (typeof n === "bigint" || 2 * n > this.end - this.i) {
      throw malformed("a sequence length runs past the end of the payload");
    }
    const out: Pairs = [];
    for (let k = 0; k < n; k++) out.push([this.str(), this.str()]);
    return out;
  }
}

function malformed(what: string): FrameError {
  return new FrameError(`framing error: malformed frame payload: ${what}`);
}

/**
 * Decodes the frame whose payload is `data[start, end)`. Like postcard's `from_bytes`, bytes
 * after the frame's last field are ignored.
 */
export function decodePayload(data: Uint8Array, start = 0, end = data.length): Frame {
  if (start >= end) throw malformed("an empty payload");
  const c = new Cursor(data, start + 1, end);
  switch (data[start]) {
    case INVOKE:
      return {
        type: "invoke",
        id: c.uint(U64_MAX),
        executionId: c.str(),
        functionId: c.str(),
        deadlineUnixMs: c.uint(U64_MAX),
        env: c.pairs(),
        method: c.str(),
        path: c.str(),
        query: c.str(),
        headers: c.pairs(),
        body: c.bytes(),
      };
    case SHUTDOWN:
      return { type: "shutdown" };
    case RESPONSE:
      return {
        type: "response",
        id: c.uint(U64_MAX),
        status: c.small(U16),
        headers: c.pairs(),
        body: c.bytes(),
      };
    case ERROR: {
      const id = c.uint(U64_MAX);
      const kind = c.small(U32);
      if (kind !== HANDLER && kind !== PANIC) throw malformed(`unknown error kind ${kind}`);
      return { type: "error", id, kind, status: c.small(U16), message: c.str() };
    }
    case LOG:
      return { type: "log", id: c.uint(U64_MAX), line: c.str() };
    case HELLO:
      return { type: "hello", protocolVersion: c.small(U32), sdkVersion: c.str() };
  }
  // A variant index is a varint too: anything that is not one of the six is unknown.
  throw malformed(`unknown frame variant ${data[start]}`);
}

function preview(bytes: Uint8Array): string {
  return JSON.stringify(new TextDecoder().decode(bytes.subarray(0, HEADER_LEN)));
}

/** Checks a frame header at `data[at]` and returns the payload length it announces. */
export function decodeHeader(data: Uint8Array, at = 0): number {
  if (data[at] !== MAGIC[0] || data[at + 1] !== MAGIC[1]) {
    throw new FrameError(
      `framing error: the bytes on the channel are not a runtime frame (they start with ${
        preview(data.subarray(at))
      })`,
    );
  }
  const n = new DataView(data.buffer, data.byteOffset + at, 6).getUint32(2, true);
  if (n > MAX_FRAME_LEN) {
    throw new FrameError(
      `framing error: a frame of ${n} bytes exceeds the ${MAX_FRAME_LEN}-byte limit`,
    );
  }
  return n;
}

/**
 * Decodes one whole frame from the front of `data`: `[frame, bytes used]`, or `null` when `data`
 * holds only part of a frame (garbage is refused from its first byte).
 */
export function decode(data: Uint8Array): [Frame, number] | null {
  if (data.length < HEADER_LEN) {
    for (let i = 0; i < Math.min(data.length, 2); i++) {
      if (data[i] !== MAGIC[i]) decodeHeader(data);
    }
    return null;
  }
  const n = decodeHeader(data);
  if (data.length < HEADER_LEN + n) return null;
  return [decodePayload(data, HEADER_LEN, HEADER_LEN + n), HEADER_LEN + n];
}

/** Splits a byte stream into frames: `feed` takes what one read returned (it is copied). */
export class FrameReader {
  #buf = new Uint8Array(64 * 1024);
  #start = 0;
  #end = 0;

  /** The whole frames the stream holds so far. */
  feed(chunk: Uint8Array): Frame[] {
    this.#append(chunk);
    const frames: Frame[] = [];
    for (;;) {
      const got = decode(this.#buf.subarray(this.#start, this.#end));
      if (got === null) break;
      frames.push(got[0]);
      this.#start += got[1];
    }
    if (this.#start === this.#end) this.#start = this.#end = 0;
    return frames;
  }

  /** The stream ended: an error if it ended inside a frame. */
  eof(): void {
    if (this.#end > this.#start) {
      throw new FrameError("framing error: the channel closed mid-frame");
    }
  }

  #append(chunk: Uint8Array): void {
    const held = this.#end - this.#start;
    if (this.#end + chunk.length > this.#buf.length) {
      let size = this.#buf.length;
      while (size < held + chunk.length) size *= 2;
      if (size === this.#buf.length) {
        this.#buf.copyWithin(0, this.#start, this.#end);
      } else {
        const next = new Uint8Array(size);
        next.set(this.#buf.subarray(this.#start, this.#end), 0);
        this.#buf = next;
      }
      this.#start = 0;
      this.#end = held;
    }
    this.#buf.set(chunk, this.#end);
    this.#end += chunk.length;
  }
}
