"""The GPU python-backend model's request handling, on the CPU: batching of raw and encoded requests, one error
response per bad request while the rest of the batch is served. Triton's pb_utils and torchvision's decoders are
replaced by small stand-ins (torchvision has no CPU build here); the model itself is a stub that labels each
pixel with its red channel // 16, so every response can be checked against its own request."""
import importlib
import io
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from client import placement
from tests.server.programs import DecoupledRequest as _Request
from tests.server.programs import DLTensor as _Tensor

SIZE = (8, 12)


class _Response:
    def __init__(self, output_tensors=None, error=None):
        self.output_tensors, self.error = output_tensors or [], error


class _Error:
    def __init__(self, msg):
        self.msg = msg


def _fake_modules(monkeypatch, torchvision=True):
    pb = types.ModuleType("triton_python_backend_utils")
    pb.Tensor, pb.InferenceResponse, pb.TritonError = _Tensor, _Response, _Error
    pb.TritonModelException = RuntimeError
    pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
    pb.get_input_tensor_by_name = lambda req, name: req.get(name)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    monkeypatch.setitem(sys.modules, "placement", placement)  # beside model.py in a built directory
    monkeypatch.setitem(sys.modules, "nvidia.nvimgcodec", None)  # not installed unless a test says so
    if not torchvision:  # import fails as if torchvision were absent
        monkeypatch.setitem(sys.modules, "torchvision", None)
        monkeypatch.setitem(sys.modules, "torchvision.io", None)
        return

    def decode(data, mode=None, device="cpu"):
        if isinstance(data, list):
            return [decode(d) for d in data]
        try:
            img = Image.open(io.BytesIO(data.numpy().tobytes())).convert("RGB")
        except Exception as exc:
            raise RuntimeError(f"bad image: {exc}") from None
        return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)

    tv, tvio = types.ModuleType("torchvision"), types.ModuleType("torchvision.io")
    tvio.decode_jpeg = tvio.decode_image = decode
    tvio.ImageReadMode = types.SimpleNamespace(RGB="RGB")
    tv.io = tvio
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.io", tvio)


def _stub(x):
    return (x[..., 0] // 16).contiguous()


def make_model(monkeypatch, size=SIZE, torchvision=True, nvimgcodec=None, runner=_stub, **kw):
    """The program configured on the CPU: a stand-in runner (labels = red // 16) per captured (bucket, size)."""
    _fake_modules(monkeypatch, torchvision)
    if nvimgcodec is not None:
        monkeypatch.setitem(sys.modules, "nvidia.nvimgcodec", nvimgcodec)
    mod = importlib.reload(importlib.import_module("server.models.gpu_model"))  # bind the stand-in pb_utils
    m = mod.TritonPythonModel()
    kw.setdefault("respond", "inline")
    m._configure(torch, torch.device("cpu"), size, capture=lambda s, buckets: runner, buckets=(1, 2, 4), **kw)
    return m


@pytest.fixture
def model(monkeypatch):
    return make_model(monkeypatch, timing=True)


def _raw(n, value):
    return {"images": _Tensor("images", torch.full((n, *SIZE, 3), value, dtype=torch.uint8))}


def _encoded(fmt, value, size=SIZE):
    buf = io.BytesIO()
    Image.fromarray(np.full((*size, 3), value, np.uint8)).save(buf, format=fmt, quality=100)
    return {"encoded": _Tensor("encoded", torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)[None])}


