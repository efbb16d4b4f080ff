"""The GPU row as `make repo` builds it, loaded the way Triton's python backend loads it (1/model.py with only its
own folder beside it: the copied segformer package, the shared runtime, the weights), run on a CUDA GPU with raw
and JPEG requests; its labels agree with the FP32 PyTorch reference on real frames. Needs a CUDA GPU (the device
machine); skipped elsewhere."""
import dataclasses
import io
import types

import numpy as np
import pytest
import torch
from PIL import Image

from tests.server.programs import DLTensor as _Tensor

from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="kernel checks need a CUDA GPU")
FRAMES = sorted((ROOT / "samples" / "heldout").glob("*.jpg")) + [ROOT / "samples" / "camvid_0001TP_008550.jpg"]


def _pb():
    pb = types.ModuleType("triton_python_backend_utils")

    class Response:
        def __init__(self, output_tensors=None, error=None):
            self.output_tensors, self.error = output_tensors or [], error

    pb.Tensor, pb.InferenceResponse, pb.TritonError = _Tensor, Response, lambda m: m
    pb.TritonModelException = RuntimeError
    pb.get_input_tensor_by_name = lambda req, name: req.get(name)
    return pb


@pytest.fixture(scope="module")
def gpu_row(tmp_path_factory):
    import sys

    from build.repository import write_repository
    from build.variants import VARIANTS
    from tests.server.programs import config_json

    tmp = tmp_path_factory.mktemp("gpu")
    row = VARIANTS["segformer_b1_gpu"]
    row = dataclasses.replace(row, extra={**row.extra, "buckets": "1,2,4"})
    built = write_repository([row], tmp / "repo", log=lambda *_: None, cache_dir=tmp / "cache")
    assert built[row.name] == "built", built
    from client.policy import InputPolicy
    from client.runners import TorchRunner

    frames = [InputPolicy.for_row(row).load(f) for f in FRAMES]
    ref = TorchRunner(row.weights).infer(np.stack(frames))  # before the served copy of segformer is imported
    d = tmp / "repo" / row.name
    saved = dict(sys.modules)
    sys.modules["triton_python_backend_utils"] = _pb()
    for name in [m for m in sys.modules if m == "segformer" or m.startswith("segformer.") or m == "segformer_runtime"]:
        del sys.modules[name]  # the copied package beside model.py, as in Triton
    sys.path.insert(0, str(d / "1"))
    try:
        import importlib.util
        import json

        spec = importlib.util.spec_from_file_location("served_gpu_model", d / "1" / "model.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        model = mod.TritonPythonModel()
        model.initialize({"model_config": json.dumps(config_json(d)), "model_repository": str(d),
                          "model_version": "1"})
        assert sys.modules["segformer"].__file__.startswith(str(d / "1"))  # the copy beside model.py ran
        yield model, frames, ref
    finally:
        sys.path.remove(str(d / "1"))
        for name in [m for m in sys.modules if m not in saved]:
            del sys.modules[name]
        sys.modules.update(saved)


def test_raw_and_jpeg_requests_agree_with_the_fp32_reference(gpu_row):
    model, frames, ref = gpu_row
    raw = [{"images": _Tensor("images", torch.from_numpy(f[None].copy()))} for f in frames]
    out = model.execute(raw)
    assert all(r.error is None for r in out), [r.error for r in out]
    labels = np.concatenate([r.output_tensors[0].t.cpu().numpy() for r in out])
    agree = float(np.mean(labels == ref))
    assert agree >= 0.999, agree
    blobs = []
    for f in frames:  # the placed frame as JPEG: decoded on the GPU (nvJPEG), same size, so no resize
        buf = io.BytesIO()
        Image.fromarray(f).save(buf, format="JPEG", quality=95)
        blobs.append({"encoded": _Tensor("encoded", torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)[None])})
    out = model.execute(blobs)
    assert all(r.error is None for r in out), [r.error for r in out]
    jl = np.concatenate([r.output_tensors[0].t.cpu().numpy() for r in out])
    assert float(np.mean(jl == ref)) >= 0.99  # JPEG's own loss on top of FP16
