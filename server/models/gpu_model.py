"""Triton python-backend model of the GPU fast path (segformer.fast): FP16, folded decoder, fused
upsample+argmax, torch.compile and CUDA graphs per (batch bucket, size).

Copied by `make repo` into the model directory as ``1/model.py`` next to a copy of the `segformer` package,
segformer_runtime.py, gpu_pipeline.py and gpu_decode.py (the parts that need no Triton), the client's placement code
and the weights, so the directory is self-contained. Inputs (one of the two per request, both optional):
- ``images``  uint8 [n, H, W, 3] raw RGB at the model's size (a dynamic row: any H, W in its range, multiples of 32);
- ``encoded`` uint8 [n, L] one JPEG/PNG file's bytes per row (normally n = 1), decoded on the GPU (nvImageCodec's
  batch decode where `nvidia.nvimgcodec` imports, else torchvision's batched nvJPEG; config ``jpeg_decoder``) and
  resized (bilinear) to the model's size, or on a dynamic row placed as a client places a frame (its own size
  within the range, padded bottom/right to a multiple of 32: 720x960 -> 736x960).
Output ``labels`` uint8 [n, H, W] at the input's size.

Each batch: requests parsed (DLPack views; raw frames a client put in CUDA shared memory arrive on the GPU, with
``FORCE_CPU_ONLY_INPUT_TENSORS: no``) -> on the instance's input stream: host frames through pinned staging, files
decoded, fitted and stacked per size -> on its model stream, after an event (not a host wait): one CUDA-graph replay
per chunk and the labels' non_blocking copy into a pinned buffer from a small pool -> responses. With ``respond:
deferred`` (default) execute() returns once the request tensors are consumed and a background thread answers the
batch (Triton's response senders, default mode, Triton >= 24.06) when its labels' event completes, so the next
batch's decode overlaps this one's model run; ``inline`` waits and returns the responses. Sizes a dynamic row
pre-captures: config ``sizes``; others are captured on first use, at most ``graph_cap`` kept (LRU).
Tensors cross the python-backend boundary through DLPack, never numpy. A bad request gets its own error response;
the others in the batch and the server carry on. SEGFORMER_GPU_TIMING=1 prints the per-stage split every 200
batches; SEGFORMER_GPU_DECODER / _RESPOND / _DEPTH / _MIXFFN override ``jpeg_decoder`` / ``respond`` / ``depth``
(the label buffers, so the batches past their input stage, per instance; default 2) / ``mixffn`` (segformer.fast's
Mix-FFN path by name) for benches.
"""
import json
import os
import sys
import time
from types import SimpleNamespace

import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # segformer package + runtime copied beside us
from gpu_decode import choose_decoder  # noqa: E402
from gpu_pipeline import (GraphCache, HostPool, Responder, StageStats, Streams, fit, fmt_sizes,  # noqa: E402
                          gpu_times, parse_sizes, size_problem)
from segformer_runtime import existing, parameters  # noqa: E402

RESPOND = ("deferred", "inline")