def test_mixed_batch_is_served_and_bad_requests_get_their_own_error(model):
    bad_shape = {"images": _Tensor("images", torch.zeros((1, 4, 4, 3), dtype=torch.uint8))}
    corrupt = {"encoded": _Tensor("encoded", torch.tensor([[0xFF, 0xD8, 1, 2, 3]], dtype=torch.uint8))}
    both = {**_raw(1, 0), **_encoded("PNG", 0)}
    requests = [_raw(2, 160), _encoded("JPEG", 96), bad_shape, _encoded("PNG", 48, size=(16, 20)), corrupt, both, {}]
    out = model.execute(requests)
    assert len(out) == len(requests)
    assert [r.error.msg if r.error else "ok" for r in out][:2] == ["ok", "ok"]
    labels = [r.output_tensors[0].t if not r.error else None for r in out]
    assert labels[0].shape == (2, *SIZE) and (labels[0] == 10).all()
    assert labels[1].shape == (1, *SIZE) and (labels[1] == 6).all()  # JPEG decoded (value 96 survives q=100)
    assert labels[3].shape == (1, *SIZE) and (labels[3] == 3).all()  # PNG of another size, resized
    assert "must be uint8 [n,8,12,3]" in out[2].error.msg
    assert "not a readable JPEG/PNG" in out[4].error.msg
    assert "exactly one input" in out[5].error.msg and "exactly one input" in out[6].error.msg
    assert model.stats.batches == 1 and model.stats.images == 4


def _boom(x):
    raise RuntimeError("CUDA out of memory")


def test_a_failing_model_answers_every_request_with_the_error(monkeypatch):
    model = make_model(monkeypatch, runner=_boom)
    out = model.execute([_raw(1, 0), _encoded("PNG", 0)])
    assert all(r.error and "inference failed: CUDA out of memory" in r.error.msg for r in out)


def test_encoded_input_without_torchvision_is_a_clear_error_and_raw_requests_still_run(monkeypatch):
    model = make_model(monkeypatch, torchvision=False)
    out = model.execute([_encoded("PNG", 0), _raw(1, 32)])
    assert "needs torchvision" in out[0].error.msg
    assert out[1].error is None and (out[1].output_tensors[0].t == 2).all()


def test_the_bad_input_corpus_as_encoded_bytes_each_gets_its_own_answer(model, tmp_path):
    from tests.integration.test_bad_inputs import make_corpus

    corpus = {n: v for n, v in make_corpus(tmp_path / "corpus").items() if v[0].is_file()}
    corpus.pop("bomb.png")  # 96 Mpx: the stand-in decoder (Pillow) refuses it like the file client does
    rng = np.random.default_rng(0)
    blobs = {n: p.read_bytes() for n, (p, _) in corpus.items()}
    blobs["garbage"] = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    blobs["garbage_jpeg_magic"] = b"\xff\xd8" + rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    names = list(blobs)
    requests = [{"encoded": _Tensor("encoded", torch.frombuffer(bytearray(b), dtype=torch.uint8)[None]
                                    if b else torch.zeros((1, 0), dtype=torch.uint8))} for b in blobs.values()]
    out = []
    for i in range(0, len(requests), 3):  # batches within the stand-in's staging size (4 images)
        chunk = requests[i:i + 3] + [_raw(1, 64)]  # a good request rides along in every batch
        answers = model.execute(chunk)
        assert len(answers) == len(chunk) and answers[-1].error is None
        assert (answers[-1].output_tensors[0].t == 4).all()
        out += answers[:-1]
    out.append(answers[-1])
    for name, r in zip(names, out):
        bad = name.startswith("garbage") or corpus.get(name, (None, "error"))[1] == "error"
        if bad:
            assert r.error is not None and "not a readable JPEG/PNG" in r.error.msg, name
            assert len(r.error.msg.splitlines()) == 1, name
        else:
            assert r.error is None and r.output_tensors[0].t.shape == (1, *SIZE), name
    assert out[-1].error is None and (out[-1].output_tensors[0].t == 4).all()  # the good raw request is served


