#!/usr/bin/env python3
"""CPU time of ways to route an overlapping max pool's cotangent in ONNX Runtime (issue 11).

The shape is the AlexNet-like bench's pool2 as the S = 16 attribution graph runs it: 64 points ×
32 cotangent rows (`[N·K, C, 3, 3]` cotangent), 32 channels, 3×3 windows at stride 2 on 7×7. The
pool input is a ReLU output with a plateau, so windows tie and share maxima. Every variant is checked
against a float64 scatter-add over the indices `MaxPool` reports (the spec's rule), then all are
timed interleaved run by run (process CPU time, median), so a loaded machine disturbs them alike.

Per-point tensors that a variant needs besides `Indices` (masks, routing matrices) are computed here
in numpy, outside the timed graph: that favours the variants, never the scatter, whose index
arithmetic runs in the graph as the compiler emits it.

    .venv/bin/python tools/pool_routing_bench.py [--threads 1] [--reps 30]
"""

import argparse
import statistics
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto as T
from onnx import helper as h

N, K, C, X, Y = 64, 32, 32, 7, 3  # points, rows, channels, input side, pooled side


def i64(name, values, dims=None):
    values = list(np.asarray(values).ravel())
    return h.make_tensor(name, T.INT64, dims or [len(values)], values)


def session(nodes, inputs, inits, threads, outputs=(("o", T.FLOAT),)):
    g = h.make_graph(
        nodes,
        "g",
        [h.make_tensor_value_info(n, t, None) for n, t in inputs],
        [h.make_tensor_value_info(n, t, None) for n, t in outputs],
        inits,
    )
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])


def data(seed=0):
    rng = np.random.default_rng(seed)
    x = np.maximum(rng.standard_normal((N, C, X, X)), 0).astype(np.float32)
    x[:, :, 2:5, 2:5] = 0.5  # a plateau: ties inside windows and maxima shared between them
    pool = session(
        [h.make_node("MaxPool", ["x"], ["y", "i"], kernel_shape=[3, 3], strides=[2, 2])],
        [("x", T.FLOAT)],
        [],
        1,
        [("i", T.INT64)],
    )
    idx = pool.run(["i"], {"x": x})[0]  # [N, C, 3, 3], indices over the whole tensor
    dy = rng.standard_normal((N * K, C, Y, Y)).astype(np.float32)
    local = (idx % (X * X)).reshape(N, C, Y * Y)  # position within its channel
    ref = np.zeros((N, K, C, X * X))
    for n in range(N):
        for c in range(C):
            np.add.at(ref[n, :, c], (slice(None), local[n, c]), dy.reshape(N, K, C, 9)[n, :, c])
    return idx, local, dy, ref.reshape(N * K, C, X, X)


def scatter(idx, local, dy):
    """As the compiler emits it: within-sample indices, expanded over the K rows, scattered with
    `reduction = add` into zeros."""
    nd = h.make_node
    nodes = [
        nd("ConstantOfShape", ["zs"], ["z"], value=h.make_tensor("", T.FLOAT, [1], [0.0])),
        nd("Mod", ["idx", "hw"], ["lm"]),
        nd("Reshape", ["lm", "s3"], ["l3"]),
        nd("Expand", ["l3", "ex"], ["le"]),
        nd("Reshape", ["le", "s2"], ["li"]),
        nd("Reshape", ["dy", "s2"], ["u"]),
        nd("ScatterElements", ["z", "li", "u"], ["o0"], axis=1, reduction="add"),
        nd("Reshape", ["o0", "s4"], ["o"]),
    ]
    inits = [
        i64("zs", [N * K, C * X * X]),
        i64("hw", [C * X * X]),
        i64("s3", [N, 1, C * Y * Y]),
        i64("ex", [N, K, C * Y * Y]),
        i64("s2", [N * K, C * Y * Y]),
        i64("s4", [N * K, C, X, X]),
    ]
    return nodes, [("dy", T.FLOAT), ("idx", T.INT64)], inits, {"dy": dy, "idx": idx}


def windows_of(p):
    return [o for o in range(Y) if 2 * o <= p <= 2 * o + 2]


