"""One record per backend kind: everything the project knows about a way of serving a row, in one place.

The variant table (build.variants) names a row's backend kind; the repository writer (build.repository) builds the
row's directory with the record's builder and copies its program and runtime files; the config writer
(build.model_config) takes the Triton backend/platform, instance kind, inputs, warmup and parameters from it; the
cache key (build.repository.recipe) hashes the same files it copies; deploy.groups reads whether stock NGC Triton
loads it and on which image a cluster serves it. Adding a backend kind is one record here and, when no existing
builder fits, one builder function in build.repository.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from segformer.errors import ProjectError

ROOT = Path(__file__).resolve().parent.parent
SERVER_MODELS = ROOT / "server" / "models"  # the programs that run inside Triton's python backend

# backend kinds (the variant table's `backend` field, recorded in build.json)
PYTHON_ORT = "python_onnxruntime"
ONNXRUNTIME = "onnxruntime"
PYTHON_NULL = "python_null"
TENSORRT = "tensorrt"
PYTHON_GPU = "python_gpu"
PYTHON_OV = "python_openvino"
OPENVINO = "openvino"
ENSEMBLE = "ensemble"  # a row's JPEG/PNG ensemble: decode step -> the row (build.ensemble)
PYTHON_DECODE = "python_decode"  # the decode-and-place step on the CPU (Pillow)
PYTHON_DECODE_GPU = "python_decode_gpu"  # the decode-and-place step of a GPU row (nvImageCodec, Pillow fallback)

# deploy image flavours (deploy.groups turns them into NGC image tags)
STOCK = "stock"  # tritonserver:<release>-py3: onnxruntime, openvino, tensorrt and python backends
PYTORCH = "pytorch"  # tritonserver:<release>-pyt-python-py3: + PyTorch for python-backend programs

CPU, GPU = "cpu", "gpu"
CPU_RUNTIME = ("segformer_runtime.py", "segformer_batching.py")  # beside a CPU python-backend program


class UnknownBackend(ProjectError, ValueError):
    """A backend kind no record describes."""


@dataclass(frozen=True)
class Backend:
    kind: str
    description: str
    builder: str  # "module:function" that writes the row's version folder (resolved when a row is built)
    triton_backend: str = ""  # config.pbtxt `backend`
    triton_platform: str = ""  # config.pbtxt `platform` (stock backends that claim one)
    rtx_backend: str = ""  # config `backend` when the plan was built by TensorRT-RTX (claims no platform)
    instance: str = CPU  # instance group kind
    parameters: tuple[tuple[str, str], ...] = ()  # config parameters it adds; "{weights}" is the row's entry
    encoded_input: bool = False  # also takes one JPEG/PNG file per request as `encoded` (`images` optional)
    warmup: bool = False  # a zero batch at the row's opt batch when the model loads
    program: str = ""  # server/models/<program>, copied as 1/model.py
    runtime: tuple[str, ...] = ()  # server/models files copied beside 1/model.py
    package: str = ""  # a project package copied into 1/ (the GPU row runs the model library)
    needs_cuda: bool = False  # built by default only where a CUDA GPU is present
    ngc: str = ""  # "" when stock NGC Triton (<release>-py3) loads it, else why not
    ngc_rtx: str = ""  # why stock NGC Triton cannot load the TensorRT-RTX variant
    image: str = ""  # the deploy image flavour (STOCK / PYTORCH); "" when a cluster does not serve it
    not_deployed: str = ""  # why a cluster does not serve it (when `ngc` does not already say)
    jpeg: bool = False  # rows of this kind get a JPEG/PNG ensemble (<row>_decode -> <row>, served as <row>_jpeg)
    shared: tuple[str, ...] = ()  # project files (ROOT-relative, importing nothing of the project) copied beside
    configure: str = ""  # "module:function" (config, row) that finishes the config where the generic one does not fit
    pip: tuple[str, ...] = ()  # packages a python row imports that the stock NGC image lacks (build.envpack packs them)

    @property
    def python(self) -> bool:
        return self.triton_backend == "python"

    def triton(self, rtx: bool = False) -> tuple[str, str]:
        """("backend" | "platform", value) config.pbtxt names for this kind (the RTX variant where asked)."""
        if rtx and self.rtx_backend:
            return "backend", self.rtx_backend
        return ("platform", self.triton_platform) if self.triton_platform else ("backend", self.triton_backend)

    def config_parameters(self, weights: str, extra: dict) -> dict[str, str]:
        return {k: v.format(weights=weights) for k, v in self.parameters} | {k: str(x) for k, x in extra.items()}

    def code_files(self) -> list[Path]:
        """The files copied into the row's directory from the project: its program, runtime files and package."""
        files = [SERVER_MODELS / f for f in ((self.program,) if self.program else ()) + self.runtime]
        files += [ROOT / f for f in self.shared]
        if self.package:
            files += sorted((ROOT / self.package).glob("*.py"))
        return files

    def build(self):
        """The builder function: (row, stage folder, ONNX cache, log) -> provenance dict."""
        return _resolve(self.builder)

    def finish_config(self, cfg, row):
        """The config as this kind needs it (the `configure` hook, resolved when used), else as it is."""
        return _resolve(self.configure)(cfg, row) if self.configure else cfg

    def deployable(self) -> str | None:
        """None when a cluster (stock NGC images) serves rows of this kind, else why not."""
        return None if self.image else (self.ngc or self.not_deployed or f"backend {self.kind!r} has no cluster "
                                                                          "recipe")


