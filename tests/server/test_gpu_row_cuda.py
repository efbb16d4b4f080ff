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

from tests.server.programs import DecoupledRequest as _Request
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
    pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
    pb.get_input_tensor_by_name = lambda req, name: req.get(name)
    return pb


def _served(tmp, row, frames):
    """Build `row` with `make repo`'s code, load its 1/model.py as Triton does (the copied segformer package beside
    it), yield (model, frames, the FP32 reference labels of the frames)."""
    import importlib.util
    import json
    import sys

    from build.repository import write_repository
    from client.runners import TorchRunner
    from tests.server.programs import config_json

    built = write_repository([row], tmp / "repo", log=lambda *_: None, cache_dir=tmp / "cache")
    assert built[row.name] == "built", built
    # the weights by path: another module-scoped fixture may still have the served copy of segformer imported,
    # whose weights folder is the model directory's
    runner = TorchRunner(str(ROOT / "weights" / f"{row.weights}.json"))
    ref = [runner.infer(f[None])[0] for f in frames]
    d = tmp / "repo" / row.name
    saved = dict(sys.modules)
    sys.modules["triton_python_backend_utils"] = _pb()
    for name in [m for m in sys.modules if m == "segformer" or m.startswith("segformer.")
                 or m in ("segformer_runtime", "gpu_pipeline", "placement")]:
        del sys.modules[name]  # the copies beside model.py, as in Triton
    sys.path.insert(0, str(d / "1"))
    model = None
    try:
        spec = importlib.util.spec_from_file_location(f"served_{row.name}", d / "1" / "model.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        model = mod.TritonPythonModel()
        model.initialize({"model_config": json.dumps(config_json(d)), "model_repository": str(d),
                          "model_version": "1"})
        assert sys.modules["segformer"].__file__.startswith(str(d / "1"))  # the copy beside model.py ran
        yield model, frames, ref
    finally:
        if model is not None and getattr(model, "responder", None):
            model.finalize()
        sys.path.remove(str(d / "1"))
        for name in [m for m in sys.modules if m not in saved]:
            del sys.modules[name]
        sys.modules.update(saved)


@pytest.fixture(scope="module")
def gpu_row(tmp_path_factory):
    from build.variants import VARIANTS
    from client.policy import InputPolicy

    row = VARIANTS["segformer_b1_gpu"]
    row = dataclasses.replace(row, extra={**row.extra, "buckets": "1,2,4"})
    frames = [InputPolicy.for_row(row).load(f) for f in FRAMES]
    yield from _served(tmp_path_factory.mktemp("gpu"), row, frames)


@pytest.fixture(scope="module")
def dynamic_row(tmp_path_factory):
    """The dynamic row at the frames' own size (360x480 -> 384x480, listed) and at 2x (720x960 -> 736x960: the
    video case, captured on first use)."""
    from build.variants import VARIANTS
    from client.policy import InputPolicy

    row = VARIANTS["segformer_b1_gpu_dynamic"]
    row = dataclasses.replace(row, extra={**row.extra, "buckets": "1,2,4", "sizes": "384x480", "graph_cap": "2"})
    policy = InputPolicy.for_row(row)
    frames = [policy.load(f) for f in FRAMES]
    assert {f.shape for f in frames} == {(384, 480, 3)}
    big = [Image.open(f).convert("RGB").resize((960, 720), Image.BILINEAR) for f in FRAMES[:2]]
    frames += [policy.prepare(np.asarray(im))[0] for im in big]
    assert frames[-1].shape == (736, 960, 3)
    yield from _served(tmp_path_factory.mktemp("gpu_dyn"), row, frames)


def _jpeg(frame, quality=95):
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    return {"encoded": _Tensor("encoded", torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)[None])}


