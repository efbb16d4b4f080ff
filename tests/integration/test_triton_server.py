"""Starts the real Triton (pip-shipped, python backend) on free ports and segments through it."""
import numpy as np
import pytest

from client.preprocess import load_image, resize_image
from client.runners import OnnxRunner, RunnerError, TritonRunner
from client.segment import main as segment_main
from tests.conftest import ROOT, SMALL_SIZE as SIZE, free_port

pytestmark = pytest.mark.integration
SAMPLE = ROOT / "samples" / "camvid_0001TP_008550.jpg"


def _url(server, protocol):
    return f"localhost:{server['ports'][protocol]}"


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_labels_equal_local_onnxruntime(server, protocol):
    x = np.stack([resize_image(load_image(SAMPLE), SIZE), resize_image(load_image(SAMPLE)[::-1].copy(), SIZE)])
    local = OnnxRunner(server["repo"] / server["model"] / "1" / "model.onnx", SIZE).infer(x)
    with TritonRunner(server["model"], _url(server, protocol), protocol) as r:
        assert r.info.size == SIZE and len(r.info.classes) == 19
        served = r.infer(x)
    assert served.dtype == np.uint8 and served.shape == (2, *SIZE)
    assert np.array_equal(served, local)
    # real street scene: road, building, sky and car are all found
    assert {0, 2, 10, 13} <= set(np.unique(served[0]).tolist())


def test_bad_requests_get_errors_and_the_server_stays_up(server):
    import tritonclient.http as http

    c = http.InferenceServerClient(_url(server, "http"))
    from tritonclient.utils import InferenceServerException

    cases = [(np.zeros((1, *SIZE, 3), np.float32), "FP32", r"data-type|datatype|TYPE_FP32|FP32"),
             (np.zeros((1, 10, 10, 3), np.uint8), "UINT8", r"shape")]
    for arr, dtype, says in cases:
        inp = http.InferInput("images", list(arr.shape), dtype)
        inp.set_data_from_numpy(arr)
        with pytest.raises(InferenceServerException, match=says):  # Triton's own refusal, naming the problem
            c.infer(server["model"], [inp])
        assert c.is_server_live() and c.is_model_ready(server["model"])  # after each bad request
    good = http.InferInput("images", [1, *SIZE, 3], "UINT8")
    good.set_data_from_numpy(np.zeros((1, *SIZE, 3), np.uint8))
    assert c.infer(server["model"], [good]).as_numpy("labels").shape == (1, *SIZE)  # and the next one works
    with TritonRunner(server["model"], _url(server, "http")) as r:
        with pytest.raises(RunnerError, match="takes uint8"):
            r.infer(np.zeros((1, 8, 8, 3), np.uint8))


def test_unknown_model_and_server_down_are_one_line_errors(server, capsys):
    with pytest.raises(RunnerError, match="served models: seg_b0_small"):
        TritonRunner("nope", _url(server, "http")).activate()
    assert segment_main([str(SAMPLE), "--url", f"localhost:{free_port()}"]) == 2
    assert "cannot reach Triton" in capsys.readouterr().err


def test_segment_cli_writes_labels_and_overlay(server, tmp_path, capsys):
    from PIL import Image

    rc = segment_main([str(SAMPLE), "--url", _url(server, "grpc"), "--protocol", "grpc", "--model", server["model"],
                       "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "road" in out and "sky" in out
    labels = Image.open(tmp_path / "camvid_0001TP_008550_labels.png")
    overlay = Image.open(tmp_path / "camvid_0001TP_008550_overlay.png")
    assert labels.mode == "P" and labels.size == overlay.size == (480, 360)


@pytest.mark.parametrize("bad", ["missing.png", "notimage"])
def test_segment_cli_bad_files(server, tmp_path, capsys, bad):
    p = tmp_path / bad
    if bad == "notimage":
        p.write_text("not an image")
    assert segment_main([str(p), "--url", _url(server, "http"), "--model", server["model"]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err


def test_plugin_library_is_preloaded_into_tritonserver(tmp_path):
    """LD_PRELOAD reaches the server process: a real shared library whose load-time constructor (as the plugin's
    creator registration does) writes the loading process's name to a file."""
    import os
    import shutil
    import subprocess

    from build.repository import write_repository
    from server.serve import start, stop_pid
    from build.variants import PYTHON_NULL, ServingVariant

    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the marker library")
    marker = tmp_path / "loaded_by.txt"
    src = tmp_path / "marker.c"
    src.write_text('#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n'
                   '__attribute__((constructor)) static void loaded(void) {\n'
                   '  const char* out = getenv("SEGFORMER_PRELOAD_MARKER"); char name[256] = {0};\n'
                   '  FILE* c = fopen("/proc/self/comm", "r"); if (c) { fgets(name, sizeof name, c); fclose(c); }\n'
                   '  if (out && strncmp(name, "tritonserver", 12) == 0) { FILE* f = fopen(out, "a");\n'
                   '    if (f) { fputs(name, f); fclose(f); } } }\n')
    lib = tmp_path / "libsegformer_plugins_marker.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    repo = tmp_path / "repo"
    write_repository([ServingVariant("null_preload", "segformer-b0-camvid", PYTHON_NULL, size=(64, 64))], repo,
                     log=lambda *_: None, cache_dir=tmp_path / "cache")
    os.environ["SEGFORMER_PRELOAD_MARKER"] = str(marker)
    try:
        proc = start(repo, free_port(), free_port(), free_port(), state=tmp_path / "state", plugins=[lib])
        stop_pid(proc.pid)
    finally:
        del os.environ["SEGFORMER_PRELOAD_MARKER"]
    assert marker.is_file() and marker.read_text().startswith("tritonserver")
