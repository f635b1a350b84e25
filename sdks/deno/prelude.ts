/**
 * The first module an instance evaluates (the build's entry imports it before the app): it
 * takes the framing channel — fds 0 and 1 — for the SDK, then points every way a program prints
 * to stdout at stderr, so nothing the app writes can corrupt a frame:
 *
 * - `console` is a new console of Deno's own (same formatting), printing every method to
 *   stderr: `log`, `info`, `debug`, `dir`, `table`, `count`, `time*`, `group` included;
 * - `Deno.stdout` is `Deno.stderr`, and `Deno.stdin` reads nothing;
 * - `process.stdout` (the global, and `node:process` for apps whose build found a `node:` or
 *   `npm:` import: see `node.ts`) writes to stderr.
 *
 * What this cannot reach: code that writes to file descriptor 1 on purpose (`node:fs`
 * `writeSync(1, …)`, Deno's internal ops). Such bytes are not frames; the agent then stops the
 * instance with a framing error (it never trusts the handler's bytes), and only that app's
 * request fails.
 *
 * @module
 */

const stdout = Deno.stdout;
const stdin = Deno.stdin;
const stderr = Deno.stderr;
const encoder = new TextEncoder();

/** The agent's ends: frames arrive on `input`, answers leave on `output`. */
export const channel = { input: stdin, output: stdout };

/** Writes all of `bytes` to a synchronous writer. */
export function writeAll(writer: { writeSync(p: Uint8Array): number }, bytes: Uint8Array): void {
  let off = 0;
  while (off < bytes.length) off += writer.writeSync(bytes.subarray(off));
}

/** Writes `text` to stderr, whole. */
export function printError(text: string): void {
  try {
    writeAll(stderr, encoder.encode(text));
  } catch {
    // The log pipe is gone: the agent is too, and the channel says so next.
  }
}

type ConsoleClass = new (print: (msg: string, level: number) => void) => Console;

function consoleClass(): ConsoleClass | undefined {
  try {
    // deno-lint-ignore no-explicit-any
    const internal = (Deno as any)[(Deno as any).internal];
    return typeof internal?.Console === "function" ? internal.Console : undefined;
  } catch {
    return undefined;
  }
}

function redirectConsole(): void {
  const Console = consoleClass();
  if (Console) {
    const console = new Console((msg) => printError(msg));
    Object.defineProperty(globalThis, "console", {
      value: console,
      writable: true,
      enumerable: false,
      configurable: true,
    });
    return;
  }
  // No console class to make one of (another Deno): the methods that print to stdout become
  // console.error, formatting their arguments the same way.
  const c = globalThis.console as unknown as Record<string, unknown>;
  const error = globalThis.console.error;
  const counts = new Map<string, number>();
  const timers = new Map<string, number>();
  Object.assign(c, {
    log: error,
    info: error,
    debug: error,
    dir: (v: unknown, options?: Deno.InspectOptions) => error(Deno.inspect(v, options)),
    dirxml: error,
    table: (v: unknown) => error(Deno.inspect(v)),
    count: (label = "default") => {
      const n = (counts.get(label) ?? 0) + 1;
      counts.set(label, n);
      error(`${label}: ${n}`);
    },
    countReset: (label = "default") => counts.delete(label),
    group: (...a: unknown[]) => a.length && error(...a),
    groupCollapsed: (...a: unknown[]) => a.length && error(...a),
    time: (label = "default") => timers.set(label, performance.now()),
    timeLog: (label = "default", ...a: unknown[]) =>
      error(`${label}: ${(performance.now() - (timers.get(label) ?? 0)).toFixed(3)}ms`, ...a),
    timeEnd: (label = "default") => {
      error(`${label}: ${(performance.now() - (timers.get(label) ?? 0)).toFixed(3)}ms`);
      timers.delete(label);
    },
  });
}

/** An empty standard input: the agent's frames are the SDK's alone. */
const emptyStdin = {
  rid: -1,
  read: () => Promise.resolve(null),
  readSync: () => null,
  // Made on first use: the ReadableStream global loads Deno's streams (~3 ms of a start).
  get readable(): ReadableStream<Uint8Array> {
    return new ReadableStream<Uint8Array>({ start: (c) => c.close() });
  },
  isTerminal: () => false,
  setRaw: () => {},
  close: () => {},
  [Symbol.dispose]: () => {},
};

function replace(target: object, name: string, value: unknown): void {
  Object.defineProperty(target, name, {
    value,
    writable: true,
    enumerable: true,
    configurable: true,
  });
}

/** `process.stdout` of Node's `process` object is its `stderr`. */
export function redirectProcess(process: { stderr: unknown }): void {
  Object.defineProperty(process, "stdout", {
    get: () => process.stderr,
    configurable: true,
  });
}

function redirectProcessGlobal(): void {
  // The global `process` is made on first use (loading Deno's Node compatibility costs tens of
  // milliseconds): wrap its getter rather than touch it now.
  const descriptor = Object.getOwnPropertyDescriptor(globalThis, "process");
  if (!descriptor?.get || !descriptor.configurable) return;
  const get = descriptor.get;
  let done = false;
  Object.defineProperty(globalThis, "process", {
    ...descriptor,
    get() {
      const process = get.call(this);
      if (!done && process) {
        done = true;
        redirectProcess(process);
      }
      return process;
    },
  });
}

redirectConsole();
replace(Deno, "stdout", stderr);
replace(Deno, "stdin", emptyStdin);
redirectProcessGlobal();
// Relative paths are the app's own files: in a built app this module is
// `<app>/.ignite/sdk/prelude.ts`.
if (import.meta.url.endsWith("/.ignite/sdk/prelude.ts")) {
  try {
    Deno.chdir(new URL("../../", import.meta.url));
  } catch {
    // Not permitted: relative paths stay relative to `/`.
  }
}
