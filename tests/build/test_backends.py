"""The backend records: every kind the table uses has one, its files exist and are what the recipe hashes, and a
new kind is one record (the config writer, repository writer and deploy groups follow it without other edits)."""
import dataclasses
import json

import pytest

from build import artefacts, backends, repository
from build.backends import BACKENDS, PYTHON_NULL, Backend
from build.model_config import model_config, parse_pbtxt
from build.variants import TEMPLATES, VARIANTS, ServingVariant


def test_every_kind_in_the_table_has_a_record_with_a_builder_and_its_files():
    assert {t.backend for t in TEMPLATES} | {v.backend for v in VARIANTS.values()} <= set(BACKENDS)
    for b in BACKENDS.values():
        assert callable(b.build()), b.kind
        assert all(f.is_file() for f in b.code_files()), b.kind
        assert bool(b.triton_backend) != bool(b.triton_platform), b.kind  # config names one of the two
        assert b.instance in (backends.CPU, backends.GPU)
        assert b.image or b.deployable(), b.kind  # a cluster serves it, or the record says why not
        if b.python:
            assert b.program, b.kind
    # the python rows running ONNX Runtime / OpenVINO do not load in stock NGC Triton, and the record says so
    for kind in (backends.PYTHON_ORT, backends.PYTHON_OV):
        assert "NGC image lacks" in BACKENDS[kind].ngc
    assert not BACKENDS[backends.ONNXRUNTIME].ngc and not BACKENDS[backends.TENSORRT].ngc


def test_the_copied_files_are_the_hashed_files(tiny_weights, tmp_path, monkeypatch):
    """Each file the record copies is in the recipe: changing one rebuilds the row."""
    row = ServingVariant("n", str(tiny_weights), PYTHON_NULL, size=(64, 64))
    record = BACKENDS[PYTHON_NULL]
    before = repository.recipe(row, artefacts.QuantSettings())
    other = tmp_path / "null_model.py"
    other.write_text(record.code_files()[0].read_text() + "\n# changed\n")
    monkeypatch.setitem(BACKENDS, PYTHON_NULL, dataclasses.replace(record, program=str(other)))
    assert repository.recipe(row, artefacts.QuantSettings()) != before


def test_a_missing_code_file_is_an_error_naming_it(tmp_path):
    present = tmp_path / "a.py"
    present.write_text("x = 1\n")
    assert artefacts.code_hash([present])
    with pytest.raises(artefacts.MissingCodeFile, match="renamed.py is missing"):
        artefacts.code_hash([present, tmp_path / "renamed.py"])
    assert artefacts.MissingCodeFile.exit_code == 2


def test_a_row_whose_record_names_a_missing_file_fails_naming_it(tiny_weights, tmp_path, monkeypatch):
    monkeypatch.setitem(BACKENDS, PYTHON_NULL, dataclasses.replace(BACKENDS[PYTHON_NULL], program="gone_model.py"))
    row = ServingVariant("n", str(tiny_weights), PYTHON_NULL, size=(64, 64))
    res = repository.write_repository([row], tmp_path / "repo", log=lambda *_: None, cache_dir=tmp_path / "c")
    assert res["n"].startswith("FAILED: MissingCodeFile") and "gone_model.py" in res["n"]


def test_a_new_backend_kind_is_one_record(tiny_weights, tmp_path, monkeypatch):
    """A record alone: the config writer, the repository writer and the deploy groups all follow it."""
    from deploy.groups import plan

    kind = "python_echo"
    record = Backend(kind, "test kind", "build.repository:build_null_dir", triton_backend="python",
                     instance=backends.GPU, parameters=(("mode", "echo-{weights}"),), program="null_model.py",
                     runtime=("segformer_runtime.py",), image=backends.STOCK)
    monkeypatch.setitem(BACKENDS, kind, record)
    row = ServingVariant("echo", str(tiny_weights), kind, size=(64, 64), max_batch=2)
    repo = tmp_path / "repo"
    assert repository.write_repository([row], repo, log=lambda *_: None, cache_dir=tmp_path / "c") == {
        "echo": "built"}
    assert {p.name for p in (repo / "echo" / "1").iterdir()} == {"model.py", "segformer_runtime.py"}
    cfg = parse_pbtxt((repo / "echo" / "config.pbtxt").read_text())
    assert cfg.backend == "python" and cfg.instance_group[0].kind == cfg.instance_group[0].KIND_GPU
    assert cfg.parameters["mode"].string_value == "echo-tiny-test"  # the entry's name, not its path
    assert json.loads((repo / "echo" / "build.json").read_text())["variant"]["backend"] == kind
    groups, skipped = plan(repo)
    assert [m.name for g in groups for m in g.models] == ["echo"] and not skipped
    assert groups[0].kind == "gpu" and groups[0].image.endswith("-py3")


def test_the_rtx_variant_claims_no_platform():
    row = VARIANTS["segformer_b1_trt_fp16"]
    assert model_config(row, ["a"], [[0, 0, 0]]).platform == "tensorrt_plan"
    rtx = model_config(row, ["a"], [[0, 0, 0]], tensorrt_rtx=True)
    assert rtx.backend == "tensorrt_rtx" and not rtx.platform


def test_an_unknown_kind_is_one_error_line():
    with pytest.raises(backends.UnknownBackend, match="no backend record for 'nope'; the kinds are"):
        backends.backend("nope")
