"""The CPU benchmark's frame split, report and errors (the measuring itself: `make bench-cpu`)."""
from pathlib import Path

import numpy as np
import pytest

from bench.cpu import BenchError, guard_folder, main, markdown, split_test


def test_guards_and_reports_use_disjoint_test_frames():
    frames = [f"f{i:03d}" for i in range(233)]
    reported, held = split_test(frames, 12, 12)
    assert held == frames[-12:] and len(reported) == 12  # guard on the last frames
    assert not set(reported) & set(held) and reported[0] == frames[0]
    with pytest.raises(BenchError, match="lower --images or --guard-images"):
        split_test(frames[:20], 12, 12)


def test_guard_frames_become_their_own_folder(tmp_path):
    from types import SimpleNamespace

    src = tmp_path / "src"
    src.mkdir()
    for n in ("a.jpg", "b.jpg", "c.jpg"):
        (src / n).write_bytes(b"x")
    folder = guard_folder([SimpleNamespace(image=src / n) for n in ("b.jpg", "c.jpg")], tmp_path / "guard")
    assert sorted(p.name for p in folder.iterdir()) == ["b.jpg", "c.jpg"]


def test_report_names_the_policy_and_the_guard():
    rows = {"onnxruntime fp32": {"disagreement_mean": 0.0, "disagreement_max": 0.0, "miou": 0.5}}
    timing = [{"runtime": "onnxruntime fp32", "threads": t, "batch": b, "s_per_image": 1.0,
               "speedup_vs_onnxruntime_fp32": 1.0} for t in (1, 2) for b in (1, 2)]
    plan = {"plan": ["f32"], "fell_back": "no INT8 plan within the budget",
            "tried": [{"f32": "nothing", "disagreement": 0.004}]}
    md = markdown({"cpu": "CPU", "cores": 2, "flags": ["avx2"], "date": "today", "command": "python -m bench.cpu",
                   "input_policy": {"mode": "fit", "size": [1024, 1024]}, "timing": timing,
                   "guard": {"images": 12, "frames": ["x.png", "y.png"]}, "bf16_row_plan": {"plan": ["bf16"]},
                   "int8_row_plan": plan, "accuracy": {"images": 12, "rows": rows}})
    assert "Input policy `fit` 1024x1024" in md and "guards on 12 CamVid test frames (x.png .. y.png)" in md
    assert "int8 f32, fell back to f32: no INT8 plan within the budget; tried nothing 0.400 %" in md
    busy = markdown({"cpu": "CPU", "cores": 2, "flags": [], "date": "today", "command": "c",
                     "input_policy": {"mode": "fit", "size": [1024, 1024]}, "timing": timing,
                     "guard": {"images": 12, "frames": ["x.png", "y.png"]}, "bf16_row_plan": {"plan": ["bf16"]},
                     "int8_row_plan": plan, "accuracy": {"images": 12, "rows": rows},
                     "load_average_before": 1.5, "load_average_after": 3.2})
    assert "before / after the timing: 1.50 / 3.20 on 2 cores: other processes competed" in busy


def test_no_camvid_is_one_error_line(tmp_path, capsys):
    assert main(["--data", str(tmp_path), "--out", str(tmp_path / "never")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --data") and not list(tmp_path.iterdir())


def test_report_names_the_int8_plan_its_guard_and_the_groups_in_bf16():
    from bench.cpu import _plan_text

    plan = {"plan": ["f32", "int8+bf16"], "heldout_disagreement": 0.0031, "heldout_worst": 0.0062,
            "int8": {"passed": True, "groups": 30, "int8_groups": 28, "float_precision": "bf16",
                     "float_groups": ["decode_head.classifier", "encoder.stages.0.blocks.0.attn"]}}
    assert _plan_text(plan) == ("f32+int8+bf16 (guard 0.310 % / 0.620 %), 28 of 30 groups INT8, 2 in bf16: "
                                "decode_head.classifier, encoder.stages.0.blocks.0.attn")
