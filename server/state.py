"""What runs where: the recorded server (pid file with its ports and repository, tied to the process's start time),
who holds a port, and the checks `make serve` / `make demo` / `make cluster` run before starting anything, so a
running server is never overwritten and a port in use is named with what holds it.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

from segformer.errors import ProjectError
from server.access import DEFAULT_HOST

ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / ".triton"
PORT_NAMES = {"http": "HTTP_PORT", "grpc": "GRPC_PORT", "metrics": "METRICS_PORT"}
PORT_LABELS = {"http": "HTTP", "grpc": "gRPC", "metrics": "metrics"}


class ServerError(ProjectError, RuntimeError):
    """The server cannot be started, stopped or reached as asked; the message names the fix."""


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
