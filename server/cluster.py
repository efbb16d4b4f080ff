"""A single-host stand-in for a cluster Service: N Triton replicas behind HAProxy, on 127.0.0.1 only.

    python -m server.cluster start [--replicas 3] [--repo model_repository] [--http-port 8000] [--grpc-port 8001]
    python -m server.cluster status        # each replica UP/DOWN as the proxy's health checks see it
    python -m server.cluster reload [--model M]  # rolling update: drain, reload, back in, one replica at a time
    python -m server.cluster stop

Each replica is the pip-shipped Triton (server.serve) on its own free ports and state folder. HAProxy 2.6 (the
Debian package) listens on the usual ports: HTTP/1.1 on --http-port, gRPC (HTTP/2 cleartext, every request
balanced on its own) on --grpc-port, both round robin. It checks each replica's `/v2/health/ready` every 500 ms
and takes a replica out after 2 failed checks (back after 2 good ones; readiness is the server's, not strict: a
replica whose new version failed to load keeps serving the old one and stays in); a request whose connection to
a replica fails is sent to another one (`retries 2` + `option redispatch`); a request in flight on a replica that
dies is answered 502 / UNAVAILABLE and the client reports it. `reload` updates the replicas one at a time: each is
drained through the proxy's admin socket (no new requests; those in progress finish), reloaded, put back.
Metrics stay per replica (as a PodMonitor scrapes pods). State (config, pids, ports, logs, stats socket) lives in
.triton/cluster/.
"""
from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from client import cli
from server.serve import ROOT, STATE, ServerError, check_ports, recorded_server, start, stop_pid, write_pid

CLUSTER = STATE / "cluster"
INSTALL = "install HAProxy 2.6 (Debian: apt-get install haproxy) or put haproxy on PATH"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def haproxy_config(replicas: list[dict], http: int, grpc: int, stats_socket: Path) -> str:
    """The proxy's whole configuration: one HTTP and one gRPC frontend, each balancing over every replica."""
    lines = ["global", f"    stats socket {stats_socket} mode 600 level admin", "    maxconn 4096", "",
             "defaults", "    mode http", "    timeout connect 2s", "    timeout client 120s",
             "    timeout server 120s", "    option redispatch", "    retries 2", "",
             "frontend triton_http", f"    bind 127.0.0.1:{http}", "    default_backend replicas_http", "",
             "frontend triton_grpc", f"    bind 127.0.0.1:{grpc} proto h2", "    default_backend replicas_grpc", ""]
    for kind in ("http", "grpc"):
        lines += [f"backend replicas_{kind}", "    balance roundrobin", "    option httpchk GET /v2/health/ready",
                  "    http-check expect status 200", "    default-server inter 500ms fall 2 rise 2"]
        for r in replicas:
            if kind == "http":
                lines.append(f"    server {r['name']} 127.0.0.1:{r['http']} check")
            else:  # the health check goes to the same replica's HTTP port, over HTTP/1.1
                lines.append(f"    server {r['name']} 127.0.0.1:{r['grpc']} proto h2 check port {r['http']} "
                             "check-proto h1")
        lines.append("")
    return "\n".join(lines)


