"""INT8 for ONNX Runtime on CPUs: dynamic-activation INT8 weight products, accuracy-guarded.

    python -m build.quantize_cpu --weights segformer-b1-camvid --size 1024x1024 --holdout DIR --out DIR

The Q/DQ graph from build.quantize is TensorRT's input: TensorRT fuses Q/DQ into its INT8 kernels, but ONNX
Runtime's CPU provider runs most of those Q/DQ nodes as separate passes over large activations and ends up
slower than FP32. This recipe is the one ONNX Runtime's own CPU INT8 kernels are built for: every MatMul/Gemm
with a constant weight becomes DynamicQuantizeMatMul (per-tensor INT8 weights: per-channel measured 5 % slower here; 7-bit so the AVX2 u8s8 path cannot
saturate; activations quantized per tensor at run time, so no calibration ranges). It is guarded like `best`:
the whole graph is measured against FP32 on held-out images, and when it is over budget x margin the weight
groups are added greedily, least sensitive first, then checked at the serving size (build.quantize's search).
Writes best_cpu.onnx and quantize_cpu.json.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from build.quantize import (LEGACY_ERRORS, add_common_args, check_budget, disagreement, greedy_best, groups,
                            measured_on, policy_record, prepare, repair_to_budget, run_labels)
from client.cli import progress, run as run_cli
from client.policy import InputPolicy

DYNAMIC_OPS = ("MatMul", "Gemm")


def weight_products(model: onnx.ModelProto) -> list[str]:
    """MatMul/Gemm nodes whose second input is a constant weight (activation x activation products stay FP32:
    quantizing both sides at run time costs more than it saves)."""
    consts = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type in DYNAMIC_OPS and n.input[1] in consts]


def weight_groups(model: onnx.ModelProto) -> dict[str, list[str]]:
    """build.quantize's layer groups, restricted to the weight products."""
    keep = set(weight_products(model))
    out = {g: [n for n in nodes if n in keep] for g, nodes in groups(model).items()}
    return {g: nodes for g, nodes in out.items() if nodes}


def quantize_dynamic(fp32: Path, out: Path, include: list[str]) -> Path:
    """Write fp32 with the `include` nodes as dynamic-activation INT8 products (nothing else changes)."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    # the quantizer first splits a Gemm into `NAME_MatMul` + Add, so a Gemm is chosen under both names
    names = [*include, *(f"{n}_MatMul" for n in include)] or ["-none-"]
    ort_quantize_dynamic(str(fp32), str(out), op_types_to_quantize=list(DYNAMIC_OPS),
                         nodes_to_quantize=names, per_channel=False, reduce_range=True,
                         weight_type=QuantType.QInt8, extra_options={"MatMulConstBOnly": True})
    return out


def build_cpu_int8(fp32: Path, out_dir: Path, holdout: np.ndarray, budget: float = 0.005, margin: float = 0.6,
                   log=print, holdout_full: np.ndarray | None = None, policy: InputPolicy | None = None) -> dict:
    """best_cpu.onnx and quantize_cpu.json in `out_dir`: every weight group INT8 if that is within budget x margin
    on `holdout`, else the greedy mix; the final number is measured on `holdout_full` (serving size) if given.
    The report records the input policy that prepared the held-out images (`policy`, else the batch's own)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    grouped = weight_groups(onnx.load(str(fp32), load_external_data=False))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        work = Path(tmp)
        ref = run_labels(fp32, holdout)

        def measure(chosen, images=holdout, reference=ref, name="try.onnx"):
            nodes = [n for g in chosen for n in grouped[g]]
            return disagreement(run_labels(quantize_dynamic(fp32, work / name, nodes), images), reference, images)

        everything = measure(list(grouped))
        log(f"CPU INT8, every weight product ({sum(map(len, grouped.values()))} in {len(grouped)} groups): "
            f"{everything * 100:.3f} % of held-out pixels differ from FP32")
        sens, trace = {}, []
        if everything <= budget * margin:
            kept = list(grouped)
        else:
            sens = {g: measure([g]) for g in progress(grouped, desc="sensitivity (cpu int8)", unit="group")}
            kept, trace = greedy_best(sorted(sens, key=sens.get), budget * margin, measure)
        final_set = holdout_full if holdout_full is not None else holdout
        final_ref = run_labels(fp32, final_set) if holdout_full is not None else ref

        def measure_final(chosen):
            return measure(chosen, final_set, final_ref, "best_cpu.onnx")

        kept, best, repair = repair_to_budget(kept, sens, budget, measure_final, log)
        check_budget(best, budget, "best_cpu")
        (work / "best_cpu.onnx").replace(out_dir / "best_cpu.onnx")
    report = {"recipe": "onnxruntime dynamic INT8 (DynamicQuantizeMatMul, per-tensor 7-bit weights)",
              "budget": budget, "search_target": budget * margin, "holdout_images": len(holdout),
              "input_policy": policy_record(holdout_full, holdout, policy=policy),
              "measured_on": measured_on(holdout_full if holdout_full is not None else holdout),
              "analysis_size": list(holdout.shape[1:3]), "groups": len(grouped),
              "all_weight_products": {"disagreement_analysis_size": everything}, "sensitivity": sens,
              "greedy": trace, "repair": repair,
              "best": {"disagreement": best, "int8_groups": len(kept),
                       "int8_layers": sum(len(grouped[g]) for g in kept),
                       "precision": {g: ("int8" if g in kept else "fp32") for g in grouped}},
              "seconds": {"total": round(time.perf_counter() - t0, 1)}}
    (out_dir / "quantize_cpu.json").write_text(json.dumps(report, indent=1) + "\n")
    log(f"best_cpu: {len(kept)}/{len(grouped)} weight groups in INT8, {best * 100:.3f} % differ "
        f"(budget {budget * 100:.2f} %)")
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m build.quantize_cpu", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap)
    args = ap.parse_args(argv)

    def body():
        fp32, holdout, full = prepare(args)
        build_cpu_int8(fp32, args.out, holdout, args.budget, args.margin, holdout_full=full)

    return run_cli(body, handled=LEGACY_ERRORS)


if __name__ == "__main__":
    raise SystemExit(main())
