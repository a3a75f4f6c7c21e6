"""Sends Open Inference Protocol requests to the agent's ingest endpoint with NVIDIA's `tritonclient`
(the HTTP client of Triton; it builds the V2 JSON body, or JSON plus the binary tensor extension).

Usage: triton_infer.py PORT TOKEN MODEL SAMPLE.npy   (SAMPLE: one [1, 1, 28, 28] float32 digit)

Prints one JSON object: for each case, the HTTP status and the answer. `tritonclient` treats every
status but 200 as an error, so the agent's `202 Accepted` arrives as an InferenceServerException whose
status is "202" and whose debug details hold the body; that is how success is read here. A 503
(the agent's queue is full) is retried after a pause, as a mirroring client would.
"""

import json
import sys
import time

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def main():
    port, token, model, sample = sys.argv[1:5]
    x = np.load(sample).astype(np.float32).reshape(1, 1, 28, 28)
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{port}", network_timeout=30.0)
    out = {}

    def send(case, array, datatype, binary, version="", request_id=""):
        inp = httpclient.InferInput("input", list(array.shape), datatype)
        inp.set_data_from_numpy(array, binary_data=binary)
        for attempt in range(50):
            try:
                # A fresh dict per call: infer() adds Inference-Header-Content-Length to the one given.
                headers = {"Authorization": f"Bearer {token}"}
                client.infer(model, [inp], model_version=version, request_id=request_id, headers=headers)
                out[case] = {"status": "200"}
            except InferenceServerException as e:
                body = e.debug_details()
                try:
                    body = json.loads(body) if body else None
                except ValueError:
                    pass
                # An error answer's "error" object arrives as the exception's message.
                msg = e.message() if isinstance(e.message(), dict) else str(e.message())
                out[case] = {"status": e.status(), "body": body, "message": msg}
            out[case]["retried"] = attempt
            if out[case]["status"] != "503":
                return
            time.sleep(0.2)

    send("fp32_json", x, "FP32", False, request_id="triton-fp32-json")
    send("fp32_binary", x, "FP32", True, request_id="triton-fp32-binary")
    send("uint8_json", (x * 255).round().astype(np.uint8), "UINT8", False, request_id="triton-uint8")
    send("fp64_version", x.astype(np.float64), "FP64", False, version="1", request_id="triton-fp64")
    send("wrong_shape", np.ascontiguousarray(x[..., :27]), "FP32", False, request_id="triton-bad")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
