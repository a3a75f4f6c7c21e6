#!/usr/bin/env python3
"""Table and figures of docs/DRIFT_SIGNALS.md from what `cargo run --release -p agent --example
drift_signals` writes (first_fire.csv, power.csv, summary.json).

    .venv/bin/python tools/plot_drift_signals.py [--data docs/drift_signals]

Writes into the same folder: first_fire.png (samples until each signal fires, per shift), power.png
(detection rate against window size for the embedding detectors and each kind of paper signal at its
best layer/method) and table.md (the first-fire table in Markdown). Needs numpy and matplotlib;
nothing in the test suite imports this file.
"""

import argparse
import csv
import os
from collections import defaultdict

import numpy as np

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DPI = 90


def shift_label(row):
    return f"{row['shift']} ({row['severity']})"


def as_number(v, cap):
    return cap * 1.5 if v.startswith(">") else float(v)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="docs/drift_signals")
    a = ap.parse_args()
    with open(os.path.join(a.data, "first_fire.csv"), newline="") as f:
        first = list(csv.DictReader(f))
    with open(os.path.join(a.data, "power.csv"), newline="") as f:
        power = list(csv.DictReader(f))
    shifts = list(dict.fromkeys(shift_label(r) for r in first))
    signals = list(dict.fromkeys(r["signal"] for r in first))
    cap = max(int(r["n"]) for r in power)
    grid = np.zeros((len(signals), len(shifts)))
    text = [["" for _ in shifts] for _ in signals]
    for r in first:
        i, j = signals.index(r["signal"]), shifts.index(shift_label(r))
        grid[i, j] = as_number(r["samples_until_fire"], cap)
        text[i][j] = r["samples_until_fire"]

    fig, ax = plt.subplots(figsize=(1.1 * len(shifts) + 4, 0.33 * len(signals) + 2))
    im = ax.imshow(np.log10(grid), cmap="viridis_r", aspect="auto")
    ax.set_xticks(range(len(shifts)), shifts, rotation=35, ha="right")
    ax.set_yticks(range(len(signals)), signals)
    for i in range(len(signals)):
        for j in range(len(shifts)):
            ax.text(j, i, text[i][j], ha="center", va="center", fontsize=7,
                    color="black" if grid[i, j] < 60 else "white")
    ax.set_title("Samples until the signal fires on half the drifted windows (1 % false alarms)")
    cb = fig.colorbar(im, ax=ax, fraction=0.03)
    cb.set_label("log10 samples")
    fig.tight_layout()
    fig.savefig(os.path.join(a.data, "first_fire.png"), dpi=DPI)
    plt.close(fig)

    # Power curves: each embedding detector, and per paper-signal kind the best layer/method.
    by = defaultdict(dict)  # (shift, signal) -> {n: power}
    for r in power:
        by[(shift_label(r), r["signal"])][int(r["n"])] = float(r["power"])
    kinds = ["NS KS", "|ΔNS|", "VS KS", "|ΔVS|"]
    embedding = [s for s in signals if s.startswith("embedding_")]
    cols = 4
    rows = (len(shifts) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), sharex=True, sharey=True)
    for ax, sh in zip(axes.flat, shifts):
        for s in embedding:
            curve = by[(sh, s)]
            ns = sorted(curve)
            ax.plot(ns, [curve[n] for n in ns], "-o", ms=3, label=s.replace("embedding_", "emb. "))
        for k in kinds:
            cands = [s for s in signals if s.startswith(k + " ")]
            best = max(cands, key=lambda s: sum(by[(sh, s)].values()))
            curve = by[(sh, best)]
            ns = sorted(curve)
            ax.plot(ns, [curve[n] for n in ns], "--s", ms=3, label=f"{k} (best: {best[len(k) + 1:]})")
        ax.axhline(0.5, color="grey", lw=0.5)
        ax.set_xscale("log")
        ax.set_title(sh, fontsize=9)
        ax.legend(fontsize=5.5, loc="lower right")
    for ax in axes.flat[len(shifts):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("window (samples)")
    for ax in axes[:, 0]:
        ax.set_ylabel("detection rate")
    fig.tight_layout()
    fig.savefig(os.path.join(a.data, "power.png"), dpi=DPI)
    plt.close(fig)

    lines = ["| signal | " + " | ".join(shifts) + " |", "|---|" + "---|" * len(shifts)]
    for i, s in enumerate(signals):
        lines.append(f"| {s.replace('|', chr(92) + '|')} | " + " | ".join(text[i]) + " |")
    with open(os.path.join(a.data, "table.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("wrote first_fire.png, power.png, table.md in", a.data)


if __name__ == "__main__":
    main()
