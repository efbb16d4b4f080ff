"""loadtest.perf.tuning: the committed Model Analyzer configs pass its own parser, runtime values are filled in,
its results are read and the chosen settings reach config.pbtxt through the ModelConfig protobuf."""
import json
from pathlib import Path

import pytest

from loadtest.perf import tune

from loadtest.perf import tuning

MA_CSV = """Model,Batch,Concurrency,Model Config Path,Instance Group,Max Batch Size,Satisfies Constraints,\
Throughput (infer/sec),p99 Latency (ms)
segformer_b0,1,2,segformer_b0_config_1,2:CPU,2,Yes,3.1,900.0
segformer_b0,1,1,segformer_b0_config_default,1:CPU,2,Yes,2.5,420.0
segformer_b0,1,2,segformer_b0_config_0,1:CPU,2,No,3.5,2500.0
segformer_b1,1,1,segformer_b1_config_0,1:CPU,1,Yes,0.9,1200.0
"""


@pytest.fixture
def ma():
    return pytest.importorskip("model_analyzer", reason="the perf extra (triton-model-analyzer) is not installed")


@pytest.mark.parametrize("name", ["cpu.yaml", "gpu.yaml"])
def test_committed_configs_pass_model_analyzers_parser(ma, name, tmp_path):
    cfg = tuning.load(tuning.CONFIGS / name)
    config = tuning.validate(tuning.concrete(cfg), tmp_path)
    models = {m.model_name(): m for m in config.profile_models}
    assert set(models) == set(cfg["profile_models"])
    for m in models.values():
        ig = m.model_config_parameters()["instance_group"]
        assert ig and {g["kind"][0] for g in ig[0]} == ({"KIND_GPU"} if name == "gpu.yaml" else {"KIND_CPU"})
        if name == "cpu.yaml":  # (Model Analyzer marks every row cpu_only on a machine without CUDA)
            assert m.cpu_only()
        assert m.model_config_parameters()["dynamic_batching"][0]["max_queue_delay_microseconds"]
    assert config.perf_analyzer_flags["measurement-mode"] == "time_windows"


def test_model_analyzer_refuses_a_bad_config(ma, tmp_path):
    cfg = tuning.concrete(tuning.load(tuning.CONFIGS / "cpu.yaml"), models=["segformer_b0"])
    for bad in ({"perf_analyzer_flag": {}}, {"perf_analyzer_flags": {"not-a-flag": 1}},
                {"run_config_search_max_concurrency": "many"},
                {"profile_models": {"segformer_b0": {"cpu_only": True,
                                                     "model_config_parameters": {"instance_group": "x"}}}}):
        with pytest.raises(tuning.TuningError, match="Model Analyzer refuses"):
            tuning.validate({**cfg, **bad}, tmp_path)


def test_rows_must_be_the_serving_tables(tmp_path):
    cfg = tuning.load(tuning.CONFIGS / "cpu.yaml")
    b0 = cfg["profile_models"]["segformer_b0"]
    with pytest.raises(tuning.TuningError, match="not a row"):
        tuning.check_rows({"profile_models": {"segformer_b9": b0}})
    gpu_kind = json.loads(json.dumps(b0).replace("KIND_CPU", "KIND_GPU"))
    with pytest.raises(tuning.TuningError, match="KIND_CPU, not KIND_GPU"):
        tuning.check_rows({"profile_models": {"segformer_b0": gpu_kind}})
    with pytest.raises(tuning.TuningError, match="cpu_only"):
        tuning.check_rows({"profile_models": {"segformer_b0": {**b0, "cpu_only": False}}})


def test_concrete_fills_in_the_machine(tmp_path):
    cfg = tuning.load(tuning.CONFIGS / "cpu.yaml")
    out = tuning.concrete(cfg, root=Path("/proj"), models=["segformer_b0"], export=tmp_path, ports=(1, 2, 3),
                          perf_analyzer=Path("/bin/pa"), input_data={"segformer_b0": Path("/d.json")})
    assert list(out["profile_models"]) == ["segformer_b0"]
    assert out["model_repository"] == "/proj/model_repository"
    assert out["triton_server_path"] == "/proj/.venv/bin/tritonserver"
    assert out["output_model_repository_path"] == str(tmp_path / "output_models")
    assert out["triton_grpc_endpoint"] == "127.0.0.1:2" and out["triton_metrics_url"].endswith(":3/metrics")
    assert out["perf_analyzer_path"] == "/bin/pa"
    flags = out["profile_models"]["segformer_b0"]["perf_analyzer_flags"]
    assert flags["input-data"] == "/d.json" and flags["measurement-mode"] == "time_windows"  # global flags kept
    assert "perf_analyzer_flags" not in cfg["profile_models"]["segformer_b0"]  # the loaded config is untouched
    with pytest.raises(tuning.TuningError, match="not in the config"):
        tuning.concrete(cfg, models=["segformer_null"])