def test_the_built_gpu_directory_checks_its_weights_file_with_the_shared_runtime(tiny_weights, tmp_path, monkeypatch):
    """The GPU row's directory holds segformer_runtime.py beside model.py; a weights_file outside the directory or
    missing is refused by it before anything reaches the GPU."""
    from build.repository import write_repository
    from build.variants import PYTHON_GPU, ServingVariant
    from server.models import segformer_runtime
    from tests.server.programs import load_program

    row = ServingVariant("tiny_gpu", str(tiny_weights), PYTHON_GPU, precision="fp16", size=(64, 64), max_batch=2)
    repo = tmp_path / "repo"
    assert write_repository([row], repo, log=lambda *_: None, cache_dir=tmp_path / "c") == {"tiny_gpu": "built"}
    version = repo / "tiny_gpu" / "1"
    assert (version / "segformer_runtime.py").read_bytes() == open(segformer_runtime.__file__, "rb").read()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # reach the file check on a CPU machine
    monkeypatch.setattr(torch.cuda, "set_device", lambda *_: None)
    cfg = repo / "tiny_gpu" / "config.pbtxt"
    text = cfg.read_text()
    assert '"tiny-test.json"' in text  # the entry's file, written beside model.py (not the row's weights path)
    cfg.write_text(text.replace('"tiny-test.json"', '"../../../etc/passwd"'))
    with pytest.raises(ValueError, match="outside the model directory"):
        load_program(repo / "tiny_gpu", monkeypatch)
    cfg.write_text(text.replace('"tiny-test.json"', '"gone.json"'))
    with pytest.raises(ValueError, match="gone.json is missing"):
        load_program(repo / "tiny_gpu", monkeypatch)


# -- the dynamic-size row, deferred responses, the stage split, the decoder choice ----------------------------
RANGE = ((32, 32), (128, 256))  # a dynamic row's range, scaled down (the shipped one: 256x256 .. 1024x2048)


def _dynamic(monkeypatch, **kw):
    return make_model(monkeypatch, size=(64, 64), size_range=RANGE, sizes=((64, 64), (96, 128)), cap=2, **kw)


def test_dynamic_row_serves_multiples_of_32_at_their_size_and_refuses_others_in_one_line(monkeypatch):
    m = _dynamic(monkeypatch)
    assert m.graphs.captured == 2 * 3  # both listed sizes, every bucket, at load
    frames = [(1, 96, 128, 160), (1, 40, 64, 0), (1, 64, 512, 0), (2, 64, 96, 32)]
    out = m.execute([{"images": _Tensor("images", torch.full((n, h, w, 3), v, dtype=torch.uint8))}
                     for n, h, w, v in frames])
    assert out[0].error is None and out[0].output_tensors[0].t.shape == (1, 96, 128)
    assert (out[0].output_tensors[0].t == 10).all()
    msg = out[1].error.msg
    assert len(msg.splitlines()) == 1 and "images of 40x64" in msg
    assert "multiples of 32 from 32x32 to 128x256" in msg and "captured at load: 64x64, 96x128" in msg
    assert "pad the frame to 64x64" in msg
    assert "64x512" in out[2].error.msg and "scale the frame into that range" in out[2].error.msg
    assert out[3].error is None and out[3].output_tensors[0].t.shape == (2, 64, 96)  # not listed: captured now
    assert (out[3].output_tensors[0].t == 2).all()
    assert m.graphs.captured == 2 * 3 + 1 and list(m.graphs.lazy) == [(2, (64, 96))]


def test_dynamic_row_places_an_encoded_frame_as_the_client_does(monkeypatch):
    m = _dynamic(monkeypatch)
    small, large = _encoded("PNG", 160, size=(40, 50)), _encoded("PNG", 80, size=(300, 300))
    out = m.execute([small, large, _encoded("PNG", 48, size=(96, 128))])
    assert all(r.error is None for r in out), [r.error.msg for r in out if r.error]
    a, b, c = (r.output_tensors[0].t for r in out)
    want = placement.place((40, 50), (64, 64), RANGE)  # its own size, padded to multiples of 32
    assert tuple(a.shape[1:]) == want.input_size == (64, 64) and want.content == (40, 50)
    assert (a[0, :40, :50] == 10).all() and (a[0, 40:] == 0).all() and (a[0, :, 50:] == 0).all()
    assert tuple(b.shape[1:]) == placement.place((300, 300), (64, 64), RANGE).input_size == (128, 128)  # scaled in
    assert (b == 5).all()
    assert c.shape == (1, 96, 128) and (c == 3).all()  # already a listed size: as it is


def test_dynamic_row_refuses_listed_sizes_outside_its_range_at_load(monkeypatch):
    with pytest.raises(ValueError, match="config parameter sizes: images of 100x128"):
        make_model(monkeypatch, size=(64, 64), size_range=RANGE, sizes=((100, 128),))


