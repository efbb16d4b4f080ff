"""loadtest.perf: perf_analyzer's input data, command line and CSV, the glibc shim's ELF patch, the side-by-side
results, the CLI's errors; and (integration) a short perf_analyzer measurement against the pip Triton."""
import base64
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from loadtest.perf import analyzer, binary, compare
from loadtest.perf.__main__ import main

CSV = """Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,\
Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency
1,155.463,148,1923,117,188,550,760,3,3272,4866,6329,10747
2,226.151,265,3942,645,277,844,792,18,6099,10963,12833,16898
"""


def test_concurrency_range():
    assert analyzer.concurrency_range("1:4:1") == [1, 2, 3, 4]
    assert analyzer.concurrency_range("1:4:2") == [1, 3]
    assert analyzer.concurrency_range("2:3") == [2, 3]
    assert analyzer.concurrency_range("3") == [3]
    for bad in ("0:2", "4:1", "a", "1:2:3:4", ""):
        with pytest.raises(ValueError, match="START:END"):
            analyzer.concurrency_range(bad)


def test_input_data_carries_the_frames_and_the_jpeg_files():
    frames = [np.full((4, 6, 3), i, np.uint8) for i in range(3)]
    d = analyzer.input_data(frames)
    assert len(d["data"]) == 3
    for f, entry in zip(frames, d["data"]):
        assert entry["images"]["shape"] == [4, 6, 3]
        assert base64.b64decode(entry["images"]["b64"]) == f.tobytes()
    j = analyzer.input_data(frames[:1], "jpeg")["data"][0]["encoded"]
    blob = base64.b64decode(j["b64"])
    assert blob[:2] == b"\xff\xd8" and j["shape"] == [len(blob)]
    assert "images" in analyzer.input_data(frames, "raw-shm")["data"][0]
    with pytest.raises(ValueError, match="payload"):
        analyzer.input_data(frames, "png")
    with pytest.raises(ValueError, match="--batch 1"):
        analyzer.input_data(frames, "jpeg", batch=2)
    with pytest.raises(ValueError, match="no frames"):
        analyzer.input_data([])


def test_write_input_data_is_perf_analyzers_json(tmp_path):
    p = analyzer.write_input_data(tmp_path / "in" / "d.json", [np.zeros((2, 2, 3), np.uint8)])
    assert json.loads(p.read_text())["data"][0]["images"]["shape"] == [2, 2, 3]


def test_command_line():
    m = analyzer.Measurement(1500, 30, 5, warmup=4)
    argv = analyzer.command(Path("/pa"), "seg", "localhost:8001", "grpc", "1:4:1", "raw", Path("d.json"),
                            Path("o.csv"), m)
    s = " ".join(argv)
    assert "--concurrency-range 1:4:1" in s and "-i grpc" in s and "-p 1500" in s and "-s 30" in s
    assert "--input-data d.json" in s and "-f o.csv" in s and "--shared-memory" not in s
    assert "--warmup-request-count" not in s  # perf_analyzer refuses it for a range
    one = " ".join(analyzer.command(Path("/pa"), "seg", "u", "http", "2", "raw-shm", Path("d"), Path("o"), m,
                                    output_bytes=1234))
    assert "--concurrency-range 2:2:1" in one and "--warmup-request-count 4" in one
    assert "--shared-memory system --output-shared-memory-size 1234" in one


def test_parse_csv_in_milliseconds():
    rows = analyzer.parse_csv(CSV)
    assert [r["concurrency"] for r in rows] == [1, 2]
    r = rows[0]
    assert r["infer_per_s"] == pytest.approx(155.463)
    assert r["p50_ms"] == pytest.approx(3.272) and r["p99_ms"] == pytest.approx(10.747)
    assert r["avg_ms"] == pytest.approx((148 + 1923 + 117 + 188 + 550 + 760 + 3) / 1e3)
    assert r["server_ms"] == pytest.approx((117 + 188 + 550 + 760) / 1e3)
    extra = analyzer.parse_csv(CSV.replace("p99 latency", "p99 latency,Avg GPU Utilization")
                               .replace("10747\n", "10747,0.5\n").replace("16898\n", "16898,0.6\n"))
    assert extra[0]["Avg GPU Utilization"] == "0.5"
    with pytest.raises(analyzer.PerfAnalyzerError, match="no measurement"):
        analyzer.parse_csv(CSV.splitlines()[0])


def test_error_line_skips_loader_noise():
    out = ("pa: /lib/libc.so.6: weak version `GLIBC_2.38' not found (required by pa)\n *** Measurement ***\n"
           "Failed to obtain stable measurement within 6 measurement windows for concurrency 1.\n")
    assert analyzer.error_line(out).startswith("Failed to obtain stable")
    assert analyzer.error_line("") == "no output"


