"""Shared fixtures for the build tests: a tiny SegFormer exported to ONNX and synthetic street-like images."""
import io

import numpy as np
import pytest
import torch

from segformer.model import SegmentationPipeline, create_model


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory):
    torch.manual_seed(0)
    pipe = SegmentationPipeline(create_model("tiny", 19).eval(), (123.675, 116.28, 103.53), (58.395, 57.12, 57.375))
    buf = io.BytesIO()
    torch.onnx.export(pipe, (torch.zeros(1, 64, 64, 3, dtype=torch.uint8),), buf, input_names=["images"],
                      output_names=["labels"], dynamic_axes={"images": {0: "N", 1: "H", 2: "W"}}, opset_version=17,
                      dynamo=False)
    path = tmp_path_factory.mktemp("q") / "fp32.onnx"
    path.write_bytes(buf.getvalue())
    return path


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:64, 0:64] / 64
    return np.stack([((np.stack([np.sin(4 * xx + i), np.cos(3 * yy), xx * yy], -1) * 0.5 + 0.5) * 255
                      + rng.normal(0, 10, (64, 64, 3))).clip(0, 255).astype(np.uint8) for i in range(n)])


@pytest.fixture(scope="session")
def make_images():
    """make_images(n, seed=0): n smooth, noisy 64x64 RGB uint8 images."""
    return _images