def test_server_wrapper_runs_this_checkouts_shim(tmp_path):
    from loadtest.perf.profile import server_wrapper

    w = server_wrapper(tmp_path / "tritonserver")
    text = w.read_text()
    assert "-m server.serve exec" in text and str(tuning.ROOT) in text and w.stat().st_mode & 0o111


def test_results_read_and_best_chosen():
    rows = tuning.read_results(MA_CSV)
    assert len(rows) == 4 and rows[0]["throughput"] == 3.1 and rows[2]["ok"] is False
    best = tuning.choose(rows)
    assert best["segformer_b0"]["variant"] == "segformer_b0_config_1"  # 3.5 infer/s misses the constraints
    assert best["segformer_b1"]["p99_ms"] == 1200.0
    assert tuning.variant_base("segformer_b1_ov_config_default") == "segformer_b1_ov"


def _row_config(name="segformer_b0"):
    from build.model_config import model_config, to_pbtxt
    from build.variants import VARIANTS

    return to_pbtxt(model_config(VARIANTS[name], ["a", "b"], [[0, 0, 0], [1, 1, 1]]))


def test_apply_settings_through_the_protobuf():
    from build.model_config import parse_pbtxt

    text = _row_config("segformer_b1_onnx")  # preferred batches 4, 8
    new = tuning.apply_settings(text, {"max_batch_size": 4, "max_queue_delay_microseconds": 500,
                                       "instance_group": [{"kind": "KIND_GPU", "count": 2}]})
    cfg, old = parse_pbtxt(new), parse_pbtxt(text)
    assert cfg.max_batch_size == 4 and cfg.dynamic_batching.max_queue_delay_microseconds == 500
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4]
    assert [(g.kind, g.count) for g in cfg.instance_group] == [(1, 2)]  # KIND_GPU
    assert cfg.input == old.input and cfg.parameters == old.parameters and cfg.platform == old.platform
    s = tuning.settings_of(new)
    assert s == {"max_batch_size": 4, "max_queue_delay_microseconds": 500, "preferred_batch_size": [4],
                 "instance_group": [{"kind": "KIND_GPU", "count": 2}]}
    with pytest.raises(tuning.TuningError, match="another row"):
        tuning.apply_settings(_row_config(), {"instance_group": [{"kind": "KIND_GPU", "count": 1}]})


def test_apply_writes_the_built_rows(tmp_path, capsys):
    from build.model_config import parse_pbtxt

    (tmp_path / "segformer_b0").mkdir()
    (tmp_path / "segformer_b0" / "config.pbtxt").write_text(_row_config())
    settings = {"max_batch_size": 2, "max_queue_delay_microseconds": 0, "preferred_batch_size": [],
                "instance_group": [{"kind": "KIND_CPU", "count": 2}]}
    chosen = {"rows": {"segformer_b0": {"settings": settings}, "segformer_b1": {"settings": settings}}}
    path = tmp_path / "chosen.json"
    path.write_text(json.dumps(chosen))
    assert tune.main(["apply", "--chosen", str(path), "--repo", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "segformer_b1: not built" in out and "2 x KIND_CPU" in out
    cfg = parse_pbtxt((tmp_path / "segformer_b0" / "config.pbtxt").read_text())
    assert cfg.instance_group[0].count == 2 and cfg.dynamic_batching.max_queue_delay_microseconds == 0
    assert tune.main(["apply", "--chosen", str(tmp_path / "nope.json")]) == 2
    assert capsys.readouterr().err.startswith("error: cannot read")


def test_profile_names_rows_not_built(ma, tmp_path, monkeypatch):
    from loadtest.perf import binary, profile

    monkeypatch.setattr(binary, "locate", lambda: Path("/bin/true"))
    monkeypatch.setattr(profile, "input_files", lambda models, dest: {})
    with pytest.raises(tuning.TuningError, match='make repo VARIANTS="segformer_b0"'):
        profile.profile(tuning.CONFIGS / "cpu.yaml", ["segformer_b0"], tmp_path / "ma", None, repo=tmp_path)
