"""Writes the hand-made seed inputs of every fuzz target into fuzz/seeds/TARGET/ (committed).

Run with the project's venv (numpy, Pillow, onnx): .venv/bin/python fuzz/make_seeds.py
Valid inputs of each format, plus the hostile ones the issue reported (a 10**12-row .npy header,
a zip bomb, an image declaring 10**10 pixels), so that every run and the CI replay start there.
"""

import base64
import glob
import io
import json
import os
import struct
import zipfile

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(ROOT)


def out(target, name, data):
    d = os.path.join(ROOT, "seeds", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def npy_bytes(a):
    b = io.BytesIO()
    np.save(b, a)
    return b.getvalue()


def npy_header(shape, descr="<f4", version=1):
    h = "{'descr': '%s', 'fortran_order': False, 'shape': %s, }" % (descr, repr(tuple(shape)))
    pad = 64 - (10 + len(h) + 1) % 64
    h = (h + " " * pad + "\n").encode()
    if version == 1:
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h
    return b"\x93NUMPY\x02\x00" + struct.pack("<I", len(h)) + h


rng = np.random.default_rng(0)
x = rng.random((2, 3), dtype=np.float32)

# .npy
out("npy", "f32", npy_bytes(x))
out("npy", "f64_batch", npy_bytes(rng.random((2, 2, 3))))
out("npy", "u8", npy_bytes((x * 255).astype(np.uint8)))
out("npy", "f32_big_endian", npy_bytes(x.astype(">f4")))
out("npy", "fortran", npy_bytes(np.asfortranarray(rng.random((3, 2, 3), dtype=np.float32))))
out("npy", "i32", npy_bytes(np.arange(6, dtype=np.int32).reshape(2, 3)))
out("npy", "scalar", npy_bytes(np.float32(1.5)))
out("npy", "nan", npy_bytes(np.array([[np.nan, 1, 2], [3, 4, 5]], dtype=np.float32)))
out("npy", "huge_shape", npy_header((10**12, 1, 28, 28)) + bytes(64))
out("npy", "v2_header", npy_header((2, 3), version=2) + x.tobytes())
out("npy", "truncated", npy_bytes(x)[:-5])

# .npz
def npz(arrays, compressed):
    b = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(b, **arrays)
    return b.getvalue()

out("npz", "one", npz({"a": x}, False))
out("npz", "one_compressed", npz({"a": x}, True))
out("npz", "named_x", npz({"x": x, "y": x.astype(np.float64)}, True))
out("npz", "two_unnamed", npz({"a": x, "b": x}, False))
out("npz", "u8", npz({"x": (x * 255).astype(np.uint8)}, True))
# A zip bomb: 16 MiB of zeros (over the targets' 8 MiB inflate limit) in a few KB.
out("npz", "bomb", npz({"x": np.zeros((4, 1024, 1024), dtype=np.float32)}, True))
# A member whose header claims 10**12 rows.
b = io.BytesIO()
with zipfile.ZipFile(b, "w", zipfile.ZIP_DEFLATED) as z:
    z.writestr("x.npy", npy_header((10**12, 1, 28, 28)) + bytes(64))
out("npz", "huge_shape_member", b.getvalue())

# PNG / JPEG
def img(mode, size, fmt, **kw):
    a = (rng.random((size[1], size[0], len(mode) if mode in ("RGB", "RGBA") else 1)) * 255).astype(np.uint8)
    im = Image.fromarray(a.squeeze(-1) if a.shape[-1] == 1 else a, mode="L" if mode in ("L", "P") else mode)
    if mode == "P":
        im = im.convert("P")
    b = io.BytesIO()
    im.save(b, fmt, **kw)
    return b.getvalue()

out("image", "gray.png", img("L", (8, 8), "PNG"))
out("image", "rgb.png", img("RGB", (12, 10), "PNG"))
out("image", "rgba.png", img("RGBA", (5, 7), "PNG"))
out("image", "palette.png", img("P", (6, 6), "PNG"))
out("image", "gray.jpg", img("L", (16, 16), "JPEG"))
out("image", "rgb.jpg", img("RGB", (20, 9), "JPEG", quality=50))
out("image", "progressive.jpg", img("RGB", (16, 16), "JPEG", progressive=True))
im16 = Image.fromarray((rng.random((6, 6)) * 65535).astype(np.uint16))
b = io.BytesIO(); im16.save(b, "PNG"); out("image", "gray16.png", b.getvalue())
# A PNG whose header declares 100000 × 100000 pixels.
big = bytearray(img("L", (8, 8), "PNG"))
big[16:24] = struct.pack(">II", 100000, 100000)
out("image", "huge_dims.png", bytes(big))

# V2 requests: byte 0 flags (1 = binary extension, 2 = unknown model shape), bytes 1-2 JSON length.
def v2(obj, binary=b"", flags=0):
    j = json.dumps(obj).encode()
    if binary:
        flags |= 1
    return bytes([flags]) + struct.pack("<H", len(j) if binary else 0) + j + binary

t = lambda **kw: dict({"name": "x", "shape": [2, 3], "datatype": "FP32", "data": x.ravel().tolist()}, **kw)
out("v2", "fp32_flat", v2({"id": "1", "inputs": [t()]}))
out("v2", "fp64_nested", v2({"inputs": [t(datatype="FP64", data=x.tolist())]}))
out("v2", "batch_u8", v2({"inputs": [t(shape=[1, 2, 3], datatype="UINT8", data=[1, 2, 3, 4, 5, 6])]}))
out("v2", "int64", v2({"inputs": [t(datatype="INT64", data=[-1, 2, 3, 4, 5, 9223372036854775807])]}))
out("v2", "two_inputs", v2({"inputs": [t(), t(name="y")]}))
out("v2", "binary_f32", v2({"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "parameters": {"binary_data_size": 24}}]}, x.tobytes()))
out("v2", "binary_u16", v2({"inputs": [{"name": "x", "shape": [2, 3], "datatype": "UINT16", "parameters": {"binary_data_size": 12}}]}, bytes(12)))
out("v2", "unknown_shape", v2({"inputs": [t(shape=[1, 6])]}, flags=2))
out("v2", "huge_shape", v2({"inputs": [t(shape=[4611686018427387904, 4])]}))
out("v2", "binary_overflow", v2({"inputs": [{"name": "x", "shape": [4611686018427387904, 1], "datatype": "FP64", "parameters": {"binary_data_size": 8}}]}, bytes(8)))
out("v2", "deep", v2({"inputs": [t(data=json.loads("[" * 40 + "1" + "]" * 40))]}))

# NDJSON feed responses.
rec = lambda **kw: json.dumps(kw)
feed = "\n".join([
    rec(id=1, cursor=1, inputs=[{"name": "x", "shape": [1, 2, 2], "datatype": "FP32", "data": [0, 1, 2, 3]}]),
    rec(id="b", format="npy", base64=base64.b64encode(npy_bytes(np.ones((2, 2), np.float32))).decode()),
    rec(cursor="c3", inputs=[{"name": "x", "shape": [2, 2], "datatype": "UINT8", "data": [[1, 2], [3, 4]]}]),
    rec(id=4, format="png", base64=base64.b64encode(img("L", (2, 2), "PNG")).decode()),
    rec(id=5, inputs=[], format="npy"),
    "{not json",
    "",
])
out("feed", "mixed", feed.encode())
out("feed", "crlf", feed.replace("\n", "\r\n").encode())
out("feed", "huge_shape", (rec(id=9, inputs=[{"name": "x", "shape": [10**12, 2, 2], "datatype": "FP32", "data": [1]}]) + "\n").encode())
out("feed", "deep", (rec(id=10, inputs=[{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": json.loads("[" * 60 + "1" + "]" * 60)}]) + "\n").encode())

# HTTP requests to the agent's server ("METHOD PATH", headers, blank line, body).
def http(method, path, headers, body=b""):
    head = "\n".join([f"{method} {path}"] + [f"{k}: {v}" for k, v in headers])
    return head.encode() + b"\n\n" + body

req = json.dumps({"id": "r1", "inputs": [t()]}).encode()
auth = ("Authorization", "Bearer s3cret")
ce = [("ce-id", "abc"), ("ce-type", "org.kubeflow.serving.inference.request"), ("ce-source", "s"), ("ce-specversion", "1.0")]
out("http", "infer", http("POST", "/v2/models/digits/infer", [auth, ("Content-Type", "application/json")], req))
out("http", "infer_version", http("POST", "/v2/models/alias/versions/3/infer", [auth], req))
out("http", "samples_cloudevent", http("POST", "/api/v1/samples", [auth] + ce, req))
out("http", "response_event", http("POST", "/api/v1/samples", [auth, ("ce-id", "x"), ("ce-type", "org.kubeflow.serving.inference.response")], b"{}"))
bin_req = json.dumps({"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "parameters": {"binary_data_size": 24}}]}).encode()
out("http", "binary", http("POST", "/v2/models/digits/infer", [auth, ("Inference-Header-Content-Length", str(len(bin_req)))], bin_req + x.tobytes()))
out("http", "no_token", http("POST", "/api/v1/samples", [], req))
out("http", "wrong_token", http("GET", "/metrics", [("Authorization", "Bearer s3cre")]))
out("http", "metrics", http("GET", "/metrics", [auth]))
out("http", "status", http("GET", "/api/v1/status", [auth]))
out("http", "unknown_model", http("POST", "/v2/models/other/infer", [auth], req))
out("http", "content_length_lie", http("POST", "/api/v1/samples", [auth, ("Content-Length", "99999999999")], req))

# ONNX models: byte 0 picks the layer, byte 1 the embedding output and methods.
models = sorted(glob.glob(os.path.join(REPO, "tests/models/*.onnx")))
for m in models:
    data = open(m, "rb").read()
    if len(data) > 64 * 1024:
        continue
    out("onnx", os.path.basename(m)[:-5], bytes([1, 0]) + data)
    out("onnx", os.path.basename(m)[:-5] + "_all", bytes([2, 0xC0]) + data)

# Configuration files.
for c in glob.glob(os.path.join(REPO, "config/*.toml")):
    out("config", os.path.basename(c), open(c, "rb").read())
out("config", "minimal.toml", b'''[model]
name = "m"
path = "models/digits/encoder.onnx"
embedding = "embedding"
[[model.layers]]
name = "l"
tensor = "t"
[[sources]]
type = "dir"
path = "/tmp"
[limits]
max_json_depth = 200
max_elements_per_file = 0
''')
