#!/usr/bin/env python3
"""Build the ONNX test models for the attribution-graph compiler and the scores.

Usage:
    python tests/models/build_models.py --out DIR [--only NAME ...] [--list]

Writes DIR/<name>.onnx for every selected model and DIR/manifest.json describing *all* models
(so a partial rebuild with --only keeps a complete manifest). Each manifest entry:
    name, file, input, input_shape (without batch), embedding, layers, layer_shapes, ops,
    description, kind ("rule" | "model"), rule (op under test, rule models only), d, params,
    committed (false for models too big for git, built on demand).

Every model: one float32 input [N, ...] with dynamic batch "N", one rank-2 float32 output [N, D],
opset 17 (rule models built with rule_at may import a later one: 18, 21), ir_version 8 (10 at opset 21),
a fixed numpy seed derived from the model name, He-style init.
Each model is checked with onnx.checker and run once with ONNX Runtime on CPU (batch 2).
"""

import argparse
import json
import os
import sys
import zlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
BATCH_DIM = "N"

REGISTRY = []  # (name, builder, kind, committed)


def register(name, kind="rule", committed=True):
    def deco(fn):
        REGISTRY.append((name, fn, kind, committed))
        return fn

    return deco


def seed_of(name):
    return zlib.crc32(name.encode("utf-8")) & 0x7FFFFFFF


class Graph:
    """A tiny helper over onnx.helper that keeps nodes, initializers and unique names."""

    def __init__(self, name, input_shape, input_name="x", opset=OPSET):
        self.name = name
        self.opset = opset
        self.rng = np.random.default_rng(seed_of(name))
        self.input_name = input_name
        self.input_shape = list(input_shape)
        self.nodes = []
        self.inits = []
        self.used = {input_name}
        self.used_nodes = set()
        self.counter = {}
        self.torch_const = 100  # numbering of folded "onnx::Conv_<n>" initializers

    # ---- names -------------------------------------------------------------------------------
    def unique(self, base, space=None):
        """A fresh name; node names and tensor names are separate name spaces."""
        used = self.used if space is None else space
        if base not in used:
            used.add(base)
            return base
        k = 1
        while f"{base}_{k}" in used:
            k += 1
        name = f"{base}_{k}"
        used.add(name)
        return name

    def node_name(self, base):
        return self.unique(base, self.used_nodes)

    def auto(self, op_type):
        k = self.counter.get(op_type, 0)
        self.counter[op_type] = k + 1
        return self.node_name(f"{op_type.lower()}{k}")

    # ---- graph pieces ------------------------------------------------------------------------
    def const(self, base, arr, dtype=np.float32):
        name = self.unique(base)
        self.inits.append(numpy_helper.from_array(np.asarray(arr, dtype=dtype), name))
        return name

    def op(self, op_type, inputs, name=None, out=None, n_out=1, reserved=False, **attrs):
        """Add one node; returns its output name (or a list when n_out > 1).

        reserved: `name` was already taken with node_name() by the caller."""
        if reserved:
            node_name = name
        else:
            node_name = self.node_name(name) if name else self.auto(op_type)
        if out is None:
            outs = [self.unique(node_name if n_out == 1 else f"{node_name}_out{i}") for i in range(n_out)]
        else:
            outs = [self.unique(o) for o in ([out] if isinstance(out, str) else out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=node_name, **attrs))
        return outs[0] if len(outs) == 1 else outs

    def top(self, scope, op_type, inputs, out=None, **attrs):
        """A node named the way torch.onnx.export names it: '/scope/Op', output '/scope/Op_output_0'."""
        base = f"{scope}/{op_type}" if scope else f"/{op_type}"
        node_name = self.node_name(base)
        outs = [self.unique(out if out else f"{node_name}_output_0")]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=node_name, **attrs))
        return outs[0]

    def he(self, shape, fan_in, gain=2.0):
        return (self.rng.standard_normal(shape) * np.sqrt(gain / fan_in)).astype(np.float32)

    def small(self, shape, scale=0.1):
        return (self.rng.uniform(-scale, scale, shape)).astype(np.float32)

    def conv_params(self, cin, cout, k, group=1):
        kh, kw = (k, k) if isinstance(k, int) else k
        w = self.he([cout, cin // group, kh, kw], cin // group * kh * kw)
        return w, self.small([cout])

    def conv(self, x, cin, cout, k, strides=1, pads=None, dilations=1, group=1, bias=True,
             auto_pad=None, name=None, out=None):
        w, b = self.conv_params(cin, cout, k, group)
        kh, kw = w.shape[2:]
        attrs = dict(kernel_shape=[int(kh), int(kw)], strides=_pair(strides),
                     dilations=_pair(dilations), group=group)
        if auto_pad:
            attrs["auto_pad"] = auto_pad
        else:
            attrs["pads"] = list(pads) if pads is not None else [0, 0, 0, 0]
        node = self.node_name(name) if name else self.auto("Conv")
        ins = [x, self.const(f"{node}.weight", w)]
        if bias:
            ins.append(self.const(f"{node}.bias", b))
        return self.op("Conv", ins, name=node, out=out, reserved=True, **attrs)

    def bn_params(self, c, gamma=(0.8, 1.2)):
        scale = self.rng.uniform(*gamma, c).astype(np.float32)
        bias = self.small([c], 0.2)
        mean = (self.rng.standard_normal(c) * 0.2).astype(np.float32)
        var = self.rng.uniform(0.5, 1.5, c).astype(np.float32)
        return scale, bias, mean, var

    def batchnorm(self, x, c, name=None, out=None, eps=1e-5):
        node = self.node_name(name) if name else self.auto("BatchNormalization")
        s, b, m, v = self.bn_params(c)
        ins = [x] + [self.const(f"{node}.{k}", a) for k, a in
                     (("scale", s), ("bias", b), ("mean", m), ("var", v))]
        return self.op("BatchNormalization", ins, name=node, out=out, reserved=True, epsilon=eps)

    def gemm(self, x, fin, fout, name=None, out=None, gain=1.0, alpha=1.0, beta=1.0, transB=1):
        node = self.node_name(name) if name else self.auto("Gemm")
        w = self.he([fout, fin], fin, gain)
        if not transB:
            w = np.ascontiguousarray(w.T)
        b = self.small([fout])
        attrs = dict(transB=transB)
        if alpha != 1.0:
            attrs["alpha"] = alpha
        if beta != 1.0:
            attrs["beta"] = beta
        return self.op("Gemm", [x, self.const(f"{node}.weight", w), self.const(f"{node}.bias", b)],
                       name=node, out=out, reserved=True, **attrs)

    def stem(self, cout=4, out="h"):
        """The layer tensor of a rule model: a 3x3 'same' conv of the input, named 'h'."""
        return self.conv(self.input_name, self.input_shape[0], cout, 3, pads=[1, 1, 1, 1],
                         name="stem", out=out)

    def to_embedding(self, t, d, out="z"):
        """Flatten -> Gemm to the embedding [N, d]."""
        shape = self.shape_of(t)
        f = self.flatten(t)
        return self.gemm(f, int(np.prod(shape)), d, name="head", out=out)

    def flatten(self, t):
        return self.op("Flatten", [t], axis=1)

    # ---- model assembly ----------------------------------------------------------------------
    def model(self, outputs, doc=""):
        inp = helper.make_tensor_value_info(self.input_name, TensorProto.FLOAT,
                                            [BATCH_DIM] + self.input_shape)
        outs = []
        for name, dims in outputs:
            outs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
        graph = helper.make_graph(self.nodes, self.name, [inp], outs, initializer=self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)],
                              producer_name="tests/models/build_models.py", doc_string=doc)
        # newer opsets need a newer IR version (opset 21: IR 10)
        m.ir_version = max(IR_VERSION, helper.find_min_ir_version_for(m.opset_import))
        return m

    def shape_of(self, tensor):
        """Static shape (without batch) of a tensor of the graph built so far, via ONNX Runtime."""
        out = run_ort(self.model([(tensor, None)]), self.input_name,
                      np.zeros([1] + self.input_shape, np.float32))[0]
        return list(out.shape[1:])


def _pair(v):
    return [v, v] if isinstance(v, int) else list(v)


def run_ort(model, input_name, x):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {input_name: x})


# ======================================================================================
# Rule models: stem conv -> h (the layer) -> op under test -> (Flatten -> Gemm) -> z
# ======================================================================================

def rule(name, op, desc, d, input_shape=(4, 9, 9), opset=OPSET):
    """Decorator for a rule model: the body gets (g, h) and returns the tensor after the op."""

    def deco(body):
        def build():
            g = Graph(name, input_shape, opset=opset)
            h = g.stem()
            y = body(g, h)
            z = y if y == "z" else g.to_embedding(y, d)
            return g, dict(embedding=z, layers=[h], rule=op, d=d, description=desc)

        register(name)(build)
        return body

    return deco


@rule("conv_group_stride", "Conv",
      "Conv 3x3, group 2, strides 2, asymmetric pads [0,1,1,2], with bias", d=5)
def _(g, h):
    return g.conv(h, 4, 6, 3, strides=2, pads=[0, 1, 1, 2], group=2, bias=True, name="conv")


