#!/usr/bin/env python3
"""The PyTorch side of the side-by-side bench (issue 11), and the source of the bench's models.

Builds the three architectures of the issue's table in PyTorch (random weights: timing does not
depend on them), exports each to ONNX so that `agent/examples/score_bench.rs` times exactly the same
graphs, and times two PyTorch ways of computing the same vanilla maps at the same middle layer:

- the authors' loop: one forward of the batch, then one backward per embedding component
  (`torch.autograd.grad(z[:, j].sum(), h, retain_graph=True)` for j in 0..D);
- the batched VJP: one `torch.autograd.grad(z, h, grad_outputs=I_D, is_grads_batched=True)`.

Both include what the agent does per sample besides the gradient: S smoothing points per sample
(x + σ·ε, σ = 0.5), the mean of the S gradients, and the `abs` channel aggregation. Per-sample time
is marginal: (t(2b) − t(b)) / b, so start-up and per-call overheads drop out; the amortised time
t(2b) / 2b, which keeps them, is recorded too. Wall time and process CPU time (both threads) are
recorded; on a shared machine compare CPU times.

Usage (PyTorch is NOT a project dependency; CI never runs this):
    ~/torch-env/bin/python tools/bench_torch.py [--out target/bench] [--threads 2] [--quick]
then `cargo run --release -p agent --example score_bench -- target/bench`, which prints the table
with the ratios.
"""

import argparse
import json
import os
import sys
import time

import torch
import torch.nn as nn


class Encoder(nn.Module):
    """The paper's MNIST-style encoder: two Conv-ReLU-MaxPool2 blocks and a linear head, D = 10."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.pool2 = nn.MaxPool2d(2)
        self.fc = nn.Linear(32 * 7 * 7, 10)

    def head(self, x):  # input → middle layer (pool1 output, 16×14×14)
        return self.pool1(torch.relu(self.conv1(x)))

    def tail(self, h):  # middle layer → embedding
        h = self.pool2(torch.relu(self.conv2(h)))
        return self.fc(torch.flatten(h, 1))


class AlexNetLike(nn.Module):
    """AlexNet-like stack on 64×64 inputs with overlapping 3×3/2 max pools, D = 32."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 11, stride=4, padding=2)  # 64 → 15
        self.pool1 = nn.MaxPool2d(3, 2)  # 15 → 7
        self.conv2 = nn.Conv2d(16, 32, 5, padding=2)
        self.pool2 = nn.MaxPool2d(3, 2)  # 7 → 3
        self.conv3 = nn.Conv2d(32, 48, 3, padding=1)
        self.conv4 = nn.Conv2d(48, 32, 3, padding=1)
        self.conv5 = nn.Conv2d(32, 32, 3, padding=1)
        self.pool5 = nn.MaxPool2d(3, 2)  # 3 → 1
        self.fc6 = nn.Linear(32, 128)
        self.fc7 = nn.Linear(128, 32)

    def head(self, x):  # middle layer: pool1 output, 16×7×7
        return self.pool1(torch.relu(self.conv1(x)))

    def tail(self, h):
        h = self.pool2(torch.relu(self.conv2(h)))
        h = torch.relu(self.conv3(h))
        h = torch.relu(self.conv4(h))
        h = self.pool5(torch.relu(self.conv5(h)))
        h = torch.relu(self.fc6(torch.flatten(h, 1)))
        return self.fc7(h)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.down is None else self.down(x)))


class ResNet18(nn.Module):
    """torchvision's ResNet-18 layout at 64×64, embedding = pooled layer4 features, D = 512. The
    middle layer is layer2's output (128×8×8): the gradient runs through the layer3+4 tail."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        chans, layers, cin = [64, 128, 256, 512], [], 64
        for i, c in enumerate(chans):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(BasicBlock(cin, c, stride), BasicBlock(c, c, 1)))
            cin = c
        self.layer1, self.layer2, self.layer3, self.layer4 = layers

    def head(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        return self.layer2(self.layer1(x))

    def tail(self, h):
        h = self.layer4(self.layer3(h))
        return torch.flatten(torch.nn.functional.adaptive_avg_pool2d(h, 1), 1)


class Whole(nn.Module):
    """head then tail, with the middle layer as a named graph tensor the agent can point at."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m.tail(self.m.head(x))


CASES = {
    # name: (constructor, input shape, smoothing point counts to time)
    "encoder": (Encoder, (1, 28, 28), (1, 16)),
    "alexnet": (AlexNetLike, (3, 64, 64), (1, 16)),
    "resnet18": (ResNet18, (3, 64, 64), (1,)),
}


