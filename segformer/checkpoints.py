"""Loading foreign SegFormer checkpoints: NVlabs/mmseg-0.x ``.pth`` and Hugging Face layouts, by key remap.

Every loader ends in `load_state_dict_strict`, which refuses missing or unexpected keys and, when shapes do not
fit, names the variant (and class count) that the checkpoint would fit.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from .config import VARIANTS, get_config
from .model import SegFormer


class CheckpointError(RuntimeError):
    pass


def _rename(state: dict, rules: list[tuple[str, str]]) -> dict:
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
    if any(k.startswith("backbone.") for k in keys):
        if any(k.startswith("decode_head.convs.") for k in keys):
            raise CheckpointError("this is an mmseg 1.x SegformerHead checkpoint (decode_head.convs.*): its decoder "
                                  "adds BN+ReLU per stage and differs from the paper's All-MLP decoder; export it "
                                  "with mmseg instead, or convert it to the NVlabs layout")
        return "nvlabs"
    if any(k.startswith("segformer.") for k in keys):
        return "hf"
    if any(k.startswith("encoder.stages.") for k in keys):
        return "native"
    raise CheckpointError("unrecognised checkpoint layout: expected keys starting with backbone./decode_head. "
                          "(NVlabs/mmseg), segformer. (Hugging Face) or encoder.stages. (this project)")


def to_native(state: dict) -> dict:
    """Map a NVlabs/mmseg or HF state dict to this project's key names."""
    layout = detect_layout(state)
    if layout == "nvlabs":
        return _rename(state, NVLABS_RULES)
    if layout == "hf":
        return _merge_kv(_rename(state, HF_RULES), "attn.key", "attn.value")
    return dict(state)


def infer_config(state: dict) -> tuple[str | None, int, dict]:
    """Guess (variant, num_classes, shape facts) from a native state dict."""
    widths = tuple(state[f"encoder.stages.{i}.patch_embed.proj.weight"].shape[0] for i in range(4)
                   if f"encoder.stages.{i}.patch_embed.proj.weight" in state)
    depths = tuple(len({k.split(".")[4] for k in state if k.startswith(f"encoder.stages.{i}.blocks.")})
                   for i in range(len(widths)))
    num_classes = state["decode_head.classifier.weight"].shape[0] if "decode_head.classifier.weight" in state else 0
    decoder = state["decode_head.fuse.weight"].shape[0] if "decode_head.fuse.weight" in state else 0
    for name, cfg in VARIANTS.items():
        if cfg.widths == widths and cfg.depths == depths and cfg.decoder_width == decoder:
            return name, num_classes, {"widths": widths, "depths": depths}
    return None, num_classes, {"widths": widths, "depths": depths, "decoder": decoder}


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


def load_checkpoint(path: str | Path, variant: str | None = None, num_classes: int | None = None) -> SegFormer:
    """Load a ``.pth``/``.bin``/``.safetensors`` checkpoint of any supported layout into a new SegFormer.

    Variant and class count default to what the checkpoint's shapes say.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        raw = load_file(str(path))
    else:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(raw, dict) and "state_dict" in raw and isinstance(raw["state_dict"], dict):
        raw = raw["state_dict"]
    state = {k: v.float() if v.is_floating_point() else v for k, v in to_native(raw).items()}
    guess, ncls, facts = infer_config(state)
    variant = variant or guess
    if variant is None:
        raise CheckpointError(f"{path}: shapes {facts} fit no variant of the table ({', '.join(VARIANTS)})")
    model = SegFormer(get_config(variant, num_classes or ncls))
    load_state_dict_strict(model, state, source=str(path))
    return model.eval()
