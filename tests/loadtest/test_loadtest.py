from pathlib import Path

import pytest

from loadtest import metrics
from loadtest.run import main as run_main, read_stats, run
from loadtest.sweep import apply_knee, knee

SAMPLE = '''# HELP nv_inference_request_success Number of successful inference requests
nv_inference_request_success{model="m",version="1"} 10
nv_inference_request_failure{model="m",version="1"} 2
nv_inference_count{model="m",version="1"} 12
nv_inference_exec_count{model="m",version="1"} 4
nv_inference_request_duration_us{model="m",version="1"} 120000
nv_inference_queue_duration_us{model="m",version="1"} 24000
nv_inference_compute_input_duration_us{model="m",version="1"} 1200
nv_inference_compute_infer_duration_us{model="m",version="1"} 90000
nv_inference_compute_output_duration_us{model="m",version="1"} 2400
nv_gpu_utilization{gpu_uuid="x"} 0.5
'''


def test_metrics_parse_and_breakdown():
    m = metrics.parse(SAMPLE)
    assert m["m"]["nv_inference_count"] == 12 and "nv_gpu_utilization" not in m["m"]
    b = metrics.breakdown(metrics.diff({}, m, "m"))
    assert b["requests"] == 12 and b["failures"] == 2 and b["avg_batch"] == 3.0
    assert b["server_ms"] == pytest.approx(10.0) and b["queue_ms"] == pytest.approx(2.0)
    assert b["compute_ms"] == pytest.approx(93.6 / 12)


def test_compute_split_and_the_cuda_ipc_handle_format():
    b = metrics.breakdown(metrics.diff({}, metrics.parse(SAMPLE), "m"))
    assert set(b) >= {"compute_input_ms", "compute_infer_ms", "compute_output_ms"}
    assert b["compute_input_ms"] + b["compute_infer_ms"] + b["compute_output_ms"] == pytest.approx(b["compute_ms"])
    from client.cuda_region import ipc_mem_handle

    raw = bytes(range(64))
    assert ipc_mem_handle(raw) == raw and ipc_mem_handle(bytes([2]) + b"c" + raw) == raw
    with pytest.raises(RuntimeError, match="expandable"):
        ipc_mem_handle(bytes([2]) + b"e" + raw[:40])


def test_knee_picks_highest_throughput_within_slo():
    rows = [{"users": 1, "img_s": 1.0, "p99_ms": 100, "requests": 9, "failures": 0},
            {"users": 2, "img_s": 1.8, "p99_ms": 180, "requests": 9, "failures": 0},
            {"users": 4, "img_s": 2.0, "p99_ms": 400, "requests": 9, "failures": 0},
            {"users": 8, "img_s": 2.5, "p99_ms": 150, "requests": 9, "failures": 3}]
    assert knee(rows, 200)["users"] == 2 and knee(rows, 50) is None


def test_remote_targets_are_refused(capsys):
    assert run_main(["--url", "10.0.0.1:8001", "--duration", "1"]) == 2
    assert capsys.readouterr().err.strip() == \
        "error: 10.0.0.1:8001: load tests target this machine only (localhost / 127.0.0.1)"


def _hold_5557():
    """Locust's default master port, taken (on every interface) while the test runs, where it is free."""
    import socket

    s = socket.socket()
    try:
        s.bind(("0.0.0.0", 5557))
        s.listen()
    except OSError:  # taken already: just as good
        s.close()
        return None
    return s


def _locust_processes(marker: str) -> list[str]:
    import subprocess

    ps = subprocess.run(["ps", "-eo", "pid,ppid,args"], capture_output=True, text=True).stdout
    return [ln for ln in ps.splitlines() if "locust" in ln and marker in ln]


def test_no_server_says_why_in_one_line_and_leaves_no_worker(tmp_path):
    """Issue 30, item 4: with 5557 taken and nothing on the target port, a 2-process run ends on time, says
    why in one readable line, and no locust worker outlives it."""
    from tests.conftest import free_port

    held = _hold_5557()
    try:
        s = run("m", 2, 2, tmp_path, "grpc", f"localhost:{free_port()}", f"localhost:{free_port()}", processes=2)
    finally:
        if held:
            held.close()
    assert s["requests"] == 0 and s["wall_s"] < 30, s
    note = s["note"]
    assert note.startswith("no request completed: cannot reach Triton at localhost:"), note
    assert "\n" not in note and len(note) < 300 and "b'" not in note and "Traceback" not in note
    assert _locust_processes(str(tmp_path)) == []


