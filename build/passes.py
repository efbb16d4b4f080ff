"""Graph passes on exported ONNX, written with onnx-graphsurgeon: small functions that match patterns, never names.

- `fuse_layernorm`: finds every LayerNorm, whether one LayerNormalization node (opset >= 17 exports) or the
  decomposed ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add chain older exports produce, and rewrites it as
  the native LayerNormalization node or as the TensorRT plugin op (``SegformerLayerNorm``, see plugins/).
- `to_fp16`: FP16 weights and activations with the listed op types kept in FP32 (ONNX Runtime's converter);
  inputs and outputs keep their types, so a strongly typed TensorRT network builds FP16 from it directly.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

PLUGIN_OP = "SegformerLayerNorm"  # the plugin creator's name (plugins/src/layernorm_plugin.cpp)
PLUGIN_VERSION = "1"
# Kept in FP32 by the FP16 pass: the LayerNorm reductions are what FP16 breaks; softmax, resize and argmax cost
# nothing in FP32 at these sizes. The list matters for TensorRT's strongly typed FP16 network (ONNX Runtime's CPU
# computes FP16 LayerNorm and softmax in FP32 anyway); the FP16 row's disagreement with FP32 is README's accuracy
# report (`segformer_b1_fp16`).
FP16_KEEP_FP32 = ("LayerNormalization", "Softmax", "Resize", "ArgMax")


@dataclass
class LayerNormMatch:
    x: gs.Variable
    gamma: gs.Constant | None
    beta: gs.Constant | None
    eps: float
    out: gs.Variable
    nodes: list


def _producer(t) -> gs.Node | None:
    return t.inputs[0] if isinstance(t, gs.Variable) and len(t.inputs) == 1 else None


def _only_consumer(t) -> gs.Node | None:
    return t.outputs[0] if len(t.outputs) == 1 else None


def _const(t) -> np.ndarray | None:
    if isinstance(t, gs.Constant):
        return t.values
    p = _producer(t)
    if p is not None and p.op == "Constant":
        return p.attrs["value"].values
    return None


def _const_tensor(t) -> gs.Constant | None:
    """`t` as a gs.Constant when it is one, or the output of a Constant / Identity-of-constant node."""
    if isinstance(t, gs.Constant):
        return t
    p = _producer(t)
    if p is not None and p.op == "Identity":
        return _const_tensor(p.inputs[0])
    v = _const(t)
    return gs.Constant(f"{t.name}_const", np.asarray(v)) if v is not None else None


def _last_axis_mean(node: gs.Node | None) -> bool:
    """ReduceMean over the last axis only (axes as attribute before opset 18, as input from 18)."""
    if node is None or node.op != "ReduceMean":
        return False
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1:
        axes = _const(node.inputs[1])
    if axes is None:
        return False
    axes = np.asarray(axes).reshape(-1).tolist()
    if len(axes) != 1:
        return False
    rank = len(node.inputs[0].shape) if node.inputs[0].shape else None
    return axes[0] == -1 or (rank is not None and axes[0] == rank - 1)


def _square_of(node: gs.Node | None, d) -> bool:
    if node is None:
        return False
    if node.op == "Pow":
        e = _const(node.inputs[1])
        return node.inputs[0] is d and e is not None and float(np.asarray(e).reshape(-1)[0]) == 2.0
    return node.op == "Mul" and node.inputs[0] is d and node.inputs[1] is d


def match_decomposed(div: gs.Node) -> LayerNormMatch | None:
    """Match the decomposed LayerNorm ending at `div` = (x - mean(x)) / sqrt(mean((x - mean)^2) + eps)."""
    if div.op != "Div":
        return None
    d, denom = div.inputs
    sub, sqrt = _producer(d), _producer(denom)
    if sub is None or sub.op != "Sub" or sqrt is None or sqrt.op != "Sqrt":
        return None
    x, mean = sub.inputs
    mean_node = _producer(mean)
    if not _last_axis_mean(mean_node) or mean_node.inputs[0] is not x:
        return None
    add_eps = _producer(sqrt.inputs[0])
    if add_eps is None or add_eps.op != "Add":
        return None
    var, eps = add_eps.inputs
    if _const(eps) is None:
        var, eps = eps, var
    eps_val = _const(eps)
    var_node = _producer(var)
    if eps_val is None or not _last_axis_mean(var_node) or not _square_of(_producer(var_node.inputs[0]), d):
        return None
    nodes = [mean_node, sub, _producer(var_node.inputs[0]), var_node, add_eps, sqrt, div]
    out, gamma, beta = div.outputs[0], None, None
    mul = _only_consumer(out)
    if mul is not None and mul.op == "Mul":
        g = _const_tensor(next((t for t in mul.inputs if t is not out), None))
        if g is not None and g.values.ndim == 1:
            gamma, out = g, mul.outputs[0]
            nodes.append(mul)
            add = _only_consumer(out)
            if add is not None and add.op == "Add":
                b = _const_tensor(next((t for t in add.inputs if t is not out), None))
                if b is not None and b.values.ndim == 1:
                    beta, out = b, add.outputs[0]
                    nodes.append(add)
    return LayerNormMatch(x, gamma, beta, float(np.asarray(eps_val).reshape(-1)[0]), out, nodes)


def match_native(node: gs.Node) -> LayerNormMatch | None:
    if node.op != "LayerNormalization" or node.attrs.get("axis", -1) not in (-1, len(node.inputs[0].shape or []) - 1):
        return None
    gamma = node.inputs[1] if len(node.inputs) > 1 else None
    beta = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
    gamma, beta = (_const_tensor(t) or t if t is not None else None for t in (gamma, beta))
    return LayerNormMatch(node.inputs[0], gamma, beta, float(node.attrs.get("epsilon", 1e-5)), node.outputs[0],
                          [node])


def find_layernorms(graph: gs.Graph) -> list[LayerNormMatch]:
    found = []
    for node in list(graph.nodes):
        m = match_native(node) or match_decomposed(node)
        if m is not None:
            found.append(m)
    return found


def _affine(m: LayerNormMatch, channels: int, dtype) -> tuple[gs.Constant, gs.Constant]:
    gamma = m.gamma if m.gamma is not None else gs.Constant(f"{m.out.name}_gamma", np.ones(channels, dtype))
    beta = m.beta if m.beta is not None else gs.Constant(f"{m.out.name}_beta", np.zeros(channels, dtype))
    return gamma, beta


def fuse_layernorm(model: onnx.ModelProto, target: str = "native") -> tuple[onnx.ModelProto, int]:
    """Rewrite every LayerNorm as `target` ('native' LayerNormalization or 'plugin' op); returns (model, count)."""
    if target not in ("native", "plugin"):
        raise ValueError(f"unknown LayerNorm target {target!r}: use native or plugin")
    graph = gs.import_onnx(model)
    matches = find_layernorms(graph)
    for i, m in enumerate(matches):
        if target == "native" and len(m.nodes) == 1:
            continue  # already the native node
        known = next((t for t in (m.gamma, m.beta) if isinstance(t, gs.Constant)), None)
        channels = known.values.shape[0] if known is not None else int(m.x.shape[-1])
        gamma, beta = _affine(m, channels, np.float32)
        for n in m.nodes:
            n.outputs.clear()
        if target == "native":
            graph.layer(op="LayerNormalization", name=f"LayerNorm_{i}", inputs=[m.x, gamma, beta], outputs=[m.out],
                        attrs={"axis": -1, "epsilon": m.eps})
        else:
            graph.layer(op=PLUGIN_OP, name=f"{PLUGIN_OP}_{i}", inputs=[m.x, gamma, beta], outputs=[m.out],
                        attrs={"epsilon": m.eps, "plugin_version": PLUGIN_VERSION, "plugin_namespace": ""})
    graph.cleanup().toposort()
    out = gs.export_onnx(graph)
    if target == "native" and out.opset_import[0].version < 17:
        out.opset_import[0].version = 17
    return out, len(matches)


def op_counts(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def to_fp16(model: onnx.ModelProto, keep_fp32: tuple[str, ...] = FP16_KEEP_FP32) -> onnx.ModelProto:
    """FP16 graph with `keep_fp32` op types left in FP32 and the model's I/O types unchanged."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(model, keep_io_types=True, op_block_list=list(keep_fp32),
                                    disable_shape_infer=False)
