"""Triton python-backend model of the GPU fast path (segformer.fast): FP16, folded decoder, fused
upsample+argmax, torch.compile and CUDA graphs per batch bucket.

Copied by `make repo` into the model directory as ``1/model.py`` next to a copy of the `segformer` package,
segformer_runtime.py (the file checks every python-backend row shares) and the weights, so the directory is
self-contained. Inputs (one of the two per request, both optional):
- ``images``  uint8 [n, H, W, 3] raw RGB at the model's size;
- ``encoded`` uint8 [n, L] one JPEG/PNG file's bytes per request (n = 1); JPEG is decoded on the GPU (nvJPEG via
  torchvision), other formats on the CPU; any size is resized (bilinear) to the model's size on the GPU.
Output ``labels`` uint8 [n, H, W]. Requests gathered by the dynamic batcher run as one padded CUDA-graph replay.
Raw frames a client put in CUDA shared memory arrive on the GPU (``FORCE_CPU_ONLY_INPUT_TENSORS: no``) and are
used where they are; frames from the wire or system shared memory go through one pinned staging copy.
Tensors cross the python-backend boundary through DLPack (``pb_utils.Tensor.from_dlpack``), never numpy.
A bad request gets its own error response; the others in the batch and the server carry on.
"""
import json
import os
import sys
import time

