"""Request handling shared by the python-backend CPU models (ONNX Runtime, OpenVINO): copied beside their
`model.py` by `make repo` and imported from there, with segformer_runtime.py (size checks) beside it too; it
imports nothing else of the project.

Requests queued together by Triton's dynamic batcher are run as one batch per input shape (a dynamic-size row can
get several shapes); a size outside a dynamic row's range is refused for that request alone; a failing batch
answers each of its requests with the error. The server stays up.
"""
import numpy as np
import triton_python_backend_utils as pb_utils
from segformer_runtime import size_error


def execute(requests, outputs, size_range, run):
    """Responses for `requests`; `run(uint8 [N, H, W, 3]) -> [array per name in outputs]` runs one batch."""
    batches = [pb_utils.get_input_tensor_by_name(r, "images").as_numpy() for r in requests]
    responses = [None] * len(requests)
    groups = {}
    for i, batch in enumerate(batches):
        problem = size_error(batch.shape, size_range) if size_range else None
        if problem:
            responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(problem))
        else:
            groups.setdefault(batch.shape[1:], []).append(i)
    for idx in groups.values():
        try:
            results = run(np.ascontiguousarray(np.concatenate([batches[i] for i in idx])))
        except Exception as exc:  # noqa: BLE001 - reported to every client of the batch
            err = pb_utils.TritonError(f"inference failed: {exc}")
            for i in idx:
                responses[i] = pb_utils.InferenceResponse(error=err)
            continue
        start = 0
        for i in idx:
            n = batches[i].shape[0]
            tensors = [pb_utils.Tensor(name, np.ascontiguousarray(out[start:start + n]))
                       for name, out in zip(outputs, results)]
            responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
            start += n
    return responses
