"""Model updates under load: paced clients (loadtest.soak.paced, HTTP and gRPC at once) while a new version is swapped
in, a broken one is refused and (with --cluster) the replicas are updated one at a time; counts what clients saw.

    python -m bench.updates [--duration 30 --rate 10 --reload-at 10 --broken-at 20] [--cluster 2] \
        --out docs/results/updates_cpu

It builds the row (--row: null, the load generator's null model, or b0: SegFormer-B0 at 256x320 on ONNX Runtime)
into a scratch repository, starts a pip Triton (or --cluster N replicas behind HAProxy) on free ports, and sends
--rate requests/s per protocol for --duration s. At --reload-at it rebuilds the row (`make repo` with FORCE: a new
version folder) and reloads it (`make reload` / `make cluster-reload`); at --broken-at it builds one more version,
corrupts its file and reloads again, which must fail and leave the previous version serving. Writes
updates.json (every count) and updates.md (the table) into --out; exit 1 when a request failed or an answer came
from a version other than the one serving.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from client import cli
from segformer.errors import first_line

PROTOCOLS = ("http", "grpc")


def under_load(targets: dict[str, str], model: str, frames, rate: float, duration: float, actions: list,
               in_flight: int = 2, timeout: float = 30.0) -> dict:
    """Paced requests to each {protocol: url} for `duration` s while `actions` [(at_s, name, fn)] run in this thread
    at their times (fn() -> dict; an exception is recorded as the action's error). Returns every count: requests,
    failures and answers per version, per protocol and per action window."""
    from loadtest.soak import paced

    runs: dict[str, dict] = {}

    def one(protocol, url):
        answers, starts = [], []

        def on_sample():
            starts.append(time.perf_counter())
            return {}

        reqs, samples = paced(url, model, frames, rate, in_flight, duration, timeout, on_sample=on_sample,
                              sample_every=1.0, protocol=protocol, answers=answers)
        t_start = starts[0] - samples[0]["t"]  # paced's clock, from its first sample (taken as it began)
        runs[protocol] = {"requests": [(t + t_start, ms, e) for t, ms, e in reqs],
                          "answers": [(t + t_start, v) for t, v in answers]}

    threads = [threading.Thread(target=one, args=(p, u), daemon=True) for p, u in targets.items()]
    t0 = time.perf_counter() + 0.5
    for t in threads:
        t.start()
    done = []
    for at, name, fn in sorted(actions, key=lambda a: a[0]):
        time.sleep(max(0.0, t0 + at - time.perf_counter()))
        begin = time.perf_counter()
        try:
            result, error = fn() or {}, None
        except Exception as exc:  # noqa: BLE001 - a refused reload is an expected outcome, recorded
            result, error = {}, first_line(exc)
        done.append({"action": name, "start": begin, "end": time.perf_counter(), "result": result, "error": error})
    for t in threads:
        t.join(timeout=duration + 120)
    return summarise(runs, done, t0)


def summarise(runs: dict, actions: list[dict], t0: float) -> dict:
    out = {"protocols": {}, "actions": []}
    for a in actions:
        out["actions"].append({"action": a["action"], "at_s": round(a["start"] - t0, 2),
                               "took_s": round(a["end"] - a["start"], 2), "result": a["result"], "error": a["error"]})
    for protocol, r in sorted(runs.items()):
        failed = [e for _, _, e in r["requests"] if e is not None]
        lat = sorted(ms for _, ms, e in r["requests"] if e is None)
        p = {"requests": len(r["requests"]), "failures": len(failed), "errors": sorted(set(failed))[:5],
             "answers_by_version": dict(Counter(v or "?" for _, v in r["answers"])),
             "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99), "max_ms": round(lat[-1], 1) if lat else None,
             "windows": []}
        bounds = [a["end"] for a in actions] + [float("inf")]
        begin = float("-inf")
        for a, end in zip([None] + actions, bounds):
            # the window from the end of one action to the end of the next: which version answered what was sent
            sent = [v for t, v in r["answers"] if begin <= t < end]
            p["windows"].append({"after": a["action"] if a else "start",
                                 "answers_by_version": dict(Counter(v or "?" for v in sent))})
            begin = end
        out["protocols"][protocol] = p
    out["requests"] = sum(p["requests"] for p in out["protocols"].values())
    out["failures"] = sum(p["failures"] for p in out["protocols"].values())
    return out


def _pct(values: list[float], q: float) -> float | None:
    return round(values[min(len(values) - 1, int(len(values) * q / 100))], 1) if values else None


def stale_answers(summary: dict, protocol: str, after: str, serving: str) -> int:
    """Answers to requests sent after action `after` finished that came from another version than `serving`."""
    for w in summary["protocols"][protocol]["windows"]:
        if w["after"] == after:
            return sum(n for v, n in w["answers_by_version"].items() if v != serving)
    raise KeyError(after)


def corrupt_newest(model_dir: Path) -> Path:
    """Overwrite the newest version's artefact (model.onnx / model.py) with bytes no backend loads."""
    from build.versions import numbers

    newest = model_dir / str(numbers(model_dir)[-1])
    target = next((newest / n for n in ("model.onnx", "model.plan", "model.py") if (newest / n).is_file()))
    target.write_bytes(b"\x00 not a model: truncated by a failed copy (\n")
    return target


def _row(kind: str):
    from build.variants import PYTHON_NULL, PYTHON_ORT, ServingVariant

    if kind == "null":
        return ServingVariant("updates_null", "segformer-b0-camvid", PYTHON_NULL, size=(64, 64), max_batch=4)
    return ServingVariant("updates_b0", "segformer-b0-camvid", PYTHON_ORT, size=(256, 320), max_batch=2)


def _markdown(res: dict) -> str:
    s = res["summary"]
    lines = [f"# Model updates under load ({res['row']}, {res['where']})", "",
             f"{res['rate']:g} requests/s per protocol for {res['duration']:g} s, {res['in_flight']} in flight each; "
             f"{res['when']}. Host: {res['host']}.", "",
             "| action | at (s) | `make repo` (s) | reload (s) | outcome |", "|---|---|---|---|---|"]
    for a in s["actions"]:
        lines.append(f"| {a['action']} | {a['at_s']} | {a.get('build_s')} | {a.get('reload_s')} | "
                     f"{a['error'] or json.dumps(a['result'])} |")
    lines += ["", "Requests are counted by the version that answered, in windows from the end of one action to the end "
                  "of the next (by the time each request was sent).", "",
              "| protocol | requests | failed | p50 / p99 / max ms | answers by version | after each action |",
              "|---|---|---|---|---|---|"]
    for p, c in s["protocols"].items():
        wins = "; ".join(f"{w['after']}: " + ", ".join(f"v{v} {n}" for v, n in sorted(w["answers_by_version"].items()))
                         for w in c["windows"])
        lines.append(f"| {p} | {c['requests']} | {c['failures']} | {c['p50_ms']} / {c['p99_ms']} / {c['max_ms']} | "
                     + ", ".join(f"v{v} {n}" for v, n in sorted(c["answers_by_version"].items())) + f" | {wins} |")
    lines += ["", f"Stale answers (sent after a switch, answered by another version than the one serving): "
                  f"{res['stale']}. Failed requests: {s['failures']} of {s['requests']}.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.updates", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--row", choices=("null", "b0"), default="b0")
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--rate", type=float, default=10.0, help="requests/s per protocol")
    ap.add_argument("--in-flight", type=int, default=2)
    ap.add_argument("--reload-at", type=float, default=10.0)
    ap.add_argument("--broken-at", type=float, default=20.0)
    ap.add_argument("--cluster", type=int, default=0, help="N replicas behind HAProxy (rolling update) instead of one")
    ap.add_argument("--out", type=Path, default=Path("out/updates"))
    ap.add_argument("--build", type=Path, help=argparse.SUPPRESS)  # (re)build the row into this repository, exit
    ap.add_argument("--force", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.build:
        return build_row(_row(args.row), args.build, args.force)
    return cli.run(lambda: _main(args))


def build_row(row, repo: Path, force: bool = False) -> int:
    from build.repository import write_repository

    res = write_repository([row], repo, force=force, log=lambda *_: None, cache_dir=repo.parent / "cache")
    if res[row.name] != "built":
        raise SystemExit(f"{row.name}: {res[row.name]}")
    return 0


def _main(args) -> int:
    import subprocess
    import sys

    from client.policy import InputPolicy
    from client.runners import TritonRunner
    from server.reload import reload_server
    from server.cluster import free_port
    from server.serve import start, stop_pid

    row = _row(args.row)
    tmp = Path(tempfile.mkdtemp(prefix="updates."))
    repo = tmp / "repo"

    def build(force=False):  # in its own process, as `make repo` runs beside a server (not in the clients' one)
        subprocess.run([sys.executable, "-m", "bench.updates", "--row", args.row, "--build", str(repo)]
                       + (["--force"] if force else []), check=True, capture_output=True)

    build()
    stop, where = None, "one pip Triton"
    try:
        if args.cluster:
            from server.cluster import reload_cluster, start_cluster, stop_cluster

            state = tmp / "cluster"
            info = start_cluster(repo, args.cluster, free_port(), free_port(), state=state)
            stop, where = (lambda: stop_cluster(state)), f"{args.cluster} replicas behind HAProxy"
            targets = {"http": f"localhost:{info['http']}", "grpc": f"localhost:{info['grpc']}"}

            def reload():
                return {"replicas": [f"{r['replica']}: version {r['serving']}" for r in
                                     reload_cluster(state, [row.name], log=lambda *_: None)]}
        else:
            ports = [free_port() for _ in range(3)]
            proc = start(repo, *ports, state=tmp / "state")
            stop = lambda: stop_pid(proc.pid)  # noqa: E731
            targets = {"http": f"localhost:{ports[0]}", "grpc": f"localhost:{ports[1]}"}

            def reload():
                return {"serving": reload_server(tmp / "state", [row.name], log=lambda *_: None)[0]["serving"]}
        with TritonRunner(row.name, targets["http"]) as r:
            frames = InputPolicy.for_model(r.info).frames(None, 4)

        timing: dict[str, dict] = {}

        def update(name, broken=False):
            def action():
                t0 = time.perf_counter()
                build(force=True)
                if broken:
                    corrupt_newest(repo / row.name)
                t1 = time.perf_counter()
                timing[name] = {"build_s": round(t1 - t0, 2)}
                try:
                    return reload()
                finally:
                    timing[name]["reload_s"] = round(time.perf_counter() - t1, 2)
            return action

        actions = [(args.reload_at, "new version + reload", update("new version + reload")),
                   (args.broken_at, "broken version + reload", update("broken version + reload", broken=True))]
        summary = under_load(targets, row.name, frames, args.rate, args.duration, actions, args.in_flight)
        for a in summary["actions"]:
            a.update(timing.get(a["action"], {}))
    finally:
        if stop:
            stop()
        shutil.rmtree(tmp, ignore_errors=True)
    stale = sum(stale_answers(summary, p, a, "2") for p in targets for a in
                ("new version + reload", "broken version + reload"))
    import os

    host = f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at the end (other work included)"
    res = {"row": row.name, "where": where, "host": host, "rate": args.rate, "duration": args.duration,
           "in_flight": args.in_flight, "when": f"new version at {args.reload_at:g} s, broken version at "
                                               f"{args.broken_at:g} s", "stale": stale, "summary": summary}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(_markdown(res))
    print(_markdown(res))
    return 1 if summary["failures"] or stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
