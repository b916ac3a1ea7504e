"""A stepflow-py 0.13 worker as users write one: components registered on
the SDK's own `server`, run by its `main` (which reads STEPFLOW_TRANSPORT,
STEPFLOW_TASKS_URL, STEPFLOW_QUEUE_NAME, ... from the environment)."""

import os

from stepflow_py.worker.context import StepflowContext
from stepflow_py.worker.main import main, server


def _started():
    path = os.environ.get("GRPC13_STARTS")
    if path:
        with open(path, "a") as f:
            f.write(f"{os.getpid()}\n")


@server.component
def echo13(input: dict) -> dict:
    return {"echo": input, "pid": os.getpid()}


@server.component
def check(input: dict) -> dict:
    if input.get("fail"):
        raise ValueError(f"item {input.get('i')} is bad")
    return {"ok": input.get("i")}


@server.component
def crash(input: dict) -> dict:
    # The item named by the marker file kills the worker process (once).
    marker = os.environ.get("GRPC13_CRASH_MARKER")
    if marker and input.get("crash") and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(9)
    return {"i": input.get("i"), "pid": os.getpid()}


@server.component
async def hold(input: dict) -> dict:
    # Announces the item, then waits for the test's release file: the
    # test kills the process while items are held.
    import asyncio

    d = os.environ["GRPC13_HOLD_DIR"]
    open(os.path.join(d, f"started-{input['i']}"), "w").close()
    while input.get("hold") and not os.path.exists(os.path.join(d, "release")):
        await asyncio.sleep(0.02)
    return {"i": input["i"], "pid": os.getpid()}


@server.component
async def blobs(input: dict, context: StepflowContext) -> dict:
    blob_id = await context.put_blob(input["data"])
    back = await context.get_blob(blob_id)
    return {"blob_id": blob_id, "back": back}


@server.component
async def nested(input: dict, context: StepflowContext) -> dict:
    flow = {
        "schema": "https://stepflow.org/schemas/v1/flow.json",
        "name": "inner",
        "steps": [
            {"id": "e", "component": "/python/echo13", "input": {"n": {"$input": "n"}}},
        ],
        "output": {"$step": "e", "path": "$.echo.n"},
    }
    results = await context.evaluate_run(flow, [{"n": input["n"]}, {"n": input["n"] * 10}])
    return {"inner": results}


if __name__ == "__main__":
    _started()
    main()
