#!/usr/bin/env bash
# Installs ONNX Runtime 1.31.1 project-locally, where the agent looks for it (.ort/cpu or .ort/gpu),
# and the Python tools the tests and model scripts use (.venv: onnx, numpy, onnxruntime, scikit-learn).
#
#   scripts/install-onnxruntime.sh          CPU runtime + Python tools
#   scripts/install-onnxruntime.sh --gpu    also the CUDA 13 runtime (onnxruntime-gpu, 256 MB wheel)
#   scripts/install-onnxruntime.sh --no-python   only the runtime library
#
# Idempotent: what is already installed at the right version is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
ORT_VERSION=1.31.1
PY=${PYTHON:-python3}
gpu=0; python_tools=1
for a in "$@"; do
  case "$a" in
    --gpu) gpu=1 ;;
    --no-python) python_tools=0 ;;
    *) echo "unknown option $a" >&2; exit 2 ;;
  esac
done

install_lib() { # $1 = folder under .ort, $2 = PyPI package
  local lib=".ort/$1/onnxruntime/capi/libonnxruntime.so.$ORT_VERSION"
  if [ -f "$lib" ]; then echo "ONNX Runtime ($2) already at $lib"; return; fi
  echo "Installing $2==$ORT_VERSION into .ort/$1 ..."
  "$PY" -m pip install --quiet --disable-pip-version-check --no-deps --target ".ort/$1" "$2==$ORT_VERSION"
  [ -f "$lib" ] || { echo "error: $lib missing after install" >&2; exit 1; }
  echo "ONNX Runtime ($2) installed at $lib"
}

install_lib cpu onnxruntime
[ "$gpu" = 1 ] && install_lib gpu onnxruntime-gpu

if [ "$python_tools" = 1 ]; then
  if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
  if ! .venv/bin/python -c "import onnx, numpy, onnxruntime, sklearn, scipy, tritonclient.http" 2>/dev/null; then
    echo "Installing Python tools into .venv ..."
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -r scripts/requirements.txt
  fi
fi
