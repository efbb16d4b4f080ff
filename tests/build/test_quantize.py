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


def _write_image(path, h, w, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(60, 255, (h, w, 3), dtype=np.uint8)).save(path)


def test_calibration_batch_is_prepared_as_clients_send_it_letterboxed_not_stretched(tmp_path):
    from build.quantize import load_batch
    from client.policy import InputPolicy
    from client.preprocess import load_image, resize_image

    _write_image(tmp_path / "wide.png", 32, 64)  # a 1:2 frame into a square input
    policy = InputPolicy((64, 64))
    batch = load_batch(tmp_path, policy, 4)
    assert batch.shape == (1, 64, 64, 3) and batch.policy == policy
    image = load_image(tmp_path / "wide.png")
    assert np.array_equal(batch[0], policy.prepare(image)[0])
    assert not batch[0, 32:].any() and batch[0, :32].min() > 0  # the image on top, zero padding below
    assert not np.array_equal(batch[0], resize_image(image, (64, 64)))  # not the old stretch
    stretched = load_batch(tmp_path, InputPolicy((64, 64), mode="stretch"), 4)
    assert np.array_equal(stretched[0], resize_image(image, (64, 64)))  # stretch only when asked for
    with pytest.raises(TypeError, match="InputPolicy"):
        load_batch(tmp_path, (64, 64), 4)


def test_analysis_size_batch_is_the_same_policy_at_the_smaller_size(tmp_path):
    from build.quantize import load_batch
    from client.policy import InputPolicy

    _write_image(tmp_path / "wide.png", 32, 64)
    small = load_batch(tmp_path, InputPolicy((64, 64)).at((32, 32)), 4)
    assert small.shape == (1, 32, 32, 3) and not small[0, 16:].any()  # letterboxed at the analysis size too


def test_missing_calibration_folder_is_a_project_error(tmp_path):
    from build.quantize import CalibrationError, load_batch
    from client.policy import InputPolicy
    from segformer.errors import ProjectError

    with pytest.raises(CalibrationError, match="held-out images") as exc:
        load_batch(tmp_path / "missing", InputPolicy((64, 64)), 4, "held-out")
    assert isinstance(exc.value, ProjectError) and isinstance(exc.value, ValueError) and exc.value.exit_code == 2


def test_the_report_records_the_input_policy(tiny_onnx, make_images, tmp_path):
    from build.guard import Prepared
    from client.policy import InputPolicy

    policy = InputPolicy((64, 64))
    calib = make_images(2).view(Prepared)
    calib.policy = policy
    assert calib[:1].policy == policy  # a slice keeps it (the calibration reader feeds one image at a time)
    rep = build_quantized(tiny_onnx, tmp_path / "a", calib, make_images(2, seed=1), "minmax", budget=0.05,
                          log=lambda *_: None)
    assert rep["input_policy"] == {"mode": "fit", "size": [64, 64], "multiple": 32, "pad": 0}
    stretch = InputPolicy((64, 64), mode="stretch")
    rep = build_quantized(tiny_onnx, tmp_path / "b", make_images(2), make_images(2, seed=1), "minmax", budget=0.05,
                          log=lambda *_: None, policy=stretch)
    assert rep["input_policy"]["mode"] == "stretch"


def test_budget_missed_is_an_outcome_one_line_exit_1(capsys):
    from client.cli import run
    from segformer.errors import OutcomeError

    def body():
        check_budget(0.01, 0.005)

    assert issubclass(BudgetExceeded, OutcomeError) and issubclass(BudgetExceeded, RuntimeError)
    assert run(body) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("budget missed: best: 1.000 % of held-out pixels")


def test_cli_bad_input_is_one_error_line_exit_2(tmp_path, capsys):
    from build.quantize import main

    rc = main(["--holdout", str(tmp_path / "missing"), "--calib", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: calibration images:")
    assert not (tmp_path / "o").exists()
