"""The OpenVINO CPU rows through the real Triton: the python-backend plan gives ONNX Runtime's labels (f32), the
bf16 row serves its guarded plan, and the NGC openvino row is a standard config with model.xml/model.bin."""
import json

import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.integration
pytest.importorskip("openvino")


def test_openvino_rows_serve_onnx_runtimes_labels(tiny_weights, tmp_path):
    from client.preprocess import sample_images
    from build.model_config import parse_pbtxt
    from build.repository import write_repository
    from build.variants import rows_for
    from client.runners import TritonRunner
    from server.serve import start, stop_pid

    rows = {r.name: r for r in rows_for(str(tiny_weights), prefix="tiny", size=(64, 96))}
    wanted = [rows[n] for n in ("tiny", "tiny_ov", "tiny_ov_bf16", "tiny_openvino")]
    repo = tmp_path / "repo"
    res = write_repository(wanted, repo, log=lambda *_: None, cache_dir=tmp_path / "cache")
    assert set(res.values()) == {"built"}, res
    ngc = parse_pbtxt((repo / "tiny_openvino" / "config.pbtxt").read_text())
    assert ngc.backend == "openvino" and {p.name for p in (repo / "tiny_openvino" / "1").iterdir()} == {
        "model.xml", "model.bin"}
    plan = json.loads((repo / "tiny_ov_bf16" / "build.json").read_text())["openvino_plan"]
    assert plan["requested"] == "bf16" and plan["plan"] and plan["cpu_flags"] is not None
    ports = [free_port() for _ in range(3)]
    proc = start(repo, *ports, state=tmp_path / "state")  # the pip Triton lacks the openvino backend: left out
    try:
        x = sample_images((64, 96), 2)
        outs = {}
        for name in ("tiny", "tiny_ov", "tiny_ov_bf16"):
            with TritonRunner(name, f"127.0.0.1:{ports[0]}") as r:
                outs[name] = r.infer(x)
        assert (outs["tiny_ov"] == outs["tiny"]).mean() >= 0.9999  # f32: exact
        assert outs["tiny_ov_bf16"].shape == x.shape[:3]  # accuracy is the guard's job (build.openvino_ir)
    finally:
        stop_pid(proc.pid)