def test_weaken_versions_marks_only_the_named_ones(tmp_path):
    exe = tmp_path / "true"
    shutil.copy(shutil.which("true"), exe)
    before = binary.needed_versions(exe)
    name = sorted(before)[0]
    assert binary.weaken_versions(exe, (name, "NOT_A_VERSION")) == [name]
    after = binary.needed_versions(exe)
    assert after[name] & 2 and all(after[k] == before[k] for k in before if k != name)
    (tmp_path / "x").write_text("not elf")
    with pytest.raises(ValueError, match="ELF"):
        binary.weaken_versions(tmp_path / "x")


def test_missing_perf_analyzer_names_the_install(monkeypatch):
    monkeypatch.setattr(binary, "candidates", lambda: [])
    with pytest.raises(binary.PerfAnalyzerMissing, match=r"pip install perf-analyzer==2\.60\.0"):
        binary.locate()


def test_probe_says_why_a_binary_does_not_run(tmp_path):
    fake = tmp_path / "perf_analyzer"
    fake.write_text("#!/bin/sh\necho \"version \\`GLIBC_2.38' not found\" >&2\nexit 1\n")
    fake.chmod(0o755)
    ok, why = binary.probe(fake)
    assert not ok and "GLIBC_2.38" in why
    fake.write_text("#!/bin/sh\necho 'Perf Analyzer Version 2.60.0'\n")
    assert binary.probe(fake) == (True, "")


PA = {"concurrency": 1, "infer_per_s": 100.0, "p50_ms": 10.0, "p99_ms": 20.0, "server_ms": 5.0}


def test_reasons_agree_and_disagree():
    ours = {"img_per_s": 95.0, "p50_ms": 10.5, "p99_ms": 22.0, "failures": 0}
    assert compare.reasons(PA, ours, "raw", "grpc", 2000) == []
    slow = {"img_per_s": 60.0, "p50_ms": 16.0, "p99_ms": 60.0, "failures": 0}
    why = " ".join(compare.reasons(PA, slow, "raw-shm", "grpc", 2000))
    assert "perf_analyzer is faster" in why and "shared-memory region once" in why and "C++ client" in why
    assert "p99" in why and "2000 ms" in why
    fast = {"img_per_s": 150.0, "p50_ms": 6.0, "p99_ms": 20.0, "failures": 2, "errors": ["boom"]}
    why = " ".join(compare.reasons(PA, fast, "raw", "http", 2000))
    assert "closed loop is faster" in why and "client CPU" in why and "2 failures (boom)" in why
    slow_model = {"infer_per_s": 1.0, "p50_ms": 900.0, "p99_ms": 1000.0}
    why = " ".join(compare.reasons(slow_model, {"img_per_s": 1.5, "p50_ms": 600.0, "p99_ms": 1100.0}, "raw",
                                   "grpc", 4000))
    assert "stable windows" in why


def test_results_file_merges_runs_by_key(tmp_path):
    host = compare.host()
    assert host["cpus"] and host["date"]

    def run(protocol, ips):
        return {"model": "m", "protocol": protocol, "payload": "raw", "batch": 1, "host": host,
                "server_version": "2.51.0", "perf_analyzer_version": "Perf Analyzer Version 0.0.0", "shim": True,
                "interval_ms": 2000, "stability": 25, "duration_s": 4, "warmup_s": 1, "processes": 1,
                "input_shape": [1, 8, 8, 3], "frames": 8, "images": None, "errors": ["concurrency 2: unstable"],
                "notes": ["measured CPU"],
                "rows": [compare.row({**PA, "infer_per_s": ips}, {"img_per_s": 99.0, "p50_ms": 10, "p99_ms": 20,
                                                                 "requests": 9, "failures": 0}, "raw", protocol, 2000)]}

    compare.write(tmp_path / "perf_x", run("http", 100.0))
    compare.write(tmp_path / "perf_x.json", run("grpc", 100.0))
    js, md = compare.write(tmp_path / "perf_x", run("http", 300.0))
    doc = json.loads(js.read_text())
    assert [r["protocol"] for r in doc["runs"]] == ["grpc", "http"]
    assert doc["runs"][1]["rows"][0]["perf_analyzer"]["infer_per_s"] == 300.0
    text = md.read_text()
    assert text.count("## m — ") == 2 and "| 1 | 300.0 | 99.0 |" in text and "agree (within 15 %)" in text
    assert "(glibc shim)" in text and "- concurrency 2: unstable" in text and "Note: measured CPU" in text
    assert compare.paths(Path("a/b.md")) == (Path("a/b.json"), Path("a/b.md"))
    doc = json.loads(js.read_text())
    doc["runs"][0]["rows"][0]["why"] = ["stale"]
    js.write_text(json.dumps(doc))
    compare.refresh(tmp_path / "perf_x")
    assert "stale" not in md.read_text() and json.loads(js.read_text())["runs"][0]["rows"][0]["why"] == []


