"""Every command README.md shows in a code block is run here, as a new user would, on a fresh copy of the project.

The commands are read from README's code blocks (tests/readme_commands.py), so a new or edited command is noticed:
each must have an entry in TABLE below, keyed by its text (one line, comments dropped, single spaces), saying how
it is run here:

- `Run`: run in a fresh copy of the working tree (tracked and unignored files, the project's .venv linked; empty
  model_repository/, .cache/, .triton/, weights/imported/), as written or with the substitutions its entry names
  (free ports, small inputs, the null model or a small imported model instead of the shipped B1 at 1024x1024),
  once per protocol where the command takes `--protocol`, and checked for what README says it produces (files,
  printed lines, exit code). `make` runs with `-o .venv/.installed` (the environment is the project's own) and with
  HTTP_PORT / GRPC_PORT / METRICS_PORT set to free ports in its environment, so `make serve` runs as written.
- `NotHere`: not run on a CPU machine, with the reason (needs a CUDA GPU, a cluster, ...); its make target and
  variables, or its module's options and their values, are still checked against the code.

The Run entries run in TABLE's order, which is a user's path through README: the demo, the shipped null row, the
foreground server, importing "your checkpoint" (the shipped B0's weights saved as a checkpoint, served at
128x160), `make serve`, the clients, deployment manifests, a restart with the null row, load tests, `make stop`,
then the plugin build and a tiny training run. A command that stops working fails CI; one that fails today
because of a known defect is an expected failure naming the issue item (strict: fixing it fails this test until
the mark is removed).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from tests.conftest import CAMVID, ROOT, free_port
from tests.readme_commands import readme_commands

README = ROOT / "README.md"
SIZE = (128, 160)  # the imported model's served size (README: SIZE=1024x2048)


# ---- the table ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """One way a Run entry is run: its label (the protocol, or what is varied) and an expected failure, if any."""

    label: str
    xfail: str | None = None  # the reason, naming the issue item
    strict: bool = True  # False only where the failure depends on timing (then a pass is no news)


@dataclass(frozen=True)
class Run:
    how: str  # what is run here instead, in words ("as written", or the substitutions)
    step: str  # the step function below
    cases: tuple[Case, ...] = (Case("as written"),)


@dataclass(frozen=True)
class NotHere:
    reason: str


HTTP_GRPC = (Case("http"), Case("grpc"))

TABLE: dict[str, Run | NotHere] = {
    "make demo": Run("MODEL=segformer_null (README: the fastest CPU row, B1 1024x1024 under OpenVINO, minutes of "
                     "conversion on 2 cores), ports free", "demo"),
    "make repo": Run("VARIANTS=segformer_null (README: every shipped B1 row at 1024x1024)", "repo_null"),
    ".venv/bin/tritonserver --model-repository model_repository":
        Run("as written, plus --http-port/--grpc-port/--metrics-port (free); stopped with Ctrl-C (SIGINT)",
            "tritonserver"),
    "make repo CHECKPOINT=segformer.b1.1024x1024.city.160k.pth NAME=city_b1 SIZE=1024x2048 [CALIB=DIR]":
        Run("CHECKPOINT=the shipped B0 saved as a .pth, SIZE=128x160, PRESET=cityscapes (the file has no classes), "
            "LOGITS=1 (for --slide below); without CALIB= (the INT8 search takes minutes on 2 cores; "
            "tests/build/test_quantize*.py cover it)", "import"),
    "make serve": Run("as written (ports from the environment)", "serve"),
    "python -m client.segment frame.png --model city_b1 [--protocol grpc] [--out out/] [--slide]":
        Run("frame.png = the CamVid sample as PNG; --url localhost:PORT; http plain, grpc with --out out/, http with "
            "--slide --out out/", "segment",
            (Case("http"), Case("grpc --out out/"), Case("http --slide --out out/"))),
    "python -m client.segment drive.mp4 [--out out/] [--model segformer_b1] [--in-flight N] [--labels]":
        Run("drive.mp4 = 6 frames of 160x120; --model city_b1 --in-flight 2 --labels --out out/, --url, both "
            "protocols", "video_file", HTTP_GRPC),
    "python -m client.segment frames/ --video [--fps 30]":
        Run("frames/ = 6 PNGs of 160x120; --fps 30 --model city_b1, --url, both protocols", "video_folder",
            HTTP_GRPC),
    "python -m client.segment drive.mp4 --protocol grpc --shm system":
        Run("drive.mp4 = 6 frames of 160x120; --model city_b1 --in-flight 2 --labels --out out/, --url; both "
            "protocols (a region is registered over either)", "video_shm", HTTP_GRPC),
    "python -m bench.video --no-model --in-flight 2 4 8 --seconds 10 --fps 30 --out docs/results/video_client_cpu":
        Run("--in-flight 2 --seconds 1 --fps 10 (10 frames) --frames CAMVID/test/images --out out/video_client "
            "(README's numbers are its 300 frames on 2 cores)", "bench_video_no_model"),
    "python -m client.evaluate --images DIR [--labels DIR --label-format camvid] --models segformer_b1_fp16,"
    "segformer_b1_int8,segformer_b1_best --reference segformer_b1 --threshold 0.005":
        Run("3 CamVid test images with labels; --models city_b1_fp16,city_b1_ov --reference city_b1 (no INT8 rows "
            "without CALIB); --url, both protocols", "evaluate", HTTP_GRPC),
    "make evaluate EVAL_IMAGES=DIR":
        Run("EVAL_IMAGES=3 CamVid test images, REFERENCE=city_b1 (the shipped B1 is not served here: the served "
            "city_b1_* rows are evaluated); and with "
            "EVAL_MODELS=city_b1_fp16", "make_evaluate",
            (Case("as written"), Case("EVAL_MODELS=city_b1_fp16"))),
    "make repo VARIANTS=segformer_b1_onnx,segformer_b1_openvino,segformer_b1_gpu":
        Run("VARIANTS=city_b1_onnx,city_b1_openvino (the imported model's rows; the GPU row needs a CUDA GPU)",
            "deploy_rows"),
    "make deploy-manifests [STORAGE_URI=s3://bucket/path DEPLOY_MODELS=a,b]":
        Run("plain, and with STORAGE_URI=s3://bucket/path DEPLOY_MODELS=city_b1_onnx,city_b1_openvino",
            "deploy_manifests", (Case("plain"), Case("STORAGE_URI= DEPLOY_MODELS="))),
    "kubectl apply -k deploy/k8s/base":
        Run("needs a cluster: `kubectl kustomize` (the offline build `apply -k` does first) instead", "kustomize"),
    "kubectl apply -k deploy/overlays/object-storage":
        Run("needs a cluster: `kubectl kustomize` instead", "kustomize"),
    "kubectl apply -k deploy/k8s/kserve":
        Run("needs a cluster and KServe: `kubectl kustomize` instead", "kustomize"),
    "make repo VARIANTS=segformer_null && make stop serve": Run("as written", "restart_with_null"),
    "make loadtest LOAD_MODEL=segformer_b1 LOAD_USERS=4 DURATION=30":
        Run("LOAD_USERS=2 DURATION=5 (two locust processes, as README's 4 users); LOAD_MODEL=segformer_null (1024x1024 "
            "frames, as README's rows) and LOAD_MODEL=city_b1 (128x160 frames)", "loadtest",
            (Case("segformer_null"), Case("city_b1"))),
    "make sweep LOAD_MODEL=segformer_b1 USERS=1,2,4 SLO_MS=10000":
        Run("LOAD_MODEL=city_b1 USERS=1,2 DURATION=4 (1024x1024 frames at 2 users: see make loadtest)", "sweep"),
    "locust -f loadtest/locustfile.py --host localhost:8001 --model segformer_b1 TritonGrpcUser":
        Run("--host localhost:PORT --model segformer_null, plus --web-host 127.0.0.1 --web-port PORT; a swarm of one "
            "user started and stopped through the web UI's own endpoints; TritonGrpcUser and TritonHttpUser",
            "locust", (Case("grpc"), Case("http"))),
    "make repo VARIANTS=segformer_null FORCE=1": Run("as written, against the server the null model runs in",
                                                     "new_version"),
    "make reload MODEL=segformer_null": Run("as written", "reload"),
    "make cluster-reload": NotHere("needs `make cluster` (HAProxy): tests/integration/test_cluster_updates.py rolls "
                                   "two replicas under load"),
    "make perf PERF_MODEL=segformer_null": Run("PERF_CONCURRENCY=1:2:1 PERF_PAYLOADS=raw PERF_OUT=out/perf (README: "
                                               "concurrency 1-4, raw and raw-shm)", "perf"),
    "make tune": NotHere("long: Model Analyzer's sweep takes ~20 min on 2 cores; tests/loadtest/test_perf_tuning.py "
                         "validates its configs with Model Analyzer's own parser and the apply path"),
    "make stop": Run("as written", "stop"),
    "make plugins": Run("as written", "plugins"),
    "python -m training.train --data CAMVID --variant b1 --splits train,val --steps 100000 --time-budget 780 "
    "--warmup 300 --eval-every 1000 --eval-size 1024x1024 --name segformer-b1-camvid --out runs/b1-trainval":
        Run("13 min on an H100 in README: here --variant tiny --steps 2 --warmup 1 --eval-every 2 --eval-size 64x64 "
            "--name segformer-tiny-toy --out runs/tiny-trainval on a toy dataset in CamVid's layout, --batch 2 "
            "--crop 64x64 --workers 0 --device cpu", "train"),
    "python -m training.curves runs/b0-train runs/b1-train runs/b0-trainval runs/b1-trainval --out "
    "docs/results/training_camvid":
        Run("runs/tiny-trainval (the run above) --out out/training_curves", "curves"),
    # ---- not on a CPU machine --------------------------------------------------------------------------------
    "make test": NotHere("the suite this test is part of (CI runs it through .ci/run)"),
    "make bench BENCH_IMAGES=DIR": NotHere("needs a CUDA GPU (GPU benchmark: fast path, HF, served scenarios)"),
    "make bench BENCH_IMAGES=path/to/images": NotHere("needs a CUDA GPU (GPU benchmark)"),
    "python -m bench.gpu --readme docs/results/bench_gpu_h200_round3.json --readme-into README.md":
        NotHere("fills README from the H200 run's results file, which only a GPU run writes; "
                "tests/bench/test_gpu_round.py runs the generator on a fixture and checks README's block"),
    "make repo VARIANTS=segformer_b1_gpu": NotHere("needs a CUDA GPU (the GPU fast-path row)"),
    "python -m loadtest.closed_loop --model segformer_b1_gpu --processes 16 --concurrency 4 --payload jpeg":
        NotHere("needs a CUDA GPU (segformer_b1_gpu's encoded JPEG input)"),
    "python -m loadtest.closed_loop --model segformer_b1_gpu --processes 16 --concurrency 4 --payload raw-cuda":
        NotHere("needs a CUDA GPU (CUDA shared memory)"),
}


# ---- the table against README (fast, no server) --------------------------------------------------------------

def test_every_readme_command_has_a_table_entry():
    shown = readme_commands(README)
    assert len(shown) >= 20, f"only {len(shown)} commands found in README's code blocks: is the parser broken?"
    missing = [f"README.md:{c.line}: {c.text}" for c in shown if c.text not in TABLE]
    assert not missing, ("README commands this test does not know; add each to TABLE in "
                         "tests/test_readme_commands.py (Run, or NotHere with the reason):\n" + "\n".join(missing))


def test_every_table_entry_is_still_in_readme():
    shown = {c.text for c in readme_commands(README)}
    stale = [t for t in TABLE if t not in shown]
    assert not stale, "TABLE entries whose command left README (remove or update them):\n" + "\n".join(stale)


def test_the_parser_reads_fenced_and_indented_blocks():
    from tests.readme_commands import commands

    text = "\n".join([
        "Intro `make inline` is prose.", "", "```bash", "make a X=1   # comment", "python -m m --x 1 \\",
        "    --y 2", "# a comment line", "```", "", "```python", "print('not shell')", "```", "",
        "- a list item", "    continued list text, not code", "", "    make b && make c   # indented block",
        "        # a comment continuing it", "    locust -f f.py   # web UI", "", "```", "$ make d", "```"])
    assert [c.text for c in commands(text)] == ["make a X=1", "python -m m --x 1 --y 2", "make b && make c",
                                                 "locust -f f.py", "make d"]


def _make_variables() -> tuple[set[str], set[str]]:
    text = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([\w.-]+):", text, re.M))
    variables = set(re.findall(r"\$\((\w+)\)", text)) | set(re.findall(r"^(\w+)\s*\?=", text, re.M))
    return targets, variables


@pytest.mark.parametrize("command", [pytest.param(c, id=f"{c[:60]} -- not here: {e.reason}")
                                     for c, e in TABLE.items() if isinstance(e, NotHere)])
def test_a_command_not_run_here_still_fits_the_code(command):
    """Not run on this machine (TABLE says why), but its make target and variables, its module's options and
    their values, and the rows it names exist."""
    from build.variants import VARIANTS

    words = command.split()
    if words[0] == "make":
        targets, variables = _make_variables()
        assert words[1] in targets, f"{command}: no make target {words[1]!r}"
        for w in words[2:]:
            name, _, value = w.partition("=")
            assert name in variables, f"{command}: the Makefile does not use {name}"
            if name == "VARIANTS":
                assert set(value.split(",")) <= set(VARIANTS), f"{command}: unknown row in {value}"
    else:
        assert words[:2] == ["python", "-m"], command
        res = subprocess.run([sys.executable, "-m", words[2], "--help"], cwd=ROOT, capture_output=True, text=True,
                             timeout=120)
        assert res.returncode == 0, res.stderr
        help_text = " ".join(res.stdout.split())
        for i, w in enumerate(words[3:], 3):
            if w.startswith("--"):
                assert w in help_text, f"{command}: {words[2]} has no option {w}"
                choices = re.search(re.escape(w) + r" \{([\w,-]+)\}", help_text)
                if choices and i + 1 < len(words):
                    assert words[i + 1] in choices[1].split(","), f"{command}: {w} takes {choices[1]}"
        if "--model" in words:
            assert words[words.index("--model") + 1] in VARIANTS, command


# ---- the fresh copy and the commands' runner -----------------------------------------------------------------

@dataclass
class Result:
    command: str
    rc: int
    out: str
    err: str
    seconds: float

    @property
    def text(self) -> str:
        return self.out + "\n" + self.err

    def __str__(self) -> str:
        tail = "\n".join(self.text.replace("\r", "\n").splitlines()[-40:])
        return f"`{self.command}` exited {self.rc} after {self.seconds:.1f} s; output ends:\n{tail}"


class Clone:
    """A fresh copy of the project (what a clone of this working tree holds) with free ports."""

    def __init__(self, tmp: Path):
        self.dir = tmp / "project"
        files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                               capture_output=True, check=True).stdout.decode().split("\0")
        for rel in files:
            src = ROOT / rel
            if rel and rel != ".venv" and src.is_file() and not src.is_symlink():
                (self.dir / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, self.dir / rel)
            elif rel and src.is_symlink() and rel != ".venv":
                (self.dir / rel).parent.mkdir(parents=True, exist_ok=True)
                (self.dir / rel).symlink_to(os.readlink(src))
        (self.dir / ".venv").symlink_to((ROOT / ".venv").resolve())
        # `make` as README writes it, without reinstalling the environment (make -o .venv/.installed)
        wrappers = tmp / "bin"
        wrappers.mkdir()
        (wrappers / "make").write_text(f'#!/bin/sh\nexec {shutil.which("make")} -o .venv/.installed "$@"\n')
        (wrappers / "make").chmod(0o755)
        self.ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
        self.env = {**os.environ, "PATH": os.pathsep.join([str(wrappers), str(self.dir / ".venv" / "bin"),
                                                           os.environ.get("PATH", "")]),
                    "HTTP_PORT": str(self.ports["http"]), "GRPC_PORT": str(self.ports["grpc"]),
                    "METRICS_PORT": str(self.ports["metrics"]), "PYTHONUNBUFFERED": "1",
                    "VIRTUAL_ENV": str(self.dir / ".venv")}
        for k in ("PYTEST_CURRENT_TEST", "PYTEST_ADDOPTS", "HOST", "MAKEFLAGS", "MFLAGS"):
            self.env.pop(k, None)

    def url(self, protocol: str) -> str:
        return f"localhost:{self.ports[protocol]}"

    def sh(self, command: str, timeout: float = 300) -> Result:
        t0 = time.perf_counter()
        p = subprocess.Popen(["bash", "-c", command], cwd=self.dir, env=self.env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = p.communicate(timeout=timeout)
            rc = p.returncode
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)  # the command and whatever it started
            out, err = p.communicate()
            rc, err = 124, err + f"\n(killed after {timeout:.0f} s)"
        res = Result(command, rc, out, err, time.perf_counter() - t0)
        print(f"[{res.seconds:6.1f} s] rc {rc}: {command}")
        return res

    def popen(self, command: str, log: Path) -> subprocess.Popen:
        with open(log, "wb") as f:
            return subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=self.dir, env=self.env, stdout=f,
                                    stderr=subprocess.STDOUT, start_new_session=True)

    def own_processes(self) -> list[int]:
        """Processes still running from this copy (their command line names its folder): servers, locust workers."""
        pids = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit() and int(d.name) != os.getpid():
                try:
                    if str(self.dir).encode() in (d / "cmdline").read_bytes():
                        pids.append(int(d.name))
                except OSError:
                    pass
        return pids


def _http(url: str, data: bytes | None = None, timeout: float = 10) -> tuple[int, str]:
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except OSError as e:
        return 0, str(e)


def _wait_for(fn: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen | None = None,
              log: Path | None = None) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if fn():
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    pytest.fail(f"{what} (after {time.time() - t0:.0f} s{'; exited ' + str(proc.poll()) if proc and proc.poll() is not None else ''})\n{tail}")


def _stop_group(proc: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 30) -> int | None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        return None


class Flow:
    """The copy, the inputs the commands take, and the steps already run (a step runs once; later steps that need
    it reuse its result)."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.clone = Clone(tmp)
        self.done: dict[str, object] = {}

    def need(self, step: str):
        if step in self.done:
            if isinstance(self.done[step], BaseException):
                pytest.fail(f"the step this one needs, {step!r}, failed: {self.done[step]}")
            return self.done[step]
        try:
            self.done[step] = STEPS[step](self, None)
        except BaseException as exc:
            self.done[step] = exc
            raise
        return self.done[step]

    def camvid_sample(self) -> tuple[str, str]:
        """3 CamVid test images and their labels in the copy: (images, labels) folders, relative."""
        if not (CAMVID / "test" / "images").is_dir():
            pytest.skip(f"CamVid is not at {CAMVID} (development data, present in CI)")
        d = self.clone.dir / "camvid3"
        if not d.is_dir():
            for src in sorted((CAMVID / "test" / "images").glob("*"))[:3]:
                label = next((CAMVID / "test" / "labels").glob(src.stem + ".*"))
                (d / "images").mkdir(parents=True, exist_ok=True)
                (d / "labels").mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, d / "images" / src.name)
                shutil.copy2(label, d / "labels" / label.name)
        return "camvid3/images", "camvid3/labels"


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    f = Flow(tmp_path_factory.mktemp("readme"))
    yield f
    # stop whatever the commands left running: the recorded server, then any process of this copy
    from server.serve import recorded_server, stop_pid

    pid, _ = recorded_server(f.clone.dir / ".triton" / "server.pid")
    if pid is not None:
        stop_pid(pid)
    for pid in f.clone.own_processes():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _ok(res: Result, *says: str) -> None:
    assert res.rc == 0, str(res)
    for s in says:
        assert s in res.text, f"{s!r} not printed\n{res}"


