"""Foreign SegFormer checkpoints -> this project's model: format detection from the keys, key remaps, metadata.

Formats (each detected from the state dict's keys, never from file names):
- ``nvlabs``: NVlabs SegFormer ``.pth`` (``backbone.block1.*``, ``decode_head.linear_c1.*``); meta CLASSES/PALETTE.
- ``mmseg``: mmsegmentation 0.x (>= 0.20) and 1.x model-zoo ``.pth`` (``backbone.layers.{i}.{0,1,2}``, attention as
  ``nn.MultiheadAttention``, FFN as ``ffn.layers.*``; head ``SegformerHead``: ``decode_head.convs.*``,
  ``fusion_conv``, ``conv_seg``); classes from meta CLASSES/PALETTE (0.x) or meta.dataset_meta (1.x).
- ``hf``: Hugging Face ``save_pretrained`` directory (config.json + model.safetensors or pytorch_model.bin),
  or its state dict alone (``segformer.*``).
- ``native``: this project's keys (``encoder.stages.*``), e.g. a weights entry's tensors.

Pickled files are read with ``torch.load(weights_only=True)``. Objects it refuses inside a checkpoint's metadata
(an mmengine MessageHub, numpy scalars ...) are replaced by inert placeholders and named in ``skipped``: nothing
from the file is ever executed. Every loader ends in `load_state_dict_strict` (no missing or unexpected keys).
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .config import VARIANTS, SegFormerConfig, get_config
from .errors import ProjectError
from .model import SegFormer

IMAGENET_MEAN, IMAGENET_STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
# LayerNorm eps (block/stage norms, patch-embedding + key/value-reduction norms) of each source implementation
EPS = {"nvlabs": (1e-6, 1e-5), "mmseg": (1e-6, 1e-6), "hf": (1e-5, 1e-5)}


class CheckpointError(ProjectError, RuntimeError):
    """A checkpoint that cannot be read or does not fit; one line naming the file and the fix (exit 2)."""


ACCEPTED = ("pass a .pth/.pt/.bin saved with torch.save, a .safetensors file or a Hugging Face save_pretrained "
            "folder")


def sniff(path: Path) -> None:
    """CheckpointError in one line unless the file starts like a PyTorch checkpoint (a zip archive from torch.save,
    or a legacy pickle, protocol 2+): a text file, an empty file or other data never reaches the unpickler."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return
    if not head:
        raise CheckpointError(f"{path} is empty, not a checkpoint: {ACCEPTED}")
    try:
        text = head.decode("utf-8")
        is_text = all(c.isprintable() or c in "\r\n\t" for c in text[:200])
    except UnicodeDecodeError:
        is_text = False
    what = "a text file" if is_text else "neither a zip archive nor a pickle"
    raise CheckpointError(f"{path} is not a PyTorch checkpoint ({what}): {ACCEPTED}")


def _rename(state: dict, rules: list) -> dict:
    out = {}
    for key, value in state.items():
        for pattern, repl in rules:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def _merge_kv(state: dict, k_suffix: str, v_suffix: str) -> dict:
    """Concatenate separate key and value projections into our single `kv` projection."""
    out = dict(state)
    for key in [k for k in state if k.endswith(k_suffix + ".weight") or k.endswith(k_suffix + ".bias")]:
        prefix, kind = key[: -len(k_suffix) - len(key.rsplit(".", 1)[1]) - 1], key.rsplit(".", 1)[1]
        vkey = f"{prefix}{v_suffix}.{kind}"
        if vkey in state:
            out[f"{prefix}attn.kv.{kind}"] = torch.cat([out.pop(key), out.pop(vkey)], 0)
    return out