@rule("conv_dilated", "Conv",
      "Conv 3x3, dilations 2, strides [1,2], pads [2,1,2,1], no bias", d=4)
def _(g, h):
    return g.conv(h, 4, 5, 3, strides=[1, 2], pads=[2, 1, 2, 1], dilations=2, bias=False,
                  name="conv")


@rule("conv_same_upper", "Conv",
      "Conv 4x4, auto_pad SAME_UPPER, strides 2 (odd input: asymmetric implicit pads), no bias",
      d=3)
def _(g, h):
    return g.conv(h, 4, 3, 4, strides=2, auto_pad="SAME_UPPER", bias=False, name="conv")


@rule("conv_transpose", "ConvTranspose",
      "ConvTranspose 3x3, group 2, strides 2, pads 1, output_padding 1, with bias", d=4,
      input_shape=(3, 8, 8))
def _(g, h):
    w = g.he([4, 3, 3, 3], 4 * 9 // 2)  # [C_in, C_out/group, kh, kw], C_out = 6
    return g.op("ConvTranspose", [h, g.const("convt.weight", w), g.const("convt.bias", g.small([6]))],
                name="convt", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                output_padding=[1, 1], group=2)


@rule("relu", "Relu", "Relu", d=4, input_shape=(3, 8, 8))
def _(g, h):
    return g.op("Relu", [h])


@rule("leaky_relu", "LeakyRelu", "LeakyRelu alpha 0.1", d=5, input_shape=(3, 8, 8))
def _(g, h):
    return g.op("LeakyRelu", [h], alpha=0.1)


@rule("sigmoid", "Sigmoid", "Sigmoid", d=3, input_shape=(3, 8, 8))
def _(g, h):
    return g.op("Sigmoid", [h])


@rule("tanh", "Tanh", "Tanh", d=6, input_shape=(3, 8, 8))
def _(g, h):
    return g.op("Tanh", [h])


@rule("softplus", "Softplus", "Softplus", d=4, input_shape=(3, 8, 8))
def _(g, h):
    return g.op("Softplus", [h])


@rule("clip", "Clip", "Clip with min -0.5 and max 0.8 given as inputs (opset 11+ form)", d=5,
      input_shape=(3, 8, 8))
def _(g, h):
    return g.op("Clip", [h, g.const("clip_min", np.float32(-0.5)), g.const("clip_max", np.float32(0.8))])


@rule("maxpool_overlap", "MaxPool", "MaxPool 3x3 stride 2, overlapping windows, no pads", d=4)
def _(g, h):
    return g.op("MaxPool", [h], kernel_shape=[3, 3], strides=[2, 2])


@rule("maxpool_pads", "MaxPool", "MaxPool 3x3 stride 2 with pads [1,1,1,1]", d=3,
      input_shape=(3, 8, 8))
def _(g, h):
    return g.op("MaxPool", [h], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])


@rule("avgpool_exclude_pad", "AveragePool",
      "AveragePool 3x3 stride 2, pads [1,1,1,1], count_include_pad 0", d=5)
def _(g, h):
    return g.op("AveragePool", [h], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                count_include_pad=0)


@rule("avgpool_include_pad", "AveragePool",
      "AveragePool 3x3 stride 2, pads [1,1,1,1], count_include_pad 1", d=4)
def _(g, h):
    return g.op("AveragePool", [h], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                count_include_pad=1)


@rule("global_avgpool", "GlobalAveragePool", "GlobalAveragePool", d=3)
def _(g, h):
    return g.op("GlobalAveragePool", [h])


@rule("batchnorm", "BatchNormalization",
      "BatchNormalization (inference) with non-trivial scale, bias, mean and var", d=4,
      input_shape=(3, 8, 8))
def _(g, h):
    return g.batchnorm(h, 4, name="bn")


def _gemm_transb1():
    g = Graph("gemm_transb1", [3, 6, 6])
    h = g.stem()
    h2 = g.op("Flatten", [h], axis=1, name="flatten", out="h2")
    z = g.gemm(h2, 4 * 36, 5, name="gemm", out="z", alpha=0.7, beta=1.3, transB=1)
    return g, dict(embedding=z, layers=[h2], rule="Gemm", d=5,
                   description="Flatten -> h2 [N,144] (rank-2 layer) -> Gemm transA 0, transB 1, "
                               "alpha 0.7, beta 1.3 = embedding")


register("gemm_transb1")(_gemm_transb1)


def _gemm_transb0():
    g = Graph("gemm_transb0", [3, 6, 6])
    h = g.stem()
    h2 = g.op("Flatten", [h], axis=1, name="flatten", out="h2")
    a = g.gemm(h2, 4 * 36, 8, name="gemm", gain=2.0, alpha=1.0, beta=1.0, transB=0)
    z = g.gemm(g.op("Tanh", [a]), 8, 4, name="head", out="z")
    return g, dict(embedding=z, layers=[h2], rule="Gemm", d=4,
                   description="Flatten -> h2 [N,144] (rank-2 layer) -> Gemm transB 0 (B is [144,8])"
                               " -> Tanh -> Gemm to the embedding")


register("gemm_transb0")(_gemm_transb0)


@rule("matmul", "MatMul", "MatMul of activation [N,4,8,8] x weight [8,6]", d=4,
      input_shape=(3, 8, 8))
def _(g, h):
    return g.op("MatMul", [h, g.const("mm.weight", g.he([8, 6], 8))])


def _matmul_broadcast():
    g = Graph("matmul_broadcast", [3, 6, 6])
    h = g.conv("x", 3, 1, 3, pads=[1, 1, 1, 1], name="stem", out="h")  # [N,1,6,6]
    y = g.op("MatMul", [h, g.const("mm.weight", g.he([3, 6, 5], 6))])  # -> [N,3,6,5]
    z = g.to_embedding(y, 4)
    return g, dict(embedding=z, layers=[h], rule="MatMul", d=4,
                   description="MatMul of h [N,1,6,6] x weight [3,6,5] -> [N,3,6,5]: the weight "
                               "broadcasts over N, h over the channel axis (gradient needs ReduceSum)")


register("matmul_broadcast")(_matmul_broadcast)


@rule("add_residual", "Add",
      "Add of two branches of h: h + Relu(Conv3x3(h)) (same shape, both depend on the layer)",
      d=4, input_shape=(3, 8, 8))
def _(g, h):
    b = g.op("Relu", [g.conv(h, 4, 4, 3, pads=[1, 1, 1, 1], name="branch")])
    return g.op("Add", [h, b])


@rule("sub_broadcast", "Sub",
      "Sub(h, GlobalAveragePool(h)): [N,C,H,W] - [N,C,1,1], both inputs depend on the layer",
      d=5, input_shape=(3, 8, 8))
def _(g, h):
    return g.op("Sub", [h, g.op("GlobalAveragePool", [h])])


@rule("mul_swish", "Mul", "Mul(h, Sigmoid(h)): x*sigmoid(x), both inputs depend on the layer",
      d=3, input_shape=(3, 8, 8))
def _(g, h):
    return g.op("Mul", [h, g.op("Sigmoid", [h])])


@rule("mul_se_broadcast", "Mul",
      "Squeeze-excitation style Mul(h, Sigmoid(GAP(h))): broadcast [N,C,1,1], both depend on h",
      d=4, input_shape=(3, 8, 8))
def _(g, h):
    return g.op("Mul", [h, g.op("Sigmoid", [g.op("GlobalAveragePool", [h])])])


@rule("div_broadcast", "Div",
      "Div(h, Sigmoid(GAP(h)) + 0.5): broadcast [N,C,1,1] denominator in (0.5,1.5), both depend on h",
      d=5, input_shape=(3, 8, 8))
def _(g, h):
    s = g.op("Sigmoid", [g.op("GlobalAveragePool", [h])])
    den = g.op("Add", [s, g.const("half", np.float32(0.5))])
    return g.op("Div", [h, den])


@rule("arith_const_broadcast", "Add/Sub/Mul/Div",
      "Add c[C,1,1], Sub from c[1,1,W] (constant first), Mul c[H,W], Div by positive c[1,C,1,1]",
      d=6, input_shape=(3, 8, 8))
def _(g, h):
    a = g.op("Add", [h, g.const("c_add", g.rng.standard_normal([4, 1, 1]))])
    s = g.op("Sub", [g.const("c_sub", g.rng.standard_normal([1, 1, 8])), a])
    m = g.op("Mul", [s, g.const("c_mul", g.rng.uniform(-1.5, 1.5, [8, 8]))])
    return g.op("Div", [m, g.const("c_div", g.rng.uniform(0.5, 2.0, [1, 4, 1, 1]))])


@rule("concat", "Concat",
      "Concat on axis 1 of Conv1x1(h) (3 channels) and Sigmoid(h) (4 channels)", d=4,
      input_shape=(3, 8, 8))
def _(g, h):
    a = g.conv(h, 4, 3, 1, name="branch")
    b = g.op("Sigmoid", [h])
    return g.op("Concat", [a, b], axis=1)


