"""The GPU benchmark's reporting, on synthetic results (the measuring itself needs a GPU: `make bench`)."""
import json

import pytest

from bench.gpu import main, markdown, plot
from bench.gpu_served import knee


def _served(in_flight, rate, p50, p99, failures=0, payload="jpeg"):
    return {"payload": payload, "instances": 2, "in_flight": in_flight, "img_per_s": rate, "p50_ms": p50,
            "p99_ms": p99, "failures": failures, "requests": 100, "server": {"queue_ms": 1.0, "compute_ms": 2.0,
                                                                             "avg_batch": 4.0}}


RESULT = {"device": "GPU", "date": "today",
          "model_only": {"rows": [{"impl": i, "batch": b, "ms_per_img": m / b, "img_per_s": 1e3 * b / m}
                                  for i, f in (("ours", 1.0), ("HF", 2.5)) for b, m in ((1, 2 * f), (16, 15 * f))],
                         "agreement": {"images": 4, "agreement": 0.9997, "min_image_agreement": 0.9994}},
          "served": {"rows": [_served(16, 600, 20, 30), _served(32, 800, 40, 79), _served(64, 900, 60, 130),
                              _served(96, 950, 80, 150, failures=2)]}}


def test_knee_is_the_fastest_point_with_p99_within_twice_p50_and_no_failures():
    k = knee(RESULT["served"]["rows"])
    assert k["in_flight"] == 32  # 64 has p99 > 2 x p50, 96 has failures
    assert knee([_served(8, 10, 10, 50)]) is None


def test_report_and_plot_are_written(tmp_path):
    md = markdown({**RESULT, "served": {**RESULT["served"], "knee": knee(RESULT["served"]["rows"])}})
    assert "| ours | 16 |" in md and "99.970 %" in md and "Knee on one GPU (p99 <= 2 x p50)" in md
    path = tmp_path / "r.json"
    path.write_text(json.dumps(RESULT))
    assert main(["--replot", str(path)]) == 0
    assert (tmp_path / "r.png").stat().st_size > 10_000 and "| HF | 1 |" in (tmp_path / "r.md").read_text()
    plot({**RESULT, "served": {"rows": []}}, tmp_path / "no_served.png")  # model-only results plot too
    assert (tmp_path / "no_served.png").is_file()


@pytest.mark.integration
def test_served_run_on_a_machine_without_a_gpu_reports_the_model_s_error(tmp_path):
    """Without a GPU the GPU row cannot be served (Triton refuses KIND_GPU instances; the launcher leaves such rows
    out); the benchmark records why instead of crashing or reporting numbers."""
    import argparse

    import torch

    from bench.gpu_served import served

    if torch.cuda.is_available():
        pytest.skip("this checks the no-GPU error path")
    args = argparse.Namespace(served_instances=1, served_scenarios=["shm256mb"], served_duration=1.0, images="",
                              served_start_timeout=120, out=tmp_path / "bench")
    res = served(args, log=lambda *_: None)
    assert res["rows"] == [] and "needs a CUDA GPU: this machine has none" in res["error"]
    assert res["error"].startswith("shm256mb: ")


def test_kernel_microbenchmark_says_it_needs_a_gpu(capsys):
    import torch

    from bench.kernels_gpu import main as kernels_main

    if torch.cuda.is_available():
        pytest.skip("checks the no-GPU message")
    assert kernels_main(["--out", "/nonexistent/never-written"]) == 2
    assert capsys.readouterr().err.startswith("error: no CUDA GPU here")
