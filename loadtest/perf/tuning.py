"""Model Analyzer for the rows: its committed profile configs (loadtest/model_analyzer/*.yaml) validated by its own
config parser, run against the pip Triton, and the settings it chose applied to the rows' config.pbtxt.

    python -m loadtest.perf.tuning validate [--config loadtest/model_analyzer/cpu.yaml]
    python -m loadtest.perf.tuning profile --config loadtest/model_analyzer/cpu.yaml [--models segformer_b0] \\
        [--export results/model_analyzer_cpu] [--chosen docs/results/model_analyzer_cpu/chosen.json]
    python -m loadtest.perf.tuning apply --chosen docs/results/model_analyzer_cpu/chosen.json [--repo model_repository]

`profile` fills in what depends on the machine (free ports, perf_analyzer's path, each row's input data from its
input policy's frames), runs `model-analyzer profile`, and writes the chosen settings (per row: the variant with
the highest throughput among those meeting the constraints) as a small JSON. `apply` writes those settings
(max_batch_size, dynamic batching delay, instance groups) into the built rows' config.pbtxt through Triton's
ModelConfig protobuf (build.model_config), so `make repo` can apply them after it builds.
"""
from __future__ import annotations

import csv
import io
import json
import socket
import sys
from pathlib import Path

from segformer.errors import ProjectError

ROOT = Path(__file__).resolve().parent.parent.parent
CONFIGS = ROOT / "loadtest" / "model_analyzer"
PATH_KEYS = ("model_repository", "triton_server_path", "output_model_repository_path", "export_path",
             "checkpoint_directory")


class TuningError(ProjectError):
    """A Model Analyzer config it refuses, a run that failed, or chosen settings that do not fit a row."""


def load(path: Path) -> dict:
    import yaml

    try:
        return yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise TuningError(f"cannot read {path}: {exc.strerror}") from None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def concrete(cfg: dict, root: Path = ROOT, models: list[str] | None = None, export: Path | None = None,
             ports: tuple[int, int, int] | None = None, perf_analyzer: Path | None = None,
             input_data: dict[str, Path] | None = None) -> dict:
    """The committed config made runnable here: paths against `root` (export/output/checkpoints under `export`
    where given), endpoints on `ports`, perf_analyzer's path, each row's input data, only `models`."""
    out = json.loads(json.dumps(cfg))  # a deep copy
    if models:
        unknown = [m for m in models if m not in out.get("profile_models", {})]
        if unknown:
            raise TuningError(f"{', '.join(unknown)} not in the config's profile_models "
                              f"({', '.join(out.get('profile_models', {}))})")
        out["profile_models"] = {m: out["profile_models"][m] for m in models}
    for k in PATH_KEYS:
        if k in out and not Path(out[k]).is_absolute():
            out[k] = str(root / out[k])
    if export is not None:
        out.update(export_path=str(export), output_model_repository_path=str(export / "output_models"),
                   checkpoint_directory=str(export / "checkpoints"))
    if ports:
        out.update(triton_http_endpoint=f"127.0.0.1:{ports[0]}", triton_grpc_endpoint=f"127.0.0.1:{ports[1]}",
                   triton_metrics_url=f"http://127.0.0.1:{ports[2]}/metrics")
    if perf_analyzer:
        out["perf_analyzer_path"] = str(perf_analyzer)
    for name, data in (input_data or {}).items():
        if name in out["profile_models"]:  # a model's own flags replace the global ones: carry those over
            spec = out["profile_models"][name]
            spec["perf_analyzer_flags"] = {**(out.get("perf_analyzer_flags") or {}),
                                           **(spec.get("perf_analyzer_flags") or {}), "input-data": str(data)}
    return out


def check_rows(cfg: dict) -> None:
    """Every profiled model is a row of the serving table, and its instance kind is the row's (CPU rows on the
    CPU, marked cpu_only; the GPU row on the GPU)."""
    from build.variants import PYTHON_GPU, TENSORRT, VARIANTS

    for name, spec in (cfg.get("profile_models") or {}).items():
        row = VARIANTS.get(name)
        if row is None:
            raise TuningError(f"{name} is not a row of the serving table (build/variants.py)")
        gpu = row.backend in (PYTHON_GPU, TENSORRT)
        groups = (spec.get("model_config_parameters") or {}).get("instance_group", [])
        for group in groups if isinstance(groups, list) else []:  # other shapes: Model Analyzer's parser says
            for g in group if isinstance(group, list) else [group]:
                if isinstance(g, dict) and (g.get("kind") == "KIND_GPU") != gpu:
                    raise TuningError(f"{name} runs on the {'GPU' if gpu else 'CPU'}: its instance_group kind "
                                      f"is {'KIND_GPU' if gpu else 'KIND_CPU'}, not {g.get('kind')}")
        if not gpu and not spec.get("cpu_only"):
            raise TuningError(f"{name} is a CPU row: mark it cpu_only: true")


def validate(cfg: dict, work: Path):
    """Model Analyzer's own parser on `cfg` (its `profile` command line with -f, as `model-analyzer profile`
    reads it, without profiling); returns its ConfigCommandProfile. TuningError with its message when refused."""
    import yaml
    from model_analyzer.cli.cli import CLI
    from model_analyzer.config.input.config_command_profile import ConfigCommandProfile
    from model_analyzer.model_analyzer_exceptions import TritonModelAnalyzerException

    check_rows(cfg)
    if "perf_analyzer_path" not in cfg:  # the binary is the machine's business (profile finds it), not the config's
        cfg = {**cfg, "perf_analyzer_path": _perf_analyzer_or_stand_in()}
    cfg = {**cfg, "export_path": str(work / "export"), "checkpoint_directory": str(work / "checkpoints")}
    path = work / "profile.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    parser = CLI()
    parser.add_subcommand(cmd="profile", help="profile", config=ConfigCommandProfile())
    try:
        _, config = parser.parse(["profile", "-f", str(path)])
    except TritonModelAnalyzerException as exc:
        raise TuningError(f"Model Analyzer refuses the config: {exc}") from None
    except SystemExit:
        raise TuningError("Model Analyzer refuses the config (see its message above)") from None
    return config


