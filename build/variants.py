"""The serving-variant table: templates applied to a weights entry, one row per Triton model directory.

A template names the backend, the precision and the batch profile; applying it to a weights entry (shipped or
imported with build.import_weights) gives a row with that entry's weights, input size (fixed, or a dynamic range)
and a model name ``<prefix><suffix>`` (``city_b1`` -> ``city_b1_fp16``, ``city_b1_trt_fp16`` ...). Export, engine
building and config writing all read the rows. What a backend kind is (Triton backend, instance kind, builder,
program files, NGC and cluster support) is its record in build.backends: a new precision is one template here,
a new backend one record there plus the templates that use it. The shipped CamVid entries keep their model names
(``segformer_b1``, ``segformer_b1_fp16`` ..., ``segformer_b0``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

# backend kinds: one record each in build.backends (re-exported here, where the rows name them)
from build.backends import ONNXRUNTIME, OPENVINO, PYTHON_GPU, PYTHON_NULL, PYTHON_ORT, PYTHON_OV, TENSORRT  # noqa: F401
from build.backends import ENSEMBLE, GPU, PYTHON_DECODE, PYTHON_DECODE_GPU
from build.backends import backend as backend_record
from segformer.errors import ProjectError

PRECISIONS = ("fp32", "fp16", "int8", "best")  # the ONNX Runtime and TensorRT rows
ALL_PRECISIONS = PRECISIONS + ("bf16",)  # bf16: OpenVINO on CPUs with AVX512-BF16 / AMX


@dataclass(frozen=True)
class ServingVariant:
    name: str  # Triton model name
    weights: str  # weights entry (segformer/weights): shipped or imported
    backend: str
    precision: str = "fp32"
    size: tuple[int, int] = (1024, 1024)  # H, W: the fixed size, or the optimum of a dynamic range
    max_batch: int = 4
    opt_batch: int = 1
    preferred_batches: tuple[int, ...] = ()
    queue_delay_us: int = 2000
    instances: int = 1
    with_logits: bool = False
    layernorm: str = "native"  # "plugin": LayerNorm nodes become the TensorRT plugin op (plugins/)
    int8_recipe: str = "qdq"  # int8/best: "qdq" (explicit Q/DQ, TensorRT's input) or "dynamic" (ONNX Runtime CPU)
    size_range: tuple[tuple[int, int], tuple[int, int]] | None = None  # (min HxW, max HxW): dynamic H and W
    description: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def dynamic(self) -> bool:
        return self.size_range is not None

    def spec(self) -> dict:
        """The row as plain data (recorded in build.json; its hash decides whether a rebuild is needed)."""
        d = asdict(self)
        d["size"] = list(self.size)
        d["preferred_batches"] = list(self.preferred_batches)
        if self.size_range is None:
            d.pop("size_range")  # keeps the recipes of fixed-size rows what they were
        else:
            d["size_range"] = [list(s) for s in self.size_range]
        return d

    def resized(self, size: tuple[int, int]) -> "ServingVariant":
        return replace(self, size=tuple(size))


@dataclass(frozen=True)
class Template:
    """A row without weights: applied to an entry by `Template.apply`."""

    suffix: str
    backend: str
    precision: str = "fp32"
    max_batch: int = 4
    opt_batch: int = 1
    preferred_batches: tuple[int, ...] = ()
    queue_delay_us: int = 2000
    instances: int = 1
    layernorm: str = "native"
    int8_recipe: str = "qdq"
    fixed_size: bool = False  # the row cannot take a dynamic size (CUDA graphs per shape): served at the optimum
    # a dynamic range of its own, for entries that have none (widened to hold the entry's size); its `sizes` extra
    # (pre-captured HxW list) keeps those inside the row's range, after the row's own size
    size_range: tuple[tuple[int, int], tuple[int, int]] | None = None
    opt_in: bool = False  # built only when named (VARIANTS=...), never in make repo's default set
    description: str = ""
    extra: dict = field(default_factory=dict)

    def apply(self, prefix: str, weights: str, size: tuple[int, int], size_range=None, with_logits=False
              ) -> ServingVariant:
        fields = {k: v for k, v in asdict(self).items() if k not in ("suffix", "fixed_size", "size_range", "opt_in")}
        size_range = None if self.fixed_size else size_range
        if self.size_range is not None:
            size_range = _holding(size_range or self.size_range, size)
            fields["extra"] = {**self.extra, "sizes": _sizes_within(size, self.extra.get("sizes", ""), size_range)}
        return ServingVariant(name=prefix + self.suffix, weights=weights, size=tuple(size), size_range=size_range,
                              with_logits=with_logits, **fields)


def _holding(size_range, size) -> tuple[tuple[int, int], tuple[int, int]]:
    (lo_h, lo_w), (hi_h, hi_w) = size_range
    return (min(lo_h, size[0]), min(lo_w, size[1])), (max(hi_h, size[0]), max(hi_w, size[1]))


def _sizes_within(size, listed: str, size_range) -> str:
    """The row's own size and the listed HxW sizes that lie in its range as multiples of 32, as 'HxW,HxW'."""
    (lo_h, lo_w), (hi_h, hi_w) = size_range
    out = []
    for h, w in [tuple(size)] + [tuple(int(x) for x in s.split("x")) for s in listed.split(",") if s]:
        if lo_h <= h <= hi_h and lo_w <= w <= hi_w and not h % 32 and not w % 32 and (h, w) not in out:
            out.append((h, w))
    return ",".join(f"{h}x{w}" for h, w in out)


