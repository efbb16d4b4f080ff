"""Triton python-backend model: runs the row's OpenVINO precision plan on the CPU.

Copied by `make repo` into each OpenVINO CPU model directory as ``1/model.py``. ``1/plan.json`` (written by
build.openvino_ir) lists the IR parts run in sequence, each with its inference precision (f32 or bf16); the
config's ``threads`` parameter sets the threads (0 = OpenVINO's choice). The plan runs on
segformer_runtime.PlanRunner, the same code build.openvino_ir measures the plan with; batching, size checks and
errors per request: segformer_batching.py. Both are copied beside this file.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the runtime files copied beside us
from segformer_batching import execute  # noqa: E402
from segformer_runtime import PlanRunner, parameters  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = parameters(config)
        self.runner = PlanRunner(os.path.join(args["model_repository"], args["model_version"]),
                                 threads=int(params.get("threads", "0") or 0),
                                 plan_file=params.get("plan_file", "plan.json"))
        self.outputs = [o["name"] for o in config["output"]]
        self.size_range = json.loads(params["size_range"]) if params.get("size_range") else None

    def execute(self, requests):
        def run(x):
            tensors = self.runner.tensors(x)
            return [tensors[name] for name in self.outputs]

        return execute(requests, self.outputs, self.size_range, run)

    def finalize(self):
        self.runner.close()
