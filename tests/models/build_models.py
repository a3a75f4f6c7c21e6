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
opset 17, ir_version 8, a fixed numpy seed derived from the model name, He-style init.
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

    def __init__(self, name, input_shape, input_name="x"):
        self.name = name
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
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="tests/models/build_models.py", doc_string=doc)
        m.ir_version = IR_VERSION
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

def rule(name, op, desc, d, input_shape=(4, 9, 9)):
    """Decorator for a rule model: the body gets (g, h) and returns the tensor after the op."""

    def deco(body):
        def build():
            g = Graph(name, input_shape)
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
    onnx.checker.check_model(model, full_check=True)
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
