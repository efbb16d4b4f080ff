"""Write the Triton model repository from the serving-variant table.

    python -m build.repository --checkpoint city.pth --name city_b1 [--preset cityscapes] [--size 1024x2048]
    python -m build.repository [--variants segformer_b1 ...] [--precisions fp16 ...] [--out model_repository]

With --checkpoint, your trained SegFormer is imported (build.import_weights) and every template of the table is
built for it: city_b1 (ONNX Runtime, pip Triton), city_b1_onnx (NGC onnxruntime), city_b1_{fp16,int8,best,best_cpu},
city_b1_trt_{fp32,fp16,int8,best,plugin}, and city_b1_gpu where a CUDA GPU is present.

Each row becomes one model directory (config.pbtxt, 1/<artefact>, build.json provenance). Every build is made
in a staging folder beside the repository and renamed into place, so a failed build leaves the served versions
intact. A row rebuilt because its inputs changed becomes a new version folder (2/, 3/ ...) beside the previous
one; the latest --keep-versions (default 2) are kept and served (build.versions); `make reload` swaps it in.
A directory whose recipe (row, weights hash, build code) is unchanged is kept as it is; exported ONNX files
are cached by content hash in .cache/onnx and shared by the rows that need the same graph.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from build.artefacts import EXPORT_CODE, PASS_CODE, NeedsCalibration, OnnxCache, QuantSettings, _sha, code_hash
from build import versions
from build.backends import SERVER_MODELS, Backend, backend
from build.model_config import model_config, to_pbtxt
from build.variants import PYTHON_OV, SHIPPED, ServingVariant, rows_for, select
from build.versions import KEEP_VERSIONS
from client.cli import log as cli_log
from client.cli import progress, run
from segformer.checkpoints import CheckpointError
from segformer.errors import ProjectError
from segformer.weights import WeightsError, find_entry, get_weights, sha256_file

ROOT = Path(__file__).resolve().parent.parent
# the build code every row's recipe covers; each row adds the files its backend record copies into its directory
CODE = EXPORT_CODE + PASS_CODE + [ROOT / "build" / f for f in ("model_config.py", "engines.py", "artefacts.py",
                                                                "openvino_ir.py", "backends.py")]


def recipe(v: ServingVariant, quant: QuantSettings) -> str:
    w = get_weights(v.weights)
    q = _calibration(v, quant)
    code = code_hash(CODE + backend(v.backend).code_files())
    parts = [v.spec(), w.meta["sha256"], q, code] + ([w.licence] if w.meta.get("licence") else [])
    return _sha(json.dumps(parts, sort_keys=True).encode())[:16]


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _program(b: Backend, version: Path) -> None:
    """The record's python-backend program as 1/model.py, with the runtime files it imports beside it."""
    version.mkdir(parents=True, exist_ok=True)
    if b.program:
        shutil.copy2(SERVER_MODELS / b.program, version / "model.py")
    for f in b.runtime:
        shutil.copy2(SERVER_MODELS / f, version / f)


def build_onnx_dir(v: ServingVariant, stage: Path, cache: OnnxCache, log) -> dict:
    onnx_path, report = cache.get(v, log)
    _link_or_copy(onnx_path, stage / "1" / "model.onnx")
    _program(backend(v.backend), stage / "1")
    return {"artefact": "1/model.onnx", "onnx_sha256": sha256_file(onnx_path), "export": report,
            **_layer_precision(v, report)}


def _layer_precision(v: ServingVariant, report: dict) -> dict:
    """The per-layer-group precision of an INT8 row, recorded at the top of build.json."""
    q = report.get("quantize")
    if not q:
        return {}
    chosen = q["best"]["precision"] if v.precision == "best" else {g: "int8" for g in q["best"]["precision"]}
    measured = q["best"]["disagreement"] if v.precision == "best" else q["int8_all"]["disagreement"]
    return {"layer_precision": chosen, "heldout_disagreement": measured}


