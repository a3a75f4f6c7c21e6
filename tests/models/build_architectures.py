#!/usr/bin/env python3
"""Narrow public vision architectures as ONNX fixtures, with float64-autograd reference gradients.

Usage (PyTorch, torchvision and timm are needed here only; CI reads the committed files):
    python tests/models/build_architectures.py [--out tests/models/arch] [--only NAME ...] [--list]
    python tests/models/build_architectures.py --full [--full-out /tmp/full]

For every model: torchvision/timm constructor with reduced widths and depths, random weights from a
fixed seed, eval() mode, embedding = the penultimate features. Exported with PyTorch's own exporter as
a user would (`torch.onnx.export`, dynamic batch). Written beside it:

    NAME.onnx             input `input` [N, 3, H, W], output `embedding` [N, D]
    NAME.input.npy        float32 [2, 3, H, W], seeded uniform [0, 1)
    NAME.KEY.ref.npy      float64 [2, 4, *layer shape without batch]: rows dz_j/dh for the manifest's
                          four components j, at the layer tensor h named in the manifest (KEY = mid,
                          early), in that tensor's own element order

The ONNX name of a layer is found from the values, not guessed from names: a forward hook captures the
module's float32 output, the ONNX model is run with every intermediate tensor exposed, and the earliest
tensor of the same shape whose values match is taken. Two checks then hold for each layer before
anything is written: it is a cut (the model's tail fed h(x2) beside x1 returns z(x2)), and the
reference agrees with central differences of that tail in ONNX Runtime along random directions.
The four components are the first of a seeded permutation whose rows are non-zero everywhere.

The references are float64 autograd (`model.double()`, input cast from the saved float32 array):
PyTorch's float32 CPU convolutions are themselves off from float64 by up to ~1e-2 on deep models.

`--full` exports full-size ViT-B/16 and Swin-T (random weights) to /tmp/full with a manifest naming
their embedding and a middle layer, for timing compiles; they are too big for the repository.
"""

import argparse
import json
import os
import sys
import warnings
import zlib

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

warnings.filterwarnings("ignore")

N_INPUTS = 2
N_COMPONENTS = 4
MATCH_TOL = 1e-4  # relative L2 error between PyTorch float32 and ORT float32 for the same tensor
FD_TOL = 2e-2  # directional central differences in float32 ORT vs float64 reference


def seed_of(name):
    return zlib.crc32(name.encode("utf-8")) & 0x7FFFFFFF


class Embedder(nn.Module):
    """The penultimate features: timm's forward_head(pre_logits=True), or the torchvision model
    with its classifier replaced by Identity."""

    def __init__(self, inner, timm_model):
        super().__init__()
        self.inner = inner
        self.timm_model = timm_model

    def forward(self, x):
        if self.timm_model:
            return self.inner.forward_head(self.inner.forward_features(x), pre_logits=True)
        return self.inner(x)


