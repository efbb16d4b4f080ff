"""Triton python-backend model: the decode-and-place step of a row's JPEG/PNG ensemble (`<row>_decode`).

Copied by `make repo` as ``1/model.py`` with segformer_runtime.py and the client's placement code
(client/placement.py, as ``placement.py``) beside it. Input ``encoded`` uint8 [n, L]: one JPEG/PNG file per row of
the batch (normally n = 1). Each file is decoded (config parameter ``decoder``: ``pillow`` on CPU rows,
``nvimgcodec`` on GPU rows: nvImageCodec decodes on the GPU, Pillow takes what it cannot) and placed exactly as a
client places a raw frame (input policy ``fit``: letterboxed into a fixed input, or at its own size within a
dynamic row's range, padded to a multiple of 32). Outputs ``images`` uint8 [n, H, W, 3] (what the row takes) and
``placement`` int32 [n, 4] = content height, content width, image height, image width, from which the client
restores the labels to the image's frame. A file that cannot be decoded is that request's error; the others and
the server carry on.
"""
import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the files copied beside us
from placement import decode, place, to_input  # noqa: E402
from segformer_runtime import parameters  # noqa: E402


class GpuDecoder:
    """nvImageCodec on the instance's GPU; the decoded frame comes back to the host for the placement (the same
    bilinear resize the client uses). Untested on CPU-only machines."""

    def __init__(self, device_id: int):
        from nvidia import nvimgcodec

        self.codec = nvimgcodec
        self.decoder = nvimgcodec.Decoder(device_id=device_id)
        self.params = nvimgcodec.DecodeParams(apply_exif_orientation=True, color_spec=nvimgcodec.ColorSpec.RGB)

    def __call__(self, data: bytes) -> np.ndarray:
        image = self.decoder.decode(data, params=self.params)
        if image is None:  # a format nvImageCodec does not take
            return decode(data)
        return np.ascontiguousarray(np.asarray(image.cpu()), dtype=np.uint8)[..., :3]


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = parameters(config)
        self.size = tuple(json.loads(params["input_size"]))
        self.size_range = json.loads(params["size_range"]) if params.get("size_range") else None
        self.mode = params.get("resize", "fit")
        self.decode = decode
        if params.get("decoder", "pillow") == "nvimgcodec":
            self.decode = GpuDecoder(int(args.get("model_instance_device_id", 0) or 0))

    def _one(self, request):
        enc = pb_utils.get_input_tensor_by_name(request, "encoded").as_numpy()
        enc = enc[None] if enc.ndim == 1 else enc
        images, placements = [], []
        for row in enc:
            image = self.decode(row.tobytes())
            p = place(image.shape[:2], self.size, self.size_range, self.mode)
            images.append(to_input(image, p))
            placements.append([*p.content, *image.shape[:2]])
        if len({x.shape for x in images}) > 1:
            raise ValueError("the images of one request would be placed at different sizes: send one per request")
        return [pb_utils.Tensor("images", np.stack(images)),
                pb_utils.Tensor("placement", np.asarray(placements, np.int32))]

    def execute(self, requests):
        responses = []
        for r in requests:
            try:
                responses.append(pb_utils.InferenceResponse(output_tensors=self._one(r)))
            except Exception as exc:  # noqa: BLE001 - this request's error; the others carry on
                msg = f"'encoded' is not a usable JPEG/PNG image: {exc}"
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(msg)))
        return responses
