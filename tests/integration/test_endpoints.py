"""Clients over several servers (`--url a,b`): requests spread round robin, a server killed mid-run is dropped
with one warning and no request is lost; with none left, one error names each."""
import os
import signal

import numpy as np
import pytest

from client.runners import MultiRunner, triton_runner
from client.runners import RunnerError, TritonRunner, served_models
from client.segment import main as segment_main
from server.serve import start, stop_pid
from tests.conftest import ROOT, free_port, null_repository

pytestmark = pytest.mark.integration
SIZE = (64, 64)


@pytest.fixture
def two_servers(tmp_path):
    repo = null_repository(tmp_path, SIZE)
    servers = []
    for k in range(2):
        ports = [free_port(), free_port(), free_port()]
        servers.append((start(repo, *ports, state=tmp_path / f"state{k}"), ports))
    yield servers
    for proc, _ in servers:
        stop_pid(proc.pid)


def _count(port) -> int:
    with TritonRunner("null", f"localhost:{port}", "grpc") as r:
        stats = r.client.get_inference_statistics("null", as_json=True)
        return int(stats["model_stats"][0].get("inference_count", 0))


def test_round_robin_failover_and_none_left(two_servers, capsys):
    (a, pa), (b, pb) = two_servers
    urls = f"localhost:{pa[1]},localhost:{pb[1]}"
    notes = []
    r = MultiRunner("null", urls.split(","), "grpc", 10.0, note=notes.append)
    x = np.zeros((1, *SIZE, 3), np.uint8)
    r.activate()
    for _ in range(10):
        assert r.infer(x).shape == (1, *SIZE)
    assert _count(pa[1]) == 5 and _count(pb[1]) == 5  # round robin
    os.kill(b.pid, signal.SIGKILL)
    b.wait(timeout=10)
    for _ in range(10):  # every request still answered: the one that hit the dead server went to the live one
        assert r.infer(x).shape == (1, *SIZE)
    assert len(notes) == 1 and f"localhost:{pb[1]} dropped" in notes[0] and "server is gone" in notes[0]
    assert _count(pa[1]) == 15
    assert served_models(urls, "grpc") == ["null"]  # listing skips the dead one
    os.kill(a.pid, signal.SIGKILL)
    a.wait(timeout=10)
    with pytest.raises(RunnerError, match="no Triton server left: ") as info:
        r.infer(x)
    for port in (pa[1], pb[1]):  # each named, with why
        assert f"localhost:{port}: the server is gone" in str(info.value)
    r.deactivate()


def test_segment_cli_takes_several_urls(two_servers, tmp_path, capsys):
    (a, pa), (b, pb) = two_servers
    sample = ROOT / "samples" / "camvid_0001TP_008550.jpg"
    urls = f"localhost:{pa[0]},localhost:{pb[0]}"
    assert isinstance(triton_runner("null", urls), MultiRunner)
    assert segment_main([str(sample), str(sample), "--url", urls, "--model", "null", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "camvid_0001TP_008550_labels.png").is_file()


def test_closed_loop_over_two_servers_moves_on_when_one_is_killed(two_servers):
    import threading
    import time

    from loadtest.closed_loop import parser, run

    (a, pa), (b, pb) = two_servers
    args = parser().parse_args(["--model", "null", "--url", f"localhost:{pa[1]},localhost:{pb[1]}",
                                "--metrics-url", f"localhost:{pa[2]}", "--processes", "1", "--concurrency", "2",
                                "--duration", "8", "--warmup", "0", "--payload", "raw", "--timeout", "5"])
    box = {}
    t = threading.Thread(target=lambda: box.update(summary=run(args)))
    t.start()
    time.sleep(6.0)  # the load processes start in ~2-3 s; kill B mid-run
    os.kill(b.pid, signal.SIGKILL)
    t.join(timeout=60)
    s = box["summary"]
    assert s["endpoints"] == [f"localhost:{pa[1]}", f"localhost:{pb[1]}"]
    assert s["failures"] >= 1 and s["requests"] > 50  # B's thread failed once per kill, then went on with A
    assert any(f"localhost:{pb[1]}: the server is gone" in e for e in s["errors"]), s["errors"]
    assert _count(pa[1]) > _count_safe(pb[1])  # A carried on after B was gone


def _count_safe(port) -> int:
    try:
        return _count(port)
    except RunnerError:
        return 0


def _kill_later(proc, delay: float):
    import threading

    def kill():
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    t = threading.Timer(delay, kill)
    t.start()
    return t


def test_soak_over_two_servers_counts_and_names_the_failures_of_the_killed_one(two_servers, tmp_path):
    import json

    from loadtest.soak import main as soak_main

    (a, pa), (b, pb) = two_servers
    t = _kill_later(b, 3.0)
    rc = soak_main(["--model", "null", "--url", f"localhost:{pa[1]},localhost:{pb[1]}", "--server-pid",
                    f"{a.pid},{b.pid}", "--rate", "40", "--in-flight", "2", "--duration", "6", "--warmup", "1",
                    "--sample", "1", "--timeout", "5", "--out", str(tmp_path / "soak")])
    t.join()
    res = json.loads((tmp_path / "soak" / "soak.json").read_text())
    s = res["summary"]
    assert rc == 1 and res["endpoints"] == [f"localhost:{pa[1]}", f"localhost:{pb[1]}"]
    assert 1 <= s["failures"] <= 2, s  # the thread on B fails once, then moves on to A
    assert all(e.startswith(f"localhost:{pb[1]}: the server is gone") for e in s["errors"]), s["errors"]
    assert s["requests"] >= 200 and s["requests"] - s["failures"] >= 200  # paced at 40/s for 6 s, none lost
    assert _count(pa[1]) > 150 and res["samples"][0]["rss_mb"] > 0


def test_soak_with_several_servers_needs_their_pids(two_servers, capsys):
    from loadtest.soak import main as soak_main

    (a, pa), (b, pb) = two_servers
    assert soak_main(["--model", "null", "--url", f"localhost:{pa[1]},localhost:{pb[1]}", "--rate", "5",
                      "--duration", "1"]) == 2
    assert "--server-pid PID1,PID2" in capsys.readouterr().err


def test_locust_users_spread_over_two_servers_and_move_on(two_servers, tmp_path):
    from loadtest.run import run as locust_run

    (a, pa), (b, pb) = two_servers
    t = _kill_later(b, 9.0)  # locust takes a few seconds to start its users
    s = locust_run("null", 4, 14, tmp_path / "locust", "grpc", f"localhost:{pa[1]},localhost:{pb[1]}",
                   f"localhost:{pa[2]}", processes=1)
    t.join()
    assert s["requests"] > 200, s
    assert 1 <= s["failures"] <= 2, s  # the two users on B: one failed request each, then on to A
    failures = (tmp_path / "locust" / "null_u4_failures.csv").read_text()
    assert f"localhost:{pb[1]}: the server is gone" in failures
    assert _count(pa[1]) > 100
