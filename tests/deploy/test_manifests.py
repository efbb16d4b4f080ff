"""deploy/: manifests written from a real repository (write_repository with a tiny model), validated offline
against the Kubernetes schemas and the KServe SDK's models, cross-checked with the repository they mount, and
built with kustomize (base, kserve, the object-storage overlay) where kubectl is installed."""
import json
import shutil
import subprocess
import sys

import pytest
import yaml

from build.repository import write_repository
from build.variants import ONNXRUNTIME, OPENVINO, PYTHON_GPU, PYTHON_ORT, TENSORRT, ServingVariant
from deploy import manifests, validate
from deploy.groups import NGC_RELEASE, PLUGIN_FILE, plan, read_model

ROOT = manifests.ROOT


@pytest.fixture(scope="module")
def repo(tiny_weights, tmp_path_factory):
    """A repository as `make repo` writes it: stock-backend rows, the GPU fast path, a pip-Triton row, and a
    TensorRT-RTX plan (which stock Triton cannot load)."""
    tmp = tmp_path_factory.mktemp("deploy")
    w, size = str(tiny_weights), (64, 96)
    rows = [ServingVariant("tiny_onnx", w, ONNXRUNTIME, size=size, max_batch=8),
            ServingVariant("tiny_openvino", w, OPENVINO, size=size, max_batch=2),
            ServingVariant("tiny_gpu", w, PYTHON_GPU, precision="fp16", size=size, max_batch=16, instances=2),
            ServingVariant("tiny_ort", w, PYTHON_ORT, size=size, max_batch=2),
            ServingVariant("tiny_trt_plugin", w, TENSORRT, size=size, max_batch=8, layernorm="plugin")]
    repo = tmp / "model_repository"
    built = write_repository(rows[:4], repo, log=lambda *_: None, cache_dir=tmp / "cache")
    assert set(built.values()) == {"built"}, built
    return repo


def _tensorrt_built(repo, tmp_path):
    """A copy of `repo` plus a plugin row as full TensorRT (not -RTX) would write it: config backend tensorrt,
    a plan in 1/ (this machine cannot build one: full TensorRT does not install here)."""
    out = tmp_path / "model_repository"
    shutil.copytree(repo, out)
    d = out / "tiny_trt_plugin"
    shutil.copytree(repo / "tiny_onnx", d)
    cfg = (d / "config.pbtxt").read_text().replace('"tiny_onnx"', '"tiny_trt_plugin"')
    (d / "config.pbtxt").write_text(cfg.replace('platform: "onnxruntime_onnx"', 'platform: "tensorrt_plan"'))
    prov = json.loads((d / "build.json").read_text())
    prov["variant"].update(name="tiny_trt_plugin", backend=TENSORRT, layernorm="plugin")
    (d / "build.json").write_text(json.dumps(prov))
    return out


def problems(objs, tmp_path) -> list[str]:
    """The validator's findings, run as its CLI: a process that imported tritonclient's gRPC protos cannot import
    the KServe SDK (both register `inference.ServerLiveRequest`), and the test session has."""
    f = tmp_path / f"objects_{len(list(tmp_path.glob('objects_*')))}.yaml"
    f.write_text(yaml.safe_dump_all(objs))
    out = subprocess.run([sys.executable, "-m", "deploy.validate", str(f)], capture_output=True, text=True, cwd=ROOT)
    lines = out.stdout.splitlines()
    assert out.returncode == (1 if len(lines) > 1 else 0) and lines[-1].startswith(f"{len(objs)} objects"), out
    return lines[:-1]


def _generate(repo, out, *extra):
    rc = manifests.main(["--repo", str(repo), "--out", str(out), *extra])
    assert rc == 0
    return validate.load([out])


def test_groups_follow_the_rows_as_built(repo):
    groups, skipped = plan(repo)
    by = {g.kind: g for g in groups}
    assert {m.name for m in by["gpu"].models} == {"tiny_onnx", "tiny_gpu"}  # config.pbtxt: KIND_GPU
    assert {m.name for m in by["cpu"].models} == {"tiny_openvino"}
    assert by["gpu"].image.endswith(f":{NGC_RELEASE}-pyt-python-py3")  # the python fast path needs PyTorch
    assert by["cpu"].image.endswith(f":{NGC_RELEASE}-py3")
    assert by["gpu"].concurrency == 8 * 1 + 16 * 2
    assert set(skipped) == {"tiny_ort"} and "_onnx" in skipped["tiny_ort"]


def test_every_manifest_validates_and_mounts_the_repository_make_repo_wrote(repo, tmp_path):
    objs = _generate(repo, tmp_path / "k8s", "--max-replicas", "3")
    assert problems(objs, tmp_path) == []
    kinds = sorted(o["kind"] for o in objs)
    assert kinds.count("Deployment") == 2 and kinds.count("InferenceService") == 2
    for kind in ("Service", "HorizontalPodAutoscaler", "PodMonitor", "PodDisruptionBudget"):
        assert kinds.count(kind) == 2, kind
    summary = json.loads((tmp_path / "k8s" / "repository.json").read_text())
    for o in objs:
        if o["kind"] == "Deployment":
            c = o["spec"]["template"]["spec"]["containers"][0]
            loaded = [a.split("=", 1)[1] for a in c["args"] if a.startswith("--load-model=")]
            group = summary["groups"][o["metadata"]["name"]]
            assert loaded == list(group["models"])
            for name in loaded:  # the names, versions and configs on disk are what the pods load
                m = read_model(repo / name)
                assert m.versions == group["models"][name]["versions"] == ["1"]
                assert m.digest == group["models"][name]["config_sha256"]
            assert o["spec"]["template"]["metadata"]["annotations"]["segformer.io/repository-sha256"] == group["digest"]
            assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
            assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
            gpus = c["resources"]["limits"].get("nvidia.com/gpu")
            assert (gpus == "1") == (group["kind"] == "gpu")
            assert "env" not in c  # no plugin row here
        if o["kind"] == "InferenceService":
            p = o["spec"]["predictor"]
            assert p["scaleMetric"] == "concurrency" and (p["minReplicas"], p["maxReplicas"]) == (1, 3)
            assert p["model"]["runtime"] == "kserve-tritonserver" and p["model"]["storageUri"].startswith("s3://")
        if o["kind"] == "HorizontalPodAutoscaler":
            assert o["spec"]["metrics"][0]["pods"]["metric"]["name"] == "triton_queue_avg_us"


