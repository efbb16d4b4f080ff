"""`make evaluate EVAL_IMAGES=DIR` as README writes it (issue 30, items 6 and 8): with only some rows of the
reference's entry served it evaluates those, a named model that is not served names EVAL_MODELS=, and CamVid
labels are mapped to the served model's classes by name."""
import json
import os
import subprocess

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.integration
SIZE = (64, 96)


@pytest.fixture(scope="module")
def entry_server(tmp_path_factory):
    """A Triton serving three rows of a `segformer_b1` entry and one row of another entry (null models: fast)."""
    from build.repository import write_repository
    from build.variants import PYTHON_NULL, ServingVariant
    from server.serve import start, stop_pid

    tmp = tmp_path_factory.mktemp("entry")
    rows = [ServingVariant(n, "segformer-b0-camvid", PYTHON_NULL, size=SIZE, max_batch=2)
            for n in ("segformer_b1", "segformer_b1_ov", "segformer_b1_best_cpu", "segformer_b0_ov")]
    write_repository(rows, tmp / "repo", log=lambda *_: None, cache_dir=tmp / "cache")
    ports = [free_port(), free_port(), free_port()]
    proc = start(tmp / "repo", *ports, state=tmp / "state")
    yield {"http": ports[0], "tmp": tmp}
    stop_pid(proc.pid)


def _make(entry_server, tmp_path, *extra):
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    for i in range(2):
        Image.fromarray(np.full((48, 80, 3), 40 * i, np.uint8)).save(images / f"f{i}.png")
    cmd = ["make", "--no-print-directory", "-o", ".venv/.installed", "evaluate", f"EVAL_IMAGES={images}",
           f"HTTP_PORT={entry_server['http']}", f"OUT={tmp_path / 'out'}", *extra]
    return subprocess.run(cmd, cwd=ROOT, env={**os.environ, "MAKEFLAGS": ""}, capture_output=True, text=True,
                          timeout=300)


def test_make_evaluate_defaults_to_the_served_rows_of_the_reference(entry_server, tmp_path):
    r = _make(entry_server, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((tmp_path / "out" / "evaluate" / "report.json").read_text())
    assert report["reference"] == "segformer_b1"
    assert report["models"] == ["segformer_b1", "segformer_b1_best_cpu", "segformer_b1_ov"]  # not segformer_b0_ov
    assert "models: segformer_b1_best_cpu, segformer_b1_ov (the served rows of segformer_b1" in r.stdout


def test_make_evaluate_names_eval_models_for_a_model_not_served(entry_server, tmp_path):
    r = _make(entry_server, tmp_path, "EVAL_MODELS=segformer_b1_fp16")
    assert r.returncode != 0
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "segformer_b1_fp16' is not served" in errors[0], r.stderr
    assert "EVAL_MODELS=" in errors[0]


def test_make_evaluate_camvid_labels_by_class_name(entry_server, tmp_path):
    labels = tmp_path / "labels"
    labels.mkdir()
    for i in range(2):  # CamVid ids: road (3) everywhere; the null model answers class 0, Cityscapes' road
        Image.fromarray(np.full((48, 80), 3, np.uint8)).save(labels / f"f{i}.png")
    r = _make(entry_server, tmp_path, f"EVAL_LABELS={labels}", "LABEL_FORMAT=camvid")
    assert r.returncode == 0, r.stdout + r.stderr
    s = json.loads((tmp_path / "out" / "evaluate" / "report.json").read_text())["summary"]["segformer_b1"]
    assert s["iou_per_class"] == {"road": 1.0} and s["miou"] == 1.0
