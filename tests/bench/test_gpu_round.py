"""bench.gpu round 3 on the CPU: several sizes and models in one call, --paths to build_fast's keywords, one results
file holding every section, and README's GPU block generated from a results file (fixture data: the measuring
itself needs a GPU)."""
import json
import re
import subprocess
from typing import Literal

import pytest

from bench import gpu, gpu_report
from bench.gpu_measure import RANDOM_INIT, path_kwargs, random_weights
from tests.conftest import ROOT
from tests.test_readme import _values, found, tables

STAMP = {"device": "NVIDIA H200", "date": "2026-12-01 10:00", "torch": "2.11.0+cu130"}


def _rows(impl, pairs, **extra):
    return [{"impl": impl, "batch": b, "ms_per_batch": m * b, "ms_per_img": m, "img_per_s": 1e3 / m, **extra}
            for b, m in pairs]


def _section(variant, size, kind, rows, agreement=None):
    return {"stamp": STAMP, "variant": variant, "weights": f"segformer-{variant}-camvid", "size": list(size),
            "batches": sorted({r["batch"] for r in rows}), "weights_kind": kind, "rows": rows,
            "agreement": agreement or {}, "compile_and_capture_s": {"ours (round2)": 41.5}, "skipped": []}


ROUND3 = {"format": 2, **STAMP, "transformers": "5.17.0", "command": "python -m bench.gpu --sizes ...",
          "sections": ["model", "kernels", "served"],
          "model_only": [
              _section("b1", (1024, 1024), "shipped", _rows("ours (round2)", [(1, 1.2871), (16, 0.7514)])
                       + _rows("HF torch.compile fp16", [(16, 1.4123)])),
              _section("b1", (1024, 2048), "shipped", _rows("ours (round2)", [(1, 1.4437), (8, 1.0502)])
                       + _rows("HF eager fp16", [(8, 5.9871)]) + _rows("HF torch.compile fp16", [(8, 3.1267)]),
                       {"ours (round2)": {"images": 8, "agreement": 0.99971, "min_image_agreement": 0.99942}}),
              _section("b2", (1024, 1024), RANDOM_INIT, _rows("ours (round2)", [(1, 2.6512), (16, 1.8733)])
                       + _rows("HF torch.compile fp16", [(16, 3.4411)]))],
          "kernels": {"stamp": STAMP, "skipped": [], "batch": 16, "size": 1024,
                      "rows": [{"stage": 1, "h": 256, "w": 256, "channels": 256, "ours_us_per_img": 41.27,
                                "torch_us_per_img": 103.44, "copy_floor_us_per_img": 20.61,
                                "max_abs_err_vs_fp32": 0.0019, "config": None}]},
          "served": {"stamp": STAMP, "rows": [
              {"scenario": "quick", "payload": "jpeg", "gpus": "0", "servers": 1, "instances": 2, "in_flight": 64,
               "img_per_s": 1043.7, "p50_ms": 61.24, "p99_ms": 70.93, "failures": 0, "requests": 900,
               "server": {"queue_ms": 1.0, "compute_ms": 2.0, "avg_batch": 8.0}}], "stage_timing": {}},
          "skipped": [{"what": "video", "why": "not requested (--sections)"}]}


def _cpu_args(*argv):
    return gpu.parser().parse_args(list(argv))


def test_sizes_carry_their_batch_lists_and_variants_their_sizes():
    args = _cpu_args("--sizes", "1024x1024:1,8,16", "1024x2048", "--batches", "1", "8",
                     "--variants", "b1", "b2@1024x1024", "b0@1024x2048")
    todo = gpu.plan(args)
    got = [(m["variant"], size, batches, m["shipped"], m["weights_name"]) for m, size, batches in todo]
    assert got == [("b1", (1024, 1024), [1, 8, 16], True, "segformer-b1-camvid"),
                   ("b2", (1024, 1024), [1, 8, 16], False, "segformer-b2-random-init"),
                   ("b1", (1024, 2048), [1, 8], True, "segformer-b1-camvid"),
                   ("b0", (1024, 2048), [1, 8], True, "segformer-b0-camvid")]
    assert [(m["variant"], s) for m, s, _ in gpu.plan(_cpu_args("--size", "1024", "2048"))] == [("b1", (1024, 2048))]


