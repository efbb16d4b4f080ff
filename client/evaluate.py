"""Accuracy of served variants: pixel disagreement against a reference, and mIoU where labels exist.

    python -m client.evaluate --images DIR [--labels DIR] [--models segformer_b1_fp16,segformer_b1_int8]
                              [--reference segformer_b1 | torch:WEIGHTS | onnx:PATH] [--threshold 0.005]

Every image is decoded, resized to each model's input size, sent to every model (concurrently, HTTP or gRPC) and
the labels are brought back to the image's own size. Per model: share of pixels whose label differs from the
reference (mean, max, per image; verdict per image: good <= 0.5 %, marginal <= 2 %, bad above), and with
--labels the mIoU, per-class IoU and pixel accuracy from a confusion matrix accumulated over the whole set.
Writes report.json, report.md and pictures (disagreement heatmaps, worst images side by side, per-class IoU)
into --out; with --threshold / --max-miou-drop the exit code is a pass/fail gate (0 pass, 1 fail, 2 error).
A model is a served model name (a suffix such as `fp16` picks the one served model ending in `_fp16`),
`onnx:PATH` (local ONNX Runtime) or `torch:WEIGHTS` (local PyTorch FP32). Without --models, the served rows of the
reference's entry are compared (every served model named REFERENCE_*, e.g. segformer_b1_fp16 for segformer_b1).
Labels are mapped to the reference's classes by class name (see client.labels).
"""
from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from client import cli
from client.labels import FORMATS, LabelMapper, find_label, list_images
from client.metrics import confusion_matrix, iou_per_class, mean_iou, pixel_accuracy
from client.policy import MODES, predict
from client.preprocess import ImageError, load_image
from client.runners import RunnerError, is_local, make_runner, served_models
from segformer.errors import ProjectError

VERDICTS = ((0.005, "good"), (0.02, "marginal"), (float("inf"), "bad"))


def verdict(share: float) -> str:
    return next(name for limit, name in VERDICTS if share <= limit)


class RunnerPool:
    """One runner per model, shared by the worker threads (a Triton runner gives each thread its own connection;
    local runners are thread-safe). Every runner is activated up front, so errors surface before any work."""

    def __init__(self, specs: list[str], url, protocol, timeout, size=None, weights=None):
        self.runners = {spec: make_runner(spec, url, protocol, timeout, size, weights) for spec in specs}
        self.info = {}
        try:
            for spec, r in self.runners.items():
                self.info[spec] = r.activate()
        except Exception:
            self.close()
            raise

    def get(self, spec):
        return self.runners[spec]

    def release(self):
        """The calling (worker) thread is done: its connections close."""
        for r in self.runners.values():
            r.release()

    def close(self):
        for r in self.runners.values():
            r.deactivate()


class EvaluateError(ProjectError):
    """An evaluation that cannot run as asked (exit 2)."""


def resolve(names: list[str], served: list[str], option: str = "--models (make evaluate EVAL_MODELS=a,b)") -> list[str]:
    out = []
    for n in names:
        if is_local(n) or n in served:
            out.append(n)
            continue
        hits = [s for s in served if s.endswith(f"_{n}")]
        if len(hits) != 1:
            raise RunnerError(f"model {n!r} is not served" + (f" (ambiguous: {', '.join(hits)})" if hits else "")
                              + f"; served models: {', '.join(served) or 'none'}; name served ones with {option}")
        out.append(hits[0])
    return out


def entry_rows(reference: str, served: list[str], takes_images=lambda name: True) -> list[str]:
    """The served rows of the reference's entry that take the same request: every served model named
    `reference_*` (segformer_b1_fp16, segformer_b1_int8 ... for segformer_b1) for which `takes_images(name)` (an
    `images` input and a `labels` output: not a row's JPEG ensemble or its decode step), sorted."""
    return sorted(s for s in served if s.startswith(f"{reference}_") and takes_images(s))


