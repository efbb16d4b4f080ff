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
    if openvino_ir.has_bf16():  # both plans were measured and missed a zero budget, said by how much
        assert [t["plan"] for t in strict["tried"]] == [["bf16"], ["f32", "bf16"]]
        assert strict["fell_back"].startswith("no bf16 plan within the budget: best") and strict["worst_budget"] == 0
        loose = build_cpu_plan(tiny_onnx, tmp_path / "loose", "bf16", x, budget=1.0, log=lambda *_: None)
        assert loose["plan"] == ["bf16"] and loose["heldout_disagreement"] <= 0.5
    else:
        assert "CPU without" in strict["fell_back"]
    monkeypatch.setattr(openvino_ir, "cpu_flags", lambda: ["avx2"])  # a CPU without bf16: f32, said so
    old = build_cpu_plan(tiny_onnx, tmp_path / "old", "bf16", x, log=lambda *_: None)
    assert old["plan"] == ["f32"] and old["fell_back"].startswith("CPU without")
    assert json.loads((tmp_path / "old" / "plan.json").read_text())["parts"][0]["precision"] == "f32"


def test_int8_with_accuracy_control(tiny_onnx, tmp_path, make_images, monkeypatch):
    """NNCF INT8 after an f32 stem; a budget it misses returns the most sensitive groups to float one by one, and
    every try is recorded; a budget nothing meets falls back to f32 saying by how much."""
    pytest.importorskip("nncf")
    from build import openvino_int8

    calib, hold = make_images(4, seed=3), make_images(3, seed=4)
    monkeypatch.setattr(openvino_ir, "cpu_flags", lambda: ["avx512_vnni"])  # no bf16: the float groups run f32
    quiet = dict(log=lambda *_: None, calib=calib)
    loose = build_cpu_plan(tiny_onnx, tmp_path / "loose", "int8", hold, budget=1.0, **quiet)
    assert loose["plan"] == ["f32", "int8+f32"] and loose["float_groups"] == [] and loose["int8"]["passed"]
    plan = json.loads((tmp_path / "loose" / "plan.json").read_text())
    assert [p["precision"] for p in plan["parts"]] == ["f32", "f32"]
    assert "FakeQuantize" in (tmp_path / "loose" / "rest.xml").read_text()  # really quantized
    out = PlanRunner(tmp_path / "loose").run(hold)
    assert out.shape == hold.shape[:3] and out.dtype == np.uint8
    never = build_cpu_plan(tiny_onnx, tmp_path / "never", "int8", hold, budget=-1.0, **quiet)
    n = never["int8"]["groups"]
    assert never["plan"] == ["f32"] and never["fell_back_to"] == "f32" and "no INT8 plan within" in never["fell_back"]
    assert len(never["int8"]["sensitivity"]) == n and len(never["int8"]["search"]) == n  # every group tried
    assert set(never["int8"]["float_groups"]) == {t["to_float"] for t in never["int8"]["search"] if t["kept"]}
    assert json.loads((tmp_path / "never" / "plan.json").read_text())["parts"][0]["precision"] == "f32"
    quantized = __import__("openvino").Core().read_model(str(tmp_path / "loose" / "rest.xml"))
    found = openvino_int8.fq_inputs(quantized)
    g = next(iter(found))
    assert g not in openvino_int8.fq_inputs(openvino_int8.to_float(quantized, [g])) and found  # only g returned
    assert set(openvino_int8.fq_inputs(openvino_int8.to_float(quantized, [g]))) == set(found) - {g}
    monkeypatch.setattr(openvino_ir, "cpu_flags", lambda: ["avx2"])
    old = build_cpu_plan(tiny_onnx, tmp_path / "old", "int8", hold, **quiet)
    assert old["plan"] == ["f32"] and old["fell_back"].startswith("CPU without")


def test_int8_mixes_bf16_where_the_cpu_has_it(tiny_onnx, tmp_path, make_images, monkeypatch):
    pytest.importorskip("nncf")
    if not openvino_ir.has_bf16():
        pytest.skip("this CPU has no bf16")
    rep = build_cpu_plan(tiny_onnx, tmp_path / "p", "int8", make_images(3, seed=4), budget=1.0,
                         log=lambda *_: None, calib=make_images(4, seed=3))
    assert rep["plan"] == ["f32", "int8+bf16"]
    assert [p["precision"] for p in json.loads((tmp_path / "p" / "plan.json").read_text())["parts"]] == \
        ["f32", "bf16"]
