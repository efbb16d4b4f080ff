"""LayerNorm kernel bandwidth on the GPU at SegFormer's shapes, against PyTorch's LayerNorm.

    python -m plugins.bench [--out results/layernorm]      # needs a CUDA GPU and `make plugins`

For each channel count of B0/B1 (32..512) at the token count a 1024x1024 batch of 16 has at that stage, both
precisions: milliseconds (CUDA events, median of repeats) and effective bandwidth = (bytes read + written) / time,
next to torch.nn.functional.layer_norm on the same tensors; plus the max abs error against PyTorch in FP32.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

# (channels, tokens per 1024x1024 image) per SegFormer stage; B0 widths 32/64/160/256, B1 64/128/320/512
SHAPES = [(32, 65536), (64, 65536), (128, 16384), (160, 4096), (256, 1024), (320, 4096), (512, 1024)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m plugins.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--out", type=Path, default=Path("results/layernorm"))
    args = ap.parse_args(argv)
    from client import cli

    return cli.run(lambda: _main(args))


def _main(args) -> int:
    import torch
    import torch.nn.functional as F

    from bench.gpu import cuda_ms
    from plugins.layernorm import KernelLibrary, PluginBuildError

    if not torch.cuda.is_available():
        raise PluginBuildError("no CUDA GPU here: the kernel benchmark needs one")
    ln = KernelLibrary()  # PluginBuildError names what is missing
    rows = []
    for c, tokens in SHAPES:
        for dtype in (torch.float32, torch.float16):
            n = args.batch * tokens
            x = torch.randn(n, c, device="cuda", dtype=dtype)
            g = torch.randn(c, device="cuda", dtype=dtype)
            b = torch.randn(c, device="cuda", dtype=dtype)
            y = torch.empty_like(x)
            ours = cuda_ms(lambda _: ln(x, g, b, 1e-6, out=y), None, iters=20, repeats=5)
            ref = cuda_ms(lambda _: F.layer_norm(x, (c,), g, b, 1e-6), None, iters=20, repeats=5)
            exact = F.layer_norm(x.float(), (c,), g.float(), b.float(), 1e-6)
            err = (ln(x, g, b, 1e-6).float() - exact).abs().max().item()
            moved = 2 * x.numel() * x.element_size()
            rows.append({"channels": c, "rows": n, "dtype": str(dtype).split(".")[-1], "ours_ms": ours,
                         "torch_ms": ref, "ours_gbs": moved / ours / 1e6, "torch_gbs": moved / ref / 1e6,
                         "max_abs_err_vs_fp32": err})
            print(f"C={c:4d} rows={n:8d} {rows[-1]['dtype']}: ours {ours:.3f} ms {rows[-1]['ours_gbs']:.0f} GB/s | "
                  f"torch {ref:.3f} ms {rows[-1]['torch_gbs']:.0f} GB/s | max err {err:.2e}", flush=True)
    md = ["| C | rows | dtype | ours ms | ours GB/s | PyTorch ms | PyTorch GB/s | max abs err vs FP32 |",
          "|---:|---:|---|---:|---:|---:|---:|---:|"]
    md += [f"| {r['channels']} | {r['rows']} | {r['dtype']} | {r['ours_ms']:.3f} | {r['ours_gbs']:.0f} | "
           f"{r['torch_ms']:.3f} | {r['torch_gbs']:.0f} | {r['max_abs_err_vs_fp32']:.1e} |" for r in rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=1))
    Path(f"{args.out}.md").write_text(f"LayerNorm on {torch.cuda.get_device_name()}\n\n" + "\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
