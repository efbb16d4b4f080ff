"""Triton python-backend model: runs the row's OpenVINO IR (or ONNX) with OpenVINO on the CPU.

Copied by `make repo` into each OpenVINO CPU model directory as ``1/model.py``; the config's ``parameters`` name
the model file (``model_file``), the inference precision (``precision_hint``: f32 or bf16) and the threads
(``threads``, 0 = OpenVINO's choice). One compiled model per input shape (batch, H, W): OpenVINO's CPU kernels are
fastest on static shapes, and a served row sees few shapes. A failing batch answers each request with an error;
the server stays up.
"""
import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        import openvino as ov

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        path = os.path.join(args["model_repository"], args["model_version"], params.get("model_file", "model.xml"))
        if not os.path.isfile(path):
            raise pb_utils.TritonModelException(f"{path} is missing: rebuild the repository with `make repo`")
        self.core = ov.Core()
        self.model = self.core.read_model(path)
        self.props = {"INFERENCE_PRECISION_HINT": params.get("precision_hint", "f32"), "PERFORMANCE_HINT": "LATENCY"}
        threads = int(params.get("threads", "0") or 0)
        if threads:
            self.props["INFERENCE_NUM_THREADS"] = threads
        self.compiled = {}
        self.outputs = [o["name"] for o in config["output"]]
        self.size_range = json.loads(params["size_range"]) if params.get("size_range") else None

    def _compiled(self, shape):
        if shape not in self.compiled:
            m = self.model.clone()
            m.reshape({"images": list(shape)})
            self.compiled[shape] = self.core.compile_model(m, "CPU", self.props)
        return self.compiled[shape]

    def execute(self, requests):
        batches = [pb_utils.get_input_tensor_by_name(r, "images").as_numpy() for r in requests]
        responses = [None] * len(requests)
        groups = {}
        for i, batch in enumerate(batches):
            h, w = batch.shape[1:3]
            if self.size_range:
                (lo_h, lo_w), (hi_h, hi_w) = self.size_range
                if not (lo_h <= h <= hi_h and lo_w <= w <= hi_w) or h % 32 or w % 32:
                    responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(
                        f"images of {h}x{w}: this model takes multiples of 32 from {lo_h}x{lo_w} to {hi_h}x{hi_w}; "
                        "resize on the client (python -m client.segment does)"))
                    continue
            groups.setdefault(batch.shape[1:], []).append(i)
        for idx in groups.values():
            try:
                x = np.ascontiguousarray(np.concatenate([batches[i] for i in idx]))
                result = self._compiled(tuple(x.shape))({"images": x})
                results = [result[name] for name in self.outputs]
            except Exception as exc:  # noqa: BLE001 - reported to every client of the batch
                err = pb_utils.TritonError(f"inference failed: {exc}")
                for i in idx:
                    responses[i] = pb_utils.InferenceResponse(error=err)
                continue
            start = 0
            for i in idx:
                n = batches[i].shape[0]
                tensors = [pb_utils.Tensor(name, np.ascontiguousarray(out[start:start + n]))
                           for name, out in zip(self.outputs, results)]
                responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
                start += n
        return responses

    def finalize(self):
        self.compiled = {}
