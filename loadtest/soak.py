"""Soak: a steady load for a long time, watching failures, latency and the server's memory.

    python -m loadtest.soak --model segformer_b0 --duration 600 [--load 0.8] [--in-flight 2] \
        [--probe 20] [--sample 5] --out docs/results/soak_cpu/segformer_b0

First a closed-loop probe (--in-flight requests kept in flight for --probe seconds) measures what the server
sustains; the soak then paces requests at --load x that rate (default 80 %) from --in-flight threads for
--duration seconds (gRPC, one image per request). Every --sample seconds it records the resident memory (RSS,
from /proc) of the Triton process and all its children (the python-backend stubs run the models), and with
--gpu the GPU memory in use (nvidia-smi). Writes ``soak.json`` (every request, samples, summary) and
``soak.png`` (p50/p99 per window, RSS over time) into --out, and prints the summary: failed requests, RSS drift
after warm-up (last minute vs first minute after --warmup) and the p99 slope (least squares over the windows).
Exit code 1 when any request failed. Targets are this machine only.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import threading
import time
from pathlib import Path

import numpy as np

from client import cli
from loadtest.closed_loop import _first_line
from loadtest.run import _local

ROOT = Path(__file__).resolve().parent.parent


def tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and every descendant (0 when it is gone)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
        todo += children.get(p, [])
    return total


def gpu_used_mib() -> float | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout
        return float(sum(float(x) for x in out.split()))
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


def server_pids(explicit: str | None, urls: list[str]) -> list[int]:
    """The Triton processes whose memory is sampled: --server-pid a,b, or the one `make serve` recorded."""
    if explicit:
        try:
            return [int(p) for p in explicit.split(",") if p.strip()]
        except ValueError:
            raise ValueError(f"--server-pid takes pids separated by commas, got {explicit!r}") from None
    if len(urls) > 1:
        raise ValueError("with several --url servers, pass --server-pid PID1,PID2 (each server's pid) so the "
                         "memory samples cover them all")
    try:
        return [int(json.loads((ROOT / ".triton" / "server.pid").read_text())["pid"])]
    except (OSError, ValueError, KeyError):
        raise ValueError("no server pid: start it with `make serve` or pass --server-pid") from None


def _send_loop(urls, first, model, frames, schedule, stop_at, timeout, record, protocol="grpc"):
    """One thread: take the next send time from `schedule`, wait for it, send, record (t, ms, error or None, the
    model version that answered or None).
    With several servers the thread starts on server `first`; when its server goes away, that failure is
    recorded (with the server's address) and the thread goes on with the next server (client.runners.Failover)."""
    from client.runners import Failover, TritonRunner
    from client.runners.triton import model_version

    def connect(url):  # this thread's runner (and connection) on `url`
        runner = TritonRunner(model, url, protocol, timeout)
        runner.connect()
        return runner

    servers = Failover(urls, connect, lambda r: r.deactivate(), first=first)
    servers.start()
    i = 0
    while True:
        t_next = schedule()
        if t_next is None or t_next >= stop_at:
            break
        delay = t_next - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        batch = frames[i % len(frames)][None]
        i += 1
        t0 = time.perf_counter()
        err = version = None
        try:
            if not servers.ensure():
                raise ConnectionError(f"no Triton server left of {', '.join(urls)}")
            version = model_version(servers.current.send([servers.current.images_input(batch)]))
        except Exception as exc:  # noqa: BLE001 - every failure is recorded with its message
            err = servers.label(_first_line(exc))
        record((t0, 1e3 * (time.perf_counter() - t0), err, version))
        if err is not None:
            servers.failed(err)
    servers.stop()


def paced(url, model, frames, rate: float | None, in_flight: int, duration: float, timeout: float,
          on_sample=None, sample_every: float = 5.0, protocol: str = "grpc", answers: list | None = None
          ) -> tuple[list, list]:
    """Send for `duration` s: at `rate` req/s when given (closed loop otherwise); returns (requests, samples).
    `url` may list several servers (a,b): the threads are spread over them. `answers`, when given, receives
    (t, model version) of every answered request (t on the requests' clock: seconds from the run's start)."""
    from client.cli import split_urls

    urls = split_urls(url)
    t_start = time.perf_counter() + 0.5
    stop_at = t_start + duration
    lock, counter, records, samples = threading.Lock(), [0], [], []

    def schedule():
        with lock:
            k = counter[0]
            counter[0] += 1
        return t_start + k / rate if rate else (time.perf_counter() if time.perf_counter() < stop_at else None)

    def record(r):
        with lock:
            records.append(r)

    threads = [threading.Thread(target=_send_loop, args=(urls, j, model, frames, schedule, stop_at, timeout, record, protocol),
                                daemon=True) for j in range(in_flight)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        if on_sample is not None:
            samples.append({"t": time.perf_counter() - t_start, **on_sample()})
        deadline = time.perf_counter() + sample_every
        while time.perf_counter() < deadline and any(t.is_alive() for t in threads):
            time.sleep(0.2)
    records.sort(key=lambda r: r[0])
    if answers is not None:
        answers.extend((t - t_start, v) for t, _, err, v in records if err is None)
    return [(t - t_start, ms, err) for t, ms, err, _ in records], samples


def summarise(requests: list, samples: list, duration: float, warmup: float, window: float | None = None) -> dict:
    window = window or max(1.0, min(30.0, duration / 10))  # 30 s windows; at least 10 windows in a short run
    ok = [(t, ms) for t, ms, err in requests if err is None]
    errors = [err for _, _, err in requests if err is not None]
    windows = []
    for w0 in np.arange(0, duration, window):
        lat = [ms for t, ms in ok if w0 <= t < w0 + window]
        if lat:
            windows.append({"t": float(w0 + window / 2), "n": len(lat), "p50_ms": float(np.percentile(lat, 50)),
                            "p99_ms": float(np.percentile(lat, 99))})
    steady = [w for w in windows if w["t"] > warmup]
    slope = (float(np.polyfit([w["t"] / 60 for w in steady], [w["p99_ms"] for w in steady], 1)[0])
             if len(steady) >= 3 else None)
    rss = [(s["t"], s["rss_mb"]) for s in samples if s.get("rss_mb")]
    steady_rss = [(t, r) for t, r in rss if t >= warmup] or rss  # a soak shorter than its warm-up: every sample
    start = steady_rss[0][0] if steady_rss else 0.0
    span = min(60.0, max(1.0, (steady_rss[-1][0] - start) / 3)) if steady_rss else 60.0
    first = [r for t, r in steady_rss if t < start + span]
    last = [r for t, r in steady_rss if t >= steady_rss[-1][0] - span]
    drift = (float(np.mean(last) / np.mean(first) - 1) if first and last else None)
    lat = [ms for _, ms in ok]
    return {"requests": len(requests), "failures": len(errors), "errors": sorted(set(errors))[:5],
            "img_per_s": len(ok) / duration, "p50_ms": float(np.percentile(lat, 50)) if lat else None,
            "p99_ms": float(np.percentile(lat, 99)) if lat else None, "p99_slope_ms_per_min": slope,
            "rss_first_min_mb": float(np.mean(first)) if first else None,
            "rss_last_min_mb": float(np.mean(last)) if last else None, "rss_drift": drift, "windows": windows}


def figure(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["summary"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.6))
    ws = s["windows"]
    a1.plot([w["t"] / 60 for w in ws], [w["p50_ms"] for w in ws], marker=".", label="p50")
    a1.plot([w["t"] / 60 for w in ws], [w["p99_ms"] for w in ws], marker=".", label="p99")
    a1.set(xlabel="minutes", ylabel="ms per request", title=f"{result['model']}: p50 / p99 per window")
    a1.legend()
    sm = result["samples"]
    a2.plot([x["t"] / 60 for x in sm], [x["rss_mb"] for x in sm], label="server RSS (MB)")
    if any(x.get("gpu_mib") for x in sm):
        a2.plot([x["t"] / 60 for x in sm], [x.get("gpu_mib") for x in sm], label="GPU memory used (MiB)")
    a2.axvline(result["warmup_s"] / 60, color="grey", lw=0.8, ls="--")
    a2.set(xlabel="minutes", ylabel="MB", title=f"memory (drift after warm-up {100 * (s['rss_drift'] or 0):+.2f} %)")
    a2.legend()
    for a in (a1, a2):
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtest.soak", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_model_option(ap, "segformer_b0")
    cli.add_server_options(ap, default="grpc", timeout=60.0)
    ap.add_argument("--duration", type=float, default=600.0, help="soak seconds")
    ap.add_argument("--load", type=float, default=0.8, help="share of the probed rate to send (default 0.8)")
    ap.add_argument("--rate", type=float, help="requests/s to send (skips the probe)")
    ap.add_argument("--in-flight", type=int, default=2, help="sending threads (probe: requests in flight)")
    ap.add_argument("--probe", type=float, default=20.0, help="seconds of closed-loop probe")
    ap.add_argument("--warmup", type=float, default=60.0, help="seconds before RSS drift is measured")
    ap.add_argument("--sample", type=float, default=5.0, help="seconds between memory samples")
    ap.add_argument("--gpu", action="store_true", help="also sample GPU memory (nvidia-smi)")
    ap.add_argument("--server-pid", help="Triton's pid, or pids a,b with several --url (default: the one `make "
                    "serve` recorded); memory is the sum over them")
    ap.add_argument("--out", type=Path, default=Path("out/soak"))
    ap.add_argument("--images", default="", help="folder of images to send (default: generated frames)")
    args = ap.parse_args(argv)
    args.url = cli.url_of(args)
    return cli.run(lambda: _soak(args), handled=(ValueError, OSError))


def _soak(args) -> int:
    from client.cli import split_urls
    from client.policy import InputPolicy
    from client.runners import RunnerError, TritonRunner

    urls = split_urls(args.url)
    for u in urls:
        _local(u)
    pids = server_pids(args.server_pid, urls)
    probe_runner = TritonRunner(args.model, urls[0], args.protocol, args.timeout)
    try:
        frames = InputPolicy.for_model(probe_runner.activate()).frames(args.images, 4)
    finally:
        probe_runner.deactivate()
    rate = args.rate
    probe = None
    if rate is None:
        reqs, _ = paced(args.url, args.model, frames, None, args.in_flight, args.probe, args.timeout,
                        protocol=args.protocol)
        good = [r for r in reqs if r[2] is None and r[0] > min(5.0, args.probe / 4)]
        measured = len(good) / (args.probe - min(5.0, args.probe / 4))
        if not measured:
            raise RunnerError(f"the probe completed no request ({reqs[0][2] if reqs else 'none sent'})")
        rate = args.load * measured
        probe = {"in_flight": args.in_flight, "seconds": args.probe, "img_per_s": measured}
        print(f"probe: {measured:.2f} img/s at {args.in_flight} in flight; soak at {rate:.2f} req/s")

    def sample():
        s = {"rss_mb": sum(tree_rss(p) for p in pids) / 2**20}
        if args.gpu:
            s["gpu_mib"] = gpu_used_mib()
        return s

    reqs, samples = paced(args.url, args.model, frames, rate, args.in_flight, args.duration, args.timeout,
                          on_sample=sample, sample_every=args.sample, protocol=args.protocol)
    summary = summarise(reqs, samples, args.duration, args.warmup)
    result = {"model": args.model, "protocol": args.protocol, "endpoints": urls, "duration_s": args.duration, "warmup_s": args.warmup, "rate": rate,
              "load": args.load if probe else None, "probe": probe, "in_flight": args.in_flight,
              "summary": summary, "samples": samples,
              "failed_requests": [{"t": round(t, 3), "error": e} for t, _, e in reqs if e is not None][:1000]}
    from segformer.weights import atomic_write_bytes

    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out / "soak.json", (json.dumps(result) + "\n").encode())
    figure(result, args.out / "soak.png")
    s = summary
    drift = "n/a" if s["rss_drift"] is None else f"{100 * s['rss_drift']:+.2f} %"
    rss = (f"RSS {s['rss_first_min_mb']:.0f} -> {s['rss_last_min_mb']:.0f} MB ({drift})"
           if s["rss_first_min_mb"] is not None else "RSS not sampled")
    slope = "n/a" if s["p99_slope_ms_per_min"] is None else f"{s['p99_slope_ms_per_min']:+.2f} ms/min"
    print(f"{args.model}: {s['requests']} requests in {args.duration:.0f} s ({s['img_per_s']:.2f} img/s), "
          f"{s['failures']} failed; p50 {s['p50_ms'] or float('nan'):.1f} ms, p99 {s['p99_ms'] or float('nan'):.1f} "
          f"ms, p99 slope {slope}; {rss}" + (f"; errors: {s['errors'][0]}" if s["errors"] else ""))
    return 1 if s["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
