import json

import numpy as np
import pytest
from PIL import Image

from client.evaluate import entry_rows, evaluate, gate, main as evaluate_main, resolve, verdict
from client.labels import LabelError, LabelMapper, find_label, list_images, load_label
from client.metrics import confusion_matrix, iou_per_class, mean_iou, pixel_accuracy
from client.runners import RunnerError
from tests.conftest import ROOT

SAMPLE = ROOT / "samples" / "camvid_0001TP_008550.jpg"


def test_miou_hand_computed_with_ignore():
    gt = np.array([[0, 0, 1, 1], [2, 2, 255, 255]], np.uint8)
    pr = np.array([[0, 1, 1, 1], [2, 0, 0, 2]], np.uint8)
    cm = confusion_matrix(pr, gt, 3)
    # class 0: tp 1, fp 1 (gt 2 -> 0), fn 1 (-> 1) => 1/3; class 1: tp 2, fp 1 => 2/3; class 2: tp 1, fn 1 => 1/2
    assert np.allclose(iou_per_class(cm), [1 / 3, 2 / 3, 1 / 2])
    assert mean_iou(cm) == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert pixel_accuracy(cm) == pytest.approx(4 / 6)


def test_label_formats_map_to_train_ids(tmp_path):
    ids = np.array([[7, 8, 26], [0, 23, 33]], np.uint8)  # road, sidewalk, car / unlabeled, sky, bicycle
    p = tmp_path / "x_gtFine_labelIds.png"
    Image.fromarray(ids).save(p)
    assert load_label(p, (2, 3)).tolist() == [[0, 1, 13], [255, 10, 18]]
    camvid = tmp_path / "y.png"
    Image.fromarray(np.array([[3, 0, 11]], np.uint8)).save(camvid)
    assert load_label(camvid, (1, 3), "camvid").tolist() == [[0, 10, 255]]
    assert load_label(camvid, (1, 3)).tolist() == [[3, 0, 11]]  # auto on a plain name: train ids as they are
    with pytest.raises(LabelError, match="must have the image's size"):
        load_label(camvid, (2, 3))
    rgb = tmp_path / "z.png"
    Image.new("RGB", (3, 1)).save(rgb)
    with pytest.raises(LabelError, match="one channel"):
        load_label(rgb, (1, 3))


def test_find_label_cityscapes_and_same_stem(tmp_path):
    (tmp_path / "lab" / "aachen").mkdir(parents=True)
    target = tmp_path / "lab" / "aachen" / "aachen_000000_000019_gtFine_labelTrainIds.png"
    Image.new("L", (2, 2)).save(target)
    assert find_label(tmp_path / "aachen_000000_000019_leftImg8bit.png", tmp_path / "lab") == target
    assert find_label(tmp_path / "other.png", tmp_path / "lab") is None


def test_empty_folder_and_verdicts(tmp_path):
    with pytest.raises(FileNotFoundError, match="no image files"):
        list_images(tmp_path)
    assert [verdict(x) for x in (0.0, 0.005, 0.0051, 0.02, 0.5)] == ["good", "good", "marginal", "marginal", "bad"]


def test_gate_fails_on_disagreement_and_miou_drop():
    report = {"reference": "a", "summary": {
        "a": {"role": "reference", "disagreement_mean": 0.0, "miou": 0.50},
        "b": {"role": "model", "disagreement_mean": 0.004, "miou": 0.45}}}
    assert gate(report, 0.005, None) == []
    assert gate(report, 0.003, None) and "0.400 %" in gate(report, 0.003, None)[0]
    assert gate(report, None, 0.1) == [] and len(gate(report, None, 0.01)) == 1


def test_resolve_suffix_and_unknown():
    served = ["segformer_b1_trt_fp16", "segformer_b1_trt_fp32", "segformer_b1"]
    assert resolve(["fp16", "segformer_b1", "onnx:x.onnx"], served) == ["segformer_b1_trt_fp16", "segformer_b1",
                                                                         "onnx:x.onnx"]
    with pytest.raises(RunnerError, match="not served"):
        resolve(["int8"], served)


