"""Triton-lang kernels of the GPU fast path, each with the PyTorch reference it must reproduce.

`upsample_argmax` turns SegFormer's 1/4-resolution logits into full-resolution uint8 labels in one pass: every
output pixel interpolates its four neighbours bilinearly (PyTorch's ``align_corners=False`` rule, computed in
FP32) for each class and keeps the running argmax, so the full-resolution logits (19 x 1024 x 1024 x 2 bytes =
40 MB per image) are never written. Ties go to the lowest class index, as ``torch.argmax`` does.

On a machine without a GPU the kernel runs in Triton's interpreter (``TRITON_INTERPRET=1`` set before triton is
imported), which is how CI checks it against `upsample_argmax_reference`.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

try:  # triton is optional: the reference path needs only torch
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on machines without triton
    triton = None


def upsample_argmax_reference(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """What the kernel computes, in plain PyTorch: bilinear upsample in FP32, argmax over classes, uint8."""
    up = F.interpolate(logits.float(), size=tuple(size), mode="bilinear", align_corners=False)
    return up.argmax(dim=1).to(torch.uint8)


if triton is not None:

    @triton.jit
    def _upsample_argmax_kernel(logits, labels, h, w, H, W, scale_h, scale_w,
                                C: tl.constexpr, BLOCK: tl.constexpr):
        n = tl.program_id(1)
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        inside = offs < H * W
        y = offs // W
        x = offs % W
        # PyTorch's area-pixel source index for align_corners=False, clamped at 0.
        sy = tl.maximum((y.to(tl.float32) + 0.5) * scale_h - 0.5, 0.0)
        sx = tl.maximum((x.to(tl.float32) + 0.5) * scale_w - 0.5, 0.0)
        y0 = sy.to(tl.int32)
        x0 = sx.to(tl.int32)
        y1 = tl.minimum(y0 + 1, h - 1)
        x1 = tl.minimum(x0 + 1, w - 1)
        ly1 = sy - y0.to(tl.float32)
        lx1 = sx - x0.to(tl.float32)
        ly0 = 1.0 - ly1
        lx0 = 1.0 - lx1
        base = logits + n.to(tl.int64) * C * h * w
        i00 = y0 * w + x0
        i01 = y0 * w + x1
        i10 = y1 * w + x0
        i11 = y1 * w + x1
        best = tl.full([BLOCK], float("-inf"), tl.float32)
        arg = tl.zeros([BLOCK], tl.int32)
        for c in tl.static_range(C):
            plane = base + c * h * w
            v00 = tl.load(plane + i00, mask=inside, other=0.0).to(tl.float32)
            v01 = tl.load(plane + i01, mask=inside, other=0.0).to(tl.float32)
            v10 = tl.load(plane + i10, mask=inside, other=0.0).to(tl.float32)
            v11 = tl.load(plane + i11, mask=inside, other=0.0).to(tl.float32)
            v = ly0 * (lx0 * v00 + lx1 * v01) + ly1 * (lx0 * v10 + lx1 * v11)
            better = v > best
            best = tl.where(better, v, best)
            arg = tl.where(better, c, arg)
        tl.store(labels + n.to(tl.int64) * H * W + offs, arg.to(tl.uint8), mask=inside)


    @triton.jit
    def _upsample_cells_argmax_kernel(logits, labels, h, w, H, W, C: tl.constexpr, S: tl.constexpr,
                                      BJ: tl.constexpr):
        """Exact integer scale S (H = S*h, W = S*w; S a power of two): one program takes a row of source cells
        (between source rows k and k+1, columns j and j+1) and writes the S x S output pixels of each, loading
        the four corners of every class once per cell instead of once per output pixel (S^2 fewer loads).
        Cells run from -1 to h-1 / w-1 with clamped corners, which reproduces PyTorch's border rule."""
        n = tl.program_id(2)
        k = tl.program_id(1) - 1
        j = tl.program_id(0) * BJ - 1 + tl.arange(0, BJ)
        k0 = tl.maximum(k, 0)
        k1 = tl.minimum(k + 1, h - 1)
        j0 = tl.maximum(j, 0)
        j1 = tl.minimum(j + 1, w - 1)
        jin = j < w
        a = tl.arange(0, S)
        frac = ((S // 2) + a.to(tl.float32) + 0.5) / S - 0.5  # the S interpolation weights inside a cell
        ly1 = frac[:, None, None]
        ly0 = 1.0 - ly1
        lx1 = frac[None, None, :]
        lx0 = 1.0 - lx1
        rows = S * k + S // 2 + a  # [S]
        cols = S * j[:, None] + S // 2 + a[None, :]  # [BJ, S]
        base = logits + n.to(tl.int64) * C * h * w
        best = tl.full([S, BJ, S], float("-inf"), tl.float32)
        arg = tl.zeros([S, BJ, S], tl.int32)
        for c in tl.static_range(C):
            plane = base + c * h * w
            v00 = tl.load(plane + k0 * w + j0, mask=jin, other=0.0).to(tl.float32)[None, :, None]
            v01 = tl.load(plane + k0 * w + j1, mask=jin, other=0.0).to(tl.float32)[None, :, None]
            v10 = tl.load(plane + k1 * w + j0, mask=jin, other=0.0).to(tl.float32)[None, :, None]
            v11 = tl.load(plane + k1 * w + j1, mask=jin, other=0.0).to(tl.float32)[None, :, None]
            v = ly0 * (lx0 * v00 + lx1 * v01) + ly1 * (lx0 * v10 + lx1 * v11)
            better = v > best
            best = tl.where(better, v, best)
            arg = tl.where(better, c, arg)
        r = rows[:, None, None]
        q = cols[None, :, :]
        ok = (r >= 0) & (r < H) & (q >= 0) & (q < W) & jin[None, :, None]
        tl.store(labels + n.to(tl.int64) * H * W + r * W + q, arg.to(tl.uint8), mask=ok)


    @triton.jit
    def _row3(base, yy, cols, chans, cin, H, W, C, F32: tl.constexpr):
        """One input row at three column shifts (x-1, x, x+1) as [BW, BC] tiles, zero outside the image; F32:
        converted to float32 once here (each tile is used by three output rows) instead of at every use."""
        inside = (yy >= 0) & (yy < H)
        ptr = base + (yy * W + cols)[:, None] * C + chans[None, :]
        ok = cin[None, :] & inside[:, None]
        left = tl.load(ptr - C, mask=ok & ((cols >= 1) & (cols <= W))[:, None], other=0.0)
        mid = tl.load(ptr, mask=ok & (cols < W)[:, None], other=0.0)
        right = tl.load(ptr + C, mask=ok & (cols + 1 < W)[:, None], other=0.0)
        if F32:  # a compile-time branch: one return, so both kinds compile
            left, mid, right = left.to(tl.float32), mid.to(tl.float32), right.to(tl.float32)
        return left, mid, right

    @triton.jit
    def _dwconv3x3_gelu_kernel(x, w, b, y, H, W, C, RB: tl.constexpr, BW: tl.constexpr, BC: tl.constexpr,
                               F32: tl.constexpr):
        """RB output rows of one BW-pixel x BC-channel column strip: 3x3 depthwise conv (zero padding 1) on NHWC
        input, + bias, exact (erf) GELU, accumulated in FP32, written once. The three input rows in use are
        kept in registers and rolled down the strip, so each input row is read from memory once per strip (at
        three column shifts, which the L1 cache serves) instead of once per tap."""
        rblocks = tl.cdiv(H, RB)
        n = tl.program_id(2) // rblocks
        r0 = (tl.program_id(2) % rblocks) * RB
        cols = tl.program_id(0) * BW + tl.arange(0, BW)
        chans = tl.program_id(1) * BC + tl.arange(0, BC)
        cin = chans < C
        base = x + n.to(tl.int64) * H * W * C
        out = y + n.to(tl.int64) * H * W * C
        w0 = tl.load(w + chans * 9 + 0, mask=cin, other=0.0).to(tl.float32)[None, :]
        w1 = tl.load(w + chans * 9 + 1, mask=cin, other=0.0).to(tl.float32)[None, :]
        w2 = tl.load(w + chans * 9 + 2, mask=cin, other=0.0).to(tl.float32)[None, :]
        w3 = tl.load(w + chans * 9 + 3, mask=cin, other=0.0).to(tl.float32)[None, :]
        w4 = tl.load(w + chans * 9 + 4, mask=cin, other=0.0).to(tl.float32)[None, :]
        w5 = tl.load(w + chans * 9 + 5, mask=cin, other=0.0).to(tl.float32)[None, :]
        w6 = tl.load(w + chans * 9 + 6, mask=cin, other=0.0).to(tl.float32)[None, :]
        w7 = tl.load(w + chans * 9 + 7, mask=cin, other=0.0).to(tl.float32)[None, :]
        w8 = tl.load(w + chans * 9 + 8, mask=cin, other=0.0).to(tl.float32)[None, :]
        bias = tl.load(b + chans, mask=cin, other=0.0).to(tl.float32)[None, :]
        row = r0 + tl.zeros([BW], tl.int32)  # vectors: Triton's interpreter cannot mix in scalar masks
        a0, a1, a2 = _row3(base, row - 1, cols, chans, cin, H, W, C, F32)
        b0, b1, b2 = _row3(base, row, cols, chans, cin, H, W, C, F32)
        for i in range(RB):
            c0, c1, c2 = _row3(base, row + i + 1, cols, chans, cin, H, W, C, F32)
            acc = (a0.to(tl.float32) * w0 + a1.to(tl.float32) * w1 + a2.to(tl.float32) * w2
                   + b0.to(tl.float32) * w3 + b1.to(tl.float32) * w4 + b2.to(tl.float32) * w5
                   + c0.to(tl.float32) * w6 + c1.to(tl.float32) * w7 + c2.to(tl.float32) * w8 + bias)
            res = 0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))
            yy = row + i
            ok = ((cols < W) & (yy < H))[:, None] & cin[None, :]
            tl.store(out + (yy * W + cols)[:, None] * C + chans[None, :], res.to(y.dtype.element_ty), mask=ok)
            a0, a1, a2 = b0, b1, b2
            b0, b1, b2 = c0, c1, c2

    # On the GPU the strip shape (and where tiles become float32) is tuned per (H, W, C) once per process (the
    # interpreter runs one fixed configuration of each kind).
    DWCONV_CONFIGS = [triton.Config({"RB": rb, "BW": bw, "BC": bc, "F32": f32}, num_warps=nw)
                      for rb, bw, bc, nw in ((16, 32, 64, 4), (16, 16, 128, 4), (16, 64, 32, 4), (32, 32, 64, 8),
                                             (32, 16, 64, 4), (32, 8, 128, 4), (16, 32, 128, 8), (8, 32, 64, 4),
                                             (16, 16, 64, 4), (32, 16, 32, 2))
                      for f32 in (False, True)]
    _dwconv3x3_gelu_tuned = triton.autotune(configs=DWCONV_CONFIGS, key=["H", "W", "C"])(_dwconv3x3_gelu_kernel)


