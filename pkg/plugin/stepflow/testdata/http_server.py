"""Component server for the stepflow plugin tests: stepflow-py[http]==0.9.2
and 0.11.2 (make venv: .venv-sdk-http and .venv-sdk-http11).

Started by the tests as `<venv>/bin/python http_server.py`; it announces
its port on stdout. When STARTS_FILE is set, every start appends the
process id to that file, so the tests can count process starts.
"""
import asyncio
import os
import signal
import subprocess
import sys

from stepflow_py.worker import StepflowContext, StepflowServer

try:  # 0.9: blob types are an enum; 0.10+ takes plain strings
    from stepflow_py.worker.generated_protocol import BlobType

    FLOW_BLOB = BlobType.flow
except ImportError:
    FLOW_BLOB = "flow"

server = StepflowServer()

_starts = os.environ.get("STARTS_FILE")
if _starts:
    _first = not os.path.exists(_starts)
    with open(_starts, "a") as f:
        f.write(f"{os.getpid()}\n")
    # START_ONCE: every start after the first fails (restart failures).
    if os.environ.get("START_ONCE") and not _first:
        print("START_ONCE: refusing to start again", file=sys.stderr, flush=True)
        sys.exit(7)

# Everything a component logs on stderr is the user's logging.
print(f"fixture server {os.getpid()} starting", file=sys.stderr, flush=True)


@server.component
async def echo(input: dict) -> dict:
    """Returns its input."""
    return input


@server.component
async def environ(input: dict) -> dict:
    """Returns the server's environment."""
    return {"env": dict(os.environ)}


@server.component
async def pid(input: dict) -> dict:
    return {"pid": os.getpid()}


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
    """Kills the server mid-item."""
    print("die: exiting with status 3", file=sys.stderr, flush=True)
    os._exit(3)


@server.component
async def flaky(input: dict, context: StepflowContext) -> dict:
    """Kills the server on attempt 1 (as upstream's restart test does)."""
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
async def get_blob(input: dict, context: StepflowContext) -> dict:
    """Reads a blob stored elsewhere (by /builtin/put_blob)."""
    return {"data": await context.get_blob(input["blob_id"])}


@server.component
async def sdk(input: dict) -> dict:
    """The SDK release serving this process."""
    from importlib.metadata import version

    return {"version": version("stepflow-py")}


@server.component
async def ignore_sigterm(input: dict) -> dict:
    """From now on the server ignores SIGTERM (Close must SIGKILL it)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return {"pid": os.getpid()}


@server.component
async def grandchild(input: dict) -> dict:
    """Starts a process in the server's group that ignores SIGTERM and
    holds the server's stdout and stderr open."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(3600)",
        ]
    )
    return {"pid": proc.pid}


@server.component
async def word_stats(input: dict) -> dict:
    return {"words": len(input["text"].split())}


@server.component
async def fan_out(input: dict, context: StepflowContext) -> dict:
    """Stores a flow, runs a nested batch on it and waits (runs/submit)."""
    flow = {
        "name": "count-one",
        "steps": [
            {
                "id": "count",
                "component": "/python/word_stats",
                "input": {"text": {"$input": "text"}},
            }
        ],
        "output": {"$step": "count"},
    }
    flow_id = await context.put_blob(flow, FLOW_BLOB)
    status = await context.submit_run_by_id(
        flow_id,
        [{"text": t} for t in input["texts"]],
        wait=True,
        max_concurrency=input.get("max_concurrency"),
    )
    again = await context.get_run(status.runId, wait=True, include_results=True)
    return {
        "flow_id": flow_id,
        "run_id": status.runId,
        "status": status.status,
        "counts": [r.result.result["words"] for r in status.results],
        "completed": status.items.completed,
        "failed": status.items.failed,
        "get_run_completed": again.items.completed,
        "get_run_results": len(again.results),
    }


if __name__ == "__main__":
    asyncio.run(server.run())
