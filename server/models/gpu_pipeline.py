"""The parts of the GPU fast path's Triton program (gpu_model.py) that need no Triton: the sizes a dynamic row takes,
the CUDA-graph cache per (batch bucket, size), the instance's two CUDA streams, the pinned label buffers, the thread
that answers a batch once its labels are on the host, and the per-stage timing line (the decoders: gpu_decode.py).

Copied by `make repo` beside ``1/model.py`` (the GPU record's runtime files, build/backends.py). Imports nothing of
the project and uses the torch it is handed, so the unit tests run all of it on a CPU with stand-ins.
"""
import collections
import contextlib
import queue
import threading
import time

MULTIPLE = 32  # the encoder's total stride: a dynamic row takes H and W in multiples of it
# the per-batch stages in the order the log prints them; those on the GPU also get CUDA-event time
STAGES = ("parse", "decode", "fit", "upload", "model", "d2h", "responses")
ON_GPU = ("decode", "fit", "upload", "model", "d2h")


# -- sizes ----------------------------------------------------------------------------------------------------
def parse_sizes(text):
    """'736x960,1024x2048' -> ((736, 960), (1024, 2048)); ValueError naming an entry that is not HxW."""
    out = []
    for part in (text or "").replace(" ", "").split(","):
        if not part:
            continue
        try:
            h, w = (int(x) for x in part.lower().split("x"))
        except ValueError:
            raise ValueError(f"sizes: {part!r} is not HxW (write e.g. sizes: \"736x960,1024x2048\")") from None
        if (h, w) not in out:
            out.append((h, w))
    return tuple(out)


def fmt_sizes(sizes):
    return ", ".join(f"{h}x{w}" for h, w in sizes)


