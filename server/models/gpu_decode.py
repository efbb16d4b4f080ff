"""The GPU fast path's JPEG/PNG decoders (gpu_model.py's `encoded` input): nvImageCodec's batch decode where
`nvidia.nvimgcodec` imports, torchvision's batched nvJPEG otherwise (and for what nvImageCodec cannot decode).

Copied by `make repo` beside ``1/model.py`` (the GPU record's runtime files, build/backends.py); imports nothing of
the project, so the unit tests run it on a CPU with stand-ins for both libraries. Each decoder answers a batch of
files (uint8 CPU tensors) with one [h, w, 3] uint8 tensor on the GPU per file, or the ValueError that file gets.
"""
import importlib

DECODERS = ("auto", "nvimgcodec", "torchvision")
NOT_READABLE = "'encoded' is not a readable JPEG/PNG image"


def is_jpeg(blob):
    return blob.numel() > 2 and int(blob[0]) == 0xFF and int(blob[1]) == 0xD8


class TorchvisionDecoder:
    """nvJPEG through torchvision: the JPEGs of a batch in one decode_jpeg call on the instance's GPU (torchvision
    uses the hardware decoder for baseline JPEGs where the GPU has one, A100/H100/H200, and waits for its own stream
    before returning, making the current stream wait on it); other formats (PNG) on the CPU, then uploaded. A file
    that fails the batched call is found by decoding the batch's files one at a time."""

    name = "torchvision (nvJPEG)"

    def __init__(self, device):
        from torchvision.io import ImageReadMode, decode_image, decode_jpeg

        self.device, self.rgb = device, ImageReadMode.RGB
        self.decode_jpeg, self.decode_image = decode_jpeg, decode_image

    def decode(self, blobs, stream=0):
        out = [None] * len(blobs)
        jpeg = [i for i, b in enumerate(blobs) if is_jpeg(b)]
        if jpeg:
            try:
                imgs = self.decode_jpeg([blobs[i] for i in jpeg], mode=self.rgb, device=self.device)
                for i, img in zip(jpeg, imgs):
                    out[i] = img.permute(1, 2, 0)
            except RuntimeError:  # one bad file fails the batch: decode each to find it
                pass
        for i, b in enumerate(blobs):
            if out[i] is None:
                out[i] = _or_error(self.one, b)
        return out

    def one(self, blob):
        """[h, w, 3] uint8 on the GPU, or ValueError in one line."""
        try:
            if is_jpeg(blob):
                img = self.decode_jpeg(blob, mode=self.rgb, device=self.device)
            else:
                img = self.decode_image(blob, mode=self.rgb).to(self.device)
        except (RuntimeError, ValueError) as exc:
            raise ValueError(f"{NOT_READABLE} ({(str(exc).splitlines() or ['?'])[0]})") from None
        return img.permute(1, 2, 0)


class NvImageCodecDecoder:
    """nvImageCodec: every file of a batch in one Decoder.decode call (hardware JPEG decoder where the GPU has one,
    CUDA or CPU codecs otherwise; EXIF orientation applied), ready on the instance's input stream. A file it cannot
    decode (None in its slot) goes to the fallback decoder, one at a time."""

    name = "nvImageCodec"

    def __init__(self, codec, device, torch, fallback=None):
        self.codec, self.device, self.torch, self.fallback = codec, device, torch, fallback
        self.decoder = codec.Decoder(device_id=device.index or 0)
        # nvImageCodec 0.9: sRGB colour, interleaved RGB samples (HWC), EXIF orientation applied
        self.params = codec.DecodeParams(apply_exif_orientation=True, color_spec=codec.ColorSpec.SRGB,
                                         sample_format=codec.SampleFormat.I_RGB)

    def decode(self, blobs, stream=0):
        # CodeStreams over the request bytes (views; decode reads them before it returns), one batch call
        streams = [self.codec.CodeStream(b.numpy()) for b in blobs]
        images = self.decoder.decode(streams, params=self.params, cuda_stream=stream)
        out = []
        for blob, img in zip(blobs, images):
            if img is None:
                out.append(_or_error(self.fallback.one, blob) if self.fallback else ValueError(NOT_READABLE))
            else:
                out.append(self._tensor(img))
        return out

    def _tensor(self, img):
        t = self.torch.from_dlpack(img)  # zero-copy; the image's memory lives as long as the tensor
        t = t if t.device == self.device else t.to(self.device)
        return t[..., :3] if t.shape[-1] >= 3 else t[..., :1].expand(-1, -1, 3)


class NoDecoder:
    name = "none"

    def decode(self, blobs, stream=0):
        return [ValueError("'encoded' input needs torchvision (pip install torchvision, matching torch) or "
                           "nvImageCodec (pip install nvidia-nvimgcodec-cu13) on the server; or send raw uint8 "
                           "'images'")] * len(blobs)


def _or_error(fn, blob):
    try:
        return fn(blob)
    except ValueError as exc:
        return exc


def choose_decoder(choice, device, torch):
    """The instance's decoder of `encoded` inputs. "auto": torchvision's nvJPEG (the decoder measured on the GPU),
    else nvImageCodec where it imports and starts, else none (raw `images` only). "nvimgcodec": nvImageCodec with
    torchvision for what it cannot decode. "torchvision": torchvision alone. A choice named outright that does not
    import or start is a load error naming the way out."""
    if choice not in DECODERS:
        raise ValueError(f"jpeg_decoder {choice!r}: choose from {', '.join(DECODERS)}")
    try:
        tv = TorchvisionDecoder(device)
    except ImportError:
        tv = None
    if choice == "torchvision" or (choice == "auto" and tv is not None):
        if tv is None:
            raise ImportError("jpeg_decoder torchvision: torchvision does not import here (pip install torchvision, "
                              "matching torch), or set jpeg_decoder auto")
        return tv
    try:
        codec = importlib.import_module("nvidia.nvimgcodec")
        return NvImageCodecDecoder(codec, device, torch, fallback=tv)
    except ImportError:
        if choice == "nvimgcodec":
            raise ImportError("jpeg_decoder nvimgcodec: nvidia.nvimgcodec does not import here (pip install "
                              "nvidia-nvimgcodec-cu13, or -cu12 to match CUDA), or set jpeg_decoder auto") from None
        return tv or NoDecoder()
    except Exception as exc:  # noqa: BLE001 - installed but not starting (library or API mismatch)
        if tv is None:
            if choice == "auto":
                return NoDecoder()
            raise ImportError(f"jpeg_decoder {choice}: nvImageCodec is installed but does not start here "
                              f"({_first_line(exc)}); set jpeg_decoder torchvision") from None
        tv.note = f"nvImageCodec did not start ({_first_line(exc)}): torchvision decodes"
        return tv


def _first_line(exc) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
