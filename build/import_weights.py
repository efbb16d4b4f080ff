"""Import a trained SegFormer checkpoint into a weights entry that `make repo` builds every serving row from.

    python -m build.import_weights SRC --name city_b1 [--preset cityscapes|ade20k|camvid] [--classes classes.json]
                                   [--size 1024x2048] [--dynamic 512x512:1024x2048] [--logits] [--force]

SRC is an NVlabs SegFormer .pth, an mmsegmentation 0.x/1.x model-zoo .pth, a Hugging Face save_pretrained folder
(config.json + model.safetensors / pytorch_model.bin) or one of this project's weights entries; the format is
detected from the keys. The entry (FP16 safetensors + JSON metadata: architecture, classes, palette,
normalisation, input size, source format and sha256) is written to weights/imported/ (ignored by git). Tensors
are stored FP16 when an FP16 copy labels >= 99.99 % of pixels of 4 check frames like the FP32 source, else FP32.

Classes and palette come from the checkpoint when it carries them; --classes (a JSON list of names, or
{"classes": [...], "palette": [[r,g,b], ...]}) or --preset replace them; with none of these the import stops and
says what to pass. --size is the served input (height x width, multiples of 32); --dynamic MIN:MAX makes the rows
take any size in that range (ONNX dynamic axes, TensorRT profile min/opt=size/max, Triton dims -1).
Re-importing the same checkpoint with the same options is a no-op; anything else needs --force.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch

from client import cli
from segformer.checkpoints import Checkpoint, read_checkpoint
from segformer.config import PRESETS, check_size, get_preset, parse_size
from segformer.errors import ProjectError
from segformer.weights import WEIGHTS_DIR, save_weights

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,47}$")


class ImportError_(ProjectError, ValueError):
    """Bad input to the importer; the message names the fix (exit 2)."""


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise ImportError_(f"name {name!r}: use letters, digits and _ (starting with a letter, at most 48), e.g. "
                           "city_b1; model names are derived from it (city_b1_fp16, city_b1_trt_fp16, ...)")
    return name


def default_name(src: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9]+", "_", src.stem if src.is_file() else src.name).strip("_").lower()
    return check_name(("m_" + stem if not stem[:1].isalpha() else stem)[:48] or "model")


def check_range(lo: tuple[int, int], hi: tuple[int, int], what: str = "--dynamic") -> None:
    """ImportError_ when a MIN:MAX size range is inverted on either side (min > max)."""
    bad = [side for side, a, b in (("height", lo[0], hi[0]), ("width", lo[1], hi[1])) if a > b]
    if bad:
        raise ImportError_(f"{what} {lo[0]}x{lo[1]}:{hi[0]}x{hi[1]}: min > max ({' and '.join(bad)}); give MIN:MAX "
                           f"with the smaller size first, e.g. {min(lo[0], hi[0])}x{min(lo[1], hi[1])}:"
                           f"{max(lo[0], hi[0])}x{max(lo[1], hi[1])} (make repo: DYNAMIC=MIN:MAX)")


def parse_range(text: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """`MIN:MAX` (each HxW) -> ((h, w), (h, w)); ImportError_ for a malformed or inverted range."""
    try:
        lo, hi = text.split(":")
        lo, hi = parse_size(lo), parse_size(hi)
    except ValueError:
        raise ImportError_(f"--dynamic {text!r}: give MIN:MAX sizes, e.g. 512x512:1024x2048") from None
    check_range(lo, hi)
    return lo, hi


def read_classes(path: Path) -> tuple[list[str], list[list[int]] | None]:
    if not path.is_file():
        raise ImportError_(f"--classes {path}: no such file")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ImportError_(f"--classes {path}: not JSON ({exc})") from None
    classes, palette = (data, None) if isinstance(data, list) else (data.get("classes"), data.get("palette")) \
        if isinstance(data, dict) else (None, None)
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise ImportError_(f"--classes {path}: expected a JSON list of class names, or "
                           '{"classes": [...], "palette": [[r, g, b], ...]}')
    if palette is not None and (len(palette) != len(classes) or not all(
            isinstance(c, list) and len(c) == 3 and all(isinstance(x, int) and 0 <= x <= 255 for x in c)
            for c in palette)):
        raise ImportError_(f"--classes {path}: palette must hold one [r, g, b] (0..255) per class")
    return classes, palette


def spread_palette(n: int) -> list[list[int]]:
    from segformer.config import _ade20k_palette

    return [list(c) for c in _ade20k_palette(n)]


def resolve_classes(ck: Checkpoint, preset: str | None, classes_file: Path | None) -> tuple[list, list, str]:
    """(classes, palette, where they came from); explicit options win over the checkpoint's own metadata."""
    n = ck.config.num_classes
    if classes_file is not None:
        classes, palette = read_classes(classes_file)
        origin = f"--classes {classes_file.name}"
    elif preset is not None:
        p = get_preset(preset)
        classes, palette, origin = list(p.classes), [list(c) for c in p.palette], f"preset {p.name}"
    elif ck.classes:
        classes, palette, origin = list(ck.classes), ck.palette, f"{ck.format} checkpoint metadata"
    else:
        fits = [p.name for p in PRESETS.values() if p.num_classes == n]
        raise ImportError_(f"the checkpoint carries no class names for its {n} classes: pass --preset "
                           f"({', '.join(fits) if fits else 'none has ' + str(n) + ' classes'}) or --classes "
                           "classes.json (make repo: PRESET=... or CLASSES=...)")
    if len(classes) != n:
        raise ImportError_(f"{origin} names {len(classes)} classes but the checkpoint's classifier has {n}; "
                           f"pass a class list with {n} names")
    if not palette or len(palette) != n:
        preset_fit = next((p for p in PRESETS.values() if list(p.classes) == list(classes)), None)
        palette = [list(c) for c in preset_fit.palette] if preset_fit else spread_palette(n)
    return classes, [list(map(int, c)) for c in palette], origin