TRT = {"max_batch": 8, "opt_batch": 4, "preferred_batches": (4, 8)}
# the GPU rows' parameters (server/models/gpu_model.py): CUDA-graph buckets, torch.compile mode, the fused Mix-FFN
# kernel, the JPEG/PNG decoder (auto: nvImageCodec where it imports, else torchvision) and deferred responses
GPU_EXTRA = {"buckets": "1,2,4,8,16", "compile_mode": "default", "fused_mixffn": "1", "jpeg_decoder": "auto",
             "respond": "deferred"}
TEMPLATES: tuple[Template, ...] = (
    Template("", PYTHON_ORT, max_batch=2, description="ONNX Runtime inside the python backend (runs on pip Triton)"),
    Template("_onnx", ONNXRUNTIME, max_batch=8, preferred_batches=(4, 8),
             description="stock Triton onnxruntime backend (NGC)"),
    *(Template(f"_{p}", PYTHON_ORT, precision=p, max_batch=2, description=f"ONNX Runtime {p} graph in the python "
               "backend") for p in PRECISIONS if p != "fp32"),
    Template("_best_cpu", PYTHON_ORT, precision="best", max_batch=2, int8_recipe="dynamic",
             description="ONNX Runtime CPU INT8 (dynamic-activation weight products), accuracy-guarded"),
    Template("_ov", PYTHON_OV, max_batch=2, description="OpenVINO f32 in the python backend (exact, CPU)"),
    Template("_ov_bf16", PYTHON_OV, precision="bf16", max_batch=2,
             description="OpenVINO bf16 where the CPU has AVX512-BF16/AMX, accuracy-guarded (f32 prefix or f32 "
                         "fallback)"),
    Template("_ov_int8", PYTHON_OV, precision="int8", max_batch=2,
             description="OpenVINO INT8 (NNCF) after an f32 stem, the rest bf16 where the CPU has it; sensitive "
                         "groups returned to bf16 until the guard passes (<= 0.5 % mean / 1 % worst frame); f32 "
                         "fallback; needs CALIB"),
    Template("_openvino", OPENVINO, max_batch=2, description="stock Triton openvino backend (NGC), f32 IR"),
    *(Template(f"_trt_{p}", TENSORRT, precision=p, description=f"TensorRT plan, {p}", **TRT) for p in PRECISIONS),
    Template("_trt_plugin", TENSORRT, layernorm="plugin", description="TensorRT plan, fp32, LayerNorm as the plugin "
             "op (needs make plugins)", **TRT),
    Template("_gpu", PYTHON_GPU, precision="fp16", max_batch=16, preferred_batches=(8, 16), queue_delay_us=1000,
             instances=2, fixed_size=True, extra=GPU_EXTRA,
             description="GPU fast path: FP16, folded decoder, fused upsample+argmax, CUDA graphs; raw or JPEG/PNG "
                         "input (needs a CUDA GPU)"),
    Template("_gpu_dynamic", PYTHON_GPU, precision="fp16", max_batch=16, preferred_batches=(8, 16),
             queue_delay_us=1000, instances=2, size_range=((256, 256), (1024, 2048)), opt_in=True,
             extra={**GPU_EXTRA, "sizes": "736x960,1024x2048", "graph_cap": "8"},
             description="GPU fast path at the frame's own size (H, W multiples of 32 in the range, no letterbox): "
                         "CUDA graphs captured at load for `sizes`, other sizes on first use (graph_cap kept, least "
                         "recently used dropped); needs a CUDA GPU, built when named"),
)
TEMPLATE_BY_SUFFIX = {t.suffix: t for t in TEMPLATES}
OPT_IN = tuple(t.suffix for t in TEMPLATES if t.opt_in)

