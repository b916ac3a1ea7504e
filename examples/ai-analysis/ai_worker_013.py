"""The AI analysis step as a stepflow-py 0.13 component.

ai-analysis.yaml calls the runtime's /builtin/openai; this worker does the
same call from Python, for a team whose model calls live in their own
component: POST {OPENAI_API_BASE}/chat/completions with the step's
messages, model and temperature, and the reply's text as "response" (the
shape of /builtin/openai's output). Registered on 0.13's own worker
`server` and run by its `main()`, which pulls tasks from the runtime over
gRPC; stepflow-config-013.yml routes /ai/{*component} here.
"""

import asyncio
import json
import os
import urllib.request

from stepflow_py.worker.main import main, server


def _chat(body: dict) -> dict:
    base = os.environ.get("OPENAI_API_BASE", "https://api.openai.com/v1").rstrip("/")
    req = urllib.request.Request(
        base + "/chat/completions",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": "Bearer " + os.environ["OPENAI_API_KEY"]},
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


@server.component
async def chat(input: dict) -> dict:
    """One chat completion: {messages, model, temperature} -> {response}."""
    body = {"model": input["model"], "messages": input["messages"]}
    if "temperature" in input:
        body["temperature"] = input["temperature"]
    reply = await asyncio.to_thread(_chat, body)
    return {"response": reply["choices"][0]["message"]["content"]}


if __name__ == "__main__":
    main()
