"""Rolling update of the single-host cluster (server.cluster reload): two real Triton replicas behind HAProxy 2.6, a
new version swapped in one replica at a time under paced HTTP + gRPC load through the proxy: no request fails,
the proxy always has a replica UP, every request sent after the roll is answered by the new version."""
import shutil
import threading
import time

import pytest

from build.repository import write_repository
from build.variants import PYTHON_NULL, ServingVariant
from client.policy import InputPolicy
from client.runners import TritonRunner
from bench.updates import corrupt_newest, stale_answers, under_load
from server.cluster import main as cluster_main
from server.cluster import reload_cluster, replica_states, start_cluster, stop_cluster
from server.reload import ReloadError
from tests.conftest import free_port

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("haproxy") is None,
                                 reason="haproxy is not installed (Debian: apt-get install haproxy; .ci/run does)")]
ROW = ServingVariant("null", "segformer-b0-camvid", PYTHON_NULL, size=(64, 64), max_batch=4)


def build(repo, force=False):
    res = write_repository([ROW], repo, force=force, log=lambda *_: None, cache_dir=repo.parent / "cache")
    assert res == {"null": "built"}, res


@pytest.fixture
def cluster(tmp_path):
    repo = tmp_path / "repo"
    build(repo)
    state = tmp_path / "cluster"
    info = start_cluster(repo, 2, free_port(), free_port(), state=state)
    with TritonRunner("null", f"localhost:{info['http']}") as r:
        frames = InputPolicy.for_model(r.info).frames(None, 2)
    yield {**info, "state": state, "repo": repo, "frames": frames,
           "targets": {"http": f"localhost:{info['http']}", "grpc": f"localhost:{info['grpc']}"}}
    stop_cluster(state)


class Watch:
    """Polls the proxy's view of the replicas while the roll runs: the states seen, and whether one was UP."""

    def __init__(self, state):
        self.state, self.seen, self.none_up, self.stop = state, set(), [], False
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop:
            for backend, servers in replica_states(self.state).items():
                self.seen |= {(backend, r, s) for r, s in servers.items()}
                if not any(st.startswith("UP") for st in servers.values()):
                    self.none_up.append(servers)
            time.sleep(0.05)


def test_rolling_update_under_load_fails_nothing_and_ends_on_the_new_version(cluster):
    lines, watch = [], Watch(cluster["state"])

    def roll():
        build(cluster["repo"], force=True)
        watch.thread.start()
        try:
            done = reload_cluster(cluster["state"], ["null"], log=lines.append)
        finally:
            watch.stop = True
        return {"replicas": [(r["replica"], r["serving"]) for r in done]}

    s = under_load(cluster["targets"], "null", cluster["frames"], rate=20, duration=10,
                   actions=[(3.0, "roll", roll)])
    print(s, lines)
    assert s["actions"][0]["error"] is None and s["actions"][0]["result"] == {"replicas": [("r0", 2), ("r1", 2)]}
    assert lines == ["r0: null: version 2 serving (was 1); loaded versions 1, 2",
                     "r1: null: version 2 serving (was 1); loaded versions 1, 2"]
    assert not watch.none_up  # the proxy always had a replica
    assert {(b, r) for b, r, st in watch.seen if st.startswith("DRAIN")} == {
        (b, r) for b in ("replicas_http", "replicas_grpc") for r in ("r0", "r1")}  # each drained in turn
    for protocol in ("http", "grpc"):
        p = s["protocols"][protocol]
        assert p["failures"] == 0 and p["requests"] >= 150, p  # paced at 20/s for 10 s
        assert p["answers_by_version"].get("1", 0) >= 30 and p["answers_by_version"].get("2", 0) >= 30, p
        assert stale_answers(s, protocol, "roll", "2") == 0, p
    assert all(st.startswith("UP") for servers in replica_states(cluster["state"]).values()
               for st in servers.values())


def test_a_broken_version_stops_the_roll_at_the_first_replica_which_goes_back_on_the_old_one(cluster, capsys):
    build(cluster["repo"], force=True)
    corrupt_newest(cluster["repo"] / "null")
    with pytest.raises(ReloadError, match=r"^r0: null: version 2 did not load \(.*\); version 1 keeps serving; .*"
                                          r"r0 is back on its old version and the replicas after it were not updated"):
        reload_cluster(cluster["state"], ["null"], log=lambda *_: None)
    assert all(st.startswith("UP") for servers in replica_states(cluster["state"]).values()
               for st in servers.values())
    for r in cluster["replicas"]:
        with TritonRunner("null", f"localhost:{r['grpc']}", "grpc") as t:
            t.infer(cluster["frames"][0][None])
            assert t.last_version == "1"
    capsys.readouterr()
    assert cluster_main(["reload", "--model", "null"]) == 2  # the default state: no cluster there
    assert capsys.readouterr().err.startswith("error: no cluster running")
