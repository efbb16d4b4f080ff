"""Concurrency sweep: throughput against p99 latency, and the knee under your latency SLO.

    python -m loadtest.sweep --model segformer_b1 --users 1,2,4,8 --duration 20 --slo-ms 8000 [--apply]

Runs `loadtest.run` once per concurrency (bounded in time), prints a table, draws throughput-vs-p99 (PNG) and
names the knee: the highest throughput whose p99 stays within --slo-ms with no failures. With --apply the knee's
concurrency becomes the model's dynamic-batching preferred batch size (capped by max_batch_size) and its max queue
delay is set from the measured compute time, written back into the model's config.pbtxt in --repo (atomically);
restart or reload the model to use it.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from client import cli
from loadtest.run import LoadTestError, add_options, format_run, run


def knee(rows: list[dict], slo_ms: float) -> dict | None:
    ok = [r for r in rows if r["requests"] and not r["failures"] and r.get("p99_ms", math.inf) <= slo_ms]
    return max(ok, key=lambda r: r["img_s"]) if ok else None


def table(rows: list[dict]) -> str:
    lines = [f"{'users':>5} {'img/s':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'fail':>5} {'queue ms':>9} "
             f"{'compute ms':>10} {'batch':>6}"]
    for r in rows:
        s = r.get("server") or {}
        lines.append(f"{r['users']:>5} {r['img_s']:8.2f} {r.get('p50_ms', math.nan):8.0f} "
                     f"{r.get('p90_ms', math.nan):8.0f} {r.get('p99_ms', math.nan):8.0f} {r['failures']:>5} "
                     f"{s.get('queue_ms', math.nan):9.0f} {s.get('compute_ms', math.nan):10.0f} "
                     f"{s.get('avg_batch', math.nan):6.2f}")
    return "\n".join(lines)


def plot(rows: list[dict], slo_ms: float, best: dict | None, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    xs, ys = [r.get("p99_ms", math.nan) for r in rows], [r["img_s"] for r in rows]
    ax.plot(xs, ys, marker="o")
    for r, x, y in zip(rows, xs, ys):
        ax.annotate(f"u={r['users']}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.axvline(slo_ms, color="red", ls="--", lw=1, label=f"SLO p99 {slo_ms:.0f} ms")
    if best:
        ax.scatter([best["p99_ms"]], [best["img_s"]], s=160, facecolors="none", edgecolors="green", lw=2,
                   label=f"knee: u={best['users']}, {best['img_s']:.2f} img/s")
    ax.set_xlabel("p99 latency (ms)")
    ax.set_ylabel("throughput (img/s)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def apply_knee(repo: Path, model: str, best: dict) -> str:
    """Write the knee's batching settings into repo/model/config.pbtxt (atomic replace)."""
    from build.model_config import parse_pbtxt, to_pbtxt
    from segformer.weights import atomic_write_bytes

    path = repo / model / "config.pbtxt"
    if not path.is_file():
        raise LoadTestError(f"{path}: no such model config (is --repo the served repository?)")
    cfg = parse_pbtxt(path.read_text())
    pref = max(1, min(best["users"] * best["batch"], cfg.max_batch_size or 1))
    del cfg.dynamic_batching.preferred_batch_size[:]
    cfg.dynamic_batching.preferred_batch_size.append(pref)
    compute = (best.get("server") or {}).get("compute_ms")
    if compute and not math.isnan(compute):  # wait at most a tenth of one execution for a batch to fill
        cfg.dynamic_batching.max_queue_delay_microseconds = int(compute * 100)
    atomic_write_bytes(path, to_pbtxt(cfg).encode())
    return (f"{path}: preferred_batch_size [{pref}], max_queue_delay_microseconds "
            f"{cfg.dynamic_batching.max_queue_delay_microseconds}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtest.sweep", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(ap)
    ap.set_defaults(duration=20)
    ap.add_argument("--users", default="1,2,4", help="comma-separated concurrencies (default 1,2,4)")
    ap.add_argument("--slo-ms", type=float, required=True, help="p99 latency objective in milliseconds")
    ap.add_argument("--out", type=Path, default=Path("out/sweep"))
    ap.add_argument("--apply", action="store_true", help="write the knee's settings into --repo's config.pbtxt")
    ap.add_argument("--repo", type=Path, default=Path("model_repository"))
    args = ap.parse_args(argv)
    try:
        users = [int(u) for u in args.users.split(",") if u.strip()]
    except ValueError:
        ap.error(f"--users must be integers like 1,2,4; got {args.users!r}")
    if not users or min(users) < 1:
        ap.error("--users needs at least one concurrency >= 1")
    return cli.run(lambda: sweep(args, users))


def sweep(args, users: list[int]) -> int:
    rows = []
    for u in users:
        rows.append(run(args.model, u, args.duration, args.out, args.protocol, args.url, args.metrics_url,
                        args.processes, args.batch, args.images, args.payload, timeout=args.timeout))
        print(format_run(rows[-1]), flush=True)
    best = knee(rows, args.slo_ms)
    print(table(rows))
    plot(rows, args.slo_ms, best, args.out / f"{args.model}_sweep.png",
         f"{args.model} ({args.protocol}, batch {args.batch}): throughput vs p99")
    summary = {"model": args.model, "slo_ms": args.slo_ms, "rows": rows, "knee": best}
    (args.out / f"{args.model}_sweep.json").write_text(json.dumps(summary, indent=1) + "\n")
    if best is None:
        print(f"no concurrency met p99 <= {args.slo_ms:.0f} ms without failures")
        return 1
    print(f"knee: {best['users']} users, {best['img_s']:.2f} img/s at p99 {best['p99_ms']:.0f} ms "
          f"(SLO {args.slo_ms:.0f} ms); plot {args.out / (args.model + '_sweep.png')}")
    if args.apply:
        print("applied: " + apply_knee(args.repo, args.model, best))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