def randomize(model, seed):
    """Random weights from a fixed seed. Normalisation statistics and affine parameters are drawn too,
    so BatchNorm/LayerNorm are not identities and LayerScale gammas are not ~1e-6."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.running_mean.copy_(torch.randn(mod.running_mean.shape, generator=g) * 0.1)
                mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=g) * 0.5 + 0.75)
        for pname, p in model.named_parameters():
            if p.dim() == 1:
                last = pname.rsplit(".", 1)[-1]
                if last == "weight":
                    p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
                else:
                    p.copy_(0.05 * torch.randn(p.shape, generator=g))
            elif p.dim() == 0:
                continue
            else:
                fan_in = p[0].numel() if p.dim() > 1 else 1
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 / max(fan_in, 1)) ** 0.5)
        # LayerScale parameters are 1-D "gamma"s; ensure they are moderate, not 1e-5.
        for mod in model.modules():
            if hasattr(mod, "gamma") and isinstance(mod.gamma, nn.Parameter):
                mod.gamma.copy_(0.5 + 0.2 * torch.randn(mod.gamma.shape, generator=g))


# ---- the architectures ---------------------------------------------------------------------------
# Each builder returns (embedder, input_hw, {key: module path inside the embedder}, description).

ARCH = []


def arch(name, family, opset, dynamo=False, same_as=None):
    """`same_as`: the same network (same seed, weights, inputs and references) exported differently;
    its arrays are checked equal to that model's and the manifest points at that model's files."""

    def deco(fn):
        ARCH.append(dict(name=name, family=family, opset=opset, dynamo=dynamo, same_as=same_as, build=fn))
        return fn

    return deco


@arch("resnet", "ResNet", 17)
def build_resnet():
    from timm.models.resnet import BasicBlock, ResNet

    m = ResNet(BasicBlock, [1, 1, 1, 1], channels=(16, 24, 32, 48), stem_width=16, num_classes=10)
    return (
        Embedder(m, True),
        64,
        {"mid": "inner.layer3", "early": "inner.layer2"},
        "timm ResNet, BasicBlock x [1,1,1,1], channels 16-48, stem 16; embedding = global average pool",
    )


@arch("mobilenetv3", "MobileNetV3", 17)
def build_mobilenetv3():
    from torchvision.models import mobilenet_v3_small

    m = mobilenet_v3_small(width_mult=0.35)
    m.classifier = nn.Identity()
    return (
        Embedder(m, False),
        64,
        {"mid": "inner.features.6", "early": "inner.features.3"},
        "torchvision mobilenet_v3_small(width_mult=0.35), classifier = Identity: HardSwish, "
        "squeeze-excitation with HardSigmoid; embedding = pooled features",
    )


def convnext_small():
    from timm.models.convnext import ConvNeXt

    m = ConvNeXt(depths=(1, 1, 2, 1), dims=(16, 32, 48, 64), num_classes=10, ls_init_value=0.5)
    return (
        Embedder(m, True),
        64,
        {"mid": "inner.stages.2", "early": "inner.stages.1"},
    )


@arch("convnext", "ConvNeXt", 17)
def build_convnext():
    e, hw, layers = convnext_small()
    return (
        e,
        hw,
        layers,
        "timm ConvNeXt, depths (1,1,2,1), dims 16-64, exact GELU (Erf at opset 17), LayerNorm2d, "
        "LayerScale; embedding = pooled + head LayerNorm",
    )


@arch("convnext_op20", "ConvNeXt", 20, same_as="convnext")
def build_convnext_op20():
    e, hw, layers = convnext_small()
    return (
        e,
        hw,
        layers,
        "the ConvNeXt fixture exported at opset 20, where the exporter emits Gelu",
    )


@arch("shufflenetv2", "ShuffleNetV2", 13)
def build_shufflenetv2():
    from torchvision.models.shufflenetv2 import ShuffleNetV2

    m = ShuffleNetV2(stages_repeats=[2, 2, 2], stages_out_channels=[16, 32, 64, 96, 128])
    m.fc = nn.Identity()
    return (
        Embedder(m, False),
        64,
        {"mid": "inner.stage3", "early": "inner.stage2"},
        "torchvision ShuffleNetV2, repeats (2,2,2), channels 16-128, exported at opset 13: channel "
        "split (Slice/Split), channel shuffle (Reshape/Transpose); embedding = spatial mean",
    )


@arch("vit", "ViT", 17)
def build_vit():
    from timm.models.vision_transformer import VisionTransformer

    m = VisionTransformer(
        img_size=32, patch_size=8, embed_dim=48, depth=4, num_heads=4, mlp_ratio=2.0, num_classes=10
    )
    return (
        Embedder(m, True),
        32,
        {"mid": "inner.blocks.1", "early": "inner.blocks.0"},
        "timm VisionTransformer with class token, 32x32 input, patch 8 (16 patches), dim 48, depth 4, "
        "4 heads; embedding = final LayerNorm of the class token",
    )


@arch("vit_reg", "ViT", 18)
def build_vit_reg():
    from timm.models.vision_transformer import VisionTransformer

    m = VisionTransformer(
        img_size=32,
        patch_size=8,
        embed_dim=48,
        depth=4,
        num_heads=4,
        mlp_ratio=2.0,
        num_classes=10,
        reg_tokens=4,
        no_embed_class=True,
        init_values=1e-5,
    )
    return (
        Embedder(m, True),
        32,
        {"mid": "inner.blocks.1", "early": "inner.blocks.0"},
        "DINOv2-style timm VisionTransformer: class token + 4 register tokens, no position embedding "
        "on prefix tokens, LayerScale; exported at opset 18",
    )


@arch("vit_dynamo", "ViT", 21, dynamo=True, same_as="vit")
def build_vit_dynamo():
    e, hw, layers, _ = build_vit()
    return (
        e,
        hw,
        layers,
        "the ViT fixture exported with the torch.export-based exporter (dynamo=True, PyTorch's "
        "default) at opset 21",
    )


@arch("swin", "Swin", 18)
def build_swin():
    from timm.models.swin_transformer import SwinTransformer

    m = SwinTransformer(
        img_size=64,
        patch_size=4,
        window_size=4,
        embed_dim=16,
        depths=(2, 2, 2),
        num_heads=(2, 2, 4),
        mlp_ratio=2.0,
        drop_path_rate=0.0,
        num_classes=10,
    )
    return (
        Embedder(m, True),
        64,
        {"mid": "inner.layers.1", "early": "inner.layers.0"},
        "timm SwinTransformer, 64x64 input, patch 4, window 4 (shifted windows with attention masks), "
        "dim 16, depths (2,2,2); stage outputs are [B, H, W, C]; exported at opset 18",
    )


@arch("efficientvit", "EfficientViT", 17)
def build_efficientvit():
    from timm.models.efficientvit_msra import EfficientVitMsra

    m = EfficientVitMsra(
        img_size=128,
        embed_dim=(16, 32, 48),
        key_dim=(8, 8, 8),
        depth=(1, 1, 1),
        num_heads=(2, 2, 2),
        window_size=(4, 4, 4),
        num_classes=10,
    )
    return (
        Embedder(m, True),
        128,
        {"mid": "inner.stages.1", "early": "inner.stages.0"},
        "timm EfficientViT-MSRA (attention-CNN hybrid: cascaded group attention with Softmax, "
        "depthwise convs, BatchNorm), 128x128 input, dims 16-48",
    )


# ---- helpers -------------------------------------------------------------------------------------


def get_module(root, path):
    m = root
    for part in path.split("."):
        m = m[int(part)] if part.isdigit() else getattr(m, part)
    return m


def export(model, path, hw, opset, dynamo):
    x = torch.rand(1, 3, hw, hw)
    if dynamo:
        batch = torch.export.Dim("batch", min=1, max=1024)
        prog = torch.onnx.export(
            model,
            (x,),
            dynamo=True,
            opset_version=opset,
            input_names=["input"],
            output_names=["embedding"],
            dynamic_shapes={"x": {0: batch}},
            external_data=False,
        )
        # The exporter annotates every node with the Python stack that made it (line numbers of this
        # script included); dropped so that the file changes only when the network does.
        proto = prog.model_proto
        for node in proto.graph.node:
            del node.metadata_props[:]
        onnx.save(proto, path)
    else:
        torch.onnx.export(
            model,
            (x,),
            path,
            opset_version=opset,
            input_names=["input"],
            output_names=["embedding"],
            dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}},
            dynamo=False,
        )


def session(model_proto_or_path):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    src = model_proto_or_path
    if isinstance(src, onnx.ModelProto):
        src = src.SerializeToString()
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def all_float_tensors(model):
    """The model with every float intermediate exposed as an output, and their names in node order."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in inferred.graph.value_info}
    m = onnx.ModelProto()
    m.CopyFrom(model)
    existing = {o.name for o in m.graph.output}
    names = []
    for node in m.graph.node:
        for o in node.output:
            if o and types.get(o) == onnx.TensorProto.FLOAT and o not in existing:
                m.graph.output.append(onnx.helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None))
                names.append(o)
                existing.add(o)
    return m, names


