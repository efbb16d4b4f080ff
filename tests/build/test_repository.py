import json

import pytest

from build import repository
from build.model_config import parse_pbtxt
from build.variants import PYTHON_ORT, TENSORRT, ServingVariant


def _row(weights, name="tiny_ort", backend=PYTHON_ORT, precision="fp32"):
    return ServingVariant(name, str(weights), backend, precision=precision, size=(64, 96), max_batch=2)


def test_writes_a_model_directory_and_reuses_it(tiny_weights, tmp_path, monkeypatch):
    repo = tmp_path / "model_repository"
    res = repository.write_repository([_row(tiny_weights)], repo, log=lambda *_: None, cache_dir=tmp_path / 'cache')
    assert res == {"tiny_ort": "built"}
    d = repo / "tiny_ort"
    assert {p.name for p in d.iterdir()} == {"config.pbtxt", "build.json", "1"}
    assert {p.name for p in (d / "1").iterdir()} == {"model.onnx", "model.py"}
    cfg = parse_pbtxt((d / "config.pbtxt").read_text())
    assert cfg.backend == "python" and cfg.parameters["onnx_file"].string_value == "model.onnx"
    prov = json.loads((d / "build.json").read_text())
    assert prov["weights_sha256"] and prov["onnx_sha256"] and prov["export"]["agreement"] >= 0.9999
    assert repository.write_repository([_row(tiny_weights)], repo, log=lambda *_: None, cache_dir=tmp_path / 'cache') == {"tiny_ort": "unchanged"}
    assert not (tmp_path / ".model_repository.staging").exists()


def test_a_failed_build_leaves_the_previous_directory_intact(tiny_weights, tmp_path, monkeypatch):
    repo = tmp_path / "model_repository"
    repository.write_repository([_row(tiny_weights)], repo, log=lambda *_: None, cache_dir=tmp_path / 'cache')
    before = (repo / "tiny_ort" / "build.json").read_text()

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setitem(repository.BUILDERS, PYTHON_ORT, boom)
    res = repository.write_repository([_row(tiny_weights)], repo, force=True, log=lambda *_: None, cache_dir=tmp_path / 'cache')
    assert res["tiny_ort"].startswith("FAILED: disk on fire")
    assert (repo / "tiny_ort" / "build.json").read_text() == before
    assert (repo / "tiny_ort" / "1" / "model.onnx").is_file()


def test_tensorrt_rows_build_with_tensorrt_rtx_or_say_why_not(tiny_weights, tmp_path, monkeypatch):
    """CI proof that the plan stage parses and builds our ONNX (TensorRT-RTX builds on a CPU-only machine)."""
    from build import engines

    repo = tmp_path / "model_repository"
    rows = [_row(tiny_weights, "tiny_trt_fp32", TENSORRT), _row(tiny_weights, "tiny_trt_fp16", TENSORRT, "fp16")]
    try:
        builder = engines.find_builder()
    except engines.BuilderUnavailable:
        res = repository.write_repository(rows, repo, log=lambda *_: None, cache_dir=tmp_path / 'cache')
        assert all(r.startswith("skipped: no TensorRT builder") for r in res.values())
        assert not repo.exists() or not any(repo.iterdir())  # never a fake plan
        pytest.skip("no TensorRT or TensorRT-RTX installed")
    res = repository.write_repository(rows, repo, log=lambda *_: None, cache_dir=tmp_path / 'cache')
    assert res["tiny_trt_fp32"] == "built"
    assert res["tiny_trt_fp16"].startswith("skipped:")  # precision passes not built yet: said, not faked
    plan = repo / "tiny_trt_fp32" / "1" / "model.plan"
    assert plan.stat().st_size > 10_000
    prov = json.loads((repo / "tiny_trt_fp32" / "build.json").read_text())
    assert prov["builder"] == builder.name and prov["profile"]["max"] == [2, 64, 96, 3]
    cfg = parse_pbtxt((repo / "tiny_trt_fp32" / "config.pbtxt").read_text())
    assert (cfg.platform == "tensorrt_plan") == (not builder.rtx)
    if builder.name == "tensorrt_rtx":  # check the engine's I/O against the config via the runtime API
        trt = builder.module
        engine = trt.Runtime(trt.Logger(trt.Logger.ERROR)).deserialize_cuda_engine(plan.read_bytes())
        if engine is not None:  # deserialising may need a GPU
            names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
            assert names == ["images", "labels"]
