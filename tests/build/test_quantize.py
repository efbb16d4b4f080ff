import numpy as np
import onnx
import pytest

from build.quantize import (BudgetExceeded, build_quantized, check_budget, greedy_best, group_of, groups,
                            quantizable, quantize)


def _dq_fed(model):
    """Names of nodes whose inputs come through DequantizeLinear, and the DQ nodes of weights."""
    producers = {o: n for n in model.graph.node for o in n.output}
    fed = {n.name for n in model.graph.node if n.op_type in ("MatMul", "Conv", "Gemm")
           and all(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear"
                   for i in n.input[:2])}
    return fed


def test_qdq_placement_symmetric_per_channel(tiny_onnx, make_images, tmp_path):
    model = onnx.load(str(tiny_onnx))
    out = quantize(tiny_onnx, tmp_path / "int8.onnx", tmp_path / "ranges.json", make_images(4), "minmax")
    q = onnx.load(str(out))
    assert _dq_fed(q) >= set(quantizable(model)) - {""}  # every MatMul/Conv/Gemm reads Q/DQ'd inputs
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in q.graph.initializer}
    for n in q.graph.node:
        if n.op_type == "QuantizeLinear":
            assert inits[n.input[2]].dtype == np.int8 and not inits[n.input[2]].any()  # symmetric INT8
    conv_w_scales = [inits[n.input[1]] for n in q.graph.node if n.op_type == "DequantizeLinear"
                     and n.input[0] in inits and inits[n.input[0]].ndim == 4]
    assert conv_w_scales and all(s.size > 1 for s in conv_w_scales)  # per-channel weights
    # only the chosen group is quantized when asked
    grouped = groups(model)
    name, nodes = next(iter(grouped.items()))
    one = onnx.load(str(quantize(tiny_onnx, tmp_path / "one.onnx", tmp_path / "ranges.json", method="minmax", include=nodes)))
    assert _dq_fed(one) == set(nodes)


def test_group_names():
    assert group_of("/model/encoder/stages.1/blocks.0/attn/q/MatMul") == "model.encoder.stages.1.blocks.0.attn"
    assert group_of("/model/encoder/stages.1/blocks.0/attn/MatMul_1") == "model.encoder.stages.1.blocks.0.attn.scores"
    assert group_of("/model/decode_head/linear_c.2/MatMul") == "model.decode_head.linear_c.2"


def test_greedy_on_synthetic_sensitivity():
    sens = {"a": 0.0001, "b": 0.0010, "c": 0.0030, "d": 0.0200}  # additive toy model of the disagreement
    order = sorted(sens, key=sens.get)
    kept, trace = greedy_best(order, 0.002, lambda chosen: sum(sens[g] for g in chosen))
    assert kept == ["a", "b"] and [t["kept"] for t in trace] == [True, True, False, False]
    kept, _ = greedy_best(order, 0.05, lambda chosen: sum(sens[g] for g in chosen))
    assert kept == order


def test_budget_check_fails_when_violated():
    check_budget(0.004, 0.005)
    with pytest.raises(BudgetExceeded, match="over the 0.50 % budget"):
        check_budget(0.0051, 0.005)


def test_build_quantized_meets_its_budget(tiny_onnx, make_images, tmp_path):
    hold = make_images(2, seed=1)
    rep = build_quantized(tiny_onnx, tmp_path, make_images(4), hold, "minmax", budget=0.02, log=lambda *_: None)
    assert (tmp_path / "int8.onnx").is_file() and (tmp_path / "best.onnx").is_file()
    assert set(rep["best"]["precision"]) == set(rep["sensitivity"])
    # measured here, not read back from the report: the written best.onnx against the FP32 graph
    from build.quantize import run_labels

    measured = float((run_labels(tmp_path / "best.onnx", hold) != run_labels(tiny_onnx, hold)).mean())
    assert measured <= 0.02 and abs(measured - rep["best"]["disagreement"]) < 1e-9
    kept = [t["group"] for t in rep["greedy"] if t["kept"]]
    assert all(rep["best"]["precision"][g] == "int8" for g in kept)


def test_repair_drops_the_most_sensitive_groups_until_the_final_check_passes():
    from build.quantize import repair_to_budget

    sens = {"a": 0.001, "b": 0.004, "c": 0.002}
    cost = {"a": 0.001, "b": 0.004, "c": 0.0025}  # measured at serving size: a+b+c = 0.75 % > 0.5 %
    kept, measured, steps = repair_to_budget(["a", "c", "b"], sens, 0.005, lambda ks: sum(cost[k] for k in ks),
                                             log=lambda *_: None)
    assert kept == ["a", "c"] and [s["dropped"] for s in steps] == ["b"] and measured <= 0.005
    kept, measured, steps = repair_to_budget(["a"], sens, 0.0005, lambda ks: sum(cost[k] for k in ks),
                                             log=lambda *_: None)
    assert kept == [] and measured == 0.0  # nothing INT8 is left rather than shipping over budget