def build_tensorrt_dir(v: ServingVariant, stage: Path, cache: OnnxCache, log) -> dict:
    from build import engines

    builder = engines.find_builder()  # raises engines.BuilderUnavailable with the fix
    onnx_path, report = cache.get(v, log)
    timing = cache.timing_dir / f"{builder.name}-{builder.version}.timing" if cache.timing_dir else None
    result = engines.build_plan(builder, onnx_path, v, stage / "1" / "model.plan", log=log, timing_cache=timing)
    return {"artefact": "1/model.plan", "onnx_sha256": sha256_file(onnx_path), "export": report, **result,
            **_layer_precision(v, report)}


def build_openvino_dir(v: ServingVariant, stage: Path, cache: OnnxCache, log) -> dict:
    """The OpenVINO plan (IR parts + plan.json), hard-linked; the python-backend row also gets its model.py, the
    NGC openvino row the single f32 IR as model.xml/model.bin."""
    folder, report = cache.openvino(v, log)
    version = stage / "1"
    b = backend(v.backend)
    for f in folder.iterdir():
        if f.suffix in (".xml", ".bin") or (f.name == "plan.json" and b.python):
            _link_or_copy(f, version / f.name)
    _program(b, version)
    return {"artefact": "1/plan.json" if b.python else "1/model.xml", "export": report,
            "openvino_plan": report["openvino"]}


def build_null_dir(v: ServingVariant, stage: Path, cache, log) -> dict:
    _program(backend(v.backend), stage / "1")
    return {"artefact": "1/model.py"}


def build_gpu_dir(v: ServingVariant, stage: Path, cache, log) -> dict:
    """Self-contained: model.py, a copy of the segformer package and the weights (hard-linked where possible)."""
    version = stage / "1"
    b = backend(v.backend)
    shutil.copytree(ROOT / b.package, version / b.package, ignore=shutil.ignore_patterns("__pycache__"))
    _program(b, version)
    for f in b.shared:  # the client's placement code, imported beside model.py
        shutil.copy2(ROOT / f, version / Path(f).name)
    w = get_weights(v.weights)
    _link_or_copy(w.tensors, version / w.tensors.name)
    shutil.copy2(w.tensors.with_suffix(".json"), version / f"{w.name}.json")
    return {"artefact": "1/model.py", "runs": "segformer.fast on CUDA (FP16, CUDA graphs)"}


def write_variant(v: ServingVariant, repo: Path, cache: OnnxCache, log=cli_log, force: bool = False,
                  keep: int = KEEP_VERSIONS) -> str:
    """Build one row atomically; returns 'built', 'unchanged' or raises. The new build is a new version folder
    beside the served ones when its config.pbtxt matches theirs (build.versions), else the directory is replaced;
    either way a failed build changes nothing in the repository."""
    target = repo / v.name
    rec = recipe(v, cache.quant)
    old = versions.read_provenance(target)
    staging = repo.parent / f".{repo.name}.staging"
    if not force and old.get("recipe") == rec and (target / "config.pbtxt").is_file():
        dropped = versions.apply_policy(target, keep, staging)
        if dropped:
            log(f"  {v.name}: keeps the latest {keep} version(s); deleted version(s) {', '.join(map(str, dropped))}")
        return "unchanged"
    staging.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f"{v.name}.", dir=staging))
    stage.chmod(0o755)
    try:
        t0 = time.perf_counter()
        info = backend(v.backend).build()(v, stage, cache, log)
        (stage / "1").mkdir(exist_ok=True)  # every model has a version folder (an ensemble's is empty)
        w = get_weights(v.weights)
        cfg = model_config(v, w.classes, [list(c) for c in w.palette], tensorrt_rtx=info.get("rtx", False),
                           trained_classes=w.trained_classes, entry=w.name, licence=w.licence)
        text = to_pbtxt(versions.set_policy(cfg, keep))
        present = versions.numbers(target)
        number = (present[-1] + 1) if present else 1
        provenance = {"model": v.name, "version": number, "recipe": rec, "variant": v.spec(), "weights": w.name,
                      "weights_sha256": w.meta["sha256"], "calibration": _calibration(v, cache.quant),
                      "code": code_hash(CODE + backend(v.backend).code_files()),
                      "build_seconds": round(time.perf_counter() - t0, 2),
                      "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(),
                      **versions.renumber(info, number)}
        provenance["reason"] = versions.reason(old, provenance, force)
        repo.mkdir(parents=True, exist_ok=True)
        config_path = target / "config.pbtxt"
        change = versions.interface_change(config_path.read_text() if config_path.is_file() else None, text)
        if present and change is None:
            dropped = versions.add_version(target, stage, number, text, provenance, keep, staging)
            log(f"  {v.name}: version {number} ({provenance['reason']}) beside "
                f"{', '.join(map(str, [n for n in present if n not in dropped])) or 'none'}"
                + (f"; deleted version(s) {', '.join(map(str, dropped))}" if dropped else ""))
            return "built"
        if present:
            log(f"  {v.name}: {change} changed: the old versions cannot share its config.pbtxt; the directory is "
                f"replaced by version {number} alone (`make reload` swaps it in)")
        if number != 1:
            os.replace(stage / "1", stage / str(number))
        (stage / "config.pbtxt").write_text(text)
        provenance["versions"] = {str(number): versions.version_entry(provenance)}
        (stage / "build.json").write_text(json.dumps(provenance, indent=1) + "\n")
        retired = None
        if target.exists():
            retired = staging / f"{v.name}.old.{os.getpid()}"
            os.replace(target, retired)
        os.replace(stage, target)
        if retired:
            shutil.rmtree(retired, ignore_errors=True)
        return "built"
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _calibration(v: ServingVariant, quant: QuantSettings) -> str:
    return quant.key() if v.precision in ("int8", "best") else ""


