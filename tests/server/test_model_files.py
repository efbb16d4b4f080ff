"""The python-backend models read only files inside their own model directory."""
import importlib
import sys
import types

import pytest


@pytest.fixture
def batching(monkeypatch):
    pb = types.ModuleType("triton_python_backend_utils")

    class TritonModelException(Exception):
        pass
    pb.TritonModelException = TritonModelException
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    monkeypatch.delitem(sys.modules, "server.models.segformer_batching", raising=False)
    return importlib.import_module("server.models.segformer_batching"), TritonModelException


def test_config_names_that_leave_the_model_directory_are_refused(batching, tmp_path):
    mod, refused = batching
    folder = tmp_path / "m" / "1"
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"x")
    (tmp_path / "secret").write_text("no")
    assert mod.inside(str(folder), "model.onnx") == str((folder / "model.onnx").resolve())
    for bad in ("../../secret", str(tmp_path / "secret"), "sub/../../../secret"):
        with pytest.raises(refused, match="outside the model directory"):
            mod.inside(str(folder), bad)
    (folder / "link.onnx").symlink_to(tmp_path / "secret")  # a link out counts as outside too
    with pytest.raises(refused, match="outside the model directory"):
        mod.inside(str(folder), "link.onnx")