def _size(h: int, w: int) -> str:
    """A size as printed: width x height, or height x width (issue 30 item 9 moves the client to HxW)."""
    return f"(?:{w}x{h}|{h}x{w})"


def _says(res: Result, pattern: str) -> None:
    assert re.search(pattern, res.out, re.M), f"no line matching {pattern!r}\n{res}"


def _served(flow: Flow, model: str, port: int | None = None) -> bool:
    port = port or flow.clone.ports["http"]
    return _http(f"http://127.0.0.1:{port}/v2/models/{model}/ready")[0] == 200


# ---- the steps (one per Run entry) ---------------------------------------------------------------------------

def step_demo(flow: Flow, case: Case | None):
    c = flow.clone
    ports = {k: free_port() for k in ("HTTP_PORT", "GRPC_PORT", "METRICS_PORT")}
    res = c.sh("make demo MODEL=segformer_null " + " ".join(f"{k}={v}" for k, v in ports.items()))
    _ok(res, "stage timings:", "Triton start", "inference, second request", "Look at ")
    assert re.search(r"^\s*\d+\s+road\s", res.out, re.M), f"no class table\n{res}"  # the null model: all class 0
    overlay = Path(re.search(r"Look at (\S+)", res.out)[1])
    overlay = overlay if overlay.is_absolute() else c.dir / overlay
    assert overlay.is_file() and (overlay.parent / overlay.name.replace("_overlay", "_labels")).is_file()
    assert _http(f"http://127.0.0.1:{ports['HTTP_PORT']}/v2/health/live")[0] == 0, "the demo left Triton running"


