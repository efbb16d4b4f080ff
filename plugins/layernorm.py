"""Build the plugin tree with CMake and call the LayerNorm kernels from Python (ctypes over the C API).

    from plugins.layernorm import build, KernelLibrary
    build()                                  # cmake -S plugins -B plugins/build && cmake --build ...
    ln = KernelLibrary()                     # plugins/build/libsegformer_layernorm_kernels.so
    y = ln(x, gamma, beta, eps)              # CUDA tensors, fp32 or fp16, LayerNorm over the last dim
"""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

from segformer.errors import ProjectError

HERE = Path(__file__).resolve().parent
BUILD = HERE / "build"
KERNELS = "libsegformer_layernorm_kernels.so"
PLUGIN = "libsegformer_plugins.so"
HEADERS_CACHE = HERE.parent / ".cache" / "tensorrt-headers"
# TensorRT 10.14's public headers (Apache-2.0) ship inside this pure-Python wheel; only the headers are used
HEADERS_WHEEL = "kernel-lens==2.0.1"


class PluginBuildError(ProjectError, RuntimeError):
    """The plugin tree did not build; the message names what is missing."""


def tensorrt_headers(cache: Path = HEADERS_CACHE, log=print) -> Path | None:
    """TensorRT's public headers without a TensorRT install: extracted from the kernel-lens wheel (downloaded
    without its dependencies, never imported) into an ignored cache folder. None when they cannot be had."""
    import sys
    import tempfile
    import zipfile

    folder = cache / HEADERS_WHEEL.replace("==", "-")
    if (folder / "NvInferRuntime.h").is_file():
        return folder
    with tempfile.TemporaryDirectory() as tmp:
        res = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, HEADERS_WHEEL],
                             capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if res.returncode != 0 or not wheels:
            log(f"TensorRT headers: could not download {HEADERS_WHEEL} ({(res.stderr or '').strip()[-200:]})")
            return None
        cache.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(dir=cache))
        with zipfile.ZipFile(wheels[0]) as z:
            for name in z.namelist():
                if name.startswith("kernel_lens/include/tensorrt/") and name.endswith(".h"):
                    (stage / Path(name).name).write_bytes(z.read(name))
        folder.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
        stage.replace(folder)
    return folder


def lean_runtime() -> Path | None:
    """libnvinfer_lean.so.10 from the tensorrt-lean-cu12-libs wheel (TensorRT's lean runtime: a real plugin registry
    that loads without a GPU), if installed."""
    try:
        import tensorrt_lean_libs
    except ImportError:
        return None
    for d in getattr(tensorrt_lean_libs, "__path__", []):
        libs = sorted(Path(d).glob("libnvinfer_lean.so.*"))
        if libs:
            return libs[0]
    return None


def build(build_dir: Path = BUILD, cuda_arch: str | None = None, jobs: int = 2, log=print) -> dict:
    """Configure and build; returns what was built: fields test, kernels, plugin (and why a part was skipped).

    TensorRT: TENSORRT_ROOT (a real install) wins; otherwise the headers come from the kernel-lens wheel and the
    runtime from the lean-runtime wheel, and the plugin plus its registry test are built against those."""
    if shutil.which("cmake") is None:
        raise PluginBuildError("cmake is not installed: apt-get install cmake (or pip install cmake)")
    args = ["cmake", "-S", str(HERE), "-B", str(build_dir)]
    if not os.environ.get("TENSORRT_ROOT"):
        headers, lean = tensorrt_headers(log=log), lean_runtime()
        if headers and lean:
            args += [f"-DTENSORRT_INCLUDE_DIR={headers}", f"-DTENSORRT_NVINFER={lean}"]
        elif headers:
            log("TensorRT lean runtime not installed (pip install tensorrt-lean-cu12-libs==10.15.1.29): plugin skipped")
    arch = cuda_arch or os.environ.get("CUDA_ARCH")
    if arch:
        args.append(f"-DCMAKE_CUDA_ARCHITECTURES={arch}")
    if not shutil.which("nvcc"):
        cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
        if (Path(cuda_home) / "bin" / "nvcc").is_file():
            args.append(f"-DCMAKE_CUDA_COMPILER={Path(cuda_home) / 'bin' / 'nvcc'}")
    for cmd in (args, ["cmake", "--build", str(build_dir), "-j", str(jobs)]):
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise PluginBuildError(f"{' '.join(cmd[:2])} failed:\n{(res.stdout + res.stderr)[-3000:]}")
        for line in res.stdout.splitlines():
            if "segformer_plugins:" in line:
                log(line.strip("- ").strip())
    skipped, used = build_dir / "PLUGIN_SKIPPED", build_dir / "TENSORRT_USED"
    return {"fields_test": (build_dir / "test_fields").is_file(), "kernels": (build_dir / KERNELS).is_file(),
            "plugin": (build_dir / PLUGIN).is_file(),
            "plugin_skipped": skipped.read_text().strip() if skipped.is_file() else None,
            "tensorrt": used.read_text().strip() if used.is_file() else None}


class KernelLibrary:
    """The kernels' C API: segformer_layernorm(x, gamma, beta, y, rows, channels, eps, dtype, stream)."""

    FP32, FP16 = 0, 1

    def __init__(self, path: Path | None = None):
        path = Path(path) if path else BUILD / KERNELS
        if not path.is_file():
            raise PluginBuildError(f"{path} is missing: run `make plugins` on a machine with nvcc")
        self.lib = ctypes.CDLL(str(path))
        f = self.lib.segformer_layernorm
        f.restype = ctypes.c_int
        f.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64, ctypes.c_int32, ctypes.c_float, ctypes.c_int32,
                                               ctypes.c_void_p]
        self.max_channels = self.lib.segformer_layernorm_max_channels()

    def __call__(self, x, gamma, beta, eps: float, out=None):
        import torch

        if x.dtype not in (torch.float32, torch.float16) or not x.is_cuda:
            raise ValueError("x must be a CUDA tensor of float32 or float16")
        x = x.contiguous()
        c = x.shape[-1]
        gamma, beta = gamma.to(x.dtype).contiguous(), beta.to(x.dtype).contiguous()
        y = torch.empty_like(x) if out is None else out
        stream = torch.cuda.current_stream(x.device).cuda_stream
        rc = self.lib.segformer_layernorm(x.data_ptr(), gamma.data_ptr(), beta.data_ptr(), y.data_ptr(),
                                          x.numel() // c, c, eps, self.FP16 if x.dtype == torch.float16 else self.FP32,
                                          stream)
        if rc != 0:
            raise RuntimeError(f"segformer_layernorm failed with CUDA error {rc}")
        return y


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m plugins.layernorm", description="Build plugins/ with CMake: the "
                                 "field test always, the kernels with nvcc, the TensorRT plugin with TensorRT.")
    ap.add_argument("--build-dir", type=Path, default=BUILD)
    ap.add_argument("--cuda-arch", help="CMAKE_CUDA_ARCHITECTURES, e.g. 90 or native (default: 80 86 89 90)")
    args = ap.parse_args(argv)
    from client import cli

    return cli.run(lambda: _build(args))


def _build(args) -> int:
    info = build(args.build_dir, cuda_arch=args.cuda_arch)
    print(f"field test: {'built' if info['fields_test'] else 'missing'}; kernels: "
          f"{'built' if info['kernels'] else 'skipped (no nvcc)'}; plugin: "
          f"{'built' if info['plugin'] else 'skipped (' + (info['plugin_skipped'] or 'no nvcc') + ')'}")
    if info["tensorrt"]:
        print(info["tensorrt"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
