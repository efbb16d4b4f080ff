"""Weights bundled with their metadata (architecture, classes, palette, normalisation, input size, source).

A weights entry is two files side by side: ``NAME.safetensors`` (FP16 tensors) and ``NAME.json`` (metadata,
including the sha256 of the tensors file). Loading verifies the hash and matches keys strictly. The shipped
entries live in ``weights/`` (tracked); entries imported from a user's checkpoint (``python -m
build.import_weights``) live in ``weights/imported/``, which git ignores: a user's weights never become tracked.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import SegFormerConfig, get_config
from .errors import ProjectError
from .model import SegFormer

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
# imported entries (git-ignored); SEGFORMER_IMPORTED_WEIGHTS moves them (tests use a temporary folder)
IMPORTED_DIR = Path(os.environ.get("SEGFORMER_IMPORTED_WEIGHTS") or WEIGHTS_DIR / "imported")


class WeightsError(ProjectError, RuntimeError):
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
    def config(self) -> SegFormerConfig:
        """The architecture: the metadata's own (imported entries) or the variant table's row (shipped ones)."""
        if isinstance(self.meta.get("architecture"), dict):
            return SegFormerConfig.from_architecture(self.variant, self.meta["architecture"])
        return get_config(self.variant, self.num_classes)

    @property
    def input_size(self) -> tuple[int, int] | None:
        size = self.meta.get("input_size")
        return (int(size[0]), int(size[1])) if size else None

    @property
    def size_range(self) -> tuple[tuple[int, int], tuple[int, int]] | None:
        """(min HxW, max HxW) when the entry asks for dynamic-size rows, else None."""
        r = self.meta.get("size_range")
        return (tuple(r[0]), tuple(r[1])) if r else None

    @property
    def num_classes(self) -> int:
        return len(self.meta["classes"])

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def trained_classes(self) -> list[str] | None:
        """Classes the training labels contained (None: not recorded, e.g. an imported checkpoint)."""
        t = self.meta.get("trained_classes")
        return list(t) if t else None

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
        model = SegFormer(self.config)
        state = {k: v.float() for k, v in load_file(str(self.tensors)).items()}
        from .checkpoints import load_state_dict_strict

        load_state_dict_strict(model, state, source=str(self.tensors))
        return model.eval()


def available() -> list[str]:
    """Names of the shipped and imported entries."""
    return sorted({p.stem for d in (WEIGHTS_DIR, IMPORTED_DIR) for p in d.glob("*.json")})


def find_entry(name: str) -> Path | None:
    """The metadata file of entry `name` (shipped first, then imported), or None."""
    for d in (WEIGHTS_DIR, IMPORTED_DIR):
        if d is not None and (d / f"{name}.json").is_file():
            return d / f"{name}.json"
    return None


def get_weights(name_or_path: str | Path) -> Weights:
    """Find a weights entry by name (``segformer-b1-camvid``) or by path to its .json or .safetensors."""
    p = Path(name_or_path)
    meta_path = p.with_suffix(".json") if p.suffix in (".json", ".safetensors") else find_entry(str(p))
    if meta_path is None or not meta_path.is_file():
        raise WeightsError(f"no weights named {str(name_or_path)!r}; weights entries (shipped and imported): "
                           f"{', '.join(available()) or 'none'} (or pass a path to NAME.json)")
    meta = json.loads(meta_path.read_text())
    tensors = meta_path.with_name(meta["file"])
    if not tensors.is_file():
        raise WeightsError(f"{tensors} is missing next to {meta_path.name}")
    return Weights(meta_path.stem, tensors, meta)


def save_weights(model: SegFormer, directory: Path, name: str, meta: dict,
                 dtype: torch.dtype = torch.float16) -> Weights:
    """Write tensors (FP16 by default) + metadata atomically; returns the entry. `meta` gets file, sha256 and
    the tensors' dtype added."""
    from safetensors.torch import save

    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()
             if v.is_floating_point()}
    state.update({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
                  if not v.is_floating_point()})
    directory = Path(directory)
    tensors = directory / f"{name}.safetensors"
    atomic_write_bytes(tensors, save(state, metadata={"variant": model.config.name}))
    meta = dict(meta, file=tensors.name, sha256=sha256_file(tensors), variant=model.config.name)
    if dtype != torch.float16:
        meta["dtype"] = str(dtype).removeprefix("torch.")
    if model.config.name not in _table_names() or model.config != get_config(model.config.name,
                                                                             model.config.num_classes):
        meta["architecture"] = model.config.architecture()  # anything the table row alone would not rebuild
    atomic_write_bytes(directory / f"{name}.json", (json.dumps(meta, indent=1) + "\n").encode())
    return Weights(name, tensors, meta)


def _table_names() -> set[str]:
    from .config import VARIANTS

    return set(VARIANTS)
