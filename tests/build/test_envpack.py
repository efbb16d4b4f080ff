"""Packed environments for stock NGC Triton: the packages come from the backend records, the tarball points at the
image's Python and unpacks into an environment that imports every row's runtime with a clean interpreter of the
same version, and Triton 2.51 (NGC 24.10's) with the Python 3.10 stub, as in the NGC image, loads the python rows
and their JPEG ensembles from the NGC repository and serves the labels the raw path gives."""
import shutil
import subprocess
import tarfile
import time
import urllib.request

import numpy as np
import pytest

from build import envpack
from build.backends import ONNXRUNTIME, OPENVINO, PYTHON_DECODE, PYTHON_NULL, PYTHON_ORT, PYTHON_OV


def test_the_records_name_the_packages_and_the_pins_hold_them():
    assert envpack.requirements([PYTHON_ORT, PYTHON_DECODE]) == ["numpy==1.26.4", "onnxruntime==1.23.2",
                                                                "pillow==12.3.0"]
    assert envpack.requirements([PYTHON_OV]) == ["numpy==1.26.4", "openvino==2026.4.1"]
    assert envpack.requirements([ONNXRUNTIME, OPENVINO, PYTHON_NULL]) == []  # stock backends, numpy in the image


def test_a_wrong_interpreter_is_named(tmp_path):
    with pytest.raises(envpack.EnvPackError, match="no Python 3.10 interpreter"):
        envpack.find_python("3.10", shutil.which("python3.11") or "/bin/false")


@pytest.fixture(scope="module")
def python310():
    try:
        return envpack.find_python("3.10")
    except envpack.EnvPackError:
        pytest.skip("needs a Python 3.10 interpreter on this machine (pyenv's or python3.10 on PATH)")


@pytest.fixture(scope="module")
def tiny_repo(tiny_weights, tmp_path_factory):
    from build.repository import write_repository
    from build.variants import ServingVariant, jpeg_rows

    tmp = tmp_path_factory.mktemp("envpack")
    w = str(tiny_weights)
    rows = [ServingVariant("tiny", w, PYTHON_ORT, size=(64, 96), max_batch=2),
            ServingVariant("tinydyn", w, PYTHON_ORT, size=(128, 128), size_range=((64, 64), (256, 256)),
                           max_batch=2)]
    rows += [j for r in rows for j in jpeg_rows(r)]
    assert set(write_repository(rows, tmp / "repo", log=lambda *_: None, cache_dir=tmp / "c").values()) == {"built"}
    return tmp / "repo"


@pytest.mark.integration
def test_the_ngc_pack_points_at_the_images_python_and_imports_every_runtime(python310, tiny_repo):
    tarball = envpack.ngc_pack(tiny_repo, python310, envpack.NGC_PREFIX, log=lambda *_: None)
    with tarfile.open(tarball) as tar:
        links = {m.name: m.linkname for m in tar.getmembers() if m.issym()}
        cfg = tar.extractfile("pyvenv.cfg").read().decode()
        assert "bin/activate" in tar.getnames()
    assert links["bin/python3.10"] == "/usr/bin/python3.10" and links["bin/python3"] == "python3.10"
    assert cfg.startswith("home = /usr/bin\n") and "include-system-site-packages = false" in cfg
    kinds = {PYTHON_ORT, PYTHON_DECODE}
    report = envpack.check(tarball, python310, ["numpy", "onnxruntime", "PIL"], envpack.runtime_files(kinds))
    assert report.startswith("3.10.")
    with pytest.raises(envpack.EnvPackError, match="does not import"):
        envpack.check(tarball, python310, ["openvino"], [])  # not in this pack


def _ngc_like_server(repo, python310, tmp, port):
    """The pip-shipped tritonserver (2.51, NGC 24.10's) with the Python 3.10 stub and nothing but Python 3.10's own
    interpreter (no packages) on PATH: what the python backend finds in the NGC image, less numpy."""
    import server.serve as serve

    binary = serve.find_tritonserver()
    root = binary.parent.parent
    stub = root / "python_backend_stubs" / "3.10" / "triton_python_backend_stub"
    backends = serve.local_backends(root / "backends", stub, tmp / "backends")
    env = {"PATH": f"{python310.parent}:/usr/bin:/bin", "LD_LIBRARY_PATH": str(python310.parent.parent / "lib"),
           "HOME": str(tmp)}
    log = open(tmp / "server.log", "wb")
    proc = subprocess.Popen([str(binary), f"--model-repository={repo}", f"--backend-directory={backends}",
                             f"--http-port={port}", f"--grpc-port={port + 1}", f"--metrics-port={port + 2}",
                             "--http-address=127.0.0.1", "--grpc-address=127.0.0.1"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    for _ in range(180):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(1)
    serve.stop_pid(proc.pid)
    raise AssertionError((tmp / "server.log").read_text()[-3000:])


@pytest.mark.integration
def test_triton_with_the_310_stub_loads_the_ngc_repository(python310, tiny_repo, tmp_path):
    from client.policy import InputPolicy
    from client.preprocess import sample_images
    from client.runners import TritonRunner
    from client.segment import encoded_labels
    from server.serve import stop_pid
    from tests.conftest import free_port

    assert subprocess.run([python310, "-c", "import numpy"], capture_output=True).returncode != 0, \
        "this test needs a bare Python 3.10: numpy must come from the pack"
    # a pack for this machine's Python 3.10 (the NGC one points at /usr/bin/python3.10, which is not here)
    tarball = envpack.ngc_pack(tiny_repo, python310, str(python310.parent.parent), log=lambda *_: None)
    ngc = tmp_path / "model_repository_ngc"
    envpack.write_ngc_repository(tiny_repo, ngc, tarball, log=lambda *_: None)
    proc = _ngc_like_server(ngc, python310, tmp_path, free_port())
    port = int([a for a in proc.args if a.startswith("--http-port=")][0].split("=")[1])
    try:
        import io

        from PIL import Image

        image = sample_images((360, 480), 1)[0]
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        for row in ("tiny", "tinydyn"):
            with TritonRunner(row, f"127.0.0.1:{port}") as raw, \
                    TritonRunner(row + "_jpeg", f"127.0.0.1:{port}") as enc:
                want = InputPolicy.for_model(raw.info).predict(image, raw)
                assert np.array_equal(encoded_labels(enc, buf.getvalue(), image.shape[:2]), want)
    finally:
        stop_pid(proc.pid)
