"""The SegFormer variant table (MiT-B0..B5) and the dataset presets (classes, palette, normalisation).

One table drives the model code, export, training and benchmarks: adding a variant is one row.
Numbers follow the SegFormer paper (Xie et al., NeurIPS 2021, Table 6) and the NVlabs reference code.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class SegFormerConfig:
    """Architecture of one SegFormer: Mix Transformer encoder + All-MLP decoder."""

    name: str
    widths: tuple[int, ...]  # channels C_i of the four stages
    depths: tuple[int, ...]  # transformer blocks per stage
    heads: tuple[int, ...] = (1, 2, 5, 8)
    sr_ratios: tuple[int, ...] = (8, 4, 2, 1)  # efficient-attention key/value reduction per stage
    patch_sizes: tuple[int, ...] = (7, 3, 3, 3)  # overlapping patch embedding kernels
    strides: tuple[int, ...] = (4, 2, 2, 2)
    mlp_ratio: int = 4
    decoder_width: int = 256
    # "mlp": the paper's All-MLP head (NVlabs, Hugging Face); "mmseg": mmsegmentation's SegformerHead
    # (1x1 conv + BN + ReLU per stage, concatenated shallowest first, 1x1 conv + BN + ReLU fusion)
    decoder: str = "mlp"
    num_classes: int = 19
    in_channels: int = 3
    # NVlabs uses eps=1e-6 for the block and stage LayerNorms, PyTorch's default 1e-5 for the patch-embedding
    # and key/value-reduction LayerNorms. (HF transformers uses 1e-5 everywhere.)
    block_norm_eps: float = 1e-6
    embed_norm_eps: float = 1e-5
    drop_path_rate: float = 0.1
    dropout: float = 0.1  # before the classifier

    def with_classes(self, num_classes: int) -> "SegFormerConfig":
        return replace(self, num_classes=num_classes)

    def architecture(self) -> dict:
        """Everything that decides the tensors' shapes and the forward pass (kept in a weights entry's metadata)."""
        keys = ("widths", "depths", "heads", "sr_ratios", "patch_sizes", "strides", "mlp_ratio", "decoder_width",
                "decoder", "num_classes", "block_norm_eps", "embed_norm_eps")
        return {k: list(v) if isinstance(v, tuple) else v for k, v in ((k, getattr(self, k)) for k in keys)}

    @classmethod
    def from_architecture(cls, name: str, arch: dict) -> "SegFormerConfig":
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in arch.items()}
        return cls(name=name, **fields)


VARIANTS: dict[str, SegFormerConfig] = {
    "b0": SegFormerConfig("b0", widths=(32, 64, 160, 256), depths=(2, 2, 2, 2), decoder_width=256),
    "b1": SegFormerConfig("b1", widths=(64, 128, 320, 512), depths=(2, 2, 2, 2), decoder_width=256),
    "b2": SegFormerConfig("b2", widths=(64, 128, 320, 512), depths=(3, 4, 6, 3), decoder_width=768),
    "b3": SegFormerConfig("b3", widths=(64, 128, 320, 512), depths=(3, 4, 18, 3), decoder_width=768),
    "b4": SegFormerConfig("b4", widths=(64, 128, 320, 512), depths=(3, 8, 27, 3), decoder_width=768),
    "b5": SegFormerConfig("b5", widths=(64, 128, 320, 512), depths=(3, 6, 40, 3), decoder_width=768),
    # A tiny model for tests only: same code path, seconds on a CPU.
    "tiny": SegFormerConfig("tiny", widths=(8, 16, 24, 32), depths=(1, 1, 1, 1), heads=(1, 1, 2, 2),
                            decoder_width=16),
}


DECODERS = ("mlp", "mmseg")

# The smallest input every stage can take (total stride 32) and the granularity of a served size.
SIZE_MULTIPLE = 32
MIN_SIZE = 64


def check_size(size: tuple[int, int], what: str = "size") -> tuple[int, int]:
    """A served input size must be a multiple of 32 (the encoder's total stride) and at least 64 on each side."""
    h, w = size
    if h % SIZE_MULTIPLE or w % SIZE_MULTIPLE:
        raise ValueError(f"{what} {h}x{w} is not a multiple of {SIZE_MULTIPLE} (the encoder's total stride); "
                         f"try {round(h / 32) * 32 or 32}x{round(w / 32) * 32 or 32}")
    if h < MIN_SIZE or w < MIN_SIZE:
        raise ValueError(f"{what} {h}x{w} is below the minimum {MIN_SIZE}x{MIN_SIZE}")
    return h, w


def get_config(variant: str, num_classes: int | None = None) -> SegFormerConfig:
    try:
        cfg = VARIANTS[variant.lower()]
    except KeyError:
        raise ValueError(f"unknown SegFormer variant {variant!r}; choose one of {', '.join(VARIANTS)}") from None
    return cfg.with_classes(num_classes) if num_classes is not None else cfg


@dataclass(frozen=True)
class DatasetPreset:
    """Classes, palette and input normalisation of a label space."""

    name: str
    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    mean: tuple[float, float, float] = (123.675, 116.28, 103.53)  # ImageNet mean, 0..255 scale
    std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    ignore_index: int = 255
    extra: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


CITYSCAPES = DatasetPreset(
    "cityscapes",
    classes=("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
             "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
             "bicycle"),
    # The official Cityscapes colours (cityscapesScripts labels.py), in train-id order.
    palette=((128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
             (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
             (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32)),
)


def _ade20k_palette(n: int = 150) -> tuple[tuple[int, int, int], ...]:
    """A deterministic, well-spread palette (bit-interleaving as in the PASCAL VOC colour map)."""
    colours = []
    for i in range(1, n + 1):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours.append((r, g, b))
    return tuple(colours)


ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet", "sidewalk",
    "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water", "painting", "sofa",
    "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp",
    "bathtub", "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter", "sand",
    "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case",
    "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table",
    "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island", "computer",
    "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower",
    "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel",
    "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship",
    "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
    "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name",
    "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce",
    "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board",
    "shower", "radiator", "glass", "clock", "flag")

ADE20K = DatasetPreset("ade20k", classes=ADE20K_CLASSES, palette=_ade20k_palette(150))

# CamVid (SegNet 11-class split) in its own label space, with the SegNet tutorial's colours.
CAMVID_CLASSES = ("sky", "building", "pole", "road", "sidewalk", "tree", "sign_symbol", "fence", "car",
                  "pedestrian", "bicyclist")
CAMVID = DatasetPreset(
    "camvid", classes=CAMVID_CLASSES,
    palette=((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
             (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192)))

PRESETS: dict[str, DatasetPreset] = {p.name: p for p in (CITYSCAPES, ADE20K, CAMVID)}

# Names of one class in different label spaces (CamVid's, Cityscapes', ...), for mapping labels by class name.
CLASS_SYNONYMS = (("vegetation", "tree"), ("traffic sign", "sign symbol"), ("person", "pedestrian"),
                  ("rider", "bicyclist"))


def class_key(name: str) -> str:
    """A class name compared without case, underscores or hyphens: `Sign_Symbol` -> `sign symbol`."""
    return " ".join(str(name).lower().replace("_", " ").replace("-", " ").split())


def same_class(a: str, b: str) -> bool:
    """Whether two class names name the same class (equal up to case and separators, or listed synonyms)."""
    ka, kb = class_key(a), class_key(b)
    return ka == kb or any(ka in group and kb in group for group in CLASS_SYNONYMS)


# CamVid (SegNet 11-class split) -> Cityscapes train ids; 11 (void) -> ignore (the same as mapping by name).
CAMVID_TO_CITYSCAPES = {0: 10, 1: 2, 2: 5, 3: 0, 4: 1, 5: 8, 6: 7, 7: 4, 8: 13, 9: 11, 10: 12, 11: 255}


def get_preset(name: str) -> DatasetPreset:
    try:
        return PRESETS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown dataset preset {name!r}; choose one of {', '.join(PRESETS)}") from None

# Cityscapes label ids (*_gtFine_labelIds.png) -> train ids; every other id -> ignore (cityscapesScripts labels.py).
CITYSCAPES_ID_TO_TRAINID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                            25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def parse_size(text: str) -> tuple[int, int]:
    """``"1024x2048"`` -> ``(1024, 2048)`` (height x width); a clear ValueError otherwise (argparse shows it)."""
    try:
        h, w = (int(t) for t in str(text).lower().split("x"))
    except ValueError:
        raise ValueError(f"size {text!r} is not HxW, e.g. 1024x2048 (height x width)") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"size {text!r}: height and width must be positive")
    return h, w