@rule("flatten", "Flatten", "Flatten axis 1 (then Gemm to the embedding)", d=3,
      input_shape=(3, 8, 8))
def _(g, h):
    return h  # to_embedding adds Flatten -> Gemm


@rule("reshape", "Reshape", "Reshape [N,4,8,8] -> [0,2,-1] = [N,2,128], shape as input", d=5,
      input_shape=(3, 8, 8))
def _(g, h):
    r = g.op("Reshape", [h, g.const("shape", [0, 2, -1], np.int64)])
    # a per-position weight so the Reshape layout matters before Flatten
    return g.op("Mul", [r, g.const("c_mul", g.rng.uniform(0.5, 1.5, [2, 128]))])


def _squeeze():
    g = Graph("squeeze", [4, 9, 9])
    h = g.conv("x", 4, 4, [9, 3], pads=[0, 1, 0, 1], name="stem", out="h")  # [N,4,1,9]
    y = g.op("Squeeze", [h, g.const("axes", [2], np.int64)])
    z = g.to_embedding(y, 4)
    return g, dict(embedding=z, layers=[h], rule="Squeeze", d=4,
                   description="h = Conv kernel [9,3] -> [N,4,1,9]; Squeeze axes [2] (as input) "
                               "-> [N,4,9]")


register("squeeze")(_squeeze)


@rule("unsqueeze", "Unsqueeze", "Unsqueeze axes [1] (as input): [N,4,8,8] -> [N,1,4,8,8]",
      d=3, input_shape=(3, 8, 8))
def _(g, h):
    return g.op("Unsqueeze", [h, g.const("axes", [1], np.int64)])


@rule("transpose", "Transpose", "Transpose perm [0,2,3,1] (not its own inverse)", d=5,
      input_shape=(3, 8, 8))
def _(g, h):
    return g.op("Transpose", [h], perm=[0, 2, 3, 1])


@rule("dropout", "Dropout", "Dropout (inference) with ratio 0.3 given as input", d=4,
      input_shape=(3, 8, 8))
def _(g, h):
    return g.op("Dropout", [h, g.const("ratio", np.float32(0.3))])


@rule("identity", "Identity", "Identity", d=3, input_shape=(3, 8, 8))
def _(g, h):
    return g.op("Identity", [h])


@rule("pad_constant", "Pad",
      "Pad constant mode, pads [0,0,1,2,0,0,2,1] and value 0.5 as inputs", d=5,
      input_shape=(3, 8, 8))
def _(g, h):
    return g.op("Pad", [h, g.const("pads", [0, 0, 1, 2, 0, 0, 2, 1], np.int64),
                        g.const("pad_value", np.float32(0.5))], mode="constant")


@rule("resize_nearest", "Resize", "Resize nearest, scales [1,1,2,2] (defaults otherwise)", d=4,
      input_shape=(3, 6, 6))
def _(g, h):
    return g.op("Resize", [h, "", g.const("scales", [1, 1, 2, 2])], mode="nearest")


@rule("resize_linear", "Resize",
      "Resize linear to sizes [N,4,11,13] (default coordinate_transformation_mode half_pixel); "
      "sizes = Concat(Shape(h)[0:2], [11,13]) as the PyTorch exporter writes a dynamic batch",
      d=3, input_shape=(3, 8, 8))
def _(g, h):
    shp = g.op("Shape", [h])
    nc = g.op("Slice", [shp, g.const("s0", [0], np.int64), g.const("s2", [2], np.int64)])
    sizes = g.op("Concat", [nc, g.const("hw", [11, 13], np.int64)], axis=0)
    return g.op("Resize", [h, "", "", sizes], mode="linear")




@rule("neg", "Neg", "Neg", d=3, input_shape=(3, 8, 8))
def _(g, h):
    return g.op("Neg", [h])


@rule("sum_broadcast", "Sum",
      "Sum of three inputs: h, Tanh(h) and a [1,8,1] constant that broadcasts", d=4,
      input_shape=(3, 8, 8))
def _(g, h):
    t = g.op("Tanh", [h])
    return g.op("Sum", [h, t, g.const("sum_bias", g.small([1, 8, 1]))])


@rule("reduce_mean", "ReduceMean",
      "ReduceMean over axes [2] (attribute form, opset 17), keepdims 1", d=4, input_shape=(3, 8, 8))
def _(g, h):
    return g.op("ReduceMean", [h], axes=[2], keepdims=1)


@rule("reduce_sum", "ReduceSum",
      "ReduceSum over axes [-1, 1] (input form), keepdims 0", d=3, input_shape=(3, 8, 8))
def _(g, h):
    return g.op("ReduceSum", [h, g.const("rs_axes", [-1, 1], np.int64)], keepdims=0)


@rule("hard_sigmoid", "HardSigmoid",
      "HardSigmoid alpha 1.2 beta 0.6 (linear for h in (-0.5, 0.33), flat on both sides)", d=4,
      input_shape=(3, 8, 8))
def _(g, h):
    return g.op("HardSigmoid", [h], alpha=1.2, beta=0.6)


@rule("hard_swish", "HardSwish",
      "HardSwish(6h - 2): h mapped so all three pieces (0, slope x/3+1/2, 1) are exercised", d=5,
      input_shape=(3, 8, 8))
def _(g, h):
    a = g.op("Mul", [h, g.const("six", np.float32(6.0))])
    return g.op("HardSwish", [g.op("Sub", [a, g.const("two", np.float32(2.0))])])


@rule("erf", "Erf", "Erf (exact GELU's core, as opset-17 exporters emit it)", d=4,
      input_shape=(3, 8, 8))
def _(g, h):
    return g.op("Erf", [h])


@rule("gelu_exact", "Gelu", "Gelu approximate none (opset 20 op)", d=4, input_shape=(3, 8, 8),
      opset=20)
def _(g, h):
    return g.op("Gelu", [h])


@rule("gelu_tanh", "Gelu", "Gelu approximate tanh (opset 20 op), on 2h", d=3,
      input_shape=(3, 8, 8), opset=20)
def _(g, h):
    return g.op("Gelu", [g.op("Mul", [h, g.const("two", np.float32(2.0))])], approximate="tanh")


@rule("mish", "Mish", "Mish (opset 18 op), on 2h", d=4, input_shape=(3, 8, 8), opset=18)
def _(g, h):
    return g.op("Mish", [g.op("Mul", [h, g.const("two", np.float32(2.0))])])


@rule("prelu", "PRelu", "PRelu with a per-channel slope [4,1,1] in (0.05, 0.3)", d=4,
      input_shape=(3, 8, 8))
def _(g, h):
    return g.op("PRelu", [h, g.const("prelu.slope", g.rng.uniform(0.05, 0.3, [4, 1, 1]))])


@rule("elu_selu_celu", "Elu/Selu/Celu",
      "Elu alpha 0.8 + Selu (defaults) + Celu alpha 1.5, each on h", d=5, input_shape=(3, 8, 8))
def _(g, h):
    a = g.op("Elu", [h], alpha=0.8)
    b = g.op("Selu", [h])
    c = g.op("Celu", [h], alpha=1.5)
    return g.op("Sum", [a, b, c])


@rule("softsign_thresholded", "Softsign/ThresholdedRelu",
      "Softsign(h) + ThresholdedRelu(h) with alpha 0.2", d=4, input_shape=(3, 8, 8))
def _(g, h):
    return g.op("Add", [g.op("Softsign", [h]), g.op("ThresholdedRelu", [h], alpha=0.2)])


@rule("silu_exporter", "Sigmoid/Mul",
      "SiLU as torch.onnx.export writes it: Mul(Sigmoid(h), h) (sigmoid first), then a second SiLU",
      d=4, input_shape=(3, 8, 8))
def _(g, h):
    a = g.op("Mul", [g.op("Sigmoid", [h]), h])
    return g.op("Mul", [a, g.op("Sigmoid", [a])])


@rule("pow_scalar", "Pow",
      "Pow(h, 2.0) and Pow(h, int64 3): a float scalar exponent and an integer one", d=4,
      input_shape=(3, 8, 8))
def _(g, h):
    a = g.op("Pow", [h, g.const("two", np.float32(2.0))])
    b = g.op("Pow", [h, g.const("three", np.int64(3), np.int64)])
    return g.op("Add", [a, b])


@rule("pow_broadcast", "Pow",
      "Pow(Sigmoid(h), E) with a constant exponent E [4,1,1] in (0.5, 3) (positive base)", d=5,
      input_shape=(3, 8, 8))
def _(g, h):
    e = g.const("exponent", g.rng.uniform(0.5, 3.0, [4, 1, 1]))
    return g.op("Pow", [g.op("Sigmoid", [h]), e])


@rule("sqrt_reciprocal", "Sqrt/Reciprocal",
      "Sqrt(Sigmoid(h)) + Reciprocal(Sigmoid(h) + 0.5)", d=4, input_shape=(3, 8, 8))
def _(g, h):
    s = g.op("Sigmoid", [h])
    a = g.op("Sqrt", [s])
    b = g.op("Reciprocal", [g.op("Add", [s, g.const("half", np.float32(0.5))])])
    return g.op("Add", [a, b])


