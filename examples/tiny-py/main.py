import ignite


@ignite.main
async def handler(req: ignite.Request, ctx: ignite.Context):
    message = req.field("message", default="Hello from Python!")
    return {"message": message, "execution_id": ctx.execution_id, "function_id": ctx.function_id}
