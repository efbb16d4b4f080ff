"""The variant table as templates applied to weights entries: shipped names unchanged, imported entries get every
template under their own prefix, dynamic-size rows reach the config and the TensorRT profile."""
import json

import pytest

from build import repository
from build.model_config import model_config, parse_pbtxt, to_pbtxt
from build.variants import PYTHON_GPU, TEMPLATES, TENSORRT, VARIANTS, rows_for

SHIPPED_NAMES = {"segformer_b1", "segformer_b1_onnx", "segformer_b0", "segformer_b1_fp16", "segformer_b1_int8",
                 "segformer_b1_best", "segformer_b1_best_cpu", "segformer_null", "segformer_b1_trt_fp32",
                 "segformer_b1_trt_fp16", "segformer_b1_trt_int8", "segformer_b1_trt_best", "segformer_b1_trt_plugin",
                 "segformer_b1_gpu", "segformer_b1_ov", "segformer_b1_ov_bf16", "segformer_b1_ov_int8",
                 "segformer_b1_openvino", "segformer_b1_gpu_dynamic"}


JPEG = {n for n in SHIPPED_NAMES if not n.startswith("segformer_b1_gpu")}  # every accelerated row and the null model


def test_shipped_rows_keep_their_names_and_sizes():
    assert set(VARIANTS) == SHIPPED_NAMES | {n + s for n in JPEG for s in ("_decode", "_jpeg")}
    assert VARIANTS["segformer_b1"].size == (1024, 1024) and VARIANTS["segformer_b0"].size == (512, 1024)
    assert [v.name for v in VARIANTS.values() if v.dynamic] == ["segformer_b1_gpu_dynamic"]


def test_an_entry_gets_every_template_under_its_prefix(tiny_weights):
    rows = rows_for(str(tiny_weights), prefix="city", size=(128, 256))
    assert [r.name for r in rows][:len(TEMPLATES)] == ["city" + t.suffix for t in TEMPLATES]
    assert all(r.name.endswith(("_decode", "_jpeg")) for r in rows[len(TEMPLATES):])
    assert {r.size for r in rows} == {(128, 256)} and {r.weights for r in rows} == {str(tiny_weights)}


def test_dynamic_rows_reach_config_and_profile(tiny_weights, tmp_path):
    meta = json.loads(tiny_weights.read_text())
    meta["size_range"] = [[64, 64], [256, 512]]
    dyn = tiny_weights.with_name("tiny-dyn.json")
    dyn.write_text(json.dumps(meta))
    rows = {r.name: r for r in rows_for(str(dyn), prefix="dyn", size=(128, 256))}
    assert rows["dyn"].size_range == ((64, 64), (256, 512))
    assert rows["dyn_gpu"].size_range is None and rows["dyn_gpu"].backend == PYTHON_GPU  # CUDA graphs: one size
    cfg = parse_pbtxt(to_pbtxt(model_config(rows["dyn_trt_fp16"], ["a"] * 19, [[0, 0, 0]] * 19)))
    assert list(cfg.input[0].dims) == [-1, -1, 3] and list(cfg.output[0].dims) == [-1, -1]
    assert list(cfg.model_warmup[0].inputs["images"].dims) == [128, 256, 3]
    assert json.loads(cfg.parameters["size_range"].string_value) == [[64, 64], [256, 512]]
    pytest.importorskip("tensorrt_rtx_bindings")
    res = repository.write_repository([rows["dyn_trt_fp32"]], tmp_path / "repo", log=lambda *_: None,
                                      cache_dir=tmp_path / "cache", timing_dir=None)
    assert res == {"dyn_trt_fp32": "built"}
    prov = json.loads((tmp_path / "repo" / "dyn_trt_fp32" / "build.json").read_text())
    assert prov["profile"] == {"min": [1, 64, 64, 3], "opt": [4, 128, 256, 3], "max": [8, 256, 512, 3]}
    assert set(prov["export"]["agreement_by_size"]) == {"128x256", "64x64", "256x512"}
    assert rows["dyn_trt_fp32"].backend == TENSORRT


