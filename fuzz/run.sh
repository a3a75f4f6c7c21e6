#!/usr/bin/env bash
# Builds the libFuzzer targets with coverage instrumentation on the stable toolchain and runs them.
#   fuzz/run.sh build                 # instrumented release build into fuzz/target
#   fuzz/run.sh run TARGET SECONDS    # fuzz TARGET for SECONDS over fuzz/corpus/TARGET (+ seeds)
#   fuzz/run.sh cmin TARGET           # minimise fuzz/corpus/TARGET in place
# Crashes land in fuzz/artifacts/TARGET/; copy each into fuzz/regressions/TARGET/ once fixed.
# libFuzzer's sanitizer-coverage needs no nightly: the passes are stable rustc flags (as cargo-afl
# does); AddressSanitizer is not used, the allocation cap in src/cap.rs stands in for its malloc limit.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cforce-frame-pointers=yes"
export CARGO_TARGET_DIR="$here/target"
triple="$(rustc -vV | sed -n "s/^host: //p")"
bin="$here/target/$triple/release"
case "${1:-}" in
  build)
    (cd "$here" && cargo build --release --bins --target "$triple")  # --target: build scripts stay uninstrumented
    ;;
  run)
    t="$2"; secs="$3"
    mkdir -p "$here/corpus/$t" "$here/artifacts/$t"
    seeds=()
    [ -d "$here/seeds/$t" ] && seeds+=("$here/seeds/$t")
    [ -d "$here/regressions/$t" ] && seeds+=("$here/regressions/$t")
    "$bin/$t" "$here/corpus/$t" "${seeds[@]}" \
      -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -max_len="${MAX_LEN:-65536}" \
      -artifact_prefix="$here/artifacts/$t/" -print_final_stats=1 ${FUZZ_ARGS:-}
    ;;
  cmin)
    t="$2"; tmp="$(mktemp -d)"
    "$bin/$t" -merge=1 "$tmp" "$here/corpus/$t" -max_len="${MAX_LEN:-65536}"
    rm -rf "$here/corpus/$t" && mv "$tmp" "$here/corpus/$t"
    ;;
  *) sed -n 2,8p "$0"; exit 2 ;;
esac
