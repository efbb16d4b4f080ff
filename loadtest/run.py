"""One bounded, headless locust run against a local Triton, with the server's own metrics around it.

    python -m loadtest.run --model segformer_b1 --users 4 --duration 30 [--processes 2] [--protocol grpc]

Locust runs in --processes worker processes (a single Python process caps the load it can make), for a fixed
time, and writes its CSV and HTML report into --out. Before and after, Triton's metrics endpoint is scraped, so the
summary shows throughput (img/s), p50/p90/p99 latency and failures from the client side next to queue time,
compute time and executed batch sizes from the server side. Targets are localhost only.

Locust's master listens on 127.0.0.1 on a free port (not its fixed 5557 on every interface), and the run is one
process group: its workers end with it, whatever way it ends.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from client import cli
from loadtest import metrics
from segformer.errors import ProjectError

ROOT = Path(__file__).resolve().parent.parent
LOCAL = ("localhost", "127.0.0.1", "[::1]")


class LoadTestError(ProjectError, ValueError):
    """A load test that cannot run as asked (exit 2); a ValueError for callers that caught that."""


def _local(url: str) -> str:
    host = url.split("://")[-1].rsplit(":", 1)[0]
    if host not in LOCAL:
        raise LoadTestError(f"{url}: load tests target this machine only (localhost / 127.0.0.1)")
    return url


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def end_group(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """End the process group `proc` leads (locust's master and the workers it forked): SIGTERM, then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        t0 = time.time()
        while time.time() - t0 < wait:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                proc.poll()
                return
            proc.poll()
            time.sleep(0.05)
    proc.poll()


def why_nothing(log: str, limit: int = 240) -> str:
    """One readable line from a run's log saying why no request completed: the users' own `error:` line, else
    locust's last exception or error line (bytes literals and tracebacks never reach the summary)."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    ours = [ln.split("error: ", 1)[1] for ln in lines if "/ERROR/loadtest:" in ln and "error: " in ln]
    if ours:
        return ours[-1][:limit]
    known = {"Address already in use": "locust's master could not bind its port (address already in use)",
             "last worker went missing": "locust's workers stopped answering the master (no heartbeat: busy or "
                                         "stuck, e.g. an overloaded machine); try fewer --processes",
             "did not stop within": "locust did not stop in time and was killed"}
    for pattern, reason in known.items():
        if any(pattern in ln for ln in lines):
            return reason
    exc = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception)\b.*:", ln)]
    errs = exc or [ln for ln in lines if "ERROR" in ln or "Error" in ln or "error" in ln]
    if not errs:
        return "locust started no request (see the run's .log)"
    text = re.sub(r"^\[[^]]*\] \S+/\w+/[\w.]+: ", "", errs[-1])
    return text[:limit]


def _percentile(hist: dict[float, int], q: float) -> float:
    total = sum(hist.values())
    if not total:
        return float("nan")
    seen = 0
    for t in sorted(hist):
        seen += hist[t]
        if seen >= q * total:
            return float(t)
    return float(max(hist))


def read_csv_stats(prefix: Path, duration: float | None = None) -> dict | None:
    """The 'Aggregated' row of locust's <prefix>_stats.csv (written by the master only), or None."""
    import csv

    path = Path(f"{prefix}_stats.csv")
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        row = next((r for r in csv.DictReader(f) if r.get("Name") == "Aggregated"), None)
    if not row or not int(row["Request Count"]):
        return None
    n = int(row["Request Count"])
    return {"requests": n, "failures": int(row["Failure Count"]),
            "rps": n / duration if duration else float(row["Requests/s"]),
            "p50_ms": float(row["50%"]), "p90_ms": float(row["90%"]), "p99_ms": float(row["99%"]),
            "avg_ms": float(row["Average Response Time"]), "max_ms": float(row["Max Response Time"])}


def read_stats(prefix: Path, duration: float | None = None) -> dict:
    """Final stats of a run: locust's CSV (the master's aggregate), else its <prefix>.json (all request names
    together). With --processes the workers write the same JSON path after the master, sometimes empty, so the
    CSV is preferred. Throughput over `duration` (the run's fixed length, start-up included) when given."""
    from_csv = read_csv_stats(prefix, duration)
    if from_csv:
        return from_csv
    path = Path(f"{prefix}.json")
    entries = json.loads(path.read_text() or "[]") if path.is_file() else []
    n = sum(e["num_requests"] for e in entries)
    if not n:
        return {"requests": 0, "failures": sum(e.get("num_failures", 0) for e in entries)}
    hist: dict[float, int] = {}
    for e in entries:
        for t, c in e["response_times"].items():
            hist[float(t)] = hist.get(float(t), 0) + c
    span = duration or (max(e["last_request_timestamp"] for e in entries) - min(e["start_time"] for e in entries))
    return {"requests": n, "failures": sum(e["num_failures"] for e in entries),
            "rps": n / span if span > 0 else float("nan"), "p50_ms": _percentile(hist, 0.5),
            "p90_ms": _percentile(hist, 0.9), "p99_ms": _percentile(hist, 0.99),
            "avg_ms": sum(e["total_response_time"] for e in entries) / n,
            "max_ms": max(e["max_response_time"] for e in entries)}


def run(model: str, users: int, duration: float, out: Path, protocol: str = "grpc", url: str | None = None,
        metrics_url: str = cli.default_url("metrics"), processes: int = 2, batch: int = 1, images: str = "",
        payload: str = "raw", quiet: bool = True, timeout: float | None = None) -> dict:
    url = url or cli.default_url(protocol)
    for u in url.split(","):
        _local(u.strip())
    _local(metrics_url)
    out.mkdir(parents=True, exist_ok=True)
    prefix = out / f"{model}_u{users}"
    for stale in out.glob(f"{prefix.name}[._]*"):  # a run that fails must not report the previous run's numbers
        if stale.is_file() and (stale.name.startswith(prefix.name + "_") or stale.suffix in (".json", ".html")):
            stale.unlink()
    user_class = "TritonGrpcUser" if protocol == "grpc" else "TritonHttpUser"
    procs = max(1, min(processes, users))
    cmd = [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtest" / "locustfile.py"), "--headless",
           "-u", str(users), "-r", str(users), "-t", f"{int(duration)}s", "--stop-timeout", "5",
           "--host", url, "--csv", str(prefix), "--html", f"{prefix}.html", "--only-summary",
           "--json-file", str(prefix),
           "--model", model, "--batch", str(batch), "--payload", payload, user_class]
    if images:
        cmd += ["--images", images]
    if timeout:
        cmd += ["--request-timeout", str(timeout)]
    if procs > 1:  # the master on loopback, on a free port (workers are forked with the same options)
        port = free_port()
        cmd += ["--processes", str(procs), "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
                "--master-host", "127.0.0.1", "--master-port", str(port)]
    try:
        before = metrics.scrape(metrics_url)
    except OSError:
        before = None
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    limit = duration + 60
    log_path = out / f"{model}_u{users}.log"
    # Its own process group: the workers locust forks end with the run, however it ends (time-out, Ctrl-C, a
    # master that exits while a worker hangs). The log goes to a file, not a pipe: a worker still holding a pipe
    # would keep the run waiting for its end-of-file after the master is gone.
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True)
    killed = False
    try:  # bounded: locust stops itself at -t; the kill is the guard if it does not
        proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        killed = True
    finally:
        end_group(proc, grace=3.0)  # the master first if it still runs, and any worker left behind
    log = log_path.read_text(errors="replace")
    if killed:
        log = f"locust did not stop within {limit:.0f} s and was killed\n{log}"
        log_path.write_text(log)
    wall = time.perf_counter() - t0
    stats = read_stats(prefix, duration)
    stats.update({"model": model, "users": users, "processes": procs, "batch": batch, "protocol": protocol,
                  "duration_s": duration, "wall_s": round(wall, 1)})
    stats["img_s"] = stats.get("rps", 0.0) * batch
    try:
        after = metrics.scrape(metrics_url)
        stats["server"] = metrics.breakdown(metrics.diff(before or {}, after, model)) if before is not None else None
    except OSError:
        stats["server"] = None
        stats["note"] = (f"metrics endpoint {metrics_url} unreachable after the run: the server may have died"
                         if before is not None else f"metrics endpoint {metrics_url} unreachable")
    if stats["requests"] == 0:
        stats["note"] = f"no request completed: {why_nothing(log)}"
    (out / f"{model}_u{users}_summary.json").write_text(json.dumps(stats, indent=1) + "\n")
    if not quiet:
        print(format_run(stats))
    return stats


