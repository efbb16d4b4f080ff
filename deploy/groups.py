"""Which models of a built repository a cluster can serve, and on which kind of pod.

A pod group is one Deployment (or one KServe InferenceService): every model of the group is loaded by one
Triton process. Models are grouped by the instance kind `make repo` wrote into their config.pbtxt (KIND_GPU ->
a GPU pod with one `nvidia.com/gpu`, KIND_CPU -> a CPU pod); the image and whether a cluster serves a row at all
are its backend record's (build.backends: stock NGC Triton for onnxruntime / openvino / tensorrt, NGC's PyTorch
flavour for the python-backend GPU fast path). Rows a cluster does not serve are left out with the record's
reason: the pip-Triton python-backend rows (ONNX Runtime / OpenVINO inside the python backend need packages the
NGC image lacks), the load generator's null model, and TensorRT-RTX plans (a stock tensorrt backend cannot
deserialise them: build the plan with TensorRT on the GPU host).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from build.backends import BACKENDS, PYTORCH
from build.model_config import parse_pbtxt
from segformer.errors import ProjectError

# The one place the Triton release is pinned: NGC 24.10 is Triton 2.51, the server nvidia-pytriton ships (the one
# every test here runs against). Both images below and the KServe runtimeVersion derive from it.
NGC_RELEASE = "24.10"
IMAGE_REPOSITORY = "nvcr.io/nvidia/tritonserver"
STOCK_TAG = f"{NGC_RELEASE}-py3"  # onnxruntime, openvino, tensorrt and python backends
PYTORCH_TAG = f"{NGC_RELEASE}-pyt-python-py3"  # + PyTorch for python-backend models (the GPU fast path)
TAGS = {PYTORCH: PYTORCH_TAG}  # a backend record's image flavour -> tag (STOCK_TAG otherwise)

# where the pod sees things: the model-store volume holds model_repository/, and the LayerNorm plugin (built
# against the image's TensorRT) travels in the repository's plugins/ folder (explicit model control ignores it)
DATA_DIR = "/data"
REPOSITORY_DIR = f"{DATA_DIR}/model_repository"
PLUGIN_FILE = "plugins/libsegformer_plugins.so"

@dataclass
class Model:
    name: str
    backend: str  # the variant table's backend kind (build.json)
    config_backend: str  # what config.pbtxt asks Triton for
    kind: str  # "gpu" or "cpu" (config.pbtxt instance_group)
    instances: int
    max_batch: int
    precision: str
    plugin: bool  # needs the LayerNorm plugin preloaded
    versions: list[str]
    digest: str  # sha256 over config.pbtxt and build.json: what the pods load


@dataclass
class Group:
    kind: str  # "gpu" or "cpu"
    models: list[Model] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"segformer-{self.kind}"

    @property
    def image(self) -> str:
        flavours = {BACKENDS[m.backend].image for m in self.models}
        tag = next((TAGS[f] for f in sorted(flavours) if f in TAGS), STOCK_TAG)
        return f"{IMAGE_REPOSITORY}:{tag}"

    @property
    def runtime_version(self) -> str:
        return self.image.rsplit(":", 1)[1]

    @property
    def plugin(self) -> bool:
        return any(m.plugin for m in self.models)

    @property
    def concurrency(self) -> int:
        """Requests one pod executes at once (max batch x instances, summed): queueing starts past this."""
        return sum(m.max_batch * m.instances for m in self.models)

    @property
    def digest(self) -> str:
        return hashlib.sha256("".join(m.name + m.digest for m in self.models).encode()).hexdigest()


class RepositoryError(ProjectError, ValueError):
    """The repository cannot be deployed as it is (the message says what to run)."""


def read_model(d: Path) -> Model:
    """One model directory as `make repo` wrote it (config.pbtxt + build.json + version folders)."""
    cfg_path, prov_path = d / "config.pbtxt", d / "build.json"
    if not cfg_path.is_file() or not prov_path.is_file():
        raise RepositoryError(f"{d} has no config.pbtxt/build.json: rebuild it with `make repo`")
    cfg = parse_pbtxt(cfg_path.read_text())
    row = json.loads(prov_path.read_text())["variant"]
    kinds = {g.kind for g in cfg.instance_group}
    kind = "cpu" if kinds == {2} else "gpu"  # ModelInstanceGroup.KIND_CPU == 2; GPU, AUTO (0) and MODEL want a GPU
    versions = sorted(p.name for p in d.iterdir() if p.is_dir() and p.name.isdigit())
    digest = hashlib.sha256(cfg_path.read_bytes() + prov_path.read_bytes()).hexdigest()
    return Model(name=cfg.name or d.name, backend=row["backend"], config_backend=cfg.backend or cfg.platform,
                 kind=kind, instances=sum(g.count or 1 for g in cfg.instance_group) or 1,
                 max_batch=cfg.max_batch_size or 1, precision=row.get("precision", "fp32"),
                 plugin=row.get("layernorm") == "plugin", versions=versions, digest=digest)


def why_not(m: Model) -> str | None:
    """None when stock NGC Triton can serve the model, else the reason."""
    record = BACKENDS.get(m.backend)
    if record is None:
        return f"backend {m.backend!r} has no backend record (build/backends.py)"
    if record.deployable():
        return record.deployable()
    if record.rtx_backend and m.config_backend == record.rtx_backend:
        return f"{record.ngc_rtx} (NGC {NGC_RELEASE}; config backend {m.config_backend!r})"
    if not m.versions:
        return "no version folder (1/): rebuild it with `make repo`"
    return None


def plan(repo: Path, only: list[str] | None = None) -> tuple[list[Group], dict[str, str]]:
    """(pod groups, {left-out model: reason}) for the models in `repo` (or the `only` names)."""
    if not repo.is_dir():
        raise RepositoryError(f"no model repository at {repo}: run `make repo` first")
    dirs = sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith("."))
    if only:
        missing = sorted(set(only) - {d.name for d in dirs})
        if missing:
            raise RepositoryError(f"not in {repo}: {', '.join(missing)}; build them with "
                                  f"`make repo VARIANTS={','.join(missing)}`")
        dirs = [d for d in dirs if d.name in only]
    groups: dict[str, Group] = {}
    skipped = {}
    for d in dirs:
        m = read_model(d)
        reason = why_not(m)
        if reason:
            skipped[m.name] = reason
            continue
        groups.setdefault(m.kind, Group(m.kind)).models.append(m)
    if not groups:
        raise RepositoryError(f"nothing in {repo} that stock NGC Triton can serve ({', '.join(skipped)} run only "
                              "on pip Triton or need a TensorRT build); build cluster rows, e.g. `make repo "
                              "VARIANTS=segformer_b1_onnx,segformer_b1_openvino,segformer_b1_gpu`")
    return [groups[k] for k in sorted(groups)], skipped
