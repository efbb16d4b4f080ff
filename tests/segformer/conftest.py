"""Shared helpers for the model tests."""
import pytest
import torch

from segformer.model import create_model


def _trained_like(variant="tiny", classes=7, seed=0):
    """A model with non-trivial BatchNorm statistics, so folding is really exercised."""
    torch.manual_seed(seed)
    m = create_model(variant, classes).eval()
    bn = m.decode_head.bn
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-0.2, 0.2)
    for lin in m.decode_head.linear_c:
        lin.bias.data.uniform_(-0.1, 0.1)
    return m


@pytest.fixture(scope="session")
def trained_like():
    """trained_like(variant="tiny", classes=7, seed=0): a model whose decoder BatchNorm is not the identity."""
    return _trained_like
