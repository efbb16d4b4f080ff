"""The Model Analyzer command: `python -m loadtest.perf.tune validate | profile | apply` (what `make tune` and
`make repo TUNED=...` run). The work is in loadtest.perf.tuning (configs, results, applying settings) and
loadtest.perf.profile (the run itself); this module only dispatches, so neither imports the other's CLI.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from client import cli
from loadtest.perf.profile import profile
from loadtest.perf.tuning import CONFIGS, ROOT, TuningError, _rel, apply, concrete, load, validate

def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m loadtest.perf.tune", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate", help="check the configs with Model Analyzer's own parser")
    v.add_argument("--config", type=Path, action="append", help="default: every loadtest/model_analyzer/*.yaml")
    p = sub.add_parser("profile", help="run model-analyzer profile, write the chosen settings")
    p.add_argument("--config", type=Path, default=CONFIGS / "cpu.yaml")
    p.add_argument("--models", nargs="+", help="profile only these rows of the config")
    p.add_argument("--repo", type=Path, help="model repository (default: the config's)")
    p.add_argument("--export", type=Path, default=ROOT / "results" / "model_analyzer_cpu",
                   help="Model Analyzer's output (checkpoints, variants, CSVs)")
    p.add_argument("--chosen", type=Path, default=None, help="folder for chosen.json + summary (e.g. "
                   "docs/results/model_analyzer_cpu)")
    p.add_argument("--timeout", type=float, default=3600)
    a = sub.add_parser("apply", help="write chosen settings into the built rows' config.pbtxt")
    a.add_argument("--chosen", type=Path, required=True, help="chosen.json written by profile")
    a.add_argument("--repo", type=Path, default=ROOT / "model_repository")
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    return cli.run(lambda: _main(args), handled=(OSError,))


def _main(args) -> int:
    if args.cmd == "validate":
        for path in args.config or sorted(CONFIGS.glob("*.yaml")):
            with tempfile.TemporaryDirectory() as tmp:
                validate(concrete(load(path)), Path(tmp))
            print(f"{_rel(path)}: Model Analyzer accepts it ({', '.join(load(path).get('profile_models', {}))})")
    elif args.cmd == "profile":
        chosen = profile(args.config, args.models, args.export, args.chosen, args.timeout, args.repo)
        for name, c in chosen["rows"].items():
            print(f"{name}: {c['variant']} {c['settings']}")
    else:
        try:
            chosen = json.loads(args.chosen.read_text())
        except (OSError, ValueError) as exc:
            raise TuningError(f"cannot read {args.chosen}: {exc}") from None
        apply(chosen, args.repo)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
