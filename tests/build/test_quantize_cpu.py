import numpy as np
import onnx
import pytest

from build.quantize import BudgetExceeded, groups
from build.quantize_cpu import build_cpu_int8, quantize_dynamic, weight_groups, weight_products


def test_only_weight_products_are_candidates(tiny_onnx):
    model = onnx.load(str(tiny_onnx))
    consts = {i.name for i in model.graph.initializer}
    picked = set(weight_products(model))
    products = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm")]
    assert picked and picked == {n.name for n in products if n.input[1] in consts}
    assert any(n.name not in picked for n in products)  # attention's activation x activation products stay
    wg = weight_groups(model)
    assert set(wg) <= set(groups(model)) and sorted(n for ns in wg.values() for n in ns) == sorted(picked)


def _int8_products(model):
    return sum(n.op_type in ("DynamicQuantizeMatMul", "MatMulInteger") for n in model.graph.node)


def test_dynamic_quantization_touches_only_the_chosen_nodes(tiny_onnx, tmp_path):
    model = onnx.load(str(tiny_onnx))
    group, nodes = next(iter(weight_groups(model).items()))
    q = onnx.load(str(quantize_dynamic(tiny_onnx, tmp_path / "one.onnx", nodes)))
    assert _int8_products(q) == len(nodes)
    none = onnx.load(str(quantize_dynamic(tiny_onnx, tmp_path / "none.onnx", [])))
    assert _int8_products(none) == 0


def test_gemm_and_matmul_weights_are_both_quantized(tmp_path):
    """onnxsim writes Linear layers as Gemm; the quantizer renames them on the way (Gemm -> NAME_MatMul + Add)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = [numpy_helper.from_array(rng.normal(size=s).astype(np.float32), n)
         for n, s in (("w1", (8, 8)), ("b1", (8,)), ("w2", (8, 8)))]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="Gemm_1"),
             helper.make_node("MatMul", ["h", "w2"], ["g"], name="/fc/MatMul"),
             helper.make_node("MatMul", ["g", "x"], ["y"], name="/scores/MatMul")]  # activation x activation
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 8])], w)
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    model = onnx.load(str(path))
    assert weight_products(model) == ["Gemm_1", "/fc/MatMul"]
    assert _int8_products(onnx.load(str(quantize_dynamic(path, tmp_path / "q.onnx", weight_products(model))))) == 2
    assert _int8_products(onnx.load(str(quantize_dynamic(path, tmp_path / "g.onnx", ["Gemm_1"])))) == 1


def test_cpu_best_meets_its_budget_or_refuses(tiny_onnx, make_images, tmp_path):
    hold = make_images(2, seed=1)
    rep = build_cpu_int8(tiny_onnx, tmp_path, hold, budget=0.02, log=lambda *_: None)
    assert (tmp_path / "best_cpu.onnx").is_file()
    from build.quantize import run_labels  # measured here: the written graph against FP32

    measured = float((run_labels(tmp_path / "best_cpu.onnx", hold) != run_labels(tiny_onnx, hold)).mean())
    assert measured <= 0.02 and abs(measured - rep["best"]["disagreement"]) < 1e-9
    assert set(rep["best"]["precision"]) == set(weight_groups(onnx.load(str(tiny_onnx))))
    with pytest.raises(BudgetExceeded):  # a budget nothing INT8 can meet on purpose: -1 is below any share
        build_cpu_int8(tiny_onnx, tmp_path / "never", make_images(2, seed=1), budget=-1.0, log=lambda *_: None)
    assert not (tmp_path / "never" / "best_cpu.onnx").exists()


def test_cli_names_a_missing_holdout_folder(tmp_path, capsys):
    from build.quantize_cpu import main

    assert main(["--holdout", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: held-out images") and not (tmp_path / "out").exists()


def test_cpu_report_records_the_input_policy(tiny_onnx, make_images, tmp_path):
    from build.guard import Prepared
    from client.policy import InputPolicy

    hold = make_images(2, seed=1).view(Prepared)
    hold.policy = InputPolicy((64, 64))
    rep = build_cpu_int8(tiny_onnx, tmp_path, hold, budget=0.05, log=lambda *_: None)
    assert rep["input_policy"] == InputPolicy((64, 64)).describe()
