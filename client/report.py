"""The evaluation report: terminal table, report.json, report.md and the pictures people look at first.

Pictures: `disagreement.png` (per-image disagreement of every model vs the reference), `worst.png` (the images
where the models differ most: image | reference | each model, as overlays), `heatmaps/NAME.png` (where each model
differs from the reference, in red) and, with labels, `iou.png` (per-class IoU of every model).
The folder is written beside its destination and renamed into place, so a failed run leaves the old one.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from client.visualize import overlay


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _short(name: str, n: int = 30) -> str:
    return name if len(name) <= n else "..." + name[-(n - 3):]


def _pct(x) -> str:
    return f"{x * 100:.3f} %"


def format_summary(report: dict) -> str:
    labels = any("miou" in s for s in report["summary"].values())
    head = f"{'model':34s} {'disagree mean':>14s} {'max':>10s} {'good/marg/bad':>14s} {'ms/img':>8s}"
    head += f" {'mIoU':>7s} {'pix acc':>8s}" if labels else ""
    lines = [f"{report['images']} image(s); reference: {report['reference']}", head]
    for name, s in report["summary"].items():
        v = s["verdicts"]
        line = (f"{_short(name, 34):34s} {_pct(s['disagreement_mean']):>14s} {_pct(s['disagreement_max']):>10s} "
                f"{v['good']:>4d}/{v['marginal']}/{v['bad']:<5d}  {s['ms_per_image']:8.1f}")
        if labels:
            line += f" {s.get('miou', float('nan')):7.4f} {s.get('pixel_accuracy', float('nan')):8.4f}"
        lines.append(line)
    ref = report["summary"].get(report["reference"], {})
    if ref.get("never_trained"):
        lines.append(f"mIoU over {ref['miou_classes']} trained classes; never trained, left out: "
                     + ", ".join(ref["never_trained"]))
    if report["skipped"]:
        lines.append(f"skipped {len(report['skipped'])} unreadable image(s)")
    return "\n".join(lines)


def _markdown(report: dict, pictures: list[str]) -> str:
    out = ["# Evaluation report", "", f"Reference: `{report['reference']}`; {report['images']} image(s)"
           + (f"; labels from `{report['labels']}`" if report["labels"] else "; no labels (disagreement only)"),
           ""]
    labels = any("miou" in s for s in report["summary"].values())
    out.append("| model | mean disagreement | max | good / marginal / bad | ms/img |"
               + (" mIoU | pixel acc |" if labels else ""))
    out.append("|---|---:|---:|---:|---:|" + ("---:|---:|" if labels else ""))
    for name, s in report["summary"].items():
        v = s["verdicts"]
        row = (f"| `{name}` | {_pct(s['disagreement_mean'])} | {_pct(s['disagreement_max'])} | "
               f"{v['good']} / {v['marginal']} / {v['bad']} | {s['ms_per_image']:.1f} |")
        if labels:
            row += f" {s['miou']:.4f} | {s['pixel_accuracy']:.4f} |"
        out.append(row)
    out += ["", "Verdict per image: good <= 0.5 % of pixels differ from the reference, marginal <= 2 %, bad above.",
            ""]
    ref = report["summary"].get(report["reference"], {})
    if "miou_classes" in ref:
        note = f"mIoU over the {ref['miou_classes']} classes present in the labels that the weights were trained on"
        if ref.get("never_trained"):
            note += ("; present but never trained, so left out: " + ", ".join(ref["never_trained"]))
        out += [note + ".", ""]
    g = report.get("gate")
    if g and (g["threshold"] is not None or g["max_miou_drop"] is not None):
        out.append("**Gate: " + ("passed**" if g["passed"] else "FAILED**: " + "; ".join(g["failures"])))
        out.append("")
    for p in pictures:
        out += [f"![{p}]({p})", ""]
    if report["skipped"]:
        out += ["## Skipped images", ""] + [f"- {s['reason']}" for s in report["skipped"]] + [""]
    if report["missing_labels"]:
        out += [f"{len(report['missing_labels'])} image(s) had no label file.", ""]
    return "\n".join(out)


def _disagreement_plot(report: dict, path: Path) -> None:
    plt = _plt()
    names = [n for n in report["models"] if n != report["reference"]]
    fig, ax = plt.subplots(figsize=(9, 3.5))
    x = np.arange(report["images"])
    for n in names:
        ax.plot(x, [100 * r["models"][n]["disagreement"] for r in report["per_image"]], marker=".", label=n)
    ax.axhline(0.5, color="green", ls="--", lw=1, label="good (0.5 %)")
    ax.axhline(2.0, color="red", ls=":", lw=1, label="bad (2 %)")
    ax.set_xlabel("image")
    ax.set_ylabel("% pixels differing from reference")
    ax.set_title(f"Disagreement with {report['reference']}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _worst_grid(report: dict, path: Path) -> None:
    plt = _plt()
    worst, specs, palette = report["_worst"], report["models"], [tuple(c) for c in report["palette"]]
    cols = 1 + len(specs)
    fig, axes = plt.subplots(len(worst), cols, figsize=(3.2 * cols, 2.4 * len(worst)), squeeze=False)
    for r, w in enumerate(worst):
        axes[r][0].imshow(w["thumb"])
        axes[r][0].set_title(Path(w["image"]).name, fontsize=7)
        for c, s in enumerate(specs, 1):
            axes[r][c].imshow(overlay(w["thumb"], w["preds"][s], palette))
            share = next(i["models"][s]["disagreement"] for i in report["per_image"] if i["image"] == str(w["image"]))
            axes[r][c].set_title(_short(s) + ("" if s == report["reference"] else f"\n{_pct(share)} differ"),
                                 fontsize=7)
    for a in axes.flat:
        a.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _heatmap(report: dict, w: dict, path: Path) -> None:
    plt = _plt()
    ref = w["preds"][report["reference"]]
    names = [n for n in report["models"] if n != report["reference"]] or [report["reference"]]
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.2), squeeze=False)
    grey = w["thumb"].mean(-1, keepdims=True).repeat(3, -1) * 0.45
    for a, n in zip(axes[0], names):
        diff = w["preds"][n] != ref
        pic = grey.copy()
        pic[diff] = (255, 30, 30)
        a.imshow(pic.astype(np.uint8))
        a.set_title(f"{_short(n)}: {diff.mean() * 100:.2f} % differ (red)", fontsize=8)
        a.axis("off")
    fig.suptitle(Path(w["image"]).name, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _iou_plot(report: dict, path: Path) -> None:
    plt = _plt()
    classes = list(next(iter(report["summary"].values()))["iou_per_class"])
    specs = report["models"]
    fig, ax = plt.subplots(figsize=(max(7, 0.6 * len(classes) * max(1, len(specs) / 2)), 4))
    width = 0.8 / len(specs)
    x = np.arange(len(classes))
    for i, s in enumerate(specs):
        ious = report["summary"][s]["iou_per_class"]
        vals = [ious.get(c) if ious.get(c) is not None else 0.0 for c in classes]
        ax.bar(x + i * width - 0.4 + width / 2, vals, width,
               label=f"{_short(s)} (mIoU {report['summary'][s]['miou']:.3f})")
    ax.set_xticks(x, classes, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("IoU")
    ax.set_ylim(0, 1)
    ax.set_title("Per-class IoU against the ground truth")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(report: dict, out: Path) -> None:
    """Write report.json, report.md and pictures into `out`, atomically (staging folder, then rename)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / "report.json").is_file():
        raise FileNotFoundError(f"{out} exists and is not an evaluation report folder; choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        pictures = ["disagreement.png", "worst.png"]
        _disagreement_plot(report, stage / "disagreement.png")
        _worst_grid(report, stage / "worst.png")
        (stage / "heatmaps").mkdir()
        for w in report["_worst"]:
            name = f"heatmaps/{Path(w['image']).stem}.png"
            _heatmap(report, w, stage / name)
            pictures.append(name)
        if any("miou" in s for s in report["summary"].values()):
            _iou_plot(report, stage / "iou.png")
            pictures.insert(1, "iou.png")
        public = {k: v for k, v in report.items() if not k.startswith("_")}
        (stage / "report.json").write_text(json.dumps(public, indent=1) + "\n")
        (stage / "report.md").write_text(_markdown(report, pictures) + "\n")
        stage.chmod(0o755)
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old.{os.getpid()}"
            os.replace(out, old)
        os.replace(stage, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
