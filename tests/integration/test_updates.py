"""Zero-downtime model updates on one real Triton: a new version built by `make repo` and swapped in by `reload`
under paced HTTP + gRPC load fails no request and answers every request sent after the switch from the new
version; a broken new version fails to load, fails no request and leaves the old version serving."""
import re
import urllib.request

import pytest

from build.repository import write_repository
from build.variants import PYTHON_NULL, ServingVariant
from client.policy import InputPolicy
from client.runners import TritonRunner
from client.segment import main as segment_main
from bench.updates import corrupt_newest, stale_answers, under_load
from server.reload import ReloadError, reload_server
from server.serve import main as serve_main
from server.serve import start, stop_pid
from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.integration
ROW = ServingVariant("null", "segformer-b0-camvid", PYTHON_NULL, size=(64, 64), max_batch=4)
SAMPLE = ROOT / "samples" / "camvid_0001TP_008550.jpg"


@pytest.fixture
def served(tmp_path):
    repo = tmp_path / "repo"
    build(repo)
    ports = [free_port() for _ in range(3)]
    proc = start(repo, *ports, state=tmp_path / "state")
    with TritonRunner("null", f"localhost:{ports[0]}") as r:
        frames = InputPolicy.for_model(r.info).frames(None, 2)
    yield {"repo": repo, "state": tmp_path / "state", "frames": frames,
           "targets": {"http": f"localhost:{ports[0]}", "grpc": f"localhost:{ports[1]}"}, "http": ports[0]}
    stop_pid(proc.pid)


def build(repo, force=False):
    res = write_repository([ROW], repo, force=force, log=lambda *_: None, cache_dir=repo.parent / "cache")
    assert res == {"null": "built"}, res


def test_reload_under_load_fails_nothing_and_new_requests_get_the_new_version(served):
    def new_version():
        build(served["repo"], force=True)
        return {"serving": reload_server(served["state"], ["null"], log=lambda *_: None)[0]["serving"]}

    s = under_load(served["targets"], "null", served["frames"], rate=25, duration=8,
                   actions=[(3.0, "reload", new_version)])
    print(s)
    assert s["actions"][0]["error"] is None and s["actions"][0]["result"] == {"serving": 2}
    for protocol in ("http", "grpc"):
        p = s["protocols"][protocol]
        assert p["failures"] == 0 and p["requests"] >= 150, p  # paced at 25/s for 8 s
        before, after = p["windows"]
        assert before["answers_by_version"].get("1", 0) >= 40, p  # version 1 answered until the switch
        assert after["answers_by_version"].get("2", 0) >= 40, p
        assert stale_answers(s, protocol, "reload", "2") == 0, p  # every request sent after it: version 2


def test_a_broken_new_version_fails_to_load_and_the_old_one_keeps_serving(served, capsys):
    def broken_version():
        build(served["repo"], force=True)
        corrupt_newest(served["repo"] / "null")
        return reload_server(served["state"], ["null"], log=lambda *_: None)

    s = under_load(served["targets"], "null", served["frames"], rate=25, duration=7,
                   actions=[(3.0, "broken", broken_version)])
    print(s)
    err = s["actions"][0]["error"]
    assert re.match(r"null: version 2 did not load \(.*SyntaxError.*\); version 1 keeps serving; fix or remove "
                    r".*/null/2 and reload again$", err), err
    for protocol in ("http", "grpc"):
        p = s["protocols"][protocol]
        assert p["failures"] == 0 and p["requests"] >= 130, p
        assert set(p["answers_by_version"]) == {"1"}, p  # nothing ever answered from the broken version
    # the command line says it in one line, exit 2
    capsys.readouterr()
    assert serve_main(["reload", "--state", str(served["state"]), "--model", "null"]) == 2
    out = capsys.readouterr()
    assert out.err.count("\n") == 1 and out.err.startswith("error: null: version 2 did not load ("), out.err
    with TritonRunner("null", served["targets"]["grpc"], "grpc") as r:
        r.infer(served["frames"][0][None])
        assert r.last_version == "1"
    # the server stays ready (Triton's strict readiness would say no until a restart: servers start without it)
    with urllib.request.urlopen(f"http://127.0.0.1:{served['http']}/v2/health/ready", timeout=10) as resp:
        assert resp.status == 200


def test_segment_prints_the_answering_version_and_the_cli_reloads_every_loaded_model(served, tmp_path, capsys):
    url = served["targets"]["http"]
    assert segment_main([str(SAMPLE), "--url", url, "--model", "null", "--out", str(tmp_path / "o")]) == 0
    assert "-> null version 1 " in capsys.readouterr().out
    assert serve_main(["reload", "--state", str(served["state"])]) == 0  # nothing new: unchanged
    assert capsys.readouterr().out == "null: version 1 serving (unchanged)\n"
    build(served["repo"], force=True)
    assert serve_main(["reload", "--state", str(served["state"])]) == 0
    assert capsys.readouterr().out == "null: version 2 serving (was 1); loaded versions 1, 2\n"
    for protocol, u in served["targets"].items():
        assert segment_main([str(SAMPLE), "--url", u, "--protocol", protocol, "--model", "null",
                             "--out", str(tmp_path / "o")]) == 0
        assert "-> null version 2 " in capsys.readouterr().out


def test_reload_without_a_server_or_a_known_model_says_why(served, tmp_path, capsys):
    assert serve_main(["reload", "--state", str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err.startswith("error: no Triton running (state ")
    with pytest.raises(ReloadError, match=r"^nope is not in the server's model repository \(.*/repo\): build it "
                                          r"with `make repo VARIANTS=nope`"):
        reload_server(served["state"], ["nope"], log=lambda *_: None)


def test_the_results_run_counts_what_clients_saw(tmp_path, capsys):
    import json

    from bench.updates import main as updates_main

    out = tmp_path / "updates_cpu"
    assert updates_main(["--row", "null", "--duration", "8", "--rate", "15", "--reload-at", "2", "--broken-at", "5",
                         "--out", str(out)]) == 0
    res = json.loads(out.with_suffix(".json").read_text())
    s = res["summary"]
    assert s["failures"] == 0 and s["requests"] >= 200 and res["stale"] == 0, s
    assert s["actions"][0]["result"] == {"serving": 2} and "version 3 did not load" in s["actions"][1]["error"]
    assert set(s["protocols"]) == {"http", "grpc"}
    assert "| grpc | " in out.with_suffix(".md").read_text()