@pytest.mark.integration
def test_master_on_a_free_loopback_port_while_5557_is_taken(server, tmp_path):
    ports = server["ports"]
    held = _hold_5557()
    try:
        s = run(server["null"], 2, 8, tmp_path, "grpc", f"localhost:{ports['grpc']}",
                f"localhost:{ports['metrics']}", processes=2)
    finally:
        if held:
            held.close()
    log = (tmp_path / f"{server['null']}_u2.log").read_text()
    assert "2 workers connected" in log and "5557" not in log  # the master bound its own port; both workers came
    assert s["failures"] == 0 and s["wall_s"] < 8 + 30, s  # ends with its run, even if a worker hangs
    # requests on a machine this busy may be few (a worker that misses heartbeats is dropped); if none, it says why
    assert s["requests"] > 0 or "\n" not in s["note"] and len(s["note"]) < 300, s
    assert _locust_processes(str(tmp_path)) == []


@pytest.mark.integration
def test_headless_run_against_the_server(server, tmp_path):
    ports = server["ports"]
    s = run(server["null"], 2, 8, tmp_path, "grpc", f"localhost:{ports['grpc']}", f"localhost:{ports['metrics']}",
            processes=2)
    assert s["requests"] > 5 and s["failures"] == 0 and s["img_s"] > 0, s
    assert Path(f"{tmp_path}/{server['null']}_u2_stats.csv").is_file() and (tmp_path / f"{server['null']}_u2.json").is_file()
    assert (tmp_path / f"{server['null']}_u2.html").is_file()
    assert s["server"]["requests"] >= s["requests"] and s["server"]["failures"] == 0
    assert read_stats(tmp_path / f"{server['null']}_u2")["requests"] == s["requests"]
    http = run(server["model"], 1, 6, tmp_path, "http", f"localhost:{ports['http']}",
               f"localhost:{ports['metrics']}", processes=1)
    assert http["requests"] >= 1 and http["failures"] == 0 and http["server"]["compute_ms"] > 0


@pytest.mark.integration
def test_unknown_model_is_reported_not_hidden(server, tmp_path):
    ports = server["ports"]
    s = run("nope", 1, 2, tmp_path, "grpc", f"localhost:{ports['grpc']}", f"localhost:{ports['metrics']}",
            processes=1)
    assert s["requests"] == 0
    assert "nope" in s.get("note", ""), s.get("note")  # the summary names what went wrong, not just that it did


def test_apply_knee_writes_config(tmp_path, tiny_weights):
    from build.model_config import model_config, parse_pbtxt, to_pbtxt
    from build.variants import PYTHON_ORT, ServingVariant

    v = ServingVariant("m", str(tiny_weights), PYTHON_ORT, max_batch=4)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.pbtxt").write_text(to_pbtxt(model_config(v, ["a"], [[0, 0, 0]])))
    apply_knee(tmp_path, "m", {"users": 8, "batch": 1, "server": {"compute_ms": 50.0}})
    cfg = parse_pbtxt((tmp_path / "m" / "config.pbtxt").read_text())
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 5000
    assert cfg.max_batch_size == 4  # the row's own limit is kept


@pytest.mark.integration
@pytest.mark.parametrize("payload", ["raw", "raw-shm"])
def test_closed_loop_generator_against_the_real_server(server, payload, tmp_path):
    from loadtest import closed_loop

    args = closed_loop.parser().parse_args(
        ["--model", server["null"], "--url", f"localhost:{server['ports']['grpc']}", "--metrics-url",
         f"localhost:{server['ports']['metrics']}", "--processes", "2", "--concurrency", "2", "--duration", "2",
         "--warmup", "1", "--payload", payload, "--out", str(tmp_path / "s.json")])
    s = closed_loop.run(args)
    assert s["requests"] > 10 and s["failures"] == 0, s
    assert s["in_flight"] == 4 and s["p50_ms"] <= s["p99_ms"]
    assert s["server"]["requests"] >= s["requests"]  # Triton saw at least what was measured (warm-up too)


@pytest.mark.integration
@pytest.mark.parametrize("payload", ["raw", "raw-shm"])
def test_closed_loop_sends_frames_of_a_dynamic_rows_size_and_of_mixed_sizes(server, payload, tmp_path):
    from PIL import Image

    from loadtest import closed_loop

    common = ["--model", server["null_dynamic"], "--url", f"localhost:{server['ports']['grpc']}", "--metrics-url",
              f"localhost:{server['ports']['metrics']}", "--processes", "1", "--concurrency", "2", "--duration", "1",
              "--warmup", "0.5", "--payload", payload]
    # --size larger than the row's nominal size: the label region was sized from the nominal size and was too small
    s = closed_loop.run(closed_loop.parser().parse_args(common + ["--size", "1024x2048"]))
    assert s["requests"] > 2 and s["failures"] == 0, s
    # images of two sizes in one run: each request names its own byte counts within the regions
    for i, (w, h) in enumerate([(640, 480), (1280, 720)]):
        Image.new("RGB", (w, h), (i * 60, 90, 30)).save(tmp_path / f"{i}.png")
    s = closed_loop.run(closed_loop.parser().parse_args(common + ["--images", str(tmp_path)]))
    assert s["requests"] > 2 and s["failures"] == 0, s


