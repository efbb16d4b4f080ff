"""The LayerNorm plugin tree: CMake build (into a temporary folder: `make plugins`' output is left alone), the CPU
test of field parsing/serialization, the plugin through TensorRT's registry (lean runtime), its refusal of another
TensorRT major, LD_PRELOAD into the real tritonserver, and on a GPU the kernels and the plugin's enqueue against
PyTorch (skipped without one). In CI (CI=true) a plugin that did not build is a failure, not a skip."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from plugins.layernorm import KERNELS, PLUGIN, KernelLibrary, build, lean_runtime

ROOT = Path(__file__).resolve().parents[2]
CHANNELS = [32, 64, 128, 160, 256, 320, 512]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    if shutil.which("cmake") is None or shutil.which("g++") is None:
        if os.environ.get("CI"):
            pytest.fail("cmake and g++ are needed to build plugins/ (CI installs them)")
        pytest.skip("cmake and a C++ compiler are needed to build plugins/")
    out = tmp_path_factory.mktemp("plugins-build")
    arch = os.environ.get("CUDA_ARCH") or ("native" if torch.cuda.is_available() else "90")
    return out, build(out, cuda_arch=arch, log=lambda *_: None)


@pytest.fixture(scope="module")
def plugin(built):
    """The built plugin library; CI must have built it (nvcc, headers from kernel-lens, lean runtime)."""
    out, info = built
    if not info["plugin"]:
        msg = f"plugin not built: {info['plugin_skipped'] or 'no nvcc'}"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return out / PLUGIN


def test_plugin_through_tensorrts_registry_and_version_guard(built, plugin):
    out, info = built
    assert "TensorRT headers 10." in info["tensorrt"]  # the build says which headers and runtime it used
    res = subprocess.run(["ctest", "--output-on-failure", "-R", "registry|version_guard"], cwd=out,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "2 tests" in res.stdout or "tests passed" in res.stdout


def test_preloaded_into_tritonserver_it_registers_and_the_server_serves(plugin, tmp_path):
    from build.repository import write_repository
    from build.variants import PYTHON_NULL, ServingVariant
    from server.serve import start, stop_pid
    from tests.conftest import free_port

    lean = lean_runtime()
    assert lean is not None
    repo = tmp_path / "repo"
    write_repository([ServingVariant("null_plugin", "segformer-b0-camvid", PYTHON_NULL, size=(64, 64))], repo,
                     log=lambda *_: None, cache_dir=tmp_path / "cache")
    ports = [free_port() for _ in range(3)]
    proc = start(repo, *ports, state=tmp_path / "state", plugins=[plugin])
    try:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/v2/models/null_plugin/ready", timeout=5) as r:
            assert r.status == 200
    finally:
        stop_pid(proc.pid)
    log = (tmp_path / "state" / "server.log").read_text()
    assert "[SegformerLayerNorm] registered SegformerLayerNorm v1 (TensorRT 10." in log


def test_field_parsing_and_serialization_on_the_cpu(built):
    out, info = built
    assert info["fields_test"]
    res = subprocess.run([str(out / "test_fields")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "all checks passed" in res.stdout


def test_kernels_compile_and_a_skipped_plugin_says_why(built):
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


@pytest.fixture(scope="module")
def harness(built, plugin):
    """The plugin run through its TensorRT interface (createPlugin, onShapeChange, enqueue) from Python."""
    import ctypes

    ctypes.CDLL(str(lean_runtime()), mode=ctypes.RTLD_GLOBAL)
    ctypes.CDLL(str(plugin), mode=ctypes.RTLD_GLOBAL)
    lib = ctypes.CDLL(str(built[0] / "libsegformer_plugin_harness.so"))
    f = lib.segformer_harness_layernorm
    f.restype = ctypes.c_int32
    f.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64, ctypes.c_int32, ctypes.c_float, ctypes.c_int32,
                                           ctypes.c_void_p]
    return f


@gpu
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 2e-5), (torch.float16, 1.5e-2)])
@pytest.mark.parametrize("channels", CHANNELS)
def test_plugin_enqueue_matches_pytorch(harness, channels, dtype, atol):
    torch.manual_seed(channels)
    x = (torch.randn(4096, channels, device="cuda") * 2 + 0.5).to(dtype)
    g = (torch.rand(channels, device="cuda") + 0.5).to(dtype)
    b = torch.randn(channels, device="cuda").to(dtype)
    y = torch.empty_like(x)
    stream = torch.cuda.current_stream()
    rc = harness(x.data_ptr(), g.data_ptr(), b.data_ptr(), y.data_ptr(), x.shape[0], channels, 1e-6,
                 int(dtype == torch.float16), stream.cuda_stream)
    stream.synchronize()
    assert rc == 0
    ref = torch.nn.functional.layer_norm(x.float(), (channels,), g.float(), b.float(), 1e-6)
    assert (y.float() - ref).abs().max().item() <= atol
