"""Training curves of one or more runs (loss and validation mIoU against step) and their summary table.

    python -m training.curves runs/b0-train runs/b1-train runs/b0-trainval runs/b1-trainval \
        --out docs/results/training_camvid

Each run folder holds `history.json` (written by `training.train`) and, once finished, the weights' metadata
`*.json` with the test mIoU. Writes `curves.png`, `summary.md` and `summary.json` into --out.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def load_run(folder: Path) -> dict:
    hist = folder / "history.json"
    if not hist.is_file():
        raise FileNotFoundError(f"{folder}: no history.json (is it a training.train run folder?)")
    meta = next((json.loads(p.read_text()) for p in sorted(folder.glob("*.json")) if p.name != "history.json"), {})
    return {"name": folder.name, "history": json.loads(hist.read_text()), "meta": meta}


def summary_rows(runs: list[dict]) -> list[dict]:
    rows = []
    for r in runs:
        t, vals = r["meta"].get("training", {}), [h for h in r["history"] if "val_miou" in h]
        rows.append({"run": r["name"], "variant": r["meta"].get("variant"), "splits": t.get("splits"),
                     "steps": t.get("steps"), "epochs": t.get("epochs"), "wall_s": t.get("wall_s"),
                     "device": t.get("device"), "val_miou_last": vals[-1]["val_miou"] if vals else None,
                     "test_miou": r["meta"].get("test", {}).get("miou"),
                     "test_pixel_accuracy": r["meta"].get("test", {}).get("pixel_accuracy"),
                     "test_miou_native": r["meta"].get("test_native", {}).get("miou"),
                     "eval_size": r["meta"].get("test", {}).get("size")})
    return rows


def _fmt(x, spec=".4f"):
    return "-" if x is None else format(x, spec)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.curves", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="run folders of training.train")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    from client import cli

    return cli.run(lambda: _main(args), handled=(FileNotFoundError, json.JSONDecodeError))


def _main(args) -> int:
    runs = [load_run(f) for f in args.runs]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.2))
    for r in runs:
        loss = [(h["step"], h["loss"]) for h in r["history"] if "loss" in h]
        k = max(1, len(loss) // 200)  # light smoothing: mean over k logged points
        xs = [loss[i][0] for i in range(0, len(loss) - k + 1, k)]
        ys = [sum(v for _, v in loss[i:i + k]) / k for i in range(0, len(loss) - k + 1, k)]
        a1.plot(xs, ys, label=r["name"], lw=1)
        val = [(h["step"], h["val_miou"]) for h in r["history"] if "val_miou" in h]
        if val:
            a2.plot(*zip(*val), marker="o", label=r["name"])
    a1.set(xlabel="step", ylabel="training loss", yscale="log", title="loss")
    a2.set(xlabel="step", ylabel="val mIoU (1024x1024)",
           title="val mIoU (train+val runs trained on val)")
    for a in (a1, a2):
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out / "curves.png", dpi=90)
    rows = summary_rows(runs)
    (args.out / "summary.json").write_text(json.dumps({"runs": rows, "histories": {
        r["name"]: r["history"] for r in runs}}, indent=1) + "\n")
    lines = ["| run | splits | steps | epochs | training s | last val mIoU | test mIoU | test pixel acc | "
             "test mIoU at 360x480 |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['run']} | {'+'.join(r['splits'] or [])} | {r['steps']} | {r['epochs']} | "
                     f"{_fmt(r['wall_s'], '.0f')} | {_fmt(r['val_miou_last'])} | {_fmt(r['test_miou'])} | "
                     f"{_fmt(r['test_pixel_accuracy'])} | {_fmt(r['test_miou_native'])} |")
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
