"""One Triton kernel for a whole Mix-FFN half-block: ``y = x + fc2(GELU(dwconv3x3(fc1(LayerNorm(x)))))``.

Mix-FFN's hidden activation is 4x the block's width (stage 1 of B1 at 1024²: 256x256 tokens x 256 channels,
33.5 MB per image in FP16). Run as separate kernels it is written by fc1, read and written by the depthwise conv
and read by fc2. Here it never reaches device memory as a whole: one program walks down a column strip of BW
pixels, keeps the three hidden rows the 3x3 conv needs in a small per-program ring (3 rows x (BW + 2) pixels x
4C channels, written and re-read at once, so it is served by the L1/L2 caches), and per output row

    LayerNorm (FP32 statistics) -> fc1 (tensor cores, FP32 accumulate, rounded to FP16 like the separate path)
    -> depthwise 3x3 + bias + exact GELU (FP32) -> fc2 (tensor cores) + bias + residual -> one FP16 store.

The two pixels left and right of the strip (the conv's halo) come from a second, 16-row fc1 product whose
other rows are masked off, so strips tile the image without overlap. Hidden rows and columns outside the image
are zeros (the conv's zero padding applies to fc1's output, bias included).

`mixffn_reference` is the same computation in plain PyTorch (what the separate kernels compute); on a machine
without a GPU the kernel runs in Triton's interpreter (``TRITON_INTERPRET=1``), which is how CI checks it.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from .kernels import dwconv3x3_gelu_reference, kernel_runs

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - machines without triton use the reference
    triton = None


def mixffn_reference(x: torch.Tensor, h: int, w: int, ln_w, ln_b, eps: float, fc1_w, fc1_b, dw_w, dw_b,
                     fc2_w, fc2_b) -> torch.Tensor:
    """x tokens [N, h*w, C] -> x + Mix-FFN(LayerNorm(x)), module by module (the unfused path)."""
    t = F.linear(F.layer_norm(x, (x.shape[-1],), ln_w, ln_b, eps), fc1_w, fc1_b)
    return x + F.linear(dwconv3x3_gelu_reference(t, h, w, dw_w, dw_b), fc2_w, fc2_b)


if triton is not None:

    @triton.jit
    def _hidden_row(x, ring, row, cols, pos, lane, H, W, eps, ln_w, ln_b, w1t, b1,
                    C: tl.constexpr, CP: tl.constexpr, HID: tl.constexpr, HC: tl.constexpr, M: tl.constexpr):
        """fc1(LayerNorm(x)) for M pixels of one image row (`cols`, vector `row`), stored FP16 at ring slot
        positions `pos` for the lanes in `lane`; zeros for pixels outside the image."""
        k = tl.arange(0, CP)
        kin = k < C
        inside = lane & (cols >= 0) & (cols < W) & (row >= 0) & (row < H)
        xt = tl.load(x + (row * W + cols)[:, None] * C + k[None, :], mask=inside[:, None] & kin[None, :],
                     other=0.0).to(tl.float32)
        mean = tl.sum(xt, axis=1) / C
        d = tl.where(kin[None, :], xt - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=1) / C + eps)
        g = tl.load(ln_w + k, mask=kin, other=0.0).to(tl.float32)
        b = tl.load(ln_b + k, mask=kin, other=0.0).to(tl.float32)
        xn = (d * rstd[:, None] * g[None, :] + b[None, :]).to(tl.float16)  # what LayerNorm hands fc1 in FP16
        hc = tl.arange(0, HC)
        for j in range(HID // HC):
            wt = tl.load(w1t + k[:, None] * HID + (j * HC + hc)[None, :], mask=kin[:, None], other=0.0)
            wt = wt.to(tl.float16)
            acc = tl.dot(xn, wt) + tl.load(b1 + j * HC + hc).to(tl.float32)[None, :]
            acc = tl.where(inside[:, None], acc, 0.0)
            tl.store(ring + pos[:, None] * HID + (j * HC + hc)[None, :], acc.to(tl.float16), mask=lane[:, None])

    @triton.jit
    def _mixffn_kernel(x, y, ring_buf, ln_w, ln_b, w1t, b1, dww, dwb, w2t, b2, H, W, eps,
                       C: tl.constexpr, CP: tl.constexpr, HID: tl.constexpr, HC: tl.constexpr,
                       BW: tl.constexpr, RB: tl.constexpr):
        strip = tl.program_id(0)
        rblock = tl.program_id(1)
        n = tl.program_id(2)
        prog = (n * tl.num_programs(1) + rblock) * tl.num_programs(0) + strip
        slot = (BW + 2) * HID  # one hidden row of the strip with its two halo pixels
        ring = ring_buf + prog.to(tl.int64) * 3 * slot
        x = x + n.to(tl.int64) * H * W * C
        y = y + n.to(tl.int64) * H * W * C
        c0 = strip * BW
        r0 = rblock * RB
        j = tl.arange(0, BW)
        cols = c0 + j
        pos = j + 1
        every = j >= 0
        e = tl.arange(0, 16)  # the halo product: lanes 0 and 1 are columns c0 - 1 and c0 + BW
        hcols = tl.where(e == 0, c0 - 1, c0 + BW)
        hpos = tl.where(e == 0, 0, BW + 1)
        hlane = e < 2
        zero_m = tl.zeros([BW], tl.int32)
        zero_h = tl.zeros([16], tl.int32)
        for i in range(2):  # hidden rows r0 - 1 and r0 into ring slots 0 and 1
            r = r0 - 1 + i
            _hidden_row(x, ring + i * slot, zero_m + r, cols, pos, every, H, W, eps, ln_w, ln_b, w1t, b1,
                        C, CP, HID, HC, BW)
            _hidden_row(x, ring + i * slot, zero_h + r, hcols, hpos, hlane, H, W, eps, ln_w, ln_b, w1t, b1,
                        C, CP, HID, HC, 16)
        k = tl.arange(0, CP)
        kin = k < C
        hc = tl.arange(0, HC)
        bias2 = tl.load(b2 + k, mask=kin, other=0.0).to(tl.float32)
        for i in range(RB):
            r = r0 + i  # the output row; hidden row r + 1 goes into slot (i + 2) % 3
            nxt = ring + ((i + 2) % 3) * slot
            _hidden_row(x, nxt, zero_m + (r + 1), cols, pos, every, H, W, eps, ln_w, ln_b, w1t, b1,
                        C, CP, HID, HC, BW)
            _hidden_row(x, nxt, zero_h + (r + 1), hcols, hpos, hlane, H, W, eps, ln_w, ln_b, w1t, b1,
                        C, CP, HID, HC, 16)
            tl.debug_barrier()  # the ring's new row is visible to every thread of the program
            out = tl.zeros([BW, CP], tl.float32)
            for q in range(HID // HC):
                ch = q * HC + hc
                acc = tl.zeros([BW, HC], tl.float32) + tl.load(dwb + ch).to(tl.float32)[None, :]
                base = ring + j[:, None] * HID + ch[None, :]  # one pointer tile; taps add a scalar
                for tap in range(9):  # a loop, not unrolled: one tap tile live at a time (registers)
                    dy = tap // 3  # hidden rows r - 1, r, r + 1 sit in ring slots i, i + 1, i + 2 (mod 3)
                    dx = tap % 3
                    v = tl.load(base + ((i + dy) % 3) * slot + dx * HID).to(tl.float32)
                    acc += v * tl.load(dww + ch * 9 + tap).to(tl.float32)[None, :]
                act = (0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))).to(tl.float16)
                wt = tl.load(w2t + ch[:, None] * C + k[None, :], mask=kin[None, :], other=0.0).to(tl.float16)
                out = tl.dot(act, wt, out)
            ok = ((cols < W) & (zero_m + r < H))[:, None] & kin[None, :]
            at = (r * W + cols)[:, None] * C + k[None, :]
            res = tl.load(x + at, mask=ok, other=0.0).to(tl.float32)
            tl.store(y + at, (out + bias2[None, :] + res).to(y.dtype.element_ty), mask=ok)
            tl.debug_barrier()  # every thread is done with the ring slot the next row overwrites

    @triton.jit
    def _dw_fc2_kernel(t, x, y, dww, dwb, w2t, b2, H, W, C: tl.constexpr, CP: tl.constexpr,
                       HID: tl.constexpr, HC: tl.constexpr, BW: tl.constexpr, RB: tl.constexpr):
        """The second half only: fc1's output `t` [N, H*W, HID] (written once by cuBLAS) -> depthwise 3x3 + bias +
        GELU -> fc2 + bias + residual x, per RB rows of a BW-pixel strip, no barrier: the taps come from `t`
        through the caches, the GELU output never reaches memory."""
        strip = tl.program_id(0)
        n = tl.program_id(2)
        t = t + n.to(tl.int64) * H * W * HID
        x = x + n.to(tl.int64) * H * W * C
        y = y + n.to(tl.int64) * H * W * C
        cols = strip * BW + tl.arange(0, BW)
        k = tl.arange(0, CP)
        kin = k < C
        hc = tl.arange(0, HC)
        bias2 = tl.load(b2 + k, mask=kin, other=0.0).to(tl.float32)
        zero = tl.zeros([BW], tl.int32)
        for i in range(RB):
            r = zero + tl.program_id(1) * RB + i
            out = tl.zeros([BW, CP], tl.float32)
            for q in range(HID // HC):
                ch = q * HC + hc
                acc = tl.zeros([BW, HC], tl.float32) + tl.load(dwb + ch).to(tl.float32)[None, :]
                base = t + (r * W + cols)[:, None] * HID + ch[None, :]  # one pointer tile; taps add a scalar
                for tap in range(9):  # a loop, not unrolled: one tap tile live at a time (registers)
                    dy = tap // 3 - 1
                    dx = tap % 3 - 1
                    ok = (r + dy >= 0) & (r + dy < H) & (cols + dx >= 0) & (cols + dx < W)
                    v = tl.load(base + (dy * W + dx) * HID, mask=ok[:, None], other=0.0)
                    acc += v.to(tl.float32) * tl.load(dww + ch * 9 + tap).to(tl.float32)[None, :]
                act = (0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))).to(tl.float16)
                wt = tl.load(w2t + ch[:, None] * C + k[None, :], mask=kin[None, :], other=0.0).to(tl.float16)
                out = tl.dot(act, wt, out)
            ok = ((cols < W) & (r < H))[:, None] & kin[None, :]
            at = (r * W + cols)[:, None] * C + k[None, :]
            res = tl.load(x + at, mask=ok, other=0.0).to(tl.float32)
            tl.store(y + at, (out + bias2[None, :] + res).to(y.dtype.element_ty), mask=ok)


TILES: dict = {}  # (kind, h, w, C) -> tile chosen by measurement (bench.kernels_mixffn), before the defaults


def plan(h: int, w: int, c: int, hidden: int, kind: str = "fused") -> dict:
    """The kernel's tile for one stage shape (strip width, rows per program, hidden chunk, warps): a measured
    choice from TILES, else the strip no wider than the image and narrower strips for wide layers so the FP32
    output tile stays in registers."""
    if (kind, h, w, c) in TILES:
        return TILES[(kind, h, w, c)]
    env = os.environ.get("SEGFORMER_MIXFFN_TILE")  # "BW,RB,HC,WARPS" for experiments on the GPU
    if env:
        bw, rb, hc, nw = (int(v) for v in env.split(","))
        return {"BW": bw, "RB": rb, "HC": hc, "num_warps": nw}
    bw = 64 if w >= 64 and c <= 128 else 32 if w >= 32 or c > 128 else 16
    rb = 16 if h >= 64 else 8
    hc = next((v for v in (32, 64, 16) if hidden % v == 0), 0)  # 32: no spills on sm_90 (bench.kernel_resources)
    if not hc:
        raise ValueError(f"Mix-FFN hidden width {hidden} is not a multiple of 16: use mixffn='round2'")
    return {"BW": bw, "RB": rb, "HC": hc, "num_warps": 8 if bw >= 64 or c > 64 else 4}


def _stages(tile: dict) -> dict:
    """The launch's software-pipelining depth where the tile names one (Triton's default otherwise)."""
    return {"num_stages": tile["num_stages"]} if tile.get("num_stages") else {}


def prepare(ln: torch.nn.LayerNorm, fc1: torch.nn.Linear, dwconv: torch.nn.Conv2d, fc2: torch.nn.Linear) -> dict:
    """The kernel's operands from a block's norm2 and Mix-FFN modules (weights transposed once, not per call)."""
    hidden = fc1.out_features
    return {"ln_w": ln.weight, "ln_b": ln.bias, "eps": float(ln.eps), "w1t": fc1.weight.t().contiguous(),
            "b1": fc1.bias, "dww": dwconv.weight.reshape(hidden, 9).contiguous(), "dwb": dwconv.bias,
            "w2t": fc2.weight.t().contiguous(), "b2": fc2.bias}


def reference(x: torch.Tensor, h: int, w: int, p: dict) -> torch.Tensor:
    """`mixffn_reference` on `prepare`'s operands."""
    hidden = p["w1t"].shape[1]
    return mixffn_reference(x, h, w, p["ln_w"], p["ln_b"], p["eps"], p["w1t"].t(), p["b1"],
                            p["dww"].reshape(hidden, 1, 3, 3), p["dwb"], p["w2t"].t(), p["b2"])