FP16_MIN_AGREEMENT = 0.9999  # below this on the check frames, the entry keeps FP32 tensors


def fp16_agreement(model, mean, std, size: tuple[int, int]) -> float:
    """Label agreement between the FP32 source model and its FP16-rounded copy on 4 synthetic frames."""
    import copy

    from client.preprocess import sample_images
    from segformer.model import SegmentationPipeline

    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for t in list(rounded.parameters()) + [b for b in rounded.buffers() if b.is_floating_point()]:
            t.copy_(t.half().float())
        x = torch.from_numpy(sample_images(size, 4))
        a = SegmentationPipeline(model, mean, std)(x)
        b = SegmentationPipeline(rounded, mean, std)(x)
    return float((a == b).float().mean())


def import_weights(src: Path, name: str, preset: str | None = None, classes_file: Path | None = None,
                   size: tuple[int, int] | None = None, dynamic=None, force: bool = False,
                   out: Path | None = None, log=print, logits: bool = False) -> tuple[str, Path]:
    """Write entry `name` from checkpoint `src`; returns ('imported' | 'unchanged', path of NAME.json)."""
    from segformer import weights as entries

    out = Path(out) if out is not None else entries.IMPORTED_DIR
    check_name(name)
    if (WEIGHTS_DIR / f"{name}.json").is_file() and Path(out).resolve() != WEIGHTS_DIR.resolve():
        raise ImportError_(f"{name!r} is a shipped weights entry; choose another name")
    if size is not None:
        check_size(size, "size")
    if dynamic is not None:
        lo, hi = (check_size(s, "dynamic bound") for s in dynamic)
        check_range(lo, hi)
        size = size or hi
        if not (lo[0] <= size[0] <= hi[0] and lo[1] <= size[1] <= hi[1]):
            raise ImportError_(f"size {size[0]}x{size[1]} is outside the dynamic range {lo[0]}x{lo[1]}:{hi[0]}x{hi[1]}")
    options = {"preset": preset, "classes_file": classes_file.name if classes_file else None,
               "size": list(size) if size else None, "dynamic": [list(s) for s in dynamic] if dynamic else None,
               "logits": logits}
    meta_path = Path(out) / f"{name}.json"
    ck = None
    if meta_path.is_file():
        old = json.loads(meta_path.read_text())
        ck = read_checkpoint(src)
        if old.get("source", {}).get("sha256") == ck.source_sha256 and old.get("import_options") == options \
                and not force:
            return "unchanged", meta_path
        if not force:
            raise ImportError_(f"weights entry {name!r} exists ({meta_path}) from another checkpoint or other "
                               "options: pass --force (make repo: FORCE=1) to replace it, or choose another --name")
    ck = ck or read_checkpoint(src)
    classes, palette, origin = resolve_classes(ck, preset, classes_file)
    model = ck.build()
    mean, std = ck.mean or (123.675, 116.28, 103.53), ck.std or (58.395, 57.12, 57.375)
    size = size or (512, 512)
    check = fp16_agreement(model, mean, std, (min(size[0], 512), min(size[1], 512)))
    meta = {"name": name, "dataset": preset or origin, "classes": classes, "palette": palette,
            "mean": list(mean), "std": list(std), "input_size": list(size),
            "size_range": [list(s) for s in dynamic] if dynamic else None, "with_logits": logits,
            "source": {"format": ck.format, "file": Path(src).name, "sha256": ck.source_sha256,
                       "skipped": ck.skipped, "classes_from": origin},
            "import_options": options, "fp16_check": {"label_agreement": check, "images": "4 synthetic",
                                                      "size": [min(size[0], 512), min(size[1], 512)],
                                                      "min_agreement": FP16_MIN_AGREEMENT}}
    keep_fp32 = check < FP16_MIN_AGREEMENT
    save_weights(model, Path(out), name, meta, dtype=torch.float32 if keep_fp32 else torch.float16)
    for s in ck.skipped:
        log(f"note: not read from {Path(src).name}: {s}")
    log(f"imported {Path(src).name} ({ck.format}, SegFormer-{ck.config.name}, {ck.config.decoder} decoder, "
        f"{len(classes)} classes from {origin}) as {name!r}: {meta_path}; an FP16 copy agrees with FP32 on "
        f"{check * 100:.3f} % of pixels: " + ("kept FP32 (below 99.99 %)" if keep_fp32 else "stored FP16"))
    return "imported", meta_path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m build.import_weights", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path, help="checkpoint file or Hugging Face folder")
    ap.add_argument("--name", help="entry and model-name prefix (default: from the file name)")
    ap.add_argument("--preset", choices=sorted(PRESETS), help="class names and palette of a known dataset")
    ap.add_argument("--classes", type=Path, help="JSON class list (or {classes, palette})")
    ap.add_argument("--size", help="served input HxW, multiples of 32 (default 512x512)")
    ap.add_argument("--dynamic", help="MIN:MAX sizes for dynamic-size rows, e.g. 512x512:1024x2048")
    ap.add_argument("--logits", action="store_true", help="rows also output float32 logits (client --slide uses "
                    "them)")
    ap.add_argument("--force", action="store_true", help="replace an existing entry of that name")
    ap.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)

    def body():
        size = parse_size(a.size) if a.size else None
        dynamic = parse_range(a.dynamic) if a.dynamic else None
        name = a.name or default_name(a.src)
        state, path = import_weights(a.src, name, a.preset, a.classes, size, dynamic, a.force, a.out,
                                     logits=a.logits)
        if state == "unchanged":
            print(f"{name}: already imported from this checkpoint ({path})")

    return cli.run(body, handled=(ValueError,))


if __name__ == "__main__":
    raise SystemExit(main())