def gather(idx, local, dy):
    """Issue 11's candidate 1: `dX[p] = Σ_t mask_t[p] · dY[o_t(p)]`, the (at most four) windows
    containing `p` a static map, one `Gather` on the flattened window axis (a zero slot pads)."""
    o_t = np.full((4, X * X), Y * Y, np.int64)
    for r in range(X):
        for c in range(X):
            ws = [oy * Y + ox for oy in windows_of(r) for ox in windows_of(c)]
            o_t[: len(ws), r * X + c] = ws
    padded = np.concatenate([local, np.full((N, C, 1), -1)], axis=2)
    mask = (np.take(padded, o_t, axis=2) == np.arange(X * X)).astype(np.float32)[:, None]
    nd = h.make_node
    nodes = [
        nd("Reshape", ["dy", "s3"], ["d3"]),
        nd("Pad", ["d3", "pads"], ["dp"]),
        nd("Gather", ["dp", "ot"], ["g"], axis=2),
        nd("Reshape", ["g", "s5"], ["g5"]),
        nd("Mul", ["g5", "m"], ["gm"]),
        nd("ReduceSum", ["gm", "ax"], ["r"], keepdims=0),
        nd("Reshape", ["r", "s4"], ["o"]),
    ]
    inits = [
        i64("s3", [N * K, C, Y * Y]),
        i64("pads", [0, 0, 0, 0, 0, 1]),
        i64("ot", o_t, [4, X * X]),
        i64("s5", [N, K, C, 4, X * X]),
        i64("ax", [3]),
        i64("s4", [N * K, C, X, X]),
    ]
    return nodes, [("dy", T.FLOAT), ("m", T.FLOAT)], inits, {"dy": dy, "m": mask}


def polyphase(idx, local, dy):
    """Issue 11's candidate 2: per stride phase (row and column parity of the input) a sum of the
    masked cotangent and its one-window shifts, on a 4×4 window grid padded with zeros; the four
    phases interleaved by `DepthToSpace`, then cut to 7×7."""
    a = local.reshape(N, C, Y, Y) // X - 2 * np.arange(Y)[:, None]  # argmax row offset in window
    b = local.reshape(N, C, Y, Y) % X - 2 * np.arange(Y)[None, :]

    def mask(ra, rb, sy, sx):
        m = np.zeros((N, C, 4, 4), np.float32)
        m[:, :, :Y, :Y] = (a == ra) & (b == rb)
        return np.roll(np.roll(m, sy, 2), sx, 3)[:, None]

    # (offset a, offset b) → (source grid, phase): offset 2 lands in the next window's phase 0.
    terms = {
        "p00": [("z", 0, 0), ("zx", 0, 2), ("zy", 2, 0), ("zxy", 2, 2)],
        "p01": [("z", 0, 1), ("zy", 2, 1)],
        "p10": [("z", 1, 0), ("zx", 1, 2)],
        "p11": [("z", 1, 1)],
    }
    shift = {"z": (0, 0), "zx": (0, 1), "zy": (1, 0), "zxy": (1, 1)}
    nd = h.make_node
    nodes = [nd("Pad", ["dy", "pads"], ["z"])]
    # Cyclic shifts by one window: row or column 3 of the padded grid is zero, so it fills in.
    for src, out, axis in [("z", "zy", 2), ("z", "zx", 3), ("zy", "zxy", 3)]:
        nodes += [
            nd("Slice", [src, "s3", "s4", f"a{axis}"], [out + "_l"]),
            nd("Slice", [src, "s0", "s3", f"a{axis}"], [out + "_f"]),
            nd("Concat", [out + "_l", out + "_f"], [out], axis=axis),
        ]
    nodes += [nd("Reshape", [g, "sp"], [g + "_s"]) for g in shift]
    feeds, inputs = {"dy": dy}, [("dy", T.FLOAT)]
    for phase, ts in terms.items():
        parts = []
        for src, ra, rb in ts:
            name = f"m_{phase}_{ra}{rb}"
            feeds[name] = mask(ra, rb, *shift[src])
            inputs.append((name, T.FLOAT))
            nodes.append(nd("Mul", [src + "_s", name], [name + "_t"]))
            parts.append(name + "_t")
        while len(parts) > 1:
            nodes.append(nd("Add", parts[:2], [parts[0] + "+"]))
            parts = [parts[0] + "+"] + parts[2:]
        nodes.append(nd("Unsqueeze", [parts[0], "u3"], [phase]))
    nodes += [
        nd("Concat", list(terms), ["ph"], axis=3),  # [N, K, C, (row phase, column phase), 4, 4]
        nd("Reshape", ["ph", "sd"], ["phr"]),
        nd("DepthToSpace", ["phr"], ["d8"], blocksize=2, mode="CRD"),
        nd("Slice", ["d8", "c0", "c7", "a23"], ["o"]),
    ]
    inits = [
        i64("pads", [0, 0, 0, 0, 0, 0, 1, 1]),
        i64("s0", [0]),
        i64("s3", [3]),
        i64("s4", [4]),
        i64("a2", [2]),
        i64("a3", [3]),
        i64("sp", [N, K, C, 4, 4]),
        i64("u3", [3]),
        i64("sd", [N * K, C * 4, 4, 4]),
        i64("c0", [0, 0]),
        i64("c7", [X, X]),
        i64("a23", [2, 3]),
    ]
    return nodes, inputs, inits, feeds


