"""The batched augmentation (run here on the CPU device): same distributions and padding rules as Augment."""
import numpy as np
import pytest
import torch
from PIL import Image

from training.data import IGNORE, Augment
from training.gpu_data import GpuBatches


def _dataset(root, size=(30, 40)):
    """Left half label 1, right half label 3; image = label * 50 in every channel (labels readable from pixels)."""
    for split in ("train", "val"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels").mkdir(parents=True)
        h, w = size
        lab = np.full((h, w), 3, np.uint8)
        lab[:, : w // 2] = 1
        Image.fromarray(np.repeat((lab * 50)[..., None], 3, 2)).save(root / split / "images" / "a.png")
        Image.fromarray(lab).save(root / split / "labels" / "a.png")


def test_identity_scale_gives_exact_crops_of_the_source(tmp_path):
    _dataset(tmp_path)
    aug = Augment(crop=(30, 40), scale=(1.0, 1.0), aspect=(1.0, 1.0), jitter=0)
    gb = GpuBatches(tmp_path, ["train", "val"], aug, batch=8, device="cpu", seed=1)
    assert len(gb) == 2
    img, lab = gb.next()
    assert img.shape == (8, 30, 40, 3) and img.dtype == torch.uint8 and lab.shape == (8, 30, 40)
    # camvid labels 1 (building) and 3 (road) map to cityscapes 2 and 0
    left, right = lab[:, :, :20], lab[:, :, 20:]
    flipped = (left == 0).all(dim=(1, 2))
    assert bool(((left == 2).all(dim=(1, 2)) | flipped).all())
    assert bool(torch.where(flipped[:, None, None], right == 2, right == 0).all())
    assert bool(flipped.any() and (~flipped).any())  # both orientations drawn in 8 samples
    # pixels follow their labels exactly (no blur at scale 1)
    assert bool(torch.equal(img[..., 0] == 50, lab == 2))


def test_crop_larger_than_the_image_pads_with_black_and_ignore(tmp_path):
    _dataset(tmp_path)
    aug = Augment(crop=(64, 64), scale=(1.0, 1.0), aspect=(1.0, 1.0), jitter=0)
    img, lab = GpuBatches(tmp_path, ["train"], aug, batch=4, device="cpu").next()
    assert int((lab != IGNORE).sum(dim=(1, 2))[0]) == 30 * 40
    assert bool((img[lab == IGNORE] == 0).all())
    assert bool((lab[:, 30:] == IGNORE).all())  # padding below, as Augment


def test_upscaled_crops_keep_labels_from_the_source_set(tmp_path):
    _dataset(tmp_path)
    aug = Augment(crop=(32, 32), scale=(1.5, 3.0), jitter=0.25)
    gb = GpuBatches(tmp_path, ["train"], aug, batch=16, device="cpu", seed=3)
    for _ in range(3):
        img, lab = gb.next()
        assert set(torch.unique(lab).tolist()) <= {0, 2, IGNORE}


def test_images_of_different_sizes_are_refused(tmp_path):
    _dataset(tmp_path)
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "val" / "images" / "b.png")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "val" / "labels" / "b.png")
    with pytest.raises(ValueError, match="one size"):
        GpuBatches(tmp_path, ["train", "val"], Augment(), batch=2, device="cpu")