def dw_fc2(mid: torch.Tensor, x: torch.Tensor, h: int, w: int, p: dict, tile: dict | None = None) -> torch.Tensor:
    """x + fc2(GELU(dwconv3x3(mid))) with `mid` = fc1(LayerNorm(x)) [N, h*w, 4C] computed outside (cuBLAS, the
    LayerNorm fused by inductor): depthwise conv, GELU, fc2 and the residual in `_dw_fc2_kernel`."""
    hidden = p["w2t"].shape[0]
    if not kernel_runs(x):
        t = dwconv3x3_gelu_reference(mid, h, w, p["dww"].reshape(hidden, 1, 3, 3), p["dwb"])
        return x + F.linear(t, p["w2t"].t(), p["b2"])
    n, _, c = x.shape
    t = tile or plan(h, w, c, hidden, "dwfc2")
    y = torch.empty_like(x)
    grid = (triton.cdiv(w, t["BW"]), triton.cdiv(h, t["RB"]), n)
    _dw_fc2_kernel[grid](mid.contiguous(), x.contiguous(), y, p["dww"], p["dwb"], p["w2t"], p["b2"], h, w, C=c,
                         CP=triton.next_power_of_2(c), HID=hidden, HC=t["HC"], BW=t["BW"], RB=t["RB"],
                         num_warps=t["num_warps"], **_stages(t))
    return y


