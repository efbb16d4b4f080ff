"""Weights bundled with their metadata (variant, classes, palette, normalisation, measured accuracy).

A weights entry is two files side by side: ``NAME.safetensors`` (FP16 tensors) and ``NAME.json`` (metadata,
including the sha256 of the tensors file). Loading verifies the hash and matches keys strictly.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import get_config
from .model import SegFormer

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


class WeightsError(RuntimeError):
    """A weights file that is missing, corrupt or does not fit the model; the message says what to do."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class Weights:
    """A shipped weights entry: where its files are and what its metadata says."""

    name: str
    tensors: Path
    meta: dict

    @property
    def variant(self) -> str:
        return self.meta["variant"]

    @property
    def num_classes(self) -> int:
        return len(self.meta["classes"])

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def palette(self) -> list[tuple[int, int, int]]:
        return [tuple(c) for c in self.meta["palette"]]

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(self.meta["mean"])

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(self.meta["std"])

    def build(self) -> SegFormer:
        """Create the model and load the tensors (hash-verified, strict), in FP32, eval mode."""
        from safetensors.torch import load_file

        digest = sha256_file(self.tensors)
        if digest != self.meta["sha256"]:
            raise WeightsError(f"{self.tensors}: sha256 {digest[:12]}… does not match its metadata "
                               f"({self.meta['sha256'][:12]}…); the file is corrupt or was replaced — restore it "
                               f"with `git checkout -- {self.tensors.name}`")
        model = SegFormer(get_config(self.variant, self.num_classes))
        state = {k: v.float() for k, v in load_file(str(self.tensors)).items()}
        from .checkpoints import load_state_dict_strict

        load_state_dict_strict(model, state, source=str(self.tensors))
        return model.eval()


def available() -> list[str]:
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.json"))


def get_weights(name_or_path: str | Path) -> Weights:
    """Find a weights entry by name (``segformer-b1-camvid``) or by path to its .json or .safetensors."""
    p = Path(name_or_path)
    meta_path = p.with_suffix(".json") if p.suffix in (".json", ".safetensors") else WEIGHTS_DIR / f"{p}.json"
    if not meta_path.is_file():
        raise WeightsError(f"no weights named {str(name_or_path)!r}; shipped weights: "
                           f"{', '.join(available()) or 'none'} (or pass a path to NAME.json)")
    meta = json.loads(meta_path.read_text())
    tensors = meta_path.with_name(meta["file"])
    if not tensors.is_file():
        raise WeightsError(f"{tensors} is missing next to {meta_path.name}")
    return Weights(meta_path.stem, tensors, meta)


def save_weights(model: SegFormer, directory: Path, name: str, meta: dict) -> Weights:
    """Write FP16 tensors + metadata atomically; returns the entry. `meta` gets file and sha256 added."""
    from safetensors.torch import save

    state = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in model.state_dict().items()
             if v.is_floating_point()}
    state.update({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
                  if not v.is_floating_point()})
    directory = Path(directory)
    tensors = directory / f"{name}.safetensors"
    atomic_write_bytes(tensors, save(state, metadata={"variant": model.config.name}))
    meta = dict(meta, file=tensors.name, sha256=sha256_file(tensors), variant=model.config.name)
    atomic_write_bytes(directory / f"{name}.json", (json.dumps(meta, indent=1) + "\n").encode())
    return Weights(name, tensors, meta)
