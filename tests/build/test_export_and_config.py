import numpy as np
import onnx
import pytest

from build.export import build_onnx
from build.model_config import model_config, parse_pbtxt, to_pbtxt
from build.variants import VARIANTS, ServingVariant, select
from segformer.config import CITYSCAPES

CLASSES, PALETTE = list(CITYSCAPES.classes), [list(c) for c in CITYSCAPES.palette]


@pytest.fixture(scope="module")
def tiny_onnx(tiny_weights):
    data, report = build_onnx(str(tiny_weights), (64, 96), log=lambda *_: None)
    return onnx.load_from_string(data), report


def test_export_has_pre_and_post_processing_and_dynamic_shapes(tiny_onnx):
    model, report = tiny_onnx
    assert report["agreement"] >= 0.9999
    inp, out = model.graph.input[0], model.graph.output[0]
    assert inp.name == "images" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert out.name == "labels" and out.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_param for d in inp.type.tensor_type.shape.dim][:3] == ["N", "H", "W"]
    ops = {n.op_type for n in model.graph.node}
    assert "LayerNormalization" in ops and "ArgMax" in ops and "Resize" in ops


def test_export_runs_at_other_sizes_and_batches(tiny_onnx):
    import onnxruntime as ort
    model, _ = tiny_onnx
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).integers(0, 255, (3, 40, 72, 3), dtype=np.uint8)
    labels = sess.run(["labels"], {"images": x})[0]
    assert labels.shape == (3, 40, 72) and labels.dtype == np.uint8


def test_every_table_row_yields_a_config_that_parses_back():
    for v in VARIANTS.values():
        text = to_pbtxt(model_config(v, CLASSES, PALETTE))
        cfg = parse_pbtxt(text)
        assert cfg.name == v.name and cfg.max_batch_size == v.max_batch
        if v.name.endswith(("_decode", "_jpeg")):  # JPEG/PNG in: one encoded file per request
            assert [(i.name, list(i.dims)) for i in cfg.input] == [("encoded", [-1])], v.name
            continue
        hw = [-1, -1] if v.dynamic else list(v.size)  # a dynamic row: any H, W in its range
        assert list(cfg.input[0].dims) == [*hw, 3] and list(cfg.output[0].dims) == hw
        assert cfg.dynamic_batching.max_queue_delay_microseconds == v.queue_delay_us
        if v.backend == "tensorrt":
            assert cfg.platform == "tensorrt_plan" and cfg.model_warmup[0].inputs["images"].zero_data


def test_rtx_plans_do_not_claim_the_tensorrt_platform():
    cfg = model_config(VARIANTS["segformer_b1_trt_fp32"], CLASSES, PALETTE, tensorrt_rtx=True)
    assert cfg.platform == "" and cfg.backend == "tensorrt_rtx"


def test_config_matches_the_onnx_io(tiny_onnx):
    model, _ = tiny_onnx
    v = ServingVariant("t", "x", "python_onnxruntime", size=(64, 96))
    cfg = model_config(v, CLASSES, PALETTE)
    assert [i.name for i in cfg.input] == [i.name for i in model.graph.input]
    assert [o.name for o in cfg.output] == [o.name for o in model.graph.output]


def test_selection_errors_name_the_table():
    with pytest.raises(ValueError, match="the table has"):
        select(["nope"])
    with pytest.raises(ValueError, match="choose from"):
        select(None, ["fp8"])
    assert {v.precision for v in select(None, ["fp16"])} == {"fp16"}


def test_gpu_row_config_takes_raw_or_encoded_images():
    cfg = parse_pbtxt(to_pbtxt(model_config(VARIANTS["segformer_b1_gpu"], CLASSES, PALETTE)))
    assert cfg.backend == "python" and cfg.max_batch_size == 16
    inputs = {i.name: i for i in cfg.input}
    assert inputs["images"].optional and list(inputs["images"].dims) == [1024, 1024, 3]
    assert inputs["encoded"].optional and inputs["encoded"].allow_ragged_batch and list(inputs["encoded"].dims) == [-1]
    assert cfg.instance_group[0].kind == cfg.instance_group[0].KIND_GPU
    assert list(cfg.dynamic_batching.preferred_batch_size) == [8, 16]
    assert cfg.parameters["weights_file"].string_value == "segformer-b1-camvid.json"


def test_gpu_rows_are_default_only_where_cuda_is(monkeypatch):
    import build.variants as variants

    monkeypatch.setattr(variants, "cuda_available", lambda: False)
    assert "segformer_b1_gpu" not in {v.name for v in select()}
    monkeypatch.setattr(variants, "cuda_available", lambda: True)
    assert "segformer_b1_gpu" in {v.name for v in select()}
    assert select(["segformer_b1_gpu"])[0].backend == variants.PYTHON_GPU  # explicit selection always works


def test_the_build_errors_are_project_errors_keeping_their_old_bases():
    from build.artefacts import MissingCodeFile, NeedsCalibration
    from build.engines import BuilderUnavailable
    from build.export import ExportMismatch
    from build.openvino_ir import CpuPlanError
    from build.repository import RepositoryBusy, RepositoryInput
    from build.variants import SelectionError
    from segformer.errors import OutcomeError, ProjectError

    for cls, old in ((RepositoryBusy, RuntimeError), (BuilderUnavailable, RuntimeError),
                     (NeedsCalibration, RuntimeError), (CpuPlanError, RuntimeError), (ExportMismatch, RuntimeError),
                     (SelectionError, ValueError), (RepositoryInput, ValueError),
                     (MissingCodeFile, FileNotFoundError)):
        assert issubclass(cls, ProjectError) and issubclass(cls, old), cls
    assert issubclass(CpuPlanError, OutcomeError)  # a missed budget: exit 1


def test_the_export_cli_prints_one_error_line(tmp_path, capsys):
    from build.export import main

    assert main(["--weights", "no-such-weights", "--out", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: no weights named 'no-such-weights'")
    assert not (tmp_path / "x.onnx").exists()
