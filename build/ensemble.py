"""JPEG/PNG in on every accelerated row: the decode step and the ensemble that `make repo` writes beside a row.

For a row `R` (ONNX Runtime, OpenVINO, TensorRT, the null model; build.variants.jpeg_rows names them) two more
model directories are written:

- `R_decode`: a python-backend step (server/models/decode_model.py) that decodes one JPEG/PNG file per request
  and places it in R's input with the client's own placement code (client/placement.py, copied beside it): fit /
  letterbox into a fixed input, or the image's own size within a dynamic row's range. Pillow on CPU rows;
  nvImageCodec on the GPU for GPU rows (Pillow for what it cannot decode).
- `R_jpeg`: a Triton ensemble `encoded` -> R_decode -> R, answering `labels` at the placed size and `placement`
  (int32 [content h, content w, image h, image w]), so the client brings the labels back to the image exactly as
  for a raw frame (client.policy.InputPolicy.restore).

The ensemble is built only where its row is (a row skipped for want of TensorRT or calibration images leaves no
ensemble that could not load).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from build.backends import ROOT, SERVER_MODELS, backend
from build.engines import BuilderUnavailable
from build.variants import ServingVariant

PLACEMENT = "placement"  # the output naming where the image lies in the labels


class RowNotBuilt(BuilderUnavailable):
    """The row an ensemble runs was not built here (reported as skipped, like the row itself)."""


def _repository_of(stage: Path) -> Path:
    """The model repository a staging folder builds into (build.repository stages in `.<repo>.staging/` beside
    it)."""
    staging = stage.parent
    return staging.parent / staging.name.removeprefix(".").removesuffix(".staging")


def _dims(v: ServingVariant) -> list[int]:
    return [-1, -1] if v.dynamic else list(v.size)


def build_decode_dir(v: ServingVariant, stage: Path, cache, log) -> dict:
    """1/model.py (decode_model.py) with the runtime and the client's placement code beside it; refused unless
    the row it decodes for is built (a decode step alone serves nobody and costs a python stub process)."""
    target = v.extra["target"]
    if not (_repository_of(stage) / target / "config.pbtxt").is_file():
        raise RowNotBuilt(f"decodes for {target}, not built in {_repository_of(stage).name}/")
    b = backend(v.backend)
    version = stage / "1"
    version.mkdir(parents=True, exist_ok=True)
    shutil.copy2(SERVER_MODELS / b.program, version / "model.py")
    for f in [SERVER_MODELS / f for f in b.runtime] + [ROOT / f for f in b.shared]:
        shutil.copy2(f, version / f.name)
    return {"artefact": "1/model.py", "decodes_for": v.extra["target"], "decoder": dict(b.parameters)["decoder"]}


def build_ensemble_dir(v: ServingVariant, stage: Path, cache, log) -> dict:
    """An empty version folder (an ensemble has no artefact); refused unless its row and decode step are built."""
    repo = _repository_of(stage)
    missing = [n for n in (v.extra["target"], v.extra["decode"]) if not (repo / n / "config.pbtxt").is_file()]
    if missing:
        raise RowNotBuilt(f"needs {' and '.join(missing)}, not built in {repo.name}/ (build them first)")
    (stage / "1").mkdir(parents=True, exist_ok=True)
    return {"artefact": "(ensemble)", "steps": [v.extra["decode"], v.extra["target"]]}


def _encoded_input(cfg: mc.ModelConfig) -> None:
    cfg.ClearField("input")
    cfg.input.add(name="encoded", data_type=mc.TYPE_UINT8, dims=[-1])


def decode_config(cfg: mc.ModelConfig, v: ServingVariant) -> mc.ModelConfig:
    """encoded uint8 [n, L] -> images uint8 [n, H, W, 3] placed as the row takes them + placement int32 [n, 4]; no
    batcher (each request is decoded as it comes; the row's own batcher gathers the placed frames)."""
    _encoded_input(cfg)
    cfg.ClearField("output")
    cfg.output.add(name="images", data_type=mc.TYPE_UINT8, dims=[*_dims(v), 3])
    cfg.output.add(name=PLACEMENT, data_type=mc.TYPE_INT32, dims=[4])
    cfg.ClearField("dynamic_batching")
    cfg.ClearField("model_warmup")
    cfg.parameters["input_size"].string_value = json.dumps(list(v.size))
    cfg.parameters["resize"].string_value = "fit"
    return cfg


def ensemble_config(cfg: mc.ModelConfig, v: ServingVariant) -> mc.ModelConfig:
    """encoded -> <row>_decode -> <row>: labels at the placed size and the placement. Its parameters are the
    row's (classes, palette, licence, size), so a client describes it as it does the row."""
    _encoded_input(cfg)
    cfg.ClearField("output")
    cfg.output.add(name="labels", data_type=mc.TYPE_UINT8, dims=_dims(v))
    cfg.output.add(name=PLACEMENT, data_type=mc.TYPE_INT32, dims=[4])
    for field in ("dynamic_batching", "instance_group", "model_warmup"):
        cfg.ClearField(field)
    decode = cfg.ensemble_scheduling.step.add(model_name=v.extra["decode"], model_version=-1)
    decode.input_map["encoded"] = "encoded"
    decode.output_map["images"] = "placed"
    decode.output_map[PLACEMENT] = PLACEMENT
    row = cfg.ensemble_scheduling.step.add(model_name=v.extra["target"], model_version=-1)
    row.input_map["images"] = "placed"
    row.output_map["labels"] = "labels"
    cfg.parameters["opt_size"].string_value = json.dumps(list(v.size))
    cfg.parameters["payload"].string_value = "encoded"
    return cfg


def unloadable_ensembles(repo: Path, skipped: set[str]) -> dict[str, str]:
    """{ensemble: why} for the ensembles of `repo` that cannot load because a step is absent or in `skipped` (the
    models a launcher leaves out): for server/serve.py, which must treat platform "ensemble" as always available
    (Triton's own scheduler, no backend folder) and leave out only these."""
    from build.model_config import parse_pbtxt

    present = {p.parent.name for p in Path(repo).glob("*/config.pbtxt")}
    out = {}
    for cfg_path in sorted(Path(repo).glob("*/config.pbtxt")):
        cfg = parse_pbtxt(cfg_path.read_text())
        if cfg.platform != "ensemble":
            continue
        missing = [s.model_name for s in cfg.ensemble_scheduling.step
                   if s.model_name not in present or s.model_name in skipped]
        if missing:
            out[cfg_path.parent.name] = f"its step(s) {', '.join(missing)} do not load here"
    return out
