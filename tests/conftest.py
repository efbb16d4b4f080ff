import socket
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
CAMVID = ROOT.parent / "shared" / "datasets" / "camvid"


@pytest.fixture(scope="session")
def camvid() -> Path:
    if not (CAMVID / "test" / "images").is_dir():
        pytest.skip(f"CamVid is not at {CAMVID} (development data, present in CI)")
    return CAMVID


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """A tiny untrained model saved in the shipped-weights format: for plumbing tests, never for accuracy."""
    from segformer.config import CITYSCAPES
    from segformer.model import create_model
    from segformer.weights import save_weights

    torch.manual_seed(0)
    model = create_model("tiny", 19).eval()
    d = tmp_path_factory.mktemp("weights")
    meta = {"classes": list(CITYSCAPES.classes), "palette": [list(c) for c in CITYSCAPES.palette],
            "mean": list(CITYSCAPES.mean), "std": list(CITYSCAPES.std)}
    w = save_weights(model, d, "tiny-test", meta)
    return d / f"{w.name}.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