def step_repo_null(flow: Flow, case):
    res = flow.clone.sh("make repo VARIANTS=segformer_null")
    _ok(res, "model_repository: 1 model(s) ready")
    assert (flow.clone.dir / "model_repository" / "segformer_null" / "config.pbtxt").is_file()
    return res


def step_tritonserver(flow: Flow, case):
    flow.need("repo_null")
    c = flow.clone
    ports = [free_port() for _ in range(3)]
    log = flow.tmp / "tritonserver.log"
    proc = c.popen(".venv/bin/tritonserver --model-repository model_repository --http-port={} --grpc-port={} "
                   "--metrics-port={}".format(*ports), log)
    try:
        _wait_for(lambda: _http(f"http://127.0.0.1:{ports[0]}/v2/health/ready")[0] == 200, 180,
                  "the foreground tritonserver did not become ready", proc, log)
        assert _served(flow, "segformer_null", ports[0])
        # README: the same defaults as make serve: the repository API is restricted
        status, body = _http(f"http://127.0.0.1:{ports[0]}/v2/repository/index", b"{}")
        assert status != 200 and "restricted" in body.lower(), (status, body)
    finally:
        rc = _stop_group(proc, signal.SIGINT)  # Ctrl-C, as in a terminal
    assert rc is not None, "tritonserver did not stop within 30 s of Ctrl-C"