NVLABS_RULES = [
    (r"^backbone\.patch_embed(\d)\.", lambda m: f"encoder.stages.{int(m.group(1)) - 1}.patch_embed."),
    (r"^backbone\.block(\d)\.", lambda m: f"encoder.stages.{int(m.group(1)) - 1}.blocks."),
    (r"^backbone\.norm(\d)\.", lambda m: f"encoder.stages.{int(m.group(1)) - 1}.norm."),
    (r"\.mlp\.dwconv\.dwconv\.", ".mlp.dwconv."),
    (r"^decode_head\.linear_c(\d)\.proj\.", lambda m: f"decode_head.linear_c.{int(m.group(1)) - 1}."),
    (r"^decode_head\.linear_fuse\.conv\.", "decode_head.fuse."),
    (r"^decode_head\.linear_fuse\.bn\.", "decode_head.bn."),
    (r"^decode_head\.linear_pred\.", "decode_head.classifier."),
]

MMSEG_RULES = [
    (r"^backbone\.layers\.(\d)\.0\.projection\.", r"encoder.stages.\1.patch_embed.proj."),
    (r"^backbone\.layers\.(\d)\.0\.norm\.", r"encoder.stages.\1.patch_embed.norm."),
    (r"^backbone\.layers\.(\d)\.1\.(\d+)\.", r"encoder.stages.\1.blocks.\2."),
    (r"^backbone\.layers\.(\d)\.2\.", r"encoder.stages.\1.norm."),
    (r"\.attn\.attn\.out_proj\.", ".attn.proj."),
    (r"\.ffn\.layers\.0\.", ".mlp.fc1."),
    (r"\.ffn\.layers\.1\.", ".mlp.dwconv."),
    (r"\.ffn\.layers\.4\.", ".mlp.fc2."),
    (r"^decode_head\.fusion_conv\.", "decode_head.fusion."),
    (r"^decode_head\.conv_seg\.", "decode_head.classifier."),
]

HF_RULES = [
    # transformers 4.x and 5.x names
    (r"^segformer\.encoder\.patch_embeddings\.(\d)\.", r"encoder.stages.\1.patch_embed."),
    (r"^segformer\.encoder\.block\.(\d)\.", r"encoder.stages.\1.blocks."),
    (r"^segformer\.encoder\.layer_norm\.(\d)\.", r"encoder.stages.\1.norm."),
    (r"^segformer\.stages\.(\d)\.patch_embeddings\.", r"encoder.stages.\1.patch_embed."),
    (r"^segformer\.stages\.(\d)\.layer_norm\.", r"encoder.stages.\1.norm."),
    (r"^segformer\.stages\.", "encoder.stages."),
    (r"\.patch_embed\.layer_norm\.", ".patch_embed.norm."),
    (r"\.(layer_norm_1|layernorm_before)\.", ".norm1."),
    (r"\.(layer_norm_2|layernorm_after)\.", ".norm2."),
    (r"\.attention\.self\.query\.", ".attn.q."),
    (r"\.attention\.q_proj\.", ".attn.q."),
    (r"\.attention\.self\.(key|value)\.", r".attn.\1."),
    (r"\.attention\.(k|v)_proj\.", lambda m: ".attn.key." if m.group(1) == "k" else ".attn.value."),
    (r"\.attention\.self\.sr\.", ".attn.sr."),
    (r"\.attention\.sequence_reduction\.sequence_reduction\.", ".attn.sr."),
    (r"\.attention\.self\.layer_norm\.", ".attn.norm."),
    (r"\.attention\.sequence_reduction\.layer_norm\.", ".attn.norm."),
    (r"\.attention\.(output\.dense|o_proj)\.", ".attn.proj."),
    (r"\.mlp\.dense1\.", ".mlp.fc1."),
    (r"\.mlp\.dense2\.", ".mlp.fc2."),
    (r"\.mlp\.dwconv\.dwconv\.", ".mlp.dwconv."),
    (r"^decode_head\.(linear_c|linear_projections)\.(\d)\.proj\.", r"decode_head.linear_c.\2."),
    (r"^decode_head\.linear_fuse\.", "decode_head.fuse."),
    (r"^decode_head\.batch_norm\.", "decode_head.bn."),
]


