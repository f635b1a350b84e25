// The handler API: requests, contexts, registration, and how a returned value becomes an answer.

import { assert, assertEquals, assertRejects, assertThrows } from "./assert.ts";
import { Context, IgniteError, IgniteRequest, isHandler, main } from "../mod.ts";
import { handlerOf, NotAResponse, panicMessage, responseParts } from "../boot.ts";

const text = (b: Uint8Array) => new TextDecoder().decode(b);

Deno.test("field is undefined when missing, so ?? gives the default", () => {
  const req = new IgniteRequest({ message: "hi there", n: 0, nothing: null });
  assertEquals(req.field<string>("message"), "hi there");
  assertEquals(req.field<number>("n") ?? 5, 0);
  assertEquals(req.field("nothing"), null);
  assertEquals(req.field("absent"), undefined);
  assertEquals(
    new IgniteRequest({}).field<string>("message") ?? "Hello from Deno!",
    "Hello from Deno!",
  );
  // A body that is not a JSON object has no fields.
  for (const body of [new Uint8Array(), "not json", [1, 2], "3"]) {
    assertEquals(new IgniteRequest(body).field("message"), undefined);
  }
  // Inherited properties are not fields.
  assertEquals(new IgniteRequest({}).field("toString"), undefined);
});

Deno.test("require answers 400 naming the key", () => {
  assertEquals(new IgniteRequest({ k: 1 }).require<number>("k"), 1);
  for (
    const [body, says] of [
      [{}, "missing field `key` in the request body"],
      [new Uint8Array(), "missing field `key` in the request body"],
      [[1], "the request body is JSON an array, not an object"],
      ["{oops", "the request body is not JSON"],
    ] as const
  ) {
    const e = assertThrows(() => new IgniteRequest(body).require("key"), IgniteError, says);
    assertEquals((e as IgniteError).status, 400);
  }
});

Deno.test("body, text, bytes, header and raw", () => {
  const req = new IgniteRequest('{"a":[1,2]}', {
    method: "PUT",
    path: "/x",
    query: "q=1",
    headers: { "Content-Type": "application/json" },
  });
  assertEquals(req.body<{ a: number[] }>().a, [1, 2]);
  assertEquals(req.text(), '{"a":[1,2]}');
  assertEquals(req.bytes().length, 11);
  assertEquals(req.header("content-type"), "application/json");
  assertEquals(req.header("X-Missing"), undefined);
  const raw = req.raw();
  assertEquals([raw.method, raw.path, raw.query], ["PUT", "/x", "q=1"]);
  assertEquals(raw.headers, [["content-type", "application/json"]]);
  assertThrows(() => new IgniteRequest().body(), IgniteError, "empty");
  assertThrows(() => new IgniteRequest("nope").body(), IgniteError, "not JSON");
});

Deno.test("a context has the execution's ids, env, deadline and log", () => {
  const lines: string[] = [];
  const ctx = new Context(
    { executionId: "01J", functionId: "acme/x", env: { A: "b" }, deadline: Date.now() + 60_000 },
    (l) => lines.push(l),
  );
  assertEquals([ctx.executionId, ctx.functionId, ctx.env.A], ["01J", "acme/x", "b"]);
  assert(ctx.remaining()! > 50_000 && ctx.remaining()! <= 60_000);
  assertEquals(new Context().remaining(), undefined);
  ctx.log("one");
  ctx.log({ two: 2 });
  assertEquals(lines, ["one", "{ two: 2 }"]);
  assert(Object.isFrozen(ctx.env));
});

Deno.test("main registers a handler that tests can still call", async () => {
  const handler = main((req, ctx) => ({ got: req.field("x"), id: ctx.executionId }));
  assert(isHandler(handler));
  assert(!isHandler(() => 1));
  assertEquals(await handler(new IgniteRequest({ x: 1 }), new Context({ executionId: "e" })), {
    got: 1,
    id: "e",
  });
  assertThrows(() => main(42 as never), TypeError, "takes the handler function");
  await assertRejects(
    () =>
      main(() => {
        throw new IgniteError(418, "teapot");
      })(new IgniteRequest(), new Context()),
    IgniteError,
    "teapot",
  );
  assertThrows(() => new IgniteError(42, "x"), TypeError, "HTTP status");
});

Deno.test("the default export must come from main", () => {
  assert(typeof handlerOf({ default: main(() => 1) }, "main.ts") === "function");
  assertEquals(typeof handlerOf({}, "main.ts"), "string");
  assert((handlerOf({}, "main.ts") as string).includes("main.ts has no default export"));
  assert((handlerOf({ default: () => 1 }, "main.ts") as string).includes("plain function"));
  assert((handlerOf({ default: 3 }, "main.js") as string).includes("not a handler"));
});

Deno.test("what a handler returns becomes status, headers and body", async () => {
  let [status, headers, body] = await responseParts({ message: "hi", n: [1] });
  assertEquals([status, headers, text(body)], [
    200,
    [["content-type", "application/json"]],
    '{"message":"hi","n":[1]}',
  ]);
  [status, headers, body] = await responseParts("plain");
  assertEquals([status, headers, text(body)], [
    200,
    [["content-type", "text/plain; charset=utf-8"]],
    "plain",
  ]);
  [status, headers, body] = await responseParts(undefined);
  assertEquals([status, headers, body.length], [204, [], 0]);
  [status, headers, body] = await responseParts(new Uint8Array([1, 2]));
  assertEquals([status, headers[0][1], body], [
    200,
    "application/octet-stream",
    new Uint8Array([1, 2]),
  ]);
  [status, , body] = await responseParts(42);
  assertEquals([status, text(body)], [200, "42"]);
  const res = new Response("made", {
    status: 201,
    headers: { "x-a": "1", "content-type": "text/x" },
  });
  res.headers.append("set-cookie", "a=1");
  res.headers.append("set-cookie", "b=2");
  [status, headers, body] = await responseParts(res);
  assertEquals(status, 201);
  assertEquals(text(body), "made");
  assertEquals(headers.filter(([n]) => n === "set-cookie"), [["set-cookie", "a=1"], [
    "set-cookie",
    "b=2",
  ]]);
  assertEquals(headers.find(([n]) => n === "x-a"), ["x-a", "1"]);
  await assertRejects(() => responseParts(() => 1), NotAResponse, "not a response");
  await assertRejects(() => responseParts({ n: 1n }), NotAResponse, "could not be encoded as JSON");
  const cycle: Record<string, unknown> = {};
  cycle.self = cycle;
  await assertRejects(() => responseParts(cycle), NotAResponse, "JSON");
});

Deno.test("a thrown value is named in the 500's message", () => {
  assertEquals(panicMessage(new Error("boom")), "the handler threw Error: boom");
  assertEquals(panicMessage(new TypeError("bad")), "the handler threw TypeError: bad");
  assertEquals(panicMessage("a string"), 'the handler threw "a string"');
});
