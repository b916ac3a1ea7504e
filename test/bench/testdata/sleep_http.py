"""A component that waits 20 ms per item (stepflow-py 0.9.2, HTTP), so
that throughput is bounded by worker slots, for the scale-out benchmark."""

import asyncio

from stepflow_py.worker import StepflowServer

server = StepflowServer()


@server.component
async def nap(input: dict) -> dict:
    await asyncio.sleep(0.02)
    return input


if __name__ == "__main__":
    asyncio.run(server.run())
