"""`make demo` serves the fastest CPU row whose guard passed on this CPU, and says why; a failed guard is named with
by how much and what it fell back to."""
import json

from server.demo import pick_cpu_row, verdict

FLAGS = ["avx2", "avx512_bf16", "avx512_vnni"]


def _row(repo, name, plan):
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "build.json").write_text(json.dumps({"openvino_plan": {"cpu_flags": FLAGS, **plan}}))


def test_the_fastest_row_that_passed_its_guard_is_served(tmp_path):
    _row(tmp_path, "segformer_b1_ov_int8", {"plan": ["f32"], "fell_back_to": "f32",
                                            "fell_back": "no INT8 plan within the budget: 0.612 % / 1.300 %"})
    _row(tmp_path, "segformer_b1_ov_bf16", {"plan": ["bf16"], "heldout_disagreement": 0.0028,
                                            "heldout_worst": 0.0042, "heldout_images": 12})
    _row(tmp_path, "segformer_b1_ov", {"plan": ["f32"]})
    said = []
    times = {"segformer_b1_ov_bf16": 0.4, "segformer_b1_ov": 0.9}
    row = pick_cpu_row(tmp_path, FLAGS, timer=lambda folder, size: times[folder.parent.name], say=said.append)
    assert row == "segformer_b1_ov_bf16"
    text = "\n".join(said)
    assert "segformer_b1_ov_int8: guard failed: no INT8 plan within the budget: 0.612 % / 1.300 %; it runs f32" in text
    assert "bf16, guard passed: 0.280 % mean / 0.420 % worst of 12 held-out frames" in text
    assert "model: segformer_b1_ov_bf16 (the fastest row that passed its guard on this CPU: " \
           "segformer_b1_ov_bf16 0.400 s/frame, segformer_b1_ov 0.900 s/frame)" in text


def test_a_guard_measured_on_another_cpu_does_not_count(tmp_path):
    ok, why = verdict({"openvino_plan": {"cpu_flags": ["avx2"], "plan": ["bf16"], "heldout_disagreement": 0.001}},
                      FLAGS)
    assert not ok and "other features" in why
    said = []
    assert pick_cpu_row(tmp_path, FLAGS, timer=None, say=said.append) == "segformer_b1_ov_bf16"  # nothing built
    assert pick_cpu_row(tmp_path, ["avx2"], timer=None, say=said.append) == "segformer_b1_ov"
    assert "no guarded CPU row built yet" in said[-1]
