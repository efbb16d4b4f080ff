"""SegFormer model library: variant table, model, checkpoint loading, weights entries, GPU fast path.

Imports nothing of this project's other rooms (build, server, client, training, bench, loadtest, plugins).
"""
from .config import VARIANTS, SegFormerConfig, get_config, get_preset
from .model import SegFormer, SegmentationPipeline, create_model

__all__ = ["VARIANTS", "SegFormerConfig", "get_config", "get_preset", "SegFormer", "SegmentationPipeline",
           "create_model"]
