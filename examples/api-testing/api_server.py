"""Component server for the API testing example (stepflow-py 0.9.2, HTTP).

/request performs an HTTP request; /validate compares status codes.
stepflow-config.yml routes both /http/{*component} and /test/{*component}
here.
"""

import asyncio
import urllib.error
import urllib.request

from stepflow_py.worker import StepflowServer

server = StepflowServer()


def _fetch(url: str, method: str) -> dict:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return {"status_code": resp.status, "body": resp.read().decode("utf-8", "replace")}
    except urllib.error.HTTPError as err:
        return {"status_code": err.code, "body": err.read().decode("utf-8", "replace")}


@server.component
async def request(input: dict) -> dict:
    """Performs an HTTP request and returns its status code and body."""
    return await asyncio.to_thread(_fetch, input["url"], input.get("method", "GET"))


@server.component
async def validate(input: dict) -> dict:
    """Checks an actual status code against the expected one."""
    actual, expected = input["actual_status"], input["expected_status"]
    passed = actual == expected
    return {"passed": passed, "details": f"expected {expected}, got {actual}"}


if __name__ == "__main__":
    asyncio.run(server.run())
