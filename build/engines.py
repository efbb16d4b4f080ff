"""TensorRT engine building on the API that TensorRT 10 and TensorRT-RTX share.

The builder module is chosen automatically: ``tensorrt`` (users' GPUs, NGC containers) first, then
``tensorrt_rtx_bindings`` (installable from wheels, builds on a CPU-only machine; its plans run only on RTX
GPUs and are labelled as such). Networks are created strongly typed, so a variant's precision is carried by its
ONNX (FP32, FP16-converted, or explicit Q/DQ for INT8) rather than by builder flags that only one API has.
"""
from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from pathlib import Path

from build.variants import ServingVariant
from segformer.errors import ProjectError


class BuilderUnavailable(ProjectError, RuntimeError):
    """No usable TensorRT for this build; the message names the fix."""


@dataclass(frozen=True)
class Builder:
    module: object
    name: str  # "tensorrt" or "tensorrt_rtx"
    version: str

    @property
    def rtx(self) -> bool:
        return self.name == "tensorrt_rtx"


def find_builder(prefer: str | None = None) -> Builder:
    candidates = [("tensorrt", "tensorrt"), ("tensorrt_rtx_bindings", "tensorrt_rtx")]
    if prefer:
        candidates = [c for c in candidates if c[1] == prefer]
    broken = []
    for module_name, name in candidates:
        try:
            mod = importlib.import_module(module_name)
            return Builder(mod, name, getattr(mod, "__version__", "unknown"))
        except ModuleNotFoundError as exc:
            if exc.name != module_name:  # installed, but something it needs is missing
                broken.append(f"{module_name}: {exc}")
        except Exception as exc:  # noqa: BLE001 - an installed builder that fails to load: say why
            broken.append(f"{module_name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    if broken:
        raise BuilderUnavailable("TensorRT is installed but does not load (" + "; ".join(broken) + ")")
    raise BuilderUnavailable("no TensorRT builder: install TensorRT (NGC container or the `tensorrt` wheels) or "
                             "TensorRT-RTX (`pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings`)")


PLUGIN_DIR = Path(__file__).resolve().parent.parent / "plugins" / "build"


def load_plugin(builder: Builder) -> Path:
    """Load the LayerNorm plugin library (its creator registers itself at load), or say why it cannot be."""
    import ctypes

    if builder.rtx:
        raise BuilderUnavailable("the LayerNorm plugin is built against TensorRT; TensorRT-RTX cannot load it "
                                 "(build this row where TensorRT is installed)")
    libs = sorted(PLUGIN_DIR.glob("libsegformer_plugins*.so"))
    if not libs:
        raise BuilderUnavailable(f"no plugin library in {PLUGIN_DIR}: run `make plugins` (needs nvcc and "
                                 "TensorRT headers)")
    ctypes.CDLL(str(libs[0]), mode=ctypes.RTLD_GLOBAL)
    return libs[0]


def build_plan(builder: Builder, onnx_path: Path, v: ServingVariant, out: Path, log=print,  # noqa: PLR0913
               timing_cache: Path | None = None, workspace_gb: float | None = None) -> dict:
    """Parse the ONNX, set the batch profile, build and write the serialized plan; returns provenance."""
    if v.layernorm == "plugin":
        load_plugin(builder)
    trt = builder.module
    logger = trt.Logger(trt.Logger.WARNING)
    b = trt.Builder(logger)
    network = b.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{builder.name} could not parse {onnx_path.name}: {errors}")
    io = [{"name": t.name, "dtype": str(t.dtype).rsplit(".", 1)[-1].upper(), "shape": list(t.shape)}
          for t in [network.get_input(i) for i in range(network.num_inputs)]
          + [network.get_output(i) for i in range(network.num_outputs)]]
    config = b.create_builder_config()
    if workspace_gb:  # left to the builder by default: TensorRT-RTX on a CPU-only host allocates the limit
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    h, w = v.size
    (lo_h, lo_w), (hi_h, hi_w) = v.size_range or ((h, w), (h, w))  # a dynamic row: its min / opt / max sizes
    shapes = {"min": [1, lo_h, lo_w, 3], "opt": [v.opt_batch, h, w, 3], "max": [v.max_batch, hi_h, hi_w, 3]}
    profile = b.create_optimization_profile()
    profile.set_shape("images", *(tuple(shapes[k]) for k in ("min", "opt", "max")))
    config.add_optimization_profile(profile)
    cache, cache_in = None, 0
    if builder.rtx:
        timing_cache = None  # TensorRT-RTX: timing-cache calls are no-ops (it tunes at run time on the GPU)
    if timing_cache is not None:
        blob = timing_cache.read_bytes() if timing_cache.is_file() else b""
        cache_in = len(blob)
        cache = config.create_timing_cache(blob)
        config.set_timing_cache(cache, ignore_mismatch=False)
    t0 = time.perf_counter()
    plan = b.build_serialized_network(network, config)
    seconds = time.perf_counter() - t0
    if plan is None:
        raise RuntimeError(f"{builder.name} failed to build {v.name}; run with TensorRT verbose logging for why")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(bytes(plan))
    if cache is not None:
        from segformer.weights import atomic_write_bytes

        atomic_write_bytes(timing_cache, bytes(cache.serialize()))
    log(f"  {builder.name} {builder.version}: built {v.name} ({v.precision}) in {seconds:.1f} s, "
        f"{out.stat().st_size / 1e6:.1f} MB")
    return {"builder": builder.name, "builder_version": builder.version, "rtx": builder.rtx,
            "engine_build_seconds": round(seconds, 2), "io": io,
            "timing_cache": {"path": str(timing_cache), "bytes_before": cache_in} if timing_cache else None, "engine_bytes": out.stat().st_size,
            "profile": shapes}