def test_a_plugin_row_preloads_the_plugin_and_rtx_plans_are_left_out(repo, tmp_path):
    full = _tensorrt_built(repo, tmp_path)
    objs = _generate(full, tmp_path / "k8s")
    assert problems(objs, tmp_path) == []
    dep = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "segformer-gpu")
    env = dep["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env == [{"name": "LD_PRELOAD", "value": f"/data/model_repository/{PLUGIN_FILE}"}]
    isvc = next(o for o in objs if o["kind"] == "InferenceService" and o["metadata"]["name"] == "segformer-gpu")
    assert isvc["spec"]["predictor"]["model"]["env"][0]["value"] == f"/mnt/models/{PLUGIN_FILE}"
    # the plan the TensorRT-RTX builder writes is refused with the reason
    rtx = tmp_path / "rtx_repo"
    shutil.copytree(full, rtx)
    cfg = rtx / "tiny_trt_plugin" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace('platform: "tensorrt_plan"', 'backend: "tensorrt_rtx"'))
    _, skipped = plan(rtx)
    assert "TensorRT-RTX" in skipped["tiny_trt_plugin"]


def test_the_validators_catch_mistakes(repo, tmp_path):
    objs = _generate(repo, tmp_path / "k8s")
    dep = next(o for o in objs if o["kind"] == "Deployment")
    isvc = next(o for o in objs if o["kind"] == "InferenceService")
    svc = next(o for o in objs if o["kind"] == "Service")
    dep["spec"]["template"]["spec"]["containers"][0]["imagex"] = "typo"
    isvc["spec"]["predictor"]["model"]["storageUrl"] = "s3://x"
    isvc["spec"]["predictor"]["minReplicas"] = "one"
    svc["spec"]["ports"][0]["targetPort"] = "htp"
    found = "\n".join(problems(objs, tmp_path))
    assert "'imagex' was unexpected" in found
    assert "storageUrl: not a field of V1beta1ModelSpec" in found
    assert "minReplicas: expected int" in found
    assert "targetPort htp is no port" in found


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (kustomize) is not installed")
def test_kustomize_builds_base_kserve_and_the_object_storage_overlay(repo, tmp_path):
    deploy = tmp_path / "deploy"
    _generate(repo, deploy / "k8s")
    shutil.copytree(ROOT / "deploy" / "overlays", deploy / "overlays")
    for folder in ("k8s/base", "k8s/kserve", "overlays/object-storage"):
        out = subprocess.run(["kubectl", "kustomize", str(deploy / folder)], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        objs = [o for o in yaml.safe_load_all(out.stdout) if o]
        assert objs and problems(objs, tmp_path) == [], folder
        if folder == "overlays/object-storage":
            assert "PersistentVolumeClaim" not in {o["kind"] for o in objs}
            for d in (o for o in objs if o["kind"] == "Deployment"):
                spec = d["spec"]["template"]["spec"]
                assert spec["volumes"][0] == {"name": "model-store", "emptyDir": {"sizeLimit": "20Gi"}}
                cm = spec["initContainers"][0]["envFrom"][0]["configMapRef"]["name"]
                assert cm.startswith("segformer-object-storage-")  # kustomize's hashed name, rewritten


def test_bad_input_gets_one_error_line_and_the_old_manifests_stay(repo, tmp_path, capsys):
    out = tmp_path / "k8s"
    _generate(repo, out)
    before = sorted(p.name for p in out.rglob("*"))
    assert manifests.main(["--repo", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert manifests.main(["--repo", str(repo), "--out", str(out), "--models", "tiny_nope"]) == 2
    assert manifests.main(["--repo", str(repo), "--out", str(out), "--models", "tiny_ort"]) == 2
    assert manifests.main(["--repo", str(repo), "--out", str(out), "--min-replicas", "5"]) == 2
    errs = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(errs) == 4 and all(e.startswith("error: ") for e in errs), errs
    assert "make repo" in errs[0] and "tiny_nope" in errs[1] and "VARIANTS=" in errs[2]
    assert sorted(p.name for p in out.rglob("*")) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".k8s")]


def test_the_clis_have_help():
    for mod in ("deploy.manifests", "deploy.validate"):
        out = subprocess.run([sys.executable, "-m", mod, "--help"], capture_output=True, text=True, cwd=ROOT)
        assert out.returncode == 0 and "usage" in out.stdout


def test_validate_bad_input_is_one_error_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [unclosed\n")
    assert validate.main([str(tmp_path / "nope")]) == 2
    assert validate.main([str(bad)]) == 2
    errs = capsys.readouterr().err.splitlines()
    assert errs[0] == f"error: no such file or folder: {tmp_path / 'nope'}" and errs[1].startswith("error: not YAML")
    assert len(errs) == 2
    from segformer.errors import ProjectError

    assert issubclass(validate.ValidatorMissing, ProjectError) and issubclass(validate.ValidatorMissing, RuntimeError)