def test_a_model_not_served_names_eval_models():
    """Issue 30, item 6: the error names the make variable that picks the models."""
    with pytest.raises(RunnerError) as e:
        resolve(["segformer_b1_fp16"], ["segformer_b1", "segformer_b1_ov"])
    assert str(e.value) == ("model 'segformer_b1_fp16' is not served; served models: segformer_b1, segformer_b1_ov; "
                            "name served ones with --models (make evaluate EVAL_MODELS=a,b)")


def test_default_models_are_the_served_rows_of_the_reference_entry():
    served = ["segformer_b1", "segformer_b1_ov", "segformer_b10_fp16", "segformer_b0_fp16", "segformer_b1_best_cpu"]
    assert entry_rows("segformer_b1", served) == ["segformer_b1_best_cpu", "segformer_b1_ov"]
    assert entry_rows("my_b0", served) == []
    # a row's JPEG ensemble and decode step take encoded files, not frames: left out by the config check
    assert entry_rows("segformer_b1", served + ["segformer_b1_jpeg", "segformer_b1_decode"],
                      lambda name: not name.endswith(("_jpeg", "_decode"))) == ["segformer_b1_best_cpu", "segformer_b1_ov"]


CAMVID_NAMES = ["sky", "building", "pole", "road", "sidewalk", "tree", "sign_symbol", "fence", "car", "pedestrian",
                "bicyclist"]


def test_camvid_labels_map_by_class_name(tmp_path):
    """Issue 30, item 8: CamVid ids are mapped to the model's classes by name (synonyms included), whatever the
    model's class order; the dataset's classes.json names them."""
    from segformer.config import CITYSCAPES

    ids = np.array([[0, 3, 5, 9, 10, 11]], np.uint8)  # sky road tree pedestrian bicyclist void
    (tmp_path / "labels").mkdir()
    lab = tmp_path / "labels" / "a.png"
    Image.fromarray(ids).save(lab)
    city = LabelMapper("camvid", list(CITYSCAPES.classes), "city", tmp_path / "labels")
    assert city.load(lab, (1, 6)).tolist() == [[10, 0, 8, 11, 12, 255]]
    own = LabelMapper("camvid", list(reversed(CAMVID_NAMES)), "camvid_model", tmp_path / "labels")
    assert own.load(lab, (1, 6)).tolist() == [[10, 7, 5, 1, 0, 255]]  # by name, not by index
    # the labels' own class list (the dataset's classes.json above the labels) decides what an id means
    (tmp_path / "classes.json").write_text('{"classes": ["road", "sky", "car", "tree"], "ignore_index": 9}')
    Image.fromarray(np.array([[0, 1, 3, 9]], np.uint8)).save(lab)
    assert LabelMapper("camvid", list(CITYSCAPES.classes), "city", tmp_path / "labels").load(
        lab, (1, 4)).tolist() == [[0, 10, 8, 255]]


def test_camvid_labels_for_a_model_with_other_classes_are_refused_in_one_line():
    five = ["background", "road", "car", "person", "sky"]
    with pytest.raises(LabelError) as e:
        LabelMapper("camvid", five, "my_5class")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("--label-format camvid: the labels' classes building, pole, sidewalk, "
                                              "tree, sign_symbol, fence, bicyclist have no class in my_5class")
    assert "--label-format trainids" in msg
    with pytest.raises(LabelError, match="declares no class names"):
        LabelMapper("camvid", [], "bare")
    assert LabelMapper("trainids", five, "my_5class").lut("trainids") is None  # the model's own ids: as they are


def test_evaluate_refuses_before_any_work(tmp_path):
    from types import SimpleNamespace

    class Pool:
        info = {"m5": SimpleNamespace(classes=["background", "road", "car", "person", "sky"], trained=None)}

        def get(self, spec):
            raise AssertionError("no image may be sent")

    (tmp_path / "labels").mkdir()
    with pytest.raises(LabelError, match="have no class in m5"):
        evaluate([SAMPLE], Pool(), "m5", ["m5"], tmp_path / "labels", "camvid", progress=False)