def test_the_dynamic_gpu_row_config_tells_clients_its_range_and_they_place_frames_at_their_own_size():
    from google.protobuf import json_format

    from client.policy import InputPolicy
    from client.runners.triton import info_from_config

    row = VARIANTS["segformer_b1_gpu_dynamic"]
    cfg = parse_pbtxt(to_pbtxt(model_config(row, ["a"] * 12, [[0, 0, 0]] * 12)))
    inputs = {i.name: i for i in cfg.input}
    assert list(inputs["images"].dims) == [-1, -1, 3] and list(cfg.output[0].dims) == [-1, -1]
    assert list(inputs["encoded"].dims) == [-1] and cfg.backend == "python" and cfg.max_batch_size == 16
    p = {k: v.string_value for k, v in cfg.parameters.items()}
    assert json.loads(p["size_range"]) == [[256, 256], [1024, 2048]] and json.loads(p["opt_size"]) == [1024, 1024]
    assert p["sizes"] == "1024x1024,736x960,1024x2048" and p["graph_cap"] == "8"
    assert p["jpeg_decoder"] == "auto" and p["respond"] == "deferred"
    info = info_from_config(row.name, json_format.MessageToDict(cfg, preserving_proto_field_name=True))
    policy = InputPolicy.for_model(info)
    assert info.size == (1024, 1024) and info.size_range == ((256, 256), (1024, 2048))
    assert policy.place((720, 960)).input_size == (736, 960)  # the video frame: padded, not letterboxed
    assert policy.place((1024, 2048)).input_size == (1024, 2048)  # a Cityscapes frame as it is


def test_the_dynamic_gpu_row_is_built_only_when_named(monkeypatch, tiny_weights):
    import build.variants as variants

    monkeypatch.setattr(variants, "cuda_available", lambda: True)
    names = {v.name for v in variants.select()}
    assert "segformer_b1_gpu" in names and "segformer_b1_gpu_dynamic" not in names
    assert [v.name for v in variants.select(["segformer_b1_gpu_dynamic"])] == ["segformer_b1_gpu_dynamic"]
    tiny = {r.name: r for r in rows_for(str(tiny_weights), prefix="t", size=(128, 256))}["t_gpu_dynamic"]
    assert tiny.size_range == ((128, 256), (1024, 2048))  # widened to hold the entry's own size
    assert tiny.extra["sizes"] == "128x256,736x960,1024x2048"


def test_the_dynamic_gpu_row_keeps_an_entrys_own_range_and_only_sizes_inside_it(tiny_weights):
    meta = json.loads(tiny_weights.read_text())
    meta["size_range"] = [[64, 64], [256, 512]]
    dyn = tiny_weights.with_name("tiny-dyn2.json")
    dyn.write_text(json.dumps(meta))
    row = {r.name: r for r in rows_for(str(dyn), prefix="d", size=(128, 256))}["d_gpu_dynamic"]
    assert row.size_range == ((64, 64), (256, 512)) and row.extra["sizes"] == "128x256"


def test_the_gpu_row_directory_holds_the_pipeline_helpers_and_the_clients_placement(tiny_weights, tmp_path):
    from build.backends import ROOT, SERVER_MODELS

    row = {r.name: r for r in rows_for(str(tiny_weights), prefix="t", size=(128, 256))}["t_gpu_dynamic"]
    assert repository.write_repository([row], tmp_path / "repo", log=lambda *_: None,
                                       cache_dir=tmp_path / "c") == {"t_gpu_dynamic": "built"}
    version = tmp_path / "repo" / "t_gpu_dynamic" / "1"
    for f in ("gpu_pipeline.py", "gpu_decode.py", "segformer_runtime.py"):
        assert (version / f).read_bytes() == (SERVER_MODELS / f).read_bytes(), f
    assert (version / "placement.py").read_bytes() == (ROOT / "client" / "placement.py").read_bytes()
    assert (version / "model.py").read_bytes() == (SERVER_MODELS / "gpu_model.py").read_bytes()