def write_repository(variants: list[ServingVariant], repo: Path, force: bool = False, log=cli_log,
                     cache_dir: Path = ROOT / ".cache" / "onnx", quant: QuantSettings | None = None,
                     timing_dir: Path | None = ROOT / ".cache" / "tensorrt", entries: tuple[str, ...] = (),
                     keep: int = KEEP_VERSIONS) -> dict:
    """Build every row; TensorRT rows share a persistent timing cache per builder version in `timing_dir`. Then
    the directories of the rows' weights entries (and of `entries`, e.g. one just re-imported) that this run did
    not build and that no longer match their entry are removed (see `retire_stale`). A rebuilt row becomes a new
    version folder; each model keeps its latest `keep` versions (build.versions)."""
    with repository_lock(repo):
        _restore_interrupted(repo, log)
        results = _write_all(variants, repo, force, log, OnnxCache(cache_dir, quant, timing_dir), keep)
        results.update(retire_stale(repo, {v.weights for v in variants} | set(entries), results, log))
        shutil.rmtree(repo.parent / f".{repo.name}.staging", ignore_errors=True)
        return results


def _stale_reason(prov: dict, w, table: dict) -> str | None:
    """Why a directory built from entry `w` (its build.json `prov`) no longer serves that entry, or None."""
    if prov.get("weights_sha256") != w.meta["sha256"]:
        return f"built from other weights of {w.name} ({str(prov.get('weights_sha256'))[:12]}, now " \
               f"{w.meta['sha256'][:12]})"
    row, built = table.get(prov.get("model")), prov.get("variant", {})
    if row is None:
        return None
    now = row.spec()
    for key in ("size", "size_range", "with_logits"):  # what the entry, not the template, decides
        if built.get(key) != now.get(key):
            return f"built with {key} {built.get(key)}, {w.name} now has {now.get(key)}"
    return None


def retire_stale(repo: Path, entries: set[str], results: dict, log=cli_log) -> dict:
    """Remove the directories of `entries` this run did not (re)build whose weights or input size are no longer
    their entry's (a re-import with FORCE=1 changed them): a server would otherwise serve the old import beside
    the new rows. Returns {name: 'removed: why'}."""
    current = {}
    for entry in entries:
        w = get_weights(entry)
        current[w.name] = (w, {r.name: r for r in rows_for(entry)})
    removed = {}
    for d in sorted(repo.iterdir()) if repo.is_dir() else []:
        prov_path = d / "build.json"
        if d.name.startswith(".") or results.get(d.name) in ("built", "unchanged") or not prov_path.is_file():
            continue
        prov = json.loads(prov_path.read_text())
        if prov.get("weights") not in current:
            continue
        why = _stale_reason(prov, *current[prov["weights"]])
        if why:
            staging = repo.parent / f".{repo.name}.staging"
            staging.mkdir(parents=True, exist_ok=True)
            os.replace(d, staging / f"{d.name}.stale.{os.getpid()}")  # gone from the repository in one step
            shutil.rmtree(staging / f"{d.name}.stale.{os.getpid()}", ignore_errors=True)
            removed[d.name] = f"removed: {why}; rebuild it with `make repo VARIANTS={d.name}`"
            log(f"  {d.name:24s} {removed[d.name]}")
    return removed


