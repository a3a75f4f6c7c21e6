#!/usr/bin/env python3
"""Train the demo digit encoder (numpy only) and export it as ONNX.

Data: scikit-learn's bundled 8x8 digits, scaled to [0, 1] and upscaled bilinearly to 28x28.
Model (the paper's MNIST autoencoder, small): encoder
    Conv(1->8, 3x3, pad 1) -> BatchNorm -> ReLU -> MaxPool 2
    Conv(8->16, 3x3, pad 1) -> BatchNorm -> ReLU -> MaxPool 2 -> Flatten -> Linear(784 -> 32)
plus, for training only, a decoder Linear(32->256) -> ReLU -> Linear(256->784) -> Sigmoid and a
10-class linear head on the 32-dimensional embedding (the paper's section 4.5 setup).
Loss: REC_WEIGHT * MSE(reconstruction, input) + cross-entropy(head). Adam, manual backprop,
im2col convolutions.

Only the encoder is exported (BatchNorm folded into the convolutions, as PyTorch's exporter does in
eval mode), together with its untrained twin (same initialisation, identity BatchNorm statistics).

Usage:
    python tools/train_digits.py                 # train and write models/digits/
    python tools/train_digits.py --check-grad    # numerical gradient check of the backprop, no output
"""

import os

# One BLAS thread: keeps training on one core and makes every matmul reproducible bit for bit.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import pathlib  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

SEED = 20240611
SIZE = 28
EMBED_DIM = 32
C1, C2 = 8, 16
DEC_HIDDEN = 256
N_CLASSES = 10
BN_EPS = 1e-5
BN_MOMENTUM = 0.1
REC_WEIGHT = 10.0
N_REFERENCE = 256
N_STREAM = 256

