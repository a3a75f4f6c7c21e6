#!/usr/bin/env python3
"""A small BERT-style sentence encoder as an ONNX fixture, with float64-autograd reference rows.

Usage (PyTorch is needed here only; CI reads the committed files):
    ~/torch-env/bin/python tests/models/build_text.py [--out tests/models/text]

The network is written out below (no `transformers` needed) and follows BERT as sentence-transformers
runs it: word + position + token-type embeddings, LayerNorm, two post-norm encoder layers (multi-head
self-attention with the additive `(1 - mask) * finfo.min` key mask, GELU with erf), then mean pooling
over the attention mask. Random weights from a fixed seed, eval() mode. Exported by PyTorch's own
exporter as a user would (`torch.onnx.export`, opset 17, dynamic batch and sequence axes). Written:

    encoder.onnx          inputs `input_ids`, `attention_mask`, `token_type_ids` int64 [N, T];
                          output `embedding` float32 [N, D]
    samples.json          a few id sequences of different lengths (unpadded, [CLS] … [SEP])
    sample{i}.ref.npy     float64 [K, len_i, C]: rows dz_j/dh for the manifest's components j at the
                          middle hidden state h (the output of encoder layer 0), each sample run
                          alone, unpadded, through `model.double()`
    sample{i}.emb.npy     float64 [D]: the sample's embedding, same run
    manifest.json         names, sizes, the layer tensor, the components, the special ids

Checks before anything is written: ONNX Runtime's embedding of the padded batch matches the float64
embeddings of the unpadded samples (padding is inert), and the reference rows agree with central
differences of the float64 tail of the network along random directions.
"""

import argparse
import json
import math
import os
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

warnings.filterwarnings("ignore")

VOCAB = 1000
HIDDEN = 32
HEADS = 4
LAYERS = 2
FFN = 64
MAX_POS = 128
TYPES = 2
PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
SEED = 1515
COMPONENTS = [0, 5, 17, 31]
LENGTHS = [5, 9, 14]


