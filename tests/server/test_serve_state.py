"""`make stop` trusts nothing: a corrupt pid file, a server that exited and a pid reused by another process all
give one line and signal nothing."""
import json
import subprocess
import sys

from server.serve import recorded_server, write_pid
from tests.conftest import ROOT


def test_pid_file_names_one_process(tmp_path):
    path = tmp_path / "server.pid"
    assert recorded_server(path) == (None, "no server running")
    path.write_text("garbage")
    pid, why = recorded_server(path)
    assert pid is None and "unreadable" in why
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        write_pid(path, proc.pid)
        assert recorded_server(path) == (proc.pid, "")
        rec = json.loads(path.read_text())
        path.write_text(json.dumps({"pid": proc.pid, "start": rec["start"] - 1}))  # same pid, another process
        pid, why = recorded_server(path)
        assert pid is None and "another process" in why
    finally:
        proc.kill()
        proc.wait()
    write_pid(path, proc.pid)
    pid, why = recorded_server(path)
    assert pid is None and "exited" in why


def test_backend_stub_goes_into_the_project_not_site_packages(tmp_path):
    from server.serve import local_backends

    pkg = tmp_path / "pkg" / "backends" / "python"
    pkg.mkdir(parents=True)
    (pkg / "libtriton_python.so").write_bytes(b"lib")
    (pkg / "triton_python_backend_utils.py").write_text("x = 1\n")
    stub = tmp_path / "stubs" / "3.11" / "triton_python_backend_stub"
    stub.parent.mkdir(parents=True)
    stub.write_bytes(b"stub")
    before = sorted(p.name for p in pkg.iterdir())
    dest = local_backends(pkg.parent, stub, tmp_path / "project" / ".triton" / "backends")
    assert sorted(p.name for p in pkg.iterdir()) == before  # the installed package is left as it was
    mine = dest / "python"
    assert (mine / "libtriton_python.so").is_symlink() and (mine / "libtriton_python.so").read_bytes() == b"lib"
    assert (mine / "triton_python_backend_stub").read_bytes() == b"stub"
    assert (mine / "triton_python_backend_stub").resolve() == stub.resolve()  # its RPATH is $ORIGIN-relative
    assert local_backends(pkg.parent, stub, dest) == dest  # idempotent


def test_tritonserver_shim_has_no_absolute_paths():
    text = (ROOT / "server" / "tritonserver").read_text()
    assert str(ROOT) not in text and "/work" not in text
    assert "readlink -f" in text and 'exec "$bin/python" -m server.serve exec' in text
    assert "realpath --relative-to=$(BIN) server/tritonserver" in (ROOT / "Makefile").read_text()


def test_gpu_instance_models_are_left_out_without_a_gpu(tmp_path, monkeypatch):
    """Triton refuses a KIND_GPU instance group on a machine without a GPU, and a refused explicit load stops the
    server's start: such models (a TensorRT row's decode step, the GPU row) are named and left out instead."""
    from build.model_config import model_config, to_pbtxt
    from build.variants import PYTHON_ORT, TENSORRT, ServingVariant
    from server.serve import load_args

    for name, kind in (("cpu_row", PYTHON_ORT), ("gpu_row", TENSORRT)):
        (tmp_path / name / "1").mkdir(parents=True)
        cfg = model_config(ServingVariant(name, "segformer-b0-camvid", kind, size=(64, 64)), ["a"], [[0, 0, 0]])
        (tmp_path / name / "config.pbtxt").write_text(to_pbtxt(cfg))
    monkeypatch.setenv("SEGFORMER_ASSUME_GPU", "0")
    args, skipped = load_args(tmp_path, {"python", "tensorrt"})
    assert "--load-model=cpu_row" in args and "--load-model=gpu_row" not in args
    assert skipped == ["gpu_row (needs a GPU (KIND_GPU instances))"]
    monkeypatch.setenv("SEGFORMER_ASSUME_GPU", "1")
    args, skipped = load_args(tmp_path, {"python", "tensorrt"})
    assert "--load-model=gpu_row" in args and not skipped