@rule("exp_log", "Exp/Log", "Exp(h) * 0.1 + Log(Sigmoid(h))", d=5, input_shape=(3, 8, 8))
def _(g, h):
    a = g.op("Mul", [g.op("Exp", [h]), g.const("tenth", np.float32(0.1))])
    b = g.op("Log", [g.op("Sigmoid", [h])])
    return g.op("Add", [a, b])


@rule("abs", "Abs", "Abs (kink at 0; coordinates are drawn away from it)", d=4,
      input_shape=(3, 8, 8))
def _(g, h):
    return g.op("Abs", [h])


@rule("max_variadic", "Max",
      "Max of h, Neg(h) and a constant c [4,1,1] (three inputs, broadcasting)", d=5,
      input_shape=(3, 8, 8))
def _(g, h):
    return g.op("Max", [h, g.op("Neg", [h]), g.const("c_max", g.rng.uniform(0.2, 0.6, [4, 1, 1]))])


@rule("min_broadcast", "Min",
      "Min(h, GlobalAveragePool(h)): [N,C,H,W] against [N,C,1,1], both depend on h", d=4,
      input_shape=(3, 8, 8))
def _(g, h):
    return g.op("Min", [h, g.op("GlobalAveragePool", [h])])


@rule("max_ties", "Max/ReduceMax",
      "Ties everywhere: Max(h, h) + ReduceMax(Concat(h, h) on axis 1, axes [1]): each tied input "
      "gets half the gradient, so the sums are exactly 1 (whole gradient twice would give 2)",
      d=4, input_shape=(3, 8, 8))
def _(g, h):
    m = g.op("Max", [h, h])
    r = g.op("ReduceMax", [g.op("Concat", [h, h], axis=1)], axes=[1], keepdims=1)
    return g.op("Add", [m, r])


@rule("where_const_cond", "Where",
      "Where(C, h, Sigmoid(h)) with a constant boolean C [8,8] (broadcast over N and channels)",
      d=4, input_shape=(3, 8, 8))
def _(g, h):
    c = g.const("cond", g.rng.uniform(0, 1, [8, 8]) > 0.5, np.bool_)
    return g.op("Where", [c, h, g.op("Sigmoid", [h])])


@rule("where_data_cond", "Where",
      "Where(h > 0.1, h, GlobalAveragePool(h)): the condition depends on h (not differentiated), "
      "the second branch broadcasts [N,C,1,1]", d=5, input_shape=(3, 8, 8))
def _(g, h):
    c = g.op("Greater", [h, g.const("thr", np.float32(0.1))])
    return g.op("Where", [c, h, g.op("GlobalAveragePool", [h])])


@rule("cast_float", "Cast",
      "Cast h to double and back to float, plus Cast(1.5h -> int64 -> float): the integer cast "
      "carries no gradient", d=4, input_shape=(3, 8, 8))
def _(g, h):
    dbl = g.op("Cast", [h], to=TensorProto.DOUBLE)
    back = g.op("Cast", [dbl], to=TensorProto.FLOAT)
    small = g.op("Mul", [h, g.const("c15", np.float32(1.5))])
    i = g.op("Cast", [small], to=TensorProto.INT64)
    return g.op("Add", [back, g.op("Cast", [i], to=TensorProto.FLOAT)])


@rule("softmax_axis1", "Softmax", "Softmax over the channel axis 1 of [N,4,8,8], on 2h", d=4,
      input_shape=(3, 8, 8))
def _(g, h):
    return g.op("Softmax", [g.op("Mul", [h, g.const("two", np.float32(2.0))])], axis=1)


@rule("softmax_last", "Softmax", "Softmax with the default axis (-1, opset 13+ semantics)", d=5,
      input_shape=(3, 8, 8))
def _(g, h):
    return g.op("Softmax", [h])


@rule("log_softmax", "LogSoftmax", "LogSoftmax over axis -2", d=4, input_shape=(3, 8, 8))
def _(g, h):
    return g.op("LogSoftmax", [h], axis=-2)


@rule("reduce_max_attr", "ReduceMax",
      "ReduceMax over axes [-1] (attribute form, opset 17), keepdims 1", d=4, input_shape=(3, 8, 8))
def _(g, h):
    return g.op("ReduceMax", [h], axes=[-1], keepdims=1)


@rule("reduce_max_input", "ReduceMax",
      "ReduceMax over axes [1, 3] (input form, opset 18), keepdims 0", d=3, input_shape=(3, 8, 8),
      opset=18)
def _(g, h):
    return g.op("ReduceMax", [h, g.const("axes", [1, 3], np.int64)], keepdims=0)


@rule("reduce_min", "ReduceMin", "ReduceMin over axes [-2] (attribute form, opset 17), keepdims 0",
      d=4, input_shape=(3, 8, 8))
def _(g, h):
    return g.op("ReduceMin", [h], axes=[-2], keepdims=0)


@rule("layer_norm_last", "LayerNormalization",
      "LayerNormalization over the last axis (-1, as transformers on [N,T,C]), scale and bias [8]",
      d=4, input_shape=(3, 8, 8))
def _(g, h):
    return g.op("LayerNormalization", [h, g.const("ln.scale", g.rng.uniform(0.5, 1.5, [8])),
                                       g.const("ln.bias", g.small([8]))], axis=-1)


@rule("layer_norm_axis1", "LayerNormalization",
      "LayerNormalization over axes 1.. (C,H,W together), scale [4,8,8], no bias, epsilon 1e-3, "
      "Mean and InvStdDev outputs named by the model", d=5, input_shape=(3, 8, 8))
def _(g, h):
    y, _, _ = g.op("LayerNormalization",
                   [h, g.const("ln.scale", g.rng.uniform(0.5, 1.5, [4, 8, 8]))], n_out=3,
                   axis=1, epsilon=1e-3)
    return y


@rule("group_norm_18", "GroupNormalization",
      "GroupNormalization opset 18: 2 groups of 2 channels, scale and bias per group [2]", d=4,
      input_shape=(3, 8, 8), opset=18)
def _(g, h):
    return g.op("GroupNormalization", [h, g.const("gn.scale", g.rng.uniform(0.5, 1.5, [2])),
                                       g.const("gn.bias", g.small([2]))], num_groups=2)


@rule("group_norm_21", "GroupNormalization",
      "GroupNormalization opset 21: 2 groups of 2 channels, scale and bias per channel [4]", d=5,
      input_shape=(3, 8, 8), opset=21)
def _(g, h):
    return g.op("GroupNormalization", [h, g.const("gn.scale", g.rng.uniform(0.5, 1.5, [4])),
                                       g.const("gn.bias", g.small([4]))], num_groups=2,
                epsilon=1e-3)


@rule("instance_norm", "InstanceNormalization",
      "InstanceNormalization with scale and bias [4]", d=4, input_shape=(3, 8, 8))
def _(g, h):
    return g.op("InstanceNormalization", [h, g.const("in.scale", g.rng.uniform(0.5, 1.5, [4])),
                                          g.const("in.bias", g.small([4]))])
# ---- indexing, broadcasting, einsum and attention (rules/index.rs, rules/linalg.rs) ----------

I64_MAX = np.iinfo(np.int64).max
I64_MIN = np.iinfo(np.int64).min


class GraphAtOpset(Graph):
    """A Graph whose model imports a later opset (e.g. 18 for Split's num_outputs)."""

    def __init__(self, name, input_shape, opset):
        super().__init__(name, input_shape)
        self.opset = opset

    def model(self, outputs, doc=""):
        m = super().model(outputs, doc)
        m.opset_import[0].version = self.opset
        if self.opset >= 21:
            m.ir_version = 10  # the IR version that opset 21 came with
        return m


def rule_at(name, op, desc, d, input_shape=(4, 9, 9), opset=OPSET, layers=None):
    """Like @rule, with the model's opset and (optionally) more layers: the body returns
    (tensor after the op, extra layer names)."""

    def deco(body):
        def build():
            g = GraphAtOpset(name, input_shape, opset)
            h = g.stem()
            y, extra = body(g, h)
            z = g.to_embedding(y, d)
            return g, dict(embedding=z, layers=[h] + extra, rule=op, d=d, description=desc)

        register(name)(build)
        return body

    return deco


def i64(g, base, values):
    return g.const(base, values, np.int64)


def batch_dim(g, t):
    """Shape(t)[0:1] the way exporters write it: Shape -> Gather(0) -> Unsqueeze."""
    b = g.op("Gather", [g.op("Shape", [t]), i64(g, "zero", 0)], axis=0)
    return g.op("Unsqueeze", [b, i64(g, "axes0", [0])])


@rule("slice_shape_arith", "Slice",
      "ShuffleNet channel split: Slice(h, 0, C/2) and Slice(h, C/2, INT64_MAX) on axis 1, C/2 computed "
      "as Shape -> Gather -> Div -> Unsqueeze; halves combined as a*Sigmoid(b)", d=4,
      input_shape=(3, 8, 8))
