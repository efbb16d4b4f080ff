"""A lean multi-process closed-loop load generator for rates where locust's per-request overhead shows.

    python -m loadtest.closed_loop --model segformer_b1_gpu --processes 8 --concurrency 2 --duration 15 \
        --payload jpeg [--images DIR] [--batch 1] [--out results/served.json]

Each of --processes processes runs --concurrency threads; each thread has its own gRPC client and keeps one
request in flight (closed loop), so in-flight requests = processes x concurrency. Payloads:
- ``raw``: the uint8 [n,H,W,3] tensor in the gRPC message (3 MB per 1024² image);
- ``raw-shm``: the tensor written into a system shared-memory region for every request (one memcpy), no
  payload on the wire;
- ``raw-cuda``: the frames already on the GPU (a camera pipeline decoding on the same host), copied for every
  request into a CUDA shared-memory region of the load process (one device-to-device copy); the server maps the
  region (CUDA IPC) and the model reads the frames where they are. Needs PyTorch with CUDA in the load process.
- ``jpeg``: the image's JPEG bytes (the model's ``encoded`` input), decoded by the server.
Labels come back through a system shared-memory region per thread (no 1 MB/image payload on the wire), or in the
response with ``--output wire`` (the only way through a proxy: a region is registered with one server only).
Latency is measured per request around the blocking call; throughput counts images completed in the measured
window (after --warmup seconds). Failures are counted with their first message; the run always ends on time.
Targets are localhost only.
"""
from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import threading
import time
from pathlib import Path

import numpy as np

from client import cli
from client.cli import split_urls
from client.cuda_region import CudaRegion
from client.runners import Failover, describe_failure
from loadtest.run import _local
from segformer.config import parse_size

ROOT = Path(__file__).resolve().parent.parent


def _first_line(exc: BaseException) -> str:
    """An exception as one line, also when its message is empty (then its type); a server that went away says so."""
    return describe_failure(exc)[:300]

def _distinct(errors: list[str], n: int = 8) -> list[str]:
    """The first `n` different messages, each with how often it came."""
    counts: dict[str, int] = {}
    for e in errors:
        counts[e] = counts.get(e, 0) + 1
    return [f"{e} (x{c})" if c > 1 else e for e, c in list(counts.items())[:n]]


def _frames(policy, folder: str, n: int = 8) -> list[np.ndarray]:
    """Request tensors prepared by the model's input policy (what client.segment sends)."""
    return policy.frames(folder, n)