def step_import(flow: Flow, case):
    c = flow.clone
    import torch

    from segformer.weights import get_weights

    ckpt = flow.tmp / "segformer.b0.city.pth"  # "your checkpoint": the shipped B0, saved as a plain state dict
    torch.save({"state_dict": get_weights("segformer-b0-camvid").build().state_dict()}, ckpt)
    res = c.sh(f"make repo CHECKPOINT={ckpt} NAME=city_b1 SIZE={SIZE[0]}x{SIZE[1]} PRESET=cityscapes LOGITS=1",
               timeout=600)
    _ok(res, "as 'city_b1'")
    entry = c.dir / "weights" / "imported"
    meta = json.loads((entry / "city_b1.json").read_text())
    assert (entry / "city_b1.safetensors").is_file() and meta["sha256"] and meta.get("classes")
    repo = c.dir / "model_repository"
    from build.model_config import parse_pbtxt

    for row in ("city_b1", "city_b1_onnx", "city_b1_fp16", "city_b1_ov", "city_b1_openvino"):
        assert (repo / row / "config.pbtxt").is_file() and (repo / row / "build.json").is_file(), row
    cfg = parse_pbtxt((repo / "city_b1" / "config.pbtxt").read_text())
    assert list(cfg.input[0].dims) == [*SIZE, 3] and {o.name for o in cfg.output} >= {"labels", "logits"}
    # INT8 rows need CALIB=DIR, and say so
    assert re.search(r"city_b1_int8\s+skipped: .*CALIB", res.text), str(res)
    return res


