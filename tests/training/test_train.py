import json

import numpy as np
from PIL import Image

from training.train import main as train_main


def _toy_dataset(root, n=4, size=(64, 64)):
    """CamVid layout: sky (CamVid 0) on top, road (CamVid 3) below, with matching colours."""
    for split in ("train", "val", "test"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels").mkdir(parents=True)
        rng = np.random.default_rng(0)
        for i in range(n):
            h, w = size
            img = np.zeros((h, w, 3), np.uint8)
            img[: h // 2] = (90, 140, 200)
            img[h // 2:] = (110, 90, 110)
            img = np.clip(img + rng.normal(0, 10, img.shape), 0, 255).astype(np.uint8)
            lab = np.full((h, w), 3, np.uint8)
            lab[: h // 2] = 0
            Image.fromarray(img).save(root / split / "images" / f"f{i}.png")
            Image.fromarray(lab).save(root / split / "labels" / f"f{i}.png")


def test_training_runs_on_cpu_and_the_loss_decreases(tmp_path):
    data = tmp_path / "data"
    _toy_dataset(data)
    out = tmp_path / "run"
    rc = train_main(["--data", str(data), "--variant", "tiny", "--out", str(out), "--steps", "20",
                     "--batch", "4", "--crop", "64x64", "--scale", "1", "1", "--workers", "0", "--warmup", "2",
                     "--eval-every", "20", "--eval-size", "64x64", "--device", "cpu", "--lr", "3e-3"])
    assert rc == 0
    hist = json.loads((out / "history.json").read_text())
    losses = [h["loss"] for h in hist if "loss" in h]
    assert losses[-1] < losses[0]
    assert any("val_miou" in h for h in hist)
    assert (out / "last.pt").is_file()


def test_resume_continues_from_checkpoint(tmp_path):
    data = tmp_path / "data"
    _toy_dataset(data, n=2)
    out = tmp_path / "run"
    common = ["--data", str(data), "--variant", "tiny", "--out", str(out), "--batch", "2", "--crop", "64x64",
              "--workers", "0", "--eval-every", "100", "--eval-size", "64x64", "--device", "cpu"]
    import torch

    assert train_main(common + ["--steps", "2"]) == 0
    first = torch.load(out / "last.pt", weights_only=True)
    assert train_main(common + ["--steps", "4", "--resume"]) == 0
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["step"] == 4 and state["total"] == 4  # continued to the new step count
    # the optimizer came back: its step counters went on from 2 instead of restarting at 0
    steps = {int(v["step"]) for v in state["optimizer"]["state"].values()}
    assert steps == {4} and {int(v["step"]) for v in first["optimizer"]["state"].values()} == {2}
    # the model came back too: continuing changed the weights it had after step 2
    assert any(not torch.equal(first["model"][k], state["model"][k]) for k in state["model"])
    hist = json.loads((out / "history.json").read_text())
    assert [h["step"] for h in hist if "loss" in h][:2] == [1, 2] and max(h["step"] for h in hist) == 4


def test_resume_without_a_checkpoint_is_an_error(tmp_path, capsys):
    data = tmp_path / "data"
    _toy_dataset(data, n=2)
    rc = train_main(["--data", str(data), "--variant", "tiny", "--out", str(tmp_path / "none"), "--steps", "2",
                     "--workers", "0", "--device", "cpu", "--resume"])
    assert rc == 2 and "no checkpoint" in capsys.readouterr().err


def test_stop_after_then_resume_finishes_the_runs_own_schedule(tmp_path, capsys):
    data = tmp_path / "data"
    _toy_dataset(data, n=2)
    out = tmp_path / "run"
    common = ["--data", str(data), "--variant", "tiny", "--out", str(out), "--batch", "2", "--crop", "64x64",
              "--workers", "0", "--eval-every", "100", "--eval-size", "64x64", "--device", "cpu",
              "--splits", "train,val", "--loader", "gpu"]  # batched augmentation, here on the CPU
    import torch

    assert train_main(common + ["--steps", "6", "--stop-after", "1e-9"]) == 0
    assert "continue with --resume" in capsys.readouterr().out
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["step"] == 0 and state["total"] == 6
    assert train_main(common + ["--resume"]) == 0  # no --steps: the checkpoint's total
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 6


def test_curves_table_and_plot_from_run_folders(tmp_path, capsys):
    from training.curves import main as curves_main

    run = tmp_path / "b0-train"
    run.mkdir()
    (run / "history.json").write_text(json.dumps([{"step": 10, "loss": 2.0}, {"step": 20, "loss": 1.0},
                                                  {"step": 20, "val_miou": 0.4}]))
    (run / "w.json").write_text(json.dumps({"variant": "b0", "training": {"splits": ["train"], "steps": 20,
                                            "wall_s": 5.0}, "test": {"miou": 0.3, "pixel_accuracy": 0.8}}))
    assert curves_main([str(run), "--out", str(tmp_path / "out")]) == 0
    assert "| b0-train | train | 20 |" in (tmp_path / "out" / "summary.md").read_text()
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["runs"][0]["test_miou"] == 0.3
    assert Image.open(tmp_path / "out" / "curves.png").size[0] > 500
    assert curves_main([str(tmp_path / "nope"), "--out", str(tmp_path / "o2")]) == 2
    assert "no history.json" in capsys.readouterr().err


def test_evaluation_sends_frames_as_clients_do_letterboxed(tmp_path, monkeypatch):
    import torch

    import training.train as train

    _toy_dataset(tmp_path, n=1, size=(32, 64))  # 1:2 frames into a square eval size
    sent = []

    class Recorder(torch.nn.Module):
        def __init__(self, *_):
            super().__init__()

        def forward(self, x):
            sent.append(x.numpy().copy())
            return torch.zeros(x.shape[:3], dtype=torch.uint8)  # Cityscapes road (CamVid 3) everywhere

    monkeypatch.setattr(train, "SegmentationPipeline", Recorder)
    res = train.evaluate(torch.nn.Identity(), tmp_path, "test", (64, 64), "cpu", progress=False, amp=False)
    x = sent[0][0]
    assert x.shape == (64, 64, 3) and x[:32].any() and not x[32:].any()  # image on top, zero padding below
    assert res["images"] == 1 and 0.4 < res["pixel_accuracy"] < 0.6  # labels back at 32x64: the road half