# JPEG/PNG in on every accelerated row: <row>_jpeg (a Triton ensemble) runs <row>_decode (decode + the client's
# placement) and then <row>, so a client may send an encoded file to any row (build.ensemble writes them)
JPEG_SUFFIX, DECODE_SUFFIX = "_jpeg", "_decode"


def jpeg_rows(row: ServingVariant) -> list[ServingVariant]:
    """The decode step and the ensemble of `row` (none where its backend takes encoded input itself or is not an
    accelerated row)."""
    record = backend_record(row.backend)
    if not record.jpeg:
        return []
    decode = ServingVariant(row.name + DECODE_SUFFIX, row.weights, PYTHON_DECODE_GPU if record.instance == GPU
                            else PYTHON_DECODE, precision=row.precision, size=row.size, max_batch=row.max_batch,
                            queue_delay_us=0, size_range=row.size_range, extra={"target": row.name},
                            description=f"decodes a JPEG/PNG and places it (input policy, fit) for {row.name}")
    ensemble = replace(decode, name=row.name + JPEG_SUFFIX, backend=ENSEMBLE,
                       extra={"decode": decode.name, "target": row.name},
                       description=f"{row.name} taking one JPEG/PNG file per request (`encoded`); labels at the "
                                   "placed size + `placement` [content h, w, image h, w]")
    return [decode, ensemble]


def needs(row: ServingVariant) -> list[str]:
    """The rows an ensemble runs (its decode step and its row), built before it; [] for other rows."""
    return [row.extra["target"], row.extra["decode"]] if row.backend == ENSEMBLE else []

# The shipped entries: weights name -> (model-name prefix, served size, templates built by default)
SHIPPED = {"segformer-b1-camvid": ("segformer_b1", (1024, 1024), None),
           "segformer-b0-camvid": ("segformer_b0", (512, 1024), ("",))}


def rows_for(weights: str, prefix: str | None = None, size: tuple[int, int] | None = None,
             suffixes: tuple[str, ...] | None = None, with_logits: bool | None = None) -> list[ServingVariant]:
    """Every template applied to one weights entry (its own input size and dynamic range unless given)."""
    from segformer.weights import get_weights

    if weights in SHIPPED:
        prefix = prefix or SHIPPED[weights][0]
        size = size or SHIPPED[weights][1]
        suffixes = suffixes if suffixes is not None else SHIPPED[weights][2]
        size_range = None
        logits = False
    else:
        w = get_weights(weights)
        prefix = prefix or w.name
        size = size or w.input_size or (512, 512)
        size_range = w.size_range
        logits = bool(w.meta.get("with_logits"))
    logits = logits if with_logits is None else with_logits
    rows = [t.apply(prefix, weights, size, size_range, logits) for t in TEMPLATES
            if suffixes is None or t.suffix in suffixes]
    return rows + [j for r in rows for j in jpeg_rows(r)]