def _(g, h):
    c = g.op("Gather", [g.op("Shape", [h]), i64(g, "one", 1)], axis=0)
    half = g.op("Unsqueeze", [g.op("Div", [c, i64(g, "two", 2)]), i64(g, "axes0", [0])])
    ax = i64(g, "axis1", [1])
    a = g.op("Slice", [h, i64(g, "start0", [0]), half, ax])
    b = g.op("Slice", [h, half, i64(g, "end_max", [I64_MAX]), ax])
    return g.op("Mul", [a, g.op("Sigmoid", [b])])


@rule("slice_steps", "Slice",
      "Slice axes [-1, 2, 1]: W 1::3 (interleave, past the end), H -1:-10:-2 (negative step and "
      "start, clamped end), C -20:3 (clamped start)", d=5)
def _(g, h):
    return g.op("Slice", [h, i64(g, "starts", [1, -1, -20]), i64(g, "ends", [I64_MAX, -10, 3]),
                          i64(g, "axes", [-1, 2, 1]), i64(g, "steps", [3, -2, 1])])


@rule("slice_reverse", "Slice",
      "Slice without axes or steps: starts [0, 1], ends [INT64_MAX, 3] (axis 0 kept whole); then a flip "
      "of W (INT64_MAX:INT64_MIN:-1) with H 2:100 (clamped end)", d=4, input_shape=(4, 7, 6))
def _(g, h):
    a = g.op("Slice", [h, i64(g, "starts", [0, 1]), i64(g, "ends", [I64_MAX, 3])])
    return g.op("Slice", [a, i64(g, "starts", [I64_MAX, 2]), i64(g, "ends", [I64_MIN, 100]),
                          i64(g, "axes", [3, 2]), i64(g, "steps", [-1, 1])])


@rule("split_input", "Split", "Split axis 1 with split [1, 3] as input; a [N,1,8,8] * b [N,3,8,8]",
      d=4, input_shape=(3, 8, 8))
def _(g, h):
    a, b = g.op("Split", [h, i64(g, "split", [1, 3])], n_out=2, axis=1)
    return g.op("Mul", [a, g.op("Tanh", [b])])


@rule("split_unused_output", "Split",
      "Split axis -1 into 3 equal parts (no split input), only parts 2 and 0 used: Concat(p2, p0); "
      "part 1 has no cotangent (zeros)", d=4)
def _(g, h):
    p0, _p1, p2 = g.op("Split", [h], n_out=3, axis=-1)
    return g.op("Concat", [p2, p0], axis=-1)


@rule_at("split_num_outputs", "Split",
         "opset 18 Split num_outputs 3 on axis 2 of H=8: parts 3, 3, 2; recombined as "
         "Concat(Tanh(p2), p0, p1)", d=5, input_shape=(3, 8, 8), opset=18)
def _(g, h):
    p0, p1, p2 = g.op("Split", [h], n_out=3, axis=2, num_outputs=3)
    return g.op("Concat", [g.op("Tanh", [p2]), p0, p1], axis=2), []


@rule_at("index_ops_opset21", "Slice/Split/Gather/GatherElements/Expand/Tile",
         "The indexing rules in one opset 21 graph (the compiler emits opset 21 forms): Slice "
         "axis 3 ::-2, Split num_outputs 2 on axis 2, Tile [1,1,2,1], Expand to [1,4,8,4], "
         "GatherElements axis 1 with ArgMax indices, Gather axis 1 indices [3, 0]", d=5,
         input_shape=(3, 8, 8), opset=21)
def _(g, h):
    s = g.op("Slice", [h, i64(g, "starts", [-1]), i64(g, "ends", [I64_MIN]), i64(g, "axes", [3]),
                       i64(g, "steps", [-2])])  # [N,4,8,4]
    top, bottom = g.op("Split", [s], n_out=2, axis=2, num_outputs=2)  # [N,4,4,4] each
    t = g.op("Tile", [top, i64(g, "repeats", [1, 1, 2, 1])])  # [N,4,8,4]
    e = g.op("Expand", [g.op("ReduceMean", [bottom, i64(g, "axes2", [2])], keepdims=1),
                        i64(g, "shape", [1, 4, 8, 4])])  # [N,4,8,4]
    m = g.op("Mul", [t, g.op("Sigmoid", [e])])
    mx = g.op("GatherElements", [m, g.op("ArgMax", [m], axis=1, keepdims=1)], axis=1)  # [N,1,8,4]
    picked = g.op("Gather", [m, i64(g, "channels", [3, 0])], axis=1)  # [N,2,8,4]
    return g.op("Concat", [picked, mx], axis=1), []


@rule("gather_tensor_indices", "Gather",
      "Gather axis -1 with 2-D indices [[2, -1], [0, 2]] (negative, repeated): [N,4,8,8] -> [N,4,8,2,2]",
      d=4, input_shape=(3, 8, 8))
def _(g, h):
    return g.op("Gather", [h, i64(g, "indices", [[2, -1], [0, 2]])], axis=-1)


@rule("gather_many_indices", "Gather",
      "Gather axis 2 of Reshape(h) [N,4,64] with 40 indices (repeats, negatives): 64 x 40 exceeds the "
      "one-hot limit, so the rule scatters (ScatterElements add)", d=4, input_shape=(3, 8, 8))
def _(g, h):
    r = g.op("Reshape", [h, i64(g, "shape", [0, 4, 64])])
    idx = g.rng.integers(-64, 64, [40])
    return g.op("Gather", [r, i64(g, "indices", idx)], axis=2)


@rule("gather_scalar_shape_index", "Gather",
      "Gather axis 2 with a scalar index computed from shapes (H - 3 = 5): removes the axis, "
      "[N,4,8,8] -> [N,4,8]", d=3, input_shape=(3, 8, 8))
def _(g, h):
    hh = g.op("Gather", [g.op("Shape", [h]), i64(g, "two", 2)], axis=0)
    idx = g.op("Sub", [hh, i64(g, "three", 3)])
    return g.op("Gather", [h, idx], axis=2)


@rule("gather_elements_const", "GatherElements",
      "GatherElements axis 2 with constant indices [1,4,3,8] (one negative) expanded to the batch "
      "(Expand to Concat(Shape(h)[0:1], [4,3,8]))", d=4, input_shape=(3, 8, 8))
def _(g, h):
    idx = g.rng.integers(0, 8, [1, 4, 3, 8])
    idx[0, 0, 0, 0] = -1
    shape = g.op("Concat", [batch_dim(g, h), i64(g, "rest", [4, 3, 8])], axis=0)
    full = g.op("Expand", [i64(g, "indices", idx), shape])
    return g.op("GatherElements", [h, full], axis=2)


@rule("gather_elements_argmax", "GatherElements",
      "GatherElements axis 1 with data-dependent indices ArgMax(h, axis 1, keepdims): the channel "
      "maximum", d=4, input_shape=(3, 8, 8))
def _(g, h):
    idx = g.op("ArgMax", [h], axis=1, keepdims=1)
    return g.op("GatherElements", [h, idx], axis=1)


@rule("expand", "Expand",
      "Expand Sigmoid(GlobalAveragePool(h)) [N,4,1,1] to shape [1,1,6,8] -> [N,4,6,8], times "
      "Slice(h) (both depend on h)", d=5, input_shape=(3, 8, 8))
def _(g, h):
    s = g.op("Sigmoid", [g.op("GlobalAveragePool", [h])])
    e = g.op("Expand", [s, i64(g, "shape", [1, 1, 6, 8])])
    hs = g.op("Slice", [h, i64(g, "s", [1]), i64(g, "e", [7]), i64(g, "a", [2])])
    return g.op("Mul", [e, hs])


@rule("tile", "Tile", "Tile repeats [1, 2, 1, 3]: [N,4,5,6] -> [N,8,5,18]", d=4, input_shape=(3, 5, 6))
def _(g, h):
    t = g.op("Tile", [h, i64(g, "repeats", [1, 2, 1, 3])])
    return g.op("Mul", [t, g.const("c_mul", g.rng.uniform(0.5, 1.5, [8, 5, 18]))])


@rule("einsum_bmm", "Einsum",
      "Einsum on A = Reshape(h) [N,4,64]: G = 'bij,bkj->bik'(A, A) (both operands one tensor), "
      "then implicit output 'bij,jk' (= bik) with a weight [4,5]", d=4, input_shape=(3, 8, 8))
def _(g, h):
    a = g.op("Reshape", [h, i64(g, "shape", [0, 4, 64])])
    gram = g.op("Einsum", [a, a], equation="bij,bkj->bik")
    gram = g.op("Mul", [gram, g.const("scale", np.float32(0.05))])
    return g.op("Einsum", [gram, g.const("w", g.he([4, 5], 4))], equation="bij,jk")


@rule("einsum_ellipsis", "Einsum",
      "Einsum with ellipses: T = '...ij,...jk->...ik'(h, h) (batched matrix square, [N,4,8,8]), then "
      "'...chw,ck->...kh'(T, weight [4,3]): w summed within the first operand alone -> [N,3,8]", d=4,
      input_shape=(3, 8, 8))
