#!/usr/bin/env python3
"""Tests of tools/reference_scores.py against hand-computed literals.

Run: python tools/test_reference_scores.py   (exit status 1 on any failure)
"""

import json
import os
import subprocess
import sys
import tempfile
import traceback

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_scores as rs  # noqa: E402

# One sample, D = 2 components, C = 2 channels, H = 1, W = 3.
G = np.array([
    [[[1.0, -2.0, 3.0]], [[3.0, 0.0, -1.0]]],   # j = 0: channel 0, channel 1
    [[[0.0, 2.0, 2.0]], [[-2.0, 2.0, 0.0]]],    # j = 1
])
H = np.array([[[1.0, 2.0, 0.5]], [[-2.0, 1.0, 2.0]]])  # h: [C=2, 1, 3]

# A noise input: j = 0 constant over pixels, j = 1 a ramp.
GN = np.array([
    [[[1.0, 1.0, 1.0]], [[1.0, 1.0, 1.0]]],
    [[[0.0, 2.0, 4.0]], [[0.0, 2.0, 4.0]]],
])


def close(a, b, tol=1e-12):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, f"shape {a.shape} != {b.shape}"
    assert np.allclose(a, b, rtol=0, atol=tol), f"{a.tolist()} != {b.tolist()}"


# ---- section 2: channel aggregation ---------------------------------------------------------

def test_channel_mean_vanilla():
    close(rs.component_maps(G, method="vanilla", channel_agg="mean"), [[[2, -1, 1]], [[-1, 2, 1]]])


def test_channel_abs_vanilla():
    close(rs.component_maps(G, method="vanilla", channel_agg="abs"), [[[2, 1, 2]], [[1, 2, 1]]])


def test_channel_var_vanilla():
    # pixel values (1,3) -> var 1, (-2,0) -> 1, (3,-1) -> 4; (0,-2) -> 1, (2,2) -> 0, (2,0) -> 1
    close(rs.component_maps(G, method="vanilla", channel_agg="var"), [[[1, 1, 4]], [[1, 0, 1]]])


def test_actgrad():
    # h*G: j0 c0 [1,-4,1.5], c1 [-6,0,-2]; j1 c0 [0,4,1], c1 [4,2,0]
    close(rs.attribution(G, H, "actgrad"),
          [[[[1, -4, 1.5]], [[-6, 0, -2]]], [[[0, 4, 1]], [[4, 2, 0]]]])
    close(rs.component_maps(G, H, "actgrad", "mean"), [[[-2.5, -2, -0.25]], [[2, 3, 0.5]]])
    close(rs.component_maps(G, H, "actgrad", "abs"), [[[3.5, 2, 1.75]], [[2, 3, 0.5]]])
    close(rs.component_maps(G, H, "actgrad", "var")[0], [[12.25, 4, 3.0625]])


def test_gradcam():
    # alpha j0 = (2/3, 2/3), j1 = (4/3, 0); j0: 2/3*(h0+h1) = 2/3*[-1,3,2.5] -> ReLU [0,2,5/3]
    # j1: 4/3*h0 = [4/3, 8/3, 2/3]; channel aggregation is skipped whatever is asked
    want = [[[0, 2, 5 / 3]], [[4 / 3, 8 / 3, 2 / 3]]]
    for agg in rs.AGGREGATIONS:
        close(rs.component_maps(G, H, "gradcam", agg), want)


# ---- section 3: normalisation ---------------------------------------------------------------

def test_normalize():
    close(rs.normalize_map([[2.0, -1.0, 1.0]]), [[1, 0, 2 / 3]])
    close(rs.normalize_map([[3.0, 3.0], [3.0, 3.0]]), [[0, 0], [0, 0]])  # constant -> zeros
    close(rs.normalize_map(np.zeros((2, 2))), np.zeros((2, 2)))
    assert not np.any(np.isnan(rs.normalize_maps(np.zeros((3, 2, 2)))))


# ---- section 4: embedding aggregation -------------------------------------------------------

def test_embedding_aggregations():
    m = rs.component_maps(G, method="vanilla", channel_agg="mean")  # [2,-1,1], [-1,2,1]
    close(rs.embedding_map(m, "mean"), [[0.5, 0.5, 1]])
    close(rs.embedding_map(m, "abs"), [[1.5, 1.5, 1]])
    close(rs.embedding_map(m, "var"), [[2.25, 2.25, 0]])
    # normalised per dimension first: [1,0,2/3], [0,1,2/3]
    close(rs.embedding_map(m, "mean", normalize_dims=True), [[0.5, 0.5, 2 / 3]])
    close(rs.embedding_map(m, "var", normalize_dims=True), [[0.25, 0.25, 0]])


def test_embedding_aggregations_signed():
    m = rs.component_maps(G, H, "actgrad", "mean")  # [-2.5,-2,-0.25], [2,3,0.5]
    close(rs.embedding_map(m, "mean"), [[-0.25, 0.5, 0.125]])
    close(rs.embedding_map(m, "abs"), [[2.25, 2.5, 0.375]])
    close(rs.embedding_map(m, "var"), [[5.0625, 6.25, 0.140625]])


# ---- section 5: scores ----------------------------------------------------------------------