def test_closed_loop_size_is_refused_in_one_line_where_the_row_would_not_take_it():
    from client.policy import InputPolicy
    from loadtest.closed_loop import sized

    fixed = InputPolicy((512, 512))
    assert sized(fixed, (512, 512), "m").size == (512, 512)
    with pytest.raises(ValueError, match=r"--size 720x960: m would take such frames as 512x512 \(a fixed-size row\)"):
        sized(fixed, (720, 960), "m")
    dyn = InputPolicy((1024, 1024), ((256, 256), (1024, 2048)))
    assert sized(dyn, (1024, 2048), "d").size == (1024, 2048) and sized(dyn, (1024, 2048), "d").size_range is None
    with pytest.raises(ValueError, match="pass --size 736x960"):
        sized(dyn, (720, 960), "d")


@pytest.mark.integration
def test_closed_loop_counts_failures_instead_of_hiding_them(server, capsys):
    from loadtest import closed_loop

    # the null model has no 'encoded' input: every request fails, and the exit code says so
    rc = closed_loop.main(["--model", server["null"], "--url", f"localhost:{server['ports']['grpc']}",
                           "--metrics-url", f"localhost:{server['ports']['metrics']}", "--processes", "1",
                           "--duration", "1", "--warmup", "0.5", "--payload", "jpeg"])
    out = capsys.readouterr().out
    assert rc == 1 and "failures" in out and " 0 failures" not in out


@pytest.mark.integration
def test_raw_frames_over_cuda_shared_memory_need_a_gpu_and_say_so(server):
    import torch

    from loadtest import closed_loop

    if torch.cuda.is_available():
        pytest.skip("checks the no-GPU message; the GPU path is measured by make bench")
    args = closed_loop.parser().parse_args(
        ["--model", server["null"], "--url", f"localhost:{server['ports']['grpc']}", "--metrics-url",
         f"localhost:{server['ports']['metrics']}", "--processes", "1", "--concurrency", "2", "--duration", "1",
         "--warmup", "0", "--payload", "raw-cuda"])
    s = closed_loop.run(args)
    assert s["requests"] == 0 and s["failures"] == 1
    assert s["errors"][0].startswith("setup: raw-cuda needs PyTorch with a CUDA GPU"), s["errors"]


def test_stats_come_from_the_masters_csv_when_a_worker_left_an_empty_json(tmp_path):
    prefix = tmp_path / "m_u2"
    (tmp_path / "m_u2.json").write_text("[]")  # what a worker writes over the master's file
    (tmp_path / "m_u2_stats.csv").write_text(
        "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,"
        "Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,"
        "99.99%,100%\n"
        "grpc,m x1,31,1,2300,2230.0,1184.0,2340.3,1048576.0,0.83,0.0,2300,2300,2300,2300,2300,2300,2300,2400,2400,"
        "2400,2400\n"
        ",Aggregated,31,1,2300,2230.0,1184.0,2340.3,1048576.0,0.83,0.0,2300,2300,2300,2300,2300,2300,2300,2400,"
        "2400,2400,2400\n")
    s = read_stats(prefix, duration=40)
    assert s["requests"] == 31 and s["failures"] == 1 and s["p99_ms"] == 2400 and s["rps"] == 31 / 40


def test_make_help_names_the_variables_loadtest_and_sweep_read():
    """Issue 30, item 9: `make help` said loadtest takes USERS; it reads LOAD_USERS (USERS is the sweep's list)."""
    import re
    import subprocess

    from tests.conftest import ROOT

    text = subprocess.run(["make", "--no-print-directory", "help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60).stdout
    loadtest = next(ln for ln in text.splitlines() if ln.startswith("make loadtest"))
    sweep = next(ln for ln in text.splitlines() if ln.startswith("make sweep"))
    makefile = (ROOT / "Makefile").read_text()

    def recipe(target):
        return re.search(rf"^{target}:.*\n((?:\t.*\n)+)", makefile, re.M).group(1)

    for line, target in ((loadtest, "loadtest"), (sweep, "sweep")):
        named = set(re.findall(r"\b([A-Z][A-Z_]+)=", line))
        assert named, line
        assert all(f"$({v})" in recipe(target) for v in named), (line, named)
    assert "LOAD_USERS=" in loadtest and not re.search(r"\bUSERS=", loadtest.replace("LOAD_USERS=", ""))
