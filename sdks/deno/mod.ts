/**
 * The Ignite SDK for Deno: what a handler imports as `"ignite"` (the platform's build maps the
 * name to this module; the app never vendors it).
 *
 * ```ts
 * import { main } from "ignite";
 *
 * export default main(async (req, ctx) => {
 *   const message = req.field<string>("message") ?? "Hello from Deno!";
 *   return { message, execution_id: ctx.executionId, function_id: ctx.functionId };
 * });
 * ```
 *
 * A handler returns an object or array (sent as JSON), a string (text), a `Uint8Array` (bytes),
 * `null`/`undefined` (204), or a web-standard `Response` (its status, headers and body as they
 * are). `throw new IgniteError(status, message)` answers with that status; anything else thrown
 * is a 500 and its stack goes to the execution's logs. `console.log` is a log line, never part of
 * a response.
 *
 * Nothing runs at import but definitions.
 *
 * @module
 */

/** The SDK's version, sent to the agent in the handshake. */
export const version = "0.1.0";

/** An error with the HTTP status of the answer: `throw new IgniteError(404, "no such item")`. */
export class IgniteError extends Error {
  override name = "IgniteError";
  readonly status: number;

  constructor(status: number, message: string) {
    super(message);
    if (!Number.isInteger(status) || status < 100 || status > 599) {
      throw new TypeError(`IgniteError: status must be an HTTP status code, not ${status}`);
    }
    this.status = status;
  }
}

/** The request exactly as it arrived. Header names are lowercase. */
export interface RawRequest {
  method: string;
  path: string;
  /** Without the `?`. */
  query: string;
  headers: [string, string][];
  body: Uint8Array;
}

/** What `new IgniteRequest(body, init)` takes besides the body (for unit tests). */
export interface RequestInit {
  method?: string;
  path?: string;
  query?: string;
  headers?: Record<string, string> | [string, string][];
}

const MISSING = Symbol("missing");
const decoder = new TextDecoder();

/**
 * The request a handler is answering.
 *
 * For unit tests: `new IgniteRequest({ message: "hi" })` (an object or array is sent as JSON, a
 * string as UTF-8), with `method`, `path`, `query` and `headers` in the second argument.
 */
export class IgniteRequest {
  readonly method: string;
  readonly path: string;
  readonly query: string;
  readonly headers: [string, string][];
  readonly #body: Uint8Array;
  #json: { ok: true; value: unknown } | { ok: false; error: string } | typeof MISSING = MISSING;

  constructor(body: unknown = new Uint8Array(), init: RequestInit = {}) {
    if (body instanceof Uint8Array) this.#body = body;
    else if (typeof body === "string") this.#body = new TextEncoder().encode(body);
    else this.#body = new TextEncoder().encode(JSON.stringify(body));
    this.method = init.method ?? "POST";
    this.path = init.path ?? "/";
    this.query = init.query ?? "";
    const headers = Array.isArray(init.headers) ? init.headers : Object.entries(init.headers ?? {});
    this.headers = headers.map(([n, v]) => [String(n).toLowerCase(), String(v)]);
  }

  #parsed(): { ok: true; value: unknown } | { ok: false; error: string } {
    if (this.#json === MISSING) {
      try {
        this.#json = { ok: true, value: JSON.parse(decoder.decode(this.#body)) };
      } catch (e) {
        this.#json = { ok: false, error: (e as Error).message };
      }
    }
    return this.#json;
  }

  /**
   * One field of a JSON-object body, or `undefined` when the body has no such field (or is not
   * a JSON object): `req.field<string>("message") ?? "a default"`. The type is the caller's
   * claim; it is not checked.
   */
  field<T = unknown>(key: string): T | undefined {
    const parsed = this.#parsed();
    if (!parsed.ok) return undefined;
    const value = parsed.value;
    if (value === null || typeof value !== "object" || Array.isArray(value)) return undefined;
    return Object.hasOwn(value, key) ? (value as Record<string, T>)[key] : undefined;
  }

  /** One field of a JSON-object body; a missing one answers 400 naming the key. */
  require<T = unknown>(key: string): T {
    const value = this.field<T>(key);
    if (value !== undefined) return value;
    const parsed = this.#parsed();
    if (this.#body.length === 0 || (parsed.ok && isObject(parsed.value))) {
      throw new IgniteError(400, `missing field \`${key}\` in the request body`);
    }
    if (parsed.ok) {
      throw new IgniteError(
        400,
        `missing field \`${key}\`: the request body is JSON ${kind(parsed.value)}, not an object`,
      );
    }
    throw new IgniteError(
      400,
      `missing field \`${key}\`: the request body is not JSON (${parsed.error})`,
    );
  }

  /** The whole body as JSON; an empty body or one that is not JSON answers 400. */
  body<T = unknown>(): T {
    if (this.#body.length === 0) {
      throw new IgniteError(
        400,
        "the request body is empty; send a JSON body (e.g. invoke -p '{...}')",
      );
    }
    const parsed = this.#parsed();
    if (!parsed.ok) {
      throw new IgniteError(400, `the request body is not JSON: ${parsed.error}`);
    }
    return parsed.value as T;
  }

  /** The body as UTF-8 text. */
  text(): string {
    return decoder.decode(this.#body);
  }

  /** The body's bytes. */
  bytes(): Uint8Array {
    return this.#body;
  }

  /** The first value of a header, matched case-insensitively. */
  header(name: string): string | undefined {
    const lower = name.toLowerCase();
    return this.headers.find(([n]) => n === lower)?.[1];
  }

  /** The request exactly as it arrived. */
  raw(): RawRequest {
    return {
      method: this.method,
      path: this.path,
      query: this.query,
      headers: this.headers,
      body: this.#body,
    };
  }
}