def test_deferred_responses_come_from_the_responder_once_each_in_order(monkeypatch):
    m = make_model(monkeypatch, respond="deferred", depth=3, timing=True)
    batches = []
    for k in range(7):  # more batches than pinned label buffers (3): each buffer comes back before reuse
        reqs = [_Request(_raw(1, 16 * k)), _Request(_encoded("PNG", 16 * k + 8)), _Request({})]
        assert m.execute(reqs) is None  # answered by the responder thread
        batches.append((k, reqs))
    m.responder.drain()
    for k, (raw, enc, bad) in batches:
        assert [len(r.sender.sent) for r in (raw, enc, bad)] == [1, 1, 1]
        assert all(flags == 1 for r in (raw, enc, bad) for _, flags in r.sender.sent)  # COMPLETE_FINAL
        assert (raw.sender.sent[0][0].output_tensors[0].t == k).all()
        assert (enc.sender.sent[0][0].output_tensors[0].t == k).all()
        assert "exactly one input" in bad.sender.sent[0][0].error.msg
    assert m.pool.free.qsize() == 3 and m.stats.batches == 7
    m.finalize()


class _OldRequest(dict):
    def get_response_sender(self):
        raise RuntimeError("'get_response_sender' function must be called only from decoupled models")


def test_deferred_mode_falls_back_to_inline_where_triton_has_no_sender(monkeypatch, capsys):
    m = make_model(monkeypatch, respond="deferred")
    out = m.execute([_raw(1, 32)])  # requests without the method (stand-ins): this batch inline
    assert out[0].error is None and (out[0].output_tensors[0].t == 2).all() and m.responder is not None
    out = m.execute([_OldRequest(_raw(1, 48))])  # a Triton before 24.06: no sender in the default mode
    assert out[0].error is None and (out[0].output_tensors[0].t == 3).all() and m.responder is None
    assert "responses inline: no response sender in this Triton" in capsys.readouterr().out
    assert m.execute([_Request(_raw(1, 64))])[0].error is None  # inline from here on


def test_a_failing_model_answers_every_deferred_request_with_the_error(monkeypatch):
    m = make_model(monkeypatch, respond="deferred", runner=_boom)
    reqs = [_Request(_raw(1, 0)), _Request(_encoded("PNG", 0))]
    assert m.execute(reqs) is None
    m.responder.drain()
    assert all("inference failed: CUDA out of memory" in r.sender.sent[0][0].error.msg for r in reqs)
    assert m.pool.free.qsize() == 2  # the batch's buffer came back


def test_timing_line_splits_every_stage_wall_and_gpu(monkeypatch, capsys):
    m = make_model(monkeypatch, timing=True)
    m.stats.every = 2
    for _ in range(2):
        m.execute([_raw(2, 64), _encoded("JPEG", 96)])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("[segformer_gpu] 2 batches, 3.0 img/batch; ms per batch (wall/GPU): parse ")
    for stage in ("decode", "fit", "upload", "model", "D2H"):  # on the GPU: wall/GPU-event pairs
        assert f" {stage} " in line and line.split(f" {stage} ")[1].split(",")[0].count("/") == 1, stage
    assert ", responses " in line and "waiting on the GPU" in line and "raw requests on the GPU 0 of 2" in line
    assert "decoder torchvision (nvJPEG)" in line and "responses inline" in line


