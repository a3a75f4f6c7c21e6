#!/usr/bin/env bash
# The demo (README's first command): installs ONNX Runtime project-locally, builds the agent, runs the
# daemon on config/demo.toml (a digit encoder trained on real digits, baseline built at start-up), and
# streams clean then drifted digits into its watched directory, printing the drift gauges as they move.
#
#   scripts/demo.sh          keep the agent running afterwards (Ctrl-C stops it)
#   scripts/demo.sh --exit   stop the agent when the stream ends
set -euo pipefail
cd "$(dirname "$0")/.."
keep=1
[ "${1:-}" = "--exit" ] && keep=0
scripts/install-onnxruntime.sh --no-python
cargo build --release --quiet -p agent
export ORT_DYLIB_PATH="$PWD/.ort/cpu/onnxruntime/capi/libonnxruntime.so.1.31.1"
addr=127.0.0.1:9717
if curl -sf "http://$addr/healthz" >/dev/null 2>&1; then
  echo "error: something already listens on $addr (an earlier demo?); stop it first" >&2
  exit 1
fi
rm -rf demo-run && mkdir -p demo-run
target/release/agent --config config/demo.toml >demo-run/agent.log 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
echo "agent started (pid $pid, log demo-run/agent.log); building the baseline from 256 reference digits ..."
for _ in $(seq 1 120); do
  curl -sf "http://$addr/readyz" >/dev/null 2>&1 && break
  kill -0 $pid 2>/dev/null || { echo "the agent exited:" >&2; cat demo-run/agent.log >&2; exit 1; }
  sleep 1
done
curl -sf "http://$addr/readyz" >/dev/null || { echo "the agent did not become ready; see demo-run/agent.log" >&2; exit 1; }
echo "ready: landing page http://$addr/ , metrics http://$addr/metrics"
target/release/agent demo-feed --agent "$addr"
if [ "$keep" = 1 ]; then
  echo "the agent keeps running; Ctrl-C stops it"
  wait $pid
fi
