"""The staged video pipeline (client.video_pipeline): frame order when answers come back out of order, a bounded
window of frames whatever the order, per-stage times in the summary, the no-model runner, the integer overlay,
Ctrl-C mid-run."""
import _thread
import threading
import time

import numpy as np
import pytest
from PIL import Image

from client.runners import RunnerError
from client.video import format_summary, open_source, segment_video
from client.video_pipeline import STAGES, NoModelRunner, fast_overlay
from client.visualize import palette_lut
from client.visualize import overlay
from tests.client.test_video import SIZE, FakeRunner, _read, make_video


class SlowFirstRunner(FakeRunner):
    """Frame 0 (red 0) answers only after `hold` seconds, every other frame at once; counts the requests made
    while frame 0 was pending."""

    def __init__(self, hold: float = 1.0):
        super().__init__()
        self.hold, self.calls, self.calls_while_held, self.lock = hold, 0, None, threading.Lock()
        self.holding = False  # frame 13 is red 4 too (20 * 13 % 256): only the first is held

    def infer(self, x, logits=False):
        with self.lock:
            self.calls += 1
            first = int(x[0, :, :, 0].mean()) < 5 and self.calls_while_held is None and not self.holding
            self.holding = self.holding or first
        if first:
            time.sleep(self.hold)
            with self.lock:
                self.calls_while_held = self.calls
        return np.full(x.shape[:3], int(x[0, :, :, 0].mean()) // 32, np.uint8)


class ReversingRunner(FakeRunner):
    """Within every group of `k` frames the later ones answer first (frame i waits (k - i % k) * 15 ms)."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def infer(self, x, logits=False):
        value = int(x[0, :, :, 0].mean())
        i = round(value / 20)
        time.sleep((self.k - i % self.k) * 0.015)
        return np.full(x.shape[:3], value // 32, np.uint8)


def _labels_in_order(tmp_path, video, out, n):
    for i, src in enumerate(open_source(video).frames()):
        lab = np.asarray(Image.open(out / f"{i:06d}.png"))
        assert (lab == int(src[..., 0].mean()) // 32).all(), f"frame {i} holds another frame's labels"
    assert len(list(out.glob("*.png"))) == n


def test_frames_are_written_in_order_when_later_frames_answer_first(tmp_path):
    video = make_video(tmp_path / "drive.mp4", n=12)
    s = segment_video(open_source(video), ReversingRunner(4), tmp_path / "out", in_flight=4, labels=True,
                      progress=False, overlay_threads=3)
    assert s["stopped"] is None and s["frames"] == 12 and s["overlay_threads"] == 3
    _labels_in_order(tmp_path, video, tmp_path / "out" / "drive_labels", 12)
    frames = _read(tmp_path / "out" / "drive_overlay.mp4")[0]
    reds = [int(f[..., 0].mean()) for f in frames]
    assert reds == sorted(reds) and len(frames) == 12  # the overlay's red grows with the frame index: in order


def test_a_slow_frame_holds_at_most_the_window(tmp_path):
    """Frame 0 answers last: the frames behind it wait in the out-of-order buffer, and the decoder stops reading
    once the window is full, so memory stays flat however long one answer takes."""
    video = make_video(tmp_path / "drive.mp4", n=40)
    runner = SlowFirstRunner(hold=1.0)
    s = segment_video(open_source(video), runner, tmp_path / "out", in_flight=3, progress=False, overlay_threads=1,
                      window=6)
    assert s["stopped"] is None and s["frames"] == 40 and s["window"] == 6
    assert runner.calls_while_held <= 6, runner.calls_while_held  # 40 without a window
    assert 1 <= s["max_frames_held"] <= 6
    assert len(_read(tmp_path / "out" / "drive_overlay.mp4")[0]) == 40


def test_the_summary_gives_each_stages_time(tmp_path):
    video = make_video(tmp_path / "drive.mp4", n=8)
    s = segment_video(open_source(video), FakeRunner(), tmp_path / "out", in_flight=2, progress=False)
    assert set(s["stages"]) == set(STAGES)
    for name, st in s["stages"].items():
        assert st["ms_per_frame"] > 0 and st["threads"] >= 1 and st["fps_ceiling"] > 0, name
    assert s["stages"]["send"]["threads"] == 2 and s["stages"]["send"]["ms_per_frame"] >= 1  # FakeRunner sleeps
    assert s["encoder"]["codec"] == "libx264" and s["encoder"]["preset"] == "ultrafast" and s["transport"] == "wire"
    text = format_summary(s)
    assert "stages (ms per frame, threads): decode " in text and "send/wait" in text and "(limit)" in text


def test_the_no_model_runner_answers_zeros_of_the_requests_shape(tmp_path):
    r = NoModelRunner(size=SIZE, max_batch=4)
    info = r.activate()
    assert info.size == SIZE and info.max_batch == 4 and info.classes[0] == "sky" and len(info.palette) >= 11
    out = r.infer(np.ones((2, *SIZE, 3), np.uint8))
    assert out.shape == (2, *SIZE) and out.dtype == np.uint8 and not out.any()
    with pytest.raises(RunnerError):
        r.infer(np.ones((1, 10, 10, 3), np.uint8))  # not what the model it stands in for takes
    video = make_video(tmp_path / "drive.mp4", n=6)
    s = segment_video(open_source(video), NoModelRunner(size=SIZE), tmp_path / "out", 2, labels=True, progress=False)
    assert s["frames"] == 6 and s["stopped"] is None
    assert not np.asarray(Image.open(tmp_path / "out" / "drive_labels" / "000005.png")).any()


def test_the_integer_overlay_is_the_float_one_within_one():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    labels = rng.integers(0, 12, (37, 53), dtype=np.uint8)  # id 11 past the palette: black, as colourise
    palette = [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(11)]
    for alpha in (0.5, 0.3):
        fast = fast_overlay(image, labels, palette_lut(palette), alpha).astype(int)
        ref = overlay(image, labels, palette, alpha).astype(int)
        assert np.abs(fast - ref).max() <= 1, alpha


class InterruptingRunner(FakeRunner):
    """Ctrl-C (SIGINT to the main thread) when frame `at` is asked for."""

    def __init__(self, at: int):
        super().__init__()
        self.at, self.fired = at, False

    def infer(self, x, logits=False):
        if round(int(x[0, :, :, 0].mean()) / 20) == self.at and not self.fired:
            self.fired = True
            _thread.interrupt_main()
            time.sleep(0.5)
        return super().infer(x, logits)


def test_ctrl_c_mid_video_closes_a_playable_file_with_the_frames_before_it(tmp_path):
    video = make_video(tmp_path / "drive.mp4", n=12)
    s = segment_video(open_source(video), InterruptingRunner(at=6), tmp_path / "out", 2, labels=True,
                      progress=False)
    assert s["stopped"] == f"interrupted (Ctrl-C) at frame {s['frames']}" and 0 < s["frames"] <= 6
    assert len(_read(tmp_path / "out" / "drive_overlay.mp4")[0]) == s["frames"]
    assert len(list((tmp_path / "out" / "drive_labels").glob("*.png"))) == s["frames"]  # none past the last frame


def test_a_bug_in_a_stage_is_raised_not_hidden(tmp_path):
    class Broken(FakeRunner):
        def infer(self, x, logits=False):
            raise ZeroDivisionError("a bug")

    with pytest.raises(ZeroDivisionError):
        segment_video(open_source(make_video(tmp_path / "d.mp4", n=4)), Broken(), tmp_path / "out", 2,
                      progress=False)


def test_a_failed_frame_leaves_no_labels_past_the_frames_written(tmp_path):
    video = make_video(tmp_path / "drive.mp4", n=12)
    s = segment_video(open_source(video), FakeRunner(fail_at_value=3), tmp_path / "out", 3, labels=True,
                      progress=False)
    assert s["frames"] == 5 and s["stopped"].startswith("frame 5: ")
    assert sorted(p.name for p in (tmp_path / "out" / "drive_labels").glob("*.png")) == \
        [f"{i:06d}.png" for i in range(5)]

