"""Component server for the distributed tests (stepflow-py 0.9.2, HTTP).

/track tells the test's tracker (TRACKER_URL) that an item of a run started,
holds it for a moment, and tells it that it ended, so the test can see how
many items of each run ran at once across every worker.
"""

import asyncio
import os
import urllib.request

from stepflow_py.worker import StepflowServer

server = StepflowServer()
TRACKER = os.environ["TRACKER_URL"]


def _post(path: str) -> None:
    urllib.request.urlopen(urllib.request.Request(TRACKER + path, method="POST"), timeout=10).read()


@server.component
async def track(input: dict) -> dict:
    tag = input["tag"]
    await asyncio.to_thread(_post, f"/enter/{tag}")
    await asyncio.sleep(input.get("hold_ms", 50) / 1000)
    await asyncio.to_thread(_post, f"/exit/{tag}")
    return {"tag": tag, "i": input["i"]}


if __name__ == "__main__":
    asyncio.run(server.run())
