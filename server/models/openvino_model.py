"""Triton python-backend model: runs the row's OpenVINO precision plan on the CPU.

Copied by `make repo` into each OpenVINO CPU model directory as ``1/model.py``. ``1/plan.json`` (written by
build.openvino_ir) lists the IR parts run in sequence, each with its inference precision (f32 or bf16); the
config's ``threads`` parameter sets the threads (0 = OpenVINO's choice). One compiled chain per input shape (batch,
H, W): OpenVINO's CPU kernels are fastest on static shapes, and a served row sees few shapes. Batching, size checks
and errors per request: segformer_batching.py beside it.
"""
import json
import os
import sys

import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # segformer_batching.py, copied beside us
from segformer_batching import execute, inside  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        import openvino as ov

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = os.path.join(args["model_repository"], args["model_version"])
        path = inside(folder, params.get("plan_file", "plan.json"))
        if not os.path.isfile(path):
            raise pb_utils.TritonModelException(f"{path} is missing: rebuild the repository with `make repo`")
        with open(path) as f:
            self.parts = json.load(f)["parts"]
        self.core = ov.Core()
        self.models = [self.core.read_model(inside(folder, p["file"])) for p in self.parts]
        self.threads = int(params.get("threads", "0") or 0)
        self.compiled = {}
        self.outputs = [o["name"] for o in config["output"]]
        self.size_range = json.loads(params["size_range"]) if params.get("size_range") else None

    def _chain(self, shape):
        """Compiled parts for one input shape, each reshaped to the static shapes the previous part gives."""
        if shape not in self.compiled:
            chain, known = [], {"images": list(shape)}
            for part, model in zip(self.parts, self.models):
                m = model.clone()
                m.reshape({i.get_any_name(): known[i.get_any_name()] for i in m.inputs})
                props = {"INFERENCE_PRECISION_HINT": part["precision"], "PERFORMANCE_HINT": "LATENCY"}
                if self.threads:
                    props["INFERENCE_NUM_THREADS"] = self.threads
                chain.append(self.core.compile_model(m, "CPU", props))
                known.update({o.get_any_name(): list(o.get_shape()) for o in m.outputs})
            self.compiled[shape] = chain
        return self.compiled[shape]

    def _run(self, x):
        tensors = {"images": x}
        for part, compiled in zip(self.parts, self._chain(tuple(x.shape))):
            res = compiled({name: tensors[name] for name in part["inputs"]})
            tensors.update({o.get_any_name(): res[o] for o in compiled.outputs})
        return tensors

    def execute(self, requests):
        return execute(requests, self.outputs, self.size_range,
                       lambda x: [self._run(x)[name] for name in self.outputs])

    def finalize(self):
        self.compiled = {}
