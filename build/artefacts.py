"""The ONNX graph every serving variant is built from, cached by content hash in .cache/.

fp32 is the verified export; fp16 is the FP16 pass over it; int8 (everything quantized) and best (accuracy-guarded
mix) come from build.quantize with the calibration images given to `make repo CALIB=DIR`; a `plugin` row gets
the LayerNorm pass with the plugin op. Keys cover the weights hash, input size, the build code and (for INT8) the
calibration set, so a change anywhere rebuilds exactly what depends on it.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from build.export import build_onnx
from build.variants import ServingVariant
from segformer.errors import ProjectError
from segformer.weights import atomic_write_bytes, get_weights

ROOT = Path(__file__).resolve().parent.parent
EXPORT_CODE = [ROOT / "build" / "export.py", ROOT / "segformer" / "model.py"]
# the code that prepares the guards' frames and brings their labels back to the image (the input policy) is in
# every guarded artefact's key, beside the policy itself (InputPolicy.describe): a plan measured on other frames
# (stretched, or over the padded tensor) is never reused silently
POLICY_CODE = [ROOT / "client" / "policy.py", ROOT / "client" / "placement.py", ROOT / "build" / "guard.py"]
PASS_CODE = [ROOT / "build" / f for f in ("passes.py", "quantize.py", "quantize_cpu.py")] + POLICY_CODE
# the plan's guard runs the served runtime: a change to either re-measures the plan
OPENVINO_CODE = [ROOT / "build" / "openvino_ir.py", ROOT / "build" / "openvino_int8.py",
                 ROOT / "build" / "quantize.py", ROOT / "server" / "models" / "segformer_runtime.py", *POLICY_CODE]
DEFAULT_HOLDOUT = ROOT / "samples" / "heldout"  # three CamVid test frames (never trained on): the guards without HOLDOUT=


class NeedsCalibration(ProjectError, RuntimeError):
    """An INT8 row without calibration images; the message names the fix."""


class MissingCodeFile(ProjectError, FileNotFoundError):
    """A file a cache key or recipe covers is gone (renamed or deleted): the key would silently stop covering it."""


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def code_hash(files: list[Path]) -> str:
    """A short hash over the code files a cached artefact depends on; every file must exist."""
    missing = [str(p) for p in files if not Path(p).is_file()]
    if missing:
        raise MissingCodeFile(f"code file {missing[0]} is missing (a cache key covers it): restore it, or update the "
                              "list that names it (build/artefacts.py, build/repository.py, build/backends.py)")
    return _sha(b"".join(Path(p).read_bytes() for p in files))[:16]


@dataclass(frozen=True)
class QuantSettings:
    calib: Path | None = None  # calibration image folder
    holdout: Path | None = None  # held-out folder for sensitivity (default: the calibration folder)
    calib_count: int = 4  # ONNX Runtime keeps every calibrated tensor in memory: 8 B1 1024² images need >24 GB
    holdout_count: int = 3  # the guards' frames: use >= 12 the weights never saw (bench.cpu does)
    method: str = "minmax"
    budget: float = 0.005
    analysis_size: tuple[int, int] | None = (512, 512)

    def key(self) -> str:
        if self.calib is None:
            return "none"
        from client.labels import list_images

        files = [(p.name, p.stat().st_size) for d in (self.calib, self.holdout or self.calib)
                 for p in list_images(d)]
        return _sha(json.dumps([files, self.calib_count, self.holdout_count, self.method, self.budget,
                                self.analysis_size]).encode())[:16]


class OnnxCache:
    def __init__(self, root: Path, quant: QuantSettings | None = None, timing_dir: Path | None = None):
        self.root, self.quant = Path(root), quant or QuantSettings()
        self.timing_dir = Path(timing_dir) if timing_dir else None  # TensorRT timing caches, one per builder version

    def _base_key(self, v: ServingVariant) -> str:
        w = get_weights(v.weights)
        key = [w.meta["sha256"], list(v.size), v.with_logits, code_hash(EXPORT_CODE)]
        if v.dynamic:  # the same graph, verified at the range's ends too
            key.append([list(s) for s in v.size_range])
        return _sha(json.dumps(key).encode())[:16]

    def base(self, v: ServingVariant, log) -> tuple[Path, dict]:
        key = self._base_key(v)
        path, report_path = self.root / f"{key}.onnx", self.root / f"{key}.json"
        if path.is_file() and report_path.is_file():
            return path, json.loads(report_path.read_text())
        data, report = build_onnx(v.weights, v.size, v.with_logits, log=log,
                                  also_sizes=[s for s in (v.size_range or ()) if tuple(s) != tuple(v.size)])
        atomic_write_bytes(path, data)
        atomic_write_bytes(report_path, json.dumps(report, indent=1).encode())
        return path, report

    def get(self, v: ServingVariant, log) -> tuple[Path, dict]:
        """The ONNX for row `v` and its report (export report plus what the passes did)."""
        base, report = self.base(v, log)
        if v.precision in ("int8", "best"):
            path, qreport = self._quantized(v, base, log)
            report = {**report, "quantize": qreport}
        elif v.precision == "fp16" or v.layernorm == "plugin":
            path, extra = self._passed(v, base)
            report = {**report, **extra}
        else:
            path = base
        return path, report

    def openvino(self, v: ServingVariant, log) -> tuple[Path, dict]:
        """The row's OpenVINO plan folder (IR parts + plan.json) and its report, cached by content hash."""
        from build import openvino_ir, quantize
        from client.policy import InputPolicy

        base, report = self.base(v, log)
        precision = v.precision if v.precision in ("bf16", "int8") else "f32"
        q = self.quant
        if precision == "int8" and q.calib is None:
            raise NeedsCalibration("int8 (OpenVINO/NNCF) needs calibration images: make repo CALIB=DIR (or --calib "
                                   "DIR), a folder of images like the ones you will serve")
        folder_in = q.holdout or q.calib or DEFAULT_HOLDOUT
        hold_key = (q.key() if (q.holdout or q.calib) else "default") if precision != "f32" else ""
        policy = InputPolicy.for_row(v)
        key = _sha(json.dumps([base.name, precision, hold_key, q.budget, policy.describe(), openvino_ir.cpu_flags(),
                               code_hash(OPENVINO_CODE)]).encode())[:16]
        folder = self.root / f"ov-{key}"
        if not (folder / "report.json").is_file():
            hold = quantize.load_batch(folder_in, policy, q.holdout_count, "held-out") if precision != "f32" else None
            calib = quantize.load_batch(q.calib, policy, q.calib_count) if precision == "int8" else None
            small = quantize.load_batch(folder_in, policy.at(q.analysis_size), q.holdout_count, "held-out") \
                if precision == "int8" and q.analysis_size and tuple(q.analysis_size) != tuple(v.size) else None
            stage = self.root / f".ov-{key}.stage"
            shutil.rmtree(stage, ignore_errors=True)
            try:
                plan = openvino_ir.build_cpu_plan(base, stage / "plan", precision, hold, q.budget, log=log,
                                                  calib=calib, analysis=small)
                if precision != "f32":
                    plan["heldout_folder"] = str(folder_in)
                    plan["input_policy"] = policy.describe()
                (stage / "plan" / "report.json").write_text(json.dumps(plan, indent=1))
                shutil.rmtree(folder, ignore_errors=True)
                (stage / "plan").replace(folder)
            finally:
                shutil.rmtree(stage, ignore_errors=True)
        return folder, {**report, "openvino": json.loads((folder / "report.json").read_text())}

    def _passed(self, v: ServingVariant, base: Path) -> tuple[Path, dict]:
        import onnx

        from build import passes

        key = _sha(json.dumps([base.name, v.precision, v.layernorm, code_hash(PASS_CODE)]).encode())[:16]
        path, meta = self.root / f"{key}.onnx", self.root / f"{key}.json"
        if path.is_file() and meta.is_file():
            return path, json.loads(meta.read_text())
        model = onnx.load(str(base))
        extra = {}
        if v.layernorm == "plugin":
            model, n = passes.fuse_layernorm(model, "plugin")
            extra["layernorm_pass"] = {"target": "plugin", "replaced": n}
        if v.precision == "fp16":
            model = passes.to_fp16(model)
            extra["fp16_pass"] = {"kept_fp32": list(passes.FP16_KEEP_FP32)}
        atomic_write_bytes(path, model.SerializeToString())
        atomic_write_bytes(meta, json.dumps(extra).encode())
        return path, extra

    def _quantized(self, v: ServingVariant, base: Path, log) -> tuple[Path, dict]:
        """Q/DQ int8 + best (build.quantize) or the ONNX Runtime CPU mix (build.quantize_cpu), cached per recipe."""
        from build import quantize, quantize_cpu
        from client.policy import InputPolicy

        q = self.quant
        if q.calib is None:
            raise NeedsCalibration(f"{v.precision} needs calibration images: make repo CALIB=DIR "
                                   f"(or --calib DIR), a folder of images like the ones you will serve")
        cpu = v.int8_recipe == "dynamic"
        key = _sha(json.dumps([base.name, q.key(), v.int8_recipe, InputPolicy.for_row(v).describe(),
                               code_hash(PASS_CODE)]).encode())[:16]
        folder = self.root / f"quant-{key}"
        report_name = "quantize_cpu.json" if cpu else "quantize.json"
        if not (folder / report_name).is_file():
            size = v.size
            hold = quantize.load_batch(q.holdout or q.calib, InputPolicy.for_row(v).at(q.analysis_size or size),
                                       q.holdout_count, "held-out")
            full = quantize.load_batch(q.holdout or q.calib, InputPolicy.for_row(v), q.holdout_count, "held-out") \
                if q.analysis_size and tuple(q.analysis_size) != tuple(size) else None
            stage = Path(tempfile.mkdtemp(prefix=f".quant-{key}.", dir=self.root))
            try:
                if cpu:
                    quantize_cpu.build_cpu_int8(base, stage, hold, q.budget, log=log, holdout_full=full,
                                                policy=InputPolicy.for_row(v))
                else:
                    calib = quantize.load_batch(q.calib, InputPolicy.for_row(v), q.calib_count)
                    quantize.build_quantized(base, stage, calib, hold, q.method, q.budget, log=log,
                                             holdout_full=full, policy=InputPolicy.for_row(v))
                shutil.rmtree(folder, ignore_errors=True)
                stage.replace(folder)
            finally:
                shutil.rmtree(stage, ignore_errors=True)
        qreport = json.loads((folder / report_name).read_text())
        name = "best_cpu.onnx" if cpu else "int8.onnx" if v.precision == "int8" else "best.onnx"
        return folder / name, qreport