def step_serve(flow: Flow, case):
    flow.need("import")
    flow.need("repo_null")  # so the load tests below find segformer_null served
    c = flow.clone
    res = c.sh("make serve", timeout=300)
    _ok(res, "Triton ready (pid", f"127.0.0.1:{c.ports['http']}",
        "not loaded: city_b1_onnx (needs the onnxruntime backend)")
    for model in ("city_b1", "city_b1_fp16", "city_b1_ov", "segformer_null"):
        assert _served(flow, model), model
    assert (c.dir / ".triton" / "server.pid").is_file() and (c.dir / ".triton" / "admin-key").is_file()
    return res


def step_segment(flow: Flow, case: Case):
    flow.need("serve")
    c = flow.clone
    from PIL import Image

    if not (c.dir / "frame.png").is_file():
        Image.open(c.dir / "samples" / "camvid_0001TP_008550.jpg").save(c.dir / "frame.png")
    protocol, *options = case.label.split()
    out = c.dir / "out"  # README's default and --out out/ are the same folder
    for name in ("frame_labels.png", "frame_overlay.png"):
        (out / name).unlink(missing_ok=True)
    res = c.sh(f"python -m client.segment frame.png --model city_b1 --protocol {protocol} {' '.join(options)} "
               f"--url {c.url(protocol)}")
    _ok(res, "wrote out/frame_labels.png", "out/frame_overlay.png")
    _says(res, rf"frame\.png: {_size(360, 480)}\b.* -> city_b1(?: version \d+)? {_size(*SIZE)}\b")
    assert re.search(r"\bclass\b.*\bpixels\b", res.out) and re.search(r"^\s*\d+\s+\w+", res.out, re.M), str(res)
    if "--slide" in options:
        assert "slide" in res.out, str(res)
    labels, overlay = Image.open(out / "frame_labels.png"), Image.open(out / "frame_overlay.png")
    assert labels.mode == "P" and labels.size == overlay.size == (480, 360)


