"""Component server for the stepflow plugin tests (stepflow-py <= 0.8, stdio).

Started by the tests as `<venv>/bin/python stdio_server.py`. When
STARTS_FILE is set, every start appends the process id to that file.
"""
import asyncio
import os
import sys

from stepflow_py import StepflowContext, StepflowStdioServer
from stepflow_py.generated_protocol import FlowResultSuccess

server = StepflowStdioServer()

_starts = os.environ.get("STARTS_FILE")
if _starts:
    with open(_starts, "a") as f:
        f.write(f"{os.getpid()}\n")

print(f"fixture stdio server {os.getpid()} starting", file=sys.stderr, flush=True)


@server.component
async def echo(input: dict) -> dict:
    """Returns its input."""
    return input


@server.component
async def environ(input: dict) -> dict:
    """Returns the server's environment."""
    return {"env": dict(os.environ)}


_inflight = 0
_peak = 0
_all_in = asyncio.Event()


@server.component
async def barrier(input: dict) -> dict:
    """Waits until input.n calls are in flight at once (proves concurrency)."""
    global _inflight, _peak
    _inflight += 1
    _peak = max(_peak, _inflight)
    if _inflight >= input["n"]:
        _all_in.set()
    try:
        await asyncio.wait_for(_all_in.wait(), timeout=60)
    finally:
        _inflight -= 1
    return {"i": input["i"], "peak": _peak, "pid": os.getpid()}


@server.component
async def boom(input: dict) -> dict:
    raise ValueError("kaputt")


@server.component
async def die(input: dict) -> dict:
    print("die: exiting with status 3", file=sys.stderr, flush=True)
    os._exit(3)


@server.component
async def flaky(input: dict, context: StepflowContext) -> dict:
    if context.attempt == 1:
        os._exit(3)
    return {"attempt": context.attempt, "pid": os.getpid()}


@server.component
async def hang(input: dict) -> dict:
    await asyncio.sleep(3600)
    return {}


@server.component
async def big(input: dict) -> dict:
    return {"data": "x" * input["n"]}


@server.component
async def size(input: dict) -> dict:
    return {"len": len(input["data"])}


@server.component
async def blobs(input: dict, context: StepflowContext) -> dict:
    blob_id = await context.put_blob(input["data"])
    back = await context.get_blob(blob_id)
    return {"blob_id": blob_id, "back": back}


@server.component
async def count_words(input: dict) -> dict:
    return {"words": len(input["text"].split())}


COUNT_FLOW = {
    "name": "count-one",
    "steps": [
        {
            "id": "count",
            "component": "/legacy/count_words",
            "input": {"text": {"$input": "text"}},
        }
    ],
    "output": {"$step": "count"},
}


@server.component
async def fan_out(input: dict, context: StepflowContext) -> dict:
    """flows/submit_batch + flows/get_batch, as in spec §5.5.7."""
    inputs = [{"text": t} for t in input["texts"]]
    batch_id = await context.submit_batch(
        COUNT_FLOW, inputs, max_concurrency=input.get("max_concurrency")
    )
    details, outputs = await context.get_batch(batch_id, wait=True, include_results=True)
    counts = [
        o.result.result["words"] if isinstance(o.result, FlowResultSuccess) else None
        for o in outputs or []
    ]
    return {
        "batch_id": batch_id,
        "counts": counts,
        "completed": details.completed_runs,
        "failed": details.failed_runs,
        "total": details.total_runs,
        "status": details.status,
        "flow_name": details.flow_name,
        "done": details.completed_at is not None,
    }


@server.component
async def evaluate(input: dict, context: StepflowContext) -> dict:
    """flows/evaluate through evaluate_flow (blobs/put of the flow first)."""
    result = await context.evaluate_flow(COUNT_FLOW, {"text": input["text"]})
    return {"result": result}


@server.component
async def metadata(input: dict, context: StepflowContext) -> dict:
    """flows/get_metadata for the executing flow and step."""
    return await context.get_metadata()


if __name__ == "__main__":
    server.run()