def detect_layout(state: dict) -> str:
    keys = list(state)
    if any(k.startswith("backbone.layers.") for k in keys):
        return "mmseg"
    if any(k.startswith(("backbone.block", "backbone.patch_embed")) for k in keys):
        return "nvlabs"
    if any(k.startswith("segformer.") for k in keys):
        return "hf"
    if any(k.startswith("encoder.stages.") for k in keys):
        return "native"
    raise CheckpointError("unrecognised checkpoint layout: expected keys starting with backbone.block1 (NVlabs), "
                          "backbone.layers (mmsegmentation), segformer. (Hugging Face) or encoder.stages. (this "
                          f"project); the first keys are {', '.join(keys[:3]) or 'none'}")


def _mmseg_to_native(state: dict) -> dict:
    out = {}
    for key, value in _rename(state, MMSEG_RULES).items():
        m = re.match(r"(.*)\.attn\.attn\.in_proj_(weight|bias)$", key)
        if m:  # nn.MultiheadAttention's packed [q; k; v] -> our q and kv (k then v)
            c = value.shape[0] // 3
            out[f"{m[1]}.attn.q.{m[2]}"], out[f"{m[1]}.attn.kv.{m[2]}"] = value[:c], value[c:]
        elif re.search(r"\.mlp\.fc[12]\.weight$", key) and value.ndim == 4:  # 1x1 conv -> linear
            out[key] = value.flatten(1)
        else:
            out[key] = value
    return out


def to_native(state: dict) -> dict:
    """Map an NVlabs, mmsegmentation or HF state dict to this project's key names (keys no model uses dropped)."""
    layout = detect_layout(state)
    state = {k: v for k, v in state.items() if k not in unused_keys(state, layout)}
    if layout == "nvlabs":
        return _rename(state, NVLABS_RULES)
    if layout == "mmseg":
        return _mmseg_to_native(state)
    if layout == "hf":
        return _merge_kv(_rename(state, HF_RULES), "attn.key", "attn.value")
    return dict(state)


def unused_keys(state: dict, layout: str) -> list[str]:
    """Keys a source checkpoint carries that its own model never uses: NVlabs' head inherits an unused
    `conv_seg` from mmseg's BaseDecodeHead; auxiliary heads are training-only."""
    drop = [k for k in state if k.startswith("auxiliary_head.")]
    if layout == "nvlabs" and any(k.startswith("decode_head.linear_pred.") for k in state):
        drop += [k for k in state if k.startswith("decode_head.conv_seg.")]
    return drop


def infer_architecture(state: dict) -> dict:
    """Everything the shapes of a native state dict say about the architecture (heads are not in the shapes)."""
    n = sum(f"encoder.stages.{i}.patch_embed.proj.weight" in state for i in range(8))
    if n == 0:
        raise CheckpointError("no encoder stages in the checkpoint (encoder.stages.0.patch_embed.proj.weight missing)")
    proj = [state[f"encoder.stages.{i}.patch_embed.proj.weight"] for i in range(n)]
    widths = tuple(p.shape[0] for p in proj)
    depths = tuple(len({k.split(".")[4] for k in state if k.startswith(f"encoder.stages.{i}.blocks.")})
                   for i in range(n))
    srs = tuple(state[f"encoder.stages.{i}.blocks.0.attn.sr.weight"].shape[-1]
                if f"encoder.stages.{i}.blocks.0.attn.sr.weight" in state else 1 for i in range(n))
    ratios = {state[f"encoder.stages.{i}.blocks.0.mlp.fc1.weight"].shape[0] // widths[i]
              for i in range(n) if f"encoder.stages.{i}.blocks.0.mlp.fc1.weight" in state}
    if "decode_head.convs.0.conv.weight" in state:
        decoder, dwidth = "mmseg", state["decode_head.convs.0.conv.weight"].shape[0]
    elif "decode_head.linear_c.0.weight" in state:
        decoder, dwidth = "mlp", state["decode_head.linear_c.0.weight"].shape[0]
    else:
        raise CheckpointError("the checkpoint has no decode head (a backbone-only checkpoint, e.g. an ImageNet-"
                              "pretrained MiT, cannot segment): use a SegFormer trained for segmentation")
    if "decode_head.classifier.weight" not in state:
        raise CheckpointError("the checkpoint's decode head has no classifier (decode_head.linear_pred / conv_seg)")
    return {"widths": widths, "depths": depths, "sr_ratios": srs, "patch_sizes": tuple(p.shape[-1] for p in proj),
            "mlp_ratio": ratios.pop() if len(ratios) == 1 else sorted(ratios), "decoder": decoder,
            "decoder_width": dwidth, "num_classes": state["decode_head.classifier.weight"].shape[0]}