def format_run(s: dict) -> str:
    line = (f"{s['model']} u={s['users']} ({s['protocol']}, {s['processes']} proc, batch {s['batch']}): "
            f"{s.get('img_s', 0):.2f} img/s, p50 {s.get('p50_ms', float('nan')):.0f} ms, "
            f"p90 {s.get('p90_ms', float('nan')):.0f} ms, p99 {s.get('p99_ms', float('nan')):.0f} ms, "
            f"{s['requests']} requests, {s['failures']} failed")
    srv = s.get("server")
    if srv and srv["requests"]:
        line += (f"\n  server: {srv['server_ms']:.0f} ms/request = queue {srv['queue_ms']:.0f} ms + compute "
                 f"{srv['compute_ms']:.0f} ms; {srv['executions']:.0f} executions, avg batch {srv['avg_batch']:.2f}"
                 f"; client-side overhead {max(0.0, s.get('avg_ms', 0) - srv['server_ms']):.0f} ms/request")
    if s.get("note"):
        line += f"\n  note: {s['note']}"
    return line


def add_options(ap: argparse.ArgumentParser) -> None:
    """The options `run` and `sweep` share (defaults from the CLI kit)."""
    ap.add_argument("--model", default=cli.DEFAULT_MODEL, help=f"served model (default {cli.DEFAULT_MODEL})")
    ap.add_argument("--duration", type=float, default=30, help="seconds")
    ap.add_argument("--processes", type=int, default=2, help="locust worker processes")
    cli.add_server_options(ap, protocols=("grpc", "http"), default="grpc", timeout=60.0, metrics=True)
    ap.add_argument("--batch", type=int, default=1)
    cli.add_images_option(ap)
    ap.add_argument("--payload", choices=("raw", "png", "jpeg"), default="raw")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtest.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=4, help="concurrent users (requests in flight)")
    add_options(ap)
    ap.add_argument("--out", type=Path, default=Path("out/loadtest"))
    args = ap.parse_args(argv)

    def body():
        s = run(args.model, args.users, args.duration, args.out, args.protocol, args.url, args.metrics_url,
                args.processes, args.batch, args.images, args.payload, quiet=False, timeout=args.timeout)
        print(f"locust report: {args.out / (args.model + '_u' + str(args.users))}.html")
        return 0 if s["requests"] and not s["failures"] else 1

    return cli.run(body)


if __name__ == "__main__":
    raise SystemExit(main())
