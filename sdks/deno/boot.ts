/**
 * Starts a built Deno app. The build writes the app's entry, `.ignite/main.ts`:
 *
 * ```ts
 * import "./sdk/prelude.ts";          // first: the channel is the SDK's, stdout goes to stderr
 * import * as app from "../main.ts";  // the app (and everything it imports)
 * import { boot } from "./sdk/boot.ts";
 * await boot(app, "main.ts");
 * ```
 *
 * and the instance runs `deno run … .ignite/main.ts` (see the server's `runtime/deno.rs`). Modes,
 * by the first argument:
 *
 * - `check`: the app's module evaluated; checks that its default export is a handler from
 *   `main(...)` (exit 1 with the reason on stderr otherwise). The build runs it offline, which
 *   also leaves V8's code cache of every module in the app's `DENO_DIR`.
 * - `serve` (no argument): sends `Hello` and serves requests on stdin/stdout, each as a promise
 *   of its own (the agent sends up to the app's concurrency at once).
 *
 * @module
 */

import * as frames from "./frames.ts";
import { Context, IgniteError, IgniteRequest, isHandler, version } from "./mod.ts";
import type { IgniteHandler } from "./mod.ts";
import { channel, printError, writeAll } from "./prelude.ts";

/** Exit status when the framing channel breaks (as the Rust SDK's). */
export const EXIT_CHANNEL = 70;
/** Exit status of a usage error (a terminal on stdin, an unknown mode). */
export const EXIT_USAGE = 64;

const READ_SIZE = 256 * 1024;
const encoder = new TextEncoder();

/** The handler `app` exports, or why there is none. */
export function handlerOf(
  app: Record<string, unknown>,
  file: string,
): IgniteHandler | string {
  const exported = app.default;
  if (isHandler(exported)) return exported;
  const how = "export the handler as `export default main(async (req, ctx) => ...)`, with " +
    '`import { main } from "ignite"`';
  if (exported === undefined) return `${file} has no default export: ${how}`;
  if (typeof exported === "function") {
    return `the default export of ${file} is a plain function, not a handler from main(): ${how}`;
  }
  return `the default export of ${file} is ${Deno.inspect(exported)}, not a handler: ${how}`;
}

/** Runs the entry's mode (see the module's documentation). */
export async function boot(app: Record<string, unknown>, file: string): Promise<void> {
  const mode = Deno.args[0] ?? "serve";
  const handler = handlerOf(app, file);
  if (mode === "check") {
    if (typeof handler === "string") {
      printError(`${handler}\n`);
      Deno.exitCode = 1;
      return;
    }
    console.log(`the handler is the default export of ${file}`);
    return;
  }
  if (mode !== "serve") {
    printError(`unknown mode ${JSON.stringify(mode)}: the entry takes check or serve\n`);
    Deno.exit(EXIT_USAGE);
  }
  if (typeof handler === "string") {
    printError(`${handler}\n`);
    Deno.exit(1);
  }
  if (channel.input.isTerminal()) {
    printError(
      "this is an Ignite handler: it speaks the runtime protocol on stdin/stdout and is " +
        "started by the platform. Deploy it with `dodil ignite draft save/publish`.\n",
    );
    Deno.exit(EXIT_USAGE);
  }
  await new Server(handler).serve();
}

function send(frame: frames.Frame): void {
  writeAll(channel.output, frames.encode(frame));
}

/** A 500 for something the handler threw that is not an `IgniteError`. */
export function panicMessage(e: unknown): string {
  if (e instanceof Error) {
    const text = e.message ? `: ${e.message}` : "";
    return `the handler threw ${e.name || "Error"}${text}`;
  }
  return `the handler threw ${Deno.inspect(e)}`;
}

const JSON_TYPE: [string, string] = ["content-type", "application/json"];
const TEXT_TYPE: [string, string] = ["content-type", "text/plain; charset=utf-8"];
const BYTES_TYPE: [string, string] = ["content-type", "application/octet-stream"];

/** Why a returned value is not a response. */
export class NotAResponse extends Error {}

/** `[status, headers, body]` for what a handler returned. */
export async function responseParts(
  value: unknown,
): Promise<[number, [string, string][], Uint8Array]> {
  if (typeof value === "string") return [200, [TEXT_TYPE], encoder.encode(value)];
  if (value === undefined || value === null) return [204, [], new Uint8Array()];
  if (typeof value === "object") {
    // A plain object or array first: the Response global is made on first use (Deno loads its
    // fetch implementation then, a few milliseconds), which a JSON answer never needs.
    const proto = Object.getPrototypeOf(value);
    if (proto === Object.prototype || proto === null || Array.isArray(value)) {
      return jsonParts(value);
    }
    if (value instanceof Uint8Array) return [200, [BYTES_TYPE], value];
    if (value instanceof ArrayBuffer) return [200, [BYTES_TYPE], new Uint8Array(value)];
    if (ArrayBuffer.isView(value)) {
      return [
        200,
        [BYTES_TYPE],
        new Uint8Array(value.buffer, value.byteOffset, value.byteLength),
      ];
    }
    if (value instanceof Response) {
      // Iterating headers gives each Set-Cookie on its own (the Fetch standard's "sort and
      // combine" keeps them apart).
      const headers: [string, string][] = [...value.headers];
      return [value.status, headers, new Uint8Array(await value.arrayBuffer())];
    }
  }
  if (typeof value === "function" || typeof value === "symbol") {
    throw new NotAResponse(
      `the handler returned a ${typeof value}, which is not a response: return an object or ` +
        "array (sent as JSON), a string (text), a Uint8Array (bytes), null (204 No Content) " +
        "or a Response",
    );
  }
  return jsonParts(value);
}