PARAM_SHAPES = {
    "conv1.weight": (C1, 1, 3, 3),
    "conv1.bias": (C1,),
    "bn1.weight": (C1,),
    "bn1.bias": (C1,),
    "conv2.weight": (C2, C1, 3, 3),
    "conv2.bias": (C2,),
    "bn2.weight": (C2,),
    "bn2.bias": (C2,),
    "fc.weight": (EMBED_DIM, C2 * (SIZE // 4) ** 2),
    "fc.bias": (EMBED_DIM,),
    "head.weight": (N_CLASSES, EMBED_DIM),
    "head.bias": (N_CLASSES,),
    "dec1.weight": (DEC_HIDDEN, EMBED_DIM),
    "dec1.bias": (DEC_HIDDEN,),
    "dec2.weight": (SIZE * SIZE, DEC_HIDDEN),
    "dec2.bias": (SIZE * SIZE,),
}


# ----------------------------------------------------------------------------------------------
# Data


def bilinear_matrix(n_in, n_out):
    """Row-interpolation matrix R (n_out x n_in): half-pixel centres, edges clamped."""
    r = np.zeros((n_out, n_in), dtype=np.float64)
    scale = n_in / n_out
    for i in range(n_out):
        src = (i + 0.5) * scale - 0.5
        src = min(max(src, 0.0), n_in - 1.0)
        lo = int(np.floor(src))
        hi = min(lo + 1, n_in - 1)
        frac = src - lo
        r[i, lo] += 1.0 - frac
        r[i, hi] += frac
    return r


def load_data(seed):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    small = digits.images.astype(np.float64) / 16.0  # [N, 8, 8] in [0, 1]
    r = bilinear_matrix(8, SIZE)
    big = np.einsum("ij,njk,lk->nil", r, small, r)
    x = np.clip(big, 0.0, 1.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    idx = np.arange(len(y))
    n_heldout = N_REFERENCE + N_STREAM
    train_idx, held_idx = train_test_split(
        idx, test_size=n_heldout, stratify=y, random_state=seed
    )
    ref_idx, stream_idx = train_test_split(
        held_idx, test_size=N_STREAM, stratify=y[held_idx], random_state=seed + 1
    )
    return x, y, np.sort(train_idx), np.sort(ref_idx), np.sort(stream_idx)


# ----------------------------------------------------------------------------------------------
# Parameters


def init_params(seed, dtype=np.float32):
    """PyTorch-style default initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in)); BatchNorm 1/0."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in PARAM_SHAPES.items():
        if name.startswith("bn"):
            params[name] = (np.ones if name.endswith("weight") else np.zeros)(shape)
            continue
        layer = name.split(".")[0]
        w_shape = PARAM_SHAPES[layer + ".weight"]
        fan_in = int(np.prod(w_shape[1:]))
        bound = 1.0 / np.sqrt(fan_in)
        params[name] = rng.uniform(-bound, bound, size=shape)
    params = {k: v.astype(dtype) for k, v in params.items()}
    buffers = {
        "bn1.running_mean": np.zeros(C1, dtype),
        "bn1.running_var": np.ones(C1, dtype),
        "bn2.running_mean": np.zeros(C2, dtype),
        "bn2.running_var": np.ones(C2, dtype),
    }
    return params, buffers


# ----------------------------------------------------------------------------------------------
# Layers: forward returns (output, cache); backward takes (grad_output, cache)


def conv3x3_forward(x, w, b):
    n, c, h, wd = x.shape
    o = w.shape[0]
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    cols = np.empty((c, 3, 3, n, h, wd), dtype=x.dtype)
    for ky in range(3):
        for kx in range(3):
            cols[:, ky, kx] = xp[:, :, ky : ky + h, kx : kx + wd].transpose(1, 0, 2, 3)
    cols = cols.reshape(c * 9, n * h * wd)
    out = (w.reshape(o, -1) @ cols).reshape(o, n, h, wd).transpose(1, 0, 2, 3)
    out = out + b[None, :, None, None]
    return np.ascontiguousarray(out), (cols, x.shape)


def conv3x3_backward(dout, w, cache, need_dx=True):
    cols, (n, c, h, wd) = cache
    o = w.shape[0]
    d = dout.transpose(1, 0, 2, 3).reshape(o, -1)
    dw = (d @ cols.T).reshape(w.shape)
    db = d.sum(axis=1)
    if not need_dx:
        return None, dw, db
    dcols = (w.reshape(o, -1).T @ d).reshape(c, 3, 3, n, h, wd)
    dxp = np.zeros((n, c, h + 2, wd + 2), dtype=dout.dtype)
    for ky in range(3):
        for kx in range(3):
            dxp[:, :, ky : ky + h, kx : kx + wd] += dcols[:, ky, kx].transpose(1, 0, 2, 3)
    return dxp[:, :, 1:-1, 1:-1], dw, db


def batchnorm_forward(x, gamma, beta, train, running_mean, running_var):
    """Returns (y, cache, batch_mean, batch_var); batch statistics only when train."""
    if train:
        mu = x.mean(axis=(0, 2, 3))
        xc = x - mu[None, :, None, None]
        var = (xc * xc).mean(axis=(0, 2, 3))
    else:
        mu, var = running_mean, running_var
        xc = x - mu[None, :, None, None]
    inv = 1.0 / np.sqrt(var + BN_EPS)
    xhat = xc * inv[None, :, None, None]
    y = gamma[None, :, None, None] * xhat + beta[None, :, None, None]
    return y, (xhat, inv, gamma), mu, var


def batchnorm_backward(dy, cache):
    """Backward of training-mode BatchNorm (batch statistics)."""
    xhat, inv, gamma = cache
    m = dy.shape[0] * dy.shape[2] * dy.shape[3]
    dbeta = dy.sum(axis=(0, 2, 3))
    dgamma = (dy * xhat).sum(axis=(0, 2, 3))
    dxhat = dy * gamma[None, :, None, None]
    s1 = dxhat.sum(axis=(0, 2, 3))[None, :, None, None]
    s2 = (dxhat * xhat).sum(axis=(0, 2, 3))[None, :, None, None]
    dx = (inv[None, :, None, None] / m) * (m * dxhat - s1 - xhat * s2)
    return dx, dgamma, dbeta


def maxpool2_forward(x):
    n, c, h, w = x.shape
    win = x.reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5)
    win = win.reshape(n, c, h // 2, w // 2, 4)
    arg = win.argmax(axis=-1)  # first maximum in row-major window order
    out = np.take_along_axis(win, arg[..., None], axis=-1)[..., 0]
    return out, (arg, x.shape)


def maxpool2_backward(dout, cache):
    arg, (n, c, h, w) = cache
    dwin = np.zeros((n, c, h // 2, w // 2, 4), dtype=dout.dtype)
    np.put_along_axis(dwin, arg[..., None], dout[..., None], axis=-1)
    dwin = dwin.reshape(n, c, h // 2, w // 2, 2, 2).transpose(0, 1, 2, 4, 3, 5)
    return dwin.reshape(n, c, h, w)


def sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))


# ----------------------------------------------------------------------------------------------
# Model


def encoder_forward(p, buffers, x, train):
    """Returns (embedding, caches, batch statistics per BatchNorm)."""
    cache, stats = {}, {}
    h, cache["conv1"] = conv3x3_forward(x, p["conv1.weight"], p["conv1.bias"])
    h, cache["bn1"], stats["bn1.mean"], stats["bn1.var"] = batchnorm_forward(
        h, p["bn1.weight"], p["bn1.bias"], train,
        buffers["bn1.running_mean"], buffers["bn1.running_var"],
    )
    cache["relu1"] = h > 0
    h = h * cache["relu1"]
    h, cache["pool1"] = maxpool2_forward(h)
    h, cache["conv2"] = conv3x3_forward(h, p["conv2.weight"], p["conv2.bias"])
    h, cache["bn2"], stats["bn2.mean"], stats["bn2.var"] = batchnorm_forward(
        h, p["bn2.weight"], p["bn2.bias"], train,
        buffers["bn2.running_mean"], buffers["bn2.running_var"],
    )
    cache["relu2"] = h > 0
    h = h * cache["relu2"]
    h, cache["pool2"] = maxpool2_forward(h)
    cache["flat_shape"] = h.shape
    flat = h.reshape(h.shape[0], -1)
    cache["flat"] = flat
    z = flat @ p["fc.weight"].T + p["fc.bias"]
    return z, cache, stats


def encoder_backward(p, dz, cache, grads):
    grads["fc.weight"] = dz.T @ cache["flat"]
    grads["fc.bias"] = dz.sum(axis=0)
    dh = (dz @ p["fc.weight"]).reshape(cache["flat_shape"])
    dh = maxpool2_backward(dh, cache["pool2"])
    dh = dh * cache["relu2"]
    dh, grads["bn2.weight"], grads["bn2.bias"] = batchnorm_backward(dh, cache["bn2"])
    dh, grads["conv2.weight"], grads["conv2.bias"] = conv3x3_backward(
        dh, p["conv2.weight"], cache["conv2"]
    )
    dh = maxpool2_backward(dh, cache["pool1"])
    dh = dh * cache["relu1"]
    dh, grads["bn1.weight"], grads["bn1.bias"] = batchnorm_backward(dh, cache["bn1"])
    _, grads["conv1.weight"], grads["conv1.bias"] = conv3x3_backward(
        dh, p["conv1.weight"], cache["conv1"], need_dx=False
    )


def loss_and_grads(p, buffers, x, y, train=True, need_grads=True):
    """Full model (encoder + head + decoder). Returns (loss, mse, ce, logits, grads, bn stats)."""
    n = x.shape[0]
    z, enc_cache, stats = encoder_forward(p, buffers, x, train)
    logits = z @ p["head.weight"].T + p["head.bias"]
    shifted = logits - logits.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    ce = -logp[np.arange(n), y].mean()
    a1 = z @ p["dec1.weight"].T + p["dec1.bias"]
    h1 = np.maximum(a1, 0)
    a2 = h1 @ p["dec2.weight"].T + p["dec2.bias"]
    recon = sigmoid(a2)
    target = x.reshape(n, -1)
    diff = recon - target
    mse = (diff * diff).mean()
    loss = REC_WEIGHT * mse + ce
    if not need_grads:
        return loss, mse, ce, logits, None, stats
    grads = {}
    dlogits = np.exp(logp)
    dlogits[np.arange(n), y] -= 1.0
    dlogits /= n
    grads["head.weight"] = dlogits.T @ z
    grads["head.bias"] = dlogits.sum(axis=0)
    da2 = (REC_WEIGHT * 2.0 / diff.size) * diff * recon * (1.0 - recon)
    grads["dec2.weight"] = da2.T @ h1
    grads["dec2.bias"] = da2.sum(axis=0)
    da1 = (da2 @ p["dec2.weight"]) * (a1 > 0)
    grads["dec1.weight"] = da1.T @ z
    grads["dec1.bias"] = da1.sum(axis=0)
    dz = dlogits @ p["head.weight"] + da1 @ p["dec1.weight"]
    encoder_backward(p, dz, enc_cache, grads)
    grads = {k: g.astype(p[k].dtype) for k, g in grads.items()}
    return loss, mse, ce, logits, grads, stats


# ----------------------------------------------------------------------------------------------
# Gradient check


def check_grad(seed):
    """Central differences in float64 on a small batch against the analytic gradient."""
    x, y, train_idx, _, _ = load_data(seed)
    rng = np.random.default_rng(seed + 7)
    pick = rng.choice(train_idx, size=6, replace=False)
    xb = x[pick].astype(np.float64)
    yb = y[pick]
    p, buffers = init_params(seed, np.float64)
    # Move BatchNorm's affine parameters off 1/0 so that their gradients are exercised generically.
    for k in ("bn1.weight", "bn1.bias", "bn2.weight", "bn2.bias"):
        p[k] = p[k] + rng.uniform(-0.3, 0.3, size=p[k].shape)
    _, _, _, _, grads, _ = loss_and_grads(p, buffers, xb, yb)
    eps = 1e-6
    worst = 0.0
    ok = True
    for name in PARAM_SHAPES:
        flat = p[name].reshape(-1)
        gflat = grads[name].reshape(-1)
        k = min(12, flat.size)
        idxs = rng.choice(flat.size, size=k, replace=False)
        num = np.empty(k)
        for t, i in enumerate(idxs):
            old = flat[i]
            flat[i] = old + eps
            lp = loss_and_grads(p, buffers, xb, yb, need_grads=False)[0]
            flat[i] = old - eps
            lm = loss_and_grads(p, buffers, xb, yb, need_grads=False)[0]
            flat[i] = old
            num[t] = (lp - lm) / (2 * eps)
        ana = gflat[idxs]
        absdiff = np.abs(num - ana)
        rel = absdiff / np.maximum(np.abs(num) + np.abs(ana), 1e-12)
        # allclose-style: relative tolerance 1e-5, absolute 1e-8 (central differences in float64
        # carry ~1e-10 of rounding noise; the convolution biases feed training-mode BatchNorm, so
        # their true gradient is exactly 0 and only the absolute tolerance can apply to them).
        good = bool(np.all(absdiff <= 1e-5 * np.abs(num) + 1e-8))
        worst = max(worst, float(np.max(np.where(np.abs(num) > 1e-6, rel, 0.0))))
        ok &= good
        print(f"{name:14s} {k:3d} entries  max |grad| {np.abs(ana).max():.2e}  "
              f"max abs err {absdiff.max():.1e}  max rel err {rel.max():.1e}  "
              f"{'ok' if good else 'MISMATCH'}")
    print(f"worst relative error where |grad| > 1e-6: {worst:.2e}: {'PASS' if ok else 'FAIL'}")
    return ok


# ----------------------------------------------------------------------------------------------
# Training


def train(p, buffers, x, y, epochs, batch, lr, seed, log):
    rng = np.random.default_rng(seed + 2)
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(v) for k, v in p.items()}
    b1, b2, eps = 0.9, 0.999, 1e-8
    step = 0
    n = x.shape[0]
    for epoch in range(epochs):
        order = rng.permutation(n)
        tot_loss = tot_mse = tot_ce = 0.0
        seen = 0
        for start in range(0, n - batch + 1, batch):  # drop the last partial batch
            idx = order[start : start + batch]
            loss, mse, ce, _, grads, stats = loss_and_grads(p, buffers, x[idx], y[idx])
            step += 1
            for k in p:
                m[k] = b1 * m[k] + (1 - b1) * grads[k]
                v[k] = b2 * v[k] + (1 - b2) * grads[k] * grads[k]
                mhat = m[k] / (1 - b1**step)
                vhat = v[k] / (1 - b2**step)
                p[k] = (p[k] - lr * mhat / (np.sqrt(vhat) + eps)).astype(p[k].dtype)
            for bn in ("bn1", "bn2"):
                cnt = batch * (SIZE * SIZE if bn == "bn1" else (SIZE // 2) ** 2)
                unbiased = stats[bn + ".var"] * cnt / (cnt - 1)
                rm, rv = bn + ".running_mean", bn + ".running_var"
                buffers[rm] = ((1 - BN_MOMENTUM) * buffers[rm] + BN_MOMENTUM * stats[bn + ".mean"]).astype(buffers[rm].dtype)
                buffers[rv] = ((1 - BN_MOMENTUM) * buffers[rv] + BN_MOMENTUM * unbiased).astype(buffers[rv].dtype)
            tot_loss += loss * len(idx)
            tot_mse += mse * len(idx)
            tot_ce += ce * len(idx)
            seen += len(idx)
        log(f"epoch {epoch + 1:2d}: loss {tot_loss / seen:.4f}  mse {tot_mse / seen:.4f}  ce {tot_ce / seen:.4f}")


def evaluate(p, buffers, x, y):
    _, mse, ce, logits, _, _ = loss_and_grads(p, buffers, x, y, train=False, need_grads=False)
    acc = float((logits.argmax(axis=1) == y).mean())
    return acc, float(mse), float(ce)


# ----------------------------------------------------------------------------------------------
# Export


def fold_bn(p, buffers):
    """Encoder weights with eval-mode BatchNorm folded into the convolutions, float32."""
    out = {}
    for conv, bn in (("conv1", "bn1"), ("conv2", "bn2")):
        w = p[conv + ".weight"].astype(np.float64)
        b = p[conv + ".bias"].astype(np.float64)
        scale = p[bn + ".weight"].astype(np.float64) / np.sqrt(
            buffers[bn + ".running_var"].astype(np.float64) + BN_EPS
        )
        out[conv + ".weight"] = (w * scale[:, None, None, None]).astype(np.float32)
        out[conv + ".bias"] = (
            (b - buffers[bn + ".running_mean"].astype(np.float64)) * scale
            + p[bn + ".bias"].astype(np.float64)
        ).astype(np.float32)
    out["fc.weight"] = p["fc.weight"].astype(np.float32)
    out["fc.bias"] = p["fc.bias"].astype(np.float32)
    return out


def folded_forward(f, x):
    """Numpy forward of the exported (folded) encoder."""
    h, _ = conv3x3_forward(x, f["conv1.weight"], f["conv1.bias"])
    h, _ = maxpool2_forward(np.maximum(h, 0))
    h, _ = conv3x3_forward(h, f["conv2.weight"], f["conv2.bias"])
    h, _ = maxpool2_forward(np.maximum(h, 0))
    return h.reshape(h.shape[0], -1) @ f["fc.weight"].T + f["fc.bias"]


def export_onnx(f, path, doc):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def conv(name, inp, out):
        return helper.make_node(
            "Conv", [inp, name + ".weight", name + ".bias"], [out], name=f"/{name}/Conv",
            dilations=[1, 1], group=1, kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1],
        )

    def pool(name, inp, out):
        return helper.make_node(
            "MaxPool", [inp], [out], name=f"/{name}/MaxPool",
            ceil_mode=0, dilations=[1, 1], kernel_shape=[2, 2], pads=[0, 0, 0, 0], strides=[2, 2],
        )

    nodes = [
        conv("conv1", "input", "/conv1/Conv_output_0"),
        helper.make_node("Relu", ["/conv1/Conv_output_0"], ["/relu1/Relu_output_0"], name="/relu1/Relu"),
        pool("pool1", "/relu1/Relu_output_0", "/pool1/MaxPool_output_0"),
        conv("conv2", "/pool1/MaxPool_output_0", "/conv2/Conv_output_0"),
        helper.make_node("Relu", ["/conv2/Conv_output_0"], ["/relu2/Relu_output_0"], name="/relu2/Relu"),
        pool("pool2", "/relu2/Relu_output_0", "/pool2/MaxPool_output_0"),
        helper.make_node("Flatten", ["/pool2/MaxPool_output_0"], ["/Flatten_output_0"], name="/Flatten", axis=1),
        helper.make_node(
            "Gemm", ["/Flatten_output_0", "fc.weight", "fc.bias"], ["embedding"], name="/fc/Gemm",
            alpha=1.0, beta=1.0, transB=1,
        ),
    ]
    inits = [
        numpy_helper.from_array(f[k], name=k)
        for k in ("conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc.weight", "fc.bias")
    ]
    graph = helper.make_graph(
        nodes,
        "digits_encoder",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, SIZE, SIZE])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", EMBED_DIM])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17)],
        producer_name="train_digits.py",
        doc_string=doc,
    )
    model.ir_version = 8
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    path.write_bytes(model.SerializeToString())


def ort_embed(path, x):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(["embedding"], {"input": x})[0]


# ----------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check-grad", action="store_true", help="numerical gradient check only")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument(
        "--out", type=pathlib.Path,
        default=pathlib.Path(__file__).resolve().parent.parent / "models" / "digits",
    )
    args = ap.parse_args()

    if args.check_grad:
        return 0 if check_grad(args.seed) else 1

    x, y, train_idx, ref_idx, stream_idx = load_data(args.seed)
    held_idx = np.sort(np.concatenate([ref_idx, stream_idx]))
    print(f"data: {len(train_idx)} train, {len(ref_idx)} reference, {len(stream_idx)} stream (held out)")

    p, buffers = init_params(args.seed)
    untrained = fold_bn(p, buffers)  # identity BatchNorm statistics, PyTorch eval-mode export

    t0 = time.process_time()
    w0 = time.time()
    train(p, buffers, x[train_idx], y[train_idx], args.epochs, args.batch, args.lr, args.seed, print)
    cpu_s, wall_s = time.process_time() - t0, time.time() - w0
    print(f"training: {cpu_s:.1f} s CPU, {wall_s:.1f} s wall")

    acc_tr, mse_tr, _ = evaluate(p, buffers, x[train_idx], y[train_idx])
    acc, mse, ce = evaluate(p, buffers, x[held_idx], y[held_idx])
    print(f"train:    accuracy {acc_tr:.4f}  reconstruction MSE {mse_tr:.5f}")
    print(f"held-out: accuracy {acc:.4f}  reconstruction MSE {mse:.5f}  cross-entropy {ce:.4f}")

    args.out.mkdir(parents=True, exist_ok=True)
    trained = fold_bn(p, buffers)
    export_onnx(trained, args.out / "encoder.onnx",
                f"Digit encoder, trained by tools/train_digits.py (seed {args.seed}).")
    export_onnx(untrained, args.out / "encoder_untrained.onnx",
                f"Digit encoder, untrained twin: initialisation of seed {args.seed}, identity BatchNorm.")

    # The exported graphs must reproduce the numpy model: eval-mode forward with unfolded BatchNorm
    # (float64) for the trained encoder, the folded forward (float32) for both.
    xh = x[held_idx]
    ok = True
    ref64, _, _ = encoder_forward({k: v.astype(np.float64) for k, v in p.items()},
                                  {k: v.astype(np.float64) for k, v in buffers.items()},
                                  xh.astype(np.float64), train=False)
    _, u_buf = init_params(args.seed)
    for name, folded, unfolded in (("encoder.onnx", trained, ref64),
                                   ("encoder_untrained.onnx", untrained, None)):
        got = ort_embed(args.out / name, xh)
        d32 = np.abs(got - folded_forward(folded, xh)).max()
        msg = f"{name}: onnxruntime vs numpy folded forward max |diff| {d32:.2e}"
        ok &= d32 <= 1e-5
        if unfolded is not None:
            d64 = np.abs(got - unfolded).max()
            ok &= d64 <= 1e-5
            msg += f"; vs unfolded float64 forward {d64:.2e}"
        print(msg)
    if not ok:
        print("export check FAILED", file=sys.stderr)
        return 1

    np.save(args.out / "reference.npy", x[ref_idx])
    np.save(args.out / "stream.npy", x[stream_idx])
    np.save(args.out / "labels_reference.npy", y[ref_idx])
    np.save(args.out / "labels_stream.npy", y[stream_idx])
    for f in sorted(args.out.iterdir()):
        print(f"  {f.name:26s} {f.stat().st_size:>9d} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
