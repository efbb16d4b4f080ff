"""A second start while a server runs (issue 30, item 2): refused in one line naming what runs and how to stop it
or which ports to pick; the live server's pid file and admin key are left as they were; readiness is the started
process's own, never another server's answer on the same port."""
import os
import socket
import subprocess
import sys
import time

import pytest

from server import serve
from server import state as server_state
from server.serve import ServerError, port_in_use, preflight, recorded_server, start, stop_pid, wait_ready
from tests.conftest import ROOT, free_port, null_repository

pytestmark = pytest.mark.integration


def _ports():
    return [free_port(), free_port(), free_port()]


def test_second_start_is_refused_and_the_first_keeps_its_records(tmp_path, monkeypatch):
    repo = null_repository(tmp_path)
    state = tmp_path / "state"
    monkeypatch.setattr(serve, "STATE", state)  # as `make serve` / `make stop` see it
    monkeypatch.setattr(server_state, "STATE", state)
    ports = _ports()
    proc = start(repo, *ports, state=state)
    try:
        pid_file, key = (state / "server.pid").read_bytes(), (state / "admin-key").read_bytes()
        # the same state folder (a second `make serve`), any ports: the live server is named, with how to stop it
        with pytest.raises(ServerError, match=rf"already running \(pid {proc.pid}, HTTP 127.0.0.1:{ports[0]}.*"
                                              r"`make stop` ends it"):
            start(repo, *_ports(), state=state)
        # another state folder (`make demo`), the same ports: the port and its holder are named, free ports offered
        with pytest.raises(ServerError, match=rf"HTTP port {ports[0]} is already in use by the Triton `make serve` "
                                              rf"started \(pid {proc.pid} tritonserver; `make stop` ends it\): .*"
                                              r"HTTP_PORT=\d+ GRPC_PORT=\d+ METRICS_PORT=\d+"):
            start(repo, *ports, state=tmp_path / "demo")
        # a pid file gone (`make clean` while serving): the ports still tell
        with pytest.raises(ServerError, match=rf"gRPC port {ports[1]} is already in use"):
            start(repo, free_port(), ports[1], free_port(), state=tmp_path / "cleaned")
        assert not (tmp_path / "demo" / "server.pid").exists() and not (tmp_path / "cleaned").exists()
        assert (state / "server.pid").read_bytes() == pid_file and (state / "admin-key").read_bytes() == key
        assert proc.poll() is None and recorded_server(state / "server.pid")[0] == proc.pid
        assert serve.stop(state) == f"Triton stopped (pid {proc.pid})"  # `make stop` still stops the first
        proc.wait(timeout=10)
    finally:
        stop_pid(proc.pid)


def test_readiness_is_the_started_process_own(tmp_path):
    """A process that is alive while another server answers /v2/health/ready on its port is not ready: the
    restricted request with this start's admin key is refused by the other server."""
    repo = null_repository(tmp_path)
    ports = _ports()
    first = start(repo, *ports, state=tmp_path / "first")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with pytest.raises(ServerError, match="not ready after 3 s"):
            wait_ready(ports[0], sleeper, tmp_path / "none.log", timeout=3, key="not-the-first-servers-key")
        key = (tmp_path / "first" / "admin-key").read_text().strip()
        wait_ready(ports[0], first, tmp_path / "first" / "server.log", timeout=10, key=key)  # its own: ready
    finally:
        sleeper.kill()
        sleeper.wait()
        stop_pid(first.pid)


def test_port_taken_by_anything_is_named_before_starting(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert port_in_use("127.0.0.1", port)
        with pytest.raises(ServerError) as e:
            preflight(tmp_path, "127.0.0.1", free_port(), free_port(), port)
        assert f"metrics port {port} is already in use by pid {os.getpid()}" in str(e.value)
        assert "\n" not in str(e.value)
    with pytest.raises(ServerError, match="the ports must differ"):
        preflight(tmp_path, "127.0.0.1", port, port, free_port())


def test_make_serve_twice_and_demo_beside_it(tmp_path):
    """The Makefile path end to end: `make serve` twice, `make demo` beside it, `make stop` stops the first."""
    repo = null_repository(tmp_path)
    ports = _ports()
    env = {**os.environ, "MAKEFLAGS": ""}
    mk = ["make", "--no-print-directory", "-o", ".venv/.installed", f"REPO={repo}", f"HTTP_PORT={ports[0]}",
          f"GRPC_PORT={ports[1]}", f"METRICS_PORT={ports[2]}"]
    state = ROOT / ".triton"
    if recorded_server(state / "server.pid")[0] is not None:
        pytest.skip("a `make serve` server of this checkout is running")
    first = subprocess.run(mk + ["serve"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr
    pid = recorded_server(state / "server.pid")[0]
    try:
        records = (state / "server.pid").read_bytes(), (state / "admin-key").read_bytes()
        second = subprocess.run(mk + ["serve"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode != 0 and "Triton ready" not in second.stdout
        errors = [ln for ln in second.stderr.splitlines() if ln.startswith("error:")]
        assert errors == [f"error: Triton is already running (pid {pid}, HTTP 127.0.0.1:{ports[0]}, gRPC "
                          f"127.0.0.1:{ports[1]}, metrics 127.0.0.1:{ports[2]}): `make stop` ends it"], second.stderr
        demo = subprocess.run(mk + ["demo", "MODEL=null", f"OUT={tmp_path / 'out'}"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
        assert demo.returncode != 0 and "stage timings" not in demo.stdout
        assert f"error: HTTP port {ports[0]} is already in use by the Triton `make serve` started (pid {pid}" \
            in demo.stderr, demo.stderr
        assert ((state / "server.pid").read_bytes(), (state / "admin-key").read_bytes()) == records
        stopped = subprocess.run(mk + ["stop"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert f"Triton stopped (pid {pid})" in stopped.stdout
        for _ in range(50):
            if not port_in_use("127.0.0.1", ports[0]):
                break
            time.sleep(0.2)
        assert not port_in_use("127.0.0.1", ports[0])
    finally:
        if pid is not None:
            stop_pid(pid)
