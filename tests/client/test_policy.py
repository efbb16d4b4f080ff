"""Resize policies: aspect kept (letterbox into a fixed input, own size within a dynamic range), stretch, and
sliding windows, with the labels brought back to the image's size."""
import numpy as np
import pytest

from client.policy import Placement, from_output, place, slide, slide_scale, to_input, windows


def test_fit_letterboxes_into_a_fixed_input_and_cuts_the_padding_off():
    p = place((360, 480), (1024, 1024))
    assert p == Placement((1024, 1024), (768, 1024))
    image = np.full((360, 480, 3), 200, np.uint8)
    x = to_input(image, p)
    assert x.shape == (1024, 1024, 3) and (x[:768] == 200).all() and (x[768:] == 0).all()
    labels = np.zeros((1024, 1024), np.uint8)
    labels[768:] = 9  # whatever the model says about the padding never reaches the image
    labels[:384, :512] = 3
    back = from_output(labels, p, (360, 480))
    assert back.shape == (360, 480) and 9 not in back
    assert (back[:180, :240] == 3).all() and (back[180:, 240:] == 0).all()


def test_fit_sends_a_dynamic_model_the_image_at_its_own_size_within_bounds():
    rng = ((256, 256), (1024, 2048))
    assert place((360, 480), (512, 1024), rng) == Placement((384, 480), (360, 480))  # padded to a multiple of 32
    p = place((2048, 4096), (512, 1024), rng)  # too large: scaled down, aspect kept
    assert p == Placement((1024, 2048), (1024, 2048))
    p = place((100, 300), (512, 1024), rng)  # too small: scaled up to the lower bound
    assert p.content == (256, 768) and p.input_size == (256, 768)


def test_stretch_ignores_the_aspect_ratio():
    assert place((360, 480), (512, 512), mode="stretch") == Placement((512, 512), (512, 512))
    with pytest.raises(ValueError, match="unknown resize mode"):
        place((1, 1), (64, 64), mode="crop")


def test_windows_cover_every_pixel_and_end_flush():
    corners = windows((1024, 1365), (1024, 1024), (768, 768))
    assert corners == [(0, 0), (0, 341)]
    cover = np.zeros((1000, 1500), int)
    for y, x in windows((1000, 1500), (256, 320), (192, 240)):
        cover[y:y + 256, x:x + 320] += 1
    assert cover.min() >= 1


def test_slide_averages_crop_logits_into_the_full_image():
    # the "model" labels each pixel by its red channel, so the slid result must reproduce the image's classes
    h, w = 300, 700
    classes = (np.arange(w)[None, :].repeat(h, 0) // 100).astype(np.uint8)  # 7 vertical bands
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 0] = classes * 30

    def logits(crops):
        cls = np.rint(crops[..., 0] / 30).astype(int)
        return np.moveaxis(np.eye(8, dtype=np.float32)[cls], -1, 1)

    crop = (256, 256)
    assert slide_scale((h, w), crop) == (256, 597)
    out = slide(image, logits, crop)
    assert out.shape == (h, w)
    assert (out == classes).mean() > 0.98  # only band edges move under the two resizes