def size_problem(h, w, size_range, kept=()):
    """None when a dynamic row takes h x w, else the one-line refusal naming the sizes it takes and the fix."""
    (lo_h, lo_w), (hi_h, hi_w) = size_range
    if lo_h <= h <= hi_h and lo_w <= w <= hi_w and h % MULTIPLE == 0 and w % MULTIPLE == 0:
        return None
    up = (-(-h // MULTIPLE) * MULTIPLE, -(-w // MULTIPLE) * MULTIPLE)
    fix = (f"pad the frame to {up[0]}x{up[1]} (bottom/right)" if lo_h <= up[0] <= hi_h and lo_w <= up[1] <= hi_w
           else "scale the frame into that range and pad it to multiples of 32")
    ready = f" (captured at load: {fmt_sizes(kept)})" if kept else ""
    return (f"images of {h}x{w}: this model takes H and W multiples of {MULTIPLE} from {lo_h}x{lo_w} to "
            f"{hi_h}x{hi_w}{ready}; {fix}, as python -m client.segment does")


def fit(torch, img, size, content):
    """[h, w, 3] uint8 (on the GPU) -> [*size, 3]: bilinear to `content` where that differs from h x w, then
    zeros bottom/right up to `size` (as client.placement.to_input pads)."""
    if tuple(img.shape[:2]) != tuple(content):
        x = torch.nn.functional.interpolate(img.permute(2, 0, 1)[None].float(), size=tuple(content), mode="bilinear",
                                            align_corners=False)[0]
        img = x.round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0)
    if tuple(content) != tuple(size):
        out = img.new_zeros((*size, 3))
        out[:content[0], :content[1]] = img
        img = out
    return img


def bucket_of(n, buckets):
    for b in buckets:
        if n <= b:
            return b
    raise ValueError(f"batch {n} is larger than the largest bucket {buckets[-1]}")


class GraphCache:
    """CUDA-graph runners per (batch bucket, H x W). A size pinned at load (the row's size; a dynamic row's `sizes`)
    is captured for every bucket and kept; any other size is captured on first use for the one bucket it needs, and
    at most `cap` of those are kept (the least recently used is dropped, its graph and memory pool with it).

    capture(size, buckets) -> runner(images uint8 [n <= max(buckets), H, W, 3]) -> labels [n, H, W];
    before_capture() runs first (the program waits there until no batch of its own is on the GPU)."""

    def __init__(self, capture, buckets, cap=8, before_capture=None, log=None):
        self.capture, self.buckets, self.cap = capture, tuple(sorted(buckets)), int(cap)
        self.before_capture = before_capture or (lambda: None)
        self.log = log or (lambda msg: None)
        self.kept = {}
        self.lazy = collections.OrderedDict()
        self.captured = self.evicted = 0

    def pin(self, size):
        size = tuple(size)
        if size not in self.kept:
            self.before_capture()
            self.kept[size] = self.capture(size, self.buckets)
            self.captured += len(self.buckets)

    def serves(self, size):
        return tuple(size) in self.kept or self.cap > 0

    def get(self, n, size):
        size = tuple(size)
        if size in self.kept:
            return self.kept[size]
        if self.cap <= 0:
            raise ValueError(f"images of {size[0]}x{size[1]}: this model serves only {fmt_sizes(self.kept)}")
        key = (bucket_of(n, self.buckets), size)
        if key in self.lazy:
            self.lazy.move_to_end(key)
            return self.lazy[key]
        self.before_capture()
        while len(self.lazy) >= self.cap:  # dropped before the capture, so its memory can serve the new graph
            (b, (h, w)), _ = self.lazy.popitem(last=False)
            self.evicted += 1
            self.log(f"dropped the CUDA graph of batch {b} at {h}x{w} (graph_cap {self.cap})")
        t0 = time.perf_counter()
        runner = self.lazy[key] = self.capture(size, (key[0],))
        self.captured += 1
        self.log(f"captured a CUDA graph for batch {key[0]} at {size[0]}x{size[1]} in {time.perf_counter() - t0:.1f} s")
        return runner


# -- streams, buffers, the responder --------------------------------------------------------------------------
class HostMark:
    """A CUDA event's stand-in on a CPU device: the host clock when recorded."""

    def __init__(self):
        self.t = time.perf_counter()

    def synchronize(self):
        pass

    def elapsed_time(self, end):
        return (end.t - self.t) * 1e3


class Streams:
    """The instance's two CUDA streams: `input` (upload, decode, fit) and `model` (graph replays, label copies),
    the model stream waiting on an event of the input stream, not on the host. Marks are CUDA events (timed when
    `timing`). On a CPU device (the unit tests) the same calls run in order, marks from the host clock."""

    def __init__(self, torch, device, timing=False):
        self.torch, self.timing, self.cuda = torch, timing, device.type == "cuda"
        if self.cuda:
            self.input, self.model = torch.cuda.Stream(device), torch.cuda.Stream(device)

    def on_input(self):
        return self.torch.cuda.stream(self.input) if self.cuda else contextlib.nullcontext()

    def on_model(self):
        return self.torch.cuda.stream(self.model) if self.cuda else contextlib.nullcontext()

    def handle(self):
        return self.input.cuda_stream if self.cuda else 0

    def mark(self, always=False):
        """An event recorded on the current stream (None when timing is off and it is not needed)."""
        if not (self.timing or always):
            return None
        if not self.cuda:
            return HostMark()
        ev = self.torch.cuda.Event(enable_timing=self.timing)
        ev.record()
        return ev

    def model_waits(self, event):
        if self.cuda:
            self.model.wait_event(event)

    def keep_for_model(self, tensor):
        """`tensor` (made on the input stream) is read by the model stream: its memory is not reused before that."""
        if self.cuda:
            tensor.record_stream(self.model)

    def idle(self):
        if self.cuda:
            self.model.synchronize()

    def host(self, nbytes):
        return self.torch.empty(nbytes, dtype=self.torch.uint8, pin_memory=self.cuda)


def elapsed_ms(a, b):
    return a.elapsed_time(b) if a is not None and b is not None else 0.0


def gpu_times(inputs, chunks):
    """CUDA-event milliseconds of one batch: `inputs` {stage: (start, end)} on the input stream, `chunks`
    [(before replay, after replay, after the label copy)] on the model stream."""
    out = {k: elapsed_ms(a, b) for k, (a, b) in inputs.items()}
    out["model"] = sum(elapsed_ms(m0, m1) for m0, m1, _ in chunks)
    out["d2h"] = sum(elapsed_ms(m1, m2) for _, m1, m2 in chunks)
    return out


class HostPool:
    """Pinned host buffers the labels are copied into, handed out in turn: a buffer comes back (release) only once
    its batch's responses are sent, so a later batch's copy never overwrites labels not yet sent."""

    def __init__(self, make, count, minimum=0):
        self.make, self.minimum, self.free = make, minimum, queue.Queue()
        for _ in range(count):
            self.free.put(None)  # allocated on first use

    def acquire(self, nbytes):
        buf = self.free.get()
        if buf is None or buf.numel() < nbytes:
            buf = self.make(max(nbytes, self.minimum))
        return buf

    def release(self, buf):
        self.free.put(buf)


class Responder:
    """One background thread running each batch's finish (wait for its labels, send its responses) in order, so
    execute() can return and Triton hand over the next batch while this one is still on the GPU."""

    def __init__(self, log=print):
        self.jobs, self.log = queue.Queue(), log
        self.thread = threading.Thread(target=self._loop, name="segformer-gpu-responder", daemon=True)
        self.thread.start()

    def submit(self, job):
        self.jobs.put(job)

    def drain(self):
        """Wait until every submitted job has run."""
        self.jobs.join()

    def close(self):
        self.jobs.put(None)
        self.thread.join(timeout=30)

    def _loop(self):
        while True:
            job = self.jobs.get()
            try:
                if job is None:
                    return
                job()
            except Exception as exc:  # noqa: BLE001 - a job answers its own requests; this is a bug, said once
                self.log(f"responder: {type(exc).__name__}: {exc}")
            finally:
                self.jobs.task_done()


# -- the per-stage timing line --------------------------------------------------------------------------------
class StageStats:
    """Per-stage milliseconds per batch, averaged over the batches since load: wall time (this instance's threads)
    for every stage, and CUDA-event time on the instance's streams for the stages on the GPU. `add` returns the
    log line every `every` batches (SEGFORMER_GPU_TIMING=1)."""

    def __init__(self, every=200, label="[segformer_gpu]"):
        self.every, self.label = every, label
        self.batches = self.images = 0
        self.wall, self.gpu, self.counts = (collections.defaultdict(float) for _ in range(3))
        self.notes = {}

    def add(self, images, wall, gpu=None, counts=None, notes=None):
        self.batches += 1
        self.images += images
        for k, v in wall.items():
            self.wall[k] += v
        for k, v in (gpu or {}).items():
            self.gpu[k] += v
        for k, v in (counts or {}).items():
            self.counts[k] += v
        self.notes.update(notes or {})
        return self.line() if self.every and self.batches % self.every == 0 else None

    def line(self):
        b = max(1, self.batches)
        ms = lambda x: f"{1e3 * x / b:.2f}"  # noqa: E731 - wall seconds -> ms per batch
        gms = lambda x: f"{x / b:.2f}"  # noqa: E731 - event milliseconds -> ms per batch
        parts = []
        for s in STAGES:
            name = "D2H" if s == "d2h" else s
            parts.append(f"{name} {ms(self.wall[s])}/{gms(self.gpu[s])}" if s in ON_GPU and self.gpu
                         else f"{name} {ms(self.wall[s])}")
        kind = "wall/GPU" if self.gpu else "wall"
        c = self.counts
        tail = (f"; execute {ms(self.wall['execute'])}, waiting on the GPU {ms(self.wall['wait'])}; raw requests on "
                f"the GPU {c['raw_gpu']:.0f} of {c['raws']:.0f}")
        tail += "".join(f"; {k} {v}" for k, v in self.notes.items())
        return (f"{self.label} {self.batches} batches, {self.images / b:.1f} img/batch; ms per batch ({kind}): "
                + ", ".join(parts) + tail)
