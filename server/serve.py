"""Run Triton on the generated repository: the pip-shipped server (nvidia-pytriton) or one already on PATH.

    python -m server.serve start [--repo model_repository] [--http-port 8000 ...]   # background, waits for ready
    python -m server.serve stop
    python -m server.serve reload [--model M ...]   # swap in the versions `make repo` wrote (server.reload)
    python -m server.serve exec -- --model-repository model_repository            # what `tritonserver` runs

For the pip-shipped server it puts the python-backend stub for this interpreter in place, adds libpython to
LD_LIBRARY_PATH and puts this interpreter first on PATH (the stub takes its environment from there). Models whose backend this server lacks
(onnxruntime/tensorrt configs meant for NGC Triton) are left unloaded, named, with explicit model control.
A plugin built in plugins/build/ is preloaded with LD_PRELOAD.
"""
from __future__ import annotations

import argparse
import os
import re
import site
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from pathlib import Path

from client import cli
from server.access import (ADMIN_HEADER, DEFAULT_HOST, GRPC_ADMIN_HEADER, access_args, check_host, exposure_warning,
                           write_admin_key)

from server.state import (STATE, ServerError, check_ports, describe, describe_pid, free_ports, port_in_use,  # noqa: F401
                          port_owner, ports_hint, preflight, recorded_server, running, stop, stop_pid, write_pid)

ROOT = Path(__file__).resolve().parent.parent
PLATFORM_BACKENDS = {"onnxruntime_onnx": "onnxruntime", "tensorrt_plan": "tensorrt", "pytorch_libtorch": "pytorch",
                     "ensemble": "ensemble"}
BUILT_IN = {"ensemble"}  # Triton's own scheduler: no backend folder, always there


def find_tritonserver() -> Path:
    """$TRITONSERVER, then a real tritonserver on PATH (e.g. NGC), else the binary inside the nvidia-pytriton wheel."""
    explicit = os.environ.get("TRITONSERVER")
    if explicit:
        if not (Path(explicit).is_file() and os.access(explicit, os.X_OK)):
            raise ServerError(f"TRITONSERVER={explicit} is not an executable file")
        return Path(explicit)
    shim = Path(sys.prefix) / "bin" / "tritonserver"
    for d in os.environ.get("PATH", "").split(os.pathsep):
        p = Path(d) / "tritonserver"
        if p.is_file() and os.access(p, os.X_OK) and p.resolve() != shim.resolve() and not _is_shim(p):
            return p
    try:
        import pytriton
    except ImportError:
        raise ServerError("no tritonserver: install the project (`make venv`, which brings nvidia-pytriton) or "
                          "run inside an NGC Triton container") from None
    p = Path(pytriton.__file__).parent / "tritonserver" / "bin" / "tritonserver"
    if not p.is_file():
        raise ServerError(f"{p} is missing: reinstall nvidia-pytriton")
    return p


def _is_shim(p: Path) -> bool:
    try:
        return b"server.serve" in p.read_bytes()[:1000]
    except OSError:
        return False


def plugin_libraries() -> list[Path]:
    """The TensorRT plugin libraries `make plugins` built (plugins/build/libsegformer_plugins*.so)."""
    d = ROOT / "plugins" / "build"
    return sorted(d.glob("libsegformer_plugins*.so")) if d.is_dir() else []


def local_backends(package_backends: Path, stub: Path, dest: Path) -> Path:
    """A backend directory inside the project: links to the installed package's backends and to this
    interpreter's python-backend stub. Nothing is written into site-packages. (Links, not copies: the stub finds
    its libraries through an $ORIGIN-relative RPATH, which the loader resolves from the link's target.)"""
    dest.mkdir(parents=True, exist_ok=True)
    for backend in package_backends.iterdir():
        if not backend.is_dir() or backend.name == "__pycache__":
            continue
        mine = dest / backend.name
        mine.mkdir(exist_ok=True)
        for f in backend.iterdir():
            link = mine / f.name
            if f.name in ("triton_python_backend_stub", "__pycache__"):
                continue
            if not (link.is_symlink() and link.resolve() == f.resolve()):
                link.unlink(missing_ok=True)
                link.symlink_to(f.resolve())
    dst = dest / "python" / "triton_python_backend_stub"
    if not (dst.is_symlink() and dst.resolve() == stub.resolve()):
        tmp = dst.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(stub.resolve())
        tmp.replace(dst)
    return dest


