"""The runtime of the CPU rows, one module for the code Triton runs and the build-time checks of the same rows.

`make repo` copies this file beside each python-backend `1/model.py` (as it does segformer_batching.py), where the
program imports it as ``segformer_runtime``; `build.openvino_ir` imports it as ``server.models.segformer_runtime``
to measure a precision plan with exactly the code that will serve it. It imports nothing of the project and no
Triton module (its errors are plain exceptions; the python backend reports any exception raised while a model
loads), so it runs the same inside and outside the server.
"""
import json
import os


class ModelFileError(ValueError):
    """A file a model's config names is outside its model directory, or missing: rebuild with `make repo`."""


def inside(folder: str, name: str) -> str:
    """`folder/name`, refused unless it stays inside `folder` (config parameters name files; they may not point
    elsewhere on the server)."""
    root = os.path.realpath(folder)
    path = os.path.realpath(os.path.join(root, name))
    if os.path.commonpath([root, path]) != root:
        raise ModelFileError(f"{name!r} is outside the model directory {root}: a model reads only files inside its "
                             "own directory; rebuild it with `make repo`")
    return path


def existing(folder: str, name: str) -> str:
    """`inside(folder, name)`, which must also be a file."""
    path = inside(folder, name)
    if not os.path.isfile(path):
        raise ModelFileError(f"{path} is missing: rebuild the repository with `make repo`")
    return path


def size_error(shape, size_range):
    """The refusal for images of `shape` [N, H, W, 3] outside `size_range` [[min_h, min_w], [max_h, max_w]]."""
    (lo_h, lo_w), (hi_h, hi_w) = size_range
    h, w = shape[1], shape[2]
    if not (lo_h <= h <= hi_h and lo_w <= w <= hi_w) or h % 32 or w % 32:
        return (f"images of {h}x{w}: this model takes multiples of 32 from {lo_h}x{lo_w} to {hi_h}x{hi_w}; "
                "resize on the client (python -m client.segment does)")
    return None


def parameters(config: dict) -> dict:
    """A model config's (JSON, as Triton passes it) `parameters` as {key: string value}."""
    return {k: v["string_value"] for k, v in config.get("parameters", {}).items()}


def onnx_session(path: str, threads: int = 0):
    """An ONNX Runtime CPU session for `path` (threads 0: ONNX Runtime's choice)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])


class PlanRunner:
    """Runs an OpenVINO precision plan folder (plan.json + the IR parts it lists) on the CPU: the parts run in
    sequence, each compiled with its own inference precision; one compiled chain per input shape (batch, H, W),
    since OpenVINO's CPU kernels are fastest on static shapes and a served row sees few shapes."""

    def __init__(self, folder, threads: int = 0, plan_file: str = "plan.json"):
        import openvino as ov

        self.folder = str(folder)
        with open(existing(self.folder, plan_file)) as f:
            self.plan = json.load(f)
        self.parts = self.plan["parts"]
        self.core = ov.Core()
        self.models = [self.core.read_model(existing(self.folder, p["file"])) for p in self.parts]
        self.threads, self.compiled = int(threads or 0), {}

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

    def tensors(self, images):
        """Every named tensor the chain produced for uint8 `images` [N, H, W, 3] (graph outputs included)."""
        import numpy as np

        tensors = {"images": np.ascontiguousarray(images)}
        for part, compiled in zip(self.parts, self._chain(tuple(images.shape))):
            res = compiled({name: tensors[name] for name in part["inputs"]})
            tensors.update({o.get_any_name(): res[o] for o in compiled.outputs})
        return tensors

    def run(self, images, output: str = "labels"):
        return self.tensors(images)[output]

    def close(self) -> None:
        self.compiled = {}
