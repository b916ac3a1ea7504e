#!/usr/bin/env bash
# The distributed example end to end on one machine: a coordinator with an
# embedded NATS server (JetStream, file store in a temporary directory), two
# worker processes, and `stepflow submit` of examples/hello. Prints the
# results and a summary, then shuts everything down (SIGTERM: workers drain,
# the coordinator stops).
#
# Usage: scripts/demo.sh [FLOW INPUTS]   (after `make build`)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/bin"
flow="${1:-$root/examples/hello/flow.yaml}"
inputs="${2:-$root/examples/hello/items.jsonl}"

work="$(mktemp -d)"
pids=()
cleanup() {
  # Workers first (they drain and leave the registry through NATS), then
  # the coordinator, whose embedded NATS they use.
  for pid in "${pids[@]:1}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]:1}"; do wait "$pid" 2>/dev/null || true; done
  if [ "${#pids[@]}" -gt 0 ]; then
    kill -TERM "${pids[0]}" 2>/dev/null || true
    wait "${pids[0]}" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

echo "== starting a coordinator with embedded NATS (data in $work)" >&2
coproc COORD { exec "$bin/coordinator" --port 0 --nats-port 0 --data-dir "$work/data" --log-level warn; }
pids+=("$COORD_PID")
read -r ready <&"${COORD[0]}"
port="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["port"])' "$ready")"
nats="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["natsUrl"])' "$ready")"
echo "   coordinator: http://127.0.0.1:$port/api/v1, NATS: $nats" >&2

for i in 1 2; do
  "$bin/worker" --nats-url "$nats" --concurrency 4 --worker-id "demo-worker-$i" --log-level warn &
  pids+=("$!")
done
echo "== two workers started" >&2

echo "== stepflow submit" >&2
status=0
"$bin/stepflow" submit --url "http://127.0.0.1:$port/api/v1" --flow "$flow" --inputs "$inputs" \
  --max-concurrent 4 --output "$work/results.jsonl" || status=$?
cat "$work/results.jsonl"
echo "== runs on the coordinator" >&2
"$bin/stepflow" runs list --url "http://127.0.0.1:$port" >&2 || true
echo "== shutting down" >&2
exit "$status"
