"""`make repo` interrupted (SIGINT, SIGKILL) or run twice at once: the previous model directory survives, the
next run completes, and two writers never interleave."""
import json
import os
import signal
import subprocess
import sys
import time

from build.repository import _restore_interrupted, main as repository_main, repository_lock
from tests.conftest import ROOT

BUILD = """
import sys
from pathlib import Path
from build.repository import write_repository
from build.variants import PYTHON_ORT, ServingVariant
repo, cache = Path(sys.argv[1]), Path(sys.argv[2])
v = ServingVariant("seg_b0", "segformer-b0-camvid", PYTHON_ORT, size=(256, 320), max_batch=2)
print(write_repository([v], repo, cache_dir=cache, log=print))
"""


def _previous(repo):
    old = repo / "seg_b0"
    (old / "1").mkdir(parents=True)
    (old / "1" / "model.onnx").write_bytes(b"the previous model")
    (old / "build.json").write_text(json.dumps({"recipe": "an older recipe"}))
    return old


def _interrupt(tmp_path, sig):
    repo = tmp_path / "repo"
    old = _previous(repo)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", BUILD, str(repo), str(tmp_path / "cache")], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    staging = tmp_path / ".repo.staging"
    t0 = time.time()
    while not any(staging.glob("seg_b0.*")) and time.time() - t0 < 120 and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the build ended before it could be interrupted"
    # at once: the staging folder exists until the build's last rename, so the build is in progress now (a fixed
    # sleep here let a fast machine finish the whole build first, 2026-11-28)
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    assert proc.returncode != 0, "the build finished before the signal reached it"
    assert (old / "1" / "model.onnx").read_bytes() == b"the previous model"  # untouched
    assert sorted(p.name for p in repo.iterdir()) == ["seg_b0"]
    return repo


def test_sigint_mid_build_keeps_the_previous_directory(tmp_path):
    _interrupt(tmp_path, signal.SIGINT)


def test_sigkill_mid_build_keeps_the_previous_directory_and_the_next_run_completes(tmp_path, capsys):
    repo = _interrupt(tmp_path, signal.SIGKILL)
    # the next make repo (here: the null row) completes and cleans the killed run's staging folder
    assert repository_main(["--variants", "segformer_null", "--out", str(repo)]) == 0
    assert (repo / "segformer_null" / "config.pbtxt").is_file()
    assert (repo / "seg_b0" / "1" / "model.onnx").read_bytes() == b"the previous model"
    assert not (tmp_path / ".repo.staging").exists()


def test_a_kill_between_the_two_renames_is_repaired_by_the_next_run(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    aside = tmp_path / ".repo.staging" / "seg_b0.old.4242"
    (aside / "1").mkdir(parents=True)
    (aside / "1" / "model.onnx").write_bytes(b"the previous model")
    _restore_interrupted(repo)
    assert (repo / "seg_b0" / "1" / "model.onnx").read_bytes() == b"the previous model"


def test_a_second_writer_stops_with_a_message(tmp_path, capsys):
    repo = tmp_path / "repo"
    with repository_lock(repo):
        assert repository_main(["--variants", "segformer_null", "--out", str(repo)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: another `make repo` (pid ") and str(os.getpid()) in err
    assert not (repo / "segformer_null").exists()
    assert repository_main(["--variants", "segformer_null", "--out", str(repo)]) == 0  # lock released