def _perf_analyzer_or_stand_in() -> str:
    from loadtest.perf.binary import PerfAnalyzerMissing, locate

    try:
        return str(locate())
    except PerfAnalyzerMissing:
        return sys.executable  # an executable where Model Analyzer checks one exists


def read_results(csv_text: str) -> list[dict]:
    """Model Analyzer's metrics-model-inference.csv as records: model, variant, batch, concurrency, instances,
    max_batch, ok (meets the constraints), throughput, p99_ms."""
    def pick(row, *words):
        for k, v in row.items():
            if k and all(w.lower() in k.lower() for w in words):
                return v
        return None

    out = []
    for row in csv.DictReader(io.StringIO(csv_text.strip())):
        if not pick(row, "model config path"):
            continue
        out.append({"model": pick(row, "model") if "Model" in row else None,
                    "variant": pick(row, "model config path"), "batch": int(float(pick(row, "batch") or 1)),
                    "concurrency": int(float(pick(row, "concurrency") or 1)),
                    "instances": pick(row, "instance group"), "max_batch": pick(row, "max batch"),
                    "ok": (pick(row, "satisfies") or "Yes").strip().lower() == "yes",
                    "throughput": float(pick(row, "throughput") or 0), "p99_ms": float(pick(row, "p99") or 0)})
    return out


def variant_base(variant: str) -> str:
    """`segformer_b0_config_3` / `segformer_b0_config_default` -> `segformer_b0`."""
    head, sep, _ = variant.rpartition("_config_")
    return head if sep else variant


def choose(results: list[dict]) -> dict[str, dict]:
    """Per row, the measurement with the highest throughput among those meeting the constraints (else among
    all, marked so)."""
    best: dict[str, dict] = {}
    for r in results:
        model = r["model"] or variant_base(r["variant"])
        cur = best.get(model)
        if cur is None or (r["ok"], r["throughput"]) > (cur["ok"], cur["throughput"]):
            best[model] = {**r, "model": model}
    return best


def settings_of(config_text: str) -> dict:
    """The tunable settings of a config.pbtxt (what `apply` writes)."""
    from build.model_config import parse_pbtxt
    from tritonclient.grpc import model_config_pb2 as mc

    cfg = parse_pbtxt(config_text)
    return {"max_batch_size": cfg.max_batch_size,
            "max_queue_delay_microseconds": cfg.dynamic_batching.max_queue_delay_microseconds,
            "preferred_batch_size": list(cfg.dynamic_batching.preferred_batch_size),
            "instance_group": [{"kind": mc.ModelInstanceGroup.Kind.Name(g.kind), "count": g.count}
                               for g in cfg.instance_group]}


def apply_settings(config_text: str, settings: dict) -> str:
    """`config_text` (a row's config.pbtxt) with Model Analyzer's chosen settings written in; everything else
    (inputs, outputs, parameters, warm-up) kept. Preferred batch sizes above the new max_batch_size are dropped."""
    from build.model_config import parse_pbtxt, to_pbtxt
    from tritonclient.grpc import model_config_pb2 as mc

    cfg = parse_pbtxt(config_text)
    if "max_batch_size" in settings:
        cfg.max_batch_size = int(settings["max_batch_size"])
    db = cfg.dynamic_batching
    if "max_queue_delay_microseconds" in settings:
        db.max_queue_delay_microseconds = int(settings["max_queue_delay_microseconds"])
    keep = [b for b in settings.get("preferred_batch_size", db.preferred_batch_size) if b <= cfg.max_batch_size]
    del db.preferred_batch_size[:]
    db.preferred_batch_size.extend(keep)
    if settings.get("instance_group"):
        kinds = {mc.ModelInstanceGroup.Kind.Name(g.kind) for g in cfg.instance_group}
        for g in settings["instance_group"]:
            if kinds and g["kind"] not in kinds:
                raise TuningError(f"{cfg.name} runs as {', '.join(sorted(kinds))}; the chosen settings say "
                                  f"{g['kind']}: were they chosen for another row?")
        del cfg.instance_group[:]
        for g in settings["instance_group"]:
            cfg.instance_group.add(kind=mc.ModelInstanceGroup.Kind.Value(g["kind"]), count=int(g["count"]))
    return to_pbtxt(cfg)


def apply(chosen: dict, repo: Path, log=print) -> list[str]:
    """Write each chosen row's settings into repo/<row>/config.pbtxt (rows not built there are named and
    skipped); returns the rows written."""
    from segformer.weights import atomic_write_bytes

    done = []
    for name, pick in chosen.get("rows", {}).items():
        path = repo / name / "config.pbtxt"
        if not path.is_file():
            log(f"{name}: not built in {repo}, skipped")
            continue
        atomic_write_bytes(path, apply_settings(path.read_text(), pick["settings"]).encode())
        s = pick["settings"]
        log(f"{name}: max_batch_size {s['max_batch_size']}, queue delay {s['max_queue_delay_microseconds']} us, "
            + ", ".join(f"{g['count']} x {g['kind']}" for g in s["instance_group"]))
        done.append(name)
    return done


def _rel(p: Path) -> str:
    try:
        return str(Path(p).resolve().relative_to(ROOT))
    except ValueError:
        return str(p)