def dwconv3x3_gelu_reference(x: torch.Tensor, h: int, w: int, weight: torch.Tensor, bias: torch.Tensor
                             ) -> torch.Tensor:
    """Tokens [N, h*w, C] -> GELU(depthwise 3x3 conv + bias) as tokens, in plain PyTorch (Mix-FFN's middle)."""
    n, _, c = x.shape
    img = x.transpose(1, 2).reshape(n, c, h, w)
    out = F.gelu(F.conv2d(img, weight, bias, padding=1, groups=c))
    return out.flatten(2).transpose(1, 2)


def dwconv3x3_gelu(x: torch.Tensor, h: int, w: int, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Fused version of `dwconv3x3_gelu_reference` for token tensors [N, h*w, C] (contiguous, channels last)."""
    if not kernel_runs(x):
        return dwconv3x3_gelu_reference(x, h, w, weight, bias)
    x = x.contiguous()
    n, _, c = x.shape
    y = torch.empty_like(x)
    def grid(meta):
        return triton.cdiv(w, meta["BW"]), triton.cdiv(c, meta["BC"]), n * triton.cdiv(h, meta["RB"])

    if x.is_cuda:
        _dwconv3x3_gelu_tuned[grid](x, weight.contiguous(), bias.contiguous(), y, h, w, c)
    else:
        f32 = os.environ.get("SEGFORMER_DWCONV_F32", "0") == "1"  # the CPU tests run both kinds
        _dwconv3x3_gelu_kernel[grid](x, weight.contiguous(), bias.contiguous(), y, h, w, c, RB=4, BW=16,
                                     BC=min(64, triton.next_power_of_2(c)), F32=f32, num_warps=4)
    return y


def kernel_runs(t: torch.Tensor) -> bool:
    """True where a Triton kernel can take `t`: triton installed and `t` on CUDA, or Triton's interpreter on
    (``TRITON_INTERPRET=1``) for CPU tensors; elsewhere the PyTorch reference runs."""
    return triton is not None and (t.is_cuda or os.environ.get("TRITON_INTERPRET") == "1")


def upsample_argmax(logits: torch.Tensor, size: tuple[int, int], out: torch.Tensor | None = None,
                    block: int = 1024, cells: bool = True) -> torch.Tensor:
    """Labels [N, H, W] uint8 from logits [N, C, h, w] (any float dtype), fused; falls back to the reference
    where triton is missing, or on CPU tensors unless Triton's interpreter is on. An exact scale of 2, 4 or 8
    (SegFormer's logits are 1/4 of the input) takes the per-cell kernel; any other size the per-pixel one."""
    n, c, h, w = logits.shape
    if c > 255:
        raise ValueError(f"{c} classes do not fit uint8 labels")
    if not kernel_runs(logits):
        ref = upsample_argmax_reference(logits, size)
        return out.copy_(ref) if out is not None else ref
    H, W = int(size[0]), int(size[1])
    logits = logits.contiguous()
    if out is None:
        out = torch.empty((n, H, W), dtype=torch.uint8, device=logits.device)
    scale = H // h if H % h == 0 and W % w == 0 and H // h == W // w else 0
    if scale in (2, 4, 8) and cells:
        bj = 64 if scale <= 4 else 16
        grid = (triton.cdiv(w + 1, bj), h + 1, n)
        _upsample_cells_argmax_kernel[grid](logits, out, h, w, H, W, C=c, S=scale, BJ=bj, num_warps=4)
        return out
    grid = (triton.cdiv(H * W, block), n)
    _upsample_argmax_kernel[grid](logits, out, h, w, H, W, h / H, w / W, C=c, BLOCK=block, num_warps=4)
    return out
