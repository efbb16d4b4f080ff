"""config.pbtxt written by filling Triton's own ModelConfig protobuf, so configs are valid by construction."""
from __future__ import annotations

import json

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from build.backends import GPU, backend
from build.variants import ServingVariant


def model_config(v: ServingVariant, classes: list[str], palette: list[list[int]], tensorrt_rtx: bool = False,
                 trained_classes: list[str] | None = None, entry: str | None = None
                 ) -> mc.ModelConfig:
    """The row's config: Triton backend/platform, instance kind, inputs, warmup and parameters from its backend
    record (build.backends); names, sizes, batching, classes and palette from the row and its weights entry
    (`entry`: the entry's name, for file names; default the row's `weights`, which is the name for table rows)."""
    b = backend(v.backend)
    cfg = mc.ModelConfig(name=v.name, max_batch_size=v.max_batch)
    # A TensorRT-RTX plan cannot be loaded by stock Triton's tensorrt backend: its record claims no platform.
    key, value = b.triton(rtx=tensorrt_rtx)
    setattr(cfg, key, value)
    h, w = (-1, -1) if v.dynamic else v.size  # a dynamic row takes any H, W in its range (Triton dims -1)
    cfg.input.add(name="images", data_type=mc.TYPE_UINT8, dims=[h, w, 3], optional=b.encoded_input)
    if b.encoded_input:  # one JPEG/PNG file per request, as uint8 bytes of any length
        cfg.input.add(name="encoded", data_type=mc.TYPE_UINT8, dims=[-1], optional=True, allow_ragged_batch=True)
    cfg.output.add(name="labels", data_type=mc.TYPE_UINT8, dims=[h, w])
    if v.with_logits:
        cfg.output.add(name="logits", data_type=mc.TYPE_FP32, dims=[len(classes), h, w])
    db = cfg.dynamic_batching
    db.max_queue_delay_microseconds = v.queue_delay_us
    db.preferred_batch_size.extend([n for n in v.preferred_batches if n <= v.max_batch])
    kind = mc.ModelInstanceGroup.KIND_GPU if b.instance == GPU else mc.ModelInstanceGroup.KIND_CPU
    cfg.instance_group.add(kind=kind, count=v.instances)
    if b.warmup:
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
    params.update(b.config_parameters(entry or v.weights, v.extra))
    for k, val in params.items():
        cfg.parameters[k].string_value = val
    return cfg


def to_pbtxt(cfg: mc.ModelConfig) -> str:
    return text_format.MessageToString(cfg)


def parse_pbtxt(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())