def export(name, model, shape, out_dir):
    """ONNX export; returns the name of the middle-layer tensor in the exported graph."""
    import onnx

    path = os.path.join(out_dir, f"{name}.onnx")
    x = torch.rand(1, *shape)
    torch.onnx.export(Whole(model).eval(), (x,), path, input_names=["input"], output_names=["embedding"],
                      dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}},
                      opset_version=17, dynamo=False)
    g = onnx.load(path)
    # The middle layer is the output of the last node the head emits: find it by value — run the
    # head and the graph's intermediate tensors on the same input and take the tensor that matches.
    import numpy as np
    import onnxruntime as ort

    with torch.no_grad():
        h = model.head(x).numpy()
    cand = [o for n in g.graph.node for o in n.output]
    probe = onnx.ModelProto()
    probe.CopyFrom(g)
    del probe.graph.output[:]
    for c in cand:
        probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(c))
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    values = sess.run(None, {"input": x.numpy()})
    layer = next(c for c, v in zip(cand, values) if v.shape == h.shape and np.allclose(v, h, rtol=1e-3, atol=1e-4))
    return path, layer


def maps_loop(model, x, s, sigma):
    """Authors' loop: per component, one backward."""
    pts = x.repeat_interleave(s, 0)
    if s > 1:
        pts = pts + sigma * torch.randn_like(pts)
    h = model.head(pts).detach().requires_grad_(True)
    z = model.tail(h)
    out = []
    for j in range(z.shape[1]):
        (g,) = torch.autograd.grad(z[:, j].sum(), h, retain_graph=True)
        g = g.reshape(x.shape[0], s, *g.shape[1:]).mean(1)
        out.append(g.abs().mean(1))
    return torch.stack(out, 1)


def maps_vjp(model, x, s, sigma):
    """Batched VJP: all D cotangent rows in one `is_grads_batched` call."""
    pts = x.repeat_interleave(s, 0)
    if s > 1:
        pts = pts + sigma * torch.randn_like(pts)
    h = model.head(pts).detach().requires_grad_(True)
    z = model.tail(h)
    d = z.shape[1]
    eye = torch.eye(d).unsqueeze(1).expand(d, z.shape[0], d)
    (g,) = torch.autograd.grad(z, h, grad_outputs=eye, is_grads_batched=True)  # [D, B·S, C, H, W]
    g = g.reshape(d, x.shape[0], s, *g.shape[2:]).mean(2)
    return g.abs().mean(2).transpose(0, 1)


def timed(fn, min_secs):
    """Mean (wall, CPU) seconds of one call, repeated until `min_secs` have passed (twice at least):
    the same rule as the agent's bench."""
    w, c, n = time.perf_counter(), time.process_time(), 0
    while n < 2 or time.perf_counter() - w < min_secs:
        fn()
        n += 1
    return (time.perf_counter() - w) / n, (time.process_time() - c) / n


def marginal(fn, model, shape, s, b, min_secs):
    x1, x2 = torch.rand(b, *shape), torch.rand(2 * b, *shape)
    fn(model, x2, s, 0.5)  # warm-up
    w1, c1 = timed(lambda: fn(model, x1, s, 0.5), min_secs)
    w2, c2 = timed(lambda: fn(model, x2, s, 0.5), min_secs)
    return {"wall_ms": max(w2 - w1, 0.0) / b * 1e3, "cpu_ms": max(c2 - c1, 0.0) / b * 1e3,
            "amortised_wall_ms": w2 / (2 * b) * 1e3, "amortised_cpu_ms": c2 / (2 * b) * 1e3,
            "batch": [b, 2 * b]}


def batch_size(name, s):
    """b of the marginal (t(2b) − t(b)) / b: large enough that the difference stands out of the noise
    of a shared machine; the agent's bench uses the same sizes."""
    return 1 if name == "resnet18" else (32 if s == 1 else 4)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="target/bench")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="shorter timing (a smoke run)")
    ap.add_argument("--export-only", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    os.makedirs(a.out, exist_ok=True)
    min_secs = 0.3 if a.quick else 2.0
    result = {"threads": a.threads, "torch": torch.__version__, "cases": {}}
    for name, (ctor, shape, points) in CASES.items():
        model = ctor().eval()
        for p in model.parameters():
            p.requires_grad_(False)
        path, layer = export(name, model, shape, a.out)
        case = {"model": os.path.abspath(path), "layer": layer, "input_shape": list(shape),
                "embedding": "embedding", "points": list(points), "torch": {}}
        print(f"{name}: exported {path}, middle layer {layer}", file=sys.stderr)
        if not a.export_only:
            for s in points:
                t = {}
                b = batch_size(name, s)
                t["vjp"] = marginal(maps_vjp, model, shape, s, b, min_secs)
                if name != "resnet18":  # 512 backward passes per sample: minutes, as in the issue
                    t["loop"] = marginal(maps_loop, model, shape, s, b, min_secs)
                case["torch"][str(s)] = t
                print(f"  S={s}: {json.dumps(t)}", file=sys.stderr)
        result["cases"][name] = case
    with open(os.path.join(a.out, "bench.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(os.path.join(a.out, "bench.json"))


if __name__ == "__main__":
    main()
