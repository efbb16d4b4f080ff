"""OpenVINO IR for the CPU rows, with an accuracy-guarded precision plan (the engines step for OpenVINO).

A plan is one or more IR parts run in sequence, each compiled with its own inference precision:
- ``f32``: the whole graph as one f32 IR (exact: the same labels as ONNX Runtime FP32).
- ``bf16``: bfloat16 where the CPU has it (AVX512-BF16 / AMX), guarded like the INT8 ``best`` row: measured on
  held-out images at serving size against ONNX Runtime FP32, the 0.5 % pixel budget with a 0.6 margin. When the
  whole graph misses it, the graph is cut after the first patch embedding's convolution and that prefix runs in
  f32 (measured on CamVid: the 7x7 convolution over the normalised pixels holds most of bf16's label flips,
  0.55 % -> 0.19 %, at a 5 % cost); when that misses too, the row falls back to f32 and says so in build.json.
  A CPU without bf16 gets the f32 plan, recorded with its features.
- ``int8``: NNCF post-training quantization (calibration images, transformer preset) where the CPU has VNNI or
  AMX-INT8, guarded the same way: every convolution and matrix product INT8; if that misses, the stem convolution
  kept in f32; then the stem and the decoder (measured on B1 1024², 4 CamVid test images: 0.54 % -> 0.40 % ->
  0.25 %); then all of stage 1 and the decoder; else f32. The rest of the graph runs f32.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

# The plan runs on the served program's own runtime (copied beside 1/model.py by `make repo`): the guard measures
# exactly the code that serves the row. PlanRunner stays importable from here (bench.cpu uses it).
from segformer.errors import OutcomeError
from server.models.segformer_runtime import PlanRunner  # noqa: F401  (re-exported)

# The held-out measure must stay within MARGIN x budget. Stricter than the INT8 `best` row's 0.6: whole-graph bf16
# flipped 0.26 % of pixels on the three default val frames but 0.55 % on 4 CamVid test frames (B1 1024²), so a
# small held-out set can be off by 2x.
MARGIN = 0.5
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


def _disagreement(runner: PlanRunner, images: np.ndarray, ref: np.ndarray) -> float:
    out = np.concatenate([runner.run(images[i:i + 1]) for i in range(len(images))])
    return float(np.count_nonzero(out != ref) / ref.size)


def _patch_embeddings(model) -> list[int]:
    """Graph positions of the patch-embedding convolutions: strided and padded (the key/value reductions are
    strided but unpadded)."""
    out = []
    for i, n in enumerate(model.graph.node):
        if n.op_type != "Conv":
            continue
        attrs = {a.name: list(a.ints) for a in n.attribute}
        if max(attrs.get("strides", [1])) > 1 and max(attrs.get("pads", [0])) > 0:
            out.append(i)
    return out


def _int8_candidates(onnx_path: Path) -> list[tuple[str, list[str]]]:
    """(what stays f32, ONNX node names NNCF must leave alone), from least to most kept in f32."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    nodes = model.graph.node
    cut = first_conv_output(model)
    stem = [n.name for n in nodes if cut in n.output]
    products = ("Conv", "MatMul", "Gemm")
    # the decoder: the products after the encoder's last LayerNormalization
    last_ln = max(i for i, n in enumerate(nodes) if n.op_type == "LayerNormalization")
    decoder = [n.name for n in nodes[last_ln + 1:] if n.op_type in products]
    embeds = _patch_embeddings(model)
    stage1 = [n.name for n in nodes[embeds[0]:embeds[1]] if n.op_type in products] if len(embeds) > 1 else stem
    return [("nothing", []), ("stem", stem), ("stem + decoder", stem + decoder),
            ("stage 1 + decoder", sorted(set(stage1 + decoder)))]


def _write_int8(onnx_path: Path, folder: Path, calib: np.ndarray, keep: list[str], shape) -> None:
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(onnx_path))
    model.reshape({"images": list(shape)})  # calibrate on static shapes; the row reshapes per request
    ignored = [op.get_friendly_name() for op in model.get_ops()
               if any(op.get_friendly_name() == k or op.get_friendly_name().startswith(k + "/") for k in keep)]
    quantized = nncf.quantize(model, nncf.Dataset([calib[i:i + 1] for i in range(len(calib))]),
                              model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calib),
                              fast_bias_correction=True,
                              ignored_scope=nncf.IgnoredScope(names=ignored, validate=False) if ignored else None)
    folder.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(folder / "model.xml"), compress_to_fp16=False)
    (folder / "plan.json").write_text(json.dumps({"parts": [{"file": "model.xml", "precision": "f32",
                                                             "inputs": ["images"], "outputs": None}]}, indent=1))


