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


def test_cpu_best_meets_its_budget_or_refuses(tiny_onnx, make_images, tmp_path):
    rep = build_cpu_int8(tiny_onnx, tmp_path, make_images(2, seed=1), budget=0.02, log=lambda *_: None)
    assert (tmp_path / "best_cpu.onnx").is_file() and rep["best"]["disagreement"] <= 0.02
    assert set(rep["best"]["precision"]) == set(weight_groups(onnx.load(str(tiny_onnx))))
    with pytest.raises(BudgetExceeded):  # a budget nothing INT8 can meet on purpose: -1 is below any share
        build_cpu_int8(tiny_onnx, tmp_path / "never", make_images(2, seed=1), budget=-1.0, log=lambda *_: None)
    assert not (tmp_path / "never" / "best_cpu.onnx").exists()