def _resolve(target: str):
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


_BUILD = "build.repository:"
_ENSEMBLE = "build.ensemble:"
RECORDS: tuple[Backend, ...] = (
    Backend(PYTHON_ORT, "ONNX Runtime inside the python backend (runs on pip Triton, CPU)", _BUILD + "build_onnx_dir",
            triton_backend="python", parameters=(("onnx_file", "model.onnx"), ("intra_op_threads", "0")),
            program="onnxruntime_model.py", runtime=CPU_RUNTIME, jpeg=True, pip=("numpy", "onnxruntime"),
            image=STOCK),
    Backend(ONNXRUNTIME, "stock Triton onnxruntime backend (NGC)", _BUILD + "build_onnx_dir",
            triton_platform="onnxruntime_onnx", instance=GPU, image=STOCK, jpeg=True),
    Backend(PYTHON_NULL, "python backend returning zero labels at once: the load generator's ceiling",
            _BUILD + "build_null_dir", triton_backend="python", program="null_model.py", jpeg=True,
            not_deployed="the load generator's null model, not a segmentation model"),
    Backend(TENSORRT, "TensorRT plan for the tensorrt backend (NGC), built by TensorRT or TensorRT-RTX",
            _BUILD + "build_tensorrt_dir", triton_platform="tensorrt_plan", rtx_backend="tensorrt_rtx", instance=GPU,
            warmup=True, image=STOCK, jpeg=True,
            ngc_rtx="its plan was built by TensorRT-RTX, which stock Triton's tensorrt backend cannot load: run "
                    "`make repo` on a machine with TensorRT (the version of the NGC release) to build a "
                    "deployable plan"),
    Backend(PYTHON_GPU, "python backend running segformer.fast on a CUDA GPU (FP16, CUDA graphs)",
            _BUILD + "build_gpu_dir", triton_backend="python", instance=GPU,
            # the python backend's own key: inputs a client placed in CUDA shared memory reach the model on the GPU
            # (no copy to the host and back); others still arrive on the CPU
            parameters=(("weights_file", "{weights}.json"), ("FORCE_CPU_ONLY_INPUT_TENSORS", "no")),
            encoded_input=True, program="gpu_model.py",
            runtime=("segformer_runtime.py", "gpu_pipeline.py", "gpu_decode.py"), package="segformer",
            shared=("client/placement.py",),  # a dynamic row places JPEG/PNG files as clients place frames
            needs_cuda=True, ngc="needs PyTorch, which the stock NGC image lacks: NGC's PyTorch flavour "
                                 "(-pyt-python-py3) loads it", image=PYTORCH),
    Backend(PYTHON_OV, "python backend running an OpenVINO precision plan on the CPU (pip Triton)",
            _BUILD + "build_openvino_dir", triton_backend="python",
            parameters=(("plan_file", "plan.json"), ("threads", "0")), program="openvino_model.py", jpeg=True,
            runtime=CPU_RUNTIME, pip=("numpy", "openvino"), image=STOCK),
    Backend(OPENVINO, "stock Triton openvino backend (NGC), f32 IR (1/model.xml + model.bin)",
            _BUILD + "build_openvino_dir", triton_backend="openvino",
            parameters=(("PERFORMANCE_HINT", "LATENCY"), ("INFERENCE_PRECISION_HINT", "f32")), image=STOCK,
            jpeg=True),
    Backend(PYTHON_DECODE, "JPEG/PNG decode-and-place step of a row's ensemble (Pillow, the client's placement)",
            _ENSEMBLE + "build_decode_dir", triton_backend="python", parameters=(("decoder", "pillow"),),
            pip=("numpy", "pillow"),
            program="decode_model.py", runtime=("segformer_runtime.py",), shared=("client/placement.py",),
            configure=_ENSEMBLE + "decode_config", image=STOCK),
    Backend(PYTHON_DECODE_GPU, "JPEG/PNG decode-and-place step of a GPU row's ensemble (nvImageCodec on the GPU, "
            "Pillow for what it cannot decode; the client's placement)", _ENSEMBLE + "build_decode_dir",
            triton_backend="python", instance=GPU, parameters=(("decoder", "nvimgcodec"),),
            pip=("numpy", "pillow", "nvidia-nvimgcodec-cu12"),
            program="decode_model.py", runtime=("segformer_runtime.py",), shared=("client/placement.py",),
            configure=_ENSEMBLE + "decode_config", image=STOCK),
    Backend(ENSEMBLE, "a row's JPEG/PNG ensemble: encoded bytes -> decode step -> the row -> labels + placement",
            _ENSEMBLE + "build_ensemble_dir", triton_platform="ensemble", configure=_ENSEMBLE + "ensemble_config",
            image=STOCK),
)
BACKENDS: dict[str, Backend] = {b.kind: b for b in RECORDS}


def backend(kind: str) -> Backend:
    try:
        return BACKENDS[kind]
    except KeyError:
        raise UnknownBackend(f"no backend record for {kind!r}; the kinds are {', '.join(BACKENDS)} "
                             "(build/backends.py)") from None
