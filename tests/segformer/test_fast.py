"""The GPU fast path's rewrites, checked on the CPU: decoder folding, the fused upsample+argmax kernel (Triton's
interpreter) against its PyTorch reference, and the whole FastSegmenter against the served pipeline."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from segformer.fast import FastSegmenter, FoldedDecoder
from segformer.kernels import upsample_argmax, upsample_argmax_reference
from segformer.model import SegmentationPipeline

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("variant", ["tiny", "b0"])
def test_folded_decoder_equals_the_all_mlp_decoder(variant, trained_like):
    m = trained_like(variant)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        feats = m.encoder(x)
        ref = m.decode_head(feats)
        out = FoldedDecoder.fold(m.decode_head)(feats)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_folding_removes_the_concat_and_fuse_weights(trained_like):
    m = trained_like("b0", 19)
    folded = FoldedDecoder.fold(m.decode_head)
    orig = sum(p.numel() for p in m.decode_head.parameters())
    assert sum(p.numel() for p in folded.parameters()) < orig / 2  # the 1024x256 fuse conv is gone
    assert [c.in_channels for c in folded.proj] == [32, 64, 160, 256]


def _bilinear_argmax_numpy(logits, size):
    """Bilinear upsampling (half-pixel centres, source clamped at 0: align_corners=False) and argmax, written out
    in numpy from the definition: an oracle independent of torch's interpolate."""
    import numpy as np

    x = logits.double().numpy()
    n, c, h, w = x.shape
    H, W = size

    def axis(out_len, in_len):
        src = np.maximum((np.arange(out_len) + 0.5) * in_len / out_len - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(int), in_len - 1)
        return i0, np.minimum(i0 + 1, in_len - 1), src - i0

    y0, y1, fy = axis(H, h)
    x0, x1, fx = axis(W, w)
    top = x[:, :, y0][:, :, :, x0] * (1 - fx) + x[:, :, y0][:, :, :, x1] * fx
    bottom = x[:, :, y1][:, :, :, x0] * (1 - fx) + x[:, :, y1][:, :, :, x1] * fx
    up = top * (1 - fy)[:, None] + bottom * fy[:, None]
    return up.argmax(1).astype(np.uint8)


@pytest.mark.parametrize("shape,size", [((2, 5, 7, 9), (30, 33)), ((1, 19, 16, 16), (64, 64)), ((1, 3, 1, 1), (4, 5))])
def test_reference_is_bilinear_upsampling_then_argmax(shape, size):
    torch.manual_seed(0)
    logits = torch.randn(*shape)
    ours = upsample_argmax_reference(logits, size).numpy()
    assert ours.dtype.name == "uint8" and ours.shape == (shape[0], *size)
    assert (ours == _bilinear_argmax_numpy(logits, size)).mean() >= 0.999  # float ties may differ


def test_fast_segmenter_in_fp32_gives_the_pipeline_labels(trained_like):
    m = trained_like("tiny", 7, seed=3)
    mean, std = (123.7, 116.3, 103.5), (58.4, 57.1, 57.4)
    images = torch.randint(0, 256, (2, 64, 96, 3), dtype=torch.uint8)
    with torch.no_grad():
        ref = SegmentationPipeline(m, mean, std)(images)
        fast = FastSegmenter(m, mean, std, dtype=torch.float32)(images)
    assert fast.dtype == torch.uint8 and fast.shape == (2, 64, 96)
    assert (fast == ref).float().mean() > 0.999


def test_upsample_argmax_on_the_cpu_is_bilinear_then_argmax():
    """Whatever path runs here (the fallback, or the Triton kernel under TRITON_INTERPRET=1), the labels are the
    independent numpy computation's."""
    torch.manual_seed(1)
    logits = torch.randn(1, 3, 4, 4)
    assert (upsample_argmax(logits, (16, 16)).numpy() == _bilinear_argmax_numpy(logits, (16, 16))).mean() >= 0.999


