"""Component server for the stdio transport tests (stepflow-py <= 0.8,
StepflowStdioServer; the test venv holds 0.7.0).

The process speaks newline-delimited JSON-RPC on stdin/stdout. Components:

  /echo            returns its input unchanged
  /boom            raises ValueError("kaputt") -> -32003
  /blob_roundtrip  blobs/put the input, blobs/get it back
  /blob_put        blobs/put the input, returns {"blob_id": id} only
  /big_blob        blobs/put a string of input["size"] "x" characters
  /blob_len        blobs/get input["blob_id"], returns the data's length
  /big             returns a string of input["size"] "x" characters
  /hang            writes "started <input>" to stderr, then sleeps forever
  /hang_ctx        the same, taking a context
"""

import asyncio
import sys
from typing import Any

from stepflow_py import StepflowContext, StepflowStdioServer

server = StepflowStdioServer()


@server.component
async def echo(input: Any) -> Any:
    return input


@server.component
async def boom(input: Any) -> Any:
    raise ValueError("kaputt")


@server.component
async def blob_roundtrip(input: Any, context: StepflowContext) -> Any:
    blob_id = await context.put_blob(input)
    data = await context.get_blob(blob_id)
    return {"blob_id": blob_id, "data": data}


@server.component
async def blob_put(input: Any, context: StepflowContext) -> Any:
    blob_id = await context.put_blob(input)
    return {"blob_id": blob_id}


@server.component
async def big_blob(input: dict, context: StepflowContext) -> Any:
    blob_id = await context.put_blob("x" * int(input["size"]))
    return {"blob_id": blob_id}


@server.component
async def blob_len(input: dict, context: StepflowContext) -> Any:
    data = await context.get_blob(input["blob_id"])
    return len(data)


@server.component
async def big(input: dict) -> str:
    return "x" * int(input["size"])


@server.component
async def hang(input: Any) -> Any:
    sys.stderr.write(f"started {input}\n")
    sys.stderr.flush()
    await asyncio.sleep(3600)
    return None


@server.component
async def hang_ctx(input: Any, context: StepflowContext) -> Any:
    sys.stderr.write(f"started {input}\n")
    sys.stderr.flush()
    await asyncio.sleep(3600)
    return None


if __name__ == "__main__":
    server.run()