def prepare(binary: Path, plugins: list[Path] | None = None) -> tuple[dict, set[str], list[str]]:
    """Environment for the server, the backends it has and the arguments its layout needs; `plugins` (default:
    the built plugin libraries) are preloaded with LD_PRELOAD so their creators register in the server."""
    root = binary.parent.parent
    backends = root / "backends"
    env = dict(os.environ)
    # torch.compile (GPU model) caches inside the project, not /tmp and ~/.triton
    env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(ROOT / ".cache" / "torchinductor"))
    env.setdefault("TRITON_CACHE_DIR", str(ROOT / ".cache" / "triton"))
    extra = []
    stubs = root / "python_backend_stubs"
    if stubs.is_dir():  # the pip-shipped layout: put this interpreter's stub in place
        ver = f"{sys.version_info.major}.{sys.version_info.minor}"
        src = stubs / ver / "triton_python_backend_stub"
        if not src.is_file():
            raise ServerError(f"nvidia-pytriton has no python-backend stub for Python {ver}")
        backends = local_backends(backends, src, ROOT / ".triton" / "backends")
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        env["LD_LIBRARY_PATH"] = os.pathsep.join(x for x in (libdir, env.get("LD_LIBRARY_PATH", "")) if x)
        extra = [f"--backend-directory={backends}", f"--cache-directory={ROOT / '.triton' / 'caches'}"]
    # The stub embeds Python and finds its prefix from the `python3` on PATH (it ignores PYTHONPATH): put this
    # interpreter first so a virtual environment's packages are the ones the models import.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    if sys.prefix != sys.base_prefix:
        env["VIRTUAL_ENV"] = sys.prefix
    paths = [str(ROOT)] + site.getsitepackages() + [env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    plugins = plugin_libraries() if plugins is None else plugins
    if plugins:
        env["LD_PRELOAD"] = os.pathsep.join([str(p) for p in plugins] + [env.get("LD_PRELOAD", "")]).strip(":")
    have = {p.name for p in backends.iterdir() if p.is_dir()} if backends.is_dir() else set()
    return env, have, extra


def model_backends(repo: Path) -> dict[str, str]:
    from build.model_config import parse_pbtxt

    out = {}
    for cfg_path in sorted(repo.glob("*/config.pbtxt")):
        cfg = parse_pbtxt(cfg_path.read_text())
        out[cfg_path.parent.name] = cfg.backend or PLATFORM_BACKENDS.get(cfg.platform, cfg.platform)
    return out


def has_gpu() -> bool:
    """Whether this machine has an NVIDIA GPU with its driver loaded (SEGFORMER_ASSUME_GPU=0/1 overrides)."""
    forced = os.environ.get("SEGFORMER_ASSUME_GPU")
    if forced in ("0", "1"):
        return forced == "1"
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


def gpu_models(repo: Path) -> list[str]:
    """Models whose config asks for GPU instances (KIND_GPU)."""
    from build.model_config import parse_pbtxt
    from tritonclient.grpc import model_config_pb2 as mc

    out = []
    for cfg_path in sorted(repo.glob("*/config.pbtxt")):
        cfg = parse_pbtxt(cfg_path.read_text())
        if any(g.kind == mc.ModelInstanceGroup.KIND_GPU for g in cfg.instance_group):
            out.append(cfg_path.parent.name)
    return out


def load_args(repo: Path, have: set[str]) -> tuple[list[str], list[str]]:
    """Explicit model-control arguments (so `reload` can load new versions through the model-control API) that
    load only what this server's backends can run, and the models left out ("name (needs the X backend)"; an
    ensemble whose step does not load)."""
    from build.ensemble import unloadable_ensembles

    models = model_backends(repo)
    have = have | BUILT_IN if have else have
    left_out = {m: f"needs the {b} backend" for m, b in models.items() if have and b not in have}
    if not has_gpu():  # Triton refuses a KIND_GPU instance group without a GPU, and a refused load stops its start
        left_out.update({m: "needs a GPU (KIND_GPU instances)" for m in gpu_models(repo) if m not in left_out})
    left_out.update(unloadable_ensembles(repo, set(left_out)))
    loaded = [m for m in models if m not in left_out]
    # Not strict: in Triton 2.51 a version that fails to load (a broken one `reload` refused, while the previous
    # version keeps serving) turns strict readiness off until the server restarts, which would take a serving
    # replica out of its proxy for good. Readiness then says the server answers; /v2/models/M/ready, the model.
    return (["--model-control-mode=explicit", "--strict-readiness=false"] + [f"--load-model={m}" for m in loaded],
            [f"{m} ({why})" for m, why in left_out.items()])


def server_args(repo: Path, have: set[str], http: int, grpc: int, metrics: int) -> tuple[list[str], list[str]]:
    """Command-line arguments and the names of models left unloaded (backend missing)."""
    if not model_backends(repo):
        raise ServerError(f"{repo} holds no models: build it with `make repo`")
    control, skipped = load_args(repo, have)
    args = [f"--model-repository={repo}", f"--http-port={http}", f"--grpc-port={grpc}",
            f"--metrics-port={metrics}", "--log-verbose=0"]
    return args + control, skipped


def _probe_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "localhost") else host


