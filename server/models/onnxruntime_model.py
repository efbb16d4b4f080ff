"""Generic Triton python-backend model: runs the variant's ONNX with ONNX Runtime.

Copied by `make repo` into each python-backend model directory as ``1/model.py``; everything variant-specific
comes from the config's ``parameters`` (onnx_file, intra_op_threads). Batching, size checks and errors per request:
segformer_batching.py beside it.
"""
import json
import os
import sys

import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # segformer_batching.py, copied beside us
from segformer_batching import execute, inside  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        path = inside(os.path.join(args["model_repository"], args["model_version"]), params.get("onnx_file", "model.onnx"))
        if not os.path.isfile(path):
            raise pb_utils.TritonModelException(f"{path} is missing: rebuild the repository with `make repo`")
        opts = ort.SessionOptions()
        threads = int(params.get("intra_op_threads", "0") or 0)
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
        self.outputs = [o["name"] for o in config["output"]]
        # a dynamic-size row: [[min_h, min_w], [max_h, max_w]]; sizes outside it are refused per request
        self.size_range = json.loads(params["size_range"]) if params.get("size_range") else None

    def execute(self, requests):
        return execute(requests, self.outputs, self.size_range, lambda x: self.session.run(self.outputs, {"images": x}))

    def finalize(self):
        self.session = None