def table_variant(arch: dict) -> str | None:
    """The variant-table row with these widths, depths and decoder width, if any."""
    for name, cfg in VARIANTS.items():
        if (cfg.widths, cfg.depths, cfg.decoder_width) == (tuple(arch["widths"]), tuple(arch["depths"]),
                                                          arch["decoder_width"]):
            return name
    return None


def config_from_state(state: dict, layout: str, overrides: dict | None = None) -> SegFormerConfig:
    """A config that fits a native state dict: the table row it matches (heads, strides) with the shapes, the
    decoder kind and the source implementation's LayerNorm eps; `overrides` (e.g. from an HF config) win."""
    arch = infer_architecture(state)
    if isinstance(arch["mlp_ratio"], list):
        raise CheckpointError(f"stages use different MLP ratios {arch['mlp_ratio']}; this model needs one ratio")
    name = table_variant(arch)
    base = VARIANTS[name] if name else VARIANTS["b0"]
    if not name and len(arch["widths"]) != len(base.heads) and not (overrides or {}).get("heads"):
        raise CheckpointError(f"{len(arch['widths'])} stages fit no variant of the table ({', '.join(VARIANTS)})")
    cfg = replace(base, name=name or "custom", widths=tuple(arch["widths"]), depths=tuple(arch["depths"]),
                  sr_ratios=tuple(arch["sr_ratios"]), patch_sizes=tuple(arch["patch_sizes"]),
                  mlp_ratio=arch["mlp_ratio"], decoder=arch["decoder"], decoder_width=arch["decoder_width"],
                  num_classes=arch["num_classes"])
    if layout in EPS:
        cfg = replace(cfg, block_norm_eps=EPS[layout][0], embed_norm_eps=EPS[layout][1])
    return replace(cfg, **(overrides or {}))


def infer_config(state: dict) -> tuple[str | None, int, dict]:
    """(table variant or None, num_classes, shape facts) of a native state dict."""
    try:
        arch = infer_architecture(state)
    except CheckpointError:
        return None, 0, {}
    facts = {"widths": arch["widths"], "depths": arch["depths"], "decoder": arch["decoder"]}
    return table_variant(arch), arch["num_classes"], facts


def load_state_dict_strict(model: SegFormer, state: dict, source: str = "checkpoint") -> None:
    """Load with strict key and shape matching; errors list the offending keys and the fitting variant."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        variant, ncls, facts = infer_config(state)
        fit = (f"it fits variant {variant!r} with {ncls} classes" if variant else f"it fits no table variant {facts}")
        parts = [f"{source} does not fit SegFormer-{model.config.name} with {model.config.num_classes} classes; {fit}"]
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if keys:
                parts.append(f"{label} keys ({len(keys)}): {', '.join(keys[:5])}{' …' if len(keys) > 5 else ''}")
        raise CheckpointError("\n  ".join(parts))
    model.load_state_dict(state, strict=True)


# ---- reading files -------------------------------------------------------------------------------------------

def _placeholder(qualified: str) -> type:
    """An inert stand-in for a global that weights_only refuses: it records what it was built from, runs nothing."""
    module, _, name = qualified.rpartition(".")

    def init(self, *args, **kwargs):
        self.args = args

    def setstate(self, state):
        self.state = state

    cls = type(name, (), {"__init__": init, "__setstate__": setstate, "__module__": module,
                          "__repr__": lambda self: f"<skipped {qualified}>"})
    cls.__new__ = lambda c, *a, **k: object.__new__(c)
    return cls


def safe_load(path: Path) -> tuple[object, list[str]]:
    """torch.load(weights_only=True); globals it refuses (in metadata) become placeholders, listed in the result."""
    import pickle
    import zipfile

    sniff(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True), []
    except pickle.UnpicklingError as first:
        if not zipfile.is_zipfile(path):  # a legacy pickle (or no checkpoint at all) cannot be scanned safely
            reason = str(first).split(". ")[-1].splitlines()[0][:200]
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint with weights_only=True ({reason}); "
                                  "if it is one in the legacy format, re-save its state_dict with torch.save") from None
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as exc:  # noqa: BLE001 - whatever a damaged file makes the unpickler raise
        msg = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}"
                              f"{': ' + msg if msg else ''})") from None
    stand_ins = [_placeholder(g) for g in unsafe]
    try:
        with torch.serialization.safe_globals(stand_ins):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{path}: cannot be read with weights_only=True even with placeholders for "
                              f"{', '.join(unsafe)} ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
                              ) from None
    return obj, sorted(unsafe)


def sha256_path(path: Path) -> str:
    """sha256 of a file, or of a directory's files (names and bytes, sorted)."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        if path.is_dir():
            h.update(str(p.relative_to(path)).encode() + b"\0")
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


