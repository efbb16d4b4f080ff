"""config.pbtxt written by filling Triton's own ModelConfig protobuf, so configs are valid by construction."""
from __future__ import annotations

import json

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from build.variants import OPENVINO, ONNXRUNTIME, PYTHON_GPU, PYTHON_NULL, PYTHON_ORT, PYTHON_OV, TENSORRT, ServingVariant


def model_config(v: ServingVariant, classes: list[str], palette: list[list[int]], tensorrt_rtx: bool = False,
                 trained_classes: list[str] | None = None
                 ) -> mc.ModelConfig:
    cfg = mc.ModelConfig(name=v.name, max_batch_size=v.max_batch)
    if v.backend in (PYTHON_ORT, PYTHON_NULL, PYTHON_GPU, PYTHON_OV):
        cfg.backend = "python"
    elif v.backend == OPENVINO:
        cfg.backend = "openvino"  # NGC's openvino backend reads 1/model.xml + 1/model.bin
    elif v.backend == ONNXRUNTIME:
        cfg.platform = "onnxruntime_onnx"
    elif v.backend == TENSORRT and not tensorrt_rtx:
        cfg.platform = "tensorrt_plan"
    elif v.backend == TENSORRT:
        # A TensorRT-RTX plan cannot be loaded by stock Triton's tensorrt backend: no platform is claimed.
        cfg.backend = "tensorrt_rtx"
    else:
        raise ValueError(f"no config writer for backend {v.backend!r}")
    h, w = (-1, -1) if v.dynamic else v.size  # a dynamic row takes any H, W in its range (Triton dims -1)
    cfg.input.add(name="images", data_type=mc.TYPE_UINT8, dims=[h, w, 3], optional=v.backend == PYTHON_GPU)
    if v.backend == PYTHON_GPU:  # one JPEG/PNG file per request, as uint8 bytes of any length
        cfg.input.add(name="encoded", data_type=mc.TYPE_UINT8, dims=[-1], optional=True, allow_ragged_batch=True)
    cfg.output.add(name="labels", data_type=mc.TYPE_UINT8, dims=[h, w])
    if v.with_logits:
        cfg.output.add(name="logits", data_type=mc.TYPE_FP32, dims=[len(classes), h, w])
    db = cfg.dynamic_batching
    db.max_queue_delay_microseconds = v.queue_delay_us
    db.preferred_batch_size.extend([b for b in v.preferred_batches if b <= v.max_batch])
    cpu = (PYTHON_ORT, PYTHON_NULL, PYTHON_OV, OPENVINO)
    kind = mc.ModelInstanceGroup.KIND_CPU if v.backend in cpu else mc.ModelInstanceGroup.KIND_GPU
    cfg.instance_group.add(kind=kind, count=v.instances)
    if v.backend == TENSORRT:
        warm = cfg.model_warmup.add(name="zeros", batch_size=max(1, v.opt_batch))
        warm.inputs["images"].data_type = mc.TYPE_UINT8
        warm.inputs["images"].dims.extend([*v.size, 3])
        warm.inputs["images"].zero_data = True
    params = {"classes": json.dumps(classes), "palette": json.dumps(palette), "weights": v.weights,
              "precision": v.precision}
    if trained_classes and len(trained_classes) < len(classes):  # clients mark the others "never trained"
        params["trained_classes"] = json.dumps(trained_classes)
    if v.dynamic:  # the range the client may send: it resizes within these bounds
        params["size_range"] = json.dumps([list(s) for s in v.size_range])
        params["opt_size"] = json.dumps(list(v.size))
    if v.backend == PYTHON_ORT:
        params.update({"onnx_file": "model.onnx", "intra_op_threads": "0"})
    if v.backend == PYTHON_OV:
        params.update({"plan_file": "plan.json", "threads": "0"})
    if v.backend == OPENVINO:  # the openvino backend's own keys
        params.update({"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"})
    if v.backend == PYTHON_GPU:
        params.update({"weights_file": f"{v.weights}.json", **{k: str(x) for k, x in v.extra.items()}})
        # the python backend's own key: inputs a client placed in CUDA shared memory reach the model on the GPU
        # (no copy to the host and back); others still arrive on the CPU
        params["FORCE_CPU_ONLY_INPUT_TENSORS"] = "no"
    for k, val in params.items():
        cfg.parameters[k].string_value = val
    return cfg


def to_pbtxt(cfg: mc.ModelConfig) -> str:
    return text_format.MessageToString(cfg)


def parse_pbtxt(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())