def dw_fc2_block(x: torch.Tensor, h: int, w: int, p: dict, tile: dict | None = None) -> torch.Tensor:
    """The whole half-block through `dw_fc2` (fc1 and LayerNorm in PyTorch)."""
    c = x.shape[-1]
    mid = F.linear(F.layer_norm(x, (c,), p["ln_w"], p["ln_b"], p["eps"]), p["w1t"].t(), p["b1"])
    return dw_fc2(mid, x, h, w, p, tile)


def mixffn(x: torch.Tensor, h: int, w: int, p: dict, tile: dict | None = None) -> torch.Tensor:
    """x + Mix-FFN(LayerNorm(x)) for FP16 token tensors [N, h*w, C] in one kernel, `p` from `prepare`; the
    reference on CPU tensors unless Triton's interpreter is on, and where triton is missing."""
    if not kernel_runs(x):
        return reference(x, h, w, p)
    n, _, c = x.shape
    hidden = p["w1t"].shape[1]
    t = tile or plan(h, w, c, hidden)
    if hidden % t["HC"]:
        raise ValueError(f"hidden width {hidden} is not a multiple of the chunk {t['HC']}")
    x = x.contiguous()
    y = torch.empty_like(x)
    grid = (triton.cdiv(w, t["BW"]), triton.cdiv(h, t["RB"]), n)
    ring = torch.empty(grid[0] * grid[1] * grid[2] * 3 * (t["BW"] + 2) * hidden, dtype=torch.float16,
                       device=x.device)
    _mixffn_kernel[grid](x, y, ring, p["ln_w"], p["ln_b"], p["w1t"], p["b1"], p["dww"], p["dwb"], p["w2t"], p["b2"],
                         h, w, p["eps"], C=c, CP=triton.next_power_of_2(c), HID=hidden, HC=t["HC"], BW=t["BW"],
                         RB=t["RB"], num_warps=t["num_warps"], **_stages(t))
    return y
