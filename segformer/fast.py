"""The GPU fast path: the same SegFormer, rearranged so that less memory moves per image.

- **Folded decoder.** Each stage's linear projection, its slice of the 1x1 fuse conv and the (eval) BatchNorm
  are all linear, and bilinear upsampling commutes with a per-pixel linear map, so
  ``BN(fuse(concat(up(P_i x_i))))`` equals ``sum_i up(M_i x_i) + c`` with ``M_i = s * W_fuse_i @ P_i`` computed
  once. Each stage is projected at its own resolution and the 4 x 256-channel concat at 1/4 resolution (and the
  1024 -> 256 fuse GEMM over it) disappears.
- **Fused Mix-FFN middle** (`fused_mixffn=True`, the default): depthwise 3x3 conv + bias + GELU in one Triton
  kernel (`FusedMixFFN`, a rolling three-row window per column strip): on the H100 176 us/img where cuDNN's
  depthwise conv + inductor's GELU took 215 (batch 32), 0.865 vs 0.909 ms/img at batch 16.
- **Fused upsample + argmax** (`segformer.kernels.upsample_argmax`): full-resolution logits never hit memory.
- **8-channel input**: the RGB input is zero-padded to 8 channels (and the first conv's weights likewise) so the
  first patch embedding runs on tensor cores.
- **FP16** weights and activations (LayerNorm/softmax accumulate in FP32 inside PyTorch's kernels), SDPA
  (flash) attention, channels-last convolutions on the token layout without copies, `torch.compile` to fuse the
  elementwise glue, and **CUDA graphs** per batch bucket (`GraphedSegmenter`).

`FastSegmenter` keeps the served contract: uint8 NHWC RGB in, uint8 labels [N, H, W] out.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import mixffn as mixffn_kernel
from .kernels import dwconv3x3_gelu, upsample_argmax
from .model import AllMLPDecoder, Block, FoldedAllMLPDecoder, MixFFN, SegFormer, folded_decoder

# Mix-FFN paths: the whole half-block in one kernel / fc1 by cuBLAS then depthwise+GELU+fc2+residual in one kernel
# / round 2's depthwise+GELU kernel / cuDNN + inductor
MIXFFN_PATHS = ("fused", "dwfc2", "round2", "torch")


@torch.library.custom_op("segformer::dwconv3x3_gelu", mutates_args=())
def _dwconv3x3_gelu_op(x: torch.Tensor, h: int, w: int, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return dwconv3x3_gelu(x, h, w, weight, bias)


@_dwconv3x3_gelu_op.register_fake
def _(x, h, w, weight, bias):
    return torch.empty_like(x)


class FusedMixFFN(nn.Module):
    """Mix-FFN with its depthwise 3x3 conv, bias and GELU in one kernel (segformer.kernels.dwconv3x3_gelu):
    the hidden activation (4x the width) is written once instead of twice and read once instead of twice."""

    def __init__(self, mlp: MixFFN):
        super().__init__()
        self.fc1, self.fc2 = mlp.fc1, mlp.fc2
        self.weight, self.bias = mlp.dwconv.weight, mlp.dwconv.bias

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return self.fc2(_dwconv3x3_gelu_op(self.fc1(x), h, w, self.weight, self.bias))


@torch.library.custom_op("segformer::mixffn", mutates_args=())
def _mixffn_op(x: torch.Tensor, h: int, w: int, ln_w: torch.Tensor, ln_b: torch.Tensor, eps: float,
               w1t: torch.Tensor, b1: torch.Tensor, dww: torch.Tensor, dwb: torch.Tensor, w2t: torch.Tensor,
               b2: torch.Tensor) -> torch.Tensor:
    p = {"ln_w": ln_w, "ln_b": ln_b, "eps": eps, "w1t": w1t, "b1": b1, "dww": dww, "dwb": dwb, "w2t": w2t, "b2": b2}
    return mixffn_kernel.mixffn(x, h, w, p)


@_mixffn_op.register_fake
def _(x, h, w, ln_w, ln_b, eps, w1t, b1, dww, dwb, w2t, b2):
    return torch.empty_like(x)


@torch.library.custom_op("segformer::dw_fc2", mutates_args=())
def _dw_fc2_op(mid: torch.Tensor, x: torch.Tensor, h: int, w: int, dww: torch.Tensor, dwb: torch.Tensor,
               w2t: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    return mixffn_kernel.dw_fc2(mid, x, h, w, {"dww": dww, "dwb": dwb, "w2t": w2t, "b2": b2})


@_dw_fc2_op.register_fake
def _(mid, x, h, w, dww, dwb, w2t, b2):
    return torch.empty_like(x)


class FusedFFNBlock(nn.Module):
    """A transformer block whose second half (norm2 -> Mix-FFN -> residual add) is one kernel
    (segformer.mixffn): the 4x-wide hidden activation never goes through device memory as a whole. The
    transposed weights are buffers, so `.to(dtype/device)` carries them."""

    def __init__(self, blk: Block, kind: str = "fused"):
        super().__init__()
        self.kind = kind  # "fused": one kernel; "dwfc2": fc1 in PyTorch, the rest in one kernel
        self.norm1, self.attn, self.norm2, self.fc1 = blk.norm1, blk.attn, blk.norm2, blk.mlp.fc1
        p = mixffn_kernel.prepare(blk.norm2, blk.mlp.fc1, blk.mlp.dwconv, blk.mlp.fc2)
        self.eps = p["eps"]
        self.b1, self.dwb, self.b2 = blk.mlp.fc1.bias, blk.mlp.dwconv.bias, blk.mlp.fc2.bias
        for name in ("w1t", "dww", "w2t"):
            self.register_buffer(name, p[name].detach().clone(), persistent=False)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), h, w)
        if self.kind == "dwfc2":
            return _dw_fc2_op(self.fc1(self.norm2(x)), x, h, w, self.dww, self.dwb, self.w2t, self.b2)
        return _mixffn_op(x, h, w, self.norm2.weight, self.norm2.bias, self.eps, self.w1t, self.b1, self.dww,
                          self.dwb, self.w2t, self.b2)


class FoldedDecoder(FoldedAllMLPDecoder):
    """The folded decoder on the GPU: each stage's map applied as a GEMM on the channels-last view (no copies)."""

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """features: NCHW stage outputs -> logits [N, K, h/4, w/4] (NCHW, contiguous)."""
        size = features[0].shape[-2:]
        acc = None
        for feat, conv in zip(features, self.proj):
            x = F.linear(feat.permute(0, 2, 3, 1), conv.weight.flatten(1)).permute(0, 3, 1, 2)  # channels-last view
            if x.shape[-2:] != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            acc = x if acc is None else acc + x
        x = torch.relu(acc + self.bias.view(1, -1, 1, 1))
        logits = F.linear(x.permute(0, 2, 3, 1), self.classifier.weight.flatten(1), self.classifier.bias)
        return logits.permute(0, 3, 1, 2).contiguous()


