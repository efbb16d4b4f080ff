"""Triton python-backend model of the GPU fast path (segformer.fast): FP16, folded decoder, fused
upsample+argmax, torch.compile and CUDA graphs per batch bucket.

Copied by `make repo` into the model directory as ``1/model.py`` next to a copy of the `segformer` package and
the weights, so the directory is self-contained. Inputs (one of the two per request, both optional):
- ``images``  uint8 [n, H, W, 3] raw RGB at the model's size;
- ``encoded`` uint8 [n, L] one JPEG/PNG file's bytes per request (n = 1); JPEG is decoded on the GPU (nvJPEG via
  torchvision), other formats on the CPU; any size is resized (bilinear) to the model's size on the GPU.
Output ``labels`` uint8 [n, H, W]. Requests gathered by the dynamic batcher run as one padded CUDA-graph replay.
Tensors cross the python-backend boundary through DLPack (``pb_utils.Tensor.from_dlpack``), never numpy.
A bad request gets its own error response; the others in the batch and the server carry on.
"""
import json
import os
import sys

import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the segformer package copied beside us


class TritonPythonModel:
    def initialize(self, args):
        import torch

        if not torch.cuda.is_available():
            raise pb_utils.TritonModelException("this model needs a CUDA GPU (serve segformer_b1 or a TensorRT "
                                                "variant on a CPU machine)")
        from segformer.fast import GraphedSegmenter, build_fast

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        here = os.path.dirname(os.path.abspath(__file__))
        self.torch = torch
        self.device = torch.device("cuda", int(args.get("model_instance_device_id", 0) or 0))
        torch.cuda.set_device(self.device)
        dims = next(i["dims"] for i in config["input"] if i["name"] == "images")
        self.size = (int(dims[0]), int(dims[1]))
        buckets = tuple(int(b) for b in params.get("buckets", "1,2,4,8,16").split(","))
        mode = params.get("compile_mode", "default") or None
        seg = build_fast(os.path.join(here, params["weights_file"]), str(self.device),
                         compile_mode=None if mode == "none" else mode)
        self.runner = GraphedSegmenter(seg, self.size, buckets)
        self.max_bucket = buckets[-1]
        self.host = [torch.empty((self.max_bucket, *self.size), dtype=torch.uint8).pin_memory() for _ in range(2)]
        self.turn = 0

    # -- inputs ---------------------------------------------------------------------------------------------
    def _frames(self, request):
        """uint8 [n, H, W, 3] on the GPU for one request, or raise ValueError with what is wrong."""
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
            return x.to(self.device, non_blocking=True)
        data = torch.from_dlpack(enc.to_dlpack())
        if data.dim() != 2:
            raise ValueError("'encoded' must be uint8 [n, bytes], one encoded image per row")
        return torch.stack([self._decode(row.contiguous().cpu()) for row in data])

    def _decode(self, blob):
        import torch.nn.functional as F
        from torchvision.io import ImageReadMode, decode_image, decode_jpeg

        torch = self.torch
        try:
            if blob.numel() > 2 and int(blob[0]) == 0xFF and int(blob[1]) == 0xD8:
                img = decode_jpeg(blob, mode=ImageReadMode.RGB, device=self.device)
            else:
                img = decode_image(blob, mode=ImageReadMode.RGB).to(self.device)
        except (RuntimeError, ValueError) as exc:
            raise ValueError(f"'encoded' is not a readable JPEG/PNG image ({exc})") from None
        if tuple(img.shape[1:]) != self.size:
            img = F.interpolate(img[None].float(), size=self.size, mode="bilinear", align_corners=False)[0]
            img = img.round_().clamp_(0, 255).to(torch.uint8)
        return img.permute(1, 2, 0)

    # -- execution ------------------------------------------------------------------------------------------
    def execute(self, requests):
        torch = self.torch
        responses = [None] * len(requests)
        frames, owners = [], []
        for i, r in enumerate(requests):
            try:
                x = self._frames(r)
                frames.append(x)
                owners.append((i, x.shape[0]))
            except Exception as exc:  # noqa: BLE001 - this request's error; the batch goes on
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
        if frames:
            try:
                batch = torch.cat(frames) if len(frames) > 1 else frames[0]
                host = self._run(batch)
                start = 0
                for i, n in owners:
                    out = host[start:start + n]
                    start += n
                    tensor = pb_utils.Tensor.from_dlpack("labels", torch.utils.dlpack.to_dlpack(out))
                    responses[i] = pb_utils.InferenceResponse(output_tensors=[tensor])
            except Exception as exc:  # noqa: BLE001 - reported to every request of the batch
                for i, _ in owners:
                    responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"inference failed: {exc}"))
        return responses

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
        torch.cuda.current_stream(self.device).synchronize()
        return host[:n]

    def finalize(self):
        self.runner = None
