"""Generic Triton python-backend model: runs the variant's ONNX with ONNX Runtime.

Copied by `make repo` into each python-backend model directory as ``1/model.py``; everything variant-specific
comes from the config's ``parameters`` (onnx_file, intra_op_threads). The session and the file checks come from
segformer_runtime.py, batching, size checks and errors per request from segformer_batching.py, both beside it.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the runtime files copied beside us
from segformer_batching import execute  # noqa: E402
from segformer_runtime import existing, onnx_session, parameters  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = parameters(config)
        path = existing(os.path.join(args["model_repository"], args["model_version"]),
                        params.get("onnx_file", "model.onnx"))
        self.session = onnx_session(path, int(params.get("intra_op_threads", "0") or 0))
        self.outputs = [o["name"] for o in config["output"]]
        # a dynamic-size row: [[min_h, min_w], [max_h, max_w]]; sizes outside it are refused per request
        self.size_range = json.loads(params["size_range"]) if params.get("size_range") else None

    def execute(self, requests):
        return execute(requests, self.outputs, self.size_range, lambda x: self.session.run(self.outputs, {"images": x}))

    def finalize(self):
        self.session = None
