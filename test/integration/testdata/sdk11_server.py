"""Component server of the stepflow-py 0.10/0.11 integration tests
(sdk11_test.go), run by .venv-sdk-http11 (stepflow-py[http]==0.11.2) or any
venv of the same protocol. Blobs go through the runtime's blob HTTP API
(capabilities.blobApiUrl): these releases have no blobs/put callback.
"""
import asyncio
import os
from importlib.metadata import version

from stepflow_py.worker import StepflowContext, StepflowServer

server = StepflowServer()


@server.component
async def echo(input: dict) -> dict:
    """Returns the item with the serving process and SDK release."""
    return {"i": input["i"], "pid": os.getpid(), "sdk": version("stepflow-py")}


@server.component
async def put_blob(input: dict, context: StepflowContext) -> dict:
    """Stores input.data as a blob and reads it back through the context."""
    blob_id = await context.put_blob(input["data"])
    return {"blob_id": blob_id, "back": await context.get_blob(blob_id)}


@server.component
async def get_blob(input: dict, context: StepflowContext) -> dict:
    return {"data": await context.get_blob(input["blob_id"])}


@server.component
async def check(input: dict) -> dict:
    if input.get("fail"):
        raise ValueError(f"item {input['i']} asked to fail")
    return {"ok": input["i"]}


if __name__ == "__main__":
    asyncio.run(server.run())
