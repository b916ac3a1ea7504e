"""Component worker for the API testing example, for stepflow-py 0.13.

The same /request and /validate as api_server.py (0.9.2, HTTP), registered
on 0.13's own worker `server` and run by its `main()`, which pulls tasks
from the runtime over gRPC. stepflow-config-013.yml routes both
/http/{*component} and /test/{*component} here.
"""

import asyncio
import urllib.error
import urllib.request

from stepflow_py.worker.main import main, server


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
def validate(input: dict) -> dict:
    """Checks an actual status code against the expected one."""
    actual, expected = input["actual_status"], input["expected_status"]
    passed = actual == expected
    return {"passed": passed, "details": f"expected {expected}, got {actual}"}


if __name__ == "__main__":
    main()
