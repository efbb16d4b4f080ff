"""SegFormer model library: variant table, model, checkpoint loading, weights entries, GPU fast path.

Imports nothing of this project's other rooms (build, server, client, training, bench, loadtest, plugins). The
names below load on first use (PEP 562), so `segformer.errors` and `segformer.config` do not pull in PyTorch.
"""
from __future__ import annotations

import importlib

_LAZY = {"VARIANTS": "config", "SegFormerConfig": "config", "get_config": "config", "get_preset": "config",
         "SegFormer": "model", "SegmentationPipeline": "model", "create_model": "model"}
__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
