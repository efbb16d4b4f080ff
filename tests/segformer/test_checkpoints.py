"""Every checkpoint format against its own implementation's forward pass, on real CamVid images (tests/sources.py
says which oracle each format has). Untrained weights: these are parity checks, not accuracy measurements."""
import json

import numpy as np
import pytest
import torch

from segformer.checkpoints import CheckpointError, read_checkpoint
from segformer.model import FoldedMMSegHead, MMSegHead, SegmentationPipeline
from tests.sources import (MMSegModel, as_nvlabs, camvid_images, hf_logits, hf_model, labels_from_logits,
                           normalise, nvlabs_state_from_hf, ours_labels)

SIZE = (256, 352)


def agreement(a, b) -> float:
    return float((a == b).mean())


class MessageHub:  # stands in for an object weights_only refuses (mmengine's MessageHub in real mmseg files)
    unpickled = False

    def __init__(self):
        self.log = {"loss": [1.0, 0.5]}

    def __setstate__(self, state):  # would run if the loader unpickled it for real
        MessageHub.unpickled = True
        self.__dict__.update(state)


@pytest.fixture(scope="module")
def images():
    return camvid_images(SIZE, 4)


def test_mmseg_1x_matches_mmsegmentation(tmp_path, images):
    src = MMSegModel("b0", 19)
    ref = labels_from_logits(src(normalise(images)), SIZE)
    assert np.unique(ref).size >= 5, "the source model must predict varied labels for the check to mean anything"
    classes = tuple(f"k{i}" for i in range(19))
    torch.save({"meta": {"dataset_meta": {"classes": classes, "palette": [[i, 2 * i, 3 * i] for i in range(19)]},
                         "message_hub": MessageHub(), "best_score": np.float64(0.5)},
                "state_dict": src.state_dict()}, tmp_path / "mm.pth")
    ck = read_checkpoint(tmp_path / "mm.pth")
    assert ck.format == "mmseg-1.x" and ck.config.decoder == "mmseg" and ck.config.name == "b0"
    assert ck.classes == list(classes) and ck.palette[2] == [2, 4, 6]
    # read safely: what weights_only refuses is named and never built
    assert f"{MessageHub.__module__}.MessageHub" in ck.skipped and any("numpy" in s for s in ck.skipped)
    assert not MessageHub.unpickled
    assert agreement(ours_labels(ck.build(), images), ref) >= 0.9999


def test_mmseg_0x_meta_and_folded_head_are_exact(tmp_path, images):
    src = MMSegModel("b0", 8, seed=1)
    torch.save({"meta": {"CLASSES": tuple("abcdefgh"), "PALETTE": [[i, i, i] for i in range(8)]},
                "state_dict": src.state_dict()}, tmp_path / "mm0.pth")
    ck = read_checkpoint(tmp_path / "mm0.pth")
    assert ck.format == "mmseg-0.x" and ck.classes == list("abcdefgh")
    model = ck.build()
    assert isinstance(model.decode_head, MMSegHead)
    x = torch.from_numpy(images)
    plain, folded = SegmentationPipeline(model, ck.mean, ck.std), SegmentationPipeline(model, ck.mean, ck.std,
                                                                                       fold_decoder=True)
    assert isinstance(folded.model.decode_head, FoldedMMSegHead)
    with torch.no_grad():
        plain.with_logits = folded.with_logits = True
        (la, a), (lb, b) = plain(x), folded(x)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert agreement(la.numpy(), lb.numpy()) >= 0.9999


def test_hugging_face_directory_matches_transformers(tmp_path, images):
    src = hf_model("b0", 12, id2label={i: f"class {i}" for i in range(12)})
    ref = labels_from_logits(hf_logits(src, normalise(images, (127.5,) * 3, (63.75,) * 3)), SIZE)
    assert np.unique(ref).size >= 5
    src.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25], "do_rescale": True,
         "rescale_factor": 1 / 255}))
    ck = read_checkpoint(tmp_path / "hf")
    assert ck.format == "hf" and ck.classes == [f"class {i}" for i in range(12)]
    assert ck.mean == (127.5,) * 3 and ck.std == (63.75,) * 3
    assert agreement(ours_labels(ck.build(), images, ck.mean, ck.std), ref) >= 0.9999


def test_nvlabs_checkpoint_matches_the_reference_forward(tmp_path, images):
    from safetensors.torch import load_file

    src = hf_model("b0", 19, seed=2)
    src.save_pretrained(tmp_path / "hf")
    as_nvlabs(src)
    ref = labels_from_logits(hf_logits(src, normalise(images)), SIZE)
    state = nvlabs_state_from_hf(load_file(str(tmp_path / "hf" / "model.safetensors")))
    torch.save({"meta": {"CLASSES": tuple(f"c{i}" for i in range(19))}, "state_dict": state}, tmp_path / "nv.pth")
    ck = read_checkpoint(tmp_path / "nv.pth")
    assert ck.format == "nvlabs" and (ck.config.block_norm_eps, ck.config.embed_norm_eps) == (1e-6, 1e-5)
    assert "unused key decode_head.conv_seg.weight" in ck.skipped
    assert agreement(ours_labels(ck.build(), images), ref) >= 0.9999


def test_our_own_entry_reads_back_identically():
    from segformer.weights import get_weights

    w = get_weights("segformer-b0-camvid")
    ck = read_checkpoint(w.tensors)
    assert ck.format == "native"
    ours = w.build().state_dict()
    assert all(torch.equal(ours[k], ck.state[k].to(ours[k].dtype)) for k in ours)


def test_a_backbone_only_checkpoint_is_refused_with_the_reason(tmp_path):
    src = MMSegModel("b0", 4)
    torch.save({"state_dict": {k: v for k, v in src.state_dict().items() if k.startswith("backbone.")}},
               tmp_path / "backbone.pth")
    with pytest.raises(CheckpointError, match="no decode head"):
        read_checkpoint(tmp_path / "backbone.pth")


def test_files_that_are_not_checkpoints(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint"):
        read_checkpoint(tmp_path / "junk.pth")
    with pytest.raises(CheckpointError, match="no such file"):
        read_checkpoint(tmp_path / "missing.pth")
    (tmp_path / "d").mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        read_checkpoint(tmp_path / "d")


@pytest.mark.parametrize("content, what", [
    (b"epoch 12, mIoU 0.71\nsee model.pth\n", "is not a PyTorch checkpoint (a text file)"),  # was (KeyError: 101)
    (b"e", "is not a PyTorch checkpoint (a text file)"),
    (b"", "is empty, not a checkpoint"),
    (bytes(range(256)) * 4, "is not a PyTorch checkpoint (neither a zip archive nor a pickle)"),
])
def test_a_file_that_is_no_checkpoint_is_named_in_one_line(tmp_path, content, what):
    """Issue 30, item 9: a text file is refused by what it is, never with the unpickler's `(KeyError: 101)`."""
    path = tmp_path / "model.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(path)
    msg = str(e.value)
    assert msg.startswith(f"{path} {what}") and "\n" not in msg and "Error" not in msg
    assert "torch.save" in msg and ".safetensors" in msg
