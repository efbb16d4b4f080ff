"""`make repo` keeps model versions: a rebuilt row is a new version folder beside the served one, config.pbtxt keeps
the latest N, build.json records each version's provenance; an interface change replaces the directory; a failed
rebuild changes nothing."""
import json
from dataclasses import replace

import pytest

from build import repository
from build.model_config import parse_pbtxt
from build.repository import main as repository_main
from build.repository import write_repository
from build.variants import PYTHON_NULL, ServingVariant

ROW = ServingVariant("null", "segformer-b0-camvid", PYTHON_NULL, size=(64, 64), max_batch=4)


def _build(tmp_path, row=ROW, **kw):
    return write_repository([row], tmp_path / "repo", log=lambda *_: None, cache_dir=tmp_path / "cache", **kw)


def _state(tmp_path):
    d = tmp_path / "repo" / "null"
    cfg = parse_pbtxt((d / "config.pbtxt").read_text())
    prov = json.loads((d / "build.json").read_text())
    folders = sorted(int(p.name) for p in d.iterdir() if p.is_dir())
    return folders, cfg, prov


def test_a_rebuilt_row_is_a_new_version_and_the_latest_two_are_kept(tmp_path):
    assert _build(tmp_path) == {"null": "built"}
    folders, cfg, prov = _state(tmp_path)
    assert folders == [1] and cfg.version_policy.latest.num_versions == 2
    assert prov["version"] == 1 and prov["reason"] == "first build" and list(prov["versions"]) == ["1"]
    assert prov["versions"]["1"]["artefact"] == "1/model.py"
    cfg_text = (tmp_path / "repo" / "null" / "config.pbtxt").read_text()

    assert _build(tmp_path, replace(ROW, description="retrained")) == {"null": "built"}  # an option changed
    folders, cfg, prov = _state(tmp_path)
    assert folders == [1, 2] and prov["version"] == 2 and sorted(prov["versions"]) == ["1", "2"]
    assert prov["reason"] == "options changed (description)" and prov["artefact"] == "2/model.py"
    assert prov["versions"]["1"]["recipe"] != prov["versions"]["2"]["recipe"] == prov["recipe"]
    assert (tmp_path / "repo" / "null" / "config.pbtxt").read_text() == cfg_text  # one config for both

    assert _build(tmp_path, replace(ROW, description="retrained"), force=True) == {"null": "built"}
    folders, cfg, prov = _state(tmp_path)
    assert folders == [2, 3] and sorted(prov["versions"]) == ["2", "3"]  # version 1 deleted
    assert prov["reason"] == "forced rebuild"
    assert not (tmp_path / ".repo.staging").exists()


def test_an_unchanged_row_is_kept_and_a_smaller_keep_count_prunes(tmp_path):
    _build(tmp_path)
    _build(tmp_path, force=True)
    assert _build(tmp_path) == {"null": "unchanged"} and _state(tmp_path)[0] == [1, 2]
    assert _build(tmp_path, keep=1) == {"null": "unchanged"}
    folders, cfg, prov = _state(tmp_path)
    assert folders == [2] and cfg.version_policy.latest.num_versions == 1 and list(prov["versions"]) == ["2"]
    assert _build(tmp_path, force=True, keep=3) == {"null": "built"}
    folders, cfg, _ = _state(tmp_path)
    assert folders == [2, 3] and cfg.version_policy.latest.num_versions == 3


def test_an_interface_change_replaces_the_directory(tmp_path):
    _build(tmp_path)
    _build(tmp_path, force=True)
    lines = []
    res = write_repository([replace(ROW, size=(96, 96))], tmp_path / "repo", log=lines.append,
                           cache_dir=tmp_path / "cache")
    assert res == {"null": "built"}
    folders, cfg, prov = _state(tmp_path)
    assert folders == [3] and list(cfg.input[0].dims) == [96, 96, 3]  # numbering goes on: clients see the change
    assert list(prov["versions"]) == ["3"] and prov["artefact"] == "3/model.py"
    assert any("input, output changed" in ln and "replaced by version 3" in ln for ln in lines), lines


def test_a_failed_rebuild_leaves_the_served_versions_intact(tmp_path, monkeypatch):
    _build(tmp_path)
    _build(tmp_path, force=True)
    before = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "repo").rglob("*") if p.is_file()}

    def broken(v, stage, cache, log):
        (stage / "1").mkdir()
        (stage / "1" / "model.py").write_text("half written")
        raise RuntimeError("builder crashed")

    monkeypatch.setattr(repository, "build_null_dir", broken)
    res = _build(tmp_path, force=True)
    assert res["null"].startswith("FAILED: RuntimeError: builder crashed")
    after = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "repo").rglob("*") if p.is_file()}
    assert after == before


def test_keep_versions_option(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        repository_main(["--variants", "segformer_null", "--out", str(tmp_path / "r"), "--keep-versions", "0"])
    assert e.value.code == 2 and "--keep-versions must be at least 1" in capsys.readouterr().err
    assert repository_main(["--variants", "segformer_null", "--out", str(tmp_path / "r"), "--keep-versions", "3"]) == 0
    cfg = parse_pbtxt((tmp_path / "r" / "segformer_null" / "config.pbtxt").read_text())
    assert cfg.version_policy.latest.num_versions == 3
