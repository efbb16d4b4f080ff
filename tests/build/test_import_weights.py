"""build.import_weights and `make repo CHECKPOINT=...` as a new user meets them: what an entry holds, re-import,
and every bad input as one `error:` line (exit 2) that changes nothing on disk."""
import json

import pytest
import torch

from build.import_weights import main as import_main
from build.repository import main as repo_main
from segformer import weights as entries
from tests.sources import MMSegModel


@pytest.fixture
def imported_dir(tmp_path, monkeypatch):
    d = tmp_path / "imported"
    monkeypatch.setattr(entries, "IMPORTED_DIR", d)
    return d


@pytest.fixture(scope="module")
def mmseg_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "city_mm.pth"
    torch.save({"meta": {"CLASSES": tuple(f"k{i}" for i in range(19))}, "state_dict": MMSegModel("b0", 19).state_dict()},
               path)
    return path


@pytest.fixture(scope="module")
def bare_ckpt(tmp_path_factory):
    """An mmseg checkpoint with no class names and 7 classes (fits no preset)."""
    path = tmp_path_factory.mktemp("ck") / "seven.pth"
    torch.save(MMSegModel("b0", 7).state_dict(), path)
    return path


def _run(argv, capsys):
    rc = import_main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_import_writes_an_entry_with_its_provenance(imported_dir, mmseg_ckpt, capsys):
    rc, out, _ = _run([mmseg_ckpt, "--name", "city_mm", "--size", "512x1024"], capsys)
    assert rc == 0 and "mmseg-0.x" in out
    meta = json.loads((imported_dir / "city_mm.json").read_text())
    assert meta["source"]["format"] == "mmseg-0.x" and len(meta["source"]["sha256"]) == 64
    assert meta["classes"][0] == "k0" and len(meta["palette"]) == 19 and meta["input_size"] == [512, 1024]
    assert meta["architecture"]["decoder"] == "mmseg" and meta["architecture"]["embed_norm_eps"] == 1e-6
    w = entries.get_weights("city_mm")
    assert w.build().config.decoder == "mmseg"
    # the same file with the same options again: nothing to do; other options: needs --force
    assert _run([mmseg_ckpt, "--name", "city_mm", "--size", "512x1024"], capsys)[0] == 0
    before = (imported_dir / "city_mm.json").read_bytes()
    rc, _, err = _run([mmseg_ckpt, "--name", "city_mm", "--size", "256x256"], capsys)
    assert rc == 2 and "--force" in err and (imported_dir / "city_mm.json").read_bytes() == before
    assert _run([mmseg_ckpt, "--name", "city_mm", "--size", "256x256", "--force"], capsys)[0] == 0


@pytest.mark.parametrize("args, message", [
    (["--size", "500x500"], "not a multiple of 32"),
    (["--size", "32x64"], "below the minimum"),
    (["--size", "banana"], "is not HxW"),
    (["--dynamic", "512x512"], "MIN:MAX"),
    (["--dynamic", "512x512:1024x1024", "--size", "256x256"], "outside the dynamic range"),
    # issue 30, item 9: an inverted range says so (it said "outside the range")
    (["--dynamic", "512x512:256x256"], "--dynamic 512x512:256x256: min > max (height and width); give MIN:MAX with "
                                       "the smaller size first, e.g. 256x256:512x512"),
    (["--dynamic", "256x512:512x256", "--size", "256x256"], "min > max (width)"),
    (["--preset", "ade20k"], "names 150 classes but the checkpoint's classifier has 19"),
    (["--name", "9lives"], "use letters, digits and _"),
    (["--name", "segformer-b1-camvid"], "use letters"),
])
def test_bad_options_are_one_line_and_write_nothing(imported_dir, mmseg_ckpt, capsys, args, message):
    rc, _, err = _run([mmseg_ckpt, "--name", "x1", *args] if "--name" not in args else [mmseg_ckpt, *args], capsys)
    assert rc == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not imported_dir.exists() or not any(imported_dir.iterdir())


def test_missing_classes_name_the_fix(imported_dir, bare_ckpt, tmp_path, capsys):
    rc, _, err = _run([bare_ckpt, "--name", "seven"], capsys)
    assert rc == 2 and "--preset" in err and "--classes" in err
    wrong = tmp_path / "classes.json"
    wrong.write_text(json.dumps(["a", "b"]))
    rc, _, err = _run([bare_ckpt, "--name", "seven", "--classes", wrong], capsys)
    assert rc == 2 and "names 2 classes but the checkpoint's classifier has 7" in err
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"classes": list("abcdefg"), "palette": [[i, i, i] for i in range(7)]}))
    assert _run([bare_ckpt, "--name", "seven", "--classes", good], capsys)[0] == 0
    assert entries.get_weights("seven").classes == list("abcdefg")


def test_unreadable_sources(imported_dir, tmp_path, capsys):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x80\x02garbage")
    for src, message in ((junk, "not a readable PyTorch checkpoint"), (tmp_path / "nope.pth", "no such file")):
        rc, _, err = _run([src, "--name", "x"], capsys)
        assert rc == 2 and message in err and "Traceback" not in err


def test_a_text_file_as_checkpoint_is_one_line(imported_dir, tmp_path, capsys):
    text = tmp_path / "model.pth"
    text.write_text("hello, I am a text file\n")
    rc, _, err = _run([text, "--name", "x"], capsys)
    assert rc == 2 and err == (f"error: {text} is not a PyTorch checkpoint (a text file): pass a .pth/.pt/.bin saved "
                               "with torch.save, a .safetensors file or a Hugging Face save_pretrained folder\n")
    # the same through `make repo CHECKPOINT=... DYNAMIC=<inverted>`: the range is refused first, in one line
    assert repo_main(["--checkpoint", str(text), "--name", "x", "--dynamic", "512x512:256x256",
                      "--out", str(tmp_path / "repo")]) == 2
    assert "min > max" in capsys.readouterr().err


def test_make_repo_checkpoint_builds_the_rows_of_the_new_name(imported_dir, mmseg_ckpt, tmp_path, capsys):
    repo = tmp_path / "repo"
    rc = repo_main(["--checkpoint", str(mmseg_ckpt), "--name", "road", "--size", "256x512", "--variants", "road",
                    "road_onnx", "--out", str(repo)])
    assert rc == 0
    from build.model_config import parse_pbtxt

    cfg = parse_pbtxt((repo / "road" / "config.pbtxt").read_text())
    assert list(cfg.input[0].dims) == [256, 512, 3]
    assert json.loads(cfg.parameters["classes"].string_value)[0] == "k0"
    assert json.loads((repo / "road_onnx" / "build.json").read_text())["weights"] == "road"
    assert repo_main(["--name", "nobody", "--out", str(repo)]) == 2
    assert repo_main(["--size", "256x256", "--out", str(repo)]) == 2
    err = capsys.readouterr().err
    assert "no weights entry 'nobody'" in err and "apply to an import" in err
