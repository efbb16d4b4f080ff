"""OpenVINO CPU plans: the cut found by pattern, f32 exact against ONNX Runtime, and the bf16 guard's decisions
(accept, f32 prefix, fall back) recorded with the CPU's features."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from build import openvino_ir
from build.openvino_ir import PlanRunner, build_cpu_plan, first_conv_output, write_plan

pytest.importorskip("openvino")


def _ort(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["labels"], {"images": x})[0]


def test_the_cut_is_the_first_patch_embedding(tiny_onnx):
    model = onnx.load(str(tiny_onnx))
    cut = first_conv_output(model)
    conv = next(n for n in model.graph.node if cut in n.output)
    assert conv.op_type == "Conv" and list(next(a for a in conv.attribute if a.name == "kernel_shape").ints) == [7, 7]


@pytest.mark.parametrize("cut", [False, True])
def test_f32_plans_give_onnx_runtimes_labels(tiny_onnx, tmp_path, make_images, cut):
    at = first_conv_output(onnx.load(str(tiny_onnx))) if cut else None
    plan = write_plan(tiny_onnx, tmp_path / "plan", ["f32", "f32"] if cut else ["f32"], at)
    assert len(plan["parts"]) == (2 if cut else 1)
    x = make_images(2)
    out = PlanRunner(tmp_path / "plan").run(x)
    assert out.dtype == np.uint8 and (out == _ort(tiny_onnx, x)).mean() >= 0.9999


def test_bf16_guard_records_what_it_chose(tiny_onnx, tmp_path, make_images, monkeypatch):
    x = make_images(3, seed=1)
    strict = build_cpu_plan(tiny_onnx, tmp_path / "strict", "bf16", x, budget=0.0, log=lambda *_: None)
    assert strict["plan"] == ["f32"] and strict["cpu_flags"] == openvino_ir.cpu_flags()
    if openvino_ir.has_bf16():  # both plans were measured and missed a zero budget
        assert [t["plan"] for t in strict["tried"]] == [["bf16"], ["f32", "bf16"]]
        loose = build_cpu_plan(tiny_onnx, tmp_path / "loose", "bf16", x, budget=1.0, log=lambda *_: None)
        assert loose["plan"] == ["bf16"] and loose["heldout_disagreement"] <= 0.5
    else:
        assert "CPU without" in strict["fell_back"]
    monkeypatch.setattr(openvino_ir, "cpu_flags", lambda: ["avx2"])  # a CPU without bf16: f32, said so
    old = build_cpu_plan(tiny_onnx, tmp_path / "old", "bf16", x, log=lambda *_: None)
    assert old["plan"] == ["f32"] and old["fell_back"].startswith("CPU without")
    assert json.loads((tmp_path / "old" / "plan.json").read_text())["parts"][0]["precision"] == "f32"


def test_int8_guard_tries_nncf_then_keeps_more_in_f32(tiny_onnx, tmp_path, make_images, monkeypatch):
    pytest.importorskip("nncf")
    calib, hold = make_images(4, seed=3), make_images(3, seed=4)
    monkeypatch.setattr(openvino_ir, "cpu_flags", lambda: ["avx512_vnni"])
    loose = build_cpu_plan(tiny_onnx, tmp_path / "loose", "int8", hold, budget=1.0, log=lambda *_: None, calib=calib)
    assert loose["plan"] == ["int8"] and loose["f32_kept"] == "nothing"
    xml = (tmp_path / "loose" / "model.xml").read_text()
    assert "FakeQuantize" in xml  # really quantized
    out = PlanRunner(tmp_path / "loose").run(hold)
    assert out.shape == hold.shape[:3] and out.dtype == np.uint8
    strict = build_cpu_plan(tiny_onnx, tmp_path / "strict", "int8", hold, budget=0.0, log=lambda *_: None,
                            calib=calib)
    if strict["plan"] == ["f32"]:  # every candidate measured, none within a zero budget
        assert [t["f32"] for t in strict["tried"]] == ["nothing", "stem", "stem + decoder", "stage 1 + decoder"]
    monkeypatch.setattr(openvino_ir, "cpu_flags", lambda: ["avx2"])
    old = build_cpu_plan(tiny_onnx, tmp_path / "old", "int8", hold, log=lambda *_: None, calib=calib)
    assert old["plan"] == ["f32"] and old["fell_back"].startswith("CPU without")