function jsonParts(value: unknown): [number, [string, string][], Uint8Array] {
  let json: string | undefined;
  try {
    json = JSON.stringify(value);
  } catch (e) {
    throw new NotAResponse(
      `the handler's response could not be encoded as JSON: ${(e as Error).message}`,
    );
  }
  if (json === undefined) {
    throw new NotAResponse(`the handler returned ${Deno.inspect(value)}, which is not JSON`);
  }
  return [200, [JSON_TYPE], encoder.encode(json)];
}

/** Serves one channel: every `Invoke` runs as a promise of its own. */
class Server {
  readonly reader = new frames.FrameReader();

  constructor(readonly handler: IgniteHandler) {}

  answer(frame: frames.Frame): void {
    try {
      send(frame);
    } catch (e) {
      // The agent is gone: nobody is left to answer.
      printError(`ignite: the framing channel broke writing an answer: ${e}\n`);
      Deno.exit(EXIT_CHANNEL);
    }
  }

  async serve(): Promise<void> {
    // A stray error or rejection outside any request's promise must not end the instance.
    globalThis.addEventListener("unhandledrejection", (e) => {
      e.preventDefault();
      console.error("ignite: an unhandled promise rejection (the instance keeps serving):");
      console.error(e.reason);
    });
    globalThis.addEventListener("error", (e) => {
      e.preventDefault();
      console.error("ignite: an uncaught exception (the instance keeps serving):");
      console.error(e.error ?? e.message);
    });
    // As pid 1 of its sandbox the process would ignore SIGTERM without a listener; the agent
    // sends it to an instance that passed its deadline.
    try {
      Deno.addSignalListener("SIGTERM", () => Deno.exit(143));
    } catch {
      // Not on this platform.
    }
    this.answer({ type: "hello", protocolVersion: frames.PROTOCOL_VERSION, sdkVersion: version });
    const buf = new Uint8Array(READ_SIZE);
    for (;;) {
      let n: number | null;
      try {
        n = await channel.input.read(buf);
      } catch (e) {
        this.fail(`the framing channel broke: ${e}`);
      }
      let got: frames.Frame[];
      try {
        if (n === null) {
          this.reader.eof();
          Deno.exit(0);
        }
        got = this.reader.feed(buf.subarray(0, n));
      } catch (e) {
        this.fail(String((e as Error).message ?? e));
      }
      for (const frame of got) {
        if (frame.type === "invoke") this.run(frame);
        else if (frame.type === "shutdown") Deno.exit(0);
        else this.fail(`the agent sent a frame a handler does not expect: ${frame.type}`);
      }
    }
  }

  fail(message: string): never {
    printError(`ignite: ${message}\n`);
    Deno.exit(EXIT_CHANNEL);
  }

  async run(invoke: frames.Invoke): Promise<void> {
    const id = invoke.id;
    const req = new IgniteRequest(invoke.body, {
      method: invoke.method,
      path: invoke.path,
      query: invoke.query,
      headers: invoke.headers,
    });
    const deadline = Number(invoke.deadlineUnixMs);
    const ctx = new Context(
      {
        executionId: invoke.executionId,
        functionId: invoke.functionId,
        env: Object.fromEntries(invoke.env),
        deadline: deadline > 0 ? deadline : undefined,
      },
      (line) => this.answer({ type: "log", id, line }),
    );
    let frame: frames.Frame;
    try {
      const result = await this.handler(req, ctx);
      const [status, headers, body] = await responseParts(result);
      frame = { type: "response", id, status, headers, body };
      if (body.length + 1024 > frames.MAX_FRAME_LEN) {
        const message = `the handler's response of ${body.length} bytes exceeds the ` +
          `${frames.MAX_FRAME_LEN}-byte limit of a frame`;
        printError(`ignite: ${message}\n`);
        frame = { type: "error", id, kind: frames.PANIC, status: 500, message };
      }
    } catch (e) {
      if (e instanceof IgniteError) {
        frame = { type: "error", id, kind: frames.HANDLER, status: e.status, message: e.message };
      } else if (e instanceof NotAResponse) {
        printError(`ignite: ${e.message}\n`);
        frame = { type: "error", id, kind: frames.PANIC, status: 500, message: e.message };
      } else {
        console.error(e);
        frame = { type: "error", id, kind: frames.PANIC, status: 500, message: panicMessage(e) };
      }
    }
    this.answer(frame);
  }
}