@dataclass
class Checkpoint:
    """What a source checkpoint holds, in this project's terms."""

    format: str  # nvlabs | mmseg-0.x | mmseg-1.x | hf | native
    state: dict  # native keys, float32
    config: SegFormerConfig
    classes: list[str] | None = None
    palette: list[list[int]] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    skipped: list[str] = field(default_factory=list)  # what was not read (unsafe globals, unused keys)
    source_sha256: str = ""
    extra: dict = field(default_factory=dict)

    def build(self) -> SegFormer:
        model = SegFormer(self.config)
        load_state_dict_strict(model, self.state, source=f"{self.format} checkpoint")
        return model.eval()


def _as_list(x) -> list | None:
    return [list(c) if isinstance(c, (list, tuple)) else c for c in x] if isinstance(x, (list, tuple)) else None


def _read_hf_dir(path: Path) -> tuple[dict, dict, list[str]]:
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{path}: a folder must be a Hugging Face save_pretrained directory with config.json")
    hf_cfg = json.loads(cfg_path.read_text())
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            tensors = path / name
            break
    else:
        raise CheckpointError(f"{path}: neither model.safetensors nor pytorch_model.bin is there (sharded "
                              "checkpoints are not supported: save_pretrained(..., max_shard_size='10GB'))")
    if tensors.suffix == ".safetensors":
        from safetensors.torch import load_file

        state, skipped = load_file(str(tensors)), []
    else:
        state, skipped = safe_load(tensors)
    meta = {"hf_config": hf_cfg}
    pre = path / "preprocessor_config.json"
    if pre.is_file():
        meta["preprocessor"] = json.loads(pre.read_text())
    return state, meta, skipped


def _hf_overrides(hf_cfg: dict) -> dict:
    out = {}
    for ours, theirs in (("heads", "num_attention_heads"), ("strides", "strides"), ("patch_sizes", "patch_sizes"),
                         ("sr_ratios", "sr_ratios")):
        if theirs in hf_cfg:
            out[ours] = tuple(hf_cfg[theirs])
    ratios = set(hf_cfg.get("mlp_ratios", []))
    if len(ratios) > 1:
        raise CheckpointError(f"config.json: mlp_ratios {hf_cfg['mlp_ratios']} differ per stage; this model needs one")
    return out