def find_tensor(model, x, target):
    """The earliest ONNX tensor with `target`'s shape and values (relative L2 ≤ MATCH_TOL)."""
    exposed, names = all_float_tensors(model)
    sess = session(exposed)
    outs = sess.run(names, {"input": x})
    t = target.astype(np.float64)
    tn = np.linalg.norm(t)
    best = None
    for name, v in zip(names, outs):
        if v.shape != target.shape:
            continue
        rel = np.linalg.norm(v.astype(np.float64) - t) / max(tn, 1e-30)
        if best is None or rel < best[1]:
            best = (name, rel)
        if rel <= MATCH_TOL:
            return name, rel
    raise SystemExit(f"no ONNX tensor matches the module output {target.shape}: closest {best}")


def tail_model(model, layer):
    """The embedding as a function of (input, layer): layer's producer writes elsewhere."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for node in m.graph.node:
        for i, o in enumerate(node.output):
            if o == layer:
                node.output[i] = layer + "__replaced"
    m.graph.input.append(onnx.helper.make_tensor_value_info(layer, onnx.TensorProto.FLOAT, None))
    del m.graph.value_info[:]
    return m


def path_ops(model, layer, embedding):
    """Op types on the path layer → embedding: (data path, shape computations). A node is on the
    path when it depends on the layer and the embedding depends on it; it is a shape computation
    when every route from the layer to it passes through Shape/Size."""
    g = model.graph
    producers = {}
    for i, n in enumerate(g.node):
        for o in n.output:
            producers[o] = i
    consumers = {}
    for i, n in enumerate(g.node):
        for t in n.input:
            consumers.setdefault(t, []).append(i)

    def descendants(stop_at_shape):
        seen, stack = set(), [layer]
        nodes = set()
        while stack:
            t = stack.pop()
            for i in consumers.get(t, []):
                if i in nodes:
                    continue
                nodes.add(i)
                if stop_at_shape and g.node[i].op_type in ("Shape", "Size"):
                    continue
                for o in g.node[i].output:
                    if o not in seen:
                        seen.add(o)
                        stack.append(o)
        return nodes

    anc, stack = set(), [embedding]
    while stack:
        t = stack.pop()
        i = producers.get(t)
        if i is None or i in anc:
            continue
        anc.add(i)
        stack.extend(g.node[i].input)
    data = {i for i in descendants(True) & anc if g.node[i].op_type not in ("Shape", "Size")}
    all_on = descendants(False) & anc
    shape = all_on - data
    return sorted({g.node[i].op_type for i in data}), sorted({g.node[i].op_type for i in shape})


def reference_rows(model, x32, module_path, comps, dtype=torch.float64):
    """Autograd rows dz_j/dh at the module's output, [N, K, *h.shape[1:]], computed in `dtype`
    (float64 for the references; float32 to measure what a float32 reverse pass is off by)."""
    m64 = model.to(dtype)
    holder = {}

    def hook(_mod, _inp, out):
        leaf = out.detach().clone().requires_grad_(True)
        holder["h"] = leaf
        return leaf

    handle = get_module(m64, module_path).register_forward_hook(hook)
    try:
        z = m64(torch.from_numpy(x32).to(dtype))
    finally:
        handle.remove()
    h = holder["h"]
    rows = []
    for j in comps:
        (gr,) = torch.autograd.grad(z[:, j].sum(), h, retain_graph=True)
        rows.append(gr.detach().double().numpy())
    model.float()
    return np.stack(rows, axis=1), z.detach().numpy()


def pick_components(model, x32, module_paths, order):
    """The first N_COMPONENTS components in `order` whose rows are clearly non-zero for every input
    at every layer: a relative error needs a non-zero reference, and a ReLU network's pooled
    embedding has dead components (a channel that is zero everywhere has a zero gradient)."""
    norms = {}
    for j in order[: 4 * N_COMPONENTS]:
        j = int(j)
        norms[j] = min(
            float(np.linalg.norm(reference_rows(model, x32, mp, [j])[0][b, 0]))
            for mp in module_paths
            for b in range(x32.shape[0])
        )
    typical = float(np.median(list(norms.values())))
    chosen = [j for j in norms if norms[j] > 1e-2 * typical][:N_COMPONENTS]
    if len(chosen) < N_COMPONENTS:
        raise SystemExit(f"fewer than {N_COMPONENTS} live components among {sorted(norms)}")
    return sorted(chosen)


def module_output32(model, x32, module_path):
    holder = {}
    handle = get_module(model, module_path).register_forward_hook(
        lambda _m, _i, out: holder.__setitem__("h", out.detach().numpy().copy())
    )
    try:
        with torch.no_grad():
            z = model(torch.from_numpy(x32)).numpy()
    finally:
        handle.remove()
    return holder["h"], z


def check_layer(model_proto, layer, x32, ref, comps, seed):
    """The layer is a cut, and the reference matches ORT central differences along random directions.
    Returns the worst relative directional-derivative error."""
    full = session(model_proto)
    h_sess = session(all_float_tensors(model_proto)[0])
    h = h_sess.run([layer], {"input": x32})[0]
    tail = session(tail_model(model_proto, layer))
    z = full.run(["embedding"], {"input": x32})[0]
    # Cut: x of sample 0 with h of sample 1 gives z of sample 1.
    zc = tail.run(["embedding"], {"input": x32[[0, 0]], layer: h[[1, 1]]})[0]
    err = np.abs(zc[0] - z[1]).max() / max(np.abs(z[1]).max(), 1e-30)
    if err > 1e-4:
        raise SystemExit(f"layer {layer} is not a cut between the input and the embedding: {err:.2e}")
    rng = np.random.default_rng(seed)
    worst = 0.0
    for b in range(x32.shape[0]):
        for _ in range(2):
            v = rng.standard_normal(h.shape[1:]).astype(np.float32)
            v *= np.linalg.norm(h[b]) / np.linalg.norm(v)
            for eps in (1e-3,):
                hp = (h[b] + eps * v)[None]
                hm = (h[b] - eps * v)[None]
                zp = tail.run(["embedding"], {"input": x32[[b]], layer: hp})[0][0]
                zm = tail.run(["embedding"], {"input": x32[[b]], layer: hm})[0][0]
                for k, j in enumerate(comps):
                    num = (float(zp[j]) - float(zm[j])) / (2 * eps)
                    an = float(np.sum(ref[b, k].astype(np.float64) * v.astype(np.float64)))
                    scale = np.linalg.norm(ref[b, k]) * np.linalg.norm(v)
                    rel = abs(num - an) / max(scale, 1e-30)
                    worst = max(worst, rel)
    if worst > FD_TOL:
        raise SystemExit(f"layer {layer}: reference vs ORT central differences {worst:.2e}")
    return worst


def save(out_dir, file, array, shared):
    """Writes the array, or for a re-export of a model already built checks it equals that model's."""
    path = os.path.join(out_dir, file)
    if shared:
        if not os.path.exists(path):
            raise SystemExit(f"{file}: build {shared} first (it shares its arrays)")
        if not np.array_equal(np.load(path), array):
            raise SystemExit(f"{file}: differs from {shared}'s, though the network is the same")
    else:
        np.save(path, array)


