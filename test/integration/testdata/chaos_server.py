"""Component server for the chaos tests (stepflow-py 0.9.2, HTTP).

/work records every execution, then behaves as its input says:

  {"tag": "t", "i": 7}          returns {"i": 7, "double": 14}
  {"i": 7, "sleep_ms": 50}      ... after 50 ms
  {"i": 7, "crash": true}       kills this server process (os._exit(1))
  {"i": 7, "hang": true}        never answers
  {"i": 7, "hang_once": true}   never answers the first time (across
                                restarts of this server), answers later

Each execution appends one line "<tag> <i> <worker> <pid>" to CHAOS_LOG with a
single O_APPEND write, before anything else, so that the test sees every
execution, including those that crash or hang, and which worker ran it
(CHAOS_WORKER, set per worker process). CHAOS_DIR holds the markers of
hang_once.
"""

import asyncio
import os

from stepflow_py.worker import StepflowServer

server = StepflowServer()
LOG = os.open(os.environ["CHAOS_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
WORKER = os.environ.get("CHAOS_WORKER", "-")
MARKS = os.environ["CHAOS_DIR"]


def _first_time(tag: str, i: int) -> bool:
    try:
        os.close(os.open(os.path.join(MARKS, f"hung-{tag}-{i}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        return True
    except FileExistsError:
        return False


@server.component
async def work(input: dict) -> dict:
    tag, i = input.get("tag", "-"), input["i"]
    os.write(LOG, f"{tag} {i} {WORKER} {os.getpid()}\n".encode())
    if input.get("crash"):
        os._exit(1)
    if input.get("hang") or (input.get("hang_once") and _first_time(tag, i)):
        await asyncio.sleep(3600)
    if input.get("sleep_ms"):
        await asyncio.sleep(input["sleep_ms"] / 1000)
    return {"i": i, "double": 2 * i}


if __name__ == "__main__":
    asyncio.run(server.run())
