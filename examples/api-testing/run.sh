#!/usr/bin/env bash
# Runs the seed's API test cases against a local stand-in for
# https://api.example.com (the test cases are rewritten to point at it).
# Usage: examples/api-testing/run.sh [extra stepflow run flags]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
stepflow="${STEPFLOW:-$here/../../bin/stepflow}"

coproc TARGET { exec python3 "$here/target_server.py"; }
tmp="$(mktemp -d)"
trap 'kill "$TARGET_PID" 2>/dev/null || true; rm -rf "$tmp"' EXIT
read -r announce <&"${TARGET[0]}"
port="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["port"])' "$announce")"
sed "s#https://api.example.com#http://127.0.0.1:$port#g" "$here/test-cases.jsonl" > "$tmp/test-cases.jsonl"

"$stepflow" run --flow "$here/test-workflow.yaml" --inputs "$tmp/test-cases.jsonl" --max-concurrent 5 "$@"