KERNEL_CHECK = textwrap.dedent("""
    import torch
    from segformer.kernels import upsample_argmax, upsample_argmax_reference
    torch.manual_seed(0)
    cases = [((2, 19, 16, 16), (64, 64)), ((1, 5, 7, 9), (30, 33)), ((1, 3, 1, 1), (4, 5)),
             ((1, 19, 8, 8), (37, 29)), ((1, 19, 7, 70), (28, 280)), ((1, 3, 1, 1), (4, 4)),
             ((2, 6, 5, 3), (10, 6)), ((1, 4, 3, 5), (24, 40))]  # exact x4, x2, x8: the per-cell kernel
    for shape, size in cases:
        for dtype in (torch.float32, torch.float16):
            logits = torch.randn(shape).to(dtype)
            ref = upsample_argmax_reference(logits, size)
            for cells in (True, False):
                out = upsample_argmax(logits, size, block=128, cells=cells)
                agree = (out == ref).float().mean().item()
                assert out.shape == ref.shape and out.dtype == torch.uint8, (shape, out.shape)
                assert agree > 0.999, (shape, size, dtype, cells, agree)
    ties = torch.zeros(1, 4, 3, 3)
    for size in ((6, 6), (7, 5)):  # ties: the lowest class, like torch.argmax
        assert int(upsample_argmax(ties, size, block=16).max()) == 0
    print("kernel ok")
""")


def test_triton_kernel_in_the_interpreter_matches_the_reference():
    pytest.importorskip("triton", reason="triton is not installed (pip install triton)")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", KERNEL_CHECK], env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0 and "kernel ok" in res.stdout, res.stderr[-3000:]


DWCONV_CHECK = textwrap.dedent("""
    import torch
    from segformer.kernels import dwconv3x3_gelu, dwconv3x3_gelu_reference
    torch.manual_seed(0)
    for n, h, w, c in [(2, 5, 7, 16), (1, 3, 40, 96), (1, 1, 1, 8), (1, 9, 17, 80)]:
        x = torch.randn(n, h * w, c)
        wt, b = torch.randn(c, 1, 3, 3), torch.randn(c)
        out = dwconv3x3_gelu(x, h, w, wt, b)
        ref = dwconv3x3_gelu_reference(x, h, w, wt, b)
        assert out.shape == ref.shape, (out.shape, ref.shape)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    print("dwconv ok")
""")


@pytest.mark.parametrize("f32", ["0", "1"])
def test_fused_dwconv_gelu_kernel_in_the_interpreter_matches_pytorch(f32):
    pytest.importorskip("triton", reason="triton is not installed (pip install triton)")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT), "SEGFORMER_DWCONV_F32": f32}
    res = subprocess.run([sys.executable, "-c", DWCONV_CHECK], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and "dwconv ok" in res.stdout, res.stderr[-3000:]


def test_mixffn_reference_is_the_model_s_mixffn():
    from segformer.kernels import dwconv3x3_gelu_reference
    from segformer.model import MixFFN

    torch.manual_seed(0)
    m = MixFFN(8, 32).eval()
    x = torch.randn(2, 6 * 5, 8)
    with torch.no_grad():
        mid = dwconv3x3_gelu_reference(m.fc1(x), 6, 5, m.dwconv.weight, m.dwconv.bias)
        torch.testing.assert_close(m.fc2(mid), m(x, 6, 5))


def test_fast_segmenter_with_and_without_the_fused_mixffn_agree_on_cpu(trained_like):
    m = trained_like("tiny", 7, seed=4)
    mean, std = (123.7, 116.3, 103.5), (58.4, 57.1, 57.4)
    images = torch.randint(0, 256, (1, 64, 96, 3), dtype=torch.uint8)
    with torch.no_grad():
        a = FastSegmenter(m, mean, std, dtype=torch.float32, fused_mixffn=True)
        b = FastSegmenter(m, mean, std, dtype=torch.float32, fused_mixffn=False)
        assert any(type(blk.mlp).__name__ == "FusedMixFFN" for st in a.encoder.stages for blk in st.blocks)
        torch.testing.assert_close(a.logits(images), b.logits(images), rtol=1e-4, atol=1e-4)
