"""The seed's batch processor for stepflow-py <= 0.8 (StepflowStdioServer).

This is the seed's own component, with what the <= 0.8 SDK actually
offers: `submit_run` never existed there, so the nested batch goes through
`submit_batch_by_id` (flows/submit_batch) and `get_batch` (flows/get_batch).
The runtime speaks to this process over stdin/stdout (transport: stdio).
"""

import msgspec
from stepflow_py import StepflowContext, StepflowStdioServer
from stepflow_py.generated_protocol import FlowResultSuccess

server = StepflowStdioServer()


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
    """Process a batch of items using a sub-workflow"""
    batch_id = await context.submit_batch_by_id(
        input.workflow_id, input.items, max_concurrency=input.max_concurrency
    )
    details, outputs = await context.get_batch(batch_id, wait=True, include_results=True)
    outputs = outputs or []
    return Output(
        results=[o.result.result if isinstance(o.result, FlowResultSuccess) else None for o in outputs],
        total_processed=len(outputs),
        success_count=details.completed_runs,
        error_count=details.failed_runs,
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
    server.run()
