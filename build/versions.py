"""Model versions inside one model directory: `make repo` adds `2/`, `3/` ... instead of replacing `1/`.

A row whose inputs changed (new weights, calibration, options, build code) gets a new version folder beside the
ones Triton serves; config.pbtxt keeps the latest N (`version_policy { latest { num_versions: N } }`, default 2)
and older folders are deleted. build.json holds the newest version's provenance at its top level (as before) and
every kept version's under `versions`. All versions of a model share one config.pbtxt, so a change that alters it
apart from the version policy (input size, outputs, backend, batching, instances, classes) cannot become a new
version: the directory is replaced as a whole (numbering goes on, so clients still see the version change).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from build.model_config import parse_pbtxt, to_pbtxt
from segformer.weights import atomic_write_bytes

KEEP_VERSIONS = 2
# what a version's entry in build.json `versions` keeps (the top level keeps everything of the newest one)
VERSION_KEYS = ("version", "reason", "recipe", "weights", "weights_sha256", "calibration", "code", "artefact",
                "onnx_sha256", "built_at", "build_seconds", "host")


def numbers(model_dir: Path) -> list[int]:
    """The version folders in a model directory, ascending."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0)


def set_policy(cfg, keep: int):
    """`cfg` (a ModelConfig) serving the latest `keep` versions."""
    if keep < 1:
        raise ValueError(f"versions to keep must be at least 1, got {keep}")
    cfg.version_policy.latest.num_versions = keep
    return cfg


def interface(text: str) -> str:
    """The config without its version policy: what every version of the model must share."""
    cfg = parse_pbtxt(text)
    cfg.ClearField("version_policy")
    return to_pbtxt(cfg)


def interface_change(old_text: str | None, new_text: str) -> str | None:
    """None when the new config can serve beside the old versions, else what changed (for the log line)."""
    if old_text is None:
        return "no config.pbtxt"
    try:
        old, new = parse_pbtxt(interface(old_text)), parse_pbtxt(interface(new_text))
    except Exception:  # noqa: BLE001 - an unreadable old config: replace it
        return "the old config.pbtxt is unreadable"
    changed = [f.name for f in new.DESCRIPTOR.fields if getattr(old, f.name) != getattr(new, f.name)]
    return ", ".join(changed) or None


def read_provenance(model_dir: Path) -> dict:
    try:
        return json.loads((model_dir / "build.json").read_text())
    except (OSError, ValueError):
        return {}


def reason(old: dict, new: dict, forced: bool) -> str:
    """Why this version was built, from the previous version's provenance `old` and this one's `new`."""
    if not old:
        return "first build"
    why = []
    if old.get("weights_sha256") != new.get("weights_sha256"):
        why.append("new weights")
    changed = sorted(k for k in set(old.get("variant", {})) | set(new.get("variant", {}))
                     if old.get("variant", {}).get(k) != new.get("variant", {}).get(k))
    if changed:
        why.append("options changed (" + ", ".join(changed) + ")")
    if old.get("calibration") != new.get("calibration") and "calibration" in old:
        why.append("new calibration")
    if old.get("code") != new.get("code") and "code" in old:
        why.append("build code changed")
    if not why:
        why.append("forced rebuild" if forced else "recipe changed")
    return ", ".join(why)


def renumber(info: dict, number: int) -> dict:
    """Builders write version folder `1/`: their artefact paths name the folder the version really has."""
    art = info.get("artefact")
    if isinstance(art, str) and art.startswith("1/"):
        info = {**info, "artefact": f"{number}/{art[2:]}"}
    return info


def version_entry(prov: dict) -> dict:
    return {k: prov[k] for k in VERSION_KEYS if k in prov}


def add_version(target: Path, stage: Path, number: int, config_text: str, prov: dict, keep: int,
                trash: Path) -> list[int]:
    """Move the built folder `stage/1` in as `target/<number>` (one rename: Triton sees it whole or not at all),
    then config.pbtxt and build.json (each replaced atomically), then delete the versions beyond the latest
    `keep` (moved out first, so Triton never sees a half-deleted folder). Returns the deleted version numbers."""
    old = read_provenance(target)
    kept = dict(old.get("versions") or {})
    if not kept and old.get("recipe"):  # a directory built before versions were recorded: its one version
        only = numbers(target)
        if only:
            kept[str(only[-1])] = version_entry({**renumber(old, only[-1]), "version": only[-1]})
    os.replace(stage / "1", target / str(number))
    cfg_path = target / "config.pbtxt"
    if not cfg_path.is_file() or cfg_path.read_text() != config_text:
        atomic_write_bytes(cfg_path, config_text.encode())
    present = numbers(target)
    dropped = present[:-keep] if len(present) > keep else []
    kept[str(number)] = version_entry(prov)
    kept = {k: v for k, v in kept.items() if k.isdigit() and int(k) in present and int(k) not in dropped}
    atomic_write_bytes(target / "build.json", (json.dumps({**prov, "versions": kept}, indent=1) + "\n").encode())
    prune(target, dropped, trash)
    return dropped


def prune(target: Path, dropped: list[int], trash: Path) -> None:
    trash.mkdir(parents=True, exist_ok=True)
    for n in dropped:
        gone = trash / f"{target.name}.v{n}.{os.getpid()}"
        os.replace(target / str(n), gone)
        shutil.rmtree(gone, ignore_errors=True)


def apply_policy(target: Path, keep: int, trash: Path) -> list[int]:
    """An unchanged row whose kept-version count changed: rewrite the policy and delete the versions beyond it."""
    cfg_path = target / "config.pbtxt"
    try:
        cfg = parse_pbtxt(cfg_path.read_text())
    except (OSError, Exception):  # noqa: BLE001 - nothing to adjust; the next build rewrites it
        return []
    if cfg.version_policy.latest.num_versions == keep:
        return []
    atomic_write_bytes(cfg_path, to_pbtxt(set_policy(cfg, keep)).encode())
    present = numbers(target)
    dropped = present[:-keep] if len(present) > keep else []
    if dropped:
        prov = read_provenance(target)
        prov["versions"] = {k: v for k, v in (prov.get("versions") or {}).items() if int(k) not in dropped}
        atomic_write_bytes(target / "build.json", (json.dumps(prov, indent=1) + "\n").encode())
        prune(target, dropped, trash)
    return dropped
