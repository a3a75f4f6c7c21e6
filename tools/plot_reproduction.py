#!/usr/bin/env python3
"""Figures and tables of the reproduction (docs/REPRODUCTION.md) from the data that
`cargo run --release -p agent --example reproduce` writes.

    python tools/plot_reproduction.py [--data docs/reproduction]

Reads drift.json, drift_samples.csv (or .csv.gz), curves.csv, estimators.csv, timing.csv, summary.json and the
`agent explain` heat maps in explain/; writes PNG figures and tables.md (every table of the report,
regenerated from the data) into the same folder. Also recomputes the drift Spearman coefficients
with scipy.stats.spearmanr from the per-sample data as an independent check of the Rust values
(drift_spearman_check.csv).

Needs numpy, scipy and matplotlib (scripts/reproduce.sh provides them); nothing in the test suite
imports this file.
"""

import argparse
import csv
import gzip
import json
import math
import os
from collections import defaultdict

import numpy as np
from scipy import stats

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DPI = 90


def read_csv(path):
    """A CSV file, or its gzip-compressed form PATH.gz when only that exists."""
    if not os.path.exists(path) and os.path.exists(path + ".gz"):
        with gzip.open(path + ".gz", "rt", newline="") as f:
            return list(csv.DictReader(f))
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def fnum(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def fmt(v, digits=3):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, str):
        return v
    if v == 0:
        return "0"
    if v != 0 and abs(v) < 10 ** (-digits):
        return f"{v:.1e}"
    return f"{v:.{digits}f}"


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    size = os.path.getsize(path)
    print(f"wrote {path} ({size // 1024} KiB)")
    if size > 300 * 1024:
        raise SystemExit(f"{path} is larger than 300 KB")


# --------------------------------------------------------------------------------------------
# Drift
# --------------------------------------------------------------------------------------------