def routing_matrix(local):
    """Per (point, channel): `R[o, p] = [Indices(o) = p]`, `[N, C, 9, 49]`."""
    return (local[..., None] == np.arange(X * X)).astype(np.float32)


def einsum(idx, local, dy):
    """One-hot routing matrix per (point, channel), applied to the K rows by `Einsum`."""
    nd = h.make_node
    nodes = [
        nd("Reshape", ["dy", "s4i"], ["d4"]),
        nd("Einsum", ["d4", "r"], ["e"], equation="nkcj,ncjp->nkcp"),
        nd("Reshape", ["e", "s4"], ["o"]),
    ]
    inits = [i64("s4i", [N, K, C, Y * Y]), i64("s4", [N * K, C, X, X])]
    return nodes, [("dy", T.FLOAT), ("r", T.FLOAT)], inits, {"dy": dy, "r": routing_matrix(local)}


def matmul(idx, local, dy):
    """The same matrix as a broadcast `MatMul`: `[N, K, C, 1, 9] @ [N, 1, C, 9, 49]`."""
    nd = h.make_node
    nodes = [
        nd("Reshape", ["dy", "s5"], ["d5"]),
        nd("MatMul", ["d5", "r"], ["e"]),
        nd("Reshape", ["e", "s4"], ["o"]),
    ]
    inits = [i64("s5", [N, K, C, 1, Y * Y]), i64("s4", [N * K, C, X, X])]
    r = routing_matrix(local)[:, None]
    return nodes, [("dy", T.FLOAT), ("r", T.FLOAT)], inits, {"dy": dy, "r": r}


def matmul_transposed(idx, local, dy):
    """The same matrix applied to the K rows of each (point, channel) by one batched `MatMul`,
    `[N, C, K, 9] @ [N, C, 9, 49]`, between two transposes of the cotangent."""
    nd = h.make_node
    nodes = [
        nd("Reshape", ["dy", "s4i"], ["d4"]),
        nd("Transpose", ["d4"], ["dt"], perm=[0, 2, 1, 3]),
        nd("MatMul", ["dt", "r"], ["e"]),
        nd("Transpose", ["e"], ["et"], perm=[0, 2, 1, 3]),
        nd("Reshape", ["et", "s4"], ["o"]),
    ]
    inits = [i64("s4i", [N, K, C, Y * Y]), i64("s4", [N * K, C, X, X])]
    return nodes, [("dy", T.FLOAT), ("r", T.FLOAT)], inits, {"dy": dy, "r": routing_matrix(local)}


def scatter_nd_k_inner(idx, local, dy):
    """K rows innermost: `ScatterND` adds whole rows of K values at `Indices` (no index expansion,
    a tenth of the scatter's updates), between two transposes."""
    nd = h.make_node
    nodes = [
        nd("Reshape", ["dy", "s1"], ["a"]),
        nd("Transpose", ["a"], ["at"], perm=[0, 2, 1]),
        nd("Reshape", ["at", "s2"], ["upd"]),
        nd("Reshape", ["idx", "s3"], ["ii"]),
        nd("ConstantOfShape", ["zs"], ["z"], value=h.make_tensor("", T.FLOAT, [1], [0.0])),
        nd("ScatterND", ["z", "ii", "upd"], ["sd"], reduction="add"),
        nd("Reshape", ["sd", "s4"], ["sd3"]),
        nd("Transpose", ["sd3"], ["dt"], perm=[0, 2, 1]),
        nd("Reshape", ["dt", "s5"], ["o"]),
    ]
    inits = [
        i64("s1", [N, K, C * Y * Y]),
        i64("s2", [N * C * Y * Y, K]),
        i64("s3", [N * C * Y * Y, 1]),
        i64("zs", [N * C * X * X, K]),
        i64("s4", [N, C * X * X, K]),
        i64("s5", [N * K, C, X, X]),
    ]
    return nodes, [("dy", T.FLOAT), ("idx", T.INT64)], inits, {"dy": dy, "idx": idx}


