#!/usr/bin/env python3
"""Prototype, by graph surgery, of two compiler changes around an overlapping max pool's routing.

Input: a graph written by `agent compile` whose layer sits before a `Relu → MaxPool` pair with
overlapping windows (the AlexNet-like bench at `/pool1/MaxPool_output_0`: pool2). The compiled
backward there is `ScatterElements` (routing) → the ReLU rule's mask on the routed 7×7 result →
(smoothed maps) `ReduceSum` over the S points → `× 1/S` → the layer's transposed convolution.

- `fold`: the ReLU mask applied at the pooled resolution instead. After the routing, a gradient sits
  only at positions `Indices` reports, where the ReLU's input is positive exactly when the pooled
  output `Y` is, so `relu'(x) · route(dY) = route([Y > 0] · dY)`; the 7×7 `Mul` goes.
- `fuse` (S > 1): `fold`, and the mean over the points fused into the scatter: each point's
  cotangent is added straight into its sample's accumulator `[B·K·C·H·W]` at
  `((n div S)·K + k)·C·H·W + Indices mod C·H·W` (one broadcast `Add` builds the indices, no `Expand`
  over K), so the `ReduceSum` over the points and 15/16 of the zero fill go too.

    .venv/bin/python tools/pool_fusion_prototype.py IN.onnx OUT.onnx S fold|fuse
    .venv/bin/python tools/profile_graph.py IN.onnx OUT.onnx --points 64 --rows 32 --threads 1

`profile_graph.py` given both graphs also prints their outputs' largest relative difference.
"""

import sys

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh


def main():
    src, dst, S, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    m = onnx.load(src)
    g = m.graph
    by_out = {o: n for n in g.node for o in n.output}
    consumers = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    scatter = next(n for n in g.node if n.op_type == "ScatterElements")
    updates = scatter.input[2]  # [N·K, C·Y·Y] cotangent
    mod = by_out[scatter.input[1]]
    while mod.op_type != "Mod":  # Indices → within-sample offsets [N, C, Y, Y]
        mod = by_out[mod.input[0]]
    pool = next(n for n in g.node if n.op_type == "MaxPool" and mod.input[0] in n.output)
    t, split_shape = scatter.output[0], None
    while consumers[t][0].op_type == "Reshape":
        split_shape = consumers[t][0].input[1]  # [-1, K, C, H, W]
        t = consumers[t][0].output[0]
    relu_mul = consumers[t][0]
    assert relu_mul.op_type == "Mul", relu_mul.op_type
    k_dim = by_out[split_shape].input[1]  # [K]
    init = {i.name: nh.to_array(i) for i in g.initializer}
    cyy = int(init[by_out[updates].input[1]].ravel()[-1])  # C·Y·Y, from the scatter's [-1, C·Y·Y]
    chw = int(init[mod.input[1]].ravel()[0])  # C·H·W of the pool's input

    nodes, inits = [], []

    def const(name, v, dtype=np.int64):
        inits.append(nh.from_array(np.array(v, dtype), name))
        return name

    def op(kind, inputs, out, **attrs):
        nodes.append(h.make_node(kind, inputs, [out], **attrs))
        return out

    # [Y > 0] per window, applied to dY as [N, K, C·Y·Y].
    positive = op("Greater", [pool.output[0], const("p_zero", 0.0, np.float32)], "p_pos")
    positive = op("Cast", [positive], "p_posf", to=T.FLOAT)
    positive = op("Reshape", [positive, const("p_s1", [-1, 1, cyy])], "p_posr")
    split_k = op("Concat", [const("p_m1", [-1]), k_dim, const("p_cyy", [cyy])], "p_shk", axis=0)
    dy = op("Reshape", [updates, split_k], "p_dy3")
    dy = op("Mul", [dy, positive], "p_dym")
    bypass = {relu_mul.output[0]: relu_mul.input[0]}
    if mode == "fold":
        scatter.input[2] = op("Reshape", [dy, const("p_s6", [-1, cyy])], "p_updm")
    elif mode == "fuse":
        reduce = next(n for n in g.node if n.op_type == "ReduceSum")
        mean = next(n for n in g.node if n.op_type == "Mul" and reduce.output[0] in n.input)
        local = op("Reshape", [mod.output[0], const("p_s2", [-1, 1, cyy])], "p_local")
        points = op("Shape", [local], "p_shape")
        points = op("Slice", [points, const("p_0", [0]), const("p_1", [1]), const("p_ax0", [0])], "p_n")
        n0 = op("Squeeze", [points, "p_ax0"], "p_n0")
        k0 = op("Squeeze", [k_dim, "p_ax0"], "p_k0")
        n_range = op("Range", [const("p_z", 0), n0, const("p_one", 1)], "p_nr")
        k_range = op("Range", ["p_z", k0, "p_one"], "p_kr")
        sample = op("Div", [n_range, const("p_S", S)], "p_sample")
        first_row = op("Mul", [sample, k0], "p_sk")
        first_row = op("Reshape", [first_row, const("p_s3", [-1, 1, 1])], "p_sk3")
        k_range = op("Reshape", [k_range, const("p_s4", [1, -1, 1])], "p_kr3")
        row = op("Add", [first_row, k_range], "p_row")
        index = op("Add", [op("Mul", [row, const("p_chw", chw)], "p_base"), local], "p_index")
        index = op("Reshape", [index, const("p_flat", [-1])], "p_indexf")
        size = op("Mul", [op("Div", [points, "p_S"], "p_b"), k_dim], "p_bk")
        size = op("Mul", [size, const("p_chw1", [chw])], "p_size")
        zeros = op("ConstantOfShape", [size], "p_zeros", value=h.make_tensor("", T.FLOAT, [1], [0.0]))
        flat_dy = op("Reshape", [dy, "p_flat"], "p_dyf")
        acc = op("ScatterElements", [zeros, index, flat_dy], "p_acc", axis=0, reduction="add")
        mean.input[0] = op("Reshape", [acc, const("p_s5", [-1, chw])], "p_acc2")
        after = next(n for n in g.node if n.op_type == "Reshape" and n.input[0] == mean.output[0])
        after.input[1] = split_shape  # not read off the bypassed chain
    else:
        sys.exit(f"unknown mode {mode!r}")
    for n in g.node:
        n.input[:] = [bypass.get(i, i) for i in n.input]
    g.node.extend(nodes)
    g.initializer.extend(inits)
    # Topological order (the new nodes were appended), then drop what no output needs.
    done = {i.name for i in g.input} | {i.name for i in g.initializer}
    order, rest = [], list(g.node)
    while rest:
        ready = [n for n in rest if all(not i or i in done for i in n.input)]
        assert ready, "the rewired graph has a cycle"
        for n in ready:
            order.append(n)
            done.update(n.output)
        rest = [n for n in rest if n not in ready]
    need, keep = {o.name for o in g.output}, []
    for n in reversed(order):
        if any(o in need for o in n.output):
            keep.append(n)
            need.update(i for i in n.input if i)
    del g.node[:]
    g.node.extend(reversed(keep))
    used = {i for n in g.node for i in n.input}
    kept = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    onnx.save(m, dst)


if __name__ == "__main__":
    main()