def _(g, h):
    t = g.op("Einsum", [h, h], equation="...ij,...jk->...ik")
    t = g.op("Mul", [t, g.const("scale", np.float32(0.3))])
    return g.op("Einsum", [t, g.const("w", g.he([4, 3], 4))], equation="...chw,ck->...kh")


@rule("reshape_runtime_shape", "Reshape",
      "Reshape [N,4,8,8] -> [N,64,4] with the target computed at run time: "
      "Concat(Unsqueeze(Gather(Shape(h), 0)), Unsqueeze(Gather(Shape(h),2) * Gather(Shape(h),3)), "
      "[-1])", d=4, input_shape=(3, 8, 8))
def _(g, h):
    shp = g.op("Shape", [h])
    hh = g.op("Gather", [shp, i64(g, "two", 2)], axis=0)
    ww = g.op("Gather", [shp, i64(g, "three", 3)], axis=0)
    hw = g.op("Unsqueeze", [g.op("Mul", [hh, ww]), i64(g, "axes0", [0])])
    target = g.op("Concat", [batch_dim(g, h), hw, i64(g, "minus1", [-1])], axis=0)
    r = g.op("Reshape", [h, target])
    return g.op("Mul", [r, g.const("c_mul", g.rng.uniform(0.5, 1.5, [64, 4]))])


@rule("matmul_const_first", "MatMul",
      "MatMul with the constant first, as a token-mixing MLP has it: W [8,8] x h [N,4,8,8] (the "
      "gradient of the second operand, dB = Wᵀ·dY)", d=4, input_shape=(3, 8, 8))
def _(g, h):
    return g.op("MatMul", [g.const("mix.weight", g.he([8, 8], 8)), h])


def _attention(name, use_einsum):
    """A one-block ViT: patch Conv tokens + class token, fused QKV MatMul + Split, heads by runtime
    Reshape/Transpose, Q·Kᵀ scaled, Softmax over the keys, ·V, merge heads,
    output projection + residual, class-token Gather, Gemm to the embedding."""
    g = Graph(name, [3, 8, 8])
    h = g.stem()  # [N,4,8,8]
    c, heads, hd = 8, 2, 4
    p = g.conv(h, 4, c, 2, strides=2, name="patch")  # [N,8,4,4]
    b = batch_dim(g, p)
    flat = g.op("Reshape", [p, g.op("Concat", [b, i64(g, "c_m1", [c, -1])], axis=0)])  # [N,8,16]
    tokens = g.op("Transpose", [flat], perm=[0, 2, 1])  # [N,16,8]
    cls = g.op("Expand", [g.const("cls_token", g.small([1, 1, c], 0.5)),
                          g.op("Concat", [b, i64(g, "one_c", [1, c])], axis=0)])
    seq = g.op("Concat", [cls, tokens], axis=1)  # [N,17,8]
    tok = g.op("Add", [seq, g.const("pos_embed", g.small([1, 17, c], 0.5))], out="tok")
    qkv = g.op("MatMul", [tok, g.const("qkv.weight", g.he([c, 3 * c], c, 1.0))])
    q, k, v = g.op("Split", [qkv, i64(g, "qkv_split", [c, c, c])], n_out=3, axis=-1)
    t = g.op("Gather", [g.op("Shape", [tok]), i64(g, "one", 1)], axis=0)
    t = g.op("Unsqueeze", [t, i64(g, "axes0", [0])])
    head_shape = g.op("Concat", [batch_dim(g, tok), t, i64(g, "heads", [heads, hd])], axis=0)

    def split_heads(x):
        return g.op("Transpose", [g.op("Reshape", [x, head_shape])], perm=[0, 2, 1, 3])  # [N,2,17,4]

    q, k, v = split_heads(q), split_heads(k), split_heads(v)
    if use_einsum:
        s = g.op("Einsum", [q, k], equation="bhqd,bhkd->bhqk")
    else:
        s = g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 1, 3, 2])])
    a = g.op("Softmax", [g.op("Mul", [s, g.const("scale", np.float32(hd ** -0.5))])], axis=-1)
    if use_einsum:
        o = g.op("Einsum", [a, v], equation="bhqk,bhkd->bhqd")
    else:
        o = g.op("MatMul", [a, v])
    o = g.op("Transpose", [o], perm=[0, 2, 1, 3])  # [N,17,2,4]
    merge = g.op("Concat", [batch_dim(g, o), t, i64(g, "c", [c])], axis=0)
    o = g.op("Reshape", [o, merge])
    o = g.op("MatMul", [o, g.const("proj.weight", g.he([c, c], c, 1.0))])
    x = g.op("Add", [tok, o])
    cls_out = g.op("Gather", [x, i64(g, "cls_index", 0)], axis=1)  # [N,8]
    z = g.gemm(cls_out, c, 6, name="head", out="z")
    qk = "Einsum 'bhqd,bhkd->bhqk' and 'bhqk,bhkd->bhqd'" if use_einsum else "MatMul Q·Kᵀ and A·V"
    return g, dict(embedding=z, layers=[h, tok], rule="Einsum" if use_einsum else "MatMul", d=6,
                   description=f"One attention block, 2 heads: patch Conv 2x2/2 tokens, runtime-shape "
                               f"Reshape/Transpose, class token (Expand + Concat), fused QKV MatMul + "
                               f"Split, {qk} (both operands on the path), Softmax, "
                               f"merge heads, projection + residual, class-token Gather. Layers: the stem "
                               f"and the tokens [N,17,8]")


@rule("batch_moved_axis", "Transpose/Gather",
      "timm's qkv layout: Reshape [N,16,2,2,4] then Transpose perm [2,0,3,1,4] puts the batch on axis 1; "
      "Gather axis 0 unbinds q and k, q.kT, Softmax, ReduceMean axes [1] (positive axes on a moved batch)",
      d=4, input_shape=(3, 8, 8))
def _(g, h):
    t = g.op("Reshape", [h, i64(g, "qk_shape", [-1, 16, 2, 2, 4])])  # [N,16,2(qk),2(heads),4]
    t = g.op("Transpose", [t], perm=[2, 0, 3, 1, 4])  # [2, N, 2, 16, 4]
    q = g.op("Gather", [t, i64(g, "i0", 0)], axis=0)  # [N,2,16,4]
    k = g.op("Gather", [t, i64(g, "i1", 1)], axis=0)
    s = g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 1, 3, 2])])  # [N,2,16,16]
    a = g.op("Softmax", [s], axis=-1)
    return g.op("ReduceMean", [a], axes=[1], keepdims=0)  # [N,16,16]


@rule("batch_merged_windows", "Reshape/Softmax",
      "Swin's window partition: [N,8,8,4] into 2x2 windows of 4x4 as [N*4,16,4] (batch merged with the "
      "window count), MatMul, Softmax axis 1 and a constant [1,16,4] bias on the merged tensor, windows "
      "merged back", d=5, input_shape=(3, 8, 8))
def _(g, h):
    x = g.op("Transpose", [h], perm=[0, 2, 3, 1])  # [N,8,8,4]
    x = g.op("Reshape", [x, i64(g, "win6", [-1, 2, 4, 2, 4, 4])])
    x = g.op("Transpose", [x], perm=[0, 1, 3, 2, 4, 5])  # [N,2,2,4,4,4]
    w = g.op("Reshape", [x, i64(g, "win3", [-1, 16, 4])])  # [N*4,16,4]
    w = g.op("MatMul", [w, g.const("win.weight", g.he([4, 4], 4, 1.0))])
    w = g.op("Softmax", [w], axis=1)
    w = g.op("Add", [w, g.const("win.bias", g.small([1, 16, 4], 0.5))])
    x = g.op("Reshape", [w, i64(g, "unwin6", [-1, 2, 2, 4, 4, 4])])
    x = g.op("Transpose", [x], perm=[0, 1, 3, 2, 4, 5])
    return g.op("Reshape", [x, i64(g, "unwin4", [-1, 8, 8, 4])])


register("attention_matmul")(lambda: _attention("attention_matmul", False))
register("attention_einsum")(lambda: _attention("attention_einsum", True))


# ======================================================================================
# Whole models
# ======================================================================================

class TorchConvNamer:
    """Folded Conv+BN parameters named as torch.onnx.export names them in eval mode."""

    def __init__(self, g):
        self.g = g

    def conv_bn(self, scope, x, cin, cout, k, stride=1, pad=0, gamma=(0.8, 1.2)):
        g = self.g
        w, _ = g.conv_params(cin, cout, k)
        s, b, m, v = g.bn_params(cout, gamma)
        f = s / np.sqrt(v + 1e-5)
        wf = (w * f[:, None, None, None]).astype(np.float32)
        bf = (b - m * f).astype(np.float32)
        wn = g.const(f"onnx::Conv_{g.torch_const}", wf)
        bn = g.const(f"onnx::Conv_{g.torch_const + 1}", bf)
        g.torch_const += 2
        kk = _pair(k)
        return g.top(f"{scope}", "Conv", [x, wn, bn], kernel_shape=kk, strides=_pair(stride),
                     pads=[pad, pad, pad, pad], dilations=[1, 1], group=1)


