#!/usr/bin/env python3
"""Independent numpy reference of the scores (docs/spec/scores.md: channel aggregation to the scores).

Input: raw per-component Jacobians of one sample, as exported by the Rust side:
  --jac X.npy        [D, C, H, W]: dz_j/dh for the monitored sample (a rank-2 layer: [D, C])
  --act H.npy        [C, H, W]: h itself (needed by actgrad and gradcam)
  --noise-jac N.npy  the same for each noise input (repeat the flag), with --noise-act in the same order

Prints one JSON object {"noise_score", "variance_score", "noise_benchmark"}; the benchmark is null
when fewer than two noise inputs are given.

Functions (importable): attribution, channel_aggregate, component_maps, normalize_map,
normalize_maps, embedding_aggregate, embedding_map, noise_score, noise_benchmark, variance_score,
scores.
"""

import argparse
import itertools
import json
import sys

import numpy as np

METHODS = ("vanilla", "actgrad", "gradcam")
AGGREGATIONS = ("mean", "abs", "var")


def _as4d(jac):
    jac = np.asarray(jac, dtype=np.float64)
    if jac.ndim == 2:  # rank-2 layer: C features, H = W = 1
        jac = jac[:, :, None, None]
    if jac.ndim != 4:
        raise ValueError(f"a Jacobian must be [D, C, H, W] (or [D, C]), got shape {jac.shape}")
    return jac


def _act3d(act, jac):
    if act is None:
        raise ValueError("this method needs the activation h (--act / --noise-act)")
    act = np.asarray(act, dtype=np.float64)
    if act.ndim == 1:
        act = act[:, None, None]
    if act.shape != jac.shape[1:]:
        raise ValueError(f"activation shape {act.shape} does not match the Jacobian's {jac.shape[1:]}")
    return act


def attribution(jac, act=None, method="vanilla"):
    """Section 1. vanilla: G [D,C,H,W]; actgrad: h*G [D,C,H,W]; gradcam: ReLU(sum_c a_c h_c) [D,H,W]."""
    g = _as4d(jac)
    if method == "vanilla":
        return g
    h = _act3d(act, g)
    if method == "actgrad":
        return g * h[None]
    if method == "gradcam":
        alpha = g.mean(axis=(2, 3))  # [D, C]
        return np.maximum(np.einsum("dc,chw->dhw", alpha, h), 0.0)
    raise ValueError(f"unknown method {method!r}")


def channel_aggregate(a, how):
    """Section 2: [D, C, H, W] -> [D, H, W]."""
    if how == "mean":
        return a.mean(axis=1)
    if how == "abs":
        return np.abs(a).mean(axis=1)
    if how == "var":
        return a.var(axis=1)  # population variance (ddof = 0)
    raise ValueError(f"unknown channel aggregation {how!r}")


def component_maps(jac, act=None, method="vanilla", channel_agg="abs"):
    """Per-component maps M_j: [D, H, W] (channel aggregation skipped for gradcam)."""
    a = attribution(jac, act, method)
    return a if method == "gradcam" else channel_aggregate(a, channel_agg)


def normalize_map(m):
    """Section 3: min-max over the pixels of one map; a constant map becomes all zeros."""
    m = np.asarray(m, dtype=np.float64)
    lo, hi = m.min(), m.max()
    if not hi > lo:
        return np.zeros_like(m)
    return (m - lo) / (hi - lo)


def normalize_maps(maps):
    """Normalise each map of a stack [D, H, W] on its own."""
    return np.stack([normalize_map(m) for m in maps])


def embedding_aggregate(maps, how):
    """Section 4: [D, H, W] -> [H, W]."""
    if how == "mean":
        return maps.mean(axis=0)
    if how == "abs":
        return np.abs(maps).mean(axis=0)
    if how == "var":
        return maps.var(axis=0)  # population variance (ddof = 0)
    raise ValueError(f"unknown embedding aggregation {how!r}")


def embedding_map(maps, embedding_agg="var", normalize_dims=False):
    """E for one input from its per-component maps M [D, H, W]."""
    if normalize_dims:
        maps = normalize_maps(maps)
    return embedding_aggregate(maps, embedding_agg)


def _mae(a, b):
    return float(np.mean(np.abs(normalize_map(a) - normalize_map(b))))


def noise_score(e, noise_es):
    """Eq. (1): mean over the noise inputs of MAE(N(E(x)), N(E(noise)))."""
    if len(noise_es) == 0:
        raise ValueError("the noise score needs at least one noise input")
    return float(np.mean([_mae(e, en) for en in noise_es]))


def noise_benchmark(noise_es):
    """Eq. (2): mean over pairs of distinct noise inputs of MAE(N(E1), N(E2)); None if < 2."""
    pairs = list(itertools.combinations(range(len(noise_es)), 2))
    if not pairs:
        return None
    return float(np.mean([_mae(noise_es[i], noise_es[k]) for i, k in pairs]))


def variance_score(maps, binarize=None):
    """Eq. (3): mean over pixels of the population variance over j of the normalised maps."""
    mhat = normalize_maps(maps)
    if binarize is not None:
        mhat = (mhat >= binarize).astype(np.float64)
    return float(mhat.var(axis=0).mean())


def scores(jac, act=None, noise_jacs=(), noise_acts=None, method="vanilla", channel_agg="abs",
           embedding_agg="var", normalize_dims=False, binarize=None):
    """All three numbers for one sample and one layer."""
    if noise_acts is None or len(noise_acts) == 0:
        noise_acts = [None] * len(noise_jacs)
    if len(noise_acts) != len(noise_jacs):
        raise ValueError("give one --noise-act per --noise-jac")
    maps = component_maps(jac, act, method, channel_agg)
    e = embedding_map(maps, embedding_agg, normalize_dims)
    noise_es = [embedding_map(component_maps(j, a, method, channel_agg), embedding_agg,
                              normalize_dims) for j, a in zip(noise_jacs, noise_acts)]
    return {
        "noise_score": noise_score(e, noise_es),
        "variance_score": variance_score(maps, binarize),
        "noise_benchmark": noise_benchmark(noise_es),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--jac", required=True, help="[D, C, H, W] Jacobian of the sample (.npy)")
    ap.add_argument("--act", help="[C, H, W] activation of the sample (.npy)")
    ap.add_argument("--noise-jac", action="append", required=True, default=None,
                    help="Jacobian of a noise input (repeat)")
    ap.add_argument("--noise-act", action="append", default=None,
                    help="activation of a noise input (repeat, same order as --noise-jac)")
    ap.add_argument("--method", choices=METHODS, default="vanilla")
    ap.add_argument("--channel-agg", choices=AGGREGATIONS, default="abs")
    ap.add_argument("--embedding-agg", choices=AGGREGATIONS, default="var")
    ap.add_argument("--normalize-dims", action="store_true")
    ap.add_argument("--binarize", type=float, default=None, metavar="THRESHOLD")
    args = ap.parse_args(argv)
    jac = np.load(args.jac)
    act = np.load(args.act) if args.act else None
    noise_jacs = [np.load(p) for p in args.noise_jac]
    noise_acts = [np.load(p) for p in args.noise_act] if args.noise_act else None
    if args.method != "vanilla" and (act is None or noise_acts is None):
        ap.error(f"--method {args.method} needs --act and one --noise-act per --noise-jac")
    out = scores(jac, act, noise_jacs, noise_acts, args.method, args.channel_agg,
                 args.embedding_agg, args.normalize_dims, args.binarize)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