def _make_video(flow: Flow) -> None:
    import av
    import numpy as np
    from PIL import Image

    d = flow.clone.dir
    if (d / "drive.mp4").is_file():
        return
    img = np.asarray(Image.open(d / "samples" / "camvid_0001TP_008550.jpg").convert("RGB").resize((160, 120)))
    frames = [np.roll(img, 4 * i, axis=1).copy() for i in range(6)]
    (d / "frames").mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(d / "frames" / f"{i:04d}.png")
    with av.open(str(d / "drive.mp4"), "w") as box:
        s = box.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = 160, 120, "yuv420p"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                box.mux(p)
        for p in s.encode():
            box.mux(p)


def _video_frames(path: Path) -> tuple[int, tuple[int, int], float]:
    import av

    with av.open(str(path)) as box:
        stream = box.streams.video[0]
        n = sum(1 for _ in box.decode(stream))
        return n, (stream.width, stream.height), float(stream.average_rate or 0)


VIDEO_TIMEOUT = 60  # 6 frames of 160x120 take seconds (before issue 30 item 1 was fixed, HTTP could hang)


def step_video_file(flow: Flow, case: Case):
    flow.need("serve")
    _make_video(flow)
    c = flow.clone
    out = c.dir / f"out-video-{case.label}"
    res = c.sh(f"python -m client.segment drive.mp4 --out {out.name}/ --model city_b1 --in-flight 2 --labels "
               f"--protocol {case.label} --url {c.url(case.label)}", timeout=VIDEO_TIMEOUT)
    _ok(res, "fps end to end", "p50", "p99", f"wrote {out.name}/drive_overlay.mp4")
    _says(res, rf"drive\.mp4: 6 frames {_size(120, 160)} ")
    assert _video_frames(out / "drive_overlay.mp4")[:2] == (6, (160, 120))
    from PIL import Image

    labels = sorted((out / "drive_labels").glob("*.png"))
    assert [p.name for p in labels] == [f"{i:06d}.png" for i in range(6)]
    assert Image.open(labels[0]).mode == "P" and Image.open(labels[0]).size == (160, 120)


def step_video_folder(flow: Flow, case: Case):
    flow.need("serve")
    _make_video(flow)
    c = flow.clone
    out = c.dir / f"out-frames-{case.label}"
    res = c.sh(f"python -m client.segment frames/ --video --fps 30 --model city_b1 --out {out.name}/ "
               f"--protocol {case.label} --url {c.url(case.label)}", timeout=VIDEO_TIMEOUT)
    _ok(res, "fps end to end", f"wrote {out.name}/frames_overlay.mp4")
    _says(res, rf"frames: 6 frames {_size(120, 160)} at 30\.00 fps")
    n, size, fps = _video_frames(out / "frames_overlay.mp4")
    assert (n, size) == (6, (160, 120)) and abs(fps - 30) < 0.5, (n, size, fps)


def step_video_shm(flow: Flow, case: Case):
    flow.need("serve")
    _make_video(flow)
    c = flow.clone
    out = c.dir / f"out-video-shm-{case.label}"
    res = c.sh(f"python -m client.segment drive.mp4 --protocol {case.label} --shm system --out {out.name}/ "
               f"--model city_b1 --in-flight 2 --labels --url {c.url(case.label)}", timeout=VIDEO_TIMEOUT)
    _ok(res, "fps end to end (2 in flight, system shm)", "stages (ms per frame, threads)",
        f"wrote {out.name}/drive_overlay.mp4")
    assert _video_frames(out / "drive_overlay.mp4")[:2] == (6, (160, 120))
    assert len(list((out / "drive_labels").glob("*.png"))) == 6


def step_bench_video_no_model(flow: Flow, case: Case):
    if not (CAMVID / "test" / "images").is_dir():
        pytest.skip(f"CamVid is not at {CAMVID} (development data, present in CI)")
    res = flow.clone.sh(f"python -m bench.video --no-model --in-flight 2 --seconds 1 --fps 10 --frames "
                        f"{CAMVID / 'test' / 'images'} --out out/video_client", timeout=120)
    _ok(res, "in flight 2: ")
    md = (flow.clone.dir / "out" / "video_client.md").read_text()
    assert "client pipeline alone, no model" in md and "encode ms/frame" in md, md
    run = json.loads((flow.clone.dir / "out" / "video_client.json").read_text())["runs"][0]
    assert run["frames"] == 10 and run["stopped"] is None and run["fps_end_to_end"] > 0, run


def _check_report(folder: Path, models: list[str], labels: bool) -> dict:
    for name in ("report.md", "report.json", "disagreement.png", "worst.png"):
        assert (folder / name).is_file(), name
    assert len(list((folder / "heatmaps").glob("*.png"))) == 3
    assert (folder / "iou.png").is_file() == labels
    report = json.loads((folder / "report.json").read_text())
    text = json.dumps(report)
    for m in models:
        assert m in text and m in (folder / "report.md").read_text(), m
    return report


def step_evaluate(flow: Flow, case: Case):
    flow.need("serve")
    images, labels = flow.camvid_sample()
    c = flow.clone
    out = f"out/evaluate-{case.label}"
    res = c.sh(f"python -m client.evaluate --images {images} --labels {labels} --label-format camvid --models "
               f"city_b1_fp16,city_b1_ov --reference city_b1 --threshold 0.005 --protocol {case.label} "
               f"--url {c.url(case.label)} --out {out}")
    _ok(res, "3 image(s); reference: city_b1", "gate passed", "mIoU")
    _check_report(c.dir / out, ["city_b1_fp16", "city_b1_ov"], labels=True)


