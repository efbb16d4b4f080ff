"""bench.kernels_mixffn's tile candidates and report, on the CPU (the timing itself needs a GPU)."""
import json
from pathlib import Path

from bench.kernels_mixffn import candidates, markdown

ROOT = Path(__file__).resolve().parents[2]


def test_candidates_try_few_rows_per_program_first_and_fit_the_image_and_registers():
    for h, w, c in ((256, 256, 64), (128, 128, 128), (64, 64, 320), (32, 32, 512), (23, 30, 32)):
        tiles = candidates(h, w, c)
        assert tiles and tiles[0]["RB"] <= 2 and tiles[0]["num_stages"] == 1, (h, w, c)  # untried in the first sweep
        cp = 1 << (c - 1).bit_length()
        assert all(t["BW"] <= max(16, w) and t["BW"] * cp <= 64 * 32 * t["num_warps"] for t in tiles)
        assert len({tuple(sorted(t.items())) for t in tiles}) == len(tiles)


def test_report_of_the_committed_h200_sweep():
    r = json.loads((ROOT / "docs/results/bench_gpu_h200_round3/kernels_mixffn.json").read_text())
    md = markdown(r)
    assert "| 1 | 256x256 x 64 (256) | 77.5 | 212.7 | 195.8 | 181.7 | 4.0 | 5.6 |" in md
    tiles = [t for row in r["rows"] for k in ("fused", "dwfc2") for t in row[f"{k}_tiles"]]
    assert all(t["ok"] for t in tiles if "error" not in t)  # every tile that ran computed the right function
    assert {t["BW"] for t in tiles if "error" in t} == {128}  # 128-pixel strips: out of shared memory
    assert all("out of resource: shared memory" in t["error"] for t in tiles if "error" in t)
