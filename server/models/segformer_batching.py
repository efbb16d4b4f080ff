"""Request handling shared by the python-backend CPU models (ONNX Runtime, OpenVINO): copied beside their
`model.py` by `make repo` and imported from there; it imports nothing of the project.

Requests queued together by Triton's dynamic batcher are run as one batch per input shape (a dynamic-size row can
get several shapes); a size outside a dynamic row's range is refused for that request alone; a failing batch
answers each of its requests with the error. The server stays up.
"""
import os

import numpy as np
import triton_python_backend_utils as pb_utils


def inside(folder: str, name: str) -> str:
    """`folder/name`, refused unless it stays inside `folder` (config parameters name files; they may not point
    elsewhere on the server)."""
    root = os.path.realpath(folder)
    path = os.path.realpath(os.path.join(root, name))
    if os.path.commonpath([root, path]) != root:
        raise pb_utils.TritonModelException(f"{name!r} is outside the model directory {root}: a model reads only "
                                            "files inside its own directory; rebuild it with `make repo`")
    return path


def size_error(shape, size_range):
    """The refusal for images of `shape` [N, H, W, 3] outside `size_range` [[min_h, min_w], [max_h, max_w]]."""
    (lo_h, lo_w), (hi_h, hi_w) = size_range
    h, w = shape[1], shape[2]
    if not (lo_h <= h <= hi_h and lo_w <= w <= hi_w) or h % 32 or w % 32:
        return (f"images of {h}x{w}: this model takes multiples of 32 from {lo_h}x{lo_w} to {hi_h}x{hi_w}; "
                "resize on the client (python -m client.segment does)")
    return None


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