def _answers(url: str, headers: dict | None = None, data: bytes | None = None) -> bool:
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=2) as r:
            return r.status == 200
    except (OSError, ValueError):
        return False


def wait_ready(http: int, proc: subprocess.Popen, log: Path, timeout: float = 180, host: str = "127.0.0.1",
               key: str | None = None) -> None:
    """Wait until the server `proc` itself is ready: its HTTP port answers /v2/health/ready while `proc` is alive,
    and, given the admin `key` this start generated, a restricted request with that key is answered too (another
    server on the port has another key, so its answers never count as this one's)."""
    base = f"http://{_probe_host(host)}:{http}"
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            lines = log.read_text(errors="replace").splitlines() if log.exists() else []
            errors = [ln for ln in lines if re.match(r"^E\d{4} ", ln) or "Traceback" in ln or "Error:" in ln]
            in_use = next((ln for ln in lines if "already in use" in ln), None)
            if in_use:
                raise ServerError(f"tritonserver exited at start: a port it needs is already in use "
                                  f"({in_use.strip()[-160:]}); pick free ports (log: {log})")
            shown = (errors[-12:] + ["..."] if errors else []) + lines[-6:]
            raise ServerError(f"tritonserver exited during start-up (log: {log}):\n  " + "\n  ".join(shown))
        if _answers(f"{base}/v2/health/ready") and proc.poll() is None and (
                key is None or _answers(f"{base}/v2/repository/index", {ADMIN_HEADER: key}, b"{}")):
            return
        time.sleep(0.5)
    raise ServerError(f"tritonserver not ready after {timeout:.0f} s; see {log}")




def start(repo: Path, http: int = cli.PORTS["http"], grpc: int = cli.PORTS["grpc"], metrics: int = cli.PORTS["metrics"],
          state: Path = STATE,
          timeout: float = 180, plugins: list[Path] | None = None, host: str = DEFAULT_HOST,
          extra_args: tuple[str, ...] = (), env_extra: dict | None = None) -> subprocess.Popen:
    """Start tritonserver in the background and wait until it is ready; `extra_args` are added to its command
    line (e.g. --backend-config=...), `env_extra` to its environment (e.g. CUDA_VISIBLE_DEVICES)."""
    try:
        host = check_host(host)
    except ValueError as exc:
        raise ServerError(str(exc)) from None
    preflight(state, host, http, grpc, metrics)
    binary = find_tritonserver()
    env, have, extra = prepare(binary, plugins)
    env.update(env_extra or {})
    if env.get("LD_PRELOAD"):
        print(f"LD_PRELOAD={env['LD_PRELOAD']}")
    args, skipped = server_args(repo.resolve(), have, http, grpc, metrics)
    key = write_admin_key(state)
    args += extra + access_args(host, key) + list(extra_args)
    if exposure_warning(host):
        print(exposure_warning(host), file=sys.stderr)
    state.mkdir(parents=True, exist_ok=True)
    log = state / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(binary), *args], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    write_pid(state / "server.pid", proc.pid, host=host, http=http, grpc=grpc, metrics=metrics,
              repo=str(repo.resolve()))
    for s in skipped:
        print(f"not loaded: {s}; this server has backends: {', '.join(sorted(have))}")
    from build.model_config import licence_lines

    for line in licence_lines(repo):
        print(line)
    try:
        wait_ready(http, proc, log, timeout, host, key)
    except BaseException:
        stop_pid(proc.pid)
        (state / "server.pid").unlink(missing_ok=True)
        raise
    return proc


