"""Component worker for the batch processor example, for stepflow-py 0.13.

batch_server.py (0.9.2, HTTP) written for 0.13's worker: components are
registered on the SDK's own `server` and `main()` runs the worker, which
pulls tasks from the runtime over gRPC. The nested batch goes through the
0.13 context's `submit_run_by_id` (OrchestratorService.SubmitRun), whose
answer is the run status as a dict: item counts under "items" (proto3
leaves zero counts out), one entry per item under "results" with its
"status" and, when it succeeded, its "output".
"""

from stepflow_py.worker.context import StepflowContext
from stepflow_py.worker.main import main, server


@server.component
async def batch_processor(input: dict, context: StepflowContext) -> dict:
    """Process a batch of items using a sub-workflow (SubmitRun)."""
    run_status = await context.submit_run_by_id(
        input["workflow_id"],
        input["items"],
        wait=True,
        max_concurrency=input.get("max_concurrency", 10),
    )
    results = sorted(run_status.get("results", []), key=lambda r: r.get("item_index", 0))
    counts = run_status.get("items", {})
    return {
        "results": [r.get("output") for r in results],
        "total_processed": len(results),
        "success_count": counts.get("completed", 0),
        "error_count": counts.get("failed", 0),
    }


@server.component
def load_items(input: dict) -> dict:
    """Stands in for a database query: `count` items, every 7th one bad."""
    return {"items": [{"id": i, "value": -1 if i % 7 == 6 else i * 10} for i in range(int(input["count"]))]}


@server.component
def score_item(input: dict) -> dict:
    """Scores one item; negative values are rejected."""
    if input["value"] < 0:
        raise ValueError(f"item {input['id']} has a negative value")
    return {"id": input["id"], "score": input["value"] / 10}


@server.component
def aggregate(input: dict) -> dict:
    """Sums the scores of the items that succeeded."""
    scores = [r["score"] for r in input["results"] if r is not None]
    return {"scored": len(scores), "total_score": sum(scores)}


if __name__ == "__main__":
    main()
