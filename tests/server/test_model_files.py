"""The python-backend programs and their runtime: the models read only files inside their own model directory, and
the programs `make repo` copies run the same runtime module the build-time checks import (loaded here from a
built model directory the way Triton loads `1/model.py`, with a stand-in for Triton's pb_utils)."""
import ast

import numpy as np
import pytest

from server.models import segformer_runtime as runtime
from tests.server.programs import load_program


def test_the_runtime_imports_no_triton_module():
    tree = ast.parse(open(runtime.__file__).read())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = {a.name for n in top for a in n.names} | {n.module for n in top if isinstance(n, ast.ImportFrom)}
    assert not any("triton" in (n or "") for n in names), names


def test_config_names_that_leave_the_model_directory_are_refused(tmp_path):
    folder = tmp_path / "m" / "1"
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"x")
    (tmp_path / "secret").write_text("no")
    assert runtime.inside(str(folder), "model.onnx") == str((folder / "model.onnx").resolve())
    for bad in ("../../secret", str(tmp_path / "secret"), "sub/../../../secret"):
        with pytest.raises(runtime.ModelFileError, match="outside the model directory"):
            runtime.inside(str(folder), bad)
    (folder / "link.onnx").symlink_to(tmp_path / "secret")  # a link out counts as outside too
    with pytest.raises(runtime.ModelFileError, match="outside the model directory"):
        runtime.inside(str(folder), "link.onnx")
    with pytest.raises(runtime.ModelFileError, match="missing: rebuild the repository with `make repo`"):
        runtime.existing(str(folder), "plan.json")


def test_build_measures_plans_with_the_served_runner():
    from build import openvino_ir

    assert openvino_ir.PlanRunner is runtime.PlanRunner  # one class, re-exported for bench.cpu


def test_served_cpu_programs_run_the_runtime_copied_beside_them(tiny_weights, tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    from build.repository import write_repository
    from build.variants import rows_for

    rows = {r.name: r for r in rows_for(str(tiny_weights), prefix="tiny", size=(64, 96))}
    repo = tmp_path / "repo"
    res = write_repository([rows["tiny"], rows["tiny_ov"]], repo, log=lambda *_: None, cache_dir=tmp_path / "cache")
    assert set(res.values()) == {"built"}, res
    for name in ("tiny", "tiny_ov"):
        beside = (repo / name / "1" / "segformer_runtime.py").read_bytes()
        assert beside == open(runtime.__file__, "rb").read()  # the file build/ imports, not a copy of its text
    x = np.random.default_rng(0).integers(0, 255, (2, 64, 96, 3), dtype=np.uint8)
    expected = runtime.PlanRunner(repo / "tiny_ov" / "1").run(x)  # what the build-time guard measures
    for name in ("tiny", "tiny_ov"):
        model = load_program(repo / name, monkeypatch)
        out = model.execute([{"images": x[:1]}, {"images": x[1:]}])
        labels = np.concatenate([r.output_tensors[0].a for r in out])
        assert labels.shape == (2, 64, 96)
        assert (labels == expected).mean() >= 0.9999, name  # f32 OpenVINO and ONNX Runtime agree
        model.finalize()


def test_a_config_naming_a_file_outside_the_directory_fails_the_load(tiny_weights, tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    from build.repository import write_repository
    from build.variants import rows_for

    row = next(r for r in rows_for(str(tiny_weights), prefix="tiny", size=(64, 96)) if r.name == "tiny_ov")
    repo = tmp_path / "repo"
    write_repository([row], repo, log=lambda *_: None, cache_dir=tmp_path / "cache")
    cfg = repo / "tiny_ov" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace('"plan.json"', '"../../../etc/passwd"'))
    with pytest.raises(Exception, match="outside the model directory"):
        load_program(repo / "tiny_ov", monkeypatch)