def build_one(spec, out_dir):
    name = spec["name"]
    base = spec["same_as"] or name
    seed = seed_of(base)
    torch.manual_seed(seed)
    model, hw, layers, description = spec["build"]()
    randomize(model, seed)
    model.eval()
    path = os.path.join(out_dir, f"{name}.onnx")
    export(model, path, hw, spec["opset"], spec["dynamo"])
    proto = onnx.load(path)
    onnx.checker.check_model(proto)
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    params = sum(p.numel() for p in model.parameters())

    rng = np.random.default_rng(seed)
    x32 = rng.random((N_INPUTS, 3, hw, hw), dtype=np.float32)
    z_onnx = session(proto).run(["embedding"], {"input": x32})[0]
    d = z_onnx.shape[1]
    assert z_onnx.ndim == 2, f"{name}: embedding rank {z_onnx.ndim}"
    comps = pick_components(model, x32, list(layers.values()), rng.permutation(d))
    save(out_dir, f"{base}.input.npy", x32, spec["same_as"])

    entry_layers = []
    worst_z = None
    for key, module_path in layers.items():
        h32, z32 = module_output32(model, x32, module_path)
        tensor, match = find_tensor(proto, x32, h32)
        ref, z64 = reference_rows(model, x32, module_path, comps)
        worst_z = np.abs(z_onnx - z64).max() / np.abs(z64).max()
        fd = check_layer(proto, tensor, x32, ref, comps, seed + len(entry_layers))
        f32 = reference_rows(model, x32, module_path, comps, torch.float32)[0]
        f32_rel = max(
            np.linalg.norm(f32[b, k] - ref[b, k]) / np.linalg.norm(ref[b, k])
            for b in range(ref.shape[0])
            for k in range(ref.shape[1])
        )
        ref_file = f"{base}.{key}.ref.npy"
        save(out_dir, ref_file, ref.astype(np.float64), spec["same_as"])
        data_ops, shape_ops = path_ops(proto, tensor, "embedding")
        entry_layers.append(
            dict(
                key=key,
                name=tensor,
                module=module_path.removeprefix("inner."),
                shape=list(h32.shape[1:]),
                ref=ref_file,
                path_ops=data_ops,
                path_shape_ops=shape_ops,
                match_rel=float(f"{match:.3g}"),
                fd_rel=float(f"{fd:.3g}"),
                f32_autograd_rel=float(f"{f32_rel:.3g}"),
            )
        )
        print(
            f"{name:14} {key:5} {module_path:22} -> {tensor:40} {str(list(h32.shape)):18} "
            f"match {match:.1e}  fd {fd:.1e}  float32 autograd {f32_rel:.1e}"
        )
    size = os.path.getsize(path)
    print(f"{name:14} opset {opset}  params {params}  {size / 1e6:.2f} MB  D {d}  "
          f"ORT float32 vs float64 embedding {worst_z:.1e}")
    return dict(
        name=name,
        family=spec["family"],
        file=f"{name}.onnx",
        exporter="torch.onnx.export(dynamo=True)" if spec["dynamo"] else "torch.onnx.export(dynamo=False)",
        torch=torch.__version__.split("+")[0],
        input="input",
        input_shape=[3, hw, hw],
        inputs_file=f"{base}.input.npy",
        embedding="embedding",
        d=d,
        components=comps,
        layers=entry_layers,
        opset=opset,
        params=params,
        bytes=size,
        ops=sorted({n.op_type for n in proto.graph.node}),
        description=description,
    )


