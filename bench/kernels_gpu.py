"""GPU microbenchmark of the fused depthwise 3x3 + bias + GELU kernel at SegFormer-B1's four Mix-FFN shapes.

    python -m bench.kernels_gpu [--batch 16] [--size 1024] [--out results/kernels_gpu]

Per stage (hidden width 4C at 1/4 .. 1/32 of the input): the kernel (autotuned; the configuration it chose is
reported) against PyTorch's depthwise conv + GELU on the same channels-last FP16 tensor, CUDA-event timed, and the
bandwidth floor: the bytes one read and one write of the hidden activation take at the card's measured copy rate
(a device-to-device copy of the same tensor, timed in the same run). Writes <out>.json and <out>.md.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench import BenchError
from client.cli import run as run_cli

STAGES = ((4, 64), (8, 128), (16, 320), (32, 512))  # (stride, C) of MiT-B1; the Mix-FFN hidden width is 4C


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.kernels_gpu", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16, help="images per timed call (default 16)")
    ap.add_argument("--size", type=int, default=1024, help="input height = width (default 1024)")
    ap.add_argument("--out", type=Path, default=Path("results/kernels_gpu"), help="writes OUT.json and OUT.md")
    args = ap.parse_args(argv)
    return run_cli(lambda: measure(args))


def measure(args) -> int:
    import torch

    if not torch.cuda.is_available():
        raise BenchError("no CUDA GPU here: run it on a machine with an NVIDIA GPU")
    from bench.gpu_measure import cuda_ms
    from segformer import kernels

    rows = []
    for stride, c in STAGES:
        h = w = args.size // stride
        hid = 4 * c
        x = torch.randn(args.batch, h * w, hid, device="cuda", dtype=torch.float16)
        wt = torch.randn(hid, 1, 3, 3, device="cuda", dtype=torch.float16) * 0.2
        b = torch.randn(hid, device="cuda", dtype=torch.float16) * 0.1
        ours = cuda_ms(lambda t: kernels.dwconv3x3_gelu(t, h, w, wt, b), x, iters=20)
        torch_ms = cuda_ms(lambda t: kernels.dwconv3x3_gelu_reference(t, h, w, wt, b), x, iters=20)
        copy_ms = cuda_ms(lambda t: t.clone(), x, iters=20)  # one read + one write of the tensor
        err = (kernels.dwconv3x3_gelu(x, h, w, wt, b).float()
               - kernels.dwconv3x3_gelu_reference(x.float(), h, w, wt.float(), b.float())).abs().max().item()
        best = getattr(kernels._dwconv3x3_gelu_tuned, "best_config", None)
        rows.append({"stage": STAGES.index((stride, c)) + 1, "h": h, "w": w, "channels": hid,
                     "ours_us_per_img": 1e3 * ours / args.batch, "torch_us_per_img": 1e3 * torch_ms / args.batch,
                     "copy_floor_us_per_img": 1e3 * copy_ms / args.batch, "max_abs_err_vs_fp32": err,
                     "config": str(best.all_kwargs()) if best is not None else None})
        print(f"stage {rows[-1]['stage']} {h}x{w}x{hid}: ours {rows[-1]['ours_us_per_img']:.1f} us/img, "
              f"torch {rows[-1]['torch_us_per_img']:.1f}, copy floor {rows[-1]['copy_floor_us_per_img']:.1f}, "
              f"max err {err:.2e}, {rows[-1]['config']}", flush=True)
    tot = {k: sum(r[k] for r in rows) for k in ("ours_us_per_img", "torch_us_per_img", "copy_floor_us_per_img")}
    result = {"device": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d %H:%M"), "batch": args.batch,
              "size": args.size, "rows": rows, "per_block_total": tot}
    md = [f"# Depthwise 3x3 + GELU — {result['device']} ({result['date']}), batch {args.batch}, {args.size}² input",
          "", "| stage | hidden tensor | ours us/img | PyTorch eager (transposes, depthwise conv, GELU) us/img | copy floor "
          "us/img | max abs err |",
          "|---:|---|---:|---:|---:|---:|"]
    md += [f"| {r['stage']} | {r['h']}x{r['w']}x{r['channels']} | {r['ours_us_per_img']:.1f} | "
           f"{r['torch_us_per_img']:.1f} | {r['copy_floor_us_per_img']:.1f} | {r['max_abs_err_vs_fp32']:.1e} |"
           for r in rows]
    md += ["", f"One block of each stage: ours {tot['ours_us_per_img']:.1f}, PyTorch {tot['torch_us_per_img']:.1f}, "
               f"copy floor {tot['copy_floor_us_per_img']:.1f} us/img (B1 has two blocks per stage).", ""]
    md += [f"Stage {r['stage']} configuration: `{r['config']}`" for r in rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps(result, indent=1) + "\n")
    Path(f"{args.out}.md").write_text("\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