def _takes_images(url, protocol, timeout):
    """Whether a served model takes raw frames (`images` -> `labels`), from its config."""
    from client.runners import RunnerError, TritonRunner

    def check(name: str) -> bool:
        r = TritonRunner(name, url, protocol, timeout)
        try:
            return r.activate().payload == "images"
        except RunnerError:
            return False
        finally:
            r.deactivate()
    return check


@dataclass
class ModelStats:
    name: str
    num_classes: int
    cm: np.ndarray = None
    shares: list = field(default_factory=list)  # per image disagreement vs reference
    seconds: float = 0.0

    def __post_init__(self):
        self.cm = np.zeros((self.num_classes, self.num_classes), np.int64)


def _run_one(path: Path, pool: RunnerPool, specs: list[str], labels_dir, mapper, mode="fit", stride=None):
    image = load_image(path)
    label, label_path = None, None
    if labels_dir is not None:
        label_path = find_label(path, labels_dir)
        if label_path is not None:
            label = mapper.load(label_path, image.shape[:2], path)
    preds, seconds = {}, {}
    for spec in specs:
        r = pool.get(spec)
        t0 = time.perf_counter()
        preds[spec] = predict(image, r, mode, stride)
        seconds[spec] = time.perf_counter() - t0
    return image, label, label_path, preds, seconds


def _thumb(a: np.ndarray, width: int = 640) -> np.ndarray:
    step = max(1, int(np.ceil(a.shape[1] / width)))
    return np.ascontiguousarray(a[::step, ::step])


def evaluate(images: list[Path], pool: RunnerPool, reference: str, models: list[str], labels_dir=None,
             label_fmt="auto", concurrency: int = 4, keep_worst: int = 6, progress: bool = True, mode: str = "fit",
             stride=None) -> dict:
    """Run every image through reference + models; returns the report dict (and '_worst' picture samples)."""
    specs = [reference] + [m for m in models if m != reference]
    info = pool.info[reference]
    n_cls = len(info.classes) or 256
    # labels and predictions are compared by class id: only models with the reference's classes, in its order
    for s in specs:
        other = pool.info[s].classes
        if info.classes and other and list(other) != list(info.classes):
            raise EvaluateError(f"{s} has other classes than the reference {reference} ({len(other)}: "
                                f"{', '.join(other[:8])}{', ...' if len(other) > 8 else ''}): compare models of "
                                f"one label space")
    mapper = LabelMapper(label_fmt, list(info.classes), reference, labels_dir) if labels_dir is not None else None
    stats = {s: ModelStats(s, n_cls) for s in specs}
    per_image, skipped, no_label, worst = [], [], [], []
    with ThreadPoolExecutor(max(1, concurrency)) as ex:
        futures = [(p, ex.submit(_run_one, p, pool, specs, labels_dir, mapper, mode, stride)) for p in images]
        bar = cli.progress(futures, desc="evaluate", unit="img", disable=not progress)
        for path, fut in bar:
            try:
                image, label, label_path, preds, seconds = fut.result()
            except ImageError as exc:
                skipped.append({"image": str(path), "reason": str(exc)})
                bar.write(f"warning: skipped {exc}")
                continue
            ref = preds[reference]
            row = {"image": str(path), "size": [image.shape[0], image.shape[1]],
                   "label": str(label_path) if label_path else None, "models": {}}
            if labels_dir is not None and label is None:
                no_label.append(str(path))
            for s in specs:
                st = stats[s]
                share = float(np.count_nonzero(preds[s] != ref) / ref.size)
                st.shares.append(share)
                st.seconds += seconds[s]
                entry = {"disagreement": share, "verdict": verdict(share)}
                if label is not None:
                    cm = confusion_matrix(preds[s], label, n_cls)
                    st.cm += cm
                    entry["pixel_accuracy"] = pixel_accuracy(cm)
                row["models"][s] = entry
            per_image.append(row)
            score = max((row["models"][m]["disagreement"] for m in specs if m != reference), default=0.0)
            worst.append((score, len(per_image), {"image": path, "thumb": _thumb(image),
                                                  "preds": {s: _thumb(p) for s, p in preds.items()}}))
            worst = sorted(worst, key=lambda t: (-t[0], t[1]))[:keep_worst]
    if not per_image:
        raise ImageError(f"none of the {len(images)} image(s) could be read; see the warnings above")
    summary = {}
    have_labels = any(st.cm.sum() for st in stats.values())
    # Classes the reference's weights never saw labelled are listed apart and left out of mIoU.
    trained = ({info.classes.index(c) for c in info.trained if c in info.classes}
               if info.trained is not None else None)
    for s, st in stats.items():
        sh = np.asarray(st.shares)
        d = {"disagreement_mean": float(sh.mean()), "disagreement_max": float(sh.max()),
             "disagreement_median": float(np.median(sh)),
             "verdicts": {name: int(sum(verdict(x) == name for x in sh)) for _, name in VERDICTS},
             "ms_per_image": 1e3 * st.seconds / len(sh), "role": "reference" if s == reference else "model",
             "served_as": pool.info[s].name, "input_size": list(pool.info[s].size)}
        if have_labels:
            iou = iou_per_class(st.cm)
            present = np.flatnonzero(st.cm.sum(1) > 0).tolist()
            scored = [c for c in present if trained is None or c in trained]
            d.update({"miou": mean_iou(st.cm, scored), "miou_classes": len(scored),
                      "never_trained": [info.classes[c] for c in present if c not in scored],
                      "pixel_accuracy": pixel_accuracy(st.cm),
                      "iou_per_class": {info.classes[i] if i < len(info.classes) else str(i):
                                        (None if np.isnan(v) else float(v)) for i, v in enumerate(iou)
                                        if st.cm[i].sum() or st.cm[:, i].sum()}})
        summary[s] = d
    return {"reference": reference, "models": specs, "resize": mode, "images": len(per_image), "skipped": skipped,
            "missing_labels": no_label, "labels": str(labels_dir) if labels_dir else None,
            "classes": info.classes, "palette": [list(c) for c in info.palette], "summary": summary,
            "per_image": per_image, "_worst": [w[2] for w in worst]}


