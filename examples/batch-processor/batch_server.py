"""Component server for the batch processor example (stepflow-py 0.9.2, HTTP).

This is the seed's batch_processor written for the 0.9.2 SDK: the seed's
`StepflowStdioServer` and `ctx.submit_run(flow_id=...)` only existed in
older SDKs (see examples/batch-processor-legacy for those). The context
parameter must be named `context`; success counts are `items.completed`.
"""

import asyncio

import msgspec
from stepflow_py.worker import StepflowContext, StepflowServer

server = StepflowServer()


class Input(msgspec.Struct):
    items: list[dict]
    workflow_id: str
    max_concurrency: int = 10


class Output(msgspec.Struct):
    results: list
    total_processed: int
    success_count: int
    error_count: int


@server.component
async def batch_processor(input: Input, context: StepflowContext) -> Output:
    """Process a batch of items using a sub-workflow (runs/submit)."""
    run_status = await context.submit_run_by_id(
        input.workflow_id,
        input.items,
        wait=True,
        max_concurrency=input.max_concurrency,
    )
    results = run_status.results or []
    return Output(
        results=[getattr(r.result, "result", None) for r in results],
        total_processed=len(results),
        success_count=run_status.items.completed,
        error_count=run_status.items.failed,
    )


@server.component
async def load_items(input: dict) -> dict:
    """Stands in for a database query: `count` items, every 7th one bad."""
    return {"items": [{"id": i, "value": -1 if i % 7 == 6 else i * 10} for i in range(input["count"])]}


@server.component
async def score_item(input: dict) -> dict:
    """Scores one item; negative values are rejected."""
    if input["value"] < 0:
        raise ValueError(f"item {input['id']} has a negative value")
    return {"id": input["id"], "score": input["value"] / 10}


@server.component
async def aggregate(input: dict) -> dict:
    """Sums the scores of the items that succeeded."""
    scores = [r["score"] for r in input["results"] if r is not None]
    return {"scored": len(scores), "total_score": sum(scores)}


if __name__ == "__main__":
    asyncio.run(server.run())