def _fake_nvimgcodec(calls, fail_start=None):
    """nvImageCodec 0.9's Python surface as far as the program uses it, strictly (unknown names and keywords
    fail as they do in the real module): Decoder(device_id=...), DecodeParams(apply_exif_orientation, color_spec,
    allow_any_depth, sample_format), ColorSpec.SRGB, SampleFormat.I_RGB, CodeStream(array), a batch decode over
    CodeStreams answering None for a file it cannot decode."""
    codec = types.ModuleType("nvidia.nvimgcodec")

    class CodeStream:
        def __init__(self, array, bitstream_offset=None):
            assert isinstance(array, np.ndarray) and array.dtype == np.uint8
            self.array = array

    class Decoder:
        def __init__(self, device_id=-1, max_num_cpu_threads=0, backends=None, options=""):
            if fail_start:
                raise RuntimeError(fail_start)
            self.device_id = device_id

        def decode(self, srcs, *, images=None, params=None, cuda_stream=0):
            assert all(isinstance(s, CodeStream) for s in srcs), "the batch call takes CodeStreams"
            calls.append(len(srcs))
            out = []
            for s in srcs:
                a = s.array
                if bytes(a[:2]) != b"\xff\xd8":
                    out.append(None)  # as nvImageCodec answers a file it cannot decode
                    continue
                try:
                    out.append(torch.from_numpy(np.asarray(Image.open(io.BytesIO(a.tobytes())).convert("RGB")).copy()))
                except Exception:
                    out.append(None)
            return out

    def decode_params(apply_exif_orientation=True, color_spec="srgb", allow_any_depth=False,
                      sample_format="auto"):
        return {"exif": apply_exif_orientation, "color": color_spec, "format": sample_format}

    codec.Decoder, codec.CodeStream, codec.DecodeParams = Decoder, CodeStream, decode_params
    codec.ColorSpec = types.SimpleNamespace(UNCHANGED="unchanged", SRGB="srgb", GRAY="gray")
    codec.SampleFormat = types.SimpleNamespace(I_RGB="i_rgb", P_RGB="p_rgb", I_AUTO_COMPONENTS="auto")
    return codec


def test_nvimgcodec_decodes_the_batch_in_one_call_where_it_imports(monkeypatch):
    calls = []
    m = make_model(monkeypatch, nvimgcodec=_fake_nvimgcodec(calls), decoder="nvimgcodec")
    assert m.decoder.name == "nvImageCodec" and m.decoder.params == {"exif": True, "color": "srgb",
                                                                      "format": "i_rgb"}
    corrupt = {"encoded": _Tensor("encoded", torch.tensor([[0xFF, 0xD8, 1, 2, 3]], dtype=torch.uint8))}
    out = m.execute([_encoded("JPEG", 96), _encoded("JPEG", 160, size=(16, 20)), _encoded("PNG", 48), corrupt])
    assert calls == [4]  # every file of the batch in one decode call
    assert [r.error is None for r in out] == [True, True, True, False]
    assert [int(r.output_tensors[0].t.float().mean()) for r in out[:3]] == [6, 10, 3]  # PNG: torchvision's turn
    assert "not a readable JPEG/PNG" in out[3].error.msg and len(out[3].error.msg.splitlines()) == 1


def test_an_nvimgcodec_that_does_not_start_leaves_the_model_loadable(monkeypatch):
    """Found on the H200: an nvImageCodec that imports but does not start must not take the model down with it
    where torchvision can decode (or under `auto` without either: raw requests still run); named outright with
    nothing to fall back on it is one load error naming the way out."""
    broken = _fake_nvimgcodec([], fail_start="no NVJPG engine")
    m = make_model(monkeypatch, nvimgcodec=broken, decoder="nvimgcodec")
    assert m.decoder.name == "torchvision (nvJPEG)" and "no NVJPG engine" in m.decoder.note
    assert make_model(monkeypatch, torchvision=False, nvimgcodec=broken, decoder="auto").decoder.name == "none"
    with pytest.raises(ImportError, match="does not start here .no NVJPG engine.; set jpeg_decoder torchvision"):
        make_model(monkeypatch, torchvision=False, nvimgcodec=broken, decoder="nvimgcodec")


def test_the_shipped_default_is_the_decoder_measured_on_the_gpu(monkeypatch):
    calls = []
    assert make_model(monkeypatch, nvimgcodec=_fake_nvimgcodec(calls)).decoder.name == "torchvision (nvJPEG)"


def test_decoder_choice_without_nvimgcodec(monkeypatch):
    assert make_model(monkeypatch).decoder.name == "torchvision (nvJPEG)"
    with pytest.raises(ImportError, match="pip install nvidia-nvimgcodec-cu13"):
        make_model(monkeypatch, decoder="nvimgcodec")
    with pytest.raises(ValueError, match="choose from auto, nvimgcodec, torchvision"):
        make_model(monkeypatch, decoder="pillow")