class RepositoryBusy(ProjectError, RuntimeError):
    """Another process is writing the same model repository."""


@contextlib.contextmanager
def repository_lock(repo: Path):
    """One writer per repository: a second `make repo` stops at once with a message instead of interleaving."""
    import fcntl

    repo.parent.mkdir(parents=True, exist_ok=True)
    path = repo.parent / f".{repo.name}.lock"
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise RepositoryBusy(f"another `make repo` (pid {holder}) is writing {repo}; wait for it to finish "
                                 "or stop it, then run this again") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f, fcntl.LOCK_UN)


def _restore_interrupted(repo: Path, log=cli_log) -> None:
    """A build killed between moving the old model directory aside and moving the new one in leaves the old one
    in the staging folder: put it back before anything else (it is the one Triton should keep serving)."""
    staging = repo.parent / f".{repo.name}.staging"
    for old in sorted(staging.glob("*.old.*")) if staging.is_dir() else []:
        name = old.name.split(".old.")[0]
        if not (repo / name).exists():
            os.replace(old, repo / name)
            log(f"  {name}: restored the model directory an interrupted build had moved aside")


def _write_all(variants, repo, force, log, cache, keep=KEEP_VERSIONS) -> dict:
    results = {}
    for v in progress(variants, desc="model repository", unit="model"):
        try:
            results[v.name] = write_variant(v, repo, cache, log=log, force=force, keep=keep)
        except Exception as exc:  # noqa: BLE001 - reported per row, the others still build
            from build.engines import BuilderUnavailable

            skip = isinstance(exc, (BuilderUnavailable, NeedsCalibration))
            results[v.name] = f"skipped: {exc}" if skip else f"FAILED: {type(exc).__name__}: {exc}"
        log(f"  {v.name:24s} {results[v.name]}")
        if v.backend == PYTHON_OV and not results[v.name].startswith(("skipped", "FAILED")):
            log(f"  {'':24s} {_guard_line(repo / v.name)}")  # which plan runs here, and why
    return results


def _guard_line(model_dir: Path) -> str:
    """The OpenVINO row's guard on this CPU, one sentence (passed with its numbers, or failed by how much and what
    it runs instead)."""
    from build import openvino_ir

    try:
        plan = json.loads((model_dir / "build.json").read_text())["openvino_plan"]
    except (OSError, ValueError, KeyError):
        return "no guard recorded"
    return openvino_ir.guard_verdict(plan, openvino_ir.cpu_flags())[1]