def test_shared_memory_reason_only_where_perf_analyzer_is_faster():
    slower_pa = {**PA, "infer_per_s": 50.0}
    why = " ".join(compare.reasons(slower_pa, {"img_per_s": 100.0, "p50_ms": 10.0, "p99_ms": 20.0}, "raw-shm",
                                   "grpc", 2000))
    assert "closed loop is faster" in why and "spread" in why and "region once" not in why


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--payload" in out and "raw-shm" in out and "fetch" in out and "--concurrency" in out


def test_cli_server_down_is_one_error_line(capsys):
    from tests.conftest import free_port

    rc = main(["--url", f"127.0.0.1:{free_port()}", "--protocol", "http", "--concurrency", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error:")


def test_cli_bad_input_is_one_error_line(capsys):
    assert main(["--concurrency", "4:1"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: --concurrency")
    assert main(["--url", "10.0.0.1:8001"]) == 2
    assert "this machine only" in capsys.readouterr().err


def test_cli_without_perf_analyzer_names_the_fix(monkeypatch, capsys):
    import loadtest.perf.__main__ as perf_main
    from client.runners import ModelInfo

    monkeypatch.setattr(perf_main, "describe", lambda args: (ModelInfo("m", (8, 8), 1), ["images"], "2.51.0"))
    monkeypatch.setattr(binary, "candidates", lambda: [])
    assert main(["--url", "localhost:8001"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install perf-analyzer==2.60.0" in err[0] and "loadtest.perf fetch" in err[0]


# -- against the real (pip) Triton ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def perf_analyzer_bin():
    """perf_analyzer from the wheel: installed, or fetched (pip download) and shimmed on an older glibc."""
    try:
        return binary.locate()
    except binary.PerfAnalyzerMissing:
        binary.fetch()
        return binary.locate()


@pytest.mark.integration
@pytest.mark.parametrize("protocol,payload", [("http", "raw"), ("grpc", "raw-shm")])
def test_perf_analyzer_measures_the_null_row(server, perf_analyzer_bin, tmp_path, protocol, payload):
    from client.policy import InputPolicy
    from client.runners import TritonRunner

    url = f"127.0.0.1:{server['ports'][protocol]}"
    runner = TritonRunner(server["null"], url, protocol)
    info = runner.activate()
    runner.deactivate()
    frames = InputPolicy.for_model(info).frames("", 2)
    data = analyzer.write_input_data(tmp_path / "in.json", frames, payload)
    out = tmp_path / "pa.csv"
    argv = analyzer.command(perf_analyzer_bin, server["null"], url, protocol, "1", payload, data, out,
                            analyzer.Measurement(800, 60, 6, warmup=3),
                            output_bytes=info.size[0] * info.size[1])
    rows, console = analyzer.run(argv, out, timeout=60)
    r = rows[0]
    assert r["concurrency"] == 1 and r["infer_per_s"] > 1
    assert 0 < r["p50_ms"] <= r["p99_ms"] and r["avg_ms"] > 0 and r["server_ms"] > 0
    assert "Request concurrency: 1" in console


@pytest.mark.integration
def test_side_by_side_cli(server, perf_analyzer_bin, tmp_path, capsys):
    ports = server["ports"]
    common = ["--model", server["null"], "--url", f"127.0.0.1:{ports['grpc']}", "--protocol", "grpc",
              "--metrics-url", f"127.0.0.1:{ports['metrics']}"]
    rc = main([*common, "--concurrency", "1:2:1", "--payload", "raw-shm", "--interval-ms", "800",
               "--stability", "60", "--duration", "1", "--warmup", "0.5", "--out", str(tmp_path / "perf_null")])
    doc = json.loads((tmp_path / "perf_null.json").read_text())
    run = doc["runs"][0]
    assert rc == 0, run["errors"]
    assert [x["concurrency"] for x in run["rows"]] == [1, 2]
    for x in run["rows"]:
        assert x["perf_analyzer"]["infer_per_s"] > 1 and x["closed_loop"]["img_per_s"] > 1
        assert x["closed_loop"]["failures"] == 0 and x["why"] is not None
    assert run["input_shape"][1:] == [360, 480, 3] and "--shared-memory system" in run["perf_analyzer_command"]
    assert "| 2 |" in (tmp_path / "perf_null.md").read_text()
    capsys.readouterr()
    assert main([*common[:1], "no_such_model", *common[2:], "--concurrency", "1"]) == 2
    assert "not served" in capsys.readouterr().err
    assert main([*common, "--concurrency", "1", "--payload", "jpeg"]) == 2
    assert "takes no JPEG" in capsys.readouterr().err
