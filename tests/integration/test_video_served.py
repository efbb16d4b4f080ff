"""A short video made from CamVid test frames, through the real Triton: the overlay video has the input's frame
count, size and frame rate, and the label maps equal client.segment's for the same frames as images."""
import av
import numpy as np
import pytest
from PIL import Image

from client.segment import main as segment_main
from client.video import save_frames
from tests.conftest import ROOT

pytestmark = pytest.mark.integration
CAMVID = ROOT.parent / "shared" / "datasets" / "camvid" / "test" / "images"


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    if not CAMVID.is_dir():
        pytest.skip(f"needs CamVid test frames at {CAMVID} (../shared)")
    files = sorted(CAMVID.glob("0001TP_*.jpg"))[:6]
    path = tmp_path_factory.mktemp("video") / "camvid.mp4"
    with av.open(str(path), "w") as box:
        s = box.add_stream("libx264", rate=15)
        s.width, s.height, s.pix_fmt = 480, 360, "yuv420p"
        for f in files:
            frame = av.VideoFrame.from_ndarray(np.asarray(Image.open(f).convert("RGB")), format="rgb24")
            for p in s.encode(frame):
                box.mux(p)
        for p in s.encode():
            box.mux(p)
    return path


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_video_through_triton_matches_the_image_client(server, clip, tmp_path, capsys, protocol):
    """Over both protocols: HTTP clients belong to the thread that made them, so the in-flight threads each need
    their own (before, every frame over HTTP failed with "Cannot switch to a different thread")."""
    url = f"localhost:{server['ports'][protocol]}"
    common = ["--url", url, "--protocol", protocol, "--model", server["model"]]
    assert segment_main([str(clip), *common, "--out", str(tmp_path / "v"), "--labels", "--in-flight", "3"]) == 0
    summary = capsys.readouterr().out
    assert "6 frames 480x360 at 15.00 fps" in summary and "end to end (3 in flight)" in summary
    with av.open(str(tmp_path / "v" / "camvid_overlay.mp4")) as box:
        s = box.streams.video[0]
        n = sum(1 for _ in box.decode(video=0))
        assert (n, s.codec_context.width, s.codec_context.height, float(s.average_rate)) == (6, 480, 360, 15.0)
        assert s.codec_context.name == "h264"
    frames = save_frames(clip, tmp_path / "frames")  # the same decoded frames, as images
    assert segment_main([*map(str, frames), *common, "--out", str(tmp_path / "i")]) == 0
    for i, f in enumerate(frames):
        video_labels = np.asarray(Image.open(tmp_path / "v" / "camvid_labels" / f"{i:06d}.png"))
        image_labels = np.asarray(Image.open(tmp_path / "i" / f"{f.stem}_labels.png"))
        assert np.array_equal(video_labels, image_labels), i
