"""Triton killed (SIGKILL) under load: every request is accounted for, failures say the server is gone within a
second, and starting it again recovers without cleaning anything by hand."""
import os
import signal
import threading
import time

import numpy as np
import pytest

from build.repository import write_repository
from build.variants import PYTHON_NULL, ServingVariant
from client.runners import RunnerError, TritonRunner
from loadtest.soak import paced, summarise
from server.serve import recorded_server, start, stop_pid
from tests.conftest import free_port

pytestmark = pytest.mark.integration
SIZE = (64, 64)


def test_kill_under_load_is_reported_and_a_restart_recovers(tmp_path):
    repo = tmp_path / "repo"
    write_repository([ServingVariant("null", "segformer-b0-camvid", PYTHON_NULL, size=SIZE, max_batch=4)], repo,
                     log=lambda *_: None, cache_dir=tmp_path / "cache")
    ports = [free_port(), free_port(), free_port()]
    state = tmp_path / "state"
    proc = start(repo, *ports, state=state)
    url = f"localhost:{ports[1]}"
    frames = [np.zeros((*SIZE, 3), np.uint8)]
    result = {}
    t = threading.Thread(target=lambda: result.update(zip(("reqs", "samples"), paced(
        url, "null", frames, None, 2, 6.0, timeout=5.0))))
    t0 = time.perf_counter()
    t.start()
    time.sleep(3.0)
    os.kill(proc.pid, signal.SIGKILL)
    killed_at = time.perf_counter() - t0 - 0.5  # paced() starts its clock 0.5 s after the call
    t.join(timeout=30)
    assert not t.is_alive(), "the load generator hung after the kill"
    reqs = result["reqs"]
    ok = [r for r in reqs if r[2] is None]
    failed = [r for r in reqs if r[2] is not None]
    assert ok and failed and len(ok) + len(failed) == len(reqs)
    assert all(r[0] < killed_at + 0.2 for r in ok)  # nothing succeeded after the kill
    assert min(r[0] + r[1] / 1e3 for r in failed) - killed_at < 1.0  # the first failure came within a second
    assert {r[2] for r in failed} == {"the server is gone (connection refused or closed): restart it with `make serve`"}
    assert summarise(reqs, [], 6.0, 0.0)["failures"] == len(failed)  # the summary counts every one
    proc.wait(timeout=10)
    with pytest.raises(RunnerError, match="cannot reach Triton"):
        TritonRunner("null", f"localhost:{ports[0]}").activate()
    # `make serve` again: the stale pid file is recognised, the ports are free, the server comes back
    assert recorded_server(state / "server.pid")[0] is None
    proc2 = start(repo, *ports, state=state)
    try:
        with TritonRunner("null", url, "grpc") as r:
            assert r.infer(np.zeros((1, *SIZE, 3), np.uint8)).shape == (1, *SIZE)
    finally:
        stop_pid(proc2.pid)
