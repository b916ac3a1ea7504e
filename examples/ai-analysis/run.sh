#!/usr/bin/env bash
# Runs the AI analysis batch against a local fake of the OpenAI API.
# Usage: [FLOW=other-flow.yaml] examples/ai-analysis/run.sh [extra stepflow run flags]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
stepflow="${STEPFLOW:-$here/../../bin/stepflow}"
flow="${FLOW:-$here/ai-analysis.yaml}"

coproc FAKE { exec python3 "$here/fake_openai.py"; }
trap 'kill "$FAKE_PID" 2>/dev/null || true' EXIT
read -r announce <&"${FAKE[0]}"
port="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["port"])' "$announce")"

OPENAI_API_BASE="http://127.0.0.1:$port/v1" OPENAI_API_KEY="sk-local-fake" \
  "$stepflow" run --flow "$flow" --inputs "$here/documents.jsonl" --max-concurrent 10 "$@"
