"""Train SegFormer on a CamVid- or Cityscapes-layout folder and write shippable weights.

    python -m training.train --data ../shared/datasets/camvid --variant b1 --steps 2000 --out runs/b1

AdamW + linear warm-up + poly decay, random scale/aspect/crop/flip/colour jitter, ignore index 255,
bf16 autocast on CUDA, checkpoint + resume, mIoU on the validation split every --eval-every steps, and at the
end test-split mIoU per class measured with the FP16-rounded weights that are shipped.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from training.data import Augment, TrainSet, find_samples, load_pair
from training.gpu_data import GpuBatches
from client.metrics import confusion_matrix, iou_per_class, mean_iou, pixel_accuracy
from client.policy import InputPolicy
from segformer.config import CITYSCAPES, CAMVID_TO_CITYSCAPES, parse_size
from segformer.model import SegmentationPipeline, create_model
from segformer.errors import ProjectError
from segformer.weights import save_weights


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * max(0.0, 1 - (step - warmup) / max(1, total - warmup)) ** 1.0


@torch.no_grad()
def evaluate(model, root: Path, split: str, size: tuple[int, int], device: str, limit: int | None = None,
             num_classes: int = 19, progress: bool = True, amp: bool = True) -> dict:
    """mIoU on a split through the input policy clients send with (client.policy, `fit` into `size`: letterboxed),
    labels back to the image size."""
    samples, lut = find_samples(root, split)
    samples = samples[:limit] if limit else samples
    pipe = SegmentationPipeline(model, CITYSCAPES.mean, CITYSCAPES.std).to(device).eval()
    cm = np.zeros((num_classes, num_classes), np.int64)
    policy = InputPolicy(tuple(size))
    for s in tqdm(samples, desc=f"eval {split} {size[0]}x{size[1]}", disable=not progress, leave=False):
        image, label = load_pair(s, lut)
        x, place = policy.prepare(np.array(image))
        x = torch.from_numpy(x).unsqueeze(0).to(device)
        with torch.autocast("cuda", torch.bfloat16, enabled=amp and device.startswith("cuda")):
            pred = pipe(x)[0].cpu().numpy()
        cm += confusion_matrix(policy.restore(pred, place, label.shape), label, num_classes)
    present = np.flatnonzero(cm.sum(1) > 0).tolist()
    iou = iou_per_class(cm)
    return {"split": split, "size": list(size), "images": len(samples), "miou": mean_iou(cm, present),
            "miou_over": f"the {len(present)} classes present in the {split} labels",
            "pixel_accuracy": pixel_accuracy(cm),
            "iou": {CITYSCAPES.classes[c]: float(iou[c]) for c in present}}


def trained_classes(root: Path, splits: list[str]) -> list[str]:
    """Names of the classes the training labels can contain: CamVid maps to 11 of the 19 Cityscapes classes."""
    ids: set[int] = set()
    for split in splits:
        _, lut = find_samples(root, split)
        ids |= set(range(CITYSCAPES.num_classes)) if lut is None else {int(v) for v in lut if v < 255}
    return [CITYSCAPES.classes[i] for i in sorted(ids)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="dataset root (CamVid or Cityscapes layout)")
    ap.add_argument("--variant", default="b1", help="SegFormer variant (b0..b5, tiny)")
    ap.add_argument("--out", type=Path, required=True, help="run folder: checkpoints, log, weights")
    ap.add_argument("--steps", type=int, default=None,
                    help="total optimizer steps (default 2000; on --resume the run's own total)")
    ap.add_argument("--splits", default="train", help="comma-separated splits to train on, e.g. train,val")
    ap.add_argument("--stop-after", type=float, default=0,
                    help="seconds; save a checkpoint and stop this process (continue with --resume)")
    ap.add_argument("--loader", choices=("auto", "gpu", "workers"), default="auto",
                    help="gpu: dataset and augmentation on the training device (auto: on CUDA when images share a size)")
    ap.add_argument("--time-budget", type=float, default=0, help="seconds; shorten the schedule to fit (0 = off)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--crop", type=parse_size, default=(512, 512), help="HxW training crop")
    ap.add_argument("--scale", type=float, nargs=2, default=(1.0, 3.0), help="random scale range")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--eval-size", type=parse_size, default=(1024, 1024), help="HxW used for val/test mIoU")
    ap.add_argument("--workers", type=int, default=6)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    ap.add_argument("--name", default=None, help="write shippable weights OUT/NAME.safetensors at the end")
    ap.add_argument("--test-split", default="test")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from client import cli

    return cli.run(lambda: train(args))


class TrainingError(ProjectError):
    """A run that cannot start or continue as asked; the message names the fix."""


def train(args) -> int:
    torch.manual_seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    args.out.mkdir(parents=True, exist_ok=True)
    dev = args.device
    model = create_model(args.variant, CITYSCAPES.num_classes).to(dev)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)
    step, total, history, trained_s = 0, args.steps or 2000, [], 0.0
    cap = total  # the time budget never fits more steps than this
    ckpt = args.out / "last.pt"
    if args.resume:
        if not ckpt.is_file():
            raise TrainingError(f"--resume: no checkpoint at {ckpt}; run without --resume to start a new run")
        state = torch.load(ckpt, map_location=dev, weights_only=True)
        model.load_state_dict(state["model"], strict=True)
        opt.load_state_dict(state["optimizer"])
        step, trained_s = int(state["step"]), float(state["trained_s"])
        # --steps is the new total (a finished run continues to it); without it the run's own total.
        total = max(args.steps, step) if args.steps else int(state.get("total", step))
        cap = max(args.steps, step) if args.steps else int(state.get("cap", total))
        history = json.loads((args.out / "history.json").read_text()) if (args.out / "history.json").exists() else []
        print(f"resumed at step {step}, training to {total}")

    splits = [s for s in args.splits.split(",") if s]
    augment = Augment(crop=args.crop, scale=tuple(args.scale))
    batches, data = None, None
    if args.loader == "gpu" or (args.loader == "auto" and dev.startswith("cuda")):
        try:
            batches = GpuBatches(args.data, splits, augment, args.batch, dev, seed=args.seed + step)
        except ValueError as exc:
            if args.loader == "gpu":
                raise TrainingError(f"--loader gpu: {exc}") from None
    if batches is None:
        data = torch.utils.data.ConcatDataset([TrainSet(args.data, s, augment, seed=args.seed) for s in splits])
        loader = torch.utils.data.DataLoader(data, batch_size=args.batch, shuffle=True, drop_last=True,
                                             num_workers=args.workers, persistent_workers=args.workers > 0,
                                             pin_memory=dev.startswith("cuda"))

    def batch_stream():
        while True:
            if batches is not None:
                yield batches.next()
            else:
                yield from loader
    n_train = len(batches) if batches is not None else len(data)
    mean = torch.tensor(CITYSCAPES.mean, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(CITYSCAPES.std, device=dev).view(1, 3, 1, 1)

    def save_ckpt():
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step, "total": total,
                    "cap": cap,
                    "trained_s": trained_s, "variant": args.variant}, tmp)
        tmp.replace(ckpt)
        (args.out / "history.json").write_text(json.dumps(history, indent=1))

    bar = tqdm(total=total, initial=step, desc=f"train {args.variant}", dynamic_ncols=True)
    t_start = time.time() - trained_s
    t_process = time.time()
    first_step, mark = step, (step, trained_s)
    model.train()
    stream = batch_stream()
    while step < total:
        if args.stop_after and time.time() - t_process > args.stop_after:
            bar.close()
            trained_s = time.time() - t_start
            save_ckpt()
            print(f"stopped after {args.stop_after:.0f}s at step {step} of {total}; continue with --resume")
            return 0
        images, labels = next(stream)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, total, args.lr, args.warmup)
        x = (images.to(dev, non_blocking=True).permute(0, 3, 1, 2).float() - mean) / std
        y = labels.to(dev, non_blocking=True).long()
        with torch.autocast("cuda", torch.bfloat16, enabled=dev.startswith("cuda")):
            logits = model(x)
        logits = F.interpolate(logits.float(), size=y.shape[-2:], mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, y, ignore_index=255)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        bar.update(1)
        loss_value = loss.item()
        bar.set_postfix(loss=f"{loss_value:.3f}")
        if step % 10 == 0 or step <= 2:
            history.append({"step": step, "loss": loss_value})
        trained_s = time.time() - t_start
        if step == first_step + 20:
            mark = (step, trained_s)
        if args.time_budget and step - mark[0] >= 50 and (step == first_step + 70 or (
                step % 250 == 0 and trained_s < 0.85 * args.time_budget)):
            # Fit the schedule to the budget from the rate since the last fit (evaluations included), at most
            # up to the --steps cap; refitted while under 85 % of the budget, then the decay runs its course.
            rate = (trained_s - mark[1]) / (step - mark[0])
            fitted = min(cap, max(step + 1, step + int((args.time_budget - trained_s) / rate)))
            if fitted != total:
                total = fitted
                bar.total = total
                tqdm.write(f"time budget {args.time_budget:.0f}s: schedule set to {total} steps")
            mark = (step, trained_s)
        if step % args.eval_every == 0 or step == total:
            model.eval()
            res = evaluate(model, args.data, "val", args.eval_size, dev, progress=False)
            model.train()
            history.append({"step": step, "val_miou": res["miou"], "val_pixel_accuracy": res["pixel_accuracy"]})
            tqdm.write(f"step {step}: val mIoU {res['miou']:.4f} pixel acc {res['pixel_accuracy']:.4f}")
            save_ckpt()
    bar.close()
    trained_s = time.time() - t_start
    save_ckpt()
    if args.name:
        # Measure what is shipped: round to FP16 first, then evaluate in FP32.
        model.eval()
        rounded = {k: v.half().float() if v.is_floating_point() else v for k, v in model.state_dict().items()}
        model.load_state_dict(rounded)
        model.float()
        test = evaluate(model, args.data, args.test_split, args.eval_size, dev, amp=False)
        native = evaluate(model, args.data, args.test_split, (360, 480), dev, amp=False)
        check = evaluate(model, args.data, args.test_split, (360, 480), dev, limit=6, progress=False, amp=False)
        samples, _ = find_samples(args.data, args.test_split)
        meta = {
            "name": args.name, "dataset": "cityscapes", "classes": list(CITYSCAPES.classes),
            "palette": [list(c) for c in CITYSCAPES.palette], "mean": list(CITYSCAPES.mean),
            "std": list(CITYSCAPES.std), "input_size": list(args.eval_size),
            "trained_classes": trained_classes(args.data, splits),
            "training": {"data": f"CamVid (SegNet split) {'+'.join(splits)}, {n_train} images, 11 classes mapped "
                                 "to Cityscapes train ids" if (args.data / "train" / "images").is_dir()
                                 else str(args.data.name),
                         "from_scratch": True, "steps": step, "batch": args.batch,
                         "splits": splits, "epochs": round(step * args.batch / n_train, 1), "crop": list(args.crop),
                         "scale": list(args.scale), "lr": args.lr, "wall_s": round(trained_s, 1),
                         "device": torch.cuda.get_device_name() if dev.startswith("cuda") else "cpu"},
            "label_map": {"camvid_to_cityscapes": {str(k): v for k, v in CAMVID_TO_CITYSCAPES.items()}},
            "test": test, "test_native": native,
            "check": {**check, "image_names": [s.image.name for s in samples[:6]]},
            "history": history,
        }
        w = save_weights(model, args.out, args.name, meta)
        print(f"weights: {w.tensors} ({w.tensors.stat().st_size / 1e6:.1f} MB)")
        print(f"test mIoU {test['miou']:.4f} at {args.eval_size}, {native['miou']:.4f} at 360x480; "
              f"training {trained_s:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
