import numpy as np
import pytest
from PIL import Image

from client.metrics import confusion_matrix, disagreement, iou_per_class, mean_iou, pixel_accuracy
from client.preprocess import ImageError, load_image, resize_image, resize_labels
from client.visualize import class_table, format_table, palette_png


def test_any_mode_decodes_to_rgb(tmp_path):
    # a known colour per mode, so a decoder that returned zeros (or dropped a channel) would fail
    cases = {"L": (200, (200, 200, 200)), "RGBA": ((10, 20, 30, 255), (10, 20, 30)),
             "RGB": ((250, 5, 77), (250, 5, 77)), "LA": ((90, 255), (90, 90, 90))}
    for mode, (value, rgb) in cases.items():
        p = tmp_path / f"{mode}.png"
        Image.new(mode, (7, 5), value).save(p)
        img = load_image(p)
        assert img.shape == (5, 7, 3) and img.dtype == np.uint8
        assert (img == np.array(rgb, np.uint8)).all(), mode
    pal = Image.new("P", (7, 5), 1)
    pal.putpalette([0, 0, 0, 12, 34, 56] + [0] * 762)
    pal.save(tmp_path / "P.png")
    assert (load_image(tmp_path / "P.png") == np.array([12, 34, 56], np.uint8)).all()


@pytest.mark.parametrize("case,match", [("missing", "no such file"), ("text", "not an image"),
                                        ("truncated", "corrupt or truncated"), ("dir", "not a file")])
def test_bad_inputs_are_clear_errors(tmp_path, case, match):
    p = tmp_path / "x.png"
    if case == "text":
        p.write_text("hello")
    elif case == "truncated":
        Image.new("RGB", (64, 64), (9, 99, 199)).save(p)
        p.write_bytes(p.read_bytes()[:60])
    elif case == "dir":
        p.mkdir()
    with pytest.raises(ImageError, match=match):
        load_image(p)


def test_resize_policy():
    img = np.zeros((10, 20, 3), np.uint8)
    assert resize_image(img, (4, 6)).shape == (4, 6, 3)
    # labels far apart: bilinear would invent in-between values (e.g. 50, 100) at the boundaries, nearest cannot
    lab = np.array([[0, 200], [100, 150]], np.uint8)
    up = resize_labels(lab, (6, 6))
    assert set(np.unique(up)) == {0, 100, 150, 200}
    assert (up[:3, :3] == 0).all() and (up[3:, 3:] == 150).all()


def test_confusion_matrix_and_miou_by_hand():
    gt = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
    pr = np.array([[0, 1, 1, 1], [2, 0, 0, 1]])
    cm = confusion_matrix(pr, gt, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 3, 0], [1, 0, 1]]
    iou = iou_per_class(cm)
    # class 0: tp 1, fp 1, fn 1 -> 1/3; class 1: tp 3, fp 1 -> 3/4; class 2: tp 1, fn 1 -> 1/2
    np.testing.assert_allclose(iou, [1 / 3, 3 / 4, 1 / 2])
    assert mean_iou(cm) == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)
    assert pixel_accuracy(cm) == pytest.approx(5 / 7)
    assert disagreement(pr, gt) == pytest.approx(3 / 8)
    with pytest.raises(ValueError, match="differ"):
        confusion_matrix(pr, gt[:, :2], 3)


def test_palette_png_keeps_class_ids_and_table_sorts():
    lab = np.array([[0, 0, 0], [13, 13, 2]], np.uint8)
    im = palette_png(lab, [(1, 2, 3)] * 19)
    assert im.mode == "P" and np.array_equal(np.asarray(im), lab)
    rows = class_table(lab, [f"c{i}" for i in range(19)])
    assert [r[0] for r in rows] == [0, 13, 2] and rows[0][3] == pytest.approx(0.5)
    text = format_table(rows, [(1, 2, 3)] * 19, trained=["c0", "c2"])
    marked = [line for line in text.splitlines() if "never trained" in line]
    assert len(marked) == 1 and marked[0].split()[1] == "c13"  # only the class outside the trained list
    assert "trained on 2 of the model's classes" in text
    assert "never trained" not in format_table(rows, [(1, 2, 3)] * 19)
