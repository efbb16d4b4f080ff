"""Registers, spills and shared memory of the Mix-FFN kernels' tiles, compiled for Hopper (sm_90a) without a GPU.

    python -m bench.kernel_resources [--kinds dwfc2 fused] [--size 1024 1024] [--out results/kernel_resources]

Triton compiles each tile of `bench.kernels_mixffn.candidates` for a GPUTarget("cuda", 90) and the PTX goes through
the ptxas Triton ships (`ptxas -v`): the compiler's own resource report, read before any device time is spent
(a tile at 255 registers with spill stores runs one program per multiprocessor and moves its spills through
local memory). The Triton here may differ from the device's: its report is a lead, the device's timing the test.
Writes <out>.json and <out>.md.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import tempfile
import time
from pathlib import Path

from bench import BenchError
from client.cli import run as run_cli

def ptxas() -> Path:
    """The newest ptxas inside the installed triton package (it must read the PTX version Triton writes)."""
    try:
        import triton
    except ImportError:
        raise BenchError("triton is not installed here (pip install triton)") from None
    d = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    found = sorted(d.glob("ptxas*"), key=lambda p: ("blackwell" not in p.name, p.name))
    if not found:
        raise BenchError(f"no ptxas in {d}: this triton package carries no NVIDIA toolchain")
    return found[0]


def compile_report(kind: str, c: int, hidden: int, tile: dict, tool: Path) -> dict:
    """{'registers', 'spill_stores', 'spill_loads', 'shared'} of one kernel tile for sm_90a."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from segformer import mixffn as M

    consts = {"C": c, "CP": 1 << (c - 1).bit_length(), "HID": hidden, "HC": tile["HC"], "BW": tile["BW"],
              "RB": tile["RB"]}
    fn = M._dw_fc2_kernel if kind == "dwfc2" else M._mixffn_kernel
    scalars = {"H": "i32", "W": "i32", "eps": "fp32"}  # every other argument is an FP16 tensor
    sig = {n: "constexpr" if n in consts else scalars.get(n, "*fp16") for n in fn.arg_names}
    opts = {"num_warps": tile["num_warps"], **({"num_stages": tile["num_stages"]} if tile.get("num_stages") else {})}
    k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                       options=opts)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(k.asm["ptx"])
        out = subprocess.run([str(tool), "-v", "-arch=sm_90a", str(src), "-o", str(Path(tmp) / "k.cubin")],
                             capture_output=True, text=True)
    if out.returncode:
        raise BenchError(f"ptxas failed on the {kind} tile {tile}: {(out.stderr.strip().splitlines() or ['?'])[-1]}")

    def num(pattern):
        m = re.search(pattern, out.stderr)
        return int(m.group(1)) if m else 0

    return {"registers": num(r"Used (\d+) registers"), "spill_stores": num(r"(\d+) bytes spill stores"),
            "spill_loads": num(r"(\d+) bytes spill loads"), "shared": int(k.metadata.shared)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.kernel_resources", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kinds", nargs="+", default=["dwfc2", "fused"], choices=("dwfc2", "fused"),
                    help="kernels to compile (default both)")
    ap.add_argument("--size", type=int, nargs=2, default=(1024, 1024), metavar=("H", "W"), help="input size")
    ap.add_argument("--tiles", type=int, default=8, help="at most this many candidate tiles per stage (default 8)")
    ap.add_argument("--tiles-from", type=Path, metavar="JSON",
                    help="compile the best tiles a bench.kernels_mixffn results file recorded, not the candidates")
    ap.add_argument("--out", type=Path, default=Path("results/kernel_resources"), help="writes OUT.json and OUT.md")
    args = ap.parse_args(argv)
    return run_cli(lambda: measure(args))


def measure(args) -> int:
    from bench.kernels_gpu import STAGES
    from bench.kernels_mixffn import candidates

    tool = ptxas()
    rows = []
    measured = {}
    if args.tiles_from:
        try:
            for row in json.loads(args.tiles_from.read_text())["rows"]:
                for kind in args.kinds:
                    if row.get(f"{kind}_best_tile"):
                        measured[(row["stage"], kind)] = [row[f"{kind}_best_tile"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BenchError(f"--tiles-from {args.tiles_from}: not a bench.kernels_mixffn results file ({exc})") from None
    for stage, (stride, c) in enumerate(STAGES, 1):
        h, w = args.size[0] // stride, args.size[1] // stride
        for kind in args.kinds:
            tiles = measured.get((stage, kind), []) if args.tiles_from else candidates(h, w, c)[: args.tiles]
            for tile in tiles:
                r = {"stage": stage, "kind": kind, "channels": c, **tile,
                     **compile_report(kind, c, 4 * c, tile, tool)}
                rows.append(r)
                print(f"stage {stage} {kind} {tile}: {r['registers']} registers, {r['spill_stores']} B spill "
                      f"stores, {r['shared']} B shared", flush=True)
    import triton

    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "triton": triton.__version__, "ptxas": tool.name,
              "target": "sm_90a", "size": list(args.size), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps(result, indent=1) + "\n")
    Path(f"{args.out}.md").write_text(markdown(result))
    return 0


def markdown(r: dict) -> str:
    md = [f"# Mix-FFN kernel tiles compiled for {r['target']} — Triton {r['triton']}, {r['ptxas']} ({r['date']})", "",
          "| stage | kernel | C | strip BW | rows RB | chunk HC | warps | stages | registers | spill stores B | "
          "spill loads B | shared B |", "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    md += [f"| {x['stage']} | {x['kind']} | {x['channels']} | {x['BW']} | {x['RB']} | {x['HC']} | {x['num_warps']} | "
           f"{x.get('num_stages', '')} | {x['registers']} | {x['spill_stores']} | {x['spill_loads']} | {x['shared']} |"
           for x in r["rows"]]
    return "\n".join(md) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
