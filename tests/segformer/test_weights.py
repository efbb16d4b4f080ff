import json
import shutil

import numpy as np
import pytest

from segformer.weights import WeightsError, available, get_weights

REQUIRED = {"variant", "classes", "palette", "mean", "std", "input_size", "training", "test", "check", "sha256"}


@pytest.mark.parametrize("name", ["segformer-b0-camvid", "segformer-b1-camvid"])
def test_shipped_weights_have_metadata_and_fit_size(name):
    assert name in available()
    w = get_weights(name)
    assert REQUIRED <= set(w.meta)
    assert w.tensors.stat().st_size < 30e6
    assert len(w.classes) == len(w.palette) == 19
    assert 0.3 < w.meta["test"]["miou"] < 1.0 and w.meta["test"]["images"] == 233
    model = w.build()  # verifies the hash, strict keys
    assert model.config.name == w.variant


def test_corrupt_weights_are_refused(tmp_path):
    w = get_weights("segformer-b0-camvid")
    shutil.copy(w.tensors, tmp_path / w.tensors.name)
    meta = dict(w.meta, sha256="0" * 64)
    (tmp_path / "x.json").write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match="does not match its metadata"):
        get_weights(tmp_path / "x.json").build()


def test_unknown_weights_name():
    with pytest.raises(WeightsError, match=r"weights entries \(shipped and imported\): .*segformer-b0-camvid"):
        get_weights("nope")


def test_shipped_b0_reproduces_recorded_miou(camvid):
    """The 'check' entry was measured at training time on the GPU; CPU FP32 must agree within 0.01."""
    from training.train import evaluate

    w = get_weights("segformer-b0-camvid")
    assert w.meta["check"]["image_names"][0] == sorted(p.name for p in (camvid / "test" / "images").iterdir())[0]
    res = evaluate(w.build(), camvid, w.meta["check"]["split"], tuple(w.meta["check"]["size"]), "cpu",
                   limit=w.meta["check"]["images"], progress=False, amp=False)
    assert abs(res["miou"] - w.meta["check"]["miou"]) < 0.01
    assert np.isfinite(res["pixel_accuracy"]) and res["pixel_accuracy"] > 0.7
