"""Trivial echo component server (stepflow-py 0.9.2, HTTP) for benchmarks."""

import asyncio

from stepflow_py.worker import StepflowServer

server = StepflowServer()


@server.component
async def echo(input: dict) -> dict:
    return input


if __name__ == "__main__":
    asyncio.run(server.run())
