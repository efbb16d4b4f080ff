"""Source models for the import tests: each format's own implementation is the oracle, never our remap.

- mmsegmentation: mmseg 1.2.2's own MixVisionTransformer + SegformerHead (test-only dependency).
- Hugging Face: transformers' SegformerForSemanticSegmentation, written with save_pretrained.
- NVlabs: NVlabs' code is not packaged; its forward pass is transformers' model with NVlabs' LayerNorm eps
  (1e-6 in blocks and stage norms, 1e-5 in patch embeddings and key/value reductions), and the checkpoint is
  written from it with the key table below (NVlabs' names, written here independently of segformer.checkpoints).
"""
from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

CAMVID = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "camvid"


def camvid_images(size: tuple[int, int], n: int = 4) -> np.ndarray:
    """n CamVid test images resized (bilinear) to size: uint8 [n, H, W, 3]; skips when CamVid is absent."""
    from client.preprocess import load_image, resize_image

    folder = CAMVID / "test" / "images"
    if not folder.is_dir():
        pytest.skip(f"CamVid is not at {CAMVID} (development data, present in CI)")
    files = sorted(folder.glob("*.jpg"))[::37][:n]
    return np.stack([resize_image(load_image(p), size) for p in files])


def normalise(images: np.ndarray, mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375)) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def labels_from_logits(logits: torch.Tensor, size) -> np.ndarray:
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False).argmax(1).to(torch.uint8).numpy()


def ours_labels(model, images: np.ndarray, mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375)):
    from segformer.model import SegmentationPipeline

    with torch.no_grad():
        return SegmentationPipeline(model.eval(), mean, std)(torch.from_numpy(images)).numpy()


