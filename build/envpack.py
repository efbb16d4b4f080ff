"""Packed Python environments, so the python-backend rows load in stock NGC Triton.

    python -m build.envpack [--repo model_repository] [--out model_repository_ngc] [--python python3.10]
                            [--prefix /usr] [--check]

The NGC image (tritonserver:<release>-py3; 24.10: Ubuntu 22.04, Python 3.10) has the python backend and numpy, but
not ONNX Runtime, OpenVINO or Pillow, which the python rows import (their backend records list them: `pip`). This
builds one environment for the rows of a repository: a virtual environment of the target Python (found here:
--python, `python3.10` on PATH, or pyenv's 3.10) with the pinned packages (PINS), packed as a tarball whose
interpreter links point at the image's Python (--prefix, /usr) and whose `bin/activate` is relocatable (Triton's
python backend extracts the tarball and sources it before starting the stub). Then it writes the NGC repository
(--out): the model directories hard-linked, the python rows' config.pbtxt with
`EXECUTION_ENV_PATH: $$TRITON_MODEL_DIRECTORY/../<pack>.tar.gz`, and the tarball at its top. The pip-Triton
repository is left as it is (its server runs this machine's own Python). --check unpacks the tarball and imports
every row's runtime and packages with a clean interpreter of the same Python version.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from build.backends import BACKENDS, ROOT, SERVER_MODELS
from build.model_config import parse_pbtxt, to_pbtxt
from segformer.errors import ProjectError

PYTHON = "3.10"  # the NGC image's Python (tritonserver 24.10: Ubuntu 22.04)
NGC_PREFIX = "/usr"  # where that Python lives in the image (/usr/bin/python3.10)
# the packages the rows import, pinned to what builds the artefacts here (same OpenVINO as the IR; ONNX Runtime:
# the newest with Python 3.10 wheels); numpy < 2 as nvidia-pytriton and the stub expect
PINS = {"numpy": "numpy==1.26.4", "pillow": "pillow==12.3.0", "onnxruntime": "onnxruntime==1.23.2",
        "openvino": "openvino==2026.4.1", "nvidia-nvimgcodec-cu12": "nvidia-nvimgcodec-cu12"}
ENV_PARAM = "EXECUTION_ENV_PATH"
CACHE = ROOT / ".cache" / "envpack"
ACTIVATE = """# relocatable activate of a segformer environment pack (build/envpack.py): Triton's python backend sources it
# before it starts the stub, which finds its Python prefix from the `python3` on PATH (this pack's, a link to the
# image's interpreter, with pyvenv.cfg beside it) and so imports this pack's site-packages.
_pack="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)"
export VIRTUAL_ENV="$_pack"
export PATH="$_pack/bin:$PATH"
unset PYTHONHOME _pack
"""


class EnvPackError(ProjectError, RuntimeError):
    """The environment cannot be built or packed here; the message says what is missing."""


def find_python(version: str = PYTHON, given: str | None = None) -> Path:
    """An interpreter of `version`: `given`, `python<version>` on PATH, pyenv's versions; EnvPackError naming the
    places looked at otherwise."""
    candidates = [given] if given else [shutil.which(f"python{version}")] + sorted(
        glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python{version}")), reverse=True)
    for c in filter(None, candidates):
        out = subprocess.run([c, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True,
                             text=True)
        if out.returncode == 0 and out.stdout.strip() == version:
            return Path(c)
    raise EnvPackError(f"no Python {version} interpreter on this machine ({given or 'PATH, ~/.pyenv/versions'}): "
                       f"install one (apt python{version}, or pyenv install {version}) and pass --python PATH")


def requirements(kinds) -> list[str]:
    """The pinned packages the rows of these backend kinds import (their records' `pip`)."""
    names = sorted({p for k in kinds for p in BACKENDS[k].pip})
    return [PINS.get(n, n) for n in names]


def _run(cmd, what: str) -> None:
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if out.returncode:
        tail = (out.stderr or out.stdout).strip().splitlines()[-3:]
        raise EnvPackError(f"{what} failed: {' | '.join(tail)}")


def build_env(python: Path, reqs: list[str], cache: Path = CACHE, log=print) -> Path:
    """A virtual environment of `python` holding `reqs` (built once per interpreter and requirement set)."""
    key = hashlib.sha256(json.dumps([str(python), reqs]).encode()).hexdigest()[:12]
    env = cache / f"env-{key}"
    if (env / ".complete").is_file():
        return env
    shutil.rmtree(env, ignore_errors=True)
    env.parent.mkdir(parents=True, exist_ok=True)
    log(f"building a Python environment with {', '.join(reqs)} ({python}) ...")
    _run([python, "-m", "venv", env], "creating the virtual environment")
    _run([env / "bin" / "python", "-m", "pip", "install", "--no-input", "--disable-pip-version-check", "-q", *reqs],
         f"pip install {' '.join(reqs)}")
    (env / ".complete").write_text(json.dumps(reqs))
    return env


def _version(env: Path) -> str:
    return next(ln.split("=", 1)[1].strip() for ln in (env / "pyvenv.cfg").read_text().splitlines()
                if ln.startswith("version"))


def pack(env: Path, out: Path, prefix: str = NGC_PREFIX) -> Path:
    """`env` as a relocatable tarball for an interpreter at `prefix`/bin/python<major.minor>: site-packages,
    pyvenv.cfg pointing at `prefix`, interpreter links, our activate script and a manifest."""
    full = _version(env)
    short = ".".join(full.split(".")[:2])
    frozen = subprocess.run([env / "bin" / "python", "-m", "pip", "freeze"], capture_output=True, text=True).stdout
    manifest = {"python": short, "prefix": prefix, "packages": frozen.split()}
    tmp = out.with_name(f".{out.name}.tmp")
    out.parent.mkdir(parents=True, exist_ok=True)

    def add_text(tar, name, text, mode=0o644):
        data = text.encode()
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), mode
        tar.addfile(info, io.BytesIO(data))

    def add_link(tar, name, target):
        info = tarfile.TarInfo(name)
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
        tar.addfile(info)

    with tarfile.open(tmp, "w:gz", compresslevel=1) as tar:
        tar.add(env / "lib", "lib", filter=lambda i: None if "__pycache__" in i.name else i)
        add_link(tar, "lib64", "lib")
        add_text(tar, "pyvenv.cfg", f"home = {prefix}/bin\ninclude-system-site-packages = false\nversion = {full}\n")
        add_text(tar, "bin/activate", ACTIVATE)
        add_link(tar, f"bin/python{short}", f"{prefix}/bin/python{short}")
        add_link(tar, "bin/python3", f"python{short}")
        add_link(tar, "bin/python", f"python{short}")
        add_text(tar, "segformer-env.json", json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, out)
    return out