def _int8_plan(onnx_path, folder, calib, holdout, ref, budget, report, log) -> dict:
    tried = []
    for what, keep in _int8_candidates(onnx_path):
        stage = folder.parent / f".{folder.name}.try"
        shutil.rmtree(stage, ignore_errors=True)
        _write_int8(onnx_path, stage, calib, keep, (1, *holdout.shape[1:]))
        measured = _disagreement(PlanRunner(stage), holdout, ref)
        tried.append({"f32": what, "kept_nodes": len(keep), "disagreement": measured})
        log(f"  int8 (NNCF), f32 kept: {what}: {measured * 100:.3f} % of held-out pixels differ from FP32 "
            f"(accept <= {MARGIN * budget * 100:.2f} %)")
        if measured <= MARGIN * budget:
            shutil.rmtree(folder, ignore_errors=True)
            stage.replace(folder)
            return {**report, "plan": ["int8"], "f32_kept": what, "heldout_disagreement": measured,
                    "heldout_images": len(holdout), "calibration_images": len(calib), "tried": tried,
                    "budget": budget, "margin": MARGIN}
        shutil.rmtree(stage, ignore_errors=True)
    write_plan(onnx_path, folder, ["f32"], None)
    log("  int8: no NNCF plan within budget: the row runs f32")
    return {**report, "plan": ["f32"], "tried": tried, "fell_back": "no INT8 plan within the budget"}


def build_cpu_plan(onnx_path: Path, folder: Path, precision: str, holdout: np.ndarray | None,
                   budget: float = 0.005, log=print, calib: np.ndarray | None = None) -> dict:
    """Write the row's plan into `folder`; returns the report recorded in build.json."""
    flags = cpu_flags()
    report = {"runtime": "openvino", "cpu_flags": flags, "requested": precision}
    if precision == "f32":
        write_plan(onnx_path, folder, ["f32"], None)
        return {**report, "plan": ["f32"], "note": "exact: f32 throughout"}
    needed = INT8_FLAGS if precision == "int8" else BF16_FLAGS
    if not any(f in flags for f in needed):  # the CPU cannot run this precision well: f32, recorded with its flags
        write_plan(onnx_path, folder, ["f32"], None)
        log(f"  {precision}: this CPU has none of {', '.join(needed)}: the row runs f32")
        return {**report, "plan": ["f32"], "fell_back": f"CPU without {' / '.join(needed)}"}
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ref = np.concatenate([sess.run(["labels"], {"images": holdout[i:i + 1]})[0] for i in range(len(holdout))])
    if precision == "int8":
        return _int8_plan(onnx_path, folder, calib, holdout, ref, budget, report, log)
    cut = first_conv_output(__import__("onnx").load(str(onnx_path), load_external_data=False))
    tried = []
    for precisions, at in ((["bf16"], None), (["f32", "bf16"], cut)):
        stage = folder.parent / f".{folder.name}.try"
        shutil.rmtree(stage, ignore_errors=True)
        write_plan(onnx_path, stage, precisions, at)
        measured = _disagreement(PlanRunner(stage), holdout, ref)
        tried.append({"plan": precisions, "cut_after": at, "disagreement": measured})
        log(f"  bf16 plan {'+'.join(precisions)}: {measured * 100:.3f} % of held-out pixels differ from FP32 "
            f"(accept <= {MARGIN * budget * 100:.2f} %)")
        if measured <= MARGIN * budget:
            shutil.rmtree(folder, ignore_errors=True)
            stage.replace(folder)
            return {**report, "plan": precisions, "cut_after": at, "heldout_disagreement": measured,
                    "heldout_images": len(holdout), "tried": tried, "budget": budget, "margin": MARGIN}
        shutil.rmtree(stage, ignore_errors=True)
    write_plan(onnx_path, folder, ["f32"], None)
    log("  bf16: no plan within budget: the row runs f32")
    return {**report, "plan": ["f32"], "tried": tried, "fell_back": "no bf16 plan within the budget"}
