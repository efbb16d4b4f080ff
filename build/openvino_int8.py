"""OpenVINO INT8 with accuracy control: NNCF post-training quantization of the graph after the stem, then a
sensitivity search over layer groups that returns the most sensitive groups to float until the held-out guard holds.

The plan has two parts (build.openvino_ir's plan format): the stem (the first patch embedding's convolution over the
normalised pixels: bf16's and INT8's largest single source of label flips) in f32, then the NNCF-quantized rest,
compiled with bf16 inference precision where the CPU has bf16 (so every group left in float runs bf16: mixed INT8 +
bf16) and f32 elsewhere. The search:

1. calibrate once, at serving size, on the calibration frames (prepared by the input policy, as clients send them);
2. measure the whole INT8 rest on the held-out frames at serving size; when it misses the guard (mean or worst
   frame), measure each layer group returned to float alone at the analysis size (smaller, for speed: only the
   ranking is read from it; label flips at another size are not the served ones);
3. return groups to float, most sensitive first, measuring at serving size; a group stays in float only if the
   whole then differs less (flips are noisy: one that does not help stays INT8), until the guard holds.

A group "returned to float" loses the FakeQuantize on its activations (its inputs stay float, its weights keep
their INT8 rounding, dequantized), so no group needs a second calibration. Groups are build.quantize's layer groups
(one attention, its scores, one Mix-FFN, one patch embedding, one decoder projection ...).
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from build.guard import Share, guard_share
from build.quantize import group_of
from client.cli import progress
from server.models.segformer_runtime import PlanRunner

FLOAT_OPS = ("Convolution", "GroupConvolution", "MatMul")


def group_names(onnx_path: Path) -> dict[str, str]:
    """ONNX node name -> its layer group (build.quantize.groups: an unscoped `Gemm_N` joins the layer it feeds)."""
    import onnx

    from build.quantize import groups

    model = onnx.load(str(onnx_path), load_external_data=False)
    return {n: g for g, nodes in groups(model).items() for n in nodes}


def _group(op_name: str, names: dict[str, str]) -> str:
    """The layer group of an OpenVINO op (its friendly name is the ONNX node's, a bias split off as
    `/WithoutBiases`)."""
    base = op_name[:-len("/WithoutBiases")] if op_name.endswith("/WithoutBiases") else op_name
    return names.get(base) or names.get(op_name) or group_of(op_name)


def fq_inputs(model, names: dict[str, str] | None = None) -> dict[str, list]:
    """group -> the (op, input index) pairs of its products whose activation input comes from a FakeQuantize (the
    INT8 quantizers NNCF put on activations; weight quantizers sit on constants and stay). `names`: ONNX node name
    -> group (group_names), else the group read from the op's own name."""
    out: dict[str, list] = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() not in FLOAT_OPS:
            continue
        for i, inp in enumerate(op.inputs()):
            src = inp.get_source_output().get_node()
            if src.get_type_name() == "FakeQuantize" and \
                    src.input_value(0).get_node().get_type_name() != "Constant":
                out.setdefault(_group(op.get_friendly_name(), names or {}), []).append((op, i))
    return out


def to_float(model, groups: list[str], names: dict[str, str] | None = None):
    """A copy of the quantized `model` with the activation quantizers of `groups` bypassed."""
    m = model.clone()
    found = fq_inputs(m, names)
    for g in groups:
        for op, i in found.get(g, []):
            fq = op.input(i).get_source_output().get_node()
            op.input(i).replace_source_output(fq.input_value(0))
    m.validate_nodes_and_infer_types()
    return m


def _write(folder: Path, prefix: Path, rest_model, rest_precision: str, cut: str) -> Path:
    import openvino as ov

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for ext in (".xml", ".bin"):
        shutil.copy2(prefix.with_suffix(ext), folder / f"prefix{ext}")
    ov.save_model(rest_model, str(folder / "rest.xml"), compress_to_fp16=False)
    parts = [{"file": "prefix.xml", "precision": "f32", "inputs": ["images"], "outputs": [cut]},
             {"file": "rest.xml", "precision": rest_precision, "inputs": [cut, "images"], "outputs": None}]
    (folder / "plan.json").write_text(json.dumps({"parts": parts}, indent=1) + "\n")
    return folder