def _names(text: str) -> list[str]:
    return [n for n in text.split(",") if n]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m build.repository", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, help="your trained SegFormer (NVlabs/mmseg .pth, HF folder, ...): "
                    "imported as --name, then every row of the table is built for it")
    ap.add_argument("--name", help="weights entry to build every row for (with --checkpoint: the name to import as)")
    ap.add_argument("--preset", help="with --checkpoint: class names and palette (cityscapes, ade20k, camvid)")
    ap.add_argument("--classes", type=Path, help="with --checkpoint: JSON class list")
    ap.add_argument("--size", help="with --checkpoint: served input HxW (multiples of 32)")
    ap.add_argument("--dynamic", help="with --checkpoint: MIN:MAX for dynamic-size rows, e.g. 512x512:1024x2048")
    ap.add_argument("--logits", action="store_true", help="with --checkpoint: rows also output logits (--slide)")
    ap.add_argument("--licence", "--license", dest="licence", help="with --checkpoint: the weights' licence when the "
                    "checkpoint does not carry it (make repo: LICENSE=...)")
    ap.add_argument("--variants", nargs="*", type=_names, help="rows by model name, space- or comma-separated "
                    "(default: the standard set)")
    ap.add_argument("--precisions", nargs="*", type=_names, help="keep only rows of these precisions (fp32 fp16 "
                    "int8 best), space- or comma-separated")
    ap.add_argument("--out", type=Path, default=ROOT / "model_repository")
    ap.add_argument("--force", action="store_true", help="rebuild even when the recipe is unchanged (and re-import)")
    ap.add_argument("--keep-versions", type=int, default=KEEP_VERSIONS, help="versions of each model kept and "
                    f"served (config version_policy latest N; default {KEEP_VERSIONS}): a rebuilt row is a new version")
    ap.add_argument("--calib", type=Path, help="calibration images for the int8 / best rows")
    ap.add_argument("--holdout", type=Path, help="held-out images for the INT8 sensitivity (default: --calib)")
    ap.add_argument("--calib-count", type=int, default=4)
    ap.add_argument("--budget", type=float, default=0.005, help="best: max pixel disagreement with FP32")
    args = ap.parse_args(argv)
    args.variants = [n for group in args.variants for n in group] if args.variants else args.variants
    args.precisions = [n for group in args.precisions for n in group] if args.precisions else args.precisions
    if args.keep_versions < 1:
        ap.error(f"--keep-versions must be at least 1, got {args.keep_versions}")
    return run(lambda: _main(args), handled=(CheckpointError, WeightsError))


class RepositoryInput(ProjectError, ValueError):
    """Options that do not fit together, or an entry that does not exist."""


def _weights_entry(args) -> str | None:
    """The entry every row is built for: imported first with --checkpoint, or named with --name."""
    if args.checkpoint is not None:
        from build.import_weights import ImportError_, default_name, import_weights, parse_range
        from segformer.config import parse_size

        weights = args.name or default_name(args.checkpoint)
        try:
            import_weights(args.checkpoint, weights, args.preset, args.classes,
                           parse_size(args.size) if args.size else None,
                           parse_range(args.dynamic) if args.dynamic else None, args.force, logits=args.logits,
                           licence=args.licence)
        except ImportError_ as exc:
            raise RepositoryInput(str(exc)) from None
        return weights
    if args.name:
        if args.name in SHIPPED or find_entry(args.name):
            return args.name
        raise RepositoryInput(f"no weights entry {args.name!r}: import one with CHECKPOINT=path (make repo) or "
                              "python -m build.import_weights")
    if args.size or args.dynamic or args.preset or args.classes or args.logits or args.licence:
        raise RepositoryInput("SIZE, DYNAMIC, PRESET, CLASSES, LOGITS and LICENSE apply to an import: pass "
                              "CHECKPOINT=path too")
    return None


def _main(args) -> int:
    weights = _weights_entry(args)
    rows = select(args.variants, args.precisions, weights=weights)
    quant = QuantSettings(args.calib, args.holdout, args.calib_count, budget=args.budget)
    try:
        results = write_repository(rows, args.out, args.force, quant=quant, entries=(weights,) if weights else (),
                                   keep=args.keep_versions)
    except KeyboardInterrupt:
        print(f"\ninterrupted: the model directories already in {args.out} are intact (the one being built was "
              "discarded); run it again to finish", file=sys.stderr)
        return 130
    failed = [n for n, r in results.items() if r.startswith("FAILED")]
    # rows named with --variants were asked for: not building one here (no TensorRT, no CALIB) is a failure too
    missed = [n for n, r in results.items() if args.variants and r.startswith("skipped")]
    removed = [n for n, r in results.items() if r.startswith("removed")]
    print(f"{args.out}: {sum(r in ('built', 'unchanged') for r in results.values())} model(s) ready"
          + (f", {len(failed)} failed" if failed else "") + (f", {len(missed)} requested but skipped" if missed
                                                              else "")
          + (f", {len(removed)} stale removed ({', '.join(removed)})" if removed else ""))
    return 1 if failed or missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
