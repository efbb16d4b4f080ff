import pytest
import torch

from segformer.checkpoints import CheckpointError, load_checkpoint, to_native
from segformer.config import VARIANTS, get_config
from segformer.model import SegFormer, create_model


def test_variant_table_matches_the_paper():
    assert VARIANTS["b0"].widths == (32, 64, 160, 256) and VARIANTS["b0"].decoder_width == 256
    assert VARIANTS["b1"].widths == (64, 128, 320, 512) and VARIANTS["b1"].depths == (2, 2, 2, 2)
    assert VARIANTS["b5"].depths == (3, 6, 40, 3) and VARIANTS["b5"].decoder_width == 768
    for v in ("b0", "b1", "b2", "b3", "b4", "b5"):
        cfg = VARIANTS[v]
        assert cfg.sr_ratios == (8, 4, 2, 1) and cfg.patch_sizes == (7, 3, 3, 3) and cfg.block_norm_eps == 1e-6


@pytest.mark.parametrize("variant,params_m", [("b0", 3.7), ("b1", 13.7)])
def test_parameter_counts(variant, params_m):
    n = sum(p.numel() for p in create_model(variant, 19).parameters()) / 1e6
    assert abs(n - params_m) < 0.1


def _hf_model(cfg):
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.SegformerConfig(hidden_sizes=list(cfg.widths), depths=list(cfg.depths),
                                          num_attention_heads=list(cfg.heads), sr_ratios=list(cfg.sr_ratios),
                                          decoder_hidden_size=cfg.decoder_width, num_labels=cfg.num_classes)
    torch.manual_seed(1)
    return transformers.SegformerForSemanticSegmentation(hf_cfg).eval()


def test_identical_to_hf_transformers_for_identical_weights():
    """HF uses eps=1e-5 everywhere; with that eps our model must produce the same logits from the same weights."""
    cfg = get_config("tiny", 7)
    hf = _hf_model(cfg)
    ours = SegFormer(cfg.__class__(**{**cfg.__dict__, "block_norm_eps": 1e-5})).eval()
    ours.load_state_dict(to_native(hf.state_dict()), strict=True)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ref = hf(pixel_values=x).logits
        out = ours(x)
    assert out.shape == ref.shape == (2, 7, 16, 24)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def _to_nvlabs(state: dict) -> dict:
    """Our keys -> NVlabs SegFormer keys (test helper, the inverse of NVLABS_RULES)."""
    import re

    out = {}
    for k, v in state.items():
        k = re.sub(r"^encoder\.stages\.(\d)\.patch_embed\.", lambda m: f"backbone.patch_embed{int(m[1]) + 1}.", k)
        k = re.sub(r"^encoder\.stages\.(\d)\.blocks\.", lambda m: f"backbone.block{int(m[1]) + 1}.", k)
        k = re.sub(r"^encoder\.stages\.(\d)\.norm\.", lambda m: f"backbone.norm{int(m[1]) + 1}.", k)
        k = k.replace(".mlp.dwconv.", ".mlp.dwconv.dwconv.")
        k = re.sub(r"^decode_head\.linear_c\.(\d)\.", lambda m: f"decode_head.linear_c{int(m[1]) + 1}.proj.", k)
        k = k.replace("decode_head.fuse.", "decode_head.linear_fuse.conv.")
        k = k.replace("decode_head.bn.", "decode_head.linear_fuse.bn.")
        k = k.replace("decode_head.classifier.", "decode_head.linear_pred.")
        out[k] = v
    return out


def test_loads_nvlabs_checkpoint(tmp_path):
    src = create_model("b0", 19).eval()
    path = tmp_path / "segformer.b0.pth"
    torch.save({"state_dict": _to_nvlabs(src.state_dict()), "meta": {}}, path)
    loaded = load_checkpoint(path)
    assert loaded.config.name == "b0" and loaded.config.num_classes == 19
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), src(x))


def test_wrong_variant_names_the_fitting_one(tmp_path):
    path = tmp_path / "b0.pth"
    torch.save(create_model("b0", 19).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"fits variant 'b0' with 19 classes") as err:
        load_checkpoint(path, variant="b1")
    assert "shape mismatch" in str(err.value) or "missing" in str(err.value)


def test_unknown_layout_is_a_clear_error(tmp_path):
    path = tmp_path / "x.pth"
    torch.save({"foo.weight": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="unrecognised checkpoint layout"):
        load_checkpoint(path)


def test_folded_pipeline_gives_the_same_labels_and_leaves_the_model_alone(trained_like):
    from segformer.model import AllMLPDecoder, FoldedAllMLPDecoder, SegmentationPipeline

    m = trained_like()
    mean, std = (120.0, 115.0, 100.0), (60.0, 58.0, 57.0)
    ref, folded = SegmentationPipeline(m, mean, std), SegmentationPipeline(m, mean, std, fold_decoder=True)
    assert isinstance(m.decode_head, AllMLPDecoder) and isinstance(folded.model.decode_head, FoldedAllMLPDecoder)
    images = torch.randint(0, 256, (2, 64, 96, 3), dtype=torch.uint8)
    with torch.no_grad():
        ref.with_logits = folded.with_logits = True
        (la, lo_a), (lb, lo_b) = ref(images), folded(images)
    torch.testing.assert_close(lo_b, lo_a, rtol=1e-4, atol=1e-4)
    assert (la == lb).float().mean() > 0.999
    assert not any(p.requires_grad for p in folded.model.decode_head.parameters())
