#!/usr/bin/env bash
# The test command (README): installs what the tests need, then runs every test for real.
# ONNX Runtime and the Python tools go into the project (.ort, .venv); Prometheus comes from Debian's
# package when the end-to-end tests find it missing (they install it themselves).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-onnxruntime.sh
export ORT_DYLIB_PATH="$PWD/.ort/cpu/onnxruntime/capi/libonnxruntime.so.1.31.1"
export AGENT_PYTHON="$PWD/.venv/bin/python"
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test --workspace --all-targets
