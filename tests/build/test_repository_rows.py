"""Which rows `make repo` builds, keeps and removes: a re-import (FORCE=1) leaves no row serving the old weights,
and a selection that leaves no row is one `error:` line naming what exists. Builders are replaced by a stand-in
that writes a marker file (no export), so these run in seconds; the CLI is `python -m build.repository`."""
import json

import pytest
import torch

from build import repository
from build.artefacts import NeedsCalibration
from build.repository import main as repo_main
from segformer import weights as entries
from tests.sources import MMSegModel


@pytest.fixture
def imported_dir(tmp_path, monkeypatch):
    d = tmp_path / "imported"
    monkeypatch.setattr(entries, "IMPORTED_DIR", d)
    return d


@pytest.fixture
def quick_builders(monkeypatch):
    """Every builder writes a marker file; INT8 rows still need CALIB, as the real ones do."""
    def fake(v, stage, cache, log):
        if v.precision in ("int8", "best") and cache.quant.calib is None:
            raise NeedsCalibration(f"{v.precision} needs calibration images: make repo CALIB=DIR")
        (stage / "1").mkdir(parents=True, exist_ok=True)
        (stage / "1" / "marker").write_text(v.name)
        return {"artefact": "1/marker"}

    for name in ("build_onnx_dir", "build_tensorrt_dir", "build_openvino_dir", "build_gpu_dir", "build_null_dir"):
        monkeypatch.setattr(repository, name, fake)


def _ckpt(tmp_path, seed):
    path = tmp_path / f"ck{seed}.pth"
    torch.save(MMSegModel("b0", 19, seed=seed).state_dict(), path)
    return path


def _repo(ck, name, size, *more) -> int:
    """`make repo CHECKPOINT=ck NAME=name SIZE=size ...` (PRESET=cityscapes: the test checkpoints name no classes)."""
    return repo_main(["--checkpoint", str(ck), "--preset", "cityscapes", "--name", name, "--size", size, *more])


def _calib(tmp_path):
    from PIL import Image

    d = tmp_path / "calib"
    d.mkdir()
    Image.new("RGB", (64, 64), (90, 120, 30)).save(d / "c0.png")
    return d


def test_a_forced_reimport_leaves_no_row_serving_the_old_weights(imported_dir, quick_builders, tmp_path, capsys):
    repo = tmp_path / "repo"
    rc = _repo(_ckpt(tmp_path, 0), "my_b0", "64x64", "--calib", str(_calib(tmp_path)),
               "--variants", "my_b0_best_cpu", "my_b0_ov", "--out", str(repo))
    assert rc == 0, capsys.readouterr()
    old = json.loads((repo / "my_b0_best_cpu" / "build.json").read_text())
    capsys.readouterr()
    # the repro of issue 30 item 5: another checkpoint, another size, FORCE=1, no CALIB
    rc = _repo(_ckpt(tmp_path, 1), "my_b0", "128x256", "--force", "--out", str(repo))
    got = capsys.readouterr()
    out = got.out
    assert rc == 0, out
    assert "\r" not in got.err + out  # not a terminal: plain progress lines
    assert "my_b0_best_cpu" in out and "removed: built from other weights of my_b0" in out
    assert not (repo / "my_b0_best_cpu").exists()  # make serve cannot serve it beside the new rows
    new = json.loads((repo / "my_b0" / "build.json").read_text())
    assert new["weights_sha256"] != old["weights_sha256"] and new["variant"]["size"] == [128, 256]
    for d in repo.iterdir():  # every row left serves the new import
        prov = json.loads((d / "build.json").read_text())
        assert prov["weights_sha256"] == new["weights_sha256"] and prov["variant"]["size"] == [128, 256], d.name
    assert "stale removed (my_b0_best_cpu)" in out


def test_a_reimport_at_another_size_removes_the_rows_not_rebuilt(imported_dir, quick_builders, tmp_path, capsys):
    repo = tmp_path / "repo"
    ck = _ckpt(tmp_path, 0)
    assert _repo(ck, "my_b0", "64x64", "--variants", "my_b0,my_b0_ov", "--out", str(repo)) == 0
    # same weights, new size, only one row named: the other one was built for the old size
    assert _repo(ck, "my_b0", "64x96", "--force", "--variants", "my_b0", "--out", str(repo)) == 0
    out = capsys.readouterr().out
    assert not (repo / "my_b0_ov").exists() and "built with size [64, 64], my_b0 now has [64, 96]" in out
    assert json.loads((repo / "my_b0" / "build.json").read_text())["variant"]["size"] == [64, 96]


def test_rows_of_other_entries_and_unchanged_rows_are_kept(imported_dir, quick_builders, tmp_path, capsys):
    repo = tmp_path / "repo"
    ck = _ckpt(tmp_path, 0)
    for name in ("a_b0", "b_b0"):
        assert _repo(ck, name, "64x64", "--variants", f"{name},{name}_ov", "--out", str(repo)) == 0
    assert _repo(_ckpt(tmp_path, 1), "a_b0", "64x64", "--force", "--variants", "a_b0", "--out", str(repo)) == 0
    assert sorted(p.name for p in repo.iterdir()) == ["a_b0", "b_b0", "b_b0_ov"]  # b_b0 is another entry
    assert repo_main(["--name", "b_b0", "--variants", "b_b0", "--out", str(repo)]) == 0
    assert sorted(p.name for p in repo.iterdir()) == ["a_b0", "b_b0", "b_b0_ov"]  # nothing changed under b_b0


def test_an_empty_selection_is_one_error_line_naming_what_exists(capsys):
    rc = repo_main(["--precisions", "fp16", "--variants", "segformer_b0", "--out", "/nonexistent/repo"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error: ")
    assert "segformer_b0 (fp32)" in err and "fp16" in err


def test_unknown_rows_and_precisions_are_one_error_line(capsys):
    assert repo_main(["--variants", "segformer_b7", "--out", "/nonexistent/repo"]) == 2
    assert repo_main(["--precisions", "fp8", "--out", "/nonexistent/repo"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and "segformer_b7" in lines[0] and "fp8" in lines[1]
    assert all(line.startswith("error: ") for line in lines)