def read_checkpoint(src: str | Path) -> Checkpoint:
    """Read any supported checkpoint (file or HF directory) into native tensors, config and metadata."""
    path = Path(src)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    skipped, meta = [], {}
    if path.is_dir():
        raw, meta, skipped = _read_hf_dir(path)
    elif path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            raw = load_file(str(path))
        except SafetensorError as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    else:
        try:
            raw, skipped = safe_load(path)
        except (RuntimeError, EOFError, OSError) as exc:
            if isinstance(exc, CheckpointError):
                raise
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({str(exc).splitlines()[0]})") from None
    if isinstance(raw, dict) and isinstance(raw.get("meta"), dict):
        meta = {**raw["meta"], **meta}
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise CheckpointError(f"{path}: holds no state dict of tensors (expected a dict, or one under 'state_dict')")
    raw = {k[len("module."):] if k.startswith("module.") else k: v for k, v in raw.items()}
    layout = detect_layout(raw)
    dropped = unused_keys(raw, layout)
    state = {k: v.float() if v.is_floating_point() else v for k, v in to_native(raw).items()}
    hf_cfg = meta.get("hf_config", {})
    overrides = _hf_overrides(hf_cfg) if hf_cfg else {}
    if layout == "native" and isinstance(meta.get("architecture"), dict):
        config = SegFormerConfig.from_architecture(meta.get("variant", "custom"), meta["architecture"])
    else:
        config = config_from_state(state, layout, overrides)
    ck = Checkpoint(layout, state, config, skipped=skipped + [f"unused key {k}" for k in dropped],
                    source_sha256=sha256_path(path))
    _fill_metadata(ck, meta)
    return ck


def _fill_metadata(ck: Checkpoint, meta: dict) -> None:
    """Classes, palette and normalisation from whatever metadata the format carries."""
    if ck.format in ("nvlabs", "mmseg"):
        dm = meta.get("dataset_meta") if isinstance(meta.get("dataset_meta"), dict) else None
        if ck.format == "mmseg":
            ck.format = "mmseg-1.x" if dm is not None else "mmseg-0.x"
        src = dm or meta
        ck.classes = _as_list(src.get("classes") or src.get("CLASSES"))
        ck.palette = _as_list(src.get("palette") or src.get("PALETTE"))
        ck.mean, ck.std = IMAGENET_MEAN, IMAGENET_STD  # mmseg's SegFormer configs normalise with ImageNet stats
    elif ck.format == "hf":
        id2label = meta.get("hf_config", {}).get("id2label")
        if id2label:
            ck.classes = [id2label[k] for k in sorted(id2label, key=int)]
        pre = meta.get("preprocessor", {})
        scale = 255.0 if pre.get("do_rescale", True) and pre.get("rescale_factor", 1 / 255) < 0.01 else 1.0
        if pre.get("image_mean") and pre.get("image_std"):
            ck.mean = tuple(float(m) * scale for m in pre["image_mean"])
            ck.std = tuple(float(s) * scale for s in pre["image_std"])
        else:
            ck.mean, ck.std = IMAGENET_MEAN, IMAGENET_STD
    else:  # native: a weights entry's metadata when read through get_weights, else nothing
        for key in ("classes", "palette"):
            setattr(ck, key, _as_list(meta.get(key)))
        if meta.get("mean"):
            ck.mean, ck.std = tuple(meta["mean"]), tuple(meta["std"])
    if ck.classes is not None and not all(isinstance(c, str) for c in ck.classes):
        ck.skipped.append("class names that are not strings")
        ck.classes = None
    if ck.palette is not None and not all(isinstance(c, list) and len(c) == 3 for c in ck.palette):
        ck.skipped.append("a palette that is not a list of RGB triples")
        ck.palette = None


def load_checkpoint(path: str | Path, variant: str | None = None, num_classes: int | None = None) -> SegFormer:
    """Load a checkpoint of any supported format into a new SegFormer (eval mode).

    Variant and class count default to what the checkpoint says; given ones must fit (the error names what fits).
    """
    ck = read_checkpoint(path)
    cfg = ck.config
    if variant is not None or num_classes is not None:
        base = get_config(variant) if variant else cfg
        cfg = replace(base, num_classes=num_classes or cfg.num_classes, decoder=cfg.decoder,
                      block_norm_eps=cfg.block_norm_eps, embed_norm_eps=cfg.embed_norm_eps)
    model = SegFormer(cfg)
    load_state_dict_strict(model, ck.state, source=str(path))
    return model.eval()
