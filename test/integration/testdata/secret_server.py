"""Component server for the secrets test (stepflow-py 0.9.2, HTTP).

/use receives secret values (a flow variable, an input field) and reports
only facts about them, never the values; it also reports the environment
variables the server got beyond the config's API_KEY. /reject fails
without quoting its input, as a well-behaved component does.
"""

import asyncio
import os

from stepflow_py.worker import StepflowServer

server = StepflowServer()


@server.component
async def use(input: dict) -> dict:
    return {
        "api_key_len": len(input["api_key"]),
        "password_len": len(input["password"]),
        "config_key_len": len(os.environ.get("API_KEY", "")),
        "stepflow_env": sorted(k for k in os.environ if k.startswith("STEPFLOW")),
    }


@server.component
async def reject(input: dict) -> dict:
    raise ValueError("the remote service rejected the credentials")


if __name__ == "__main__":
    asyncio.run(server.run())
