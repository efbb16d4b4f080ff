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
    assert {p.name for p in (d / "1").iterdir()} == {"model.onnx", "model.py", "segformer_batching.py",
                                                     "segformer_runtime.py"}
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

    monkeypatch.setattr(repository, "build_onnx_dir", boom)  # the python_onnxruntime record's builder
    res = repository.write_repository([_row(tiny_weights)], repo, force=True, log=lambda *_: None, cache_dir=tmp_path / 'cache')
    assert res["tiny_ort"] == "FAILED: RuntimeError: disk on fire"
    assert (repo / "tiny_ort" / "build.json").read_text() == before
    assert (repo / "tiny_ort" / "1" / "model.onnx").is_file()


def _calib_folder(tmp_path, n=3):
    import numpy as np
    from PIL import Image

    d = tmp_path / "calib"
    d.mkdir()
    src = np.asarray(Image.open(repository.ROOT / "samples" / "camvid_0001TP_008550.jpg").convert("RGB"))
    for i in range(n):
        Image.fromarray(np.roll(src, 60 * i, axis=1)).save(d / f"c{i}.png")
    return d


def test_every_plan_variant_builds_with_tensorrt_rtx(tmp_path):
    """CI proof: B0 at a small size, every precision's ONNX parses and builds (TensorRT-RTX builds on a CPU-only
    machine); the network's I/O recorded at build time matches the config. Never a fake plan."""
    from build import engines
    from build.artefacts import QuantSettings

    repo = tmp_path / "model_repository"
    rows = [ServingVariant(f"b0_trt_{p}", "segformer-b0-camvid", TENSORRT, precision=p, size=(128, 160),
                           max_batch=2, opt_batch=1) for p in ("fp32", "fp16", "int8", "best")]
    rows.append(ServingVariant("b0_trt_plugin", "segformer-b0-camvid", TENSORRT, size=(128, 160), max_batch=2,
                               layernorm="plugin"))
    quant = QuantSettings(_calib_folder(tmp_path), calib_count=2, holdout_count=2, method="minmax", budget=0.05,
                          analysis_size=None)
    try:
        builder = engines.find_builder()
    except engines.BuilderUnavailable:
        res = repository.write_repository(rows, repo, log=lambda *_: None, cache_dir=tmp_path / "cache", quant=quant)
        assert all(r.startswith("skipped: no TensorRT builder") for r in res.values())
        assert not repo.exists() or not any(repo.iterdir())  # never a fake plan
        pytest.skip("no TensorRT or TensorRT-RTX installed")
    res = repository.write_repository(rows, repo, log=lambda *_: None, cache_dir=tmp_path / "cache", quant=quant,
                                      timing_dir=tmp_path / "timing")
    caches = list((tmp_path / "timing").glob("*.timing"))
    later = json.loads((repo / "b0_trt_fp16" / "build.json").read_text())["timing_cache"]
    if builder.rtx:  # TensorRT-RTX has no timing cache: none is written or claimed
        assert not caches and later is None
    else:
        assert len(caches) == 1 and caches[0].stat().st_size > 0  # one persistent cache per builder version
        assert later["path"] == str(caches[0]) and later["bytes_before"] > 0  # reused after the first build
    for p in ("fp32", "fp16", "int8", "best"):
        name = f"b0_trt_{p}"
        assert res[name] == "built", res
        plan = repo / name / "1" / "model.plan"
        assert plan.stat().st_size > 100_000
        prov = json.loads((repo / name / "build.json").read_text())
        cfg = parse_pbtxt((repo / name / "config.pbtxt").read_text())
        assert prov["builder"] == builder.name and prov["profile"]["max"] == [2, 128, 160, 3]
        assert (cfg.platform == "tensorrt_plan") == (not builder.rtx)
        assert cfg.max_batch_size == prov["profile"]["max"][0] and cfg.model_warmup
        io = {t["name"]: t for t in prov["io"]}
        assert io["images"]["dtype"] == "UINT8" and io["images"]["shape"][-1] == 3 and len(io["labels"]["shape"]) == 3
        assert io["labels"]["dtype"] == "UINT8" and [o.name for o in cfg.output] == ["labels"]
        assert [i.name for i in cfg.input] == ["images"] and list(cfg.input[0].dims) == prov["profile"]["opt"][1:]
    assert json.loads((repo / "b0_trt_best" / "build.json").read_text())["layer_precision"]
    if builder.rtx:
        assert "TensorRT-RTX cannot load it" in res["b0_trt_plugin"]