def _jpeg(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _client_module(protocol: str):
    if protocol == "http":
        import tritonclient.http as tc
    else:
        import tritonclient.grpc as tc
    return tc


def _thread(args, frames, tag: str, stop_at: float, measure_from: float, out: list, errors: list,
            first: int = 0, cuda: CudaRegion | None = None, slot: int = 0):
    """One request in flight until stop_at. With several --url servers the thread starts on server `first` and,
    when its server goes away, moves on to the next (client.runners.Failover; the failed request is counted,
    never retried silently)."""
    import tritonclient.utils.shared_memory as shm

    tc = _client_module(args.protocol)
    urls = split_urls(args.url)
    batches = [np.stack([frames[(i + j) % len(frames)] for j in range(args.batch)]) for i in range(len(frames))]
    # a dynamic-size row takes each image at its own placed size: the regions fit the largest batch, and each
    # request names its own byte counts
    in_sizes = [b.nbytes for b in batches]
    out_sizes = [b.shape[0] * b.shape[1] * b.shape[2] for b in batches]
    in_bytes, out_bytes = max(in_sizes), max(out_sizes)
    oname, iname = f"out_{tag}", f"in_{tag}"
    wire = args.output == "wire"
    regions = [] if wire else [(oname, shm.create_shared_memory_region(oname, f"/{oname}", out_bytes))]
    if args.payload == "raw-shm":
        regions.append((iname, shm.create_shared_memory_region(iname, f"/{iname}", in_bytes)))
    ihandle = regions[-1][1] if regions else None

    def connect(url):
        client = tc.InferenceServerClient(url)  # made in this thread, used only by it
        try:
            if not wire:
                client.register_system_shared_memory(oname, f"/{oname}", out_bytes)
            if args.payload == "raw-shm":
                client.register_system_shared_memory(iname, f"/{iname}", in_bytes)
            if cuda is not None:
                cuda.register(client)
        except Exception:
            client.close()
            raise
        return client

    def close(client):
        for name, _ in regions:
            try:
                client.unregister_system_shared_memory(name)
            except Exception:  # noqa: BLE001 - the server may be gone
                pass
        client.close()

    servers = Failover(urls, connect, close, first=first)

    timeout = {"client_timeout": args.timeout} if args.protocol == "grpc" else {"timeout": int(args.timeout)}
    try:
        outputs = {}
        for n in set(out_sizes):
            outputs[n] = tc.InferRequestedOutput("labels")
            if not wire:
                outputs[n].set_shared_memory(oname, n)
        if args.payload == "jpeg":
            if args.batch != 1:
                raise ValueError("--payload jpeg sends one image per request: use --batch 1")
            blobs = [np.frombuffer(_jpeg(f), np.uint8)[None] for f in frames]
        if cuda is not None:
            import torch

            on_gpu = [torch.from_numpy(b).to(f"cuda:{cuda.device}") for b in batches]
        problems = servers.start()
        if servers.current is None:
            raise RuntimeError("; ".join(problems))
        i = 0
        while time.perf_counter() < stop_at:
            k = i % len(batches)
            i += 1
            if args.payload == "jpeg":
                inp = tc.InferInput("encoded", list(blobs[k].shape), "UINT8")
                inp.set_data_from_numpy(blobs[k])
            else:
                inp = tc.InferInput("images", list(batches[k].shape), "UINT8")
                if args.payload == "raw-shm":
                    shm.set_shared_memory_region(ihandle, [batches[k]])
                    inp.set_shared_memory(iname, in_sizes[k])
                elif cuda is not None:
                    inp.set_shared_memory(cuda.name, in_sizes[k], offset=cuda.write(slot, on_gpu[k]))
                else:
                    inp.set_data_from_numpy(batches[k])
            t0 = time.perf_counter()
            msg = None
            try:
                if not servers.ensure():
                    raise ConnectionError(f"no Triton server left of {', '.join(urls)}")
                servers.current.infer(args.model, [inp], outputs=[outputs[out_sizes[k]]], **timeout)
            except Exception as exc:  # noqa: BLE001 - counted and reported, never hidden
                msg = servers.label(_first_line(exc))
            t1 = time.perf_counter()
            if t0 >= measure_from:
                out.append((t0, t1, msg is None))
            if msg is not None:
                moved = servers.failed(msg)
                if len(errors) < 3 or moved:
                    errors.append(msg)
    except Exception as exc:  # noqa: BLE001 - a thread that cannot start (or reconnect) is a failure of the run
        errors.append(f"setup: {_first_line(exc)}")
        out.append((time.perf_counter(), time.perf_counter(), False))  # a thread that never ran is a failure
    finally:
        servers.stop()
        for _, handle in regions:
            shm.destroy_shared_memory_region(handle)


def _process(args, policy, rank: int, t_start: float, queue) -> None:
    frames = _frames(policy, args.images)
    biggest = max(f.nbytes for f in frames)
    stop_at = t_start + args.warmup + args.duration
    measure_from = t_start + args.warmup
    results, errors = [], []
    cuda = None
    if args.payload == "raw-cuda":
        try:
            cuda = CudaRegion(f"cin_{os.getpid()}", args.batch * biggest, args.concurrency)
        except Exception as exc:  # noqa: BLE001 - no torch / no GPU here: one failure, said once
            queue.put(([(measure_from, measure_from, False)], [f"setup: raw-cuda needs PyTorch with a CUDA GPU in "
                                                               f"the load process ({_first_line(exc)})"]))
            return
    threads = [threading.Thread(target=_thread, args=(args, frames, f"{os.getpid()}_{j}", stop_at,
                                                      measure_from, results, errors, rank * args.concurrency + j,
                                                      cuda, j),
                                daemon=True)
               for j in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(1.0, stop_at - time.perf_counter() + args.timeout + 5))
    if cuda is not None:  # every thread is done with the region: unregister it from every server
        tc = _client_module(args.protocol)
        for url in split_urls(args.url):
            try:
                tc.InferenceServerClient(url).unregister_cuda_shared_memory(cuda.name)
            except Exception:  # noqa: BLE001 - the server may be gone
                pass
    queue.put((results, errors))


def sized(policy, size: tuple[int, int], model: str):
    """The policy for frames of exactly `size` (--size): a dynamic-size row takes the sizes its placement keeps as
    they are (multiples of 32 in its range); a fixed-size model only its own input size."""
    size = tuple(int(v) for v in size)
    placed = policy.place(size).input_size if policy.size_range else tuple(policy.size)
    if tuple(placed) != size:
        kind = "a dynamic-size row: H and W multiples of 32 in its range" if policy.size_range else "a fixed-size row"
        raise ValueError(f"--size {size[0]}x{size[1]}: {model} would take such frames as {placed[0]}x{placed[1]} "
                         f"({kind}); pass --size {placed[0]}x{placed[1]} or leave --size out")
    return policy.at(size)


def run(args) -> dict:
    """One closed-loop run; returns the summary (also what --out gets)."""
    from loadtest import metrics

    urls = split_urls(args.url)
    for u in urls:
        _local(u)
    from client.policy import InputPolicy
    from client.runners import TritonRunner

    probe = TritonRunner(args.model, urls[0], args.protocol, args.timeout)
    try:
        policy = InputPolicy.for_model(probe.activate())
    finally:
        probe.deactivate()
    size = getattr(args, "size", None)  # callers may pass a namespace without it (loadtest.perf)
    if size:
        policy = sized(policy, size, args.model)
    try:
        before = metrics.scrape(args.metrics_url)
    except OSError:
        before = None
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    t_start = time.perf_counter() + 2.0  # processes start their loops together
    procs = [ctx.Process(target=_process, args=(args, policy, r, t_start, queue)) for r in range(args.processes)]
    for p in procs:
        p.start()
    results, errors = [], []
    deadline = time.time() + args.warmup + args.duration + args.timeout + 60
    for _ in procs:
        try:
            r, e = queue.get(timeout=max(1.0, deadline - time.time()))
        except Exception:  # noqa: BLE001 - a process that never reported
            errors.append("a load process did not report (killed or hung)")
            continue
        results += r
        errors += e
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.kill()
    server = None
    if before is not None:
        try:
            server = metrics.breakdown(metrics.diff(before, metrics.scrape(args.metrics_url), args.model))
        except OSError:
            server = None
    ok = np.array([(t1 - t0) * 1e3 for t0, t1, good in results if good])
    failures = sum(not good for _, _, good in results)
    window = args.duration
    summary = {"model": args.model, "protocol": args.protocol, "payload": args.payload, "batch": args.batch, "processes": args.processes,
               "concurrency": args.concurrency, "in_flight": args.processes * args.concurrency,
               "duration_s": window, "requests": int(len(ok)), "failures": int(failures),
               "img_per_s": float(len(ok) * args.batch / window),
               "p50_ms": float(np.percentile(ok, 50)) if len(ok) else None,
               "p90_ms": float(np.percentile(ok, 90)) if len(ok) else None,
               "p99_ms": float(np.percentile(ok, 99)) if len(ok) else None,
               "size": "x".join(map(str, policy.size)) if size else None,
               "endpoints": urls, "errors": _distinct(errors), "server": server}
    return summary


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m loadtest.closed_loop", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_model_option(ap, "segformer_b1_gpu")
    cli.add_server_options(ap, default="grpc", timeout=30.0, metrics=True)
    ap.add_argument("--processes", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=1, help="requests in flight per process")
    ap.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds run before measuring")
    ap.add_argument("--payload", choices=("raw", "raw-shm", "raw-cuda", "jpeg"), default="raw-shm")
    ap.add_argument("--output", choices=("shm", "wire"), default="shm",
                    help="labels back through system shared memory (default) or in the response (through a proxy)")
    ap.add_argument("--batch", type=int, default=1, help="images per request")
    ap.add_argument("--images", default="", help="folder of images (default: generated frames)")
    ap.add_argument("--size", type=parse_size, metavar="HxW",
                    help="frames of this size (generated, or --images resized to it): for a dynamic-size row, any "
                         "size in its range, e.g. 1024x2048 (default: the model's own input size)")
    ap.add_argument("--out", type=Path, help="write the summary as JSON here")
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    args.url = cli.url_of(args)
    return cli.run(lambda: _main(args), handled=(ValueError, OSError))


def _main(args) -> int:
    summary = run(args)
    if args.out:
        from segformer.weights import atomic_write_bytes

        atomic_write_bytes(args.out, (json.dumps(summary, indent=1) + "\n").encode())
    s = summary
    print(f"{s['model']} {s['payload']} x{s['batch']} in-flight {s['in_flight']}: {s['img_per_s']:.1f} img/s, "
          f"p50 {s['p50_ms'] or float('nan'):.1f} ms, p99 {s['p99_ms'] or float('nan'):.1f} ms, "
          f"{s['failures']} failures" + (f" ({s['errors'][0]})" if s["errors"] else ""))
    return 1 if s["failures"] or not s["requests"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
