"""A user's own SegFormer, end to end through the real Triton: a Hugging Face B2 with ADE20K's 150 classes at
512x512, and an mmsegmentation B0 (its own decoder) as a dynamic-size row that takes 1024x2048 frames, with logits
for sliding-window inference. Served labels are checked against each source model's own forward pass on CamVid.
(Untrained weights: parity checks, not accuracy.)"""
import json

import numpy as np
import pytest
import torch

from tests.conftest import free_port
from tests.sources import (MMSegModel, camvid_images, hf_logits, hf_model, labels_from_logits, normalise)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    from segformer import weights as entries
    from segformer.config import ADE20K_CLASSES

    tmp = tmp_path_factory.mktemp("byom")
    mp = pytest.MonkeyPatch()
    mp.setattr(entries, "IMPORTED_DIR", tmp / "imported")
    hf = hf_model("b2", 150, id2label=dict(enumerate(ADE20K_CLASSES)))
    hf.save_pretrained(tmp / "ade_b2_hf")
    mm = MMSegModel("b0", 19, seed=3)
    torch.save({"meta": {"CLASSES": tuple(f"k{i}" for i in range(19))}, "state_dict": mm.state_dict()},
               tmp / "city_mm.pth")
    yield {"tmp": tmp, "hf": hf, "mm": mm}
    mp.undo()


@pytest.fixture(scope="module")
def byom_server(imported):
    from build.repository import main as repo_main
    from server.serve import start, stop_pid

    tmp = imported["tmp"]
    repo = tmp / "model_repository"
    assert repo_main(["--checkpoint", str(tmp / "ade_b2_hf"), "--name", "ade_b2", "--size", "512x512",
                      "--precisions", "fp32", "--out", str(repo)]) == 0
    assert repo_main(["--checkpoint", str(tmp / "city_mm.pth"), "--name", "city_mm", "--size", "512x1024",
                      "--dynamic", "256x256:1024x2048", "--logits", "--variants", "city_mm", "--out",
                      str(repo)]) == 0
    ports = {k: free_port() for k in ("http", "grpc", "metrics")}
    proc = start(repo, ports["http"], ports["grpc"], ports["metrics"], state=tmp / "state")
    yield {"repo": repo, "url": f"127.0.0.1:{ports['http']}"}
    stop_pid(proc.pid)


def test_every_fp32_row_is_written_for_the_imported_model(byom_server):
    repo = byom_server["repo"]
    for name in ("ade_b2", "ade_b2_onnx", "ade_b2_trt_fp32"):  # the TensorRT row: TensorRT-RTX on this machine
        assert (repo / name / "config.pbtxt").is_file(), name
    info = json.loads((repo / "ade_b2" / "build.json").read_text())
    assert info["weights"] == "ade_b2" and info["export"]["agreement"] >= 0.9999


def test_hf_b2_with_150_classes_serves_the_source_models_labels(byom_server, imported):
    from client.runners import TritonRunner
    from segformer.config import ADE20K_CLASSES

    images = camvid_images((512, 512), 3)
    ref = labels_from_logits(hf_logits(imported["hf"], normalise(images)), (512, 512))
    assert np.unique(ref).size >= 5
    with TritonRunner("ade_b2", byom_server["url"]) as r:
        assert r.info.classes == list(ADE20K_CLASSES) and r.info.size == (512, 512)
        served = r.infer(images)
    assert (served == ref).mean() >= 0.9999


def test_dynamic_mmseg_row_takes_each_frame_at_its_own_size(byom_server, imported):
    from client.runners import TritonRunner

    mm = imported["mm"]
    with TritonRunner("city_mm", byom_server["url"]) as r:
        assert r.info.size_range == ((256, 256), (1024, 2048)) and r.info.has_logits
        for size in ((384, 480), (1024, 2048)):  # CamVid's own aspect, and a Cityscapes-size frame
            images = camvid_images(size, 1)
            with torch.no_grad():
                ref = labels_from_logits(mm(normalise(images)), size)
            served = r.infer(images)
            assert served.shape == (1, *size) and (served == ref).mean() >= 0.9999
        with pytest.raises(Exception, match="multiples of 32|takes uint8"):
            r.infer(np.zeros((1, 250, 250, 3), np.uint8))


def test_segment_cli_keeps_the_aspect_and_slides(byom_server, imported, tmp_path, capsys):
    from PIL import Image

    from client.segment import main as segment_main
    from tests.sources import CAMVID

    image = sorted((CAMVID / "test" / "images").glob("*.jpg"))[0]
    for extra in ([], ["--slide"]):
        out = tmp_path / ("slide" if extra else "fit")
        assert segment_main([str(image), "--url", byom_server["url"], "--model", "city_mm", "--out", str(out),
                             *extra]) == 0
        text = capsys.readouterr().out
        assert ("slide" in text) if extra else ("384x480 (fit" in text)  # HxW: 360x480 padded to 384x480, not squashed
        labels = Image.open(out / f"{image.stem}_labels.png")
        assert labels.size == (480, 360)
