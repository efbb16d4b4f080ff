"""The LayerNorm plugin tree: CMake build, the CPU test of field parsing/serialization, the kernels against
PyTorch on a GPU (skipped without one), and LD_PRELOAD reaching a real tritonserver."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from plugins.layernorm import KERNELS, KernelLibrary, build

ROOT = Path(__file__).resolve().parents[2]
CHANNELS = [32, 64, 128, 160, 256, 320, 512]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    if shutil.which("cmake") is None or shutil.which("g++") is None:
        pytest.skip("cmake and a C++ compiler are needed to build plugins/")
    out = ROOT / "plugins" / "build" if torch.cuda.is_available() else tmp_path_factory.mktemp("plugins-build")
    arch = os.environ.get("CUDA_ARCH") or ("native" if torch.cuda.is_available() else "90")
    return out, build(out, cuda_arch=arch, log=lambda *_: None)


def test_field_parsing_and_serialization_on_the_cpu(built):
    out, info = built
    assert info["fields_test"]
    res = subprocess.run([str(out / "test_fields")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "all checks passed" in res.stdout


def test_kernels_compile_and_plugin_layer_says_why_it_is_skipped(built):
    out, info = built
    nvcc = shutil.which("nvcc") or Path("/usr/local/cuda/bin/nvcc").is_file()
    if not nvcc:
        pytest.skip("no nvcc: the kernels are not built here")
    assert info["kernels"] and (out / KERNELS).is_file()
    if not info["plugin"]:
        assert "TensorRT" in info["plugin_skipped"]  # said, not silently missing


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="kernel checks need a CUDA GPU")


@pytest.fixture(scope="module")
def ln(built):
    return KernelLibrary(built[0] / KERNELS)


def _check(ln, x, g, b, eps, atol):
    ref = torch.nn.functional.layer_norm(x.float(), (x.shape[-1],), g.float(), b.float(), eps)
    y = ln(x, g, b, eps)
    assert y.dtype == x.dtype and y.shape == x.shape
    err = (y.float() - ref).abs().max().item()
    assert err <= atol, err


@gpu
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 2e-5), (torch.float16, 1.5e-2)])
@pytest.mark.parametrize("channels", CHANNELS + [100])  # 100: not a multiple of the vector width
def test_kernel_matches_pytorch(ln, channels, dtype, atol):
    torch.manual_seed(channels)
    x = (torch.randn(3000, channels, device="cuda") * 2 + 0.5).to(dtype)
    g = (torch.rand(channels, device="cuda") + 0.5).to(dtype)
    b = torch.randn(channels, device="cuda").to(dtype)
    _check(ln, x, g, b, 1e-6, atol)


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_one_token_and_misaligned_rows(ln, dtype):
    g = torch.ones(64, device="cuda", dtype=dtype)
    b = torch.zeros(64, device="cuda", dtype=dtype)
    _check(ln, torch.randn(1, 64, device="cuda").to(dtype), g, b, 1e-5, 1e-2)
    flat = torch.randn(1 + 50 * 64, device="cuda").to(dtype)
    _check(ln, flat[1:].view(50, 64), g, b, 1e-5, 1e-2)  # 2/4-byte offset: the scalar path


@gpu
def test_large_fp16_values_do_not_overflow_when_squared(ln):
    # |x - mean| up to ~3e4: squares (~1e9) overflow FP16 (max 65504) but not the FP32 accumulation
    x = (torch.randn(256, 320, device="cuda") * 1.5e4).clamp(-6e4, 6e4).half()
    g = torch.ones(320, device="cuda", dtype=torch.float16)
    b = torch.zeros(320, device="cuda", dtype=torch.float16)
    y = ln(x, g, b, 1e-6)
    assert torch.isfinite(y).all()
    _check(ln, x, g, b, 1e-6, 1.5e-2)


@gpu
def test_bad_arguments_are_refused(ln):
    x = torch.randn(4, ln.max_channels + 8, device="cuda")
    with pytest.raises(RuntimeError, match="CUDA error"):
        ln(x, torch.ones(x.shape[1], device="cuda"), torch.zeros(x.shape[1], device="cuda"), 1e-5)
