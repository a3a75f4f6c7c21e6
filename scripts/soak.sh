#!/usr/bin/env bash
# Soak: the release daemon for SECS seconds (default 1800) on the demo model under every source at
# once, with the faults production brings, then a check that nothing was lost or counted twice.
#
#   scripts/soak.sh [SECS]   (SOAK_NO_BUILD=1 skips the cargo build, AGENT_BIN picks another binary,
#                             SOAK_DEDUPE_IDS sets the feed's dedupe_ids; the run lands in soak-run/)
#
# Load: a dir source fed by a producer writing files in place in chunks (as cp/scp do; every 10th by
# .tmp + rename, every 50th garbage), an HTTP NDJSON feed (every 97th record malformed), and the
# ingest endpoint at INGEST_RATE requests/s, above the scoring rate (smoothed estimator, smoothing_points = 4),
# so the queue stays full and the endpoint answers 503. Faults: SIGHUP (reload) every minute, one
# kill -9 at half time and a restart. RSS and open fds are sampled every 10 s into samples.csv.
# Pass (scripts/soak.py analyse): every file in done/ or rejected/ exactly once, every feed record
# counted exactly once, no ERROR log line and no warning besides the injected faults, RSS and fds
# flat after a 3-minute warm-up of each process. Figures: docs/BENCHMARKS.md ("Soak").
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-1800}"
run="$PWD/soak-run"
ingest_rate="${INGEST_RATE:-300}"
[ -n "${SOAK_NO_BUILD:-}" ] || cargo build --release --quiet -p agent
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$PWD/.ort/cpu/onnxruntime/capi/libonnxruntime.so.1.31.1}"
py="${AGENT_PYTHON:-python3}"
agent="${AGENT_BIN:-target/release/agent}"
free_port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
agent_port="$(free_port)"
feed_port="$(free_port)"
rm -rf "$run" && mkdir -p "$run/inbox" "$run/feed-state"
cat >"$run/agent.toml" <<EOF
[model]
name = "digits"
path = "$PWD/models/digits/encoder.onnx"
embedding = "embedding"
layers = [{ name = "block2", tensor = "/pool2/MaxPool_output_0" }]
methods = ["vanilla", "actgrad"]
smoothing_points = 4

[engine]
providers = ["cpu"]

[baseline]
reference_dir = "$PWD/models/digits/reference.npy"

[window]
samples = 200

[[sources]]
type = "dir"
name = "inbox"
path = "$run/inbox"
settle_ms = 500

[[sources]]
type = "http"
name = "feed"
url = "http://127.0.0.1:$feed_port/feed"
state_dir = "$run/feed-state"
poll_interval_ms = 200
dedupe_ids = ${SOAK_DEDUPE_IDS:-100000}

[[sources]]
type = "ingest"

[server]
listen = "127.0.0.1:$agent_port"

[logging]
format = "json"
EOF

pids=()
cleanup() {
  touch "$run/stop"
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$run/agent.pid" ] && kill -TERM "$(cat "$run/agent.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

starts=0
start_agent() {
  starts=$((starts + 1))
  "$agent" --config "$run/agent.toml" >"$run/agent-$starts.log" 2>&1 &
  echo $! >"$run/agent.pid"
  for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:$agent_port/readyz" >/dev/null 2>&1 && return 0
    kill -0 "$(cat "$run/agent.pid")" 2>/dev/null || { echo "the agent exited" >&2; tail "$run/agent-$starts.log" >&2; exit 1; }
    sleep 0.2
  done
  echo "the agent did not become ready" >&2
  exit 1
}

"$py" scripts/soak.py feed "$run" "$feed_port" 20 & pids+=($!)
start_agent
echo "agent ready (pid $(cat "$run/agent.pid"), http://127.0.0.1:$agent_port/); soaking for $secs s"
"$py" scripts/soak.py producer "$run" 4 "$secs" & pids+=($!)
"$py" scripts/soak.py ingest "$run" "http://127.0.0.1:$agent_port/v2/models/digits/infer" "$ingest_rate" "$secs" & pids+=($!)

echo "t,pid,rss_kb,fds" >"$run/samples.csv"
t0=$(date +%s)
killed=0
next_hup=60
while :; do
  now=$(( $(date +%s) - t0 ))
  [ "$now" -ge "$secs" ] && break
  pid="$(cat "$run/agent.pid")"
  rss="$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)"
  fds="$(ls "/proc/$pid/fd" 2>/dev/null | wc -l)"
  echo "$now,$pid,$rss,$fds" >>"$run/samples.csv"
  if [ "$killed" = 0 ] && [ "$now" -ge $((secs / 2)) ]; then
    echo "[$now s] kill -9 $pid, restart"
    kill -9 "$pid"
    wait "$pid" 2>/dev/null || true
    start_agent
    killed=1
  elif [ "$now" -ge "$next_hup" ]; then
    kill -HUP "$pid"
    next_hup=$((next_hup + 60))
  fi
  if [ $((now % 300)) -lt 10 ]; then
    echo "[$now s] rss ${rss} kB, fds $fds"
  fi
  sleep 10
done

# Stop producing, let every source drain, then stop the agent cleanly.
touch "$run/stop"
sleep 2
produced="$("$py" -c 'import json,sys; print(json.load(open(sys.argv[1]))["produced"])' "$run/feed.json")"
for _ in $(seq 1 240); do
  left="$(find "$run/inbox" -maxdepth 1 -type f | wc -l)"
  busy="$(find "$run/inbox/.agent/processing" -type f | wc -l)"
  pos="$(grep -a '^P' "$run/feed-state/journal" | tail -1 | cut -f2)"
  [ "$left" = 0 ] && [ "$busy" = 0 ] && [ "$pos" = "$produced" ] && break
  sleep 1
done
curl -sf "http://127.0.0.1:$agent_port/metrics" >"$run/metrics.txt" || true
kill -TERM "$(cat "$run/agent.pid")"
wait "$(cat "$run/agent.pid")" 2>/dev/null || true
rm -f "$run/agent.pid"
"$py" scripts/soak.py analyse "$run"
