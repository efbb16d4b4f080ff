"""Generic Triton python-backend model: runs the variant's ONNX with ONNX Runtime.

Copied by `make repo` into each python-backend model directory as ``1/model.py``; everything variant-specific
comes from the config's ``parameters`` (onnx_file, intra_op_threads). Requests queued together by Triton's
dynamic batcher are run as one batch. A failing batch answers each request with an error; the server stays up.
"""
import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        path = os.path.join(args["model_repository"], args["model_version"], params.get("onnx_file", "model.onnx"))
        if not os.path.isfile(path):
            raise pb_utils.TritonModelException(f"{path} is missing: rebuild the repository with `make repo`")
        opts = ort.SessionOptions()
        threads = int(params.get("intra_op_threads", "0") or 0)
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
        self.outputs = [o["name"] for o in config["output"]]

    def execute(self, requests):
        try:
            batches = [pb_utils.get_input_tensor_by_name(r, "images").as_numpy() for r in requests]
            results = self.session.run(self.outputs, {"images": np.concatenate(batches)})
        except Exception as exc:  # noqa: BLE001 - reported to every client of the batch
            err = pb_utils.TritonError(f"inference failed: {exc}")
            return [pb_utils.InferenceResponse(error=err) for _ in requests]
        responses, start = [], 0
        for batch in batches:
            n = batch.shape[0]
            tensors = [pb_utils.Tensor(name, np.ascontiguousarray(out[start:start + n])) for name, out in zip(self.outputs, results)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += n
        return responses

    def finalize(self):
        self.session = None
