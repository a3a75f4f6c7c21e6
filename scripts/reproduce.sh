#!/usr/bin/env bash
# Regenerates every number and figure of docs/REPRODUCTION.md in docs/reproduction/ (or $OUT):
# builds the agent (release), runs the `reproduce` example (the agent's own Engine), draws the
# figure-2 heat maps with `agent explain`, and plots with tools/plot_reproduction.py.
# About 10 minutes on 2 CPU cores. Usage: scripts/reproduce.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-docs/reproduction}
MODELS=target/repro-models

[ -x .venv/bin/python ] && [ -f .ort/cpu/onnxruntime/capi/libonnxruntime.so.1.31.1 ] || scripts/install-onnxruntime.sh
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$ROOT/.ort/cpu/onnxruntime/capi/libonnxruntime.so.1.31.1}

# The random-weight ResNet-18 (about 45 MB, not committed).
if [ ! -f $MODELS/resnet18.onnx ]; then
    mkdir -p $MODELS
    .venv/bin/python tests/models/build_models.py --only resnet18 --out $MODELS
fi

cargo build --release -p agent --bin agent --example reproduce
mkdir -p "$OUT"
target/release/examples/reproduce --out "$OUT" --resnet $MODELS/resnet18.onnx
gzip -9 -n -f "$OUT/drift_samples.csv" # per-sample drift data, about 110 KB compressed

# Figure 2 analogue: `agent explain` on three reference digits (the first 0, 4 and 7), three
# aggregation pairs (channel/embedding), every method, both digit layers.
rm -rf "$OUT/explain"
mkdir -p "$OUT/explain"
samples=$(.venv/bin/python -c "
import numpy as np
labels = np.load('models/digits/labels_reference.npy')
print(' '.join(str(int(np.flatnonzero(labels == d)[0])) for d in (0, 4, 7)))")
for pair in abs:var var:abs mean:mean; do
    c=${pair%:*}
    e=${pair#*:}
    for i in $samples; do
        target/release/agent explain --model models/digits/encoder.onnx --embedding embedding \
            --layer conv2_in=/pool1/MaxPool_output_0 --layer block2_out=/pool2/MaxPool_output_0 \
            --method vanilla --method actgrad --method gradcam --channel-agg "$c" --embedding-agg "$e" \
            --sample "$i" --scale 5 --out "$OUT/explain/${c}_${e}_digit$i.png" models/digits/reference.npy >/dev/null
    done
done

# The lattice that dominates the random ResNet-18's vanilla maps (see REPRODUCTION.md): one digit
# resized to 224 × 224 (bilinear), the first three stage outputs, a random subset of 16 components.
.venv/bin/python -c "
import numpy as np, scipy.ndimage as nd
x = np.load('models/digits/reference.npy')[1, 0]
y = nd.zoom(x, 8, order=1).clip(0, 1).astype(np.float32)
np.save('$MODELS/resnet_digit.npy', np.repeat(y[None, None], 3, axis=1))"
target/release/agent explain --model $MODELS/resnet18.onnx --embedding embedding \
    --layer layer1=/layer1/layer1.1/relu_1/Relu_output_0 --layer layer2=/layer2/layer2.1/relu_1/Relu_output_0 \
    --layer layer3=/layer3/layer3.1/relu_1/Relu_output_0 --method vanilla --dims 16 --scale 1 \
    --out "$OUT/resnet18_explain_dims16.png" $MODELS/resnet_digit.npy >/dev/null

# Plots need matplotlib. A project-local .venv gets it installed; a .venv shared with another
# checkout (a symbolic link) is left untouched and a private one under target/ reuses its packages.
PY=.venv/bin/python
if ! $PY -c "import matplotlib" 2>/dev/null; then
    if [ -L .venv ]; then
        PY=target/plot-venv/bin/python
        if ! [ -x $PY ] || ! $PY -c "import matplotlib" 2>/dev/null; then
            base=$(.venv/bin/python -c "import sys; print(sys.base_prefix)")/bin/python3
            "$base" -m venv target/plot-venv
            site=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
            echo "$site" >"$(target/plot-venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/repro-base.pth"
            $PY -m pip install --quiet matplotlib
        fi
    else
        $PY -m pip install --quiet matplotlib
    fi
fi
$PY tools/plot_reproduction.py --data "$OUT"
echo "reproduction written to $OUT (see docs/REPRODUCTION.md)"