class FastSegmenter(nn.Module):
    """uint8 NHWC RGB -> uint8 labels [N, H, W]: normalisation, encoder, folded decoder, fused upsample+argmax."""

    def __init__(self, model: SegFormer, mean, std, dtype: torch.dtype = torch.float16, pad_input_to: int = 8,
                 fused_mixffn: bool = True, mixffn: str | None = None, fused_stages=(0, 1, 2, 3)):
        super().__init__()
        import copy

        self.mixffn = _path(mixffn, fused_mixffn)
        model = copy.deepcopy(model).eval()
        for i, stage in enumerate(model.encoder.stages):
            for k, blk in enumerate(stage.blocks):
                if self.mixffn in ("fused", "dwfc2") and i in fused_stages:
                    stage.blocks[k] = FusedFFNBlock(blk, self.mixffn)
                elif self.mixffn in ("fused", "dwfc2", "round2"):
                    blk.mlp = FusedMixFFN(blk.mlp)
        self.dtype = dtype
        self.in_pad = _pad_first_conv(model, pad_input_to)
        self.encoder = model.encoder.to(dtype)
        # the All-MLP head gets the channels-last GEMM form; mmseg's head runs its generic folded form
        head = model.decode_head
        self.decoder = (FoldedDecoder.fold(head) if isinstance(head, AllMLPDecoder) else folded_decoder(head)).to(dtype)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("inv_std", 1.0 / torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.permute(0, 3, 1, 2).float() - self.mean) * self.inv_std
        if self.in_pad:
            x = F.pad(x, (0, 0, 0, 0, 0, self.in_pad))
        x = x.to(self.dtype).contiguous(memory_format=torch.channels_last)
        return self.decoder(self.encoder(x))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return upsample_argmax(self.logits(images), images.shape[1:3])


