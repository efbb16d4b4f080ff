"""The single-host cluster stand-in (server.cluster): three real Triton replicas behind HAProxy 2.6. Requests
spread over the replicas; one replica SIGKILLed under load is taken out by the health checks, the clients
report the requests it failed and the rest go on; with every replica gone the client names the proxy's 503."""
import json
import os
import shutil
import signal
import threading
import time

import pytest

from client.runners import PROXY_FAILED, TritonRunner
from client.segment import main as segment_main
from server.cluster import replica_states, start_cluster, stop_cluster
from tests.conftest import ROOT, free_port, null_repository

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("haproxy") is None,
                                 reason="haproxy is not installed (Debian: apt-get install haproxy; .ci/run does)")]
SIZE = (64, 64)


@pytest.fixture
def cluster(tmp_path):
    repo = null_repository(tmp_path, SIZE)
    state = tmp_path / "cluster"
    info = start_cluster(repo, 3, free_port(), free_port(), state=state)
    info["state"] = state
    yield info
    stop_cluster(state)


def _count(replica) -> int:
    with TritonRunner("null", f"localhost:{replica['grpc']}", "grpc") as r:
        stats = r.client.get_inference_statistics("null", as_json=True)
        return int(stats["model_stats"][0].get("inference_count", 0))


def _wait_state(state, replica, want, timeout=10.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        states = replica_states(state)
        if all(s[replica].startswith(want) for s in states.values()):
            return states
        time.sleep(0.1)
    raise AssertionError(f"{replica} never {want}: {replica_states(state)}")


def test_requests_spread_over_the_replicas(cluster):
    sample = ROOT / "samples" / "camvid_0001TP_008550.jpg"
    for proto, port in (("http", cluster["http"]), ("grpc", cluster["grpc"])):
        with TritonRunner("null", f"localhost:{port}", proto) as r:
            import numpy as np

            for _ in range(12):
                assert r.infer(np.zeros((1, *SIZE, 3), np.uint8)).shape == (1, *SIZE)
    counts = [_count(r) for r in cluster["replicas"]]
    assert sum(counts) == 24 and min(counts) >= 4, counts  # round robin, HTTP and gRPC each balanced per request
    assert segment_main([str(sample), "--url", f"localhost:{cluster['http']}", "--model", "null",
                         "--out", str(cluster["state"] / "out")]) == 0


def test_a_replica_killed_under_load_is_routed_around_and_its_failures_reported(cluster):
    from loadtest.closed_loop import parser, run

    victim, others = cluster["replicas"][1], [cluster["replicas"][0], cluster["replicas"][2]]
    args = parser().parse_args(["--model", "null", "--url", f"localhost:{cluster['grpc']}", "--metrics-url",
                                "localhost:1", "--processes", "1", "--concurrency", "4", "--duration", "9",
                                "--warmup", "0", "--payload", "raw", "--output", "wire", "--timeout", "5"])
    box = {}
    t = threading.Thread(target=lambda: box.update(summary=run(args)))
    t.start()
    time.sleep(5.0)  # the load process starts its loop ~2 s in: kill mid-run
    os.kill(victim["pid"], signal.SIGKILL)
    killed_at = [_count(r) for r in others]
    states = _wait_state(cluster["state"], victim["name"], "DOWN", timeout=5.0)
    assert all(s[o["name"]] == "UP" for s in states.values() for o in others)
    t.join(timeout=60)
    s = box["summary"]
    print(f"through the proxy: {s['requests']} requests ok, {s['failures']} failed: {s['errors']}")
    assert s["requests"] > 300
    # the requests in flight on the killed replica failed, each one counted and reported; no more than in flight
    assert 0 <= s["failures"] <= 4, s
    if s["failures"]:
        assert all(any(PROXY_FAILED[k] in e for k in ("502", "reset")) for e in s["errors"]), s["errors"]
    after = [_count(r) for r in others]
    assert all(b > a + 50 for a, b in zip(killed_at, after)), (killed_at, after)  # the others carried on


def test_with_every_replica_gone_the_client_names_the_proxy_answer(cluster, capsys):
    for r in cluster["replicas"]:
        os.kill(r["pid"], signal.SIGKILL)
    for r in cluster["replicas"]:
        _wait_state(cluster["state"], r["name"], "DOWN", timeout=5.0)
    sample = ROOT / "samples" / "camvid_0001TP_008550.jpg"
    for proto, port in (("http", cluster["http"]), ("grpc", cluster["grpc"])):
        rc = segment_main([str(sample), "--url", f"localhost:{port}", "--protocol", proto, "--model", "null",
                           "--out", str(cluster["state"] / "out")])
        err = capsys.readouterr().err
        assert rc == 2 and PROXY_FAILED["503"] in err, err
    assert json.loads((cluster["state"] / "cluster.json").read_text())["replicas"][0]["name"] == "r0"
