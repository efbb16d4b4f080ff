"""The JPEG/PNG ensembles as rows: which rows get one, what their configs say, the decode step's files, and that an
ensemble is built only where its row is. The placement code the decode step runs is the client's."""
import io

import numpy as np
import pytest
from PIL import Image

from build import backends
from build.model_config import model_config, parse_pbtxt
from build.repository import write_repository
from build.variants import (ENSEMBLE, PYTHON_DECODE, PYTHON_DECODE_GPU, PYTHON_NULL, PYTHON_ORT, VARIANTS,
                            ServingVariant, jpeg_rows, rows_for, select)


def test_every_accelerated_row_has_an_ensemble_and_the_gpu_row_takes_files_itself():
    for kind, record in backends.BACKENDS.items():
        row = ServingVariant("r", "segformer-b0-camvid", kind, size=(64, 64))
        pair = jpeg_rows(row)
        if kind in (backends.PYTHON_GPU, ENSEMBLE, PYTHON_DECODE, PYTHON_DECODE_GPU):
            assert pair == [], kind
        else:
            assert [r.name for r in pair] == ["r_decode", "r_jpeg"], kind
            assert pair[0].backend == (PYTHON_DECODE_GPU if record.instance == backends.GPU else PYTHON_DECODE)
    names = {r.name for r in rows_for("segformer-b1-camvid")}
    for row in ("segformer_b1", "segformer_b1_onnx", "segformer_b1_ov", "segformer_b1_openvino",
                "segformer_b1_trt_fp16"):
        assert {row + "_decode", row + "_jpeg"} <= names
    assert "segformer_null_jpeg" in VARIANTS and "segformer_b1_gpu_jpeg" not in names
    # naming an ensemble builds what it runs first
    assert [v.name for v in select(["segformer_b0_jpeg"])] == ["segformer_b0", "segformer_b0_decode",
                                                              "segformer_b0_jpeg"]


@pytest.mark.parametrize("size_range", [None, ((64, 64), (256, 512))])
def test_configs_of_the_decode_step_and_the_ensemble(size_range):
    row = ServingVariant("r", "segformer-b0-camvid", PYTHON_ORT, size=(128, 256), size_range=size_range,
                         max_batch=2)
    decode, ens = jpeg_rows(row)
    dims = [-1, -1] if size_range else [128, 256]
    d = parse_pbtxt(str(model_config(decode, ["a"], [[0, 0, 0]], licence="mit")))
    assert d.backend == "python" and [i.name for i in d.input] == ["encoded"] and list(d.input[0].dims) == [-1]
    assert [(o.name, list(o.dims)) for o in d.output] == [("images", dims + [3]), ("placement", [4])]
    assert not d.HasField("dynamic_batching") and d.instance_group[0].kind == d.instance_group[0].KIND_CPU
    assert d.parameters["input_size"].string_value == "[128, 256]" and d.parameters["decoder"].string_value == "pillow"
    e = parse_pbtxt(str(model_config(ens, ["a"], [[0, 0, 0]], licence="mit")))
    assert e.platform == "ensemble" and e.max_batch_size == 2 and not e.instance_group
    assert [(o.name, list(o.dims)) for o in e.output] == [("labels", dims), ("placement", [4])]
    steps = e.ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["r_decode", "r"]
    assert steps[0].output_map["images"] == steps[1].input_map["images"] == "placed"
    assert e.parameters["licence"].string_value == "mit" and e.parameters["opt_size"].string_value == "[128, 256]"


def test_an_ensemble_is_built_only_where_its_row_is(tiny_weights, tmp_path):
    row = ServingVariant("n", str(tiny_weights), PYTHON_NULL, size=(64, 64))
    decode, ens = jpeg_rows(row)
    repo = tmp_path / "repo"
    res = write_repository([ens], repo, log=lambda *_: None, cache_dir=tmp_path / "c")
    assert res["n_jpeg"].startswith("skipped:") and "n and n_decode" in res["n_jpeg"]
    assert not (repo / "n_jpeg").exists()
    res = write_repository([row, decode, ens], repo, log=lambda *_: None, cache_dir=tmp_path / "c")
    assert set(res.values()) == {"built"}
    assert {p.name for p in (repo / "n_decode" / "1").iterdir()} == {"model.py", "segformer_runtime.py",
                                                                    "placement.py"}
    assert (repo / "n_jpeg" / "1").is_dir() and not list((repo / "n_jpeg" / "1").iterdir())


def test_the_decode_step_decodes_as_the_client_does(tmp_path):
    from client.placement import decode
    from client.preprocess import load_image

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (37, 53, 3), np.uint8)
    pal = Image.fromarray(rgb[..., 0] // 32).convert("P")
    pal.info["transparency"] = 0
    for name, im, kwargs in (("a.jpg", Image.fromarray(rgb), {"quality": 80}), ("b.png", pal, {}),
                             ("c.png", Image.fromarray(rgb[..., 0].astype(np.uint16) * 257), {})):
        buf = io.BytesIO()
        im.save(buf, format=name.split(".")[1].replace("jpg", "jpeg"), **kwargs)
        (tmp_path / name).write_bytes(buf.getvalue())
        assert np.array_equal(decode(buf.getvalue()), load_image(tmp_path / name)), name
    with pytest.raises(ValueError, match="no image Pillow reads"):
        decode(b"not an image")


def test_policy_places_with_the_shared_code():
    from client import placement
    from client.policy import PolicyError, place

    assert place((360, 480), (512, 512)) == placement.place((360, 480), (512, 512))
    with pytest.raises(PolicyError):
        place((360, 480), (512, 512), mode="slide")


def test_a_launcher_leaves_out_only_the_ensembles_whose_steps_do_not_load(tiny_weights, tmp_path):
    from build.ensemble import unloadable_ensembles

    rows = [ServingVariant(n, str(tiny_weights), PYTHON_NULL, size=(64, 64)) for n in ("a", "b")]
    rows += [j for r in rows for j in jpeg_rows(r)]
    repo = tmp_path / "repo"
    write_repository(rows, repo, log=lambda *_: None, cache_dir=tmp_path / "c")
    assert unloadable_ensembles(repo, set()) == {}
    assert unloadable_ensembles(repo, {"b_decode"}) == {"b_jpeg": "its step(s) b_decode do not load here"}


def test_a_decode_step_is_not_built_without_its_row(tmp_path):
    """A decode step serves only its row's ensemble: without the row (an INT8 row skipped for want of CALIB, a
    TensorRT row without a builder) it is skipped too instead of costing a python stub process."""
    from build.repository import write_repository
    from build.variants import PYTHON_ORT, ServingVariant, jpeg_rows

    row = ServingVariant("lonely", "segformer-b0-camvid", PYTHON_ORT, size=(64, 64))
    decode, ensemble = jpeg_rows(row)
    res = write_repository([decode, ensemble], tmp_path / "repo", log=lambda *_: None, cache_dir=tmp_path / "c")
    assert res[decode.name].startswith("skipped: decodes for lonely") and res[ensemble.name].startswith("skipped")
    assert not (tmp_path / "repo" / decode.name).exists()