@pytest.mark.parametrize("argv, message", [
    (["--sizes", "1000x1024"], "not a multiple of 32"),
    (["--sizes", "1024x2048:1,x"], "the batch list must be positive integers"),
    (["--sizes", "1024x2048:0"], "the batch list must be positive integers"),
    (["--variants", "@1024x1024"], "a variant (b0..b5) or weights entry before the @"),
])
def test_bad_sizes_and_variants_are_one_error(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        gpu.main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--sizes", "1024x1024", "--variants", "b2@1024x2048"], "--variants b2@...: 1024x2048 not in --sizes"),
    (["--variants", "b9"], "no weights named 'b9'"),
    (["--images", "/nonexistent/frames"], "--images /nonexistent/frames: no such folder"),
])
def test_a_plan_that_cannot_run_is_one_error_line_before_any_gpu_work(argv, message, capsys):
    assert gpu.main(argv + ["--out", "/nonexistent/never"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def _old_build_fast(weights, device="cuda", dtype=None, compile_mode="default", fused_mixffn=True):
    pass


def _new_build_fast(weights, device="cuda", compile_mode="default", fused_mixffn=True,
                    mixffn: Literal["round2", "fused"] = "fused"):
    pass


def _untyped_build_fast(weights, device="cuda", compile_mode="default", mixffn=None):
    pass


def test_paths_map_to_build_fast_keywords():
    assert path_kwargs(None, _old_build_fast) == {} and path_kwargs(None, _new_build_fast) == {}
    assert path_kwargs("fused", _old_build_fast) == {"fused_mixffn": True}
    assert path_kwargs("unfused", _old_build_fast) == {"fused_mixffn": False}
    assert path_kwargs("round2", _new_build_fast) == {"mixffn": "round2"}
    assert path_kwargs("anything", _untyped_build_fast) == {"mixffn": "anything"}
    with pytest.raises(gpu.BenchError, match="mixffn takes round2, fused"):
        path_kwargs("round9", _new_build_fast)
    with pytest.raises(gpu.BenchError, match="has no `mixffn` keyword"):
        path_kwargs("round2", _old_build_fast)
    assert _cpu_args("--paths", "round2", "fused").paths == ["round2", "fused"]
    assert _cpu_args().paths == [None]  # build_fast's own default


def test_paths_are_checked_against_the_fast_path_s_own_names(capsys):
    from segformer.fast import MIXFFN_PATHS

    assert all(path_kwargs(p) == {"mixffn": p} for p in MIXFFN_PATHS)
    assert gpu.main(["--paths", "round2", "round9", "--out", "/nonexistent/never"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --paths round9: build_fast's mixffn takes {', '.join(MIXFFN_PATHS)}"


def test_a_path_build_fast_cannot_take_is_one_error_line(monkeypatch, capsys):
    import segformer.fast

    monkeypatch.setattr(segformer.fast, "build_fast", _old_build_fast)
    assert gpu.main(["--paths", "round2", "--out", "/nonexistent/never"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --paths round2: this build_fast has no `mixffn` keyword")


def test_random_weights_are_an_entry_labelled_speed_only(tmp_path):
    from segformer.weights import get_weights

    like = get_weights("segformer-b1-camvid")
    w = get_weights(random_weights("tiny", like, tmp_path))
    assert w.variant == "tiny" and w.num_classes == like.num_classes and w.mean == like.mean
    assert RANDOM_INIT in w.meta["note"]
    assert w.build().config.widths == (8, 16, 24, 32)


def _fake_gpu(monkeypatch, served_error=None):
    """Everything that needs a GPU replaced by fixture data; returns the calls made."""
    import torch

    import bench.gpu_measure
    import bench.gpu_served
    import bench.kernels_gpu
    import bench.kernels_mixffn

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(gpu, "_stamp", lambda: dict(STAMP))

    def section(model, size, batches, args, log, images=(), hf_modes=()):
        calls.append(("model", model["variant"], size, tuple(batches), tuple(hf_modes)))
        src = next(s for s in ROUND3["model_only"] if s["variant"] == model["variant"] and tuple(s["size"]) == size)
        return {k: v for k, v in src.items() if k != "stamp"}

    def kernels(ns):
        calls.append(("kernels", ns.size, ns.batch))
        ns.out.with_suffix(".json").write_text(json.dumps({k: v for k, v in ROUND3["kernels"].items()
                                                           if k != "stamp"}))

    def served(args, log):
        calls.append(("served", tuple(args.served_scenarios)))
        return {**{k: v for k, v in ROUND3["served"].items() if k != "stamp"},
                **({"error": served_error} if served_error else {})}

    monkeypatch.setattr(bench.gpu_measure, "model_section", section)
    monkeypatch.setattr(bench.gpu_measure, "random_weights", lambda v, like, d: calls.append(("random", v)) or "x")
    monkeypatch.setattr(bench.kernels_gpu, "measure", kernels)
    monkeypatch.setattr(bench.kernels_mixffn, "measure", lambda ns: calls.append(("mixffn", ns.size)) or 1 / 0)
    monkeypatch.setattr(bench.gpu_served, "served", served)
    return calls


MAKE_BENCH = ["--sections", "model", "kernels", "served", "--sizes", "1024x1024:1,16", "1024x2048:1,8",
              "--variants", "b1", "b2@1024x1024", "--served-scenarios", "quick"]


def test_one_call_writes_one_results_file_with_every_section(tmp_path, monkeypatch, capsys):
    calls = _fake_gpu(monkeypatch)
    assert gpu.main(MAKE_BENCH + ["--hf-max-autotune", "--out", str(tmp_path / "r")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.md", "r.png"]
    assert calls == [("model", "b1", (1024, 1024), (1, 16), ("default", "max-autotune")),
                     ("random", "b2"), ("model", "b2", (1024, 1024), (1, 16), ("default",)),
                     ("model", "b1", (1024, 2048), (1, 8), ("default",)),
                     ("kernels", 1024, 16), ("served", ("quick",))]
    r = json.loads((tmp_path / "r.json").read_text())
    assert [(s["variant"], s["size"], s["weights_kind"]) for s in r["model_only"]] == [
        ("b1", [1024, 1024], "shipped"), ("b2", [1024, 1024], RANDOM_INIT), ("b1", [1024, 2048], "shipped")]
    for sec in r["model_only"] + [r["kernels"], r["served"]]:
        assert sec["stamp"] == STAMP
    assert r["device"] == "NVIDIA H200" and r["command"].startswith("python -m bench.gpu --sections model")
    assert r["skipped"] == [{"what": s, "why": "not requested (--sections)"} for s in ("mixffn", "video")]
    ours = next(x for x in r["model_only"][2]["rows"] if x["impl"] == "ours (round2)" and x["batch"] == 8)
    assert ours["x_hf_compile"] == pytest.approx(3.1267 / 1.0502)
    md = (tmp_path / "r.md").read_text()
    for text in ("### B1 1024x2048, segformer-b1-camvid (shipped) (NVIDIA H200, 2026-12-01 10:00, torch 2.11.0+cu130)",
                 f"### B2 1024x1024, segformer-b2-camvid ({RANDOM_INIT})", "| ours (round2) | 8 | 1.050 | 952 | 2.98 |",
                 "## Depthwise 3x3 + GELU kernel", "| quick | 0 | 1 | jpeg | 64 | 1044 |",
                 "batch 8: 1.050 ms/img, target <= 1.1: met; batch 1: 1.444 ms/img, target <= 1.5: met",
                 "- video: not requested (--sections)"):
        assert text in md, text


def test_a_failed_section_is_recorded_and_the_call_exits_1(tmp_path, monkeypatch, capsys):
    calls = _fake_gpu(monkeypatch, served_error="quick: ServerError: no tritonserver")
    assert gpu.main(["--sections", "mixffn", "served", "--sizes", "1024x2048", "512x512", "--out",
                     str(tmp_path / "r")]) == 1
    assert calls == [("mixffn", (512, 512)), ("served", ("shm1mb", "shm256mb"))]
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["model_only"] == [] and r["mixffn"]["stamp"] == STAMP
    assert r["skipped"] == [{"what": s, "why": "not requested (--sections)"} for s in ("model", "kernels", "video")] + [
        {"what": "mixffn: bench.kernels_mixffn", "why": "ZeroDivisionError: division by zero", "failed": True},
        {"what": "served", "why": "quick: ServerError: no tritonserver", "failed": True}]
    md = (tmp_path / "r.md").read_text()
    assert "Served run failed: quick: ServerError: no tritonserver" in md
    assert "- skipped bench.kernels_mixffn: ZeroDivisionError: division by zero" in md


def _checked_tables(block: str, text: str, values: list[float]) -> int:
    """tests/test_readme.py's rule on a block: every measured number is in the results file."""
    n = 0
    for _, rows, _ in tables(block):
        cells = [re.sub(r"`[^`]*`", "", c) for row in rows[2:] for c in row.strip("|").split("|")[1:]]
        tokens = [t for c in cells for t in re.findall(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.])", c.replace("**", ""))
                  if "." in t or abs(float(t)) >= 100]
        assert tokens and all(found(t, text, values) for t in tokens), [t for t in tokens if not found(t, text, values)]
        n += 1
    return n


def test_readme_block_comes_from_the_results_file(tmp_path, capsys):
    path = tmp_path / "bench_gpu_h200_round3.json"
    gpu_report.annotate(ROUND3)
    path.write_text(json.dumps(ROUND3))
    assert gpu.main(["--readme", str(path)]) == 0
    block = capsys.readouterr().out
    values = []
    _values(ROUND3, values)
    assert _checked_tables(block, path.read_text(), values) == 3  # model only, kernels, served
    assert block.startswith("Model only, one NVIDIA H200, 2026-12-01 10:00 (torch 2.11.0+cu130;")
    cite = path.with_suffix("").as_posix()
    assert max(len(line.replace(cite, "docs/results/x")) for line in block.splitlines() if line[:1] != "|") <= 115
    assert f"`{path.with_suffix('').as_posix()}.md`" in " ".join(block.split())
    assert "| B1 1024x2048, shipped | ours (round2) | 8 | 1.050 | 952 | 2.98 |" in block
    assert "| B2 1024x1024, random init, speed only | ours (round2) | 16 | 1.873 | 534 | 1.84 |" in block
    prose = " ".join(block.split())
    assert "B1 1024x2048 ours (round2): label agreement with the FP32 PyTorch reference **99.971 %** on 8" in prose
    assert "batch 8: 1.050 ms/img, target <= 1.1: met; batch 1: 1.444 ms/img, target <= 1.5: met." in prose
    assert "Not run in that call: video: not requested (--sections)." in prose
    with pytest.raises(AssertionError):
        _checked_tables("| a | b |\n|---|---|\n| x | 9.999 |\n", path.read_text(), values)  # a number not in it


def test_readme_into_fills_the_marked_block_only(tmp_path, capsys):
    readme = tmp_path / "README.md"
    rel = "docs/results/x.json"
    readme.write_text(f"intro\n{gpu_report.begin_marker(rel)}\n{gpu_report.placeholder(rel)}{gpu_report.END}\nend\n")
    text = gpu_report.readme_into(readme, rel, "NEW\n")
    assert text == f"intro\n{gpu_report.begin_marker(rel)}\nNEW\n{gpu_report.END}\nend\n"
    with pytest.raises(gpu.BenchError, match="no `<!-- bench.gpu --readme docs/results/y.json -->`"):
        gpu_report.readme_into(readme, "docs/results/y.json", "NEW\n")
    assert gpu.main(["--readme", str(tmp_path / "missing.json")]) == 2
    assert "no such results file" in capsys.readouterr().err


def test_readme_gpu_block_is_the_generated_one_or_says_how_to_fill_it():
    rel = "docs/results/bench_gpu_h200_round3.json"
    text = (ROOT / "README.md").read_text()
    m = re.search(re.escape(gpu_report.begin_marker(rel)) + r"\n(.*?)" + re.escape(gpu_report.END), text, re.S)
    assert m, "README has no GPU block markers for the round-3 results file"
    if (ROOT / rel).is_file():
        want = gpu_report.readme_block(json.loads((ROOT / rel).read_text()), rel.removesuffix(".json"))
        assert m[1] == want, f"run: python -m bench.gpu --readme {rel} --readme-into README.md"
    else:
        assert m[1] == gpu_report.placeholder(rel)


def test_round2_results_still_replot(tmp_path):
    src = ROOT / "docs/results/bench_gpu_h100_round2/model_only.json"
    (tmp_path / "m.json").write_text(src.read_text())
    assert gpu.main(["--replot", str(tmp_path / "m.json")]) == 0
    md = (tmp_path / "m.md").read_text()
    assert "| ours (fast path, fused Mix-FFN kernel) | 16 | 0.865 | 1155 |" in md and "99.972 %" in md
    assert (tmp_path / "m.png").stat().st_size > 10_000


def test_make_bench_runs_every_default_section_and_its_arguments_parse():
    out = subprocess.run(["make", "-s", "-n", "-o", ".venv/.installed", "bench"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    line = " ".join(out.replace("\\\n", " ").split("-m bench.gpu", 1)[1].split())
    args = gpu.parser().parse_args(line.split())
    assert args.sections == ["model", "kernels", "served"] and args.served_scenarios == ["quick"]
    assert [(m["variant"], s) for m, s, _ in gpu.plan(args)] == [("b1", (1024, 1024)), ("b2", (1024, 1024)),
                                                                  ("b1", (1024, 2048))]
    assert not args.hf_max_autotune and args.hf_compile_modes == ["default"]
    help_text = subprocess.run(["make", "-s", "-o", ".venv/.installed", "help"], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout
    assert "about 7 min of one H100" in help_text and "HF_MAX_AUTOTUNE=1" in help_text


def test_served_sends_frames_of_served_size_to_the_row_and_finds_imported_rows(monkeypatch):
    """--served-size reaches every closed-loop point (a dynamic row at 1024x2048); --served-row may name a row of
    an imported weights entry (a user's own, or a random-init entry for speed only)."""
    import contextlib
    from types import SimpleNamespace

    import build.repository
    import build.variants
    from bench import gpu_served
    from loadtest import closed_loop

    sizes = []

    @contextlib.contextmanager
    def fake_tritons(name, sc, args, log, timing):
        yield SimpleNamespace(name="r_gpu_dynamic"), ["localhost:1"], ["localhost:2"]

    def fake_run(a):
        sizes.append(a.size)
        return {"in_flight": 1, "img_per_s": 1.0, "p50_ms": 1.0, "p99_ms": 1.0, "failures": 0, "errors": []}

    real_tritons = gpu_served._tritons
    monkeypatch.setattr(gpu_served, "_tritons", fake_tritons)
    monkeypatch.setattr(closed_loop, "run", fake_run)
    args = gpu.parser().parse_args(["--sections", "served", "--served-scenarios", "quick",
                                    "--served-size", "1024x2048"])
    assert gpu_served.served(args, log=lambda *_: None)["rows"] and sizes and set(sizes) == {(1024, 2048)}

    unknown = SimpleNamespace(served_row="nope_gpu", served_instances=1)
    with pytest.raises(RuntimeError, match="imported with python -m build.import_weights"):
        with real_tritons("x", {"servers": 0}, unknown, print, {}):
            pass
    row = build.variants.VARIANTS["segformer_b1_gpu_dynamic"]
    monkeypatch.setattr(build.variants, "imported_rows", lambda: {"mine_gpu_dynamic": row})

    def reached(rows, *a, **k):
        raise LookupError(f"building {rows[0].name} with sizes {rows[0].extra['sizes']}")

    monkeypatch.setattr(build.repository, "write_repository", reached)
    with pytest.raises(LookupError, match="building segformer_b1_gpu_dynamic with sizes 1024x2048$"):
        with real_tritons("x", {"servers": 0}, SimpleNamespace(served_row="mine_gpu_dynamic", served_instances=1,
                                                               served_size=(1024, 2048)),
                                 print, {}):
            pass
