package main

import "ignite.dev/sdk/ignite"

func handler(req *ignite.Request, ctx *ignite.Context) (any, error) {
	message, err := ignite.Field[string](req, "message")
	if err != nil {
		message = "Hello from Go!"
	}
	return map[string]any{"message": message, "execution_id": ctx.ExecutionID(), "function_id": ctx.FunctionID()}, nil
}

func main() { ignite.Main(handler) }
