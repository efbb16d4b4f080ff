"""The serving-variant table: one row per Triton model directory that `make repo` can write.

A row names the weights, the backend that serves it, the precision, the input resolution and the batch
profile. Export, engine building and config writing all read this table; adding a precision or backend is one
row here plus one builder function in `build.repository.BUILDERS`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

# backend kinds
PYTHON_ORT = "python_onnxruntime"  # python backend running the ONNX with ONNX Runtime (pip Triton, CPU)
ONNXRUNTIME = "onnxruntime"  # stock NGC Triton's onnxruntime backend
PYTHON_NULL = "python_null"  # python backend that returns zeros at once: the load generator's ceiling
TENSORRT = "tensorrt"  # model.plan for the tensorrt backend (NGC), built by TensorRT or TensorRT-RTX
PYTHON_GPU = "python_gpu"  # python backend running segformer.fast on a CUDA GPU (FP16, CUDA graphs)

PRECISIONS = ("fp32", "fp16", "int8", "best")


@dataclass(frozen=True)
class ServingVariant:
    name: str  # Triton model name
    weights: str  # shipped weights entry (segformer/weights)
    backend: str
    precision: str = "fp32"
    size: tuple[int, int] = (1024, 1024)  # H, W the config declares
    max_batch: int = 4
    opt_batch: int = 1
    preferred_batches: tuple[int, ...] = ()
    queue_delay_us: int = 2000
    instances: int = 1
    with_logits: bool = False
    layernorm: str = "native"  # "plugin": LayerNorm nodes become the TensorRT plugin op (plugins/)
    int8_recipe: str = "qdq"  # int8/best: "qdq" (explicit Q/DQ, TensorRT's input) or "dynamic" (ONNX Runtime CPU)
    description: str = ""
    extra: dict = field(default_factory=dict)

    def spec(self) -> dict:
        """The row as plain data (recorded in build.json; its hash decides whether a rebuild is needed)."""
        d = asdict(self)
        d["size"] = list(self.size)
        d["preferred_batches"] = list(self.preferred_batches)
        return d

    def resized(self, size: tuple[int, int]) -> "ServingVariant":
        return replace(self, size=tuple(size))


def _trt_rows(weights: str, prefix: str) -> list[ServingVariant]:
    rows = [ServingVariant(f"{prefix}_trt_{p}", weights, TENSORRT, precision=p, max_batch=8, opt_batch=4,
                           preferred_batches=(4, 8), description=f"TensorRT plan, {p}")
            for p in PRECISIONS]
    rows.append(ServingVariant(f"{prefix}_trt_plugin", weights, TENSORRT, max_batch=8, opt_batch=4,
                               preferred_batches=(4, 8), layernorm="plugin",
                               description="TensorRT plan, fp32, LayerNorm as the plugin op (needs make plugins)"))
    return rows


def _cpu_rows(weights: str, prefix: str) -> list[ServingVariant]:
    """The same precisions served by ONNX Runtime in the python backend: measurable on a CPU-only machine."""
    return [ServingVariant(f"{prefix}_{p}", weights, PYTHON_ORT, precision=p, max_batch=2,
                           description=f"ONNX Runtime {p} graph in the python backend")
            for p in PRECISIONS if p != "fp32"] + [
        ServingVariant(f"{prefix}_best_cpu", weights, PYTHON_ORT, precision="best", max_batch=2, int8_recipe="dynamic",
                       description="ONNX Runtime CPU INT8 (dynamic-activation weight products), accuracy-guarded")]


VARIANTS: dict[str, ServingVariant] = {v.name: v for v in [
    ServingVariant("segformer_b1", "segformer-b1-camvid", PYTHON_ORT, max_batch=2,
                   description="SegFormer-B1 1024x1024, ONNX Runtime inside the python backend (runs on pip Triton)"),
    ServingVariant("segformer_b1_onnx", "segformer-b1-camvid", ONNXRUNTIME, max_batch=8, preferred_batches=(4, 8),
                   description="SegFormer-B1 1024x1024, stock Triton onnxruntime backend (NGC)"),
    ServingVariant("segformer_b0", "segformer-b0-camvid", PYTHON_ORT, size=(512, 1024), max_batch=2,
                   description="SegFormer-B0 512x1024, ONNX Runtime inside the python backend"),
    *_cpu_rows("segformer-b1-camvid", "segformer_b1"),
    ServingVariant("segformer_null", "segformer-b1-camvid", PYTHON_NULL, max_batch=8, queue_delay_us=0,
                   description="returns zero labels at once: measures the load generator and server overhead"),
    *_trt_rows("segformer-b1-camvid", "segformer_b1"),
    ServingVariant("segformer_b1_gpu", "segformer-b1-camvid", PYTHON_GPU, precision="fp16", max_batch=16,
                   preferred_batches=(8, 16), queue_delay_us=1000, instances=2,
                   extra={"buckets": "1,2,4,8,16", "compile_mode": "default", "fused_mixffn": "0"},
                   description="GPU fast path: FP16, folded decoder, fused upsample+argmax, CUDA graphs; raw or "
                               "JPEG/PNG input (needs a CUDA GPU)"),
]}

DEFAULT = ("segformer_b1", "segformer_b1_onnx")


def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def select(names: list[str] | None = None, precisions: list[str] | None = None) -> list[ServingVariant]:
    """Rows by name (default: DEFAULT, every TensorRT row, and the GPU rows where a CUDA GPU is present) and
    optionally by precision."""
    if names:
        unknown = [n for n in names if n not in VARIANTS]
        if unknown:
            raise ValueError(f"unknown variant(s) {', '.join(unknown)}; the table has: {', '.join(VARIANTS)}")
        rows = [VARIANTS[n] for n in names]
    else:
        gpu = cuda_available()
        rows = [VARIANTS[n] for n in DEFAULT] + [v for v in VARIANTS.values()
                                                 if v.name not in DEFAULT and (v.backend != PYTHON_GPU or gpu)
                                                 and (v.backend == TENSORRT or v.name.startswith("segformer_b1_"))]
    if precisions:
        bad = [p for p in precisions if p not in PRECISIONS]
        if bad:
            raise ValueError(f"unknown precision(s) {', '.join(bad)}; choose from {', '.join(PRECISIONS)}")
        rows = [v for v in rows if v.precision in precisions]
    return rows