def gate(report: dict, threshold: float | None, max_miou_drop: float | None) -> list[str]:
    """Reasons the run fails the gate (empty list: pass)."""
    fails, ref = [], report["summary"][report["reference"]]
    for name, s in report["summary"].items():
        if s["role"] == "reference":
            continue
        if threshold is not None and s["disagreement_mean"] > threshold:
            fails.append(f"{name}: mean disagreement {s['disagreement_mean'] * 100:.3f} % > "
                         f"{threshold * 100:.3f} %")
        if max_miou_drop is not None and "miou" in s and ref["miou"] - s["miou"] > max_miou_drop:
            fails.append(f"{name}: mIoU {s['miou']:.4f} is {ref['miou'] - s['miou']:.4f} below the reference "
                         f"({ref['miou']:.4f}), more than {max_miou_drop}")
    return fails


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m client.evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, required=True, help="folder of images (searched recursively)")
    ap.add_argument("--labels", type=Path, help="folder of label maps (Cityscapes or same-stem names)")
    ap.add_argument("--label-format", choices=FORMATS, default="auto", help="how label ids map to the model's "
                    "classes (camvid and cityscapes-ids: by class name)")
    ap.add_argument("--models", help="comma-separated models to compare with the reference (default: the served "
                                     "rows of the reference's entry, REFERENCE_*)")
    ap.add_argument("--reference", help="reference model (default: the first of --models, else "
                    f"{cli.DEFAULT_MODEL}); may be torch:WEIGHTS or onnx:PATH for a local FP32 reference")
    cli.add_server_options(ap, timeout=300.0)
    ap.add_argument("--size", help="input HxW for local models whose graph does not fix it")
    ap.add_argument("--limit", type=int, help="use only the first N images")
    ap.add_argument("--concurrency", type=int, default=4, help="images in flight at once (default 4)")
    ap.add_argument("--threshold", type=float, help="gate: fail when a model's mean disagreement exceeds "
                                                    "this share (0.005 = 0.5 %%)")
    ap.add_argument("--max-miou-drop", type=float, help="gate: fail when a model's mIoU is this much below "
                                                        "the reference (needs --labels)")
    ap.add_argument("--worst", type=int, default=4, help="images shown in the pictures (default 4)")
    ap.add_argument("--out", type=Path, default=Path("out/evaluate"), help="report folder (replaced)")
    ap.add_argument("--resize", choices=MODES, default="fit", help="fit (aspect kept; default), stretch (squash "
                    "to the input size) or slide (sliding window, needs a logits output)")
    ap.add_argument("--stride", help="slide: step HxW (default 3/4 of the model's input)")
    args = ap.parse_args(argv)
    models = [m.strip() for m in (args.models or "").split(",") if m.strip()]
    if args.models is not None and not models:
        ap.error("--models is empty")
    from segformer.config import parse_size

    try:
        size = parse_size(args.size) if args.size else None
        stride = parse_size(args.stride) if args.stride else None
    except ValueError as exc:
        ap.error(str(exc))
    return cli.run(lambda: _main(args, models, size, stride))


