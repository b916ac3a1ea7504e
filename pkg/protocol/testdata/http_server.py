"""Component server for the HTTP transport tests (stepflow-py[http] 0.9.2).

Started by the Go tests as `python3 http_server.py`; announces {"port": N}
on stdout. Components:

  /echo          returns its input unchanged (direct JSON response)
  /boom          raises ValueError("kaputt") -> -32003
  /blob_roundtrip  (context) blobs/put the input, blobs/get it back
  /big           returns a string of input["size"] "x" characters
  /hang          writes "started <input>" to stderr, then sleeps forever
  /hang_ctx      the same, taking a context (so answered over SSE)
"""

import asyncio
import sys
from typing import Any

from stepflow_py.worker import StepflowContext, StepflowServer

server = StepflowServer()


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
    asyncio.run(server.run())
