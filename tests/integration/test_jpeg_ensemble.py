"""JPEG/PNG in through the pip Triton: a tiny imported-format row (fixed size and dynamic size) and the null model,
each with its `_jpeg` ensemble, and a row without one. Encoded files give exactly the labels the raw path gives (same decode, same
placement, restored the same way), over HTTP and gRPC; client.segment --payload jpeg prints the licence and writes
the same label PNG; a bad file is that request's error."""
import io

import numpy as np
import pytest
from PIL import Image

from tests.conftest import free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def jpeg_server(tiny_weights, tmp_path_factory):
    import server.serve as serve
    from build.repository import write_repository
    from build.variants import PYTHON_NULL, PYTHON_ORT, ServingVariant, jpeg_rows

    tmp = tmp_path_factory.mktemp("jpeg")
    w = str(tiny_weights)
    rows = [ServingVariant("tiny", w, PYTHON_ORT, size=(64, 96), max_batch=2),
            ServingVariant("tinydyn", w, PYTHON_ORT, size=(128, 128), size_range=((64, 64), (256, 256)), max_batch=2),
            ServingVariant("null", w, PYTHON_NULL, size=(64, 96), max_batch=4)]
    rows += [j for r in rows for j in jpeg_rows(r)] + [ServingVariant("plain", w, PYTHON_NULL, size=(64, 96))]
    repo = tmp / "model_repository"
    built = write_repository(rows, repo, log=lambda *_: None, cache_dir=tmp / "cache")
    assert set(built.values()) == {"built"}, built
    # ensembles are part of Triton itself: the launcher must not leave them out for want of a backend folder
    # (server/serve.py: PLATFORM_BACKENDS / load_args; see the report of issue 33)
    mp = pytest.MonkeyPatch()
    mp.setitem(serve.PLATFORM_BACKENDS, "ensemble", "python")
    ports = {k: free_port() for k in ("http", "grpc", "metrics")}
    proc = serve.start(repo, ports["http"], ports["grpc"], ports["metrics"], state=tmp / "state")
    yield {"http": f"127.0.0.1:{ports['http']}", "grpc": f"127.0.0.1:{ports['grpc']}", "tmp": tmp}
    serve.stop_pid(proc.pid)
    mp.undo()


def _files(tmp, camvid_dir):
    """Three CamVid test frames where present, else synthetic ones; plus a PNG of another aspect ratio."""
    files = sorted((camvid_dir / "test" / "images").glob("*.jpg"))[:3] if camvid_dir else []
    rng = np.random.default_rng(1)
    if not files:
        for i in range(3):
            p = tmp / f"s{i}.jpg"
            Image.fromarray(rng.integers(0, 255, (360, 480, 3), np.uint8)).save(p, quality=90)
            files.append(p)
    png = tmp / "tall.png"
    Image.fromarray(rng.integers(0, 255, (300, 140, 3), np.uint8)).save(png)
    return files + [png]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("row", ["tiny", "tinydyn", "null"])
def test_encoded_files_give_the_labels_of_raw_frames(jpeg_server, protocol, row):
    from client.policy import InputPolicy
    from client.preprocess import load_image
    from client.runners import TritonRunner
    from client.segment import encoded_labels
    from tests.conftest import CAMVID

    url = jpeg_server[protocol]
    camvid_dir = CAMVID if (CAMVID / "test" / "images").is_dir() else None
    with TritonRunner(row, url, protocol) as raw, TritonRunner(row + "_jpeg", url, protocol) as enc:
        assert enc.takes_encoded and enc.info.size == raw.info.size and enc.info.size_range == raw.info.size_range
        assert enc.info.classes == raw.info.classes and enc.info.licence == raw.info.licence == "unknown"
        for path in _files(jpeg_server["tmp"], camvid_dir):
            image = load_image(path)
            want = InputPolicy.for_model(raw.info).predict(image, raw)
            got = encoded_labels(enc, path.read_bytes(), image.shape[:2])
            assert got.shape == image.shape[:2] and np.array_equal(got, want), path.name


def test_a_bad_file_is_that_requests_error(jpeg_server):
    from client.runners import RunnerError, TritonRunner

    with TritonRunner("tiny_jpeg", jpeg_server["http"]) as enc:
        with pytest.raises(RunnerError, match="not a usable JPEG/PNG image"):
            enc.infer_encoded(b"GIF89a not really")
        buf = io.BytesIO()
        Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(buf, format="JPEG")
        labels, placement = enc.infer_encoded(buf.getvalue())  # the server carries on
        assert labels.shape == (64, 96) and placement == [64, 64, 40, 40]


def test_segment_payload_jpeg(jpeg_server, tmp_path, capsys):
    from client.segment import main

    path = _files(tmp_path, None)[0]
    for payload in ("raw", "jpeg", "auto"):
        assert main([str(path), "--url", jpeg_server["http"], "--model", "tiny", "--payload", payload,
                     "--out", str(tmp_path / payload)]) == 0
        out = capsys.readouterr().out
        assert "tiny: WARNING: weights licence unknown" in out or "tiny_jpeg: WARNING" in out
        assert ("KiB JPG" in out) == (payload != "raw"), out
    same = [np.asarray(Image.open(tmp_path / p / f"{path.stem}_labels.png")) for p in ("raw", "jpeg", "auto")]
    assert np.array_equal(same[0], same[1]) and np.array_equal(same[0], same[2])
    # a row without a served ensemble: jpeg is refused with the fix, auto falls back to raw frames
    assert main([str(path), "--url", jpeg_server["http"], "--model", "plain", "--payload", "jpeg",
                 "--out", str(tmp_path / "x")]) == 2
    assert "plain_jpeg is not served" in capsys.readouterr().err
    assert main([str(path), "--url", jpeg_server["http"], "--model", "plain", "--payload", "auto",
                 "--out", str(tmp_path / "x")]) == 0
    assert "64x96 (fit" in capsys.readouterr().out
    assert main([str(path), "--url", jpeg_server["http"], "--model", "tiny", "--payload", "jpeg", "--resize",
                 "stretch", "--out", str(tmp_path / "x")]) == 2
    assert "places images as `fit`" in capsys.readouterr().err
