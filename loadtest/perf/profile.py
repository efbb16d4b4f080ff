"""Model Analyzer's run on the rows (`python -m loadtest.perf.tune profile`): the committed config made concrete
here, `model-analyzer profile` launched on it, its results read back and the chosen settings written (chosen.json,
the measurements' CSV, a markdown summary)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from client import cli
from loadtest.perf.tuning import (ROOT, TuningError, _free_port, _rel, choose, concrete, load, read_results,
                                  settings_of, validate, variant_base)


def server_wrapper(path: Path) -> Path:
    """The project's `tritonserver` shim bound to this checkout and interpreter (a shared virtualenv's link may
    name another checkout): server.serve's `exec`, which starts the pip Triton with the python backend's set-up."""
    path.write_text(f'#!/bin/sh\nexport PYTHONPATH="{ROOT}${{PYTHONPATH:+:$PYTHONPATH}}"\n'
                    f'exec "{sys.executable}" -m server.serve exec -- "$@"\n')
    path.chmod(0o755)
    return path


def input_files(models: list[str], dest: Path) -> dict[str, Path]:
    """perf_analyzer input data per row: its input policy's frames (what clients send), as analyzer writes them."""
    from build.variants import VARIANTS
    from client.policy import InputPolicy
    from loadtest.perf.analyzer import write_input_data

    return {m: write_input_data(dest / f"input_{m}.json", InputPolicy.for_row(VARIANTS[m]).frames("", 4))
            for m in models}


def profile(config: Path, models: list[str] | None, export: Path, chosen_dir: Path | None,
            timeout: float = 3600, repo: Path | None = None) -> dict:
    """Run `model-analyzer profile` on the committed config made concrete here; returns the chosen settings (also
    written to chosen_dir/chosen.json with the measurements' CSV and a markdown summary)."""
    import yaml

    from loadtest.perf import binary

    cfg = load(config)
    if repo is not None:
        cfg["model_repository"] = str(repo.resolve())
    names = models or list(cfg.get("profile_models", {}))
    export = export.resolve()
    export.mkdir(parents=True, exist_ok=True)
    run_cfg = concrete(cfg, models=names, export=export, ports=(_free_port(), _free_port(), _free_port()),
                       perf_analyzer=binary.locate(), input_data=input_files(names, export))
    missing = [m for m in names if not (Path(run_cfg["model_repository"]) / m / "config.pbtxt").is_file()]
    if missing:
        raise TuningError(f"{', '.join(missing)} not built in {run_cfg['model_repository']}: "
                          f"make repo VARIANTS=\"{' '.join(missing)}\"")
    with tempfile.TemporaryDirectory() as tmp:
        validate(run_cfg, Path(tmp))
    if Path(run_cfg.get("triton_server_path", "")).name == "tritonserver":
        run_cfg["triton_server_path"] = str(server_wrapper(export / "tritonserver"))
    path = export / "profile.yaml"
    path.write_text(yaml.safe_dump(run_cfg, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.prefix) / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    ma = Path(sys.prefix) / "bin" / "model-analyzer"
    log = export / "model_analyzer.log"
    cli.log(f"model-analyzer profile -f {path} (log {log})")
    with open(log, "w") as out:
        try:
            r = subprocess.run([str(ma), "profile", "-f", str(path)], stdout=out, stderr=subprocess.STDOUT,
                               env=env, timeout=timeout, cwd=export)
        except FileNotFoundError:
            raise TuningError(f"{ma} is missing: pip install triton-model-analyzer==1.58.0") from None
        except subprocess.TimeoutExpired:
            raise TuningError(f"model-analyzer ran past {timeout:.0f} s (log {log})") from None
    table = export / "results" / "metrics-model-inference.csv"
    if r.returncode or not table.is_file():
        tail = [l for l in log.read_text().splitlines() if l.strip()][-3:]
        raise TuningError(f"model-analyzer failed (exit {r.returncode}): {' | '.join(tail)} (log {log})")
    results = read_results(table.read_text())
    chosen = {"tool": f"triton-model-analyzer {_version()}", "config": _rel(config), "rows": {},
              "measurements": results}
    variants = {}
    for r in results:
        cfg_file = Path(run_cfg["output_model_repository_path"]) / r["variant"] / "config.pbtxt"
        if not cfg_file.is_file() and r["variant"].endswith("_config_default"):  # the row's own config
            cfg_file = Path(run_cfg["model_repository"]) / variant_base(r["variant"]) / "config.pbtxt"
        if not cfg_file.is_file():
            raise TuningError(f"Model Analyzer measured {r['variant']} but left no config.pbtxt for it in "
                              f"{run_cfg['output_model_repository_path']}")
        variants[r["variant"]] = settings_of(cfg_file.read_text())
    chosen["variants"] = variants
    for name, best in choose(results).items():
        chosen["rows"][name] = {k: best[k] for k in ("variant", "batch", "concurrency", "throughput", "p99_ms",
                                                     "ok")} | {"settings": variants[best["variant"]]}
    if chosen_dir is not None:
        write_chosen(chosen_dir, chosen, table.read_text())
    return chosen


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("triton-model-analyzer")
    except PackageNotFoundError:
        return "?"


def write_chosen(dest: Path, chosen: dict, table_csv: str) -> None:
    from loadtest.perf.compare import host

    dest.mkdir(parents=True, exist_ok=True)
    chosen = {**chosen, "host": host()}
    (dest / "chosen.json").write_text(json.dumps(chosen, indent=1) + "\n")
    (dest / "metrics-model-inference.csv").write_text(table_csv)
    h = chosen["host"]
    lines = [f"# Model Analyzer on the CPU rows ({chosen['tool']})", "",
             f"{h['date']}; {h['cpu']}, {h['cpus']} CPUs ({', '.join(h['flags'])}); config `{chosen['config']}`; "
             "perf_analyzer 2.60 (pip wheel) as its load generator, pip Triton 2.51 launched by Model Analyzer "
             "(local mode) through the project's `tritonserver` shim.", "",
             "| row | variant | instances | max batch | queue delay us | concurrency | infer/s | p99 ms |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for m in chosen["measurements"]:
        lines.append(f"| {m['model'] or variant_base(m['variant'])} | {m['variant']} | {m['instances']} | "
                     f"{m['max_batch']} | {_delay(chosen, m)} | {m['concurrency']} | {m['throughput']:.2f} | "
                     f"{m['p99_ms']:.0f} |")
    lines += ["", "Chosen (highest throughput meeting the constraints), applied by "
              "`python -m loadtest.perf.tune apply --chosen docs/results/model_analyzer_cpu/chosen.json`:", ""]
    for name, c in chosen["rows"].items():
        s = c["settings"]
        lines.append(f"- {name}: {c['variant']} — " + ", ".join(f"{g['count']} x {g['kind']}"
                                                                 for g in s["instance_group"])
                     + f", max_batch_size {s['max_batch_size']}, queue delay {s['max_queue_delay_microseconds']} us"
                     f" ({c['throughput']:.2f} infer/s at concurrency {c['concurrency']}, p99 {c['p99_ms']:.0f} ms)")
    (dest / "README.md").write_text("\n".join(lines) + "\n")


def _delay(chosen: dict, m: dict) -> str:
    return str(chosen.get("variants", {}).get(m["variant"], {}).get("max_queue_delay_microseconds", "–"))