def test_noise_score_and_benchmark_from_maps():
    e = np.array([[0.0, 1.0, 2.0, 3.0]])        # N = [0, 1/3, 2/3, 1]
    n1 = np.array([[3.0, 2.0, 1.0, 0.0]])       # N = [1, 2/3, 1/3, 0]: MAE 2/3
    n2 = np.array([[5.0, 5.0, 5.0, 5.0]])       # constant -> zeros: MAE 1/2
    n3 = np.array([[0.0, 0.0, 0.0, 10.0]])      # N = [0, 0, 0, 1]: MAE 1/4
    close(rs.noise_score(e, [n1]), 2 / 3)
    close(rs.noise_score(e, [n1, n2]), 7 / 12)
    close(rs.noise_score(e, [n1, n2, n3]), 17 / 36)
    assert rs.noise_benchmark([n1]) is None
    close(rs.noise_benchmark([n1, n2]), 0.5)
    # pairs: (1,2) 1/2, (1,3) 3/4, (2,3) 1/4
    close(rs.noise_benchmark([n1, n2, n3]), 0.5)


def test_variance_score():
    # normalised: [0,.4,1], [0,1,.6], [1,0,.2], constant -> [0,0,0]
    maps = np.array([[[1.0, 3.0, 6.0]], [[-3.0, -1.0, -1.8]], [[0.5, 0.0, 0.1]], [[7.0, 7.0, 7.0]]])
    # per-pixel population variances .1875, .1675, .1475
    close(rs.variance_score(maps), 0.1675)
    close(rs.variance_score(maps[:3]), 4.48 / 27)
    # binarised at 0.5: [0,0,1], [0,1,1], [1,0,0] -> 2/9 at each pixel
    close(rs.variance_score(maps[:3], binarize=0.5), 2 / 9)


def test_variance_score_bounds():
    close(rs.variance_score(rs.component_maps(G, method="vanilla", channel_agg="abs")), 0.25)
    close(rs.variance_score(rs.component_maps(G, method="vanilla", channel_agg="mean")), 1 / 6)
    close(rs.variance_score(rs.component_maps(G, method="vanilla", channel_agg="var")), 1 / 12)
    close(rs.variance_score(np.zeros((5, 2, 2))), 0.0)
    # gradcam: [0,1,5/6] and [1/3,1,0] -> 1/36, 0, 25/144
    close(rs.variance_score(rs.component_maps(G, H, "gradcam")), 29 / 432)


def test_scores_end_to_end():
    # sample E (vanilla, mean, var) = [2.25,2.25,0] -> N [1,1,0]
    # noise maps [1,1,1], [0,2,4] -> E [.25,.25,2.25] -> N [0,0,1]: NS = 1
    out = rs.scores(G, noise_jacs=[GN], method="vanilla", channel_agg="mean", embedding_agg="var")
    close(out["noise_score"], 1.0)
    close(out["variance_score"], 1 / 6)
    assert out["noise_benchmark"] is None
    # normalize_dims: noise maps -> zeros, [0,.5,1] -> E [0,.0625,.25] -> N [0,.25,1]
    out = rs.scores(G, noise_jacs=[GN], method="vanilla", channel_agg="mean", embedding_agg="var",
                    normalize_dims=True)
    close(out["noise_score"], 2.75 / 3)
    # two identical noise inputs: benchmark 0
    out = rs.scores(G, noise_jacs=[GN, GN], channel_agg="mean", embedding_agg="var")
    close(out["noise_benchmark"], 0.0)
    close(out["noise_score"], 1.0)


def test_rank2_layer():
    jac = np.array([[1.0, -1.0], [2.0, 0.0]])  # [D=2, C=2], H = W = 1
    m = rs.component_maps(jac, method="vanilla", channel_agg="abs")
    close(m, [[[1.0]], [[1.0]]])
    close(rs.variance_score(m), 0.0)  # one pixel: every map is constant -> zeros


def test_cli():
    with tempfile.TemporaryDirectory() as d:
        paths = {}
        for name, arr in (("jac", G), ("act", H), ("nj", GN), ("na", H)):
            paths[name] = os.path.join(d, f"{name}.npy")
            np.save(paths[name], arr.astype(np.float32))
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference_scores.py")
        cmd = [sys.executable, script, "--jac", paths["jac"], "--noise-jac", paths["nj"],
               "--noise-jac", paths["nj"], "--method", "vanilla", "--channel-agg", "mean",
               "--embedding-agg", "var"]
        out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        close(out["noise_score"], 1.0, 1e-6)
        close(out["variance_score"], 1 / 6, 1e-6)
        close(out["noise_benchmark"], 0.0, 1e-6)
        cmd = [sys.executable, script, "--jac", paths["jac"], "--act", paths["act"],
               "--noise-jac", paths["nj"], "--noise-act", paths["na"], "--method", "gradcam",
               "--channel-agg", "abs", "--embedding-agg", "mean", "--binarize", "0.5"]
        out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        # gradcam binarised: [0,1,1], [0,1,0] -> variances 0, 0, 1/4
        close(out["variance_score"], 1 / 12, 1e-6)
        assert out["noise_benchmark"] is None
        # actgrad without --act is refused
        bad = subprocess.run([sys.executable, script, "--jac", paths["jac"], "--noise-jac",
                              paths["nj"], "--method", "actgrad"], capture_output=True)
        assert bad.returncode != 0


def main():
    tests = [(n, f) for n, f in sorted(globals().items()) if n.startswith("test_") and callable(f)]
    failed = 0
    for name, fn in tests:
        try:
            fn()
            print(f"ok    {name}")
        except Exception:  # noqa: BLE001 - report every failure, then exit non-zero
            failed += 1
            print(f"FAIL  {name}")
            traceback.print_exc()
    print(f"{len(tests) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
