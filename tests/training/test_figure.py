from types import SimpleNamespace

import numpy as np

from training.figure import prediction


class _Recorder:
    """A runner that records what it is sent and labels every input pixel 1."""

    def __init__(self, size):
        self.info = SimpleNamespace(size=size, size_range=None, has_logits=False, max_batch=1)
        self.sent = []

    def infer(self, x):
        self.sent.append(x)
        return np.ones(x.shape[:3], np.uint8)


def test_the_figure_sends_frames_as_clients_do_letterboxed():
    run = _Recorder((64, 64))
    image = np.full((32, 64, 3), 200, np.uint8)  # a 1:2 frame into a square model
    labels = prediction(image, run)
    x = run.sent[0][0]
    assert x.shape == (64, 64, 3) and (x[:32] == 200).all() and not x[32:].any()  # letterboxed, not stretched
    assert labels.shape == (32, 64) and (labels == 1).all()  # back at the image's own size, padding cut off
