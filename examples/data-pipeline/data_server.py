"""Component server for the data pipeline example (stepflow-py 0.9.2, HTTP).

Serves /validate, /transform and /enrich; stepflow-config.yml routes
/data/{*component} here. Started once by the runtime and reused by every item.
"""

import asyncio

from stepflow_py.worker import StepflowServer

server = StepflowServer()

CATEGORY_NAMES = {"A": "alpha", "B": "beta"}


@server.component
async def validate(input: dict) -> dict:
    """Checks that the item has a numeric value and a known category."""
    data = input["data"]
    if not isinstance(data.get("value"), (int, float)):
        raise ValueError("data.value must be a number")
    if data.get("category") not in CATEGORY_NAMES:
        raise ValueError(f"unknown category {data.get('category')!r}")
    return {"validated_data": data}


@server.component
async def transform(input: dict) -> dict:
    """Normalises the value to a 0..1 score and doubles it for reporting."""
    data = input["data"]
    return {"transformed_data": {**data, "score": data["value"] / 1000, "doubled": data["value"] * 2}}


@server.component
async def enrich(input: dict) -> dict:
    """Adds the category's display name and a size bucket."""
    data = input["data"]
    bucket = "large" if data["value"] >= 150 else "small"
    return {"enriched_data": {**data, "category_name": CATEGORY_NAMES[data["category"]], "bucket": bucket}}


if __name__ == "__main__":
    asyncio.run(server.run())
