"""SegFormer: Mix Transformer (MiT) encoder + All-MLP decoder, for every row of the variant table.

Follows the NVlabs reference implementation: overlapping patch embeddings (strided conv + LayerNorm),
efficient self-attention whose keys/values are spatially reduced by a strided conv (ratio R_i), Mix-FFN
(Linear -> 3x3 depthwise conv -> GELU -> Linear), pre-norm residual blocks with stochastic depth, a LayerNorm
after each stage. Two decoders (the config's ``decoder``): the paper's All-MLP head (NVlabs, Hugging Face)
projects each stage to a common width, upsamples to 1/4 resolution, concatenates (deepest stage first), fuses
with a 1x1 conv + BatchNorm + ReLU and classifies with a 1x1 conv; mmsegmentation's SegformerHead adds BN + ReLU
to each stage's projection and concatenates shallowest first. Both have an exact folded inference form.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import SegFormerConfig, get_config


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample while training."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class OverlapPatchEmbed(nn.Module):
    def __init__(self, in_ch: int, width: int, patch: int, stride: int, eps: float):
        super().__init__()
        self.proj = nn.Conv2d(in_ch, width, patch, stride, padding=patch // 2)
        self.norm = nn.LayerNorm(width, eps=eps)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class EfficientAttention(nn.Module):
    """Multi-head self-attention with keys/values computed on a sequence reduced by `sr_ratio`."""

    def __init__(self, width: int, heads: int, sr_ratio: int, eps: float):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(width, width, sr_ratio, sr_ratio)
            self.norm = nn.LayerNorm(width, eps=eps)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.heads, c // self.heads).transpose(1, 2)
        if self.sr_ratio > 1:
            x = self.sr(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
            x = self.norm(x)
        k, v = self.kv(x).reshape(b, -1, 2, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class MixFFN(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = self.fc1(x)
        b, n, c = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
        return self.fc2(self.act(x))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, sr_ratio: int, mlp_ratio: int, drop_path: float,
                 eps: float, embed_eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=eps)
        self.attn = EfficientAttention(width, heads, sr_ratio, embed_eps)
        self.norm2 = nn.LayerNorm(width, eps=eps)
        self.mlp = MixFFN(width, width * mlp_ratio)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.mlp(self.norm2(x), h, w))


class Stage(nn.Module):
    def __init__(self, cfg: SegFormerConfig, i: int, drop_paths: list[float]):
        super().__init__()
        in_ch = cfg.in_channels if i == 0 else cfg.widths[i - 1]
        width = cfg.widths[i]
        self.patch_embed = OverlapPatchEmbed(in_ch, width, cfg.patch_sizes[i], cfg.strides[i], cfg.embed_norm_eps)
        self.blocks = nn.ModuleList(
            Block(width, cfg.heads[i], cfg.sr_ratios[i], cfg.mlp_ratio, dp, cfg.block_norm_eps, cfg.embed_norm_eps)
            for dp in drop_paths)
        self.norm = nn.LayerNorm(width, eps=cfg.block_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, h, w = self.patch_embed(x)
        for blk in self.blocks:
            x = blk(x, h, w)
        x = self.norm(x)
        return x.transpose(1, 2).reshape(x.shape[0], -1, h, w)


class MixTransformer(nn.Module):
    """The hierarchical encoder: four stages at strides 4, 8, 16, 32."""

    def __init__(self, cfg: SegFormerConfig):
        super().__init__()
        rates = torch.linspace(0, cfg.drop_path_rate, sum(cfg.depths)).tolist()
        starts = [sum(cfg.depths[:i]) for i in range(len(cfg.depths))]
        self.stages = nn.ModuleList(
            Stage(cfg, i, rates[s:s + d]) for i, (s, d) in enumerate(zip(starts, cfg.depths)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class AllMLPDecoder(nn.Module):
    def __init__(self, cfg: SegFormerConfig):
        super().__init__()
        d = cfg.decoder_width
        self.linear_c = nn.ModuleList(nn.Linear(c, d) for c in cfg.widths)
        self.fuse = nn.Conv2d(len(cfg.widths) * d, d, 1, bias=False)
        self.bn = nn.BatchNorm2d(d)
        self.dropout = nn.Dropout2d(cfg.dropout)
        self.classifier = nn.Conv2d(d, cfg.num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        projected = []
        for feat, linear in zip(features, self.linear_c):
            b, _, h, w = feat.shape
            x = linear(feat.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, -1, h, w)
            if x.shape[-2:] != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            projected.append(x)
        x = F.relu(self.bn(self.fuse(torch.cat(projected[::-1], dim=1))))
        return self.classifier(self.dropout(x))


class FoldedAllMLPDecoder(nn.Module):
    """The All-MLP decoder folded for inference (exact, eval mode).

    Each stage's linear projection, its slice of the 1x1 fuse conv and the BatchNorm are linear, and bilinear
    upsampling commutes with a per-pixel linear map, so ``BN(fuse(concat(up(P_i x_i))))`` equals
    ``sum_i up(M_i x_i) + c`` with ``M_i = s * W_fuse_i @ P_i``. Each stage is projected at its own resolution by
    one 1x1 conv; the 4 x d-channel concat at 1/4 resolution and the 4d -> d fuse conv over it are gone
    (B1 at 1024²: 17 of the decoder's ~19 GMAC)."""

    def __init__(self, widths: tuple[int, ...], width: int, num_classes: int):
        super().__init__()
        self.proj = nn.ModuleList(nn.Conv2d(c, width, 1, bias=False) for c in widths)
        self.bias = nn.Parameter(torch.zeros(width), requires_grad=False)
        self.classifier = nn.Conv2d(width, num_classes, 1)

    @classmethod
    @torch.no_grad()
    def fold(cls, dec: AllMLPDecoder) -> "FoldedAllMLPDecoder":
        d, n = dec.fuse.out_channels, len(dec.linear_c)
        out = cls(tuple(lin.in_features for lin in dec.linear_c), d, dec.classifier.out_channels)
        fuse = dec.fuse.weight.detach().double().reshape(d, n * d)
        bn = dec.bn
        scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
        bias = bn.bias.double() - bn.running_mean.double() * scale
        for i, (lin, conv) in enumerate(zip(dec.linear_c, out.proj)):
            w_i = fuse[:, (n - 1 - i) * d:(n - i) * d]  # the concat is deepest stage first
            conv.weight.copy_((scale[:, None] * (w_i @ lin.weight.double()))[:, :, None, None])
            bias += scale * (w_i @ lin.bias.double())
        out.bias.copy_(bias)
        out.classifier.load_state_dict(dec.classifier.state_dict())
        return out.requires_grad_(False).to(dec.fuse.weight.device)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        acc = None
        for feat, conv in zip(features, self.proj):
            x = conv(feat)
            if x.shape[-2:] != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            acc = x if acc is None else acc + x
        return self.classifier(F.relu(acc + self.bias.view(1, -1, 1, 1)))


class ConvBNReLU(nn.Module):
    """1x1 conv (no bias) + BatchNorm + ReLU: mmsegmentation's ConvModule as SegformerHead uses it."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))

    @torch.no_grad()
    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight [out, in], bias [out]) of the conv with the eval BatchNorm folded in (float64)."""
        bn = self.bn
        scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
        return scale[:, None] * self.conv.weight.double().flatten(1), bn.bias.double() - bn.running_mean.double() * scale


class MMSegHead(nn.Module):
    """mmsegmentation's SegformerHead: per stage 1x1 conv + BN + ReLU to a common width, upsample to 1/4, concatenate
    (shallowest stage first), fuse with 1x1 conv + BN + ReLU, classify with a 1x1 conv."""

    def __init__(self, cfg: SegFormerConfig):
        super().__init__()
        d = cfg.decoder_width
        self.convs = nn.ModuleList(ConvBNReLU(c, d) for c in cfg.widths)
        self.fusion = ConvBNReLU(len(cfg.widths) * d, d)
        self.dropout = nn.Dropout2d(cfg.dropout)
        self.classifier = nn.Conv2d(d, cfg.num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        outs = []
        for feat, conv in zip(features, self.convs):
            x = conv(feat)
            if x.shape[-2:] != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            outs.append(x)
        return self.classifier(self.dropout(self.fusion(torch.cat(outs, dim=1))))


class FoldedMMSegHead(nn.Module):
    """`MMSegHead` folded for inference (exact, eval mode).

    BatchNorms fold into their convs. The fusion conv is linear over the concatenation and commutes with the
    bilinear upsample, so its slice for stage i is applied at stage i's own resolution before upsampling and the
    four maps are summed: no 4 x d-channel concat and no 4d -> d conv at 1/4 resolution. The per-stage ReLU stays
    before the fusion slice, the fusion's BN + ReLU after the sum."""

    def __init__(self, widths: tuple[int, ...], width: int, num_classes: int):
        super().__init__()
        self.reduce = nn.ModuleList(nn.Conv2d(c, width, 1) for c in widths)
        self.proj = nn.ModuleList(nn.Conv2d(width, width, 1, bias=False) for _ in widths)
        self.bias = nn.Parameter(torch.zeros(width), requires_grad=False)
        self.classifier = nn.Conv2d(width, num_classes, 1)

    @classmethod
    @torch.no_grad()
    def fold(cls, head: MMSegHead) -> "FoldedMMSegHead":
        d = head.fusion.conv.out_channels
        out = cls(tuple(c.conv.in_channels for c in head.convs), d, head.classifier.out_channels)
        fw, fb = head.fusion.folded()
        for i, (stage, reduce, proj) in enumerate(zip(head.convs, out.reduce, out.proj)):
            w, b = stage.folded()
            reduce.weight.copy_(w[:, :, None, None])
            reduce.bias.copy_(b)
            proj.weight.copy_(fw[:, i * d:(i + 1) * d][:, :, None, None])
        out.bias.copy_(fb)
        out.classifier.load_state_dict(head.classifier.state_dict())
        return out.requires_grad_(False).to(head.classifier.weight.device)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        acc = None
        for feat, reduce, proj in zip(features, self.reduce, self.proj):
            x = proj(F.relu(reduce(feat)))
            if x.shape[-2:] != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            acc = x if acc is None else acc + x
        return self.classifier(F.relu(acc + self.bias.view(1, -1, 1, 1)))


DECODER_CLASSES = {"mlp": AllMLPDecoder, "mmseg": MMSegHead}


def folded_decoder(head: nn.Module) -> nn.Module:
    """The inference form of a decoder (exact): BatchNorms and the fuse conv folded, no 1/4-resolution concat."""
    if isinstance(head, AllMLPDecoder):
        return FoldedAllMLPDecoder.fold(head.eval())
    if isinstance(head, MMSegHead):
        return FoldedMMSegHead.fold(head.eval())
    raise TypeError(f"no folded form for {type(head).__name__}")


class SegFormer(nn.Module):
    """SegFormer returning logits at 1/4 of the input resolution (N, num_classes, H/4, W/4)."""

    def __init__(self, cfg: SegFormerConfig):
        super().__init__()
        self.config = cfg
        self.encoder = MixTransformer(cfg)
        if cfg.decoder not in DECODER_CLASSES:
            raise ValueError(f"unknown decoder {cfg.decoder!r}; choose one of {', '.join(DECODER_CLASSES)}")
        self.decode_head = DECODER_CLASSES[cfg.decoder](cfg)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.decode_head(self.encoder(pixels))


def create_model(variant: str = "b1", num_classes: int = 19, **overrides) -> SegFormer:
    """Build an (untrained) SegFormer of a variant from the table, e.g. ``create_model("b1", 19)``."""
    from dataclasses import replace

    return SegFormer(replace(get_config(variant, num_classes), **overrides))


class SegmentationPipeline(nn.Module):
    """What is served: uint8 NHWC RGB in, uint8 labels [N,H,W] (and optionally logits) out, at input size.

    Normalisation, the final bilinear upsample and the argmax live inside the graph so that every backend
    (ONNX Runtime, TensorRT, the GPU path) returns the same thing from the same bytes.
    """

    def __init__(self, model: SegFormer, mean, std, with_logits: bool = False, fold_decoder: bool = False):
        super().__init__()
        if fold_decoder:  # the exported graph's decoder: same labels, no concat / fuse conv at 1/4 resolution
            import copy

            model = copy.deepcopy(model)
            model.decode_head = folded_decoder(model.decode_head)
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("inv_std", 1.0 / torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.with_logits = with_logits

    def forward(self, images: torch.Tensor):
        x = images.float().permute(0, 3, 1, 2)  # cast first: TensorRT has no uint8 Transpose
        x = (x - self.mean) * self.inv_std
        logits = self.model(x)
        logits = F.interpolate(logits, size=images.shape[1:3], mode="bilinear", align_corners=False)
        labels = logits.argmax(dim=1).to(torch.uint8)
        return (labels, logits) if self.with_logits else labels