def step_make_evaluate(flow: Flow, case: Case):
    flow.need("serve")
    images, _ = flow.camvid_sample()
    c = flow.clone
    shutil.rmtree(c.dir / "out" / "evaluate", ignore_errors=True)
    extra = "" if case.label == "as written" else " EVAL_MODELS=city_b1_fp16"
    res = c.sh(f"make evaluate EVAL_IMAGES={images} REFERENCE=city_b1{extra}")
    _ok(res, "3 image(s); reference: city_b1", "report: out/evaluate/report.md")
    _check_report(c.dir / "out" / "evaluate", ["city_b1_fp16"], labels=False)


def step_deploy_rows(flow: Flow, case):
    flow.need("import")
    res = flow.clone.sh("make repo VARIANTS=city_b1_onnx,city_b1_openvino")
    _ok(res, "model_repository: 2 model(s) ready")
    return res


def step_deploy_manifests(flow: Flow, case: Case | None):
    flow.need("deploy_rows")
    c = flow.clone
    extra = "" if case is None or case.label == "plain" else \
        " STORAGE_URI=s3://bucket/path DEPLOY_MODELS=city_b1_onnx,city_b1_openvino"
    res = c.sh("make deploy-manifests" + extra)
    _ok(res, "wrote deploy/k8s/", " 0 problems")
    k8s = c.dir / "deploy" / "k8s"
    for rel in ("base/kustomization.yaml", "kserve/kustomization.yaml", "repository.json"):
        assert (k8s / rel).is_file(), rel
    text = "\n".join(p.read_text() for p in k8s.rglob("*.yaml"))
    assert "city_b1_onnx" in text and "city_b1_openvino" in text
    assert "nvcr.io/nvidia/tritonserver:" in text
    if extra:
        assert "s3://bucket/path" in text
        assert "city_b1_trt_fp32" not in text  # DEPLOY_MODELS= chose the two rows
    return res


def step_kustomize(flow: Flow, case, command: str = ""):
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl (kustomize) is not installed")
    if not (flow.clone.dir / "deploy" / "k8s").is_dir():
        flow.need("deploy_manifests")
    folder = command.split()[-1]
    res = flow.clone.sh(f"kubectl kustomize {folder}", timeout=120)
    _ok(res)
    kinds = set(re.findall(r"^kind: (\w+)", res.out, re.M))
    expected = {"deploy/k8s/base": {"Deployment", "Service", "HorizontalPodAutoscaler", "PersistentVolumeClaim"},
                "deploy/overlays/object-storage": {"Deployment"},
                "deploy/k8s/kserve": {"InferenceService"}}[folder]
    assert expected <= kinds, (folder, kinds)
    if "object-storage" in folder:
        assert "initContainers" in res.out


def step_restart_with_null(flow: Flow, case):
    flow.need("serve")
    c = flow.clone
    res = c.sh("make repo VARIANTS=segformer_null && make stop serve")
    _ok(res, "model_repository: 1 model(s) ready", "Triton stopped", "Triton ready (pid")
    assert _served(flow, "segformer_null") and _served(flow, "city_b1")


def step_new_version(flow: Flow, case):
    flow.need("restart_with_null")
    c = flow.clone
    folder = c.dir / "model_repository" / "segformer_null"
    before = max(int(p.name) for p in folder.iterdir() if p.name.isdigit())
    res = c.sh("make repo VARIANTS=segformer_null FORCE=1")
    _ok(res, "segformer_null")
    versions = sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())
    assert versions[-1] == before + 1, (versions, str(res))
    flow.new_version = (before, versions[-1])


def step_reload(flow: Flow, case):
    flow.need("new_version")
    c = flow.clone
    old, new = flow.new_version
    res = c.sh("make reload MODEL=segformer_null")
    _ok(res, f"segformer_null: version {new} serving")
    assert _served(flow, "segformer_null")


def step_perf(flow: Flow, case):
    flow.need("restart_with_null")
    c = flow.clone
    res = c.sh("make perf PERF_MODEL=segformer_null PERF_CONCURRENCY=1:2:1 PERF_PAYLOADS=raw PERF_OUT=out/perf",
               timeout=400)
    assert res.rc == 0, str(res)
    report = (c.dir / "out" / "perf.md").read_text()
    assert "perf_analyzer" in report and "closed" in report and "segformer_null" in report, report[:2000]


def step_loadtest(flow: Flow, case):
    flow.need("serve")
    c = flow.clone
    model = case.label
    res = c.sh(f"make loadtest LOAD_MODEL={model} LOAD_USERS=2 DURATION=5", timeout=180)
    _ok(res, f"{model} u=2 (grpc, 2 proc", "img/s", "p50", "p90", "p99", "server:", "queue", "compute")
    m = re.search(r"(\d+) requests, (\d+) failed", res.out)
    assert m and int(m[1]) > 0 and int(m[2]) == 0, str(res)
    assert res.seconds < 60, f"a 5 s run took {res.seconds:.0f} s\n{res}"
    folder = c.dir / "out" / "loadtest"
    for suffix in ("_stats.csv", ".html", "_summary.json"):
        assert (folder / f"{model}_u2{suffix}").is_file(), suffix


