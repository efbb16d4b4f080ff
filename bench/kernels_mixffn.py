"""GPU microbenchmark of the whole-Mix-FFN kernel (segformer.mixffn) at SegFormer-B1's four stage shapes.

    python -m bench.kernels_mixffn [--batch 16] [--size 1024 1024] [--tiles N] [--out results/kernels_mixffn]

One half-block per stage, ``x + Mix-FFN(LayerNorm(x))`` on FP16 tokens, three ways, CUDA-event timed (median):
- fused: segformer.mixffn, one kernel; each candidate tile is checked against the FP32 module-by-module
  reference on fresh random inputs (a tile that disagrees is reported and never chosen) and the fastest kept;
- round2: LayerNorm, fc1, the round-2 depthwise+GELU kernel, fc2 and the residual add under torch.compile
  (what the fast path ran before);
- torch: the same with cuDNN's depthwise conv and inductor's GELU.
Floors measured in the same run: bytes (read x, write y once, at the card's device-to-device copy rate) and
arithmetic (fc1 + fc2 FLOPs at the rate of a large FP16 matrix product). Writes <out>.json and <out>.md.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

from bench import BenchError
from bench.kernels_gpu import STAGES  # (stride, C) of MiT-B1; Mix-FFN's hidden width is 4C
from client.cli import run as run_cli



def candidates(h: int, w: int, c: int) -> list[dict]:
    """Tiles worth trying for one stage shape, likeliest first: strip width no wider than the image, the FP32
    output tile (strip x C padded to a power of two) at most 64 values per thread. Few rows per program and one
    pipeline stage come first: in the first sweep (H200, docs/results/bench_gpu_h200_round3) stage 4's time doubled
    from 16 to 32 rows per program (grids too small) and Triton 3.6 asked 320-344 KB of shared memory for
    128-pixel strips (the H200 has 227 KB; Triton 3.9 compiles them with 16-48 KB); fewer than 8 rows and fewer
    pipeline stages were not tried."""
    cp = 1 << (c - 1).bit_length()
    out = []
    for rb in (2, 4, 1, 8, 16, 32):
        for stages in (1, 2, 3):
            for hc in (32, 64):  # 32: fewer registers (bench.kernel_resources: no tile of 64 below 210)
                for bw in (64, 128, 32, 16):
                    for nw in (8, 4):
                        if bw <= max(16, w) and rb <= max(8, h) and bw * cp <= 64 * 32 * nw:
                            out.append({"BW": bw, "RB": rb, "HC": hc, "num_warps": nw, "num_stages": stages})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.kernels_mixffn", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16, help="images per timed call (default 16)")
    ap.add_argument("--size", type=int, nargs=2, default=(1024, 1024), metavar=("H", "W"),
                    help="input size (default 1024 1024)")
    ap.add_argument("--tiles", type=int, default=12, help="at most this many candidate tiles per stage (default 12; the whole-block kernel gets half)")
    ap.add_argument("--out", type=Path, default=Path("results/kernels_mixffn"), help="writes OUT.json and OUT.md")
    args = ap.parse_args(argv)
    return run_cli(lambda: measure(args))


def _rates(torch, cuda_ms) -> tuple[float, float]:
    """(copy GB/s counting read + write, FP16 matmul TFLOP/s) measured now."""
    big = torch.empty(512 * 2**20, dtype=torch.uint8, device="cuda")
    copy_ms = cuda_ms(lambda t: t.clone(), big, iters=20)
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
    mm_ms = cuda_ms(lambda t: t @ t, a, iters=10)
    return 2 * big.numel() / copy_ms / 1e6, 2 * 8192**3 / mm_ms / 1e9


def measure(args) -> int:
    import torch

    if not torch.cuda.is_available():
        raise BenchError("no CUDA GPU here: run it on a machine with an NVIDIA GPU")
    from bench.gpu_measure import cuda_ms
    from segformer import mixffn as M
    from segformer.fast import FusedMixFFN, _dw_fc2_op
    from segformer.model import Block

    def per_img(fn, x):
        return 1e3 * cuda_ms(fn, x, iters=20) / args.batch

    torch.manual_seed(0)
    gbs, tflops = _rates(torch, cuda_ms)
    print(f"copy {gbs:.0f} GB/s, fp16 matmul {tflops:.0f} TFLOP/s", flush=True)
    rows = []
    for stage, (stride, c) in enumerate(STAGES, 1):
        h, w = args.size[0] // stride, args.size[1] // stride
        blk = Block(c, 1, 1, 4, 0.0, 1e-6, 1e-5).cuda().eval()
        with torch.no_grad():
            for prm in blk.parameters():
                prm.add_(torch.randn_like(prm) * 0.05)
        p32 = M.prepare(*copy.deepcopy([blk.norm2, blk.mlp.fc1, blk.mlp.dwconv, blk.mlp.fc2]))
        blk = blk.half()
        p = M.prepare(blk.norm2, blk.mlp.fc1, blk.mlp.dwconv, blk.mlp.fc2)
        x = torch.randn(args.batch, h * w, c, device="cuda", dtype=torch.float16)
        round2 = FusedMixFFN(blk.mlp)
        row = {"stage": stage, "h": h, "w": w, "channels": c, "hidden": 4 * c}
        row["round2_us_per_img"] = per_img(torch.compile(lambda t: t + round2(blk.norm2(t), h, w)), x)
        mid = blk.mlp.fc1(blk.norm2(x))
        kernels = {"fused": lambda t, tile: M.mixffn(t, h, w, p, tile),  # the whole half-block
                   "dwfc2": lambda t, tile: M.dw_fc2(mid, t, h, w, p, tile)}  # after fc1: the kernel alone
        for kind, fn in kernels.items():
            tiles = []
            for tile in candidates(h, w, c)[: args.tiles if kind == "dwfc2" else max(1, args.tiles // 2)]:
                xc = torch.randn(2, h * w, c, device="cuda", dtype=torch.float16)
                ref = M.reference(xc.float(), h, w, p32)
                try:
                    got = (M.mixffn(xc, h, w, p, tile) if kind == "fused" else M.dw_fc2_block(xc, h, w, p, tile)).float()
                    rel = float((got - ref).norm() / ref.norm())
                    us = per_img(lambda t, tile=tile: fn(t, tile), x)
                except Exception as exc:  # noqa: BLE001 - a tile the compiler refuses is reported, not fatal
                    tiles.append({**tile, "error": str(exc).splitlines()[0][:200]})
                    continue
                tiles.append({**tile, "us_per_img": us, "rel_err": rel, "ok": rel < 2e-3})
                print(f"stage {stage} {kind} {tile}: {us:.1f} us/img, rel err {rel:.1e}", flush=True)
            good = [t for t in tiles if t.get("ok")]
            best = min(good, key=lambda t: t["us_per_img"]) if good else None
            row[f"{kind}_tiles"] = tiles
            row[f"{kind}_best_tile"] = ({k: best[k] for k in ("BW", "RB", "HC", "num_warps", "num_stages") if k in best}
                                        if best else None)
            row[f"{kind}_kernel_us_per_img"] = best["us_per_img"] if best else None
            if best:
                M.TILES[(kind, h, w, c)] = row[f"{kind}_best_tile"]
        if row["dwfc2_best_tile"]:  # the half-block as the model runs it: LayerNorm + fc1 compiled, then the kernel
            row["dwfc2_us_per_img"] = per_img(torch.compile(
                lambda t: _dw_fc2_op(blk.mlp.fc1(blk.norm2(t)), t, h, w, p["dww"], p["dwb"], p["w2t"], p["b2"])), x)
        row["fused_us_per_img"] = row["fused_kernel_us_per_img"]
        tokens = h * w
        row["bytes_floor_us_per_img"] = 2 * tokens * c * 2 / gbs / 1e3
        row["flop_floor_us_per_img"] = 2 * 2 * tokens * c * 4 * c / tflops / 1e6
        rows.append(row)
        print(f"stage {stage} {h}x{w}x{c}: round2 {row['round2_us_per_img']:.1f}, fused {_f(row['fused_us_per_img'])},"
              f" dwfc2 {_f(row.get('dwfc2_us_per_img'))} (kernel alone {_f(row['dwfc2_kernel_us_per_img'])}) us/img;"
              f" floors bytes {row['bytes_floor_us_per_img']:.1f}, flops {row['flop_floor_us_per_img']:.1f}", flush=True)
    result = {"device": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d %H:%M"),
              "torch": torch.__version__, "batch": args.batch, "size": list(args.size), "copy_GBps": gbs,
              "fp16_matmul_TFLOPs": tflops, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps(result, indent=1) + "\n")
    Path(f"{args.out}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


def _f(v) -> str:
    return "—" if v is None else f"{v:.1f}"


def markdown(r: dict) -> str:
    md = [f"# Mix-FFN half-block (LayerNorm -> fc1 -> dw3x3+GELU -> fc2 -> + x) — {r['device']} ({r['date']}), "
          f"batch {r['batch']}, {r['size'][0]}x{r['size'][1]} input", "",
          f"Measured ceilings: copy {r['copy_GBps']:.0f} GB/s (read + write), FP16 matmul "
          f"{r['fp16_matmul_TFLOPs']:.0f} TFLOP/s.", "",
          "| stage | tokens x C (hidden) | round 2: LN, fc1, dw+GELU kernel, fc2, + x (compiled) | fused: one kernel"
          " | dwfc2: LN + fc1 compiled, then dw+GELU+fc2+x kernel | dwfc2 kernel alone | bytes floor | FLOP floor |",
          "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for x in r["rows"]:
        md.append(f"| {x['stage']} | {x['h']}x{x['w']} x {x['channels']} ({x['hidden']}) | {x['round2_us_per_img']:.1f} | "
                  f"{_f(x['fused_us_per_img'])} | {_f(x.get('dwfc2_us_per_img'))} | {_f(x['dwfc2_kernel_us_per_img'])} | "
                  f"{x['bytes_floor_us_per_img']:.1f} | {x['flop_floor_us_per_img']:.1f} |")
    md += ["", "us per image. Best tiles (relative L2 error vs FP32 of every tile is in the JSON):"]
    md += [f"- stage {x['stage']}: fused `{x['fused_best_tile']}`, dwfc2 `{x['dwfc2_best_tile']}`" for x in r["rows"]]
    return "\n".join(md) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