def _images(tmp_path, n=3):
    d = tmp_path / "images"
    d.mkdir()
    base = np.asarray(Image.open(SAMPLE).convert("RGB"))
    for i in range(n):  # mixed sizes and modes
        im = Image.fromarray(base[:, ::-1] if i % 2 else base)
        im = im.resize((480 - 80 * i, 360 - 40 * i))
        (im.convert("L") if i == 2 else im).save(d / f"img{i}.png")
    (d / "broken.png").write_bytes(b"\x89PNG not really")
    return d


@pytest.mark.integration
def test_evaluate_against_the_server(server, tmp_path, capsys):
    images = _images(tmp_path)
    labels = tmp_path / "labels"
    labels.mkdir()
    ref = np.asarray(Image.open(images / "img0.png"))
    lab = np.where(ref[..., 2] > 128, 10, 0).astype(np.uint8)  # sky/road
    lab[:20] = 3  # wall: a Cityscapes class the CamVid weights never saw labelled
    Image.fromarray(lab).save(labels / "img0.png")
    url = f"localhost:{server['ports']['grpc']}"
    out = tmp_path / "report"
    args = ["--images", str(images), "--labels", str(labels), "--models", f"{server['model']},{server['other']}",
            "--url", url, "--protocol", "grpc", "--out", str(out), "--concurrency", "2"]
    assert evaluate_main(args + ["--threshold", "1.0"]) == 0
    report = json.loads((out / "report.json").read_text())
    s = report["summary"][server["other"]]
    assert report["images"] == 3 and len(report["skipped"]) == 1 and len(report["missing_labels"]) == 2
    assert s["disagreement_mean"] > 0 and s["disagreement_max"] >= s["disagreement_mean"]
    assert report["summary"][server["model"]]["disagreement_max"] == 0.0
    assert 0 <= s["miou"] <= 1 and "road" in s["iou_per_class"]
    # wall is reported per class but marked and kept out of mIoU, which averages the trained sky and road
    assert s["never_trained"] == ["wall"] and s["miou_classes"] == 2 and "wall" in s["iou_per_class"]
    assert s["miou"] == pytest.approx((s["iou_per_class"]["road"] + s["iou_per_class"]["sky"]) / 2)
    assert "never trained, so left out: wall" in (out / "report.md").read_text()
    for pic in ("worst.png", "disagreement.png", "iou.png", "heatmaps/img0.png"):
        assert Image.open(out / pic).size[0] > 100
    assert "disagree mean" in capsys.readouterr().out
    # the gate: any disagreement above zero fails
    assert evaluate_main(args + ["--threshold", "0"]) == 1
    assert "GATE FAILED" in capsys.readouterr().out
    # a local reference (ONNX Runtime on the served graph) agrees exactly with the served model
    onnx_path = server["repo"] / server["model"] / "1" / "model.onnx"
    assert evaluate_main(["--images", str(images), "--models", server["model"], "--reference", f"onnx:{onnx_path}",
                          "--url", url, "--protocol", "grpc", "--out", str(out), "--threshold", "0"]) == 0


@pytest.mark.integration
def test_evaluate_errors_are_one_line(server, tmp_path, capsys):
    url = f"localhost:{server['ports']['http']}"
    (tmp_path / "empty").mkdir()
    assert evaluate_main(["--images", str(tmp_path / "empty"), "--models", server["model"], "--url", url]) == 2
    assert "no image files" in capsys.readouterr().err
    images = _images(tmp_path)
    assert evaluate_main(["--images", str(images), "--models", "nope", "--url", url]) == 2
    assert "served models" in capsys.readouterr().err
    labels = tmp_path / "labels"
    labels.mkdir()
    Image.new("L", (5, 5)).save(labels / "img0.png")
    assert evaluate_main(["--images", str(images), "--labels", str(labels), "--models", server["model"],
                          "--url", url, "--out", str(tmp_path / "r")]) == 2
    assert "must have the image's size" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # nothing half-written