class Layer(nn.Module):
    def __init__(self):
        super().__init__()
        self.q = nn.Linear(HIDDEN, HIDDEN)
        self.k = nn.Linear(HIDDEN, HIDDEN)
        self.v = nn.Linear(HIDDEN, HIDDEN)
        self.o = nn.Linear(HIDDEN, HIDDEN)
        self.ln1 = nn.LayerNorm(HIDDEN, eps=1e-12)
        self.up = nn.Linear(HIDDEN, FFN)
        self.down = nn.Linear(FFN, HIDDEN)
        self.ln2 = nn.LayerNorm(HIDDEN, eps=1e-12)

    def heads(self, x):
        b, t, _ = x.shape
        return x.view(b, t, HEADS, HIDDEN // HEADS).transpose(1, 2)

    def forward(self, h, ext_mask):
        b, t, _ = h.shape
        q, k, v = self.heads(self.q(h)), self.heads(self.k(h)), self.heads(self.v(h))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(HIDDEN // HEADS) + ext_mask
        ctx = torch.matmul(torch.softmax(scores, dim=-1), v).transpose(1, 2).reshape(b, t, HIDDEN)
        h = self.ln1(h + self.o(ctx))
        up = self.up(h)
        gelu = 0.5 * up * (1.0 + torch.erf(up / math.sqrt(2.0)))
        return self.ln2(h + self.down(gelu))


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.words = nn.Embedding(VOCAB, HIDDEN, padding_idx=PAD)
        self.positions = nn.Embedding(MAX_POS, HIDDEN)
        self.types = nn.Embedding(TYPES, HIDDEN)
        self.ln = nn.LayerNorm(HIDDEN, eps=1e-12)
        self.layers = nn.ModuleList([Layer() for _ in range(LAYERS)])
        self.hidden = []  # the layer outputs of the last forward pass (for the references)

    def forward(self, input_ids, attention_mask, token_type_ids):
        t = input_ids.shape[1]
        pos = torch.arange(t, device=input_ids.device).unsqueeze(0)
        h = self.ln(self.words(input_ids) + self.positions(pos) + self.types(token_type_ids))
        m = attention_mask.to(h.dtype)
        ext = (1.0 - m[:, None, None, :]) * torch.finfo(h.dtype).min
        self.hidden = []
        for layer in self.layers:
            h = layer(h, ext)
            self.hidden.append(h)
        # Mean pooling as sentence-transformers does it.
        mm = attention_mask.unsqueeze(-1).expand(h.size()).to(h.dtype)
        return (h * mm).sum(1) / torch.clamp(mm.sum(1), min=1e-9)


def make_samples(rng):
    out = []
    for n in LENGTHS:
        body = rng.integers(MASK + 1, VOCAB, size=n - 2).tolist()
        out.append([CLS] + body + [SEP])
    return out


def padded(samples):
    t = max(len(s) for s in samples)
    ids = np.full((len(samples), t), PAD, dtype=np.int64)
    mask = np.zeros((len(samples), t), dtype=np.int64)
    for i, s in enumerate(samples):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return ids, mask, np.zeros_like(ids)


def layer_tensor(proto):
    """The ONNX name of encoder layer 0's output: the last LayerNormalization inside `/layers.0/`."""
    names = [n.output[0] for n in proto.graph.node if n.op_type == "LayerNormalization" and n.name.startswith("/layers.0/")]
    assert names, "no LayerNormalization in /layers.0/"
    return names[-1]


def references(model64, sample):
    """Rows dz_j/dh at layer 0's output (float64, the sample alone), its embedding, and a
    central-difference check of the rows through the float64 tail."""
    ids = torch.tensor([sample])
    mask = torch.ones_like(ids)
    types = torch.zeros_like(ids)
    z = model64(ids, mask, types)
    h = model64.hidden[0]
    rows = []
    for j in COMPONENTS:
        (g,) = torch.autograd.grad(z[0, j], h, retain_graph=True)
        rows.append(g[0].detach().numpy())
    rows = np.stack(rows)

    # The tail from h: layer 1 and pooling, fed a perturbed h.
    ext = (1.0 - mask.double()[:, None, None, :]) * torch.finfo(torch.float64).min

    def tail(hh):
        out = model64.layers[1](hh, ext)
        return out.mean(1)  # mask is all ones: the pooling is the mean

    gen = torch.Generator().manual_seed(7)
    for _ in range(3):
        d = torch.randn(h.shape, generator=gen, dtype=torch.float64)
        eps = 1e-6
        fd = (tail(h.detach() + eps * d) - tail(h.detach() - eps * d))[0] / (2 * eps)
        for r, j in enumerate(COMPONENTS):
            want = float((torch.from_numpy(rows[r]) * d[0]).sum())
            got = float(fd[j])
            assert abs(got - want) <= 1e-6 * (1 + abs(want)), (j, got, want)
    return rows, z[0].detach().numpy()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "text"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    torch.manual_seed(SEED)
    model = Encoder().eval()
    # Larger weights than the default init, so that attention is far from uniform and the maps vary.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(2.0)
    rng = np.random.default_rng(SEED)
    samples = make_samples(rng)

    path = os.path.join(args.out, "encoder.onnx")
    ids, mask, types = padded(samples)
    axes = {0: "batch", 1: "sequence"}
    torch.onnx.export(
        model,
        (torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(types)),
        path,
        opset_version=17,
        input_names=["input_ids", "attention_mask", "token_type_ids"],
        output_names=["embedding"],
        dynamic_axes={"input_ids": axes, "attention_mask": axes, "token_type_ids": axes, "embedding": {0: "batch"}},
        dynamo=False,
    )
    proto = onnx.load(path)
    layer = layer_tensor(proto)

    model64 = Encoder().eval()
    model64.load_state_dict(model.state_dict())
    model64 = model64.double()

    # ONNX Runtime on the padded batch against float64 on each sample alone.
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    (emb,) = sess.run(["embedding"], {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})

    entries = []
    for i, s in enumerate(samples):
        rows, z = references(model64, s)
        err = np.abs(emb[i] - z).max() / np.abs(z).max()
        assert err < 1e-5, f"sample {i}: ONNX Runtime's padded embedding is off by {err:.2e}"
        np.save(os.path.join(args.out, f"sample{i}.ref.npy"), rows)
        np.save(os.path.join(args.out, f"sample{i}.emb.npy"), z)
        entries.append({"ids": s, "ref": f"sample{i}.ref.npy", "emb": f"sample{i}.emb.npy"})

    ops = sorted({n.op_type for n in proto.graph.node})
    manifest = {
        "file": "encoder.onnx",
        "exporter": "torch.onnx.export(dynamo=False)",
        "torch": torch.__version__.split("+")[0],
        "opset": 17,
        "ir_version": proto.ir_version,
        "inputs": ["input_ids", "attention_mask", "token_type_ids"],
        "embedding": "embedding",
        "layer": layer,
        "vocab": VOCAB,
        "hidden": HIDDEN,
        "d": HIDDEN,
        "max_positions": MAX_POS,
        "pad_id": PAD,
        "special_ids": [PAD, UNK, CLS, SEP, MASK],
        "components": COMPONENTS,
        "samples": entries,
        "ops": ops,
        "bytes": os.path.getsize(path),
    }
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    print(f"wrote {path} ({manifest['bytes']} bytes), layer {layer}, ops {', '.join(ops)}")


if __name__ == "__main__":
    main()