def _path(mixffn: str | None, fused_mixffn: bool) -> str:
    """The Mix-FFN path by name; `fused_mixffn` (the older switch) picks round 2's kernel or cuDNN when no name
    is given."""
    if mixffn is None:
        return "round2" if fused_mixffn else "torch"
    if mixffn not in MIXFFN_PATHS:
        raise ValueError(f"unknown Mix-FFN path {mixffn!r}: choose one of {', '.join(MIXFFN_PATHS)}")
    return mixffn


@torch.no_grad()
def _pad_first_conv(model: SegFormer, multiple: int) -> int:
    """Give the first patch embedding zero weights for extra input channels up to `multiple` (3 -> 8): a
    3-channel NHWC convolution has no tensor-core kernel, an 8-channel one has. Exact: the extra channels are
    zeros times zeros. Returns how many channels the input must be padded with."""
    embed = model.encoder.stages[0].patch_embed
    conv = embed.proj
    pad = (-conv.in_channels) % multiple if multiple > 1 else 0
    if pad:
        wider = nn.Conv2d(conv.in_channels + pad, conv.out_channels, conv.kernel_size, conv.stride, conv.padding)
        wider.weight.zero_()
        wider.weight[:, :conv.in_channels] = conv.weight
        wider.bias.copy_(conv.bias)
        embed.proj = wider
    return pad


def compile_logits(seg: FastSegmenter, mode: str | None = None) -> None:
    """Replace `seg.logits` by its torch.compile'd version. GraphedSegmenter marks the batch dimension dynamic, so
    one compilation serves every bucket above 1 (batch 1 is always specialised: two compilations in all)."""
    seg.logits = torch.compile(seg.logits, mode=mode)


class GraphedSegmenter:
    """CUDA-graph replay of a FastSegmenter per batch bucket; a batch is padded up to the next bucket.

    Capture happens once per bucket at construction (after a warm-up that also triggers compilation); a call
    copies the batch into the bucket's static input, replays, and returns a view of the static output.
    """

    def __init__(self, seg: FastSegmenter, size: tuple[int, int], buckets=(1, 2, 4, 8, 16), warmup: int = 2):
        self.seg, self.size, self.buckets = seg, tuple(size), tuple(sorted(buckets))
        dev = next(seg.parameters()).device
        self.stream = torch.cuda.Stream(dev)
        self.graphs, self.inputs, self.outputs = {}, {}, {}
        pool = None
        for b in reversed(self.buckets):  # largest first, so the smaller graphs reuse its memory pool
            inp = torch.zeros((b, *self.size, 3), dtype=torch.uint8, device=dev)
            if b > 1:
                torch._dynamo.mark_dynamic(inp, 0)
            with torch.cuda.stream(self.stream), torch.no_grad():
                for _ in range(warmup):
                    seg(inp)
            self.stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool, stream=self.stream), torch.no_grad():
                out = seg(inp)
            pool = graph.pool()
            self.graphs[b], self.inputs[b], self.outputs[b] = graph, inp, out

    def bucket(self, n: int) -> int:
        for b in self.buckets:
            if n <= b:
                return b
        raise ValueError(f"batch {n} is larger than the largest bucket {self.buckets[-1]}")

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """images: uint8 [n, H, W, 3] on the GPU (n <= largest bucket) -> labels [n, H, W] (a static buffer:
        copy or consume it before the next call)."""
        n = images.shape[0]
        b = self.bucket(n)
        self.inputs[b][:n].copy_(images, non_blocking=True)
        self.graphs[b].replay()
        return self.outputs[b][:n]


def build_fast(weights: str = "segformer-b1-camvid", device: str = "cuda", dtype: torch.dtype = torch.float16,
               compile_mode: str | None = "default", fused_mixffn: bool = True, mixffn: str | None = None
               ) -> FastSegmenter:
    """A FastSegmenter for a shipped weights entry on `device` (compiled unless compile_mode is None). Mix-FFN
    path: `mixffn` by name (MIXFFN_PATHS), else round 2's dwconv+GELU kernel unless `fused_mixffn` is False."""
    from .weights import get_weights

    w = get_weights(weights)
    seg = FastSegmenter(w.build(), w.mean, w.std, dtype=dtype, fused_mixffn=fused_mixffn, mixffn=mixffn).to(device)
    if compile_mode is not None:
        compile_logits(seg, None if compile_mode == "default" else compile_mode)
    return seg