def labels(folder: Path, images: np.ndarray) -> np.ndarray:
    """The plan's labels for `images`, one request per image (as served at batch 1)."""
    runner = PlanRunner(folder)
    try:
        return np.concatenate([runner.run(images[i:i + 1]) for i in range(len(images))])
    finally:
        runner.close()


def quantize_rest(prefix: Path, rest: Path, cut: str, calib: np.ndarray):
    """NNCF PTQ (transformer preset) of the rest IR, calibrated on the prefix's outputs for `calib`, at the
    calibration frames' (serving) size."""
    import nncf
    import openvino as ov

    core = ov.Core()
    pre = core.read_model(str(prefix))
    pre.reshape({"images": [1, *calib.shape[1:]]})
    pre_c = core.compile_model(pre, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    items = [{cut: pre_c(calib[i:i + 1])[0], "images": np.ascontiguousarray(calib[i:i + 1])}
             for i in range(len(calib))]
    model = core.read_model(str(rest))
    model.reshape({name: list(items[0][name].shape) for name in (cut, "images")})
    return nncf.quantize(model, nncf.Dataset(items), model_type=nncf.ModelType.TRANSFORMER,
                         subset_size=len(items), fast_bias_correction=True)


def search(prefix: Path, rest: Path, cut: str, work: Path, calib: np.ndarray, small: np.ndarray,
           small_ref: np.ndarray, full: np.ndarray, full_ref: np.ndarray, rest_precision: str, budget: float,
           worst: float, log=print, names: dict[str, str] | None = None) -> dict:
    """The accuracy-controlled INT8 plan, written to `work / "chosen"`; returns what was measured and chosen
    (`float_groups`: the groups returned to float; `final`: the serving-size guard; `passed`)."""
    t0 = time.perf_counter()
    quantized = quantize_rest(prefix, rest, cut, calib)
    groups = list(fq_inputs(quantized, names))
    t_calib = time.perf_counter() - t0

    def measure(back: list[str], images=full, ref=full_ref, name="try") -> Share:
        folder = _write(work / name, prefix, to_float(quantized, back, names), rest_precision, cut)
        return guard_share(labels(folder, images), ref, images)

    everything = measure([], name="chosen")
    log(f"  int8 (NNCF) after an f32 stem, rest {rest_precision}: every group INT8: {everything.text()} differ "
        f"from FP32 (accept <= {budget * 100:.2f} % / {worst * 100:.2f} %)")
    score = lambda s: s.mean + s.worst / 2  # noqa: E731  (mean and worst frame, on one scale)
    back, best, sens, trace = [], everything, {}, []
    if not everything.within(budget, worst):
        for g in progress(groups, desc=f"int8 sensitivity ({small.shape[1]}x{small.shape[2]})", unit="group"):
            sens[g] = measure([g], small, small_ref)
        # most sensitive first: the group whose return to float alone leaves the least disagreement
        for g in sorted(groups, key=lambda g: score(sens[g])):
            s = measure(back + [g])
            kept = score(s) < score(best)  # label flips are noisy: a group that does not help stays INT8
            trace.append({"to_float": g, **s.record(), "kept": kept})
            log(f"  int8: + {g} in {rest_precision}: {s.text()}{'' if kept else ' (no better: stays INT8)'}")
            if kept:
                back, best = back + [g], s
                shutil.rmtree(work / "chosen")
                (work / "try").replace(work / "chosen")
            if best.within(budget, worst):
                break
    shutil.rmtree(work / "try", ignore_errors=True)
    log(f"  int8: {len(groups) - len(back)} of {len(groups)} groups INT8, {len(back)} in {rest_precision}: "
        f"{best.text()}")
    return {"groups": len(groups), "int8_groups": len(groups) - len(back), "float_groups": back,
            "float_precision": rest_precision, "all_int8": everything.record(),
            "sensitivity": {g: s.record() for g, s in sens.items()}, "search": trace, "final": best.record(),
            "passed": best.within(budget, worst), "calibration_images": len(calib),
            "analysis_size": list(small.shape[1:3]),
            "seconds": {"calibration": round(t_calib, 1), "total": round(time.perf_counter() - t0, 1)}}