def exec_server(args: list[str], state: Path = STATE) -> None:
    """Run tritonserver in this process (the `tritonserver` shim) with the prepared environment: loopback and
    the admin key unless the command line says otherwise. A live `make serve` server keeps its admin key: this
    one's goes to state/exec/admin-key then."""
    binary = find_tritonserver()
    env, have, extra = prepare(binary)
    args = [x for x in args if x != "--"]
    given = {y.split("=")[0] for y in args}
    key_dir = state / "exec" if running(state / "server.pid") else state
    access = access_args(DEFAULT_HOST, write_admin_key(key_dir))
    if key_dir != state:
        print(f"note: the admin key of this server is in {key_dir / 'admin-key'} (`make serve`'s server is "
              f"running and keeps {state / 'admin-key'})", file=sys.stderr)
    if not given & {"--http-address", "--grpc-address", "--metrics-address"}:
        extra += access[:3]  # loopback unless the command line says otherwise
    if not given & {"--http-restricted-api", "--grpc-restricted-protocol"}:
        extra += access[3:]
    args += [x for x in extra if x.split("=")[0] not in given]
    repo = next((x.split("=", 1)[1] for x in args if x.startswith("--model-repository=")), None)
    if repo is None and "--model-repository" in args:
        repo = args[args.index("--model-repository") + 1]
    if repo and not any(x.startswith("--model-control-mode") for x in args):
        control, skipped = load_args(Path(repo), have)
        for s in skipped:
            print(f"not loaded: {s}; this server has backends: {', '.join(sorted(have))}", file=sys.stderr)
        args += control
    os.execve(str(binary), [str(binary), *args], env)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m server.serve", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("start", help="start in the background and wait until ready")
    st.add_argument("--repo", type=Path, default=ROOT / "model_repository")
    cli.add_listen_options(st, host=os.environ.get("HOST", DEFAULT_HOST))
    st.add_argument("--timeout", type=float, default=180, help="seconds to wait for ready (default 180)")
    sub.add_parser("stop", help="stop the server started with `start`")
    rl = sub.add_parser("reload", help="load the new versions `make repo` wrote, the old ones serving meanwhile")
    rl.add_argument("--model", action="append", help="model to reload (repeatable; default: every loaded model)")
    rl.add_argument("--state", type=Path, default=STATE, help=argparse.SUPPRESS)
    rl.add_argument("--timeout", type=float, default=600, help="seconds a model may take to load (default 600)")
    ex = sub.add_parser("exec", help="run tritonserver in the foreground with the prepared environment")
    ex.add_argument("args", nargs=argparse.REMAINDER)
    a = ap.parse_args(argv)

    def body():
        if a.cmd == "start":
            proc = start(a.repo, a.http_port, a.grpc_port, a.metrics_port, timeout=a.timeout, host=a.host)
            print(f"Triton ready (pid {proc.pid}, log {STATE / 'server.log'})\n"
                  f"  HTTP    http://{a.host}:{a.http_port}\n  gRPC    {a.host}:{a.grpc_port}\n"
                  f"  metrics http://{a.host}:{a.metrics_port}/metrics\n"
                  f"  model control (load/unload, repository index), logging, trace: header "
                  f"'triton-admin-key: $(cat {STATE / 'admin-key'})' (gRPC: '{GRPC_ADMIN_HEADER}: ...')\n"
                  f"  new versions from `make repo`: `make reload` swaps them in")
        elif a.cmd == "stop":
            print(stop())
        elif a.cmd == "reload":
            from server.reload import reload_server

            reload_server(a.state, a.model, a.timeout)
        else:
            exec_server(a.args)

    return cli.run(body)


if __name__ == "__main__":
    raise SystemExit(main())
