"""Video in, video out with a stand-in runner (no server): frame order, sizes, frame rate, labels, partial runs."""
import threading
import time

import av
import numpy as np
import pytest
from PIL import Image

from client.runners import ModelInfo, Runner, RunnerError
from client.segment import main as segment_main
from client.video import VideoError, open_source, save_frames, segment_video

SIZE = (64, 96)  # the stand-in model's input, H x W


class FakeRunner(Runner):
    """Labels every pixel with the frame's mean red // 32; answers out of order (random delays). Shared by the
    worker threads like a real runner; records which threads released their connection."""

    def __init__(self, fail_at_value=None):
        self.info, self.model, self.fail_at_value = None, "fake", fail_at_value
        self.rng = np.random.default_rng(threading.get_ident() % 1000)
        self.released = set()

    def release(self):
        self.released.add(threading.get_ident())

    def activate(self):
        self.info = ModelInfo("fake", SIZE, 4, [f"c{i}" for i in range(8)], [(i * 30, 0, 0) for i in range(8)])
        return self.info

    def infer(self, x, logits=False):
        time.sleep(float(self.rng.uniform(0, 0.02)))
        value = int(x[0, :, :, 0].mean()) // 32
        if self.fail_at_value is not None and value == self.fail_at_value:
            raise RunnerError("inference on fake failed: the server is gone")
        return np.full(x.shape[:3], value, np.uint8)

    def deactivate(self):
        pass


def make_video(path, n=12, size=(96, 64), fps=10, codec="libx264", container=None):
    """Frame i is a flat red level 20 * i: its label is (20 * i) // 32, so order can be checked per frame."""
    with av.open(str(path), "w", format=container) as box:
        s = box.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(n):
            img = np.zeros((size[1], size[0], 3), np.uint8)
            img[..., 0] = (20 * i) % 256
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                box.mux(p)
        for p in s.encode():
            box.mux(p)
    return path


def _read(path):
    with av.open(str(path)) as box:
        s = box.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in box.decode(video=0)]
        return frames, float(s.average_rate), (s.codec_context.width, s.codec_context.height), s.codec_context.name


def test_frames_come_out_in_order_with_the_inputs_size_and_rate(tmp_path):
    video = make_video(tmp_path / "drive.mp4")
    s = segment_video(open_source(video), FakeRunner(), tmp_path / "out", in_flight=4, labels=True, progress=False)
    assert s["stopped"] is None and s["frames"] == 12 and s["in_flight"] == 4
    frames, fps, size, codec = _read(tmp_path / "out" / "drive_overlay.mp4")
    assert len(frames) == 12 and fps == 10 and size == (96, 64) and codec == "h264"
    decoded = open_source(video)
    for i, src in enumerate(decoded.frames()):
        lab = np.asarray(Image.open(tmp_path / "out" / "drive_labels" / f"{i:06d}.png"))
        assert lab.shape == (64, 96) and (lab == int(src[..., 0].mean()) // 32).all(), i  # the right frame's answer
    assert s["p50_ms"] > 0 and s["fps_end_to_end"] > 0


def test_a_folder_of_frames_is_a_video_with_video(tmp_path, capsys):
    frames = save_frames(make_video(tmp_path / "v.mp4", n=5), tmp_path / "frames")
    assert len(frames) == 5
    src = open_source(tmp_path / "frames", fps=12)
    assert src.count == 5 and src.fps == 12 and src.size == (96, 64)
    s = segment_video(src, FakeRunner(), tmp_path / "out", in_flight=2, progress=False)
    assert s["frames"] == 5 and _read(tmp_path / "out" / "frames_overlay.mp4")[1] == 12
    Image.new("RGB", (10, 10)).save(tmp_path / "frames" / "999999.png")  # a frame of another size stops it
    s = segment_video(open_source(tmp_path / "frames"), FakeRunner(), tmp_path / "out2", 2, progress=False)
    assert s["frames"] == 5 and "999999.png is 10x10" in s["stopped"]


def test_server_gone_mid_video_leaves_a_playable_file_and_names_the_frame(tmp_path):
    video = make_video(tmp_path / "drive.mp4", n=12)
    s = segment_video(open_source(video), FakeRunner(fail_at_value=3), tmp_path / "out", 3, progress=False)
    # frames 5 and 6 (red 100, 120) give label 3: the run stops there with frames 0-4 written, in order
    assert s["frames"] == 5 and s["stopped"].startswith("frame 5: ") and "server is gone" in s["stopped"]
    assert len(_read(tmp_path / "out" / "drive_overlay.mp4")[0]) == 5


def test_truncated_video_segments_what_it_can_read(tmp_path, capsys):
    video = make_video(tmp_path / "drive.ts", n=30, size=(320, 240), container="mpegts")  # a stream, as cameras write
    data = video.read_bytes()
    cut = tmp_path / "cut.ts"
    cut.write_bytes(data[: len(data) // 2])
    s = segment_video(open_source(cut), FakeRunner(), tmp_path / "out", 2, progress=False)
    assert 0 < s["frames"] < 30
    assert len(_read(tmp_path / "out" / "cut_overlay.mp4")[0]) == s["frames"]  # what was read is written, playable
    mp4 = make_video(tmp_path / "drive.mp4", n=30, size=(320, 240))  # MP4 keeps its index at the end: cut, unreadable
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(mp4.read_bytes()[: mp4.stat().st_size // 2])
    assert segment_main([str(cut), "--url", "localhost:1", "--model", "m"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "cut.mp4" in err[0]


@pytest.mark.parametrize("kind", ["no-video-stream", "not-a-video", "missing", "zero-frames"])
def test_bad_videos_are_one_line_errors(tmp_path, capsys, kind):
    p = tmp_path / "bad.mp4"
    if kind == "no-video-stream":
        with av.open(str(p), "w") as box:
            a = box.add_stream("aac", rate=8000)
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate = 8000
            for pkt in a.encode(frame):
                box.mux(pkt)
            for pkt in a.encode():
                box.mux(pkt)
    elif kind == "not-a-video":
        p.write_text("hello")
    elif kind == "zero-frames":
        with av.open(str(p), "w") as box:
            s = box.add_stream("libx264", rate=10)
            s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
    rc = segment_main([str(p), "--url", "localhost:1", "--model", "m"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and "bad.mp4" in err[0], err


def test_the_h264_encoder_takes_slice_or_frame_threads_and_the_file_plays(tmp_path):
    """libx264's threading is chosen (slice by default, frame for bench.video --encoder-thread-type); either way the
    file decodes to every frame, in order."""
    from client.video import Writer

    for kind in ("SLICE", "FRAME"):
        w = Writer(tmp_path / kind, "t", (96, 64), 10.0, labels=False, threads=2, thread_type=kind)
        try:
            assert w.codec == "libx264" and w.stream.codec_context.thread_type.name == kind
            for i in range(6):
                w.encode(w.frame(np.full((64, 96, 3), 40 * i, np.uint8)))
        finally:
            w.close()
        frames, fps, size, codec = _read(tmp_path / kind / "t_overlay.mp4")
        assert len(frames) == 6 and codec == "h264" and size == (96, 64)
        assert [round(float(f.mean()) / 40) for f in frames] == list(range(6))
