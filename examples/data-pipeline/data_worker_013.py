"""Component worker for the data pipeline example, for stepflow-py 0.13.

The same /validate, /transform and /enrich as data_server.py (0.9.2, HTTP),
written for 0.13's worker: components are registered on the SDK's own
`server` and `main()` runs the worker, which pulls tasks over gRPC (or
NATS) from the address the runtime passes in STEPFLOW_TASKS_URL.
stepflow-config-013.yml routes /data/{*component} here.
"""

from stepflow_py.worker.main import main, server

CATEGORY_NAMES = {"A": "alpha", "B": "beta"}


@server.component
def validate(input: dict) -> dict:
    """Checks that the item has a numeric value and a known category."""
    data = input["data"]
    if not isinstance(data.get("value"), (int, float)):
        raise ValueError("data.value must be a number")
    if data.get("category") not in CATEGORY_NAMES:
        raise ValueError(f"unknown category {data.get('category')!r}")
    return {"validated_data": data}


@server.component
def transform(input: dict) -> dict:
    """Normalises the value to a 0..1 score and doubles it for reporting."""
    data = input["data"]
    return {"transformed_data": {**data, "score": data["value"] / 1000, "doubled": data["value"] * 2}}


@server.component
def enrich(input: dict) -> dict:
    """Adds the category's display name and a size bucket."""
    data = input["data"]
    bucket = "large" if data["value"] >= 150 else "small"
    return {"enriched_data": {**data, "category_name": CATEGORY_NAMES[data["category"]], "bucket": bucket}}


if __name__ == "__main__":
    main()