def test_raw_and_jpeg_requests_agree_with_the_fp32_reference(gpu_row):
    model, frames, ref = gpu_row
    raw = [{"images": _Tensor("images", torch.from_numpy(f[None].copy()))} for f in frames]
    out = model.execute(raw)
    assert all(r.error is None for r in out), [r.error for r in out]
    labels = np.concatenate([r.output_tensors[0].t.cpu().numpy() for r in out])
    agree = float(np.mean(labels == np.stack(ref)))
    assert agree >= 0.999, agree
    out = model.execute([_jpeg(f) for f in frames])  # decoded on the GPU, same size, so no resize
    assert all(r.error is None for r in out), [r.error for r in out]
    jl = np.concatenate([r.output_tensors[0].t.cpu().numpy() for r in out])
    assert float(np.mean(jl == np.stack(ref))) >= 0.99  # JPEG's own loss on top of FP16


def test_deferred_responses_on_the_gpu_match_inline_ones(gpu_row):
    """The shipped row answers through response senders from its responder thread (the labels' event waited
    there); batch after batch, each request gets its own labels once."""
    model, frames, ref = gpu_row
    assert model.responder is not None
    reqs = [[_Request({"images": _Tensor("images", torch.from_numpy(f[None].copy()))}), _Request(_jpeg(f))]
            for f in frames for _ in range(3)]
    for pair in reqs:
        assert model.execute(pair) is None
    model.responder.drain()
    for k, (raw, enc) in enumerate(reqs):
        assert [len(raw.sender.sent), len(enc.sender.sent)] == [1, 1]
        labels = raw.sender.sent[0][0].output_tensors[0].t.cpu().numpy()[0]
        assert float(np.mean(labels == ref[k // 3])) >= 0.999, k
        assert float(np.mean(enc.sender.sent[0][0].output_tensors[0].t.cpu().numpy()[0] == ref[k // 3])) >= 0.99


def test_timing_line_on_the_gpu(gpu_row, capsys):
    model, frames, _ = gpu_row
    model.timing = model.streams.timing = True
    model.stats.every = 2
    for _ in range(2):
        model.execute([{"images": _Tensor("images", torch.from_numpy(frames[0][None].copy()))}, _jpeg(frames[1])])
    if model.responder:
        model.responder.drain()
    line = [x for x in capsys.readouterr().out.splitlines() if "batches" in x][-1]
    print(line)
    model_gpu_ms = float(line.split(" model ")[1].split("/")[1].split(",")[0])
    assert "(wall/GPU)" in line and model_gpu_ms > 0


def test_dynamic_row_serves_frames_at_their_own_size(dynamic_row):
    model, frames, ref = dynamic_row
    assert (384, 480) in model.graphs.kept
    out = model.execute([{"images": _Tensor("images", torch.from_numpy(f[None].copy()))} for f in frames])
    assert all(r.error is None for r in out), [r.error for r in out]
    for k, r in enumerate(out):
        labels = r.output_tensors[0].t.cpu().numpy()[0]
        assert labels.shape == ref[k].shape == frames[k].shape[:2]
        assert float(np.mean(labels == ref[k])) >= 0.999, k
    assert (2, (736, 960)) in model.graphs.lazy  # the video size, captured on first use


def test_dynamic_row_places_jpegs_and_refuses_sizes_that_are_no_multiple_of_32(dynamic_row):
    model, frames, ref = dynamic_row
    raw720 = {"images": _Tensor("images", torch.zeros((1, 720, 960, 3), dtype=torch.uint8))}
    jpeg720 = _jpeg(np.ascontiguousarray(frames[-1][:720]))  # the 720x960 frame itself, unpadded
    out = model.execute([raw720, jpeg720, _jpeg(frames[0])])
    msg = str(out[0].error)  # the stand-in pb_utils.TritonError is the message itself
    assert "images of 720x960" in msg and "pad the frame to 736x960" in msg
    got = out[1].output_tensors[0].t.cpu().numpy()[0]
    assert got.shape == (736, 960) and float(np.mean(got[:720] == ref[-1][:720])) >= 0.99
    assert float(np.mean(out[2].output_tensors[0].t.cpu().numpy()[0] == ref[0])) >= 0.99
