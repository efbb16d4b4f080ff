"""Licences travel with the weights: read from the checkpoint (HF model card, config.json, LICENSE file, .pth
meta) or --licence, "unknown" said loudly, stored in the entry, written into every row's config (`licence`),
listed for `make serve` and printed by client.segment."""
import json

import pytest
import torch

from build.import_weights import find_licence, import_weights
from build.model_config import licence_lines, licences, model_config
from build.variants import PYTHON_NULL, ServingVariant
from segformer import weights as entries
from tests.sources import MMSegModel


@pytest.fixture
def imported_dir(tmp_path, monkeypatch):
    d = tmp_path / "imported"
    monkeypatch.setattr(entries, "IMPORTED_DIR", d)
    return d


def _mm(path, meta=None):
    torch.save({"meta": {"CLASSES": tuple(f"k{i}" for i in range(19)), **(meta or {})},
                "state_dict": MMSegModel("b0", 19).state_dict()}, path)
    return path


def test_hf_model_card_licence_is_read(tmp_path):
    d = tmp_path / "hf"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "README.md").write_text("---\nlicense: other\nlicense_name: nvidia-segformer\nlicense_link: "
                                 "https://example.invalid/LICENSE\ntags:\n- vision\n---\n# card\nlicense: mit\n")
    assert find_licence(d) == ("other: nvidia-segformer (https://example.invalid/LICENSE)", "README.md model card")
    (d / "README.md").write_text("# no front matter\n")
    (d / "config.json").write_text(json.dumps({"license": "apache-2.0", "id2label": {"0": "a"}}))
    assert find_licence(d) == ("apache-2.0", "config.json")
    (d / "config.json").write_text("{}")
    (d / "LICENSE").write_text("\n  NVIDIA Source Code License for SegFormer\n...")
    assert find_licence(d)[0].startswith("NVIDIA Source Code License for SegFormer (see LICENSE")
    assert find_licence(d, "cc-by-4.0") == ("cc-by-4.0", "--licence")  # the option wins


def test_pth_meta_licence_and_unknown(tmp_path):
    assert find_licence(_mm(tmp_path / "a.pth", {"license": "apache-2.0"})) == ("apache-2.0", "checkpoint meta")
    assert find_licence(_mm(tmp_path / "b.pth"))[0] == "unknown"


def test_import_records_the_licence_and_warns_when_unknown(imported_dir, tmp_path, capsys):
    src = _mm(tmp_path / "city_mm.pth")
    import_weights(src, "city_mm", size=(64, 64))
    err = capsys.readouterr().err
    assert "warning:" in err and "UNKNOWN" in err and "--licence" in err
    w = entries.get_weights("city_mm")
    assert w.licence == "unknown" and w.meta["source"]["licence_from"] == "not recorded in the checkpoint"
    import_weights(src, "city_mm", size=(64, 64), licence="cc-by-nc-4.0", force=True)
    assert "warning" not in capsys.readouterr().err
    w = entries.get_weights("city_mm")
    assert w.licence == "cc-by-nc-4.0" and w.meta["source"]["licence_from"] == "--licence"
    # a different licence is a different import: same options again is a no-op, another one needs --force
    assert import_weights(src, "city_mm", size=(64, 64), licence="cc-by-nc-4.0")[0] == "unchanged"


def test_import_cli_takes_licence(imported_dir, tmp_path, capsys):
    from build.import_weights import main

    assert main([str(_mm(tmp_path / "x.pth")), "--name", "x_mm", "--size", "64x64", "--license", "mit"]) == 0
    assert "licence: mit (--licence)" in capsys.readouterr().out
    assert entries.get_weights("x_mm").licence == "mit"


def test_shipped_entries_say_what_is_true():
    lic = entries.get_weights("segformer-b1-camvid").licence
    assert lic == entries.SHIPPED_LICENCE and "CamVid" in lic and "research" in lic


def test_licence_goes_into_the_config_and_the_serve_lines(tiny_weights, tmp_path):
    from build.repository import write_repository

    row = ServingVariant("n", str(tiny_weights), PYTHON_NULL, size=(64, 64))
    cfg = model_config(row, ["a"], [[0, 0, 0]], licence="apache-2.0")
    assert cfg.parameters["licence"].string_value == "apache-2.0"
    repo = tmp_path / "repo"
    rows = [row, ServingVariant("s", "segformer-b0-camvid", PYTHON_NULL, size=(64, 64))]
    write_repository(rows, repo, log=lambda *_: None, cache_dir=tmp_path / "c")
    assert licences(repo) == {"n": "unknown", "s": entries.SHIPPED_LICENCE}
    lines = licence_lines(repo)
    assert lines[0] == f"weights licence: {entries.SHIPPED_LICENCE}: s"
    assert lines[1].startswith("WARNING: weights licence UNKNOWN") and lines[1].endswith(": n")


def test_client_prints_the_licence():
    from client.runners.triton import info_from_config
    from client.segment import licence_line

    cfg = {"input": [{"name": "images", "dims": ["64", "64", "3"]}], "output": [{"name": "labels"}],
           "parameters": {"licence": {"string_value": "apache-2.0"}}}
    assert licence_line(info_from_config("m", cfg)) == "m: weights licence: apache-2.0"
    del cfg["parameters"]["licence"]
    assert "WARNING: weights licence unknown" in licence_line(info_from_config("m", cfg))
