import { main } from "ignite";

export default main(async (req, ctx) => {
  const message = req.field<string>("message") ?? "Hello from Deno!";
  return { message, execution_id: ctx.executionId, function_id: ctx.functionId };
});