def drift(data, md):
    d = json.load(open(os.path.join(data, "drift.json")))
    rows = read_csv(os.path.join(data, "drift_samples.csv"))
    lambdas = [float(k[4:]) for k in rows[0] if k.startswith("rel_")]
    series = defaultdict(lambda: [[] for _ in lambdas])  # (estimator, layer, method) -> per λ values
    for r in rows:
        key = (r["estimator"], r["layer"], r["method"])
        for i, lam in enumerate(lambdas):
            v = fnum(r[f"rel_{lam:.1f}"])
            if not math.isnan(v):
                series[key][i].append(v)

    # scipy cross-check of the Rust Spearman values.
    check = []
    for res in d["results"]:
        key = (res["estimator"], res["layer"], res["method"])
        if key not in series:
            continue
        lam = np.concatenate([[l] * len(v) for l, v in zip(lambdas, series[key])])
        rel = np.concatenate([np.array(v) for v in series[key]])
        rho = stats.spearmanr(lam, rel).statistic
        keep = lam > 0
        rho_nz = stats.spearmanr(lam[keep], rel[keep]).statistic
        check.append([*key, res["spearman"], rho, res["spearman_without_lambda0"], rho_nz])
    with open(os.path.join(data, "drift_spearman_check.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["estimator", "layer", "method", "spearman_rust", "spearman_scipy",
                    "spearman_without_lambda0_rust", "spearman_without_lambda0_scipy"])
        w.writerows(check)
    worst = max(max(abs(c[3] - c[4]), abs(c[5] - c[6])) for c in check)
    print(f"drift: Rust vs scipy Spearman, max |difference| = {worst:.2e}")

    md.append("## Drift (§4.4)\n")
    md.append(f"{d['n_samples']} reference digits, trained encoder. {d['drift']}. Spearman: "
              f"{d['spearman_computed_in']}; largest |Rust − scipy| = {worst:.1e}.\n")
    hdr = ["estimator", "layer", "method", "NS(x) mean", "NS_bench", "Spearman (λ = 0…0.9)",
           "Spearman (λ > 0)", "mean rel. change λ=0.5", "mean rel. change λ=0.9",
           "median λ=0.9", "share < 0 at λ=0.9"]
    trs = []
    for res in d["results"]:
        if "per_lambda" not in res:
            trs.append([res["estimator"], res["layer"], res["method"], fmt(res["ns_clean_mean"]),
                        fmt(res["noise_benchmark"]), "undefined (NS = 0)", "", "", "", "", ""])
            continue
        pl = {round(p["lambda"], 1): p for p in res["per_lambda"]}
        trs.append([res["estimator"], res["layer"], res["method"], fmt(res["ns_clean_mean"]),
                    fmt(res["noise_benchmark"]), fmt(res["spearman"]),
                    fmt(res["spearman_without_lambda0"]), fmt(pl[0.5]["mean"]),
                    fmt(pl[0.9]["mean"]), fmt(pl[0.9]["median"]), fmt(pl[0.9]["frac_negative"], 2)])
    md.append(table(hdr, trs))
    md.append("\nSeconds per estimator (clean + 10 drift levels): "
              + ", ".join(f"{k} {v:.0f} s" for k, v in d["seconds_per_estimator"].items()) + ".\n")

    # Boxplots: rows = estimators (plain, main smoothed), columns = (layer, method).
    estimators = [e for e in dict.fromkeys(k[0] for k in series) if "seed" not in e]
    panels = [k for k in dict.fromkeys((k[1], k[2]) for k in series)]
    fig, axes = plt.subplots(len(estimators), len(panels), figsize=(4.2 * len(panels), 3.2 * len(estimators)),
                             squeeze=False, sharey="row")
    rho = {(r["estimator"], r["layer"], r["method"]): r.get("spearman") for r in d["results"]}
    for i, est in enumerate(estimators):
        for j, (layer, method) in enumerate(panels):
            ax = axes[i][j]
            vals = series.get((est, layer, method))
            if vals is None:
                ax.set_axis_off()
                continue
            ax.boxplot(vals, positions=range(len(lambdas)), widths=0.6, showfliers=False)
            ax.plot(range(len(lambdas)), [np.mean(v) for v in vals], "o-", color="tab:red", ms=3,
                    label="mean")
            ax.axhline(0, color="grey", lw=0.8)
            ax.set_xticks(range(len(lambdas)), [f"{l:.1f}" for l in lambdas], fontsize=7)
            ax.set_title(f"{est}: {layer} {method}\nSpearman {rho[(est, layer, method)]:+.2f}", fontsize=9)
            if j == 0:
                ax.set_ylabel("(NS(x) − NS(x_λ)) / NS(x)")
            if i == len(estimators) - 1:
                ax.set_xlabel("λ")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Relative noise-score change under drift, digit encoder (whiskers 1.5 IQR, no fliers)", fontsize=10)
    save(fig, os.path.join(data, "drift_boxplots.png"))

    # Mean relative change per λ, every estimator (incl. the S = 16 seeds).
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    for j, (layer, method) in enumerate(panels):
        ax = axes[0][j]
        for est in dict.fromkeys(k[0] for k in series):
            vals = series.get((est, layer, method))
            if vals:
                ax.plot(lambdas, [np.mean(v) for v in vals], marker="o", ms=3, label=est,
                        ls="--" if "seed" in est else "-")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_title(f"{layer} {method}", fontsize=9)
        ax.set_xlabel("λ")
        if j == 0:
            ax.set_ylabel("mean relative NS change")
    axes[0][-1].legend(fontsize=7)
    save(fig, os.path.join(data, "drift_means.png"))


# --------------------------------------------------------------------------------------------
# Score curves
# --------------------------------------------------------------------------------------------

METHODS = ["vanilla", "actgrad", "gradcam"]


