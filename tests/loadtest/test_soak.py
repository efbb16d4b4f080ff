"""The soak in its short CI form: 30 s against the real Triton, every request counted, memory sampled."""
import json

import pytest

from loadtest.soak import main as soak_main, summarise, tree_rss

pytestmark = pytest.mark.integration


def test_30_second_soak_of_the_null_model(server, tmp_path, capsys):
    out = tmp_path / "soak"
    rc = soak_main(["--model", server["null"], "--url", f"localhost:{server['ports']['grpc']}", "--duration", "30",
                    "--probe", "4", "--warmup", "5", "--sample", "2", "--in-flight", "2",
                    "--server-pid", str(server["pid"]), "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    r = json.loads((out / "soak.json").read_text())
    s = r["summary"]
    assert r["probe"]["img_per_s"] > 0 and r["rate"] == pytest.approx(0.8 * r["probe"]["img_per_s"])
    assert s["failures"] == 0 and s["requests"] >= 0.9 * r["rate"] * 30  # paced at the asked rate
    assert len(r["samples"]) >= 10 and all(x["rss_mb"] > 10 for x in r["samples"])  # Triton + stubs
    assert s["rss_drift"] is not None and s["p99_slope_ms_per_min"] is not None and len(s["windows"]) >= 8
    assert "0 failed" in printed and (out / "soak.png").stat().st_size > 10_000


def test_summary_counts_failures_and_drift():
    reqs = [(t / 10, 5.0, None if t % 7 else "the server is gone") for t in range(1200)]
    samples = [{"t": t, "rss_mb": 100.0 + (t > 60) * 10} for t in range(0, 120, 5)]
    s = summarise(reqs, samples, 120.0, 10.0)
    assert s["failures"] == len([t for t in range(1200) if t % 7 == 0]) and s["errors"] == ["the server is gone"]
    assert s["rss_drift"] == pytest.approx(110 / 100 - 1, rel=0.2)


def test_tree_rss_counts_children(tmp_path):
    import os
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import time; x = bytearray(50_000_000); time.sleep(20)"])
    try:
        import time
        time.sleep(1.0)
        own = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmRSS:"))
        assert tree_rss(child.pid) > 50_000_000
        assert tree_rss(os.getpid()) >= own + 0.9 * tree_rss(child.pid)  # the child is counted with its parent
    finally:
        child.kill()