def busy_bn(module: torch.nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial statistics (an untrained model's BN is the identity)."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_((torch.rand(n, generator=g) - 0.5) * 0.4)


# ---- mmsegmentation -------------------------------------------------------------------------------------------

def _mmseg():
    """Import mmseg's MiT and SegformerHead; mmcv-lite lacks the compiled mmcv.ops, which these never use."""
    pytest.importorskip("mmengine")
    if "mmcv.ops" not in sys.modules:
        ops = types.ModuleType("mmcv.ops")

        def stand_in(name):
            if name.startswith("__"):
                raise AttributeError(name)
            return type(name, (), {})

        ops.__getattr__ = stand_in
        sys.modules["mmcv.ops"] = ops
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mmseg.models.backbones.mit import MixVisionTransformer
        from mmseg.models.decode_heads.segformer_head import SegformerHead
    return MixVisionTransformer, SegformerHead


MIT = {"b0": ((32, 64, 160, 256), (2, 2, 2, 2), 256), "b1": ((64, 128, 320, 512), (2, 2, 2, 2), 256),
       "b2": ((64, 128, 320, 512), (3, 4, 6, 3), 768)}


class MMSegModel(torch.nn.Module):
    def __init__(self, variant: str = "b0", classes: int = 19, seed: int = 0):
        super().__init__()
        mit, head = _mmseg()
        widths, depths, channels = MIT[variant]
        torch.manual_seed(seed)
        self.backbone = mit(in_channels=3, embed_dims=widths[0], num_stages=4, num_layers=list(depths),
                            num_heads=[1, 2, 5, 8], patch_sizes=[7, 3, 3, 3], sr_ratios=[8, 4, 2, 1],
                            out_indices=(0, 1, 2, 3), mlp_ratio=4, qkv_bias=True)
        self.decode_head = head(in_channels=list(widths), in_index=[0, 1, 2, 3], channels=channels,
                                dropout_ratio=0.1, num_classes=classes, norm_cfg=dict(type="BN", requires_grad=True),
                                align_corners=False)
        busy_bn(self.decode_head, seed)
        self.eval()

    def forward(self, x):
        return self.decode_head(self.backbone(x))


# ---- Hugging Face and NVlabs ----------------------------------------------------------------------------------

def hf_model(variant: str = "b0", classes: int = 19, seed: int = 0, id2label: dict | None = None):
    transformers = pytest.importorskip("transformers")
    widths, depths, decoder = MIT[variant]
    torch.manual_seed(seed)
    # initializer_range 0.1: an untrained model whose labels vary over the image (at HF's 0.02 it predicts ~3
    # classes with near-ties everywhere, which would make a parity check meaningless)
    cfg = transformers.SegformerConfig(hidden_sizes=list(widths), depths=list(depths), decoder_hidden_size=decoder,
                                       num_labels=classes, initializer_range=0.1, id2label=id2label or {i: f"c{i}" for i in range(classes)},
                                       label2id={v: k for k, v in (id2label or {i: f"c{i}" for i in
                                                                                range(classes)}).items()})
    model = transformers.SegformerForSemanticSegmentation(cfg).eval()
    busy_bn(model, seed)
    return model


def hf_logits(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(pixel_values=x).logits


def as_nvlabs(model) -> None:
    """Make a transformers SegFormer compute NVlabs' forward: NVlabs' LayerNorm eps."""
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.LayerNorm):
            m.eps = 1e-5 if ("patch_embeddings" in name or "sequence_reduction" in name
                             or "attention.self.layer_norm" in name) else 1e-6


def nvlabs_state_from_hf(state: dict) -> dict:
    """A transformers SegFormer state dict in NVlabs' names (with NVlabs' unused conv_seg, as its files have)."""
    table = [
        (r"^segformer\.encoder\.patch_embeddings\.(\d)\.proj\.", lambda m: f"backbone.patch_embed{int(m[1]) + 1}.proj."),
        (r"^segformer\.encoder\.patch_embeddings\.(\d)\.layer_norm\.",
         lambda m: f"backbone.patch_embed{int(m[1]) + 1}.norm."),
        (r"^segformer\.encoder\.block\.(\d)\.(\d+)\.", lambda m: f"backbone.block{int(m[1]) + 1}.{m[2]}."),
        (r"^segformer\.encoder\.layer_norm\.(\d)\.", lambda m: f"backbone.norm{int(m[1]) + 1}."),
        (r"\.layer_norm_1\.", ".norm1."), (r"\.layer_norm_2\.", ".norm2."),
        (r"\.attention\.self\.query\.", ".attn.q."), (r"\.attention\.self\.sr\.", ".attn.sr."),
        (r"\.attention\.self\.layer_norm\.", ".attn.norm."), (r"\.attention\.output\.dense\.", ".attn.proj."),
        (r"\.mlp\.dense1\.", ".mlp.fc1."), (r"\.mlp\.dense2\.", ".mlp.fc2."),
        (r"\.mlp\.dwconv\.dwconv\.", ".mlp.dwconv.dwconv."),
        (r"^decode_head\.(linear_c|linear_projections)\.(\d)\.proj\.",
         lambda m: f"decode_head.linear_c{int(m[2]) + 1}.proj."),
        (r"^decode_head\.linear_fuse\.", "decode_head.linear_fuse.conv."),
        (r"^decode_head\.batch_norm\.", "decode_head.linear_fuse.bn."),
        (r"^decode_head\.classifier\.", "decode_head.linear_pred."),
    ]
    out, kv = {}, {}
    for key, value in state.items():
        m = re.match(r"(.*)\.attention\.self\.(key|value)\.(weight|bias)$", key)
        if m:
            kv.setdefault((m[1], m[3]), {})[m[2]] = value
            continue
        for pattern, repl in table:
            key = re.sub(pattern, repl, key)
        out[key] = value
    for (prefix, kind), parts in kv.items():
        block = re.sub(r"^segformer\.encoder\.block\.(\d)\.(\d+)", lambda m: f"backbone.block{int(m[1]) + 1}.{m[2]}",
                       prefix)
        out[f"{block}.attn.kv.{kind}"] = torch.cat([parts["key"], parts["value"]])
    k = out["decode_head.linear_pred.weight"].shape[0]
    out["decode_head.conv_seg.weight"] = torch.zeros(k, out["decode_head.linear_pred.weight"].shape[1], 1, 1)
    out["decode_head.conv_seg.bias"] = torch.zeros(k)
    return out