def build_full(out_dir):
    import timm

    os.makedirs(out_dir, exist_ok=True)
    entries = []
    for name, ctor, mid in (
        ("vit_base_patch16_224", "vit_base_patch16_224", "inner.blocks.5"),
        ("swin_tiny_patch4_window7_224", "swin_tiny_patch4_window7_224", "inner.layers.2"),
    ):
        torch.manual_seed(seed_of(name))
        model = Embedder(timm.create_model(ctor, pretrained=False), True).eval()
        path = os.path.join(out_dir, f"{name}.onnx")
        export(model, path, 224, 17, False)
        proto = onnx.load(path)
        x32 = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
        h32, _ = module_output32(model, x32, mid)
        tensor, match = find_tensor(proto, x32, h32)
        print(f"{name}: {mid} -> {tensor} {list(h32.shape)} match {match:.1e}")
        entries.append(
            dict(
                name=name,
                file=f"{name}.onnx",
                input="input",
                input_shape=[3, 224, 224],
                embedding="embedding",
                layer=tensor,
                layer_module=mid.removeprefix("inner."),
                layer_shape=list(h32.shape[1:]),
                opset=17,
                params=sum(p.numel() for p in model.parameters()),
                ops=sorted({n.op_type for n in proto.graph.node}),
            )
        )
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(entries, f, indent=2)
        f.write("\n")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(here, "arch"))
    p.add_argument("--only", nargs="*")
    p.add_argument("--list", action="store_true")
    p.add_argument("--full", action="store_true")
    p.add_argument("--full-out", default="/tmp/full")
    a = p.parse_args()
    if a.list:
        for s in ARCH:
            print(s["name"])
        return
    torch.set_num_threads(2)
    if a.full:
        build_full(a.full_out)
        return
    os.makedirs(a.out, exist_ok=True)
    manifest_path = os.path.join(a.out, "manifest.json")
    old = {}
    if a.only and os.path.exists(manifest_path):
        old = {e["name"]: e for e in json.load(open(manifest_path))}
    entries = []
    for spec in ARCH:
        if a.only and spec["name"] not in a.only:
            if spec["name"] in old:
                entries.append(old[spec["name"]])
            continue
        entries.append(build_one(spec, a.out))
    with open(manifest_path, "w") as f:
        json.dump(entries, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    sys.exit(main())
