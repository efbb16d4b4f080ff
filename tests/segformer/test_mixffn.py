"""The whole-Mix-FFN kernel (segformer.mixffn) checked on the CPU: in Triton's interpreter against the module-by-
module reference on shapes that cut strips, halos and row blocks unevenly, and the block it replaces in the
fast path against the model's own Block."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from segformer import mixffn as M
from segformer.fast import FastSegmenter, FusedFFNBlock
from segformer.model import Block

ROOT = Path(__file__).resolve().parents[2]

CHECK = textwrap.dedent("""
    import torch
    from torch import nn
    from segformer import mixffn as M
    torch.manual_seed(0)
    # (n, h, w, C, tile): several strips with a ragged last one, rows not a multiple of RB, a width that is not
    # a power of two (C padded inside the kernel), a one-row image, and the default plan
    cases = [(2, 9, 21, 32, {"BW": 16, "RB": 4, "HC": 32, "num_warps": 4}),
             (1, 7, 16, 40, {"BW": 16, "RB": 8, "HC": 32, "num_warps": 4}),
             (1, 1, 5, 16, {"BW": 16, "RB": 4, "HC": 16, "num_warps": 4}),
             (1, 5, 33, 64, None)]
    for n, h, w, c, tile in cases:
        hid = 4 * c
        mods = [nn.LayerNorm(c), nn.Linear(c, hid), nn.Conv2d(hid, hid, 3, 1, 1, groups=hid), nn.Linear(hid, c)]
        with torch.no_grad():
            for m in mods:
                for prm in m.parameters():
                    prm.add_(torch.randn_like(prm) * 0.1)
        p = M.prepare(*[m.half() for m in mods])
        x = torch.randn(n, h * w, c).half()
        y = M.mixffn(x, h, w, p, tile)
        ref = M.reference(x.float(), h, w, {k: v.float() if torch.is_tensor(v) else v for k, v in p.items()})
        rel = ((y.float() - ref).norm() / ref.norm()).item()
        assert y.shape == x.shape and torch.isfinite(y).all(), (n, h, w, c)
        assert rel < 2e-3, (n, h, w, c, rel)  # FP16 operands, FP32 accumulation
        # a pixel moved: the kernel must see its neighbours (the conv), not only itself
        x2 = x.clone()
        x2[0, 0] += 1
        changed = (M.mixffn(x2, h, w, p, tile) != y).any(-1)[0].nonzero().flatten().tolist()
        assert set(changed) <= {0, 1, w, w + 1} and 0 in changed, changed
        # the second form: fc1 in PyTorch, the rest in one kernel, on the same operands
        y2 = M.dw_fc2_block(x, h, w, p, tile)
        rel2 = ((y2.float() - ref).norm() / ref.norm()).item()
        assert y2.shape == x.shape and rel2 < 2e-3, (n, h, w, c, rel2)
    print("mixffn ok")
""")


def test_mixffn_kernel_in_the_interpreter_matches_the_reference():
    pytest.importorskip("triton", reason="triton is not installed (pip install triton)")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and "mixffn ok" in res.stdout, res.stderr[-3000:]


def test_reference_is_the_second_half_of_the_model_s_block():
    torch.manual_seed(1)
    blk = Block(16, 1, 2, 4, 0.0, 1e-6, 1e-5).eval()
    x = torch.randn(2, 6 * 7, 16)
    with torch.no_grad():
        p = M.prepare(blk.norm2, blk.mlp.fc1, blk.mlp.dwconv, blk.mlp.fc2)
        torch.testing.assert_close(M.reference(x, 6, 7, p), x + blk.mlp(blk.norm2(x), 6, 7))
        torch.testing.assert_close(FusedFFNBlock(blk)(x, 6, 7), blk(x, 6, 7))


def test_fast_segmenter_takes_the_path_by_name(trained_like):
    m = trained_like("tiny", 7, seed=4)
    mean, std = (123.7, 116.3, 103.5), (58.4, 57.1, 57.4)
    images = torch.randint(0, 256, (1, 64, 96, 3), dtype=torch.uint8)
    with torch.no_grad():
        fused = FastSegmenter(m, mean, std, dtype=torch.float32, mixffn="fused")
        plain = FastSegmenter(m, mean, std, dtype=torch.float32, mixffn="torch")
        assert all(isinstance(b, FusedFFNBlock) for st in fused.encoder.stages for b in st.blocks)
        assert not any(isinstance(b, FusedFFNBlock) for st in plain.encoder.stages for b in st.blocks)
        torch.testing.assert_close(fused.logits(images), plain.logits(images), rtol=1e-4, atol=1e-4)
        some = FastSegmenter(m, mean, std, dtype=torch.float32, mixffn="fused", fused_stages=(0,))
        kinds = [type(b).__name__ for st in some.encoder.stages for b in st.blocks]
        assert kinds[0] == "FusedFFNBlock" and "FusedFFNBlock" not in kinds[len(some.encoder.stages[0].blocks):]
    with pytest.raises(ValueError, match="choose one of fused, dwfc2, round2, torch"):
        FastSegmenter(m, mean, std, mixffn="fast")


def test_plan_refuses_a_hidden_width_the_kernel_cannot_chunk():
    assert M.plan(256, 256, 64, 256)["BW"] == 64
    with pytest.raises(ValueError, match="mixffn='round2'"):
        M.plan(8, 8, 3, 12)


def test_buffers_follow_the_block_to_half_precision():
    blk = FusedFFNBlock(Block(16, 1, 1, 4, 0.0, 1e-6, 1e-5)).half()
    assert blk.w1t.dtype == blk.w2t.dtype == blk.dww.dtype == torch.float16
    assert blk.w1t.shape == (16, 64) and blk.w2t.shape == (64, 16) and blk.dww.shape == (64, 9)
    assert "w1t" not in blk.state_dict()  # derived, never saved