def check(tarball: Path, python: Path, modules: list[str], runtime: list[Path]) -> str:
    """Unpack `tarball`, point it at `python` (same version as packed), and import `modules` and the `runtime`
    files with a clean environment (`env -i`): what the python backend does before a row loads. Returns the
    interpreter's report; EnvPackError when an import fails."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "env"
        with tarfile.open(tarball) as tar:
            tar.extractall(root, filter="tar") if hasattr(tarfile, "data_filter") else tar.extractall(root)
        short = json.loads((root / "segformer-env.json").read_text())["python"]
        link = root / "bin" / f"python{short}"
        link.unlink()
        link.symlink_to(python)
        cfg = (root / "pyvenv.cfg").read_text().splitlines()
        (root / "pyvenv.cfg").write_text("\n".join([f"home = {python.parent}"] + cfg[1:]) + "\n")
        work = Path(tmp) / "row"
        work.mkdir()
        for f in runtime:
            shutil.copy2(f, work / f.name)
        names = modules + [f.stem for f in runtime]
        code = (f"import sys, importlib; [importlib.import_module(m) for m in {names!r}]; "
                "print(sys.version.split()[0], sys.prefix)")
        out = subprocess.run(["env", "-i", "bash", "-c", f"source {root}/bin/activate && cd {work} && "
                              f"python3 -c \"{code}\""], capture_output=True, text=True)
        if out.returncode:
            raise EnvPackError(f"the pack does not import {names}: {(out.stderr or out.stdout).strip()[-300:]}")
        return out.stdout.strip()


MODULES = {"numpy": "numpy", "pillow": "PIL", "onnxruntime": "onnxruntime", "openvino": "openvino"}


def repository_rows(repo: Path) -> dict[str, str]:
    """{model directory: backend kind} of a built repository (build.json)."""
    out = {}
    for prov in sorted(Path(repo).glob("*/build.json")):
        out[prov.parent.name] = json.loads(prov.read_text())["variant"]["backend"]
    return out


def _link_tree(src: Path, dst: Path) -> None:
    def link(s, d):
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=link, symlinks=True)


def write_ngc_repository(repo: Path, out: Path, tarball: Path, log=print) -> dict[str, str]:
    """`out`: every model of `repo` (hard links), the python rows needing packages with EXECUTION_ENV_PATH at
    `tarball` (linked at the top of `out`); written beside and renamed into place. {model: what was done}."""
    rows = repository_rows(repo)
    stage = out.with_name(f".{out.name}.staging")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    done = {}
    for name, kind in rows.items():
        _link_tree(repo / name, stage / name)
        if not BACKENDS[kind].pip:
            done[name] = "as built"
            continue
        cfg_path = stage / name / "config.pbtxt"
        cfg = parse_pbtxt(cfg_path.read_text())
        cfg.parameters[ENV_PARAM].string_value = f"$$TRITON_MODEL_DIRECTORY/../{tarball.name}"
        cfg_path.unlink()  # a hard link to the pip-Triton repository's file: replaced, never written through
        cfg_path.write_text(to_pbtxt(cfg))
        done[name] = f"{ENV_PARAM} -> {tarball.name}"
    try:
        os.link(tarball, stage / tarball.name)
    except OSError:
        shutil.copy2(tarball, stage / tarball.name)
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(stage, out)
    shutil.rmtree(old, ignore_errors=True)
    for name, what in done.items():
        log(f"  {name:28s} {what}")
    return done


def ngc_pack(repo: Path, python: Path, prefix: str = NGC_PREFIX, cache: Path = CACHE, log=print) -> Path | None:
    """The tarball for the rows of `repo` (None when none needs packages), cached by content."""
    reqs = requirements(set(repository_rows(repo).values()))
    if not reqs:
        return None
    env = build_env(python, reqs, cache, log)
    key = hashlib.sha256(json.dumps([reqs, prefix, _version(env)]).encode()).hexdigest()[:8]
    tarball = cache / f"segformer-env-py{PYTHON.replace('.', '')}-{key}.tar.gz"
    if not tarball.is_file():
        log(f"packing {env.name} for {prefix}/bin/python{PYTHON} -> {tarball.name} ...")
        pack(env, tarball, prefix)
    return tarball


def runtime_files(kinds) -> list[Path]:
    """The project files the python rows of these kinds import beside their model.py (not the Triton-only
    segformer_batching.py, which imports triton_python_backend_utils)."""
    files = {SERVER_MODELS / f for k in kinds for f in BACKENDS[k].runtime if f != "segformer_batching.py"}
    files |= {ROOT / f for k in kinds for f in BACKENDS[k].shared}
    return sorted(files)


def main(argv=None) -> int:
    from client import cli

    ap = argparse.ArgumentParser(prog="python -m build.envpack", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", type=Path, default=ROOT / "model_repository", help="the repository make repo wrote")
    ap.add_argument("--out", type=Path, help="the NGC repository (default: <repo>_ngc)")
    ap.add_argument("--python", help=f"a Python {PYTHON} interpreter to build with (default: found here)")
    ap.add_argument("--prefix", default=NGC_PREFIX, help=f"where the serving image's python{PYTHON} lives "
                    f"(default {NGC_PREFIX}: NGC)")
    ap.add_argument("--check", action="store_true", help="unpack the pack and import every row's runtime with a "
                    "clean interpreter of the same version")
    a = ap.parse_args(argv)

    def body():
        if not a.repo.is_dir():
            raise EnvPackError(f"no model repository at {a.repo}: run `make repo` first")
        python = find_python(PYTHON, a.python)
        tarball = ngc_pack(a.repo, python, a.prefix)
        out = a.out or a.repo.with_name(a.repo.name + "_ngc")
        if tarball is None:
            print(f"{a.repo}: no row needs a packed environment")
            return
        if a.check:
            kinds = {k for k in set(repository_rows(a.repo).values()) if BACKENDS[k].pip}
            mods = sorted({MODULES[p] for k in kinds for p in BACKENDS[k].pip if p in MODULES})
            print(f"check: {check(tarball, python, mods, runtime_files(kinds))} imports {', '.join(mods)}")
        write_ngc_repository(a.repo, out, tarball)
        print(f"{out}: NGC repository ({tarball.name}, {tarball.stat().st_size / 2**20:.0f} MiB, for "
              f"{a.prefix}/bin/python{PYTHON})")

    return cli.run(body)


if __name__ == "__main__":
    raise SystemExit(main())
