"""Which resize mode gives which accuracy and speed: squashed vs aspect kept vs sliding window, on CamVid test
images at their own 480x360 aspect, with the shipped B1 exported to ONNX (with logits) and run by ONNX Runtime.

    python -m bench.resize_modes --data ../shared/datasets/camvid [--every 4] [--out docs/results/resize_modes_b1]

Modes (client.policy): `stretch` (360x480 squashed into 1024x1024, the old client), `fit` into the fixed
1024x1024 input (letterboxed to 768x1024 + zero padding), `fit` on a dynamic row at the image's own size
(384x480 after padding to a multiple of 32), `fit` on a dynamic row scaled to the long side 1024 (768x1024, no
padding), and `slide` (scaled to cover 1024x1024 -> 1024x1365, two 1024x1024 crops, stride 768, logits averaged).
Writes NAME.json and NAME.md; the CPU's model and flags are recorded with the timings.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
from client.cli import progress, run as run_cli

MODES = [  # (label, client mode, dynamic size range or None)
    ("stretch 1024x1024 (squashed)", "stretch", None),
    ("fit, fixed 1024x1024 (letterbox)", "fit", None),
    ("fit, dynamic, own size (384x480)", "fit", ((256, 256), (1024, 1024))),
    ("fit, dynamic, long side 1024 (768x1024)", "fit", ((768, 768), (1024, 1024))),
    ("slide 1024x1024 crops, stride 768", "slide", None),
]


def cpu_facts() -> dict:
    flags = set()
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    keep = sorted(f for f in flags if f.startswith(("avx", "amx")) or f in ("fma", "f16c"))
    import os

    return {"cpu": model, "flags": keep, "cores": os.cpu_count()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.resize_modes", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/datasets/camvid"),
                    help="CamVid in the train/val/test images+labels layout (default ../shared/datasets/camvid)")
    ap.add_argument("--weights", default="segformer-b1-camvid", help="shipped weights name or path to NAME.json")
    ap.add_argument("--every", type=int, default=4, help="use every N-th test image (default 4: 59 of 233)")
    ap.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (default 0: all cores)")
    ap.add_argument("--out", type=Path, default=Path("results/resize_modes_b1"), help="writes OUT.json and OUT.md")
    a = ap.parse_args(argv)
    return run_cli(lambda: compare(a))


def compare(a) -> int:
    from build.export import build_onnx
    from client.metrics import confusion_matrix, iou_per_class, mean_iou, pixel_accuracy
    from client.policy import InputPolicy
    from client.preprocess import load_image
    from client.runners import OnnxRunner
    from segformer.weights import atomic_write_bytes
    from training.data import find_samples, load_pair

    samples, lut = find_samples(a.data, "test")
    samples = samples[::a.every]
    onnx_path = Path(".cache") / "bench" / f"{a.weights}-logits.onnx"
    if not onnx_path.is_file():
        data, _ = build_onnx(a.weights, (1024, 1024), with_logits=True)
        atomic_write_bytes(onnx_path, data)
    runner = OnnxRunner(onnx_path, size=(1024, 1024), threads=a.threads, weights=a.weights)
    info = runner.activate()
    n = len(info.classes)
    cms = {label: np.zeros((n, n), np.int64) for label, _, _ in MODES}
    secs = {label: [] for label, _, _ in MODES}
    policies = {}
    for s in progress(samples, desc="images", unit="img"):
        image, label = load_image(s.image), load_pair(s, lut)[1]  # the image decoded as a client decodes it
        for name, mode, size_range in MODES:  # interleaved: every mode sees the same machine state
            info.size_range = size_range  # the runner's shape check follows the row being imitated
            policy = policies.setdefault(name, InputPolicy.for_model(info, mode))
            t0 = time.perf_counter()
            pred = policy.predict(image, runner)
            secs[name].append(time.perf_counter() - t0)
            cms[name] += confusion_matrix(pred, label, n)
    rows = []
    for name, _, _ in MODES:
        cm = cms[name]
        present = np.flatnonzero(cm.sum(1) > 0).tolist()
        rows.append({"mode": name, "input_policy": policies[name].describe(), "miou": mean_iou(cm, present), "pixel_accuracy": pixel_accuracy(cm),
                     "ms_per_image_median": 1e3 * float(np.median(secs[name])),
                     "iou": {info.classes[c]: float(iou_per_class(cm)[c]) for c in present}})
    result = {"weights": a.weights, "images": len(samples), "split": "test", "every": a.every,
              "image_size": [360, 480], "runtime": "ONNX Runtime CPU, FP32, folded decoder, logits output",
              "date": time.strftime("%Y-%m-%d"), **cpu_facts(), "rows": rows,
              "command": f"python -m bench.resize_modes --every {a.every}"}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(a.out.with_suffix(".json"), (json.dumps(result, indent=1) + "\n").encode())
    md = [f"B1 (`{a.weights}`), {len(samples)} CamVid test images (every {a.every}th) at 480x360, "
          f"{result['runtime']}, {result['cpu']} ({result['cores']} cores), {result['date']}",
          "", "| mode | mIoU | pixel acc. | ms/img (median) |", "|---|---:|---:|---:|"]
    md += [f"| {r['mode']} | {r['miou']:.4f} | {r['pixel_accuracy']:.4f} | {r['ms_per_image_median']:.0f} |"
           for r in rows]
    atomic_write_bytes(a.out.with_suffix(".md"), ("\n".join(md) + "\n").encode())
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