def curves(data, md):
    rows = read_csv(os.path.join(data, "curves.csv"))
    by = defaultdict(list)
    for r in rows:
        by[(r["model"], r["weights"])].append(r)
    models = list(dict.fromkeys(r["model"] for r in rows))

    def series(model, weights, method, field):
        rs = sorted((r for r in by[(model, weights)] if r["method"] == method), key=lambda r: int(r["layer_index"]))
        return [r["layer"] for r in rs], [fnum(r[field]) for r in rs], [fnum(r.get(field.replace("mean", "std"), "nan")) for r in rs]

    # Noise-score curves, digit encoder trained vs untrained with both benchmarks.
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, method in zip(axes, METHODS):
        for weights, color in [("trained", "tab:blue"), ("untrained", "tab:orange")]:
            layers, ns, sd = series("digits", weights, method, "ns_mean")
            _, bench, _ = series("digits", weights, method, "ns_bench")
            x = range(len(layers))
            ax.errorbar(x, ns, yerr=sd, fmt="o-", color=color, capsize=3, label=f"{weights} NS")
            ax.plot(x, bench, "s--", color=color, alpha=0.7, label=f"benchmark ({weights})")
            ax.set_xticks(list(x), layers)
        ax.set_title(f"digit encoder, {method}", fontsize=10)
        ax.set_ylim(bottom=0)
    axes[0].set_ylabel("noise score (mean ± sd)")
    axes[-1].legend(fontsize=7)
    save(fig, os.path.join(data, "ns_curves_digits.png"))

    # Random-weight models against their benchmark.
    random_models = [m for m in models if m != "digits"]
    if random_models:
        fig, axes = plt.subplots(len(random_models), 3, figsize=(12, 3.3 * len(random_models)), squeeze=False)
        for i, model in enumerate(random_models):
            for j, method in enumerate(METHODS):
                ax = axes[i][j]
                layers, ns, sd = series(model, "random", method, "ns_mean")
                _, bench, _ = series(model, "random", method, "ns_bench")
                x = range(len(layers))
                ax.errorbar(x, ns, yerr=sd, fmt="o-", capsize=3, label="random-weight NS")
                ax.plot(x, bench, "s--", label="benchmark")
                ax.set_xticks(list(x), layers, fontsize=8)
                ax.set_ylim(bottom=0)
                ax.set_title(f"{model} (random weights), {method}", fontsize=9)
        axes[0][0].set_ylabel("noise score")
        axes[0][-1].legend(fontsize=7)
        save(fig, os.path.join(data, "ns_curves_random.png"))

    # Variance-score curves against the Popoviciu bound.
    fig, axes = plt.subplots(2, len(models), figsize=(3.6 * len(models), 6.2), squeeze=False, sharey="row")
    for row, (field, label) in enumerate([("vs_mean", "VS"), ("vs_bin_mean", "VS, binarised at 0.5")]):
        for j, model in enumerate(models):
            ax = axes[row][j]
            for weights in [w for (m, w) in by if m == model]:
                for method, marker in zip(METHODS, "osd"):
                    layers, vs, _ = series(model, weights, method, field)
                    ax.plot(range(len(layers)), vs, marker + ("-" if weights != "untrained" else ":"),
                            label=f"{weights} {method}")
                ax.set_xticks(range(len(layers)), layers, fontsize=7)
            ax.axhline(0.25, color="black", lw=1, ls="--", label="bound 1/4")
            ax.set_ylim(0, 0.27)
            ax.set_title(f"{model}: {label}", fontsize=9)
            ax.legend(fontsize=6)
    save(fig, os.path.join(data, "vs_curves.png"))

    md.append("## Score curves (§4.1, §4.3)\n")
    md.append("Mean over the inputs (± sd for NS); `NS_bench` is the model's own noise benchmark; "
              "`VS_bin` binarises the normalised maps at 0.5 (paper Fig. 5). Bound: VS ≤ 1/4.\n")
    hdr = ["model", "weights", "layer", "method", "n", "NS mean", "NS sd", "NS_bench", "NS / NS_bench",
           "VS", "VS / (1/4)", "VS_bin", "VS_bin / (1/4)"]
    trs = []
    for r in rows:
        ns, bench, vs, vb = fnum(r["ns_mean"]), fnum(r["ns_bench"]), fnum(r["vs_mean"]), fnum(r["vs_bin_mean"])
        trs.append([r["model"], r["weights"], r["layer"], r["method"], r["n"], fmt(ns), fmt(fnum(r["ns_std"])),
                    fmt(bench), fmt(ns / bench if bench > 0 else math.nan, 2), fmt(vs), fmt(vs / 0.25, 2),
                    fmt(vb), fmt(vb / 0.25, 2)])
    md.append(table(hdr, trs))


# --------------------------------------------------------------------------------------------
# Estimators
# --------------------------------------------------------------------------------------------

