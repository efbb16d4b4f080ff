"""CPU benchmark of the B1 rows, one run, side by side: ONNX Runtime FP32 (the baseline), ONNX Runtime `best_cpu`,
OpenVINO f32, OpenVINO bf16 over the whole graph and bf16 with the first patch embedding in f32 (the two bf16 plans
the guard chooses from), OpenVINO INT8 (NNCF, the guarded row's plan) — interleaved, medians, 1 and 2 threads, batch
1 and 2; then label agreement with FP32 and mIoU on CamVid test images.

    python -m bench.cpu --data ../shared/datasets/camvid [--images 24] [--guard-images 12] [--repeats 5]
                        [--out docs/results/bench_cpu_b1]

Every image goes through the row's input policy (client.policy: what clients send by default, `fit`, letterboxed
into 1024x1024): the timed frames, the reported frames and the guards' calibration and held-out frames. The rows'
artefacts come from the repository pipeline (build.artefacts: the same files `make repo` serves): best_cpu and the
OpenVINO INT8 plan are calibrated on CamVid train; best_cpu, the bf16 and the INT8 plans are guarded on the last
--guard-images CamVid *test* frames (never trained on), and the agreement and mIoU are reported on --images other
test frames (evenly spread over the rest), so no guard sees a frame it is reported on. The CPU's model and flags are
recorded with the numbers: compare CPU timings only within one run.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path

import numpy as np

from bench import BenchError
from client.cli import log, progress, run as run_cli

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


def load_average() -> float | None:
    """The host's 1-minute load average (None where the OS has none): above the core count, other processes were
    competing for the CPU and the timings of that run are not to be trusted."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


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


def split_test(samples: list, n: int, guard: int) -> tuple[list, list]:
    """(reported, guard): the last `guard` test frames guard the rows; `n` of the others, evenly spread, are
    reported on. Disjoint by construction."""
    if guard < 1 or n < 1 or len(samples) < n + guard:
        raise BenchError(f"{len(samples)} test frames cannot hold {n} reported + {guard} guard frames: "
                         "lower --images or --guard-images")
    rest, held = samples[:len(samples) - guard], samples[len(samples) - guard:]
    idx = np.linspace(0, len(rest) - 1, n).round().astype(int)
    return [rest[i] for i in dict.fromkeys(idx.tolist())], held


def accuracy(paths: dict, samples: list, lut, policy) -> dict:
    from client.metrics import confusion_matrix, mean_iou
    from client.preprocess import load_image
    from training.data import load_pair

    run = runners(paths, 2)
    cms = {name: np.zeros((19, 19), np.int64) for name in run}
    diff = {name: [] for name in run}
    for s in progress(samples, desc="accuracy", unit="img"):
        image, label = load_image(s.image), load_pair(s, lut)[1]  # the image decoded as a client decodes it
        x, p = policy.prepare(image)
        preds = {name: policy.restore(f(x[None])[0], p, image.shape[:2]) for name, f in run.items()}
        ref = preds["onnxruntime fp32"]
        for name, pred in preds.items():
            diff[name].append(float(np.mean(pred != ref)))
            cms[name] += confusion_matrix(pred, label, 19)
    out = {}
    for name in run:
        present = np.flatnonzero(cms[name].sum(1) > 0).tolist()
        out[name] = {"disagreement_mean": float(np.mean(diff[name])), "disagreement_max": float(np.max(diff[name])),
                     "miou": mean_iou(cms[name], present)}
    return {"images": len(samples), "frames": [s.image.name for s in samples], "input_policy": policy.describe(),
            "rows": out}


