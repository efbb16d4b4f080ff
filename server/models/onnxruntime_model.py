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
        # a dynamic-size row: [[min_h, min_w], [max_h, max_w]]; sizes outside it are refused per request
        self.size_range = json.loads(params["size_range"]) if params.get("size_range") else None

    def _size_error(self, shape):
        (lo_h, lo_w), (hi_h, hi_w) = self.size_range
        h, w = shape[1], shape[2]
        if not (lo_h <= h <= hi_h and lo_w <= w <= hi_w) or h % 32 or w % 32:
            return (f"images of {h}x{w}: this model takes multiples of 32 from {lo_h}x{lo_w} to {hi_h}x{hi_w}; "
                    "resize on the client (python -m client.segment does)")
        return None

    def execute(self, requests):
        batches = [pb_utils.get_input_tensor_by_name(r, "images").as_numpy() for r in requests]
        responses = [None] * len(requests)
        groups = {}  # requests of one shape run as one batch (a dynamic-size row can get several shapes)
        for i, batch in enumerate(batches):
            problem = self._size_error(batch.shape) if self.size_range else None
            if problem:
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(problem))
            else:
                groups.setdefault(batch.shape[1:], []).append(i)
        for idx in groups.values():
            try:
                results = self.session.run(self.outputs, {"images": np.concatenate([batches[i] for i in idx])})
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
        self.session = None
