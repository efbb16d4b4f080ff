"""OpenVINO IR for the CPU rows, with an accuracy-guarded precision plan (the engines step for OpenVINO).

A plan is one or more IR parts run in sequence, each compiled with its own inference precision:
- ``f32``: the whole graph as one f32 IR (exact: the same labels as ONNX Runtime FP32).
- ``bf16``: bfloat16 where the CPU has it (AVX512-BF16 / AMX). When the whole graph misses the guard, the graph is
  cut after the first patch embedding's convolution and that prefix runs in f32 (the 7x7 convolution over the
  normalised pixels holds most of bf16's label flips, at a 5 % cost); when that misses too, the row falls back to
  f32 and says so in build.json. A CPU without bf16 gets the f32 plan, recorded with its features.
- ``int8``: NNCF INT8 with accuracy control where the CPU has VNNI or AMX-INT8 (build.openvino_int8): an f32 stem,
  then the quantized rest with the most sensitive layer groups back in bf16 (f32 without bf16) until the guard
  holds; else f32, with the measured miss recorded.

The guard (every plan the same way, build.guard): on held-out frames prepared by the row's input policy exactly as
clients send them, the labels restored to each image's frame differ from ONNX Runtime FP32 on at most `budget`
(0.5 %) of the pixels on average and at most WORST x budget (1 %) on the worst frame. Use >= 12 frames the weights
never saw (for the shipped weights: CamVid test, not val); they replace the 0.5 margin the old 3-4-frame guard
needed. The INT8 search ranks layer groups at a smaller analysis size and decides at serving size.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

# The plan runs on the served program's own runtime (copied beside 1/model.py by `make repo`): the guard measures
# exactly the code that serves the row. PlanRunner stays importable from here (bench.cpu uses it).
from build.guard import Share, guard_share
from segformer.errors import OutcomeError
from server.models.segformer_runtime import PlanRunner  # noqa: F401  (re-exported)

WORST = 2.0  # the worst held-out frame may differ on WORST x budget of its pixels
MEASURED_ON = "labels restored to each image's frame (InputPolicy.restore); mean over frames and worst frame"
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


class CpuPlanError(OutcomeError, RuntimeError):
    """The guarded plan misses its budget on the final check; nothing is shipped."""


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return sorted(f for f in line.split(":", 1)[1].split() if f.startswith(("avx", "amx")))
    except OSError:
        pass
    return []


def has_bf16(flags: list[str] | None = None) -> bool:
    return any(f in (flags if flags is not None else cpu_flags()) for f in BF16_FLAGS)


def guard_verdict(plan: dict, flags: list[str]) -> tuple[bool, str]:
    """(passed on a CPU with `flags`, why) for a plan's report (build.json's `openvino_plan`): a guard measured on
    another CPU does not count; a failed one says by how much and what the row runs instead."""
    if plan.get("cpu_flags") != flags:
        return False, "its guard ran on a CPU with other features: rebuild it here (make repo)"
    if plan.get("fell_back"):
        return False, f"guard failed: {plan['fell_back']}; it runs {plan.get('fell_back_to', 'f32')}"
    if "heldout_disagreement" in plan:
        worst = f" / {plan['heldout_worst'] * 100:.3f} % worst" if "heldout_worst" in plan else ""
        return True, (f"{'+'.join(plan['plan'])}, guard passed: {plan['heldout_disagreement'] * 100:.3f} % mean"
                      f"{worst} of {plan.get('heldout_images', '?')} held-out frames differ from FP32")
    return True, "f32, exact"


def first_conv_output(model) -> str:
    """The tensor after the first convolution fed (through elementwise preprocessing) by the graph input: the
    first patch embedding. Found by pattern, not by name."""
    consumers = {}
    for node in model.graph.node:
        for t in node.input:
            consumers.setdefault(t, []).append(node)
    frontier, seen = [model.graph.input[0].name], set()
    while frontier:
        t = frontier.pop(0)
        for node in consumers.get(t, []):
            if node.op_type == "Conv":
                return node.output[0]
            if node.name not in seen and node.op_type in ("Cast", "Transpose", "Sub", "Mul", "Div", "Add"):
                seen.add(node.name)
                frontier.extend(node.output)
    raise ValueError("no convolution is fed by the graph input")


def write_part(onnx_path: Path, out: Path, inputs=None, outputs=None) -> None:
    """One IR (xml + bin, f32 weights) from the whole ONNX or from the sub-graph between `inputs` and `outputs`."""
    import onnx
    import openvino as ov

    src = onnx_path
    if inputs is not None:
        src = out.with_suffix(".onnx")
        onnx.utils.extract_model(str(onnx_path), str(src), inputs, outputs, check_model=False)
    ov.save_model(ov.convert_model(str(src)), str(out), compress_to_fp16=False)
    if src != onnx_path:
        src.unlink()


def write_plan(onnx_path: Path, folder: Path, precisions: list[str], cut: str | None) -> dict:
    """Write the IR parts and plan.json: one part, or [prefix up to `cut`, rest]."""
    folder.mkdir(parents=True, exist_ok=True)
    if cut is None:
        write_part(onnx_path, folder / "model.xml")
        parts = [{"file": "model.xml", "precision": precisions[0], "inputs": ["images"], "outputs": None}]
    else:
        import onnx

        outputs = [o.name for o in onnx.load(str(onnx_path), load_external_data=False).graph.output]
        write_part(onnx_path, folder / "prefix.xml", ["images"], [cut])
        write_part(onnx_path, folder / "rest.xml", [cut, "images"], outputs)
        parts = [{"file": "prefix.xml", "precision": precisions[0], "inputs": ["images"], "outputs": [cut]},
                 {"file": "rest.xml", "precision": precisions[1], "inputs": [cut, "images"], "outputs": None}]
    plan = {"parts": parts}
    (folder / "plan.json").write_text(json.dumps(plan, indent=1) + "\n")
    return plan


def _share(runner: PlanRunner, images: np.ndarray, ref: np.ndarray) -> Share:
    out = np.concatenate([runner.run(images[i:i + 1]) for i in range(len(images))])
    return guard_share(out, ref, images)


def _reference(onnx_path: Path, images: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(["labels"], {"images": images[i:i + 1]})[0] for i in range(len(images))])


def _int8_plan(onnx_path, folder, calib, holdout, ref, analysis, budget, report, log) -> dict:
    """NNCF INT8 with accuracy control (build.openvino_int8): INT8 after an f32 stem, the most sensitive layer
    groups back in bf16 (f32 where the CPU has no bf16) until the guard holds; else f32, said by how much."""
    import onnx

    from build import openvino_int8

    rest_precision = "bf16" if has_bf16(report["cpu_flags"]) else "f32"
    cut = first_conv_output(onnx.load(str(onnx_path), load_external_data=False))
    work = folder.parent / f".{folder.name}.int8"
    shutil.rmtree(work, ignore_errors=True)
    try:
        plan = write_plan(onnx_path, work / "f32", ["f32", "f32"], cut)
        assert [p["file"] for p in plan["parts"]] == ["prefix.xml", "rest.xml"]
        small = analysis if analysis is not None else holdout
        small_ref = _reference(onnx_path, small) if analysis is not None else ref
        found = openvino_int8.search(work / "f32" / "prefix.xml", work / "f32" / "rest.xml", cut, work, calib,
                                     small, small_ref, holdout, ref, rest_precision, budget, WORST * budget,
                                     log, openvino_int8.group_names(onnx_path))
        rec = {**report, "int8": found, "budget": budget, "worst_budget": WORST * budget,
               "heldout_images": len(holdout), "calibration_images": len(calib), "measured_on": MEASURED_ON}
        if found["passed"]:
            shutil.rmtree(folder, ignore_errors=True)
            (work / "chosen").replace(folder)
            return {**rec, "plan": ["f32", f"int8+{rest_precision}"], "cut_after": cut,
                    "float_groups": found["float_groups"], "heldout_disagreement": found["final"]["mean"],
                    "heldout_worst": found["final"]["worst"]}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_plan(onnx_path, folder, ["f32"], None)
    f = found["final"]
    why = (f"no INT8 plan within the budget: with every group in {rest_precision} {f['mean'] * 100:.3f} % / "
           f"{f['worst'] * 100:.3f} % (budget {budget * 100:.2f} % / {WORST * budget * 100:.2f} %)")
    log(f"  int8: {why}: the row runs f32")
    return {**rec, "plan": ["f32"], "fell_back": why, "fell_back_to": "f32"}


def build_cpu_plan(onnx_path: Path, folder: Path, precision: str, holdout: np.ndarray | None,
                   budget: float = 0.005, log=print, calib: np.ndarray | None = None,
                   analysis: np.ndarray | None = None) -> dict:
    """Write the row's plan into `folder`; returns the report recorded in build.json. `holdout`: the guard's frames
    at serving size (build.guard.load_batch: they carry their placements); `analysis`: the same frames at the INT8
    search's smaller size (default: `holdout`)."""
    flags = cpu_flags()
    report = {"runtime": "openvino", "cpu_flags": flags, "requested": precision}
    if precision == "f32":
        write_plan(onnx_path, folder, ["f32"], None)
        return {**report, "plan": ["f32"], "note": "exact: f32 throughout"}
    needed = INT8_FLAGS if precision == "int8" else BF16_FLAGS
    if not any(f in flags for f in needed):  # the CPU cannot run this precision well: f32, recorded with its flags
        write_plan(onnx_path, folder, ["f32"], None)
        log(f"  {precision}: this CPU has none of {', '.join(needed)}: the row runs f32")
        return {**report, "plan": ["f32"], "fell_back": f"CPU without {' / '.join(needed)}", "fell_back_to": "f32"}
    ref = _reference(onnx_path, holdout)
    if precision == "int8":
        return _int8_plan(onnx_path, folder, calib, holdout, ref, analysis, budget, report, log)
    cut = first_conv_output(__import__("onnx").load(str(onnx_path), load_external_data=False))
    tried, worst = [], WORST * budget
    for precisions, at in ((["bf16"], None), (["f32", "bf16"], cut)):
        stage = folder.parent / f".{folder.name}.try"
        shutil.rmtree(stage, ignore_errors=True)
        write_plan(onnx_path, stage, precisions, at)
        measured = _share(PlanRunner(stage), holdout, ref)
        tried.append({"plan": precisions, "cut_after": at, "disagreement": measured.mean, "worst": measured.worst})
        log(f"  bf16 plan {'+'.join(precisions)}: {measured.text()} differ from FP32 "
            f"(accept <= {budget * 100:.2f} % / {worst * 100:.2f} %)")
        if measured.within(budget, worst):
            shutil.rmtree(folder, ignore_errors=True)
            stage.replace(folder)
            return {**report, "plan": precisions, "cut_after": at, "heldout_disagreement": measured.mean,
                    "heldout_worst": measured.worst, "heldout_images": len(holdout), "tried": tried,
                    "budget": budget, "worst_budget": worst, "measured_on": MEASURED_ON}
        shutil.rmtree(stage, ignore_errors=True)
    write_plan(onnx_path, folder, ["f32"], None)
    best = min(tried, key=lambda t: t["disagreement"])
    why = (f"no bf16 plan within the budget: best {'+'.join(best['plan'])} {best['disagreement'] * 100:.3f} % / "
           f"{best['worst'] * 100:.3f} % (budget {budget * 100:.2f} % / {worst * 100:.2f} %)")
    log(f"  bf16: {why}: the row runs f32")
    return {**report, "plan": ["f32"], "tried": tried, "fell_back": why, "fell_back_to": "f32", "budget": budget,
            "worst_budget": worst, "heldout_images": len(holdout), "measured_on": MEASURED_ON}