def markdown(r: dict) -> str:
    acc = r["accuracy"]["rows"]
    lines = [f"B1 1024x1024, {r['cpu']} ({r['cores']} cores; {', '.join(r['flags'])}), {r['date']}",
             f"`{r['command']}`", "",
             f"Input policy {_policy_text(r['input_policy'])} for every frame; guards on {r['guard']['images']} "
             f"CamVid test frames ({r['guard']['frames'][0]} .. {r['guard']['frames'][-1]}), reported on "
             f"{r['accuracy']['images']} other test frames. Guarded plans: bf16 {_plan_text(r['bf16_row_plan'])}; "
             f"int8 {_plan_text(r['int8_row_plan'])}.", "", *_load_note(r),
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


def _load_note(r: dict) -> list[str]:
    before, after = r.get("load_average_before"), r.get("load_average_after")
    if before is None or after is None:
        return []
    busy = max(before, after) > r["cores"]
    return [f"Host load average (1 min) before / after the timing: {before:.2f} / {after:.2f} on {r['cores']} cores" +
            (": other processes competed for the CPU, the timings are not reliable." if busy else "."), ""]


def _policy_text(d: dict) -> str:
    return f"`{d['mode']}` {d['size'][0]}x{d['size'][1]}"


def _plan_text(plan: dict) -> str:
    """What a guarded OpenVINO row chose, what its guard measured and what it tried on the way."""
    chose = "+".join(plan.get("plan", []))
    if "heldout_disagreement" in plan:
        chose += f" (guard {plan['heldout_disagreement'] * 100:.3f} % / {plan['heldout_worst'] * 100:.3f} %)" \
            if "heldout_worst" in plan else f" (guard {plan['heldout_disagreement'] * 100:.3f} %)"
    int8 = plan.get("int8")
    if int8 and int8.get("passed"):
        back = int8["float_groups"]
        chose += f", {int8['int8_groups']} of {int8['groups']} groups INT8" + \
            (f", {len(back)} in {int8['float_precision']}: {', '.join(back)}" if back else "")
    if plan.get("fell_back"):
        chose += f", fell back to {plan.get('fell_back_to', 'f32')}: {plan['fell_back']}"
    tried = ", ".join(f"{t.get('f32') or '+'.join(t.get('plan', []))} {t['disagreement'] * 100:.3f} %"
                      for t in plan.get("tried", []))
    return chose + (f"; tried {tried}" if tried else "")


def guard_folder(samples: list, folder: Path) -> Path:
    """The guard frames as a folder of their own (the artefact cache reads held-out frames from a folder)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for s in samples:
        shutil.copy2(s.image, folder / s.image.name)
    return folder


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.cpu", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/datasets/camvid"),
                    help="CamVid in the train/val/test images+labels layout (default ../shared/datasets/camvid)")
    ap.add_argument("--images", type=int, default=24, help="CamVid test frames reported on (default 24)")
    ap.add_argument("--guard-images", type=int, default=12,
                    help="the last N CamVid test frames, held out for the guards (default 12)")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per runtime and shape (default 5)")
    ap.add_argument("--calib-images", type=int, default=8,
                    help="CamVid train frames calibrating the OpenVINO INT8 plan (default 8)")
    ap.add_argument("--no-best-cpu", action="store_true", help="skip the ONNX Runtime INT8 row (needs calibration)")
    ap.add_argument("--out", type=Path, default=Path("results/bench_cpu_b1"),
                    help="writes OUT.json and OUT.md (default results/bench_cpu_b1)")
    a = ap.parse_args(argv)
    return run_cli(lambda: bench(a))


def bench(a) -> int:
    import onnx

    from bench.resize_modes import cpu_facts
    from build.artefacts import OnnxCache, QuantSettings
    from build.openvino_ir import first_conv_output, write_plan
    from build.variants import VARIANTS
    from client.policy import InputPolicy
    from segformer.weights import atomic_write_bytes
    from training.data import find_samples

    if not (a.data / "test" / "images").is_dir():
        raise BenchError(f"--data {a.data}: no CamVid-layout folder (test/images, val/images, train/images)")
    samples, lut = find_samples(a.data, "test")
    reported, held = split_test(samples, a.images, a.guard_images)
    policy = InputPolicy.for_row(VARIANTS["segformer_b1"])  # what clients send the row by default
    holdout = guard_folder(held, Path(".cache") / "bench_cpu_guard")
    quant = QuantSettings(calib=a.data / "train" / "images", holdout=holdout, holdout_count=len(held),
                          calib_count=a.calib_images)
    cache = OnnxCache(Path(".cache") / "onnx", quant)
    paths = {"fp32": cache.get(VARIANTS["segformer_b1"], log)[0]}
    if not a.no_best_cpu:
        paths["best_cpu"] = cache.get(VARIANTS["segformer_b1_best_cpu"], log)[0]
    ov_f32, _ = cache.openvino(VARIANTS["segformer_b1_ov"], log)
    ov_bf16, bf16_report = cache.openvino(VARIANTS["segformer_b1_ov_bf16"], log)
    prefix = a.out.parent / ".bench_cpu_prefix_plan"
    write_plan(paths["fp32"], prefix, ["f32", "bf16"], first_conv_output(onnx.load(str(paths["fp32"]))))
    whole = prefix.with_name(".bench_cpu_whole_plan")
    write_plan(paths["fp32"], whole, ["bf16"], None)
    ov_int8, int8_report = cache.openvino(VARIANTS["segformer_b1_ov_int8"], log)
    paths.update({"openvino f32": ov_f32, "openvino bf16": whole, "openvino bf16, f32 prefix": prefix,
                  "openvino int8 (guarded)": ov_int8})
    images = policy.batch([s.image for s in reported[:2]])
    command = f"python -m bench.cpu --images {a.images} --guard-images {a.guard_images} --repeats {a.repeats} " \
        f"--calib-images {a.calib_images}" + \
        (" --no-best-cpu" if a.no_best_cpu else "")
    result = {"date": time.strftime("%Y-%m-%d"), **cpu_facts(), "size": list(policy.size), "command": command,
              "input_policy": policy.describe(),
              "guard": {"split": "test", "images": len(held), "frames": [s.image.name for s in held],
                        "calibration": f"CamVid train ({a.calib_images} frames)",
                        "rule": "<= 0.5 % mean, <= 1 % worst frame, labels restored to each image's frame"},
              "bf16_row_plan": bf16_report["openvino"], "int8_row_plan": int8_report["openvino"],
              "load_average_before": load_average(), "timing": timing(paths, images, a.repeats, log),
              "load_average_after": load_average(), "accuracy": accuracy(paths, reported, lut, policy)}
    shutil.rmtree(prefix, ignore_errors=True)
    shutil.rmtree(whole, ignore_errors=True)
    atomic_write_bytes(a.out.with_suffix(".json"), (json.dumps(result, indent=1) + "\n").encode())
    atomic_write_bytes(a.out.with_suffix(".md"), markdown(result).encode())
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
