"""CPU benchmark of the B1 rows, one run, side by side: ONNX Runtime FP32 (the baseline), ONNX Runtime `best_cpu`,
OpenVINO f32, OpenVINO bf16 over the whole graph and bf16 with the first patch embedding in f32 (the two bf16 plans
the guard chooses from), OpenVINO INT8 (NNCF, the guarded row's plan) — interleaved, medians, 1 and 2 threads, batch 1 and 2; then label agreement with FP32
and mIoU on CamVid test images through the client's default resize (`fit`).

    python -m bench.cpu --data ../shared/datasets/camvid [--images 24] [--repeats 5] [--out docs/results/bench_cpu_b1]

The rows' artefacts come from the repository pipeline (build.artefacts: the same files `make repo` serves);
best_cpu is calibrated on CamVid train and guarded on val, the bf16 plan guarded on val. The CPU's model and flags
are recorded with the numbers: compare CPU timings only within one run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

SIZE = (1024, 1024)


def runners(paths: dict, threads: int) -> dict:
    """name -> callable(uint8 [n,H,W,3]) -> labels, for one thread count."""
    import onnxruntime as ort

    from build.openvino_ir import PlanRunner

    def ort_session(path):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        s = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        return lambda x: s.run(["labels"], {"images": x})[0]

    out = {"onnxruntime fp32": ort_session(paths["fp32"])}
    if paths.get("best_cpu"):
        out["onnxruntime best_cpu"] = ort_session(paths["best_cpu"])
    for name in ("openvino f32", "openvino bf16", "openvino bf16, f32 prefix", "openvino int8 (guarded)"):
        out[name] = PlanRunner(paths[name], threads=threads).run
    return out


def timing(paths: dict, images: np.ndarray, repeats: int, log) -> list[dict]:
    rows = []
    for threads in (1, 2):
        run = runners(paths, threads)
        for batch in (1, 2):
            x = images[:batch]
            for f in run.values():  # warm-up: compilation for this shape, first-run allocations
                f(x)
            samples = {name: [] for name in run}
            for _ in range(repeats):  # interleaved: every runtime sees the same machine state
                for name, f in run.items():
                    t0 = time.perf_counter()
                    f(x)
                    samples[name].append((time.perf_counter() - t0) / batch)
            base = statistics.median(samples["onnxruntime fp32"])
            for name, s in samples.items():
                med = statistics.median(s)
                rows.append({"runtime": name, "threads": threads, "batch": batch, "s_per_image": med,
                             "speedup_vs_onnxruntime_fp32": base / med})
            log(f"threads {threads} batch {batch}: " + ", ".join(
                f"{n} {statistics.median(s):.3f}" for n, s in samples.items()))
    return rows


def accuracy(paths: dict, data: Path, n: int) -> dict:
    from client.metrics import confusion_matrix, mean_iou
    from client.policy import from_output, place, to_input
    from training.data import find_samples, load_pair

    samples, lut = find_samples(data, "test")
    samples = samples[::max(1, len(samples) // n)][:n]
    run = runners(paths, 2)
    cms = {name: np.zeros((19, 19), np.int64) for name in run}
    diff = {name: [] for name in run}
    for s in tqdm(samples, desc="accuracy", unit="img"):
        image, label = load_pair(s, lut)
        image = np.asarray(image)
        p = place(image.shape[:2], SIZE)
        x = to_input(image, p)[None]
        preds = {name: from_output(f(x)[0], p, image.shape[:2]) for name, f in run.items()}
        ref = preds["onnxruntime fp32"]
        for name, pred in preds.items():
            diff[name].append(float(np.mean(pred != ref)))
            cms[name] += confusion_matrix(pred, label, 19)
    out = {}
    for name in run:
        present = np.flatnonzero(cms[name].sum(1) > 0).tolist()
        out[name] = {"disagreement_mean": float(np.mean(diff[name])), "disagreement_max": float(np.max(diff[name])),
                     "miou": mean_iou(cms[name], present)}
    return {"images": len(samples), "resize": "fit (letterbox into 1024x1024)", "rows": out}


def markdown(r: dict) -> str:
    acc = r["accuracy"]["rows"]
    lines = [f"B1 1024x1024, {r['cpu']} ({r['cores']} cores; {', '.join(r['flags'])}), {r['date']}",
             f"`{r['command']}`", "",
             "| runtime | 2 threads, batch 1 s/img | vs ORT FP32 | batch 2 s/img | 1 thread, batch 1 | "
             f"pixels differing (mean / max, {r['accuracy']['images']} test images) | mIoU |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    t = {(x["runtime"], x["threads"], x["batch"]): x for x in r["timing"]}
    for name, a in acc.items():
        lines.append(f"| {name} | {t[(name, 2, 1)]['s_per_image']:.3f} | "
                     f"{t[(name, 2, 1)]['speedup_vs_onnxruntime_fp32']:.2f}x | {t[(name, 2, 2)]['s_per_image']:.3f} | "
                     f"{t[(name, 1, 1)]['s_per_image']:.3f} | {a['disagreement_mean'] * 100:.3f} % / "
                     f"{a['disagreement_max'] * 100:.3f} % | {a['miou']:.4f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from bench.resize_modes import cpu_facts
    from build.artefacts import OnnxCache, QuantSettings
    from build.variants import VARIANTS
    from client.preprocess import load_image, resize_image
    from segformer.weights import atomic_write_bytes

    ap = argparse.ArgumentParser(prog="python -m bench.cpu", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/datasets/camvid"))
    ap.add_argument("--images", type=int, default=24, help="CamVid test images for agreement and mIoU")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-best-cpu", action="store_true", help="skip the ONNX Runtime INT8 row (needs calibration)")
    ap.add_argument("--out", type=Path, default=Path("results/bench_cpu_b1"))
    a = ap.parse_args(argv)
    if not (a.data / "test" / "images").is_dir():
        ap.error(f"--data {a.data}: no CamVid-layout folder (test/images, val/images, train/images)")
    quant = QuantSettings(calib=a.data / "train" / "images", holdout=a.data / "val" / "images")
    cache = OnnxCache(Path(".cache") / "onnx", quant)
    log = tqdm.write
    paths = {"fp32": cache.get(VARIANTS["segformer_b1"], log)[0]}
    if not a.no_best_cpu:
        paths["best_cpu"] = cache.get(VARIANTS["segformer_b1_best_cpu"], log)[0]
    from build.openvino_ir import first_conv_output, write_plan

    ov_f32, _ = cache.openvino(VARIANTS["segformer_b1_ov"], log)
    ov_bf16, bf16_report = cache.openvino(VARIANTS["segformer_b1_ov_bf16"], log)
    prefix = a.out.parent / ".bench_cpu_prefix_plan"
    import onnx

    write_plan(paths["fp32"], prefix, ["f32", "bf16"], first_conv_output(onnx.load(str(paths["fp32"]))))
    whole = prefix.with_name(".bench_cpu_whole_plan")
    write_plan(paths["fp32"], whole, ["bf16"], None)
    ov_int8, int8_report = cache.openvino(VARIANTS["segformer_b1_ov_int8"], log)
    paths.update({"openvino f32": ov_f32, "openvino bf16": whole, "openvino bf16, f32 prefix": prefix,
                  "openvino int8 (guarded)": ov_int8})
    files = sorted((a.data / "test" / "images").glob("*.jpg"))[:2]
    images = np.stack([resize_image(load_image(f), SIZE) for f in files])
    result = {"date": time.strftime("%Y-%m-%d"), **cpu_facts(), "size": list(SIZE),
              "command": "python -m bench.cpu" + (" --no-best-cpu" if a.no_best_cpu else ""),
              "bf16_row_plan": bf16_report["openvino"], "int8_row_plan": int8_report["openvino"], "timing": timing(paths, images, a.repeats, log),
              "accuracy": accuracy(paths, a.data, a.images)}
    import shutil

    shutil.rmtree(prefix, ignore_errors=True)
    shutil.rmtree(whole, ignore_errors=True)
    atomic_write_bytes(a.out.with_suffix(".json"), (json.dumps(result, indent=1) + "\n").encode())
    atomic_write_bytes(a.out.with_suffix(".md"), markdown(result).encode())
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
