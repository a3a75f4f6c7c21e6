#!/usr/bin/env python3
"""Per-kernel profile and A/B CPU time of compiled attribution graphs in ONNX Runtime.

`agent compile` writes the graph; this runs it on random inputs shaped like the engine's runs
(`points` model inputs = samples × smoothing points, `rows` cotangent rows) and prints

- with `--profile`: ONNX Runtime's own profiler (`enable_profiling`), summed per operator type and
  as a share of all kernel time, for the first graph given;
- the CPU time (process time, every thread) per run of each graph, the graphs interleaved run by
  run so that a loaded machine disturbs them alike; median and lower quartile over `--reps` rounds.

Intra-op spinning is off by default here (`--spin` turns it on, as in the engine before it was
turned off): a spinning worker burns CPU time while it waits, which is noise in an A/B comparison.

    .venv/bin/python tools/profile_graph.py A.onnx [B.onnx …] --points 64 --rows 32 --threads 2 --profile
"""

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort


def session(path, threads, spin, profile=None):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = profile
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def feeds(sess, points, rows, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for i in sess.get_inputs():
        if i.name == "attr_cotangent":
            d = i.shape[1]
            out[i.name] = np.eye(d, dtype=np.float32)[: min(rows, d)] if rows <= d else rng.standard_normal((rows, d)).astype(np.float32)
        else:
            shape = [points] + [int(s) for s in i.shape[1:]]
            out[i.name] = rng.random(shape, dtype=np.float32)
    return out


def kernel_shares(trace_path):
    """Per operator type, the summed kernel time of its nodes, each node's time being its fastest
    run: on a loaded machine a kernel's duration includes the time its threads were preempted,
    and the minimum over runs filters most of that out."""
    with open(trace_path) as f:
        events = json.load(f)
    fastest, op_of = {}, {}
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        node = e["name"]
        op_of[node] = e.get("args", {}).get("op_name", "?")
        fastest[node] = min(fastest.get(node, e["dur"]), e["dur"])
    per = {}
    for node, t in fastest.items():
        per[op_of[node]] = per.get(op_of[node], 0) + t
    total = sum(per.values())
    return total, sorted(per.items(), key=lambda kv: -kv[1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("graphs", nargs="+")
    ap.add_argument("--points", type=int, default=64)
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--spin", action="store_true")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--top", type=int, default=10)
    a = ap.parse_args()

    if a.profile:
        prefix = "/tmp/perf2_prof"
        s = session(a.graphs[0], a.threads, a.spin, prefix)
        f = feeds(s, a.points, a.rows)
        for _ in range(8):
            s.run(None, f)
        trace = s.end_profiling()
        total, per = kernel_shares(trace)
        os.remove(trace)
        print(f"profile of {a.graphs[0]}: {total / 1e3:.2f} ms summed fastest kernel times ({a.points} points × {a.rows} rows)")
        print(", ".join(f"{op} {100 * t / total:.0f} %" for op, t in per[: a.top]))

    sessions = [session(g, a.threads, a.spin) for g in a.graphs]
    fs = [feeds(s, a.points, a.rows) for s in sessions]
    outs = [s.run(None, f) for s, f in zip(sessions, fs)]
    for s, f in zip(sessions, fs):
        s.run(None, f)
    times = [[] for _ in sessions]
    for _ in range(a.reps):
        for i, (s, f) in enumerate(zip(sessions, fs)):
            c0 = time.process_time()
            s.run(None, f)
            times[i].append(time.process_time() - c0)
    for g, t in zip(a.graphs, times):
        t = sorted(t)
        print(f"{g}: CPU ms per run median {1e3 * statistics.median(t):.2f}, lower quartile {1e3 * t[len(t) // 4]:.2f}")
    # Same inputs everywhere: the outputs must agree (the variants are the same maths).
    if len(sessions) > 1:
        names = [o.name for o in sessions[0].get_outputs()]
        for j, s in enumerate(sessions[1:], 1):
            for k, n in enumerate(names):
                other = [o.name for o in s.get_outputs()].index(n)
                x, y = outs[0][k], outs[j][other]
                err = float(np.max(np.abs(x - y)) / (np.max(np.abs(x)) + 1e-30))
                print(f"  {a.graphs[j]} {n}: max relative difference {err:.2e}")


if __name__ == "__main__":
    sys.exit(main())
