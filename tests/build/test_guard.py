"""The guards measure what clients get back: labels restored to each image's frame (the letterbox padding cut off),
the same measure in build.quantize, build.quantize_cpu and build.openvino_ir, mean and worst frame."""
import numpy as np
import pytest

from build.guard import guard_share, load_batch, prepare_batch, restored
from client.policy import InputPolicy


def _write_image(path, h, w, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(60, 255, (h, w, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def wide(tmp_path):
    """Two 32x64 frames letterboxed into 64x64: the image in rows 0-31, padding in rows 32-63."""
    folder = tmp_path / "wide"
    folder.mkdir()
    for i in range(2):
        _write_image(folder / f"f{i}.png", 32, 64, seed=i)
    return load_batch(folder, InputPolicy((64, 64)), 2, "held-out")


def _padding_differs(labels):
    out = labels.copy()
    out[:, 32:] = (out[:, 32:] + 1) % 19
    return out


def test_the_batch_records_where_each_image_lies(wide):
    assert wide.shape == (2, 64, 64, 3)
    assert [p.content for p in wide.placements] == [(32, 64)] * 2 and wide.image_hw == ((32, 64),) * 2
    assert wide[:1].policy == wide.policy and wide[:1].placements == ()  # a slice: no per-image records


def test_padding_is_not_counted_the_image_part_is_at_the_images_scale(wide):
    ref = np.zeros((2, 64, 64), np.uint8)
    assert guard_share(_padding_differs(ref), ref, wide).frames == (0.0, 0.0)
    assert float((_padding_differs(ref) != ref).mean()) == 0.5  # what the old whole-tensor measure said
    one = ref.copy()
    one[1, :16, :32] = 3  # a quarter of the second image
    s = guard_share(one, ref, wide)
    assert s.frames == (0.0, 0.25) and s.mean == 0.125 and s.worst == 0.25
    assert s.within(0.125, 0.25) and not s.within(0.125, 0.2)
    assert [r.shape for r in restored(one, wide)] == [(32, 64)] * 2
    with pytest.raises(ValueError, match="3 label maps for 2 placed images"):
        restored(np.zeros((3, 64, 64), np.uint8), wide)


def test_a_dynamic_rows_mixed_sizes_are_placed_at_its_optimum():
    policy = InputPolicy((64, 64), size_range=((32, 32), (128, 128)))
    images = [np.full((32, 64, 3), 100, np.uint8), np.full((64, 96, 3), 100, np.uint8)]
    batch = prepare_batch(images, policy)
    assert batch.shape == (2, 64, 64, 3) and all(p.input_size == (64, 64) for p in batch.placements)
    assert [r.shape for r in restored(np.zeros((2, 64, 64), np.uint8), batch)] == [(32, 64), (64, 96)]


def test_every_guard_uses_the_restored_frame(wide, tiny_onnx, tmp_path, monkeypatch):
    """build.quantize, build.quantize_cpu: a candidate whose labels differ only in the padding is exact."""
    from build import quantize, quantize_cpu

    def fake_labels(path, images, threads=0):
        ref = np.zeros(images.shape[:3], np.uint8)
        return ref if path.name == "fp32.onnx" else _padding_differs(ref)

    monkeypatch.setattr(quantize_cpu, "run_labels", fake_labels)
    rep = quantize_cpu.build_cpu_int8(tiny_onnx, tmp_path / "cpu", wide, budget=0.001, log=lambda *_: None)
    assert rep["all_weight_products"]["disagreement_analysis_size"] == 0.0 and rep["best"]["disagreement"] == 0.0
    assert rep["measured_on"].startswith("labels restored to each image's frame")
    monkeypatch.setattr(quantize, "run_labels", fake_labels)
    rep = quantize.build_quantized(tiny_onnx, tmp_path / "qdq", wide, wide, "minmax", budget=0.001,
                                   log=lambda *_: None)
    assert rep["int8_all"]["disagreement"] == 0.0 and rep["best"]["int8_groups"] == rep["groups"]


def test_the_openvino_guard_uses_the_restored_frame(wide, tiny_onnx, tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    from build import openvino_ir
    from build.quantize import run_labels

    class Padded:  # the plan's labels: FP32's, except in the padding
        def __init__(self, folder, *a, **k):
            pass

        def run(self, images):
            return _padding_differs(run_labels(tiny_onnx, images))

    monkeypatch.setattr(openvino_ir, "PlanRunner", Padded)
    monkeypatch.setattr(openvino_ir, "cpu_flags", lambda: ["avx512_bf16"])
    rep = openvino_ir.build_cpu_plan(tiny_onnx, tmp_path / "plan", "bf16", wide, log=lambda *_: None)
    assert rep["plan"] == ["bf16"] and rep["heldout_disagreement"] == 0.0 and rep["heldout_worst"] == 0.0
    assert rep["measured_on"].startswith("labels restored to each image's frame")


def test_openvino_and_quantized_keys_cover_the_policy_and_its_code(tiny_weights, tmp_path, monkeypatch):
    """A plan measured under another input policy (or other placement code) is rebuilt, never reused silently;
    the report records the policy that prepared the guard's frames."""
    pytest.importorskip("openvino")
    from build import artefacts
    from build.variants import PYTHON_OV, ServingVariant

    root = artefacts.ROOT
    for f in ("client/policy.py", "client/placement.py", "server/models/segformer_runtime.py", "build/guard.py"):
        assert root / f in artefacts.OPENVINO_CODE, f
    for f in ("client/policy.py", "client/placement.py", "build/guard.py"):
        assert root / f in artefacts.PASS_CODE, f
    hold = tmp_path / "hold"
    hold.mkdir()
    for i in range(2):
        _write_image(hold / f"f{i}.png", 32, 64, seed=i)
    row = ServingVariant("ov", str(tiny_weights), PYTHON_OV, precision="bf16", size=(64, 64), max_batch=2)
    monkeypatch.setattr("build.openvino_ir.cpu_flags", lambda: ["avx2"])  # no bf16: f32, quickly
    cache = artefacts.OnnxCache(tmp_path / "c", artefacts.QuantSettings(holdout=hold, holdout_count=2))
    folder, report = cache.openvino(row, lambda *_: None)
    assert report["openvino"]["input_policy"] == InputPolicy((64, 64)).describe()
    monkeypatch.setattr(InputPolicy, "describe", lambda self: {"mode": "stretch", "size": list(self.size)})
    other, _ = cache.openvino(row, lambda *_: None)
    assert other != folder