def max_unpool(idx, local, dy):
    """`MaxUnpool` (CPU only: ONNX Runtime has no CUDA kernel for it) of per-window class sums,
    so that windows sharing a maximum all write the same total."""
    same = (local[..., :, None] == local[..., None, :]).astype(np.float32)[:, None]  # [N,1,C,9,9]
    offsets = ((np.arange(N)[:, None] * (K - 1) + np.arange(K)[None, :]) * C * X * X).reshape(N, K, 1, 1)
    nd = h.make_node
    nodes = [
        nd("Reshape", ["dy", "s5"], ["d5"]),
        nd("Mul", ["d5", "same"], ["de"]),
        nd("ReduceSum", ["de", "ax"], ["cs"], keepdims=0),
        nd("Reshape", ["idx", "s4i"], ["i4"]),
        nd("Add", ["i4", "off"], ["gi"]),
        nd("Reshape", ["cs", "s4"], ["xs"]),
        nd("Reshape", ["gi", "s4"], ["ig"]),
        nd("MaxUnpool", ["xs", "ig", "osh"], ["o"], kernel_shape=[3, 3], strides=[2, 2]),
    ]
    inits = [
        i64("s5", [N, K, C, 1, Y * Y]),
        i64("ax", [4]),
        i64("s4i", [N, 1, C, Y * Y]),
        i64("s4", [N * K, C, Y, Y]),
        i64("osh", [N * K, C, X, X]),
    ]
    feeds = {"dy": dy, "same": same, "idx": idx, "off": offsets.astype(np.int64)}
    return nodes, [("dy", T.FLOAT), ("same", T.FLOAT), ("idx", T.INT64), ("off", T.INT64)], inits, feeds


VARIANTS = {
    "ScatterElements (as compiled)": scatter,
    "Gather formulation (candidate 1)": gather,
    "polyphase + DepthToSpace (candidate 2)": polyphase,
    "routing matrix, Einsum": einsum,
    "routing matrix, broadcast MatMul": matmul,
    "routing matrix, MatMul between transposes": matmul_transposed,
    "ScatterND on K-inner rows": scatter_nd_k_inner,
    "MaxUnpool of class sums (no CUDA kernel)": max_unpool,
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=30)
    a = ap.parse_args()
    idx, local, dy, ref = data()
    runs = {}
    for name, build in VARIANTS.items():
        nodes, inputs, inits, feeds = build(idx, local, dy)
        s = session(nodes, inputs, inits, a.threads)
        out = s.run(["o"], feeds)[0]
        err = float(np.max(np.abs(out - ref)) / np.max(np.abs(ref)))
        assert err < 1e-6, f"{name}: relative error {err:.1e} against the reported indices"
        runs[name] = (s, feeds, err)
    cpu, wall = ({name: [] for name in runs} for _ in range(2))
    for _ in range(a.reps):
        for name, (s, feeds, _) in runs.items():
            c0, w0 = time.process_time(), time.perf_counter()
            s.run(["o"], feeds)
            cpu[name].append(time.process_time() - c0)
            wall[name].append(time.perf_counter() - w0)
    print(f"{N} points × {K} rows × {C} channels, 3×3/2 on {X}×{X}, {a.threads} thread(s), ms per run (medians of {a.reps})")
    for name in runs:
        c, w = (1e3 * statistics.median(t[name]) for t in (cpu, wall))
        print(f"  {name:42} CPU {c:7.2f}   wall {w:7.2f}   max relative error {runs[name][2]:.0e}")


if __name__ == "__main__":
    main()