import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # segformer package + runtime copied beside us
from segformer_runtime import existing, parameters  # noqa: E402


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
        self.torch = torch
        self.device = torch.device("cuda", int(args.get("model_instance_device_id", 0) or 0))
        torch.cuda.set_device(self.device)
        dims = next(i["dims"] for i in config["input"] if i["name"] == "images")
        self.size = (int(dims[0]), int(dims[1]))
        buckets = tuple(int(b) for b in params.get("buckets", "1,2,4,8,16").split(","))
        mode = params.get("compile_mode", "default") or None
        weights = existing(here, params["weights_file"])  # refused unless inside this model directory
        seg = build_fast(weights, str(self.device),
                         compile_mode=None if mode == "none" else mode,
                         fused_mixffn=params.get("fused_mixffn", "0") == "1")
        self.runner = GraphedSegmenter(seg, self.size, buckets)
        self.max_bucket = buckets[-1]
        self.host = [torch.empty((self.max_bucket, *self.size), dtype=torch.uint8).pin_memory() for _ in range(2)]
        self.stage = torch.empty((self.max_bucket, *self.size, 3), dtype=torch.uint8).pin_memory()
        self.turn = 0
        self.timing = os.environ.get("SEGFORMER_GPU_TIMING") == "1"
        self.stats = dict.fromkeys(("batches", "images", "inputs", "model", "outputs"), 0.0)

    # -- inputs ---------------------------------------------------------------------------------------------
    def _parse(self, request):
        """('raw', uint8 CPU tensor [n,H,W,3]) or ('enc', [uint8 CPU tensors]) for one request, or ValueError."""
        torch = self.torch
        raw = pb_utils.get_input_tensor_by_name(request, "images")
        enc = pb_utils.get_input_tensor_by_name(request, "encoded")
        if (raw is None) == (enc is None):
            raise ValueError("send exactly one input: 'images' (uint8 [n,H,W,3]) or 'encoded' (JPEG/PNG bytes)")
        if raw is not None:
            x = torch.from_dlpack(raw.to_dlpack())
            if x.dtype != torch.uint8 or x.dim() != 4 or tuple(x.shape[1:]) != (*self.size, 3):
                raise ValueError(f"'images' must be uint8 [n,{self.size[0]},{self.size[1]},3], got "
                                 f"{x.dtype} {list(x.shape)}")
            return "raw", x
        data = torch.from_dlpack(enc.to_dlpack())
        if data.dim() != 2 or data.dtype != torch.uint8:
            raise ValueError("'encoded' must be uint8 [n, bytes], one encoded image per row")
        data = data.cpu() if data.is_cuda else data  # nvJPEG takes the file bytes from host memory
        return "enc", [row.contiguous() for row in data]

    def _upload(self, tensors):
        """uint8 frames -> GPU tensors in the same order: frames already on the GPU (CUDA shared memory) as they
        are, host frames through one pinned staging buffer (one memcpy, one async copy)."""
        torch = self.torch
        host = [t for t in tensors if not t.is_cuda]
        staged = iter(())
        if host:
            total = sum(t.shape[0] for t in host)
            if total > self.stage.shape[0]:
                self.stage = torch.empty((total, *self.size, 3), dtype=torch.uint8).pin_memory()
            torch.cat(host, out=self.stage[:total])
            on_gpu = self.stage[:total].to(self.device, non_blocking=True)
            staged = iter(on_gpu.split([t.shape[0] for t in host]))
        return [next(staged) if not t.is_cuda else t.to(self.device, non_blocking=True) for t in tensors]

    def _decode_all(self, blobs):
        """Decoded [H,W,3] GPU tensors (or the exception for an unreadable one), JPEGs in one nvJPEG batch."""
        try:
            from torchvision.io import ImageReadMode, decode_jpeg
        except ImportError:
            err = ValueError("'encoded' input needs torchvision on the server (pip install torchvision, matching "
                             "torch); or send raw uint8 'images'")
            return [err] * len(blobs)

        out = [None] * len(blobs)
        jpeg = [i for i, b in enumerate(blobs) if b.numel() > 2 and int(b[0]) == 0xFF and int(b[1]) == 0xD8]
        if jpeg:
            try:
                imgs = decode_jpeg([blobs[i] for i in jpeg], mode=ImageReadMode.RGB, device=self.device)
                for i, img in zip(jpeg, imgs):
                    out[i] = img
            except RuntimeError:  # one bad file fails the batch: decode each to find it
                pass
        for i, b in enumerate(blobs):
            if out[i] is None:
                try:
                    out[i] = self._decode_one(b)
                except ValueError as exc:
                    out[i] = exc
        return [self._fit(x) if not isinstance(x, Exception) else x for x in out]

    def _decode_one(self, blob):
        from torchvision.io import ImageReadMode, decode_image, decode_jpeg

        try:
            if blob.numel() > 2 and int(blob[0]) == 0xFF and int(blob[1]) == 0xD8:
                return decode_jpeg(blob, mode=ImageReadMode.RGB, device=self.device)
            return decode_image(blob, mode=ImageReadMode.RGB).to(self.device)
        except (RuntimeError, ValueError) as exc:
            raise ValueError(f"'encoded' is not a readable JPEG/PNG image ({str(exc).splitlines()[0]})") from None

    def _fit(self, img):
        """[3,h,w] uint8 on the GPU -> [H,W,3] at the model's size (bilinear when the size differs)."""
        import torch.nn.functional as F

        if tuple(img.shape[1:]) != self.size:
            img = F.interpolate(img[None].float(), size=self.size, mode="bilinear", align_corners=False)[0]
            img = img.round_().clamp_(0, 255).to(self.torch.uint8)
        return img.permute(1, 2, 0)

    # -- execution ------------------------------------------------------------------------------------------
    def execute(self, requests):
        torch = self.torch
        t0 = time.perf_counter()
        responses = [None] * len(requests)
        parsed = []
        for i, r in enumerate(requests):
            try:
                parsed.append((i, *self._parse(r)))
            except Exception as exc:  # noqa: BLE001 - this request's error; the batch goes on
                responses[i] = _error(str(exc))
        tp = time.perf_counter()
        blobs = [b for _, kind, p in parsed if kind == "enc" for b in p]
        decoded = iter(self._decode_all(blobs)) if blobs else iter(())
        td = time.perf_counter()
        raws = [p for _, kind, p in parsed if kind == "raw"]
        uploaded = iter(self._upload(raws)) if raws else iter(())
        tu = time.perf_counter()
        if self.timing:
            on_gpu = sum(1 for r in raws if r.is_cuda)
            self._split(tp - t0, td - tp, tu - td, on_gpu, len(raws))
        frames, owners = [], []
        for i, kind, p in parsed:
            if kind == "raw":
                x = next(uploaded)
            else:
                imgs = [next(decoded) for _ in p]
                bad = next((x for x in imgs if isinstance(x, Exception)), None)
                if bad is not None:
                    responses[i] = _error(str(bad))
                    continue
                x = torch.stack(imgs)
            frames.append(x)
            owners.append((i, x.shape[0]))
        t1 = time.perf_counter()
        if frames:
            try:
                batch = torch.cat(frames) if len(frames) > 1 else frames[0]
                host = self._run(batch)
                t2 = time.perf_counter()
                start = 0
                for i, n in owners:
                    out = host[start:start + n]
                    start += n
                    tensor = pb_utils.Tensor.from_dlpack("labels", torch.utils.dlpack.to_dlpack(out))
                    responses[i] = pb_utils.InferenceResponse(output_tensors=[tensor])
            except Exception as exc:  # noqa: BLE001 - reported to every request of the batch
                t2 = time.perf_counter()
                for i, _ in owners:
                    responses[i] = _error(f"inference failed: {exc}")
            self._account(sum(n for _, n in owners), t1 - t0, t2 - t1, time.perf_counter() - t2)
        return responses

    def _split(self, t_parse, t_decode, t_upload, raw_on_gpu, raws):
        """Where the input stage goes: request tensors (parse), JPEG/PNG decode, raw frames to the GPU."""
        st = self.stats
        for k, v in (("parse", t_parse), ("decode", t_decode), ("upload", t_upload), ("raw_gpu", raw_on_gpu),
                     ("raws", raws)):
            st[k] = st.get(k, 0.0) + v

    def _account(self, images, t_in, t_model, t_out):
        """Per-stage time, printed to the server log every 200 batches when SEGFORMER_GPU_TIMING=1."""
        if not self.timing:
            return
        st = self.stats
        st["batches"] += 1
        st["images"] += images
        st["inputs"] += t_in
        st["model"] += t_model
        st["outputs"] += t_out
        if st["batches"] % 200 == 0:
            b = st["batches"]
            print(f"[segformer_gpu] {b} batches, {st['images'] / b:.1f} img/batch; ms per batch: inputs "
                  f"{1e3 * st['inputs'] / b:.2f}, model+D2H {1e3 * st['model'] / b:.2f}, responses "
                  f"{1e3 * st['outputs'] / b:.2f}; inputs split: parse {1e3 * st.get('parse', 0) / b:.2f}, decode "
                  f"{1e3 * st.get('decode', 0) / b:.2f}, upload {1e3 * st.get('upload', 0) / b:.2f}; raw requests "
                  f"on the GPU {st.get('raw_gpu', 0):.0f} of {st.get('raws', 0):.0f}", flush=True)

    def _run(self, batch):
        """Labels of the whole batch in a pinned host buffer (chunks of the largest bucket)."""
        torch = self.torch
        n = batch.shape[0]
        if n > self.host[0].shape[0]:
            self.host = [torch.empty((n, *self.size), dtype=torch.uint8).pin_memory() for _ in range(2)]
        host = self.host[self.turn]
        self.turn ^= 1
        for s in range(0, n, self.max_bucket):
            chunk = batch[s:s + self.max_bucket]
            host[s:s + chunk.shape[0]].copy_(self.runner(chunk), non_blocking=True)
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
        return host[:n]

    def finalize(self):
        self.runner = None


def _error(message: str):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message))