class TritonPythonModel:
    def initialize(self, args):
        import torch

        if not torch.cuda.is_available():
            raise pb_utils.TritonModelException("this model needs a CUDA GPU (serve segformer_b1 or a TensorRT "
                                                "variant on a CPU machine)")
        from segformer.fast import GraphedSegmenter, build_fast

        config = json.loads(args["model_config"])
        params = parameters(config)
        here = os.path.dirname(os.path.abspath(__file__))
        device = torch.device("cuda", int(args.get("model_instance_device_id", 0) or 0))
        torch.cuda.set_device(device)
        size_range = json.loads(params["size_range"]) if params.get("size_range") else None
        if size_range:
            size = tuple(json.loads(params["opt_size"]))
        else:
            dims = next(i["dims"] for i in config["input"] if i["name"] == "images")
            size = (int(dims[0]), int(dims[1]))
        mode = params.get("compile_mode", "default") or None
        weights = existing(here, params["weights_file"])  # refused unless inside this model directory
        path = os.environ.get("SEGFORMER_GPU_MIXFFN") or params.get("mixffn", "")  # a Mix-FFN path by name
        seg = build_fast(weights, str(device), compile_mode=None if mode == "none" else mode,
                         fused_mixffn=params.get("fused_mixffn", "0") == "1", **({"mixffn": path} if path else {}))
        t0 = time.perf_counter()
        self._configure(torch, device, size, size_range=size_range,
                        buckets=tuple(int(b) for b in params.get("buckets", "1,2,4,8,16").split(",")),
                        capture=lambda s, bks: GraphedSegmenter(seg, s, bks),
                        sizes=parse_sizes(params.get("sizes", "")), cap=int(params.get("graph_cap", "8")),
                        decoder=os.environ.get("SEGFORMER_GPU_DECODER") or params.get("jpeg_decoder", "auto"),
                        respond=os.environ.get("SEGFORMER_GPU_RESPOND") or params.get("respond", "deferred"),
                        depth=int(os.environ.get("SEGFORMER_GPU_DEPTH") or params.get("depth", "2")),
                        timing=os.environ.get("SEGFORMER_GPU_TIMING") == "1")
        self._log(f"{args.get('model_name', config.get('name', ''))} on {device}: {self.graphs.captured} CUDA graphs "
                  f"({fmt_sizes(self.graphs.kept)}) in {time.perf_counter() - t0:.0f} s; decoder "
                  f"{self.decoder.name}{' (' + self.decoder.note + ')' if getattr(self.decoder, 'note', '') else ''}; "
                  f"responses {'deferred' if self.responder else 'inline'}")

    def _configure(self, torch, device, size, *, capture, size_range=None, buckets=(1, 2, 4, 8, 16), sizes=(),
                   cap=8, decoder="auto", respond="deferred", depth=2, timing=False):
        """Everything past loading the model (the unit tests call it with a stand-in runner on the CPU)."""
        if respond not in RESPOND:
            raise ValueError(f"respond {respond!r}: choose from {', '.join(RESPOND)}")
        self.torch, self.device, self.size = torch, device, tuple(size)
        self.size_range = tuple(tuple(int(x) for x in s) for s in size_range) if size_range else None
        self.buckets = tuple(sorted(buckets))
        self.max_bucket = self.buckets[-1]
        if self.size_range:
            from placement import place  # client/placement.py, copied beside us: the client's own placement

            self.place = place
            bad = [p for p in (size_problem(h, w, self.size_range) for h, w in sizes) if p]
            if bad:
                raise ValueError(f"config parameter sizes: {bad[0]}")
            pinned = sizes or (self.size,)
        else:
            pinned, cap = (self.size,), 0
        self.streams = Streams(torch, device, timing)
        self.responder = Responder(self._log) if respond == "deferred" else None
        self.graphs = GraphCache(capture, self.buckets, cap, before_capture=self._quiesce, log=self._log)
        for s in pinned:
            self.graphs.pin(s)
        self.decoder = choose_decoder(decoder, device, torch)
        hi = self.size_range[1] if self.size_range else self.size
        # label buffers: deferred, `depth` batches of this instance may be past their input stage (one on the GPU,
        # the next queued behind it); inline, the batch Triton still copies from and the current one
        self.pool = HostPool(self.streams.host, max(1, depth) if self.responder else 2, self.max_bucket * hi[0] * hi[1])
        self.held = None  # inline: the buffer whose labels Triton copies after execute returns
        self.stage = None  # pinned staging of raw host frames, grown on demand
        self.timing = timing
        self.stats = StageStats()

    def _log(self, msg):
        print(f"[segformer_gpu] {msg}", flush=True)

    def _quiesce(self):
        """Before a CUDA-graph capture: no batch of this instance on the GPU, no other thread touching CUDA."""
        if getattr(self, "responder", None):
            self.responder.drain()
        self.streams.idle()

    # -- inputs ---------------------------------------------------------------------------------------------
    def _parse(self, request):
        """('raw', uint8 tensor [n,H,W,3]) or ('enc', [uint8 CPU tensors]) for one request, or ValueError."""
        torch = self.torch
        raw = pb_utils.get_input_tensor_by_name(request, "images")
        enc = pb_utils.get_input_tensor_by_name(request, "encoded")
        if (raw is None) == (enc is None):
            raise ValueError("send exactly one input: 'images' (uint8 [n,H,W,3]) or 'encoded' (JPEG/PNG bytes)")
        if raw is not None:
            x = torch.from_dlpack(raw.to_dlpack())
            ok = x.dtype == torch.uint8 and x.dim() == 4 and x.shape[3] == 3
            if self.size_range is None:
                if not ok or tuple(x.shape[1:3]) != self.size:
                    raise ValueError(f"'images' must be uint8 [n,{self.size[0]},{self.size[1]},3], got "
                                     f"{x.dtype} {list(x.shape)}")
                return "raw", x
            if not ok:
                raise ValueError(f"'images' must be uint8 [n,H,W,3], got {x.dtype} {list(x.shape)}")
            h, w = int(x.shape[1]), int(x.shape[2])
            problem = size_problem(h, w, self.size_range, tuple(self.graphs.kept))
            if problem or not self.graphs.serves((h, w)):
                raise ValueError(problem or f"images of {h}x{w}: this model serves only {fmt_sizes(self.graphs.kept)}")
            return "raw", x
        data = torch.from_dlpack(enc.to_dlpack())
        if data.dim() != 2 or data.dtype != torch.uint8:
            raise ValueError("'encoded' must be uint8 [n, bytes], one encoded image per row")
        data = data.cpu() if data.is_cuda else data  # the decoders take the file bytes from host memory
        return "enc", [row.contiguous() for row in data]

    def _upload(self, tensors):
        """uint8 frames -> GPU tensors in the same order: frames already on the GPU (CUDA shared memory) as they
        are, host frames through one pinned staging buffer (host copies, one async upload)."""
        host = [t for t in tensors if not t.is_cuda]
        staged = iter(())
        if host:
            total = sum(t.numel() for t in host)
            if self.stage is None or self.stage.numel() < total:
                self.stage = self.streams.host(total)
            flat, off = self.stage[:total], 0
            for t in host:
                flat[off:off + t.numel()].view(t.shape).copy_(t)
                off += t.numel()
            on_gpu, parts, off = flat.to(self.device, non_blocking=True), [], 0
            for t in host:
                parts.append(on_gpu[off:off + t.numel()].view(t.shape))
                off += t.numel()
            staged = iter(parts)
        return [next(staged) if not t.is_cuda else t for t in tensors]

    def _fit(self, img):
        """[h, w, 3] uint8 on the GPU -> [H, W, 3] at its place: the model's size (bilinear) on a fixed row; on a
        dynamic row the client's placement (bilinear to the content size where it must scale, zeros bottom/right)."""
        h, w = int(img.shape[0]), int(img.shape[1])
        if self.size_range is None:
            size = content = self.size
        else:
            p = self.place((h, w), self.size, self.size_range, "fit")
            size, content = tuple(p.input_size), tuple(p.content)
        return fit(self.torch, img, size, content)

    def _fit_or_error(self, img):
        try:
            return self._fit(img)
        except Exception as exc:  # noqa: BLE001 - e.g. out of GPU memory for one huge image: that request's error
            return ValueError(f"could not resize the decoded {img.shape[0]}x{img.shape[1]} image: "
                              f"{(str(exc).splitlines() or ['?'])[0]}")

    def _assemble(self, parsed, uploaded, decoded, responses):
        """{(H, W): (batch uint8 [N,H,W,3], [(request index, first row, rows)])}: each request's frames stacked per
        size into a tensor of our own; a request whose files do not decode (or would land at different sizes)
        gets its error here."""
        frames = {}
        for i, kind, p in parsed:
            if kind == "raw":
                x = [next(uploaded)]
            else:
                imgs = [next(decoded) for _ in p]
                imgs = [x if isinstance(x, Exception) else self._fit_or_error(x) for x in imgs]
                bad = next((x for x in imgs if isinstance(x, Exception)), None)
                if bad is None and len({tuple(x.shape) for x in imgs}) > 1:
                    bad = ValueError("the images of one request would be placed at different sizes: send one per "
                                     "request")
                if bad is not None:
                    responses[i] = _error(str(bad))
                    continue
                x = [im[None] for im in imgs]
            size = tuple(x[0].shape[1:3])
            parts, members = frames.setdefault(size, ([], []))
            members.append((i, sum(t.shape[0] for t in parts), sum(t.shape[0] for t in x)))
            parts.extend(x)
        groups = {}
        for size, (parts, members) in frames.items():
            batch = self.torch.cat(parts)  # a copy: Triton's request memory is released when execute returns
            self.streams.keep_for_model(batch)
            groups[size] = (batch, members)
        return groups

    # -- execution ------------------------------------------------------------------------------------------
    def execute(self, requests):
        s, now = self.streams, time.perf_counter
        t0 = now()
        wall = {}
        if self.held is not None:  # inline: Triton has copied the previous batch's labels by now
            self.pool.release(self.held)
            self.held = None
        senders = self._senders(requests)
        responses = [None] * len(requests)
        parsed = []
        for i, r in enumerate(requests):
            try:
                parsed.append((i, *self._parse(r)))
            except Exception as exc:  # noqa: BLE001 - this request's error; the batch goes on
                responses[i] = _error(str(exc))
        raws = [p for _, kind, p in parsed if kind == "raw"]
        blobs = [b for _, kind, p in parsed if kind == "enc" for b in p]
        t1 = now()
        wall["parse"] = t1 - t0
        with s.on_input():
            g0 = s.mark()
            uploaded = iter(self._upload(raws)) if raws else iter(())
            g1, t2 = s.mark(), now()
            decoded = iter(self.decoder.decode(blobs, s.handle())) if blobs else iter(())
            g2, t3 = s.mark(), now()
            groups = self._assemble(parsed, uploaded, decoded, responses)
            g3, ready = s.mark(), s.mark(always=True)
        t4 = now()
        wall.update(upload=t2 - t1, decode=t3 - t2, fit=t4 - t3)
        gpu_in = {"upload": (g0, g1), "decode": (g1, g2), "fit": (g2, g3)}
        job = SimpleNamespace(responses=responses, senders=senders, outputs=[], marks=[], host=None, done=None,
                              error=None, wall=wall, gpu_in=gpu_in, t0=t0, images=0,
                              counts={"raws": len(raws), "raw_gpu": sum(1 for r in raws if r.is_cuda)})
        if groups:
            self._launch(groups, ready, job)
        if senders is None:
            t5 = now()
            if job.done is not None:
                job.done.synchronize()
            wall["wait"] = now() - t5
            self.held = job.host
            return self._finish(job)
        t5 = now()
        ready.synchronize()  # the request tensors are Triton's until execute returns: consumed by now
        wall["wait"] = now() - t5
        wall["execute"] = now() - t0
        self.responder.submit(lambda: self._finish(job))
        return None

    def _senders(self, requests):
        """Deferred mode: each request's response sender (Triton >= 24.06 in the default mode); None when inline,
        or when this Triton has none (then inline from here on, said once)."""
        if self.responder is None or not all(hasattr(r, "get_response_sender") for r in requests):
            return None  # (stand-in requests of the unit tests: this batch inline)
        try:
            return [r.get_response_sender() for r in requests]
        except Exception as exc:  # noqa: BLE001 - an older python backend, or a stand-in request
            self._log(f"responses inline: no response sender in this Triton ({type(exc).__name__}: {exc})")
            self.responder.close()
            self.responder = None
            self.pool = HostPool(self.streams.host, 2, self.pool.minimum)
            return None

    def _launch(self, groups, ready, job):
        """Queue each group's graph replays and label copies on the model stream, after the inputs' event."""
        s, now = self.streams, time.perf_counter
        t0 = now()
        total = sum(b.shape[0] * size[0] * size[1] for size, (b, _) in groups.items())
        try:
            job.host = host = self.pool.acquire(total)
            off = 0
            with s.on_model():
                s.model_waits(ready)
                for size, (batch, members) in groups.items():
                    n = batch.shape[0]
                    view = host[off:off + n * size[0] * size[1]].view(n, *size)
                    off += n * size[0] * size[1]
                    for c in range(0, n, self.max_bucket):
                        chunk = batch[c:c + self.max_bucket]
                        runner = self.graphs.get(chunk.shape[0], size)
                        m0 = s.mark()
                        labels = runner(chunk)
                        m1 = s.mark()
                        view[c:c + chunk.shape[0]].copy_(labels, non_blocking=True)
                        job.marks.append((m0, m1, s.mark()))
                    job.outputs.append((members, view))
                    job.images += n
                job.done = s.mark(always=True)
        except Exception as exc:  # noqa: BLE001 - reported to every request of the batch
            job.error = exc
            job.outputs = [(members, None) for _, (_, members) in groups.items()]
            job.done = None
            try:
                s.idle()  # what was queued before the failure is done before its buffer is handed out again
            except Exception:  # noqa: BLE001 - a broken stream: the error above is what the clients learn
                pass
        job.wall["model"] = now() - t0

    def _finish(self, job):
        """Wait for the batch's labels, then answer every request (on the responder thread when deferred)."""
        now = time.perf_counter
        t0 = now()
        try:
            if job.done is not None:
                job.done.synchronize()
        except Exception as exc:  # noqa: BLE001 - an asynchronous CUDA error surfaces here
            job.error = job.error or exc
        t1 = now()
        responses = job.responses
        for members, view in job.outputs:
            for i, start, n in members:
                if job.error is not None:
                    responses[i] = _error(f"inference failed: {job.error}")
                    continue
                out = view[start:start + n]
                tensor = pb_utils.Tensor.from_dlpack("labels", self.torch.utils.dlpack.to_dlpack(out))
                responses[i] = pb_utils.InferenceResponse(output_tensors=[tensor])
        if job.senders is not None:
            for sender, response in zip(job.senders, responses):
                try:
                    sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                except Exception as exc:  # noqa: BLE001 - a client gone away; the others still get theirs
                    self._log(f"could not send a response: {exc}")
            if job.host is not None:
                self.pool.release(job.host)
        t2 = now()
        if self.timing and job.images:
            self._account(job, t1 - t0, t2 - t1)
        return None if job.senders is not None else responses

    def _account(self, job, wait, respond):
        wall = dict(job.wall, responses=respond)
        wall["wait"] = wall.get("wait", 0.0) + wait
        wall.setdefault("execute", time.perf_counter() - job.t0)
        line = self.stats.add(job.images, wall, gpu_times(job.gpu_in, job.marks), job.counts, notes={
            "graphs": f"{self.graphs.captured} captured, {self.graphs.evicted} dropped",
            "decoder": self.decoder.name, "responses": "deferred" if job.senders is not None else "inline"})
        if line:
            print(line, flush=True)

    def finalize(self):
        if getattr(self, "responder", None):
            self.responder.close()
        self.graphs = None


def _error(message: str):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message))