function isObject(v: unknown): boolean {
  return v !== null && typeof v === "object" && !Array.isArray(v);
}

function kind(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "an array";
  switch (typeof v) {
    case "string":
      return "a string";
    case "number":
      return "a number";
    case "boolean":
      return "a boolean";
  }
  return "an object";
}

/** Where a context's log lines go (the serving loop's channel). */
export type LogSink = (line: string) => void;

/** What `new Context(init)` takes (for unit tests). */
export interface ContextInit {
  executionId?: string;
  functionId?: string;
  env?: Record<string, string>;
  /** Milliseconds since the Unix epoch. */
  deadline?: number;
}

/**
 * What the platform knows about the execution a request belongs to: `executionId` (a ULID),
 * `functionId` (`<org>/<name>`), `env` (the app's environment), `deadline`, `remaining()` and
 * `log(line)`.
 */
export class Context {
  readonly executionId: string;
  readonly functionId: string;
  readonly env: Readonly<Record<string, string>>;
  /** When the platform gives up on this request (milliseconds since the epoch), if it does. */
  readonly deadline: number | undefined;
  readonly #sink: LogSink | undefined;

  constructor(init: ContextInit = {}, sink?: LogSink) {
    this.executionId = init.executionId ?? "";
    this.functionId = init.functionId ?? "";
    this.env = Object.freeze({ ...init.env });
    this.deadline = init.deadline;
    this.#sink = sink;
  }

  /** Milliseconds left before the deadline (0 once it has passed); `undefined` without one. */
  remaining(): number | undefined {
    return this.deadline === undefined ? undefined : Math.max(0, this.deadline - Date.now());
  }

  /**
   * Logs a line attributed to this execution alone, even when the instance serves several
   * requests at once. (`console.log` writes to the logs too.)
   */
  log(line: unknown): void {
    const text = typeof line === "string" ? line : Deno.inspect(line);
    if (this.#sink) this.#sink(text);
    else console.error(text);
  }
}

/** A handler as the app writes it. */
export type Handler = (req: IgniteRequest, ctx: Context) => unknown;

const HANDLER_MARK: unique symbol = Symbol.for("ignite.handler");

/** A handler registered with `main`: callable as it was, in tests. */
export interface IgniteHandler {
  (req: IgniteRequest, ctx: Context): Promise<unknown>;
  readonly [HANDLER_MARK]: true;
}

/**
 * Registers the app's handler: `export default main(async (req, ctx) => …)` in `main.ts` (a
 * plain function works too). Returns it, still callable in tests.
 */
export function main(handler: Handler): IgniteHandler {
  if (typeof handler !== "function") {
    throw new TypeError(`main() takes the handler function, not ${Deno.inspect(handler)}`);
  }
  const wrapped = async (req: IgniteRequest, ctx: Context) => await handler(req, ctx);
  Object.defineProperty(wrapped, HANDLER_MARK, { value: true });
  Object.defineProperty(wrapped, "name", { value: handler.name || "handler" });
  return wrapped as unknown as IgniteHandler;
}

/** Whether `value` is what `main` returns. */
export function isHandler(value: unknown): value is IgniteHandler {
  return typeof value === "function" && (value as Partial<IgniteHandler>)[HANDLER_MARK] === true;
}
