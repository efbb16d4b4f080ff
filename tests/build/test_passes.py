import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from build.passes import PLUGIN_OP, fuse_layernorm, op_counts, to_fp16
from segformer.model import SegmentationPipeline, create_model

MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)


def _export(opset: int) -> tuple[bytes, int, np.ndarray]:
    torch.manual_seed(0)
    model = create_model("tiny", 19).eval()
    for m in model.modules():  # non-trivial affine parameters, so a dropped gamma/beta would show
        if isinstance(m, torch.nn.LayerNorm):
            torch.nn.init.normal_(m.weight, 1.0, 0.2)
            torch.nn.init.normal_(m.bias, 0.0, 0.2)
    pipe = SegmentationPipeline(model, MEAN, STD, with_logits=True)
    x = torch.randint(0, 255, (1, 64, 96, 3), dtype=torch.uint8)
    buf = io.BytesIO()
    torch.onnx.export(pipe, (x,), buf, input_names=["images"], output_names=["labels", "logits"],
                      opset_version=opset, dynamo=False)
    n_ln = sum(isinstance(m, torch.nn.LayerNorm) for m in model.modules())
    return buf.getvalue(), n_ln, x.numpy()


def _run(model, x):
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"images": x})


@pytest.mark.parametrize("opset", [14, 17])
def test_layernorm_pass_finds_every_layernorm(opset):
    data, n_ln, x = _export(opset)
    model = onnx.load_from_string(data)
    before = op_counts(model)
    assert before["LayerNormalization"] == (n_ln if opset >= 17 else 0)  # decomposed below opset 17
    fused, found = fuse_layernorm(model, "native")
    assert found == n_ln and op_counts(fused)["LayerNormalization"] == n_ln
    if opset < 17:
        assert op_counts(fused)["ReduceMean"] == 0  # (Sqrt stays: SDPA scales by 1/sqrt(d))
    ref, out = _run(data, x), _run(fused, x)
    assert np.array_equal(ref[0], out[0]) and np.abs(ref[1] - out[1]).max() < 1e-4
    plugin, found = fuse_layernorm(model, "plugin")
    assert found == n_ln and op_counts(plugin)[PLUGIN_OP] == n_ln and op_counts(plugin)["LayerNormalization"] == 0
    node = next(n for n in plugin.graph.node if n.op_type == PLUGIN_OP)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["plugin_version"] == b"1" and attrs["epsilon"] in (pytest.approx(1e-6), pytest.approx(1e-5))
    assert len(node.input) == 3  # x, gamma, beta


def test_fp16_pass_keeps_layernorm_in_fp32_and_agrees():
    data, _, x = _export(17)
    model = onnx.load_from_string(data)
    half = to_fp16(model)
    inits = {i.name: i.data_type for i in half.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in inits.values()
    for n in half.graph.node:
        if n.op_type == "LayerNormalization":
            assert inits.get(n.input[1], onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT
    assert half.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    ref, out = _run(data, x), _run(half, x)
    assert (ref[0] == out[0]).mean() > 0.99
