"""A bad-input corpus, generated here (no binary blobs): every file gives a result or one `error:` line with exit
code 2, the server stays up and the next good request succeeds; the same for malformed requests to the server."""
import io
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from client.evaluate import main as evaluate_main
from client.preprocess import load_image
from client.segment import main as segment_main
from tests.conftest import ROOT, SMALL_SIZE as SIZE, http_post

pytestmark = pytest.mark.integration
SAMPLE = ROOT / "samples" / "camvid_0001TP_008550.jpg"


def _photo(w=96, h=64):
    return Image.open(SAMPLE).convert("RGB").resize((w, h))


def _png_header_only(w, h):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def make_corpus(d):
    """{name: (path, expected)}: expected is 'ok', 'ok-note' (works, says something) or 'error'."""
    d.mkdir(parents=True, exist_ok=True)
    photo = _photo()
    c = {}

    def save(name, im, expect, **kw):
        im.save(d / name, **kw)
        c[name] = (d / name, expect)
    save("cmyk.jpg", photo.convert("CMYK"), "ok")
    grey16 = (np.asarray(photo.convert("L"), np.uint16) * 257)
    save("grey16.png", Image.fromarray(grey16), "ok")
    pal = photo.convert("P", palette=Image.ADAPTIVE, colors=16)
    save("palette_transparent.png", pal, "ok", transparency=0)
    save("la.png", photo.convert("LA"), "ok")
    save("rgba.png", photo.convert("RGBA"), "ok")
    save("bilevel.png", photo.convert("1"), "ok")
    save("grey.png", photo.convert("L"), "ok")
    save("one_pixel.png", Image.new("RGB", (1, 1), (90, 140, 200)), "ok")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to view
    save("exif_rotated.jpg", photo, "ok", exif=exif)
    frames = [photo, photo.transpose(Image.FLIP_LEFT_RIGHT)]
    save("animated.gif", frames[0], "ok-note", save_all=True, append_images=frames[1:])
    save("animated.webp", frames[0], "ok-note", save_all=True, append_images=frames[1:])
    (d / "empty.png").write_bytes(b"")
    c["empty.png"] = (d / "empty.png", "error")
    buf = io.BytesIO()
    photo.save(buf, "JPEG")
    (d / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    c["truncated.jpg"] = (d / "truncated.jpg", "error")
    buf = io.BytesIO()
    photo.save(buf, "PNG")
    (d / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    c["truncated.png"] = (d / "truncated.png", "error")
    Image.new("1", (12000, 8000)).save(d / "bomb.png")  # 96 Mpx of zeros in a few kB
    c["bomb.png"] = (d / "bomb.png", "error")
    (d / "huge_header.png").write_bytes(_png_header_only(30000, 30000))
    c["huge_header.png"] = (d / "huge_header.png", "error")
    (d / "folder.png").mkdir()
    c["folder.png"] = (d / "folder.png", "error")
    (d / "text.jpg").write_text("this is not an image\n")
    c["text.jpg"] = (d / "text.jpg", "error")
    return c


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus") / "in")


def test_decoding_follows_what_a_viewer_shows(corpus):
    rotated = load_image(corpus["exif_rotated.jpg"][0])
    assert rotated.shape == (96, 64, 3)  # stored 96x64 landscape, shown portrait
    grey16 = load_image(corpus["grey16.png"][0])
    ref = np.asarray(_photo().convert("L"))
    assert np.abs(grey16[..., 0].astype(int) - ref).max() <= 1  # scaled from 16 bits, not clipped white
    notes = []
    first = load_image(corpus["animated.gif"][0], note=notes.append)
    assert len(notes) == 1 and "2 frames" in notes[0] and "first" in notes[0]
    second_frame_differs = not np.array_equal(first, first[:, ::-1])
    assert second_frame_differs


def test_segment_on_every_corpus_file(server, corpus, tmp_path, capsys):
    url = f"localhost:{server['ports']['http']}"
    for name, (path, expect) in corpus.items():
        rc = segment_main([str(path), "--url", url, "--model", server["model"], "--out", str(tmp_path)])
        captured = capsys.readouterr()
        err = [line for line in captured.err.splitlines() if line.strip()]
        if expect == "error":
            assert rc == 2, name
            assert len(err) == 1 and err[0].startswith("error: ") and str(path) in err[0], (name, err)
        else:
            assert rc == 0, (name, captured.err)
            assert all(line.startswith("note: ") for line in err), (name, err)
            assert (expect == "ok-note") == bool(err), (name, err)
            viewed = load_image(path, note=lambda _: None)
            labels = Image.open(tmp_path / f"{path.stem}_labels.png")
            assert labels.size == (viewed.shape[1], viewed.shape[0]), name
    for msg, name in (("too many pixels", "bomb.png"), ("too many pixels", "huge_header.png"),
                      ("empty file", "empty.png"), ("not a file", "folder.png"), ("truncated", "truncated.jpg")):
        segment_main([str(corpus[name][0]), "--url", url, "--model", server["model"]])
        assert msg in capsys.readouterr().err, name
    # the server is still up and the next good request succeeds
    assert segment_main([str(SAMPLE), "--url", url, "--model", server["model"], "--out", str(tmp_path)]) == 0


def test_evaluate_skips_each_bad_file_by_name_and_scores_the_rest(server, corpus, tmp_path, capsys):
    out = tmp_path / "report"
    rc = evaluate_main(["--images", str(corpus["cmyk.jpg"][0].parent), "--models", server["model"],
                        "--url", f"localhost:{server['ports']['grpc']}", "--protocol", "grpc", "--out", str(out)])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    bad = {n for n, (_, e) in corpus.items() if e == "error" and n != "folder.png"}  # a folder is searched
    skipped = " ".join(s["reason"] for s in report["skipped"])
    assert all(n in skipped for n in bad), skipped
    assert report["images"] == sum(e != "error" for _, e in corpus.values())


def _http(server, path, body: bytes):
    return http_post(f"http://127.0.0.1:{server['ports']['http']}{path}", body)


def _good_request_works(server):
    import tritonclient.grpc as grpc

    c = grpc.InferenceServerClient(f"localhost:{server['ports']['grpc']}")
    assert c.is_server_live() and c.is_model_ready(server["model"])
    inp = grpc.InferInput("images", [1, *SIZE, 3], "UINT8")
    inp.set_data_from_numpy(np.zeros((1, *SIZE, 3), np.uint8))
    assert c.infer(server["model"], [inp]).as_numpy("labels").shape == (1, *SIZE)


@pytest.mark.parametrize("case", ["malformed-json", "rank", "batch-over-max", "unknown-model", "wrong-input-name",
                                  "short-data"])
def test_bad_requests_are_refused_with_one_message_and_the_server_stays_up(server, case):
    import tritonclient.grpc as grpc
    from tritonclient.utils import InferenceServerException

    model = server["model"]
    if case == "malformed-json":
        status, body = _http(server, f"/v2/models/{model}/infer", b'{"inputs": [ {"name": "images", ')
        assert status in (400, 500) and "parse the request JSON" in json.loads(body)["error"], body  # 2.51: 500
    elif case == "short-data":  # header says 1xHxWx3, the JSON carries 3 numbers
        req = {"inputs": [{"name": "images", "shape": [1, *SIZE, 3], "datatype": "UINT8", "data": [1, 2, 3]}]}
        status, body = _http(server, f"/v2/models/{model}/infer", json.dumps(req).encode())
        assert status in (400, 500) and "does not match" in json.loads(body)["error"], body
    else:
        c = grpc.InferenceServerClient(f"localhost:{server['ports']['grpc']}")
        shape, name, target = [1, *SIZE, 3], "images", model
        if case == "rank":
            shape = [*SIZE, 3]
        elif case == "batch-over-max":
            shape = [3, *SIZE, 3]  # the fixture's max_batch_size is 2
        elif case == "unknown-model":
            target = "no_such_model"
        elif case == "wrong-input-name":
            name = "pixels"
        inp = grpc.InferInput(name, shape, "UINT8")
        inp.set_data_from_numpy(np.zeros(shape, np.uint8))
        with pytest.raises(InferenceServerException) as info:
            c.infer(target, [inp])
        message = str(info.value)
        assert message and len(message.splitlines()) == 1, message
        expected = {"rank": "batch-size must be <= 2", "batch-over-max": "batch-size must be <= 2", "unknown-model": "unknown model",
                    "wrong-input-name": "unexpected inference input"}[case]
        assert expected in message.lower(), message
    _good_request_works(server)
