"""SegFormer model library: variant table, model, checkpoint loading, shipped weights."""
from .config import VARIANTS, SegFormerConfig, get_config, get_preset
from .model import SegFormer, SegmentationPipeline, create_model

__all__ = ["VARIANTS", "SegFormerConfig", "get_config", "get_preset", "SegFormer", "SegmentationPipeline",
           "create_model"]