def step_sweep(flow: Flow, case):
    flow.need("serve")
    c = flow.clone
    res = c.sh("make sweep LOAD_MODEL=city_b1 USERS=1,2 SLO_MS=10000 DURATION=4", timeout=240)
    _ok(res, "knee: ", "city_b1_sweep.png")
    for users in (1, 2):
        m = re.search(rf"u={users} \(grpc.*?(\d+) requests, (\d+) failed", res.out)
        assert m and int(m[1]) > 0 and int(m[2]) == 0, f"u={users}\n{res}"
    folder = c.dir / "out" / "sweep"
    assert (folder / "city_b1_sweep.png").is_file() and (folder / "city_b1_sweep.json").is_file()


def step_locust(flow: Flow, case: Case):
    flow.need("serve")
    c = flow.clone
    user = "TritonGrpcUser" if case.label == "grpc" else "TritonHttpUser"
    web = free_port()
    log = flow.tmp / f"locust-{case.label}.log"
    proc = c.popen(f"locust -f loadtest/locustfile.py --host {c.url(case.label)} --model segformer_null {user} "
                   f"--web-host 127.0.0.1 --web-port {web}", log)
    base = f"http://127.0.0.1:{web}"
    try:
        _wait_for(lambda: _http(base + "/")[0] == 200, 60, "locust's web UI did not answer", proc, log)
        status, body = _http(base + "/swarm", urllib.parse.urlencode(
            {"user_count": 1, "spawn_rate": 1, "host": c.url(case.label)}).encode())
        assert status == 200 and json.loads(body).get("success"), body
        stats = {}

        def enough():
            stats.update(json.loads(_http(base + "/stats/requests")[1] or "{}"))
            total = next((s for s in stats.get("stats", []) if s["name"] == "Aggregated"), {})
            return total.get("num_requests", 0) >= 5

        _wait_for(enough, 60, f"locust's web UI shows fewer than 5 requests: {stats}", proc, log)
        total = next(s for s in stats["stats"] if s["name"] == "Aggregated")
        assert total["num_failures"] == 0, (stats.get("errors"), log.read_text()[-2000:])
        _http(base + "/stop")
    finally:
        _stop_group(proc)


def step_stop(flow: Flow, case):
    flow.need("serve")
    c = flow.clone
    from server.serve import recorded_server

    pid, _ = recorded_server(c.dir / ".triton" / "server.pid")
    res = c.sh("make stop")
    _ok(res, "Triton stopped")
    assert not (c.dir / ".triton" / "server.pid").exists()
    assert _http(f"http://127.0.0.1:{c.ports['http']}/v2/health/live")[0] == 0, "still answering after make stop"
    if pid is not None:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]


def step_plugins(flow: Flow, case):
    c = flow.clone
    res = c.sh("make plugins", timeout=600)
    _ok(res, "100% tests passed")
    build = c.dir / "plugins" / "build"
    assert list(build.glob("libsegformer_plugins*.so")), str(res)
    assert "TensorRT headers" in (build / "TENSORRT_USED").read_text()


def step_train(flow: Flow, case):
    from tests.training.test_train import _toy_dataset

    c = flow.clone
    _toy_dataset(c.dir / "toy")
    res = c.sh("python -m training.train --data toy --variant tiny --splits train,val --steps 2 --time-budget 780 "
               "--warmup 1 --eval-every 2 --eval-size 64x64 --name segformer-tiny-toy --out runs/tiny-trainval "
               "--batch 2 --crop 64x64 --workers 0 --device cpu", timeout=300)
    _ok(res)
    run = c.dir / "runs" / "tiny-trainval"
    for name in ("history.json", "last.pt", "segformer-tiny-toy.safetensors", "segformer-tiny-toy.json"):
        assert (run / name).is_file(), f"{name} missing\n{res}"
    return res


def step_curves(flow: Flow, case):
    flow.need("train")
    res = flow.clone.sh("python -m training.curves runs/tiny-trainval --out out/training_curves")
    _ok(res)
    out = flow.clone.dir / "out" / "training_curves"
    for name in ("curves.png", "summary.md", "summary.json"):
        assert (out / name).is_file(), name
    assert "tiny-trainval" in (out / "summary.md").read_text()


STEPS: dict[str, Callable] = {name[5:]: fn for name, fn in globals().items() if name.startswith("step_")}


def _cases():
    for command, entry in TABLE.items():
        if isinstance(entry, Run):
            for case in entry.cases:
                marks = [pytest.mark.xfail(reason=case.xfail, strict=case.strict)] if case.xfail else []
                yield pytest.param(command, case, id=f"{command[:60]} [{case.label}]", marks=marks)


@pytest.mark.integration
@pytest.mark.parametrize("command,case", list(_cases()))
def test_readme_command(flow, command, case):
    entry = TABLE[command]
    print(f"README: {command}\nhere:   {entry.how}" + (f" [{case.label}]" if len(entry.cases) > 1 else ""))
    step = STEPS[entry.step]
    if entry.step == "kustomize":
        step(flow, case, command)
    elif len(entry.cases) == 1 and entry.cases[0].label == "as written" and entry.step in (
            "repo_null", "import", "serve", "deploy_rows", "train"):
        flow.need(entry.step)  # a step others need: run once, its checks included
    else:
        step(flow, case)


def test_steps_and_table_agree():
    used = {e.step for e in TABLE.values() if isinstance(e, Run)}
    assert used <= set(STEPS), used - set(STEPS)
    assert set(STEPS) - used == set(), f"steps no README command uses: {set(STEPS) - used}"