def _main(args, models: list[str], size, stride) -> int:
    from client.report import format_summary, write_report

    pool = None
    try:
        images = list_images(args.images)[: args.limit]
        if args.labels is not None and not args.labels.is_dir():
            raise EvaluateError(f"{args.labels}: no such labels folder")
        reference = args.reference or (models[0] if models else cli.DEFAULT_MODEL)
        wanted = models + [reference]
        served = served_models(args.url, args.protocol, args.timeout) if any(
            not is_local(m) for m in wanted) else []
        reference = resolve([reference], served, "--reference (make evaluate REFERENCE=name)")[0]
        if not models:
            if is_local(reference):
                raise EvaluateError(f"--reference {reference} is local: name the served models to compare with "
                                    f"--models (make evaluate EVAL_MODELS=a,b)")
            models = entry_rows(reference, served, _takes_images(args.url, args.protocol, args.timeout))
            print(f"models: {', '.join(models) if models else 'none besides the reference'} (the served rows of "
                  f"{reference}; --models / EVAL_MODELS= picks others)")
        models = resolve(models, served)
        pool = RunnerPool(list(dict.fromkeys([reference, *models])), args.url, args.protocol, args.timeout,
                          size)
        report = evaluate(images, pool, reference, models, args.labels, args.label_format, args.concurrency,
                          args.worst, mode=args.resize, stride=stride)
        fails = gate(report, args.threshold, args.max_miou_drop)
        report["gate"] = {"threshold": args.threshold, "max_miou_drop": args.max_miou_drop, "failures": fails,
                          "passed": not fails}
        write_report(report, args.out)
    except FileNotFoundError as exc:
        if exc.filename:
            raise EvaluateError(f"--out {args.out}: cannot write the report ({exc.strerror or exc})") from None
        raise EvaluateError(str(exc)) from None  # our own "no such folder" messages
    except OSError as exc:
        raise EvaluateError(f"--out {args.out}: cannot write the report ({exc.strerror or exc})") from None
    finally:
        if pool is not None:
            pool.close()
    print(format_summary(report))
    if report["missing_labels"]:
        print(f"warning: {len(report['missing_labels'])} image(s) had no label file and count only for "
              f"disagreement")
    print(f"report: {args.out / 'report.md'}")
    if fails:
        print("GATE FAILED:\n  " + "\n  ".join(fails))
        return 1
    if args.threshold is not None or args.max_miou_drop is not None:
        print("gate passed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