def _mnist_encoder():
    g = Graph("mnist_encoder", [1, 28, 28], input_name="input")
    t = TorchConvNamer(g)
    x = t.conv_bn("/block1/conv", "input", 1, 16, 3, pad=1)
    x = g.top("/block1/relu", "Relu", [x])
    p1 = g.top("/block1/pool", "MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2],
               pads=[0, 0, 0, 0])
    x = t.conv_bn("/block2/conv", p1, 16, 32, 3, pad=1)
    x = g.top("/block2/relu", "Relu", [x])
    p2 = g.top("/block2/pool", "MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2],
               pads=[0, 0, 0, 0])
    f = g.top("", "Flatten", [p2], axis=1)
    z = g.top("/fc", "Gemm", [f, g.const("fc.weight", g.he([32, 32 * 7 * 7], 32 * 7 * 7, 1.0)),
                             g.const("fc.bias", g.small([32]))],
              out="embedding", alpha=1.0, beta=1.0, transB=1)
    return g, dict(embedding=z, layers=[p1, p2], d=32,
                   description="Digit encoder, PyTorch-exporter names, BatchNorm folded into Conv: "
                               "Conv(1->16,3,p1)-BN-Relu-MaxPool2 -> Conv(16->32,3,p1)-BN-Relu-MaxPool2"
                               " -> Flatten -> Gemm, D=32. Layers: input of conv2, output of block 2")


def _alexnet_small():
    g = Graph("alexnet_small", [3, 67, 67], input_name="input")
    c = [16, 32, 48, 32, 32]
    x = g.conv("input", 3, c[0], 11, strides=4, pads=[2, 2, 2, 2], name="conv1")  # 16x16
    x = g.op("Relu", [x], name="relu1")
    p1 = g.op("MaxPool", [x], name="pool1", out="pool1", kernel_shape=[3, 3], strides=[2, 2])  # 7
    x = g.conv(p1, c[0], c[1], 5, pads=[2, 2, 2, 2], name="conv2")
    x = g.op("Relu", [x], name="relu2")
    x = g.op("MaxPool", [x], name="pool2", kernel_shape=[3, 3], strides=[2, 2])  # 3
    x = g.conv(x, c[1], c[2], 3, pads=[1, 1, 1, 1], name="conv3")
    x = g.op("Relu", [x], name="relu3")
    x = g.conv(x, c[2], c[3], 3, pads=[1, 1, 1, 1], name="conv4")
    x = g.op("Relu", [x], name="relu4")
    x = g.conv(x, c[3], c[4], 3, pads=[1, 1, 1, 1], name="conv5")
    r5 = g.op("Relu", [x], name="relu5", out="relu5")
    x = g.op("MaxPool", [r5], name="pool5", kernel_shape=[3, 3], strides=[2, 2])  # 1
    x = g.op("Flatten", [x], name="flatten", axis=1)
    x = g.op("Dropout", [x, g.const("drop_ratio", np.float32(0.5))], name="drop6")
    x = g.op("Relu", [g.gemm(x, c[4], 128, name="fc6", gain=2.0)], name="relu6")
    x = g.op("Dropout", [x, g.const("drop_ratio", np.float32(0.5))], name="drop7")
    z = g.gemm(x, 128, 64, name="fc7", out="embedding")
    return g, dict(embedding=z, layers=[p1, r5], d=64,
                   description="AlexNet-like: Conv 11x11/4 -> Relu -> MaxPool 3x3/2 (overlapping) -> "
                               "Conv 5x5 -> Relu -> MaxPool 3x3/2 -> 3x Conv 3x3 + Relu -> MaxPool "
                               "3x3/2 -> Flatten -> Dropout -> Gemm -> Relu -> Dropout -> Gemm, D=64. "
                               "Layers: input of conv2, output of conv5")


def _inception_small():
    g = Graph("inception_small", [3, 16, 16])
    x = g.conv("x", 3, 16, 3, pads=[1, 1, 1, 1], name="stem_conv", bias=False)
    x = g.batchnorm(x, 16, name="stem_bn")
    s = g.op("Relu", [x], name="stem_relu", out="stem")

    def cbr(t, cin, cout, k, name):
        p = k // 2
        t = g.conv(t, cin, cout, k, pads=[p] * 4, bias=False, name=f"{name}_conv")
        t = g.batchnorm(t, cout, name=f"{name}_bn")
        return g.op("Relu", [t], name=f"{name}_relu")

    b1 = cbr(s, 16, 8, 1, "b1x1")
    b2 = cbr(cbr(s, 16, 6, 1, "b3x3_reduce"), 6, 8, 3, "b3x3")
    b3 = cbr(cbr(s, 16, 4, 1, "b5x5_reduce"), 4, 8, 5, "b5x5")
    b4 = g.op("MaxPool", [s], name="bpool_pool", kernel_shape=[3, 3], strides=[1, 1],
              pads=[1, 1, 1, 1])
    b4 = cbr(b4, 16, 8, 1, "bpool_proj")
    cat = g.op("Concat", [b1, b2, b3, b4], name="concat", out="inception", axis=1)
    x = g.op("GlobalAveragePool", [cat], name="gap")
    x = g.op("Flatten", [x], name="flatten", axis=1)
    z = g.gemm(x, 32, 16, name="fc", out="embedding")
    return g, dict(embedding=z, layers=[s, cat], d=16,
                   description="Inception-like block with explicit BatchNormalization nodes: stem "
                               "Conv-BN-Relu, branches 1x1 | 1x1->3x3 | 1x1->5x5 | MaxPool3x3->1x1, "
                               "Concat on channels, GlobalAveragePool, Flatten, Gemm, D=16. Layers: "
                               "block input, concat output")


def _resnet(name, input_shape, stem, stages, fc_dim):
    """torchvision-style ResNet with BasicBlocks, BatchNorm folded, exporter names.

    stem: "imagenet" (conv 7x7/2 + maxpool 3x3/2) or "small" (conv 3x3/1, no maxpool).
    stages: list of (width, blocks, stride). fc_dim None: embedding = flattened pooled features.
    """
    g = Graph(name, input_shape, input_name="input")
    t = TorchConvNamer(g)
    cin = input_shape[0]
    if stem == "imagenet":
        x = t.conv_bn("/conv1", "input", cin, 64, 7, stride=2, pad=3)
        x = g.top("/relu", "Relu", [x])
        x = g.top("/maxpool", "MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2],
                  pads=[1, 1, 1, 1], dilations=[1, 1], ceil_mode=0)
        c = 64
    else:
        c = stages[0][0]
        x = t.conv_bn("/conv1", "input", cin, c, 3, stride=1, pad=1)
        x = g.top("/relu", "Relu", [x])
    block_outputs = []
    for si, (width, blocks, stride) in enumerate(stages, start=1):
        for bi in range(blocks):
            s = stride if bi == 0 else 1
            scope = f"/layer{si}/layer{si}.{bi}"
            idt = x
            y = t.conv_bn(f"{scope}/conv1", x, c, width, 3, stride=s, pad=1)
            y = g.top(f"{scope}/relu", "Relu", [y])
            # small gamma on the residual branch keeps the summed activations O(1)
            y = t.conv_bn(f"{scope}/conv2", y, width, width, 3, stride=1, pad=1, gamma=(0.2, 0.4))
            if s != 1 or c != width:
                idt = t.conv_bn(f"{scope}/downsample/downsample.0", x, c, width, 1, stride=s, pad=0)
            y = g.top(scope, "Add", [y, idt])
            x = g.top(f"{scope}/relu_1", "Relu", [y])
            block_outputs.append(x)
            c = width
    x = g.top("/avgpool", "GlobalAveragePool", [x])
    if fc_dim is None:
        z = g.top("", "Flatten", [x], out="embedding", axis=1)
        d = c
    else:
        f = g.top("", "Flatten", [x], axis=1)
        z = g.top("/fc", "Gemm", [f, g.const("fc.weight", g.he([fc_dim, c], c, 1.0)),
                                 g.const("fc.bias", g.small([fc_dim]))],
                  out="embedding", alpha=1.0, beta=1.0, transB=1)
        d = fc_dim
    return g, z, block_outputs, d


def _resnet_small():
    g, z, outs, d = _resnet("resnet_small", [3, 16, 16], "small", [(16, 1, 1), (32, 1, 2)], 16)
    return g, dict(embedding=z, layers=outs, d=d,
                   description="Small ResNet, PyTorch-exporter names, BatchNorm folded: conv 3x3 (16) "
                               "-> BasicBlock(16) -> BasicBlock(32, stride 2, 1x1 conv downsample "
                               "shortcut) -> GlobalAveragePool -> Flatten -> fc Gemm, D=16. Layers: "
                               "the two block outputs")


def _resnet18():
    g, z, outs, d = _resnet("resnet18", [3, 224, 224], "imagenet",
                            [(64, 2, 1), (128, 2, 2), (256, 2, 2), (512, 2, 2)], None)
    # layers: output of each stage (the paper's curve over depth)
    layers = [outs[1], outs[3], outs[5], outs[7]]
    return g, dict(embedding=z, layers=layers, d=d,
                   description="ResNet-18 layout (torchvision), PyTorch-exporter names, BatchNorm "
                               "folded, no fc: conv1 7x7/2 -> maxpool 3x3/2 -> 4 stages x 2 BasicBlocks"
                               " -> GlobalAveragePool -> Flatten = embedding D=512. Random weights. "
                               "Layers: output of each stage. Not committed (~45 MB): build with "
                               "--only resnet18")


