"""Trivial echo component server (stepflow-py <= 0.8, stdio) for benchmarks."""

from stepflow_py import StepflowStdioServer

server = StepflowStdioServer()


@server.component
async def echo(input: dict) -> dict:
    return input


if __name__ == "__main__":
    server.run()
