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


def test_the_stage1_tile_compiles_for_hopper_without_spills():
    """ptxas's report for sm_90a, no GPU needed: with the nine taps unrolled (each its own pointer tile) this tile
    spilled 208 B per thread at 255 registers; the taps in a loop over one pointer tile need no spill."""
    import pytest

    pytest.importorskip("triton")
    from bench.kernel_resources import compile_report, markdown, ptxas

    r = compile_report("dwfc2", 64, 256, {"BW": 64, "RB": 2, "HC": 32, "num_warps": 8}, ptxas())
    assert r["spill_stores"] == 0 and 0 < r["registers"] <= 200 and r["shared"] > 0, r
    md = markdown({"target": "sm_90a", "triton": "x", "ptxas": "ptxas", "date": "d",
                   "rows": [{"stage": 1, "kind": "dwfc2", "channels": 64, "BW": 64, "RB": 2, "HC": 32,
                             "num_warps": 8, **r}]})
    assert f"| 1 | dwfc2 | 64 | 64 | 2 | 32 | 8 |  | {r['registers']} | 0 |" in md


def test_tiles_from_a_results_file_that_is_not_one_is_one_error_line(tmp_path, capsys):
    from bench.kernel_resources import main

    bad = tmp_path / "r.json"
    bad.write_text("{}")
    assert main(["--tiles-from", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a bench.kernels_mixffn results file" in err[0], err