register("mnist_encoder", kind="model")(_mnist_encoder)
register("alexnet_small", kind="model")(_alexnet_small)
register("inception_small", kind="model")(_inception_small)
register("resnet_small", kind="model")(_resnet_small)
register("resnet18", kind="model", committed=False)(_resnet18)


# ======================================================================================
# Analysis, checks, output
# ======================================================================================

def ops_on_path(graph, layers, embedding):
    """Op types of the nodes between any layer and the embedding, in node order.

    Data flow through Shape is not followed (its output is integer shape arithmetic)."""
    live = set(layers)
    fwd = []
    for n in graph.node:
        if n.op_type != "Shape" and any(i in live for i in n.input if i):
            live.update(n.output)
            fwd.append(n)
    need = {embedding}
    keep = []
    for n in reversed(fwd):
        if any(o in need for o in n.output):
            need.update(i for i in n.input if i)
            keep.append(n)
    keep.reverse()
    ops = []
    for n in keep:
        if n.op_type not in ops:
            ops.append(n.op_type)
    return ops


def check(model, entry, verbose=True):
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as e:
        # GroupNormalization-18 (scale per group) is deprecated by opset 21 but is what opset-18
        # models contain, and ONNX Runtime runs it; nothing else may fail the check.
        if "GroupNormalization is deprecated" not in str(e):
            raise
    # run with the layers as extra outputs to record their shapes and magnitudes
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for layer in entry["layers"]:
        probe.graph.output.append(helper.make_tensor_value_info(layer, TensorProto.FLOAT, None))
    rng = np.random.default_rng(1234)
    x = rng.standard_normal([2] + entry["input_shape"]).astype(np.float32)
    outs = run_ort(probe, entry["input"], x)
    z = outs[0]
    assert z.shape == (2, entry["d"]), (entry["name"], z.shape)
    assert np.all(np.isfinite(z)), entry["name"]
    entry["layer_shapes"] = {}
    for layer, a in zip(entry["layers"], outs[1:]):
        assert a.shape[0] == 2 and np.all(np.isfinite(a))
        entry["layer_shapes"][layer] = list(a.shape[1:])
    if verbose:
        mags = " ".join(f"{float(np.std(a)):.2f}" for a in outs[1:])
        print(f"  {entry['name']:22s} z {list(z.shape)} std {float(np.std(z)):.3f}; "
              f"layer std {mags}; ops {entry['ops']}", file=sys.stderr)


def build(name, fn, kind, committed):
    g, info = fn()
    doc = info["description"]
    model = g.model([(info["embedding"], [BATCH_DIM, info["d"]])], doc=doc)
    entry = {
        "name": name,
        "file": f"{name}.onnx",
        "input": g.input_name,
        "input_shape": g.input_shape,
        "embedding": info["embedding"],
        "layers": info["layers"],
        "ops": ops_on_path(model.graph, info["layers"], info["embedding"]),
        "description": doc,
        "kind": kind,
        "d": info["d"],
        "params": int(sum(int(np.prod(t.dims)) for t in model.graph.initializer
                          if t.data_type == TensorProto.FLOAT)),
        "committed": committed,
        "seed": seed_of(name),
    }
    if "rule" in info:
        entry["rule"] = info["rule"]
    return model, entry


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", help="output folder")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="build only these models")
    ap.add_argument("--list", action="store_true", help="list model names and exit")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    names = [r[0] for r in REGISTRY]
    if args.list:
        for name, _, kind, committed in REGISTRY:
            print(f"{name}\t{kind}\t{'committed' if committed else 'on-demand'}")
        return 0
    if not args.out:
        ap.error("--out is required")
    if args.only:
        unknown = [n for n in args.only if n not in names]
        if unknown:
            ap.error(f"unknown model(s): {', '.join(unknown)}; see --list")
    selected = set(args.only) if args.only else {n for n, _, _, c in REGISTRY if c}
    os.makedirs(args.out, exist_ok=True)
    manifest = []
    for name, fn, kind, committed in REGISTRY:
        model, entry = build(name, fn, kind, committed)
        if name in selected:
            check(model, entry, verbose=not args.quiet)
            onnx.save_model(model, os.path.join(args.out, entry["file"]))
        else:
            # layer shapes for the manifest without running big models: shape inference
            entry["layer_shapes"] = _inferred_layer_shapes(model, entry)
        manifest.append(entry)
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    return 0


def _inferred_layer_shapes(model, entry):
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for vi in inferred.graph.value_info:
        if vi.name in entry["layers"]:
            dims = vi.type.tensor_type.shape.dim
            shapes[vi.name] = [d.dim_value for d in dims[1:]]
    return {layer: shapes.get(layer) for layer in entry["layers"]}



# ======================================================================================
# Token layers (appended): a ViT-like model and a model with a blocked path
# ======================================================================================

def _tiny_vit():
    g = Graph("tiny_vit", [3, 16, 16])
    c, t = 8, 16
    patches = g.conv("x", 3, c, 4, strides=4, name="patch_embed", out="patches")  # [N,8,4,4]
    nhwc = g.op("Transpose", [patches], name="to_nhwc", out="patches_nhwc", perm=[0, 2, 3, 1])
    tokens = g.op("Reshape", [nhwc, g.const("token_shape", [0, t, c], np.int64)], name="to_tokens",
                  out="patch_tokens")  # [N,16,8]
    # A class token: a parameter plus half the mean patch token (Expand has no rule yet, and this
    # keeps the batch axis the way exporters' Expand does).
    mean = g.op("ReduceMean", [tokens], name="token_mean", axes=[1], keepdims=1)
    cls = g.op("Add", [g.op("Mul", [mean, g.const("half", np.float32(0.5))]),
                       g.const("cls_token", g.small([1, 1, c], 0.5))], name="cls", out="cls")
    seq = g.op("Concat", [cls, tokens], name="concat_cls", out="tokens", axis=1)  # [N,17,8]

    def linear(x, fin, fout, name):
        w = g.const(f"{name}.weight", g.he([fin, fout], fin, 1.0))
        return g.op("Add", [g.op("MatMul", [x, w], name=f"{name}_matmul"),
                            g.const(f"{name}.bias", g.small([fout]))], name=f"{name}_add")

    # Channel MLP block with a residual.
    mlp = linear(g.op("Tanh", [linear(seq, c, 16, "fc1")], name="act1"), 16, c, "fc2")
    block1 = g.op("Add", [seq, mlp], name="block1", out="block1")
    # Token mixing (MLP-Mixer style): every token's output depends on every token.
    mixed = g.op("Transpose", [block1], name="mix_in", perm=[0, 2, 1])  # [N,8,17]
    mixed = g.op("Tanh", [linear(mixed, t + 1, t + 1, "mix")], name="act2")
    mixed = g.op("Transpose", [mixed], name="mix_out", perm=[0, 2, 1])
    block2 = g.op("Add", [block1, mixed], name="block2", out="block2")
    pooled = g.op("ReduceMean", [block2], name="pool", axes=[1], keepdims=0)  # [N,8]
    z = g.gemm(pooled, c, 6, name="head", out="embedding")
    return g, dict(embedding=z, layers=["patches", "patches_nhwc", "patch_tokens", "block1", "block2"],
                   d=6,
                   description="ViT-like: patch Conv 4x4/4 (3->8) -> patches [N,8,4,4] -> Transpose "
                               "to patches_nhwc [N,4,4,8] -> Reshape to patch_tokens [N,16,8] -> "
                               "Concat a class token (parameter + mean token / 2) -> tokens [N,17,8] "
                               "-> MatMul-Tanh-MatMul residual -> block1 -> token-mixing MatMul "
                               "residual -> block2 -> mean over tokens -> Gemm, D=6. Layers in every "
                               "layout: nchw, nhwc, tokens without and with a prefix token")


def _blocked_sin():
    g = Graph("blocked_sin", [3, 8, 8])
    h0 = g.conv("x", 3, 4, 3, pads=[1, 1, 1, 1], name="conv0", out="h0")
    s = g.op("Sin", [h0], name="sin", out="s")
    h1 = g.conv(s, 4, 4, 3, pads=[1, 1, 1, 1], name="conv1", out="h1")
    r = g.op("Relu", [h1], name="relu", out="r")
    z = g.to_embedding(r, 4)
    return g, dict(embedding=z, layers=[h1], d=4,
                   description="Conv -> h0 -> Sin (no gradient rule) -> Conv -> h1 -> Relu -> "
                               "Flatten -> Gemm, D=4: h1 is monitorable, h0 is blocked by the Sin node "
                               "(for agent layers)")


register("tiny_vit", kind="model")(_tiny_vit)
register("blocked_sin", kind="model")(_blocked_sin)


if __name__ == "__main__":
    sys.exit(main())
