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
import json
import os
import re
import signal
import site
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from pathlib import Path

from client import cli
from segformer.errors import ProjectError
from server.access import (ADMIN_HEADER, DEFAULT_HOST, GRPC_ADMIN_HEADER, access_args, check_host, exposure_warning,
                           write_admin_key)

ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / ".triton"
PLATFORM_BACKENDS = {"onnxruntime_onnx": "onnxruntime", "tensorrt_plan": "tensorrt", "pytorch_libtorch": "pytorch",
                     "ensemble": "ensemble"}
BUILT_IN = {"ensemble"}  # Triton's own scheduler: no backend folder, always there


class ServerError(ProjectError, RuntimeError):
    """The server cannot be started or stopped as asked; one line naming the fix (exit 2)."""


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


def load_args(repo: Path, have: set[str]) -> tuple[list[str], list[str]]:
    """Explicit model-control arguments (so `reload` can load new versions through the model-control API) that
    load only what this server's backends can run, and the models left out ("name (needs the X backend)"; an
    ensemble whose step does not load)."""
    from build.ensemble import unloadable_ensembles

    models = model_backends(repo)
    have = have | BUILT_IN if have else have
    left_out = {m: f"needs the {b} backend" for m, b in models.items() if have and b not in have}
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


PORT_NAMES = {"http": "HTTP_PORT", "grpc": "GRPC_PORT", "metrics": "METRICS_PORT"}
PORT_LABELS = {"http": "HTTP", "grpc": "gRPC", "metrics": "metrics"}


def port_in_use(host: str, port: int) -> bool:
    """Whether binding `host:port` for listening would fail (something listens there, or on every interface)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no obstacle
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def port_owner(port: int) -> int | None:
    """The pid of a process of this user listening on TCP `port` (Linux /proc), else None."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for ln in lines:
            f = ln.split()
            if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{f[9]}]")
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    return int(proc.name)
        except OSError:
            continue
    return None


def describe_pid(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        name = Path(argv[0].decode(errors="replace")).name
    except (OSError, IndexError):
        name = ""
    return f"pid {pid}{' ' + name if name else ''}"


def free_ports(n: int = 3, start: int = 18000) -> list[int]:
    """`n` consecutive free ports from `start` on (for the hint in a message), or any free ones."""
    for base in range(start, start + 2000, 10):
        if not any(port_in_use("127.0.0.1", base + i) for i in range(n)):
            return [base + i for i in range(n)]
    out = []
    for _ in range(n):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            out.append(s.getsockname()[1])
    return out


def ports_hint(kinds=("http", "grpc", "metrics")) -> str:
    return " ".join(f"{PORT_NAMES[k]}={p}" for k, p in zip(kinds, free_ports(len(kinds))))


def check_ports(host: str, ports: dict[str, int], state: Path = None) -> None:
    """ServerError (one line: what holds the port, how to stop it, which ports to pick) unless every port is free."""
    if len(set(ports.values())) < len(ports):
        raise ServerError(f"{', '.join(f'{PORT_NAMES[k]}={p}' for k, p in ports.items())}: the ports must differ")
    for kind, port in ports.items():
        if not port_in_use(host, port):
            continue
        owner = port_owner(port)
        rec = running(STATE / "server.pid")
        if owner is not None and rec and rec["pid"] == owner:
            by = f" by the Triton `make serve` started ({describe_pid(owner)}; `make stop` ends it)"
        elif owner is not None:
            by = f" by {describe_pid(owner)}"
        else:
            by = " by another program"
        raise ServerError(f"{PORT_LABELS[kind]} port {port} is already in use{by}: stop it, or pick free ports, e.g. "
                          f"{ports_hint(tuple(ports))}")


def preflight(state: Path, host: str, http: int, grpc: int, metrics: int) -> None:
    """ServerError unless a server can start here: none recorded in `state` still runs (one server per state
    folder: a live one keeps its pid file, admin key and log) and nothing holds the ports."""
    rec = running(state / "server.pid")
    if rec is not None:
        raise ServerError(f"Triton is already running ({describe(rec)}): "
                          + ("`make stop` ends it" if state in (STATE, STATE / "demo")
                             else f"stop it first (its state is in {state})"))
    check_ports(host, {"http": http, "grpc": grpc, "metrics": metrics})


def start(repo: Path, http: int = 8000, grpc: int = 8001, metrics: int = 8002, state: Path = STATE,
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


def _start_ticks(pid: int) -> int | None:
    """The process's start time (clock ticks since boot, /proc/PID/stat field 22): with the pid, it names one process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def write_pid(path: Path, pid: int, **info) -> None:
    """Record the server as pid + start time, so `stop` never signals a process that merely reused the pid;
    `info` (ports, host, repository) is kept beside them for the messages that name a running server."""
    from segformer.weights import atomic_write_bytes

    atomic_write_bytes(path, json.dumps({"pid": pid, "start": _start_ticks(pid), **info}).encode())


def running(path: Path) -> dict | None:
    """The record in `path` (pid, start, ports ...) if the very process it names still runs, else None."""
    pid, _ = recorded_server(path)
    if pid is None:
        return None
    try:
        return {**json.loads(path.read_text()), "pid": pid}
    except (OSError, ValueError):
        return {"pid": pid}


def describe(rec: dict) -> str:
    """`pid 123, HTTP 127.0.0.1:8000, gRPC :8001, metrics :8002` from a pid record."""
    out = f"pid {rec['pid']}"
    if rec.get("http"):
        host = rec.get("host", DEFAULT_HOST)
        out += f", HTTP {host}:{rec['http']}, gRPC {host}:{rec['grpc']}, metrics {host}:{rec['metrics']}"
    return out


def recorded_server(path: Path) -> tuple[int | None, str]:
    """(pid, '') of the server recorded in `path` if that very process still runs, else (None, why not)."""
    try:
        rec = json.loads(path.read_text())
        pid, start = int(rec["pid"]), rec.get("start")
    except FileNotFoundError:
        return None, "no server running"
    except (OSError, ValueError, KeyError, TypeError):
        return None, f"no server running ({path} was unreadable; removed)"
    now = _start_ticks(pid)
    if now is None:
        return None, "no server running (it had exited; stale pid file removed)"
    if start is not None and now != start:
        return None, f"no server running (pid {pid} now belongs to another process; stale pid file removed)"
    return pid, ""


def stop_pid(pid: int, timeout: float = 30) -> bool:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.2)
    os.killpg(pid, signal.SIGKILL)
    return True


def stop(state: Path = STATE) -> str:
    """Stop the server recorded in `state` (only that very process), and one a `make demo` that was killed left
    behind in state/demo; the line to print."""
    pid_file = state / "server.pid"
    pid, why = recorded_server(pid_file)
    line = f"Triton stopped (pid {pid})" if pid is not None and stop_pid(pid) else why or "no server running"
    pid_file.unlink(missing_ok=True)
    demo_pid, _ = recorded_server(state / "demo" / "server.pid")
    if demo_pid is not None and stop_pid(demo_pid):
        line += f"; stopped the Triton a `make demo` left running (pid {demo_pid})"
    (state / "demo" / "server.pid").unlink(missing_ok=True)
    return line


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
