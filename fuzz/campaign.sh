#!/usr/bin/env bash
# Runs fuzz targets one after another, SECS each, in fork mode (a crash is saved to artifacts/ and the
# run goes on), logging to logs/TARGET.log:  fuzz/campaign.sh SECS TARGET...
# Max input sizes per target: MAX_LEN_<target> or 16 KiB (images 64 KiB, ONNX models 128 KiB).
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
secs="$1"; shift
mkdir -p "$here/logs"
for t in "$@"; do
  case "$t" in image) len=65536 ;; onnx) len=131072 ;; *) len=16384 ;; esac
  echo "$(date -u +%T) $t start" >>"$here/logs/campaign.log"
  MAX_LEN="$len" FUZZ_ARGS="-fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1" \
    nice -n 19 "$here/run.sh" run "$t" "$secs" >"$here/logs/$t.log" 2>&1
  echo "$(date -u +%T) $t end rc=$?" >>"$here/logs/campaign.log"
done