def _wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 10) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise ServerError(f"haproxy exited at start: {log.read_text(errors='replace').strip()[-600:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise ServerError(f"haproxy did not listen on {port} within {timeout:.0f} s; see {log}")


def start_cluster(repo: Path, replicas: int, http: int, grpc: int, state: Path = CLUSTER,
                  timeout: float = 300) -> dict:
    """Start the replicas (in parallel) and the proxy; returns what `status` and `stop` need (also saved)."""
    binary = shutil.which("haproxy")
    if binary is None:
        raise ServerError(f"no haproxy found: {INSTALL}")
    if (state / "cluster.json").exists() and any(recorded_server(state / f"{n}.pid")[0] for n in _names(state)):
        raise ServerError(f"a cluster is already running (state in {state}): `make cluster-stop` first")
    # the proxy's ports: a server already there would answer the readiness checks in its place
    check_ports("127.0.0.1", {"http": http, "grpc": grpc})
    state.mkdir(parents=True, exist_ok=True)
    info = {"repo": str(repo), "http": http, "grpc": grpc,
            "replicas": [{"name": f"r{i}", "http": free_port(), "grpc": free_port(), "metrics": free_port()}
                         for i in range(replicas)]}

    def one(r):
        proc = start(repo, r["http"], r["grpc"], r["metrics"], state=state / r["name"], timeout=timeout)
        write_pid(state / f"{r['name']}.pid", proc.pid)
        r["pid"] = proc.pid

    try:
        with ThreadPoolExecutor(replicas) as pool:
            list(pool.map(one, info["replicas"]))
        cfg = state / "haproxy.cfg"
        cfg.write_text(haproxy_config(info["replicas"], http, grpc, state / "haproxy.sock"))
        check = subprocess.run([binary, "-c", "-q", "-f", str(cfg)], capture_output=True, text=True)
        if check.returncode != 0:
            raise ServerError(f"haproxy refused the configuration: {(check.stderr or check.stdout).strip()[:600]}")
        log = state / "haproxy.log"
        with open(log, "wb") as out:
            proxy = subprocess.Popen([binary, "-db", "-f", str(cfg)], stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        write_pid(state / "haproxy.pid", proxy.pid)
        info["haproxy_pid"] = proxy.pid
        _wait_port(http, proxy, log)
        _wait_port(grpc, proxy, log)
    except BaseException:
        (state / "cluster.json").write_text(json.dumps(info))
        stop_cluster(state)
        raise
    (state / "cluster.json").write_text(json.dumps(info, indent=1))
    return info


def _names(state: Path) -> list[str]:
    try:
        info = json.loads((state / "cluster.json").read_text())
    except (OSError, ValueError):
        return ["haproxy"]
    return [r["name"] for r in info.get("replicas", [])] + ["haproxy"]


def stop_cluster(state: Path = CLUSTER) -> list[str]:
    """Stop the proxy and every replica still running; returns what was stopped."""
    stopped = []
    for name in reversed(_names(state)):
        pid, _ = recorded_server(state / f"{name}.pid")
        if pid is not None and stop_pid(pid):
            stopped.append(name)
        (state / f"{name}.pid").unlink(missing_ok=True)
    (state / "cluster.json").unlink(missing_ok=True)
    return stopped


def admin(state: Path, command: str) -> str:
    """One command on HAProxy's stats socket (level admin); its answer."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(state / "haproxy.sock"))
        s.sendall(command.encode() + b"\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data.decode()


def replica_stats(state: Path = CLUSTER) -> dict[str, dict[str, dict[str, str]]]:
    """{backend: {replica: HAProxy's `show stat` row (status, scur = requests in progress, ...)}}."""
    lines = admin(state, "show stat").splitlines()
    head = lines[0].lstrip("# ").split(",")
    out: dict[str, dict[str, dict[str, str]]] = {}
    for line in lines[1:]:
        row = dict(zip(head, line.split(",")))
        if row.get("svname") and row["svname"] not in ("FRONTEND", "BACKEND"):
            out.setdefault(row["pxname"], {})[row["svname"]] = row
    return out


def replica_states(state: Path = CLUSTER) -> dict[str, dict[str, str]]:
    """{backend: {replica: 'UP'|'DOWN'|'DRAIN'|...}} as HAProxy's health checks see them (its stats socket)."""
    return {b: {r: row["status"] for r, row in rows.items()} for b, rows in replica_stats(state).items()}


def _wait(state: Path, done, timeout: float, what: str) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if done(replica_stats(state)):
            return
        time.sleep(0.1)
    raise ServerError(f"{what} within {timeout:.0f} s; see `make cluster-status`")


def reload_cluster(state: Path = CLUSTER, models: list[str] | None = None, timeout: float = 600.0, log=print,
                   drain_timeout: float = 60.0) -> list[dict]:
    """Rolling update: one replica at a time is drained in HAProxy (no new requests; those in progress finish),
    reloaded (server.reload: the new versions load while the old ones serve), put back and seen UP by the health
    checks before the next one. A replica is drained only while another one is UP, so the proxy always has one.
    A replica whose new version fails to load goes back in on its old version and the update stops there
    (ReloadError, exit 2): the replicas after it keep the old version too."""
    from server.reload import ReloadError, reload_server

    try:
        info = json.loads((state / "cluster.json").read_text())
    except (OSError, ValueError):
        raise ReloadError(f"no cluster running (state {state}): start it with `make cluster`") from None
    names, out = [r["name"] for r in info["replicas"]], []
    for name in names:
        stats = replica_stats(state)
        drain = len(names) > 1
        if drain and not all(any(o != name and _up(row) for o, row in rows.items())
                             for rows in stats.values()):
            raise ReloadError(f"no replica but {name} is UP ({_states(stats)}): draining it would leave the proxy "
                              "none; bring the others back first (`make cluster-status`)")
        if drain:
            for backend in stats:
                admin(state, f"set server {backend}/{name} state drain")
            _wait(state, lambda st: all(int(rows[name].get("scur") or 0) == 0 for rows in st.values()),
                  drain_timeout, f"{name} still had requests in progress")
        try:
            done = reload_server(state / name, models, timeout, log=lambda line, n=name: log(f"{n}: {line}"))
        except ReloadError as exc:
            raise ReloadError(f"{name}: {exc}; {name} is back on its old version and the replicas after it were not "
                              "updated") from None
        finally:
            if drain:
                for backend in stats:
                    admin(state, f"set server {backend}/{name} state ready")
                _wait(state, lambda st: all(_up(rows[name]) for rows in st.values()), 30.0,
                      f"{name} was not UP again")
        out += [{"replica": name, **r} for r in done]
    return out


def _up(row: dict) -> bool:
    """Whether the proxy sends requests to the replica: UP, also while a check is in transition ('UP 1/2')."""
    return row["status"].startswith("UP")


def _states(stats: dict) -> str:
    return "; ".join(f"{b}: " + ", ".join(f"{r} {row['status']}" for r, row in rows.items())
                     for b, rows in stats.items())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m server.cluster", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("start", help="start N replicas and the proxy, wait until all are ready")
    st.add_argument("--repo", type=Path, default=ROOT / "model_repository")
    st.add_argument("--replicas", type=int, default=3)
    st.add_argument("--http-port", type=int, default=cli.PORTS["http"])
    st.add_argument("--grpc-port", type=int, default=cli.PORTS["grpc"])
    st.add_argument("--timeout", type=float, default=300, help="seconds each replica may take to get ready")
    sub.add_parser("status", help="each replica as the proxy's health checks see it")
    sub.add_parser("stop", help="stop the proxy and the replicas")
    rl = sub.add_parser("reload", help="rolling update: each replica drained, reloaded, back in, one at a time")
    rl.add_argument("--model", action="append", help="model to reload (repeatable; default: every loaded model)")
    rl.add_argument("--timeout", type=float, default=600, help="seconds a model may take to load (default 600)")
    a = ap.parse_args(argv)

    def body():
        if a.cmd == "start":
            if a.replicas < 1:
                raise ServerError(f"--replicas must be at least 1, got {a.replicas}")
            info = start_cluster(a.repo, a.replicas, a.http_port, a.grpc_port, timeout=a.timeout)
            print(f"{a.replicas} Triton replicas behind HAProxy: HTTP http://127.0.0.1:{a.http_port}, "
                  f"gRPC 127.0.0.1:{a.grpc_port}")
            for r in info["replicas"]:
                print(f"  {r['name']}: pid {r['pid']}, HTTP {r['http']}, gRPC {r['grpc']}, "
                      f"metrics http://127.0.0.1:{r['metrics']}/metrics")
        elif a.cmd == "status":
            try:
                states = replica_states()
            except OSError:
                print("no cluster running")
                return 0
            for backend, servers in states.items():
                print(f"{backend}: " + ", ".join(f"{k} {v}" for k, v in servers.items()))
        elif a.cmd == "reload":
            done = reload_cluster(models=a.model, timeout=a.timeout)
            print(f"{len({r['replica'] for r in done})} replica(s) updated one at a time")
        else:
            stopped = stop_cluster()
            print(f"stopped {', '.join(stopped)}" if stopped else "no cluster running")
        return 0

    return cli.run(body)


if __name__ == "__main__":
    raise SystemExit(main())
