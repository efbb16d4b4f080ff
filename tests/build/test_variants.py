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
