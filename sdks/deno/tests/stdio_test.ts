// A real instance: the fixture entry started as the platform starts one, fed frames on stdin.
// Everything it writes on stdout must be frames, whatever the handler prints.

import { assert, assertEquals, assertStringIncludes } from "./assert.ts";
import { decode, encode, type Frame, FrameReader, HANDLER, PANIC } from "../frames.ts";

const entry = new URL("./fixtures/stdio_entry.ts", import.meta.url).pathname;
const enc = new TextEncoder();

function invoke(id: number, body: unknown): Uint8Array {
  return encode({
    type: "invoke",
    id,
    executionId: `01J${id}`,
    functionId: "acme/stdio",
    deadlineUnixMs: 0,
    env: [],
    method: "POST",
    path: "/",
    query: "",
    headers: [],
    body: enc.encode(JSON.stringify(body)),
  });
}

/** Starts the instance, sends `input` then Shutdown, and returns its frames and stderr. */
async function run(
  input: Uint8Array[],
): Promise<{ frames: Frame[]; stderr: string; code: number }> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--quiet", "--no-prompt", "--allow-read", entry],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  const writer = child.stdin.getWriter();
  const frames: Frame[] = [];
  const reader = new FrameReader();
  const expected = input.length + 1; // a hello, then an answer each
  const out = child.stdout.getReader();
  // Frames only: the reader throws on the first byte that is not one.
  const reading = (async () => {
    for (;;) {
      const { value, done } = await out.read();
      if (done) break;
      frames.push(...reader.feed(value));
      if (frames.filter((f) => f.type !== "log").length === expected) {
        await writer.write(encode({ type: "shutdown" }));
      }
    }
    reader.eof();
  })();
  for (const frame of input) await writer.write(frame);
  const [status, stderr] = await Promise.all([
    child.status,
    new Response(child.stderr).text(),
    reading,
  ]);
  await writer.close().catch(() => {});
  return { frames, stderr, code: status.code };
}

Deno.test("nothing a handler prints reaches the channel; it all goes to stderr", async () => {
  const { frames, stderr, code } = await run([invoke(1, { what: "print" })]);
  assertEquals(code, 0, stderr);
  assertEquals(frames[0].type, "hello");
  const log = frames.find((f) => f.type === "log");
  assertEquals(log, { type: "log", id: 1, line: "ctx.log line" });
  const answer = frames.find((f) => f.type === "response");
  assert(answer?.type === "response", Deno.inspect(frames));
  assertEquals(JSON.parse(new TextDecoder().decode(answer.body)), { printed: true, stdin: null });
  for (
    const line of [
      "top-level console.log",
      "console.log line",
      "console.info line",
      "console.debug line",
      'dir: "line"',
      "dirxml line",
      "table",
      "count line: 1",
      "group line",
      "time line: ",
      "console.warn line",
      "console.error line",
      "Deno.stdout line",
      "Deno.stdout async line",
      "process.stdout line",
    ]
  ) {
    assertStringIncludes(stderr, line);
  }
});

Deno.test("errors have their status and kind; a throw is a 500 with its stack on stderr", async () => {
  const { frames, stderr } = await run([
    invoke(1, { what: "teapot" }),
    invoke(2, { what: "throw" }),
    invoke(3, { what: "reject" }),
    invoke(4, { what: "nothing" }),
  ]);
  const byId = (id: number) => frames.find((f) => "id" in f && f.id === id && f.type !== "log");
  assertEquals(byId(1), {
    type: "error",
    id: 1,
    kind: HANDLER,
    status: 418,
    message: "I am a teapot",
  });
  assertEquals(byId(2), {
    type: "error",
    id: 2,
    kind: PANIC,
    status: 500,
    message: "the handler threw Error: boom",
  });
  assertStringIncludes(stderr, "Error: boom");
  assertStringIncludes(stderr, "stdio_app.ts:");
  // A stray rejection and a stray exception are logged; the instance keeps serving.
  const r3 = byId(3);
  assert(r3?.type === "response");
  assertEquals(new TextDecoder().decode(r3.body), "still here");
  assertStringIncludes(stderr, "stray rejection");
  assertStringIncludes(stderr, "stray exception");
  const r4 = byId(4);
  assert(r4?.type === "response");
  assertEquals(r4.status, 204);
});

Deno.test("requests run concurrently as promises in one isolate", async () => {
  const { frames } = await run([1, 2, 3, 4].map((id) => invoke(id, { what: "sleep", ms: 300 })));
  const answers = frames.filter((f) => f.type === "response").map((f) =>
    JSON.parse(new TextDecoder().decode((f as { body: Uint8Array }).body))
  );
  assertEquals(answers.length, 4);
  const latestStart = Math.max(...answers.map((a) => a.start));
  const earliestEnd = Math.min(...answers.map((a) => a.end));
  assert(latestStart < earliestEnd, `all four at once: ${Deno.inspect(answers)}`);
});

Deno.test("garbage on the channel ends the instance with the framing error", async () => {
  const { stderr, code } = await run([enc.encode("hello there\n")]);
  assertEquals(code, 70);
  assertStringIncludes(stderr, "not a runtime frame");
  assertEquals(decode(new Uint8Array()), null);
});