def estimators(data, md, summary):
    rows = read_csv(os.path.join(data, "estimators.csv"))
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(len(models), 3, figsize=(13, 3.4 * len(models)), squeeze=False)
    for i, model in enumerate(models):
        rs = [r for r in rows if r["model"] == model]
        for j, (est, qty, title) in enumerate([
            ("subset", "NS", "subset estimator: NS, mean |error|"),
            ("subset", "VS", "subset estimator: VS, mean relative error"),
            ("hutchinson", "var_map_pixel", "Hutchinson: per-pixel variance, mean rel. error"),
        ]):
            ax = axes[i][j]
            field = "mean_abs_err" if qty == "NS" else "mean_rel_err"
            keys = list(dict.fromkeys((r["layer"], r["method"]) for r in rs if r["estimator"] == est and r["quantity"] == qty))
            for layer, method in keys:
                pts = sorted((int(r["k"]), fnum(r[field])) for r in rs
                             if r["estimator"] == est and r["quantity"] == qty and r["layer"] == layer and r["method"] == method)
                if all(math.isnan(p[1]) for p in pts):
                    continue
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=3, label=f"{layer} {method}")
            if est == "hutchinson":
                k = np.array([4, 8, 16, 32, 64, 128])
                ax.plot(k, np.sqrt(2 / k), "k:", label="√(2/K)")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("K (components or probes)")
            ax.set_title(f"{model}: {title}", fontsize=9)
            ax.legend(fontsize=6)
    save(fig, os.path.join(data, "estimator_errors.png"))

    md.append("## Estimator errors (docs/spec/scores.md#cost)\n")
    for model in models:
        info = summary.get("digit_estimators" if model == "digits" else model, {})
        md.append(f"### {model}\n")
        agree = {k: v for k, v in info.items() if k.startswith("engine_agreement")}
        for k, v in agree.items():
            md.append(f"- `{k}`: max |ΔNS| = {fmt(v['max_abs_diff_ns'], 6)}, max |ΔVS| = "
                      f"{fmt(v['max_abs_diff_vs'], 6)}, max |Δbench| = {fmt(v['max_abs_diff_bench'], 6)} "
                      f"over {v['samples']} input(s) (emulation from exact maps vs `Engine::score_batch`).\n")
        hdr = ["layer", "method", "estimator", "K", "quantity", "n", "mean |err|", "mean rel. err",
               "mean signed rel. err", "exact mean", "max |err|"]
        trs = [[r["layer"], r["method"], r["estimator"], r["k"], r["quantity"], r["n"], fmt(fnum(r["mean_abs_err"]), 4),
                fmt(fnum(r["mean_rel_err"])), fmt(fnum(r["mean_signed_rel_err"])), fmt(fnum(r["exact_mean"]), 4),
                fmt(fnum(r["max_abs_err"]), 4)] for r in rows if r["model"] == model]
        md.append(table(hdr, trs))


def timing(data, md):
    rows = read_csv(os.path.join(data, "timing.csv"))
    md.append("## Timing\n")
    md.append("Wall time on a shared 2-core machine (see the load average above) and CPU time (user + "
              "system, every thread of the process; 2 ONNX Runtime threads).\n")
    hdr = ["model", "configuration", "what", "n", "batch", "wall s", "wall ms per sample", "CPU s",
           "CPU ms per sample"]
    md.append(table(hdr, [[r["model"], r["config"], r["what"], r["n"], r["batch"], fmt(fnum(r["seconds"]), 3),
                           fmt(fnum(r["per_sample_ms"]), 1), fmt(fnum(r["cpu_seconds"]), 2),
                           fmt(fnum(r["cpu_per_sample_ms"]), 1)] for r in rows]))


def explain(data, md):
    folder = os.path.join(data, "explain")
    if not os.path.isdir(folder):
        return
    files = sorted(f for f in os.listdir(folder) if f.endswith(".png"))
    if not files:
        return
    pairs = list(dict.fromkeys(f.split("_digit")[0] for f in files))
    digits = list(dict.fromkeys(f.split("_digit")[1][:-4] for f in files))
    fig, axes = plt.subplots(len(digits), len(pairs), figsize=(4.0 * len(pairs), 4.0 * len(digits)), squeeze=False)
    for i, dg in enumerate(digits):
        for j, pair in enumerate(pairs):
            ax = axes[i][j]
            path = os.path.join(folder, f"{pair}_digit{dg}.png")
            ax.set_axis_off()
            if os.path.exists(path):
                ax.imshow(plt.imread(path), interpolation="nearest")
                ax.set_title(f"sample {dg}: φ_C/φ_E = {pair.replace('_', '/')}", fontsize=9)
    fig.suptitle("agent explain, digit encoder (columns: input, conv2_in, block2_out; rows: vanilla, actgrad, gradcam)",
                 fontsize=10)
    save(fig, os.path.join(data, "explain_grid.png"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default="docs/reproduction")
    a = ap.parse_args()
    summary = json.load(open(os.path.join(a.data, "summary.json")))
    md = ["# Reproduction tables (generated by tools/plot_reproduction.py; do not edit)\n",
          f"Run: commit {summary['run'].get('commit')}, {summary['run'].get('cpus')} CPUs, "
          f"{summary['run'].get('threads')} ONNX Runtime threads, load average at start "
          f"{summary['run'].get('loadavg')}, at end {summary['run_end'].get('loadavg')}, "
          f"{summary['run_end'].get('elapsed_s', 0):.0f} s in all.\n"]
    drift(a.data, md)
    curves(a.data, md)
    estimators(a.data, md, summary)
    timing(a.data, md)
    explain(a.data, md)
    with open(os.path.join(a.data, "tables.md"), "w") as f:
        f.write("\n".join(md))
    print(f"wrote {os.path.join(a.data, 'tables.md')}")


if __name__ == "__main__":
    main()