NULL_ROW = ServingVariant("segformer_null", "segformer-b1-camvid", PYTHON_NULL, max_batch=8, queue_delay_us=0,
                          description="returns zero labels at once: measures the load generator and server overhead")


def _shipped_rows() -> list[ServingVariant]:
    rows = []
    for weights in SHIPPED:
        rows += [replace(r, description=f"SegFormer-{weights.split('-')[1].upper()} {r.size[0]}x{r.size[1]}, "
                                         + r.description) for r in rows_for(weights)]
    return rows + [NULL_ROW] + jpeg_rows(NULL_ROW)


VARIANTS: dict[str, ServingVariant] = {v.name: v for v in _shipped_rows()}

DEFAULT = ("segformer_b1", "segformer_b1_onnx")


def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def imported_rows() -> dict[str, ServingVariant]:
    """Rows of every imported weights entry, by model name."""
    from segformer.weights import IMPORTED_DIR

    out = {}
    for meta in sorted(IMPORTED_DIR.glob("*.json")):
        out.update({v.name: v for v in rows_for(meta.stem)})
    return out


def entry_rows(weights: str, gpu: bool | None = None) -> list[ServingVariant]:
    """The rows `make repo` builds for one entry: every template, the CUDA rows (GPU fast path) only where a CUDA GPU
    is present."""
    gpu = cuda_available() if gpu is None else gpu
    return [v for v in rows_for(weights) if gpu or not backend_record(v.backend).needs_cuda]


def _with_needs(rows: list[ServingVariant], table: dict) -> list[ServingVariant]:
    """`rows` plus the rows their ensembles run, each before the first row that needs it."""
    out, seen = [], set()
    for r in rows:
        for dep in [table[n] for n in needs(r) if n in table] + [r]:
            if dep.name not in seen:
                seen.add(dep.name)
                out.append(dep)
    return out


class SelectionError(ProjectError, ValueError):
    """VARIANTS / PRECISIONS that name no row; the message names what the table has."""


def select(names: list[str] | None = None, precisions: list[str] | None = None, weights: str | None = None
           ) -> list[ServingVariant]:
    """Rows by name (shipped or imported), or every row of one weights entry, or the default set (DEFAULT, every
    TensorRT row and the GPU rows where a CUDA GPU is present); optionally filtered by precision. A selection that
    leaves no row is an error naming what exists."""
    if names:
        table = {**VARIANTS, **imported_rows()}
        unknown = [n for n in names if n not in table]
        if unknown:
            raise SelectionError(f"unknown variant(s) {', '.join(unknown)}; the table has: {', '.join(table)}")
        rows = _with_needs([table[n] for n in names], table)
    elif weights:
        rows = entry_rows(weights)
    else:
        gpu = cuda_available()
        rows = [VARIANTS[n] for n in DEFAULT] + [v for v in VARIANTS.values()
                                                 if v.name not in DEFAULT and not v.name.endswith(OPT_IN)
                                                 and (gpu or not backend_record(v.backend).needs_cuda)
                                                 and (v.backend == TENSORRT or v.name.startswith("segformer_b1_"))]
    if precisions:
        bad = [p for p in precisions if p not in ALL_PRECISIONS]
        if bad:
            raise SelectionError(f"unknown precision(s) {', '.join(bad)}; choose from {', '.join(ALL_PRECISIONS)}")
        kept = [v for v in rows if v.precision in precisions]
        if not kept:
            which = (f"VARIANTS={','.join(names)}" if names else f"the rows of {weights}" if weights
                     else "the default rows")
            have = ", ".join(f"{v.name} ({v.precision})" for v in rows)
            raise SelectionError(f"no row of {which} has precision {', '.join(precisions)}: {have}; drop "
                                 "PRECISIONS or name rows of that precision")
        rows = kept
    return rows
