"""`client.segment VIDEO --shm system`: frames and labels through POSIX shared memory with a server on this host;
every way it cannot apply is one `error:` line before any frame is sent."""
import numpy as np
import pytest
from PIL import Image

from client.segment import main as segment_main
from client.segment import parser
from client.video_shm import ShmRunner, check_local, shm_runner
from client.runners import RunnerError
from tests.client.test_video import make_video
from tests.conftest import free_port, null_repository


def test_shm_is_in_help_with_its_choices():
    text = parser().format_help()
    assert "--shm {none,system,cuda}" in text and "shared memory" in text
    assert parser().parse_args(["a.mp4"]).shm == "none"
    assert parser().parse_args(["a.mp4", "--shm", "system"]).shm == "system"


def test_an_unknown_kind_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as e:
        segment_main(["a.mp4", "--shm", "gpu"])
    assert e.value.code == 2 and "invalid choice: 'gpu'" in capsys.readouterr().err


@pytest.mark.parametrize("url, says", [("example.com:8001", "needs the server on this host"),
                                       ("localhost:8001,localhost:9001", "pass one --url"),
                                       ("localhost:1", "cannot reach Triton at localhost:1")])
def test_shm_where_it_cannot_apply_is_one_error_line(tmp_path, capsys, url, says):
    video = make_video(tmp_path / "drive.mp4", n=3)
    rc = segment_main([str(video), "--shm", "system", "--url", url, "--protocol", "grpc", "--model", "m",
                       "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and says in err[0], err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # nothing written


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_shm_without_a_gpu_here_is_one_error_line_before_any_connection(tmp_path, capsys):
    video = make_video(tmp_path / "drive.mp4", n=3)
    rc = segment_main([str(video), "--shm", "cuda", "--url", "localhost:1", "--model", "m",
                       "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "needs PyTorch with a CUDA GPU here (use --shm system)" in err[0], err
    with pytest.raises(RunnerError, match="--shm cuda needs the server on this host"):
        shm_runner("cuda", "m", "10.0.0.2:8001", "grpc", 5.0)


def test_shm_with_images_is_one_error_line(tmp_path, capsys):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    rc = segment_main([str(tmp_path / "a.png"), "--shm", "system", "--url", "localhost:1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--shm system is for videos" in err[0], err


def test_check_local_takes_this_hosts_names_only():
    for url in (None, "localhost:8001", "127.0.0.1:8001", "grpc://localhost:8001"):
        check_local(url)
    with pytest.raises(RunnerError, match="another host"):
        check_local("10.0.0.2:8001")


@pytest.fixture(scope="module")
def null_server(tmp_path_factory):
    from server.serve import start, stop_pid

    tmp = tmp_path_factory.mktemp("shm")
    repo = null_repository(tmp, size=(64, 96))
    ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
    proc = start(repo, ports["http"], ports["grpc"], ports["metrics"], state=tmp / "state")
    yield ports
    stop_pid(proc.pid)


@pytest.mark.integration
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_video_through_system_shared_memory(null_server, tmp_path, capsys, protocol):
    url = f"localhost:{null_server[protocol]}"
    video = make_video(tmp_path / "drive.mp4", n=10, size=(192, 128))  # placed into the null model's 64x96
    rc = segment_main([str(video), "--shm", "system", "--url", url, "--protocol", protocol, "--model", "null",
                       "--in-flight", "3", "--labels", "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert rc == 0 and "10 frames 192x128" in out and "(3 in flight, system shm)" in out, out
    lab = np.asarray(Image.open(tmp_path / "out" / "drive_labels" / "000009.png"))
    assert lab.shape == (128, 192) and not lab.any()  # the null model's zeros, back through the output region
    r = ShmRunner("null", url, protocol)
    try:
        r.activate()
        x = np.full((1, 64, 96, 3), 7, np.uint8)
        assert r.infer(x).shape == (1, 64, 96)
        names = [getattr(r._local, k).name for k in ("rin", "rout")]
        r.release()
        from pathlib import Path

        assert not any(Path("/dev/shm", n).exists() for n in names)  # released: unregistered and removed
    finally:
        r.deactivate()


@pytest.mark.integration
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="--shm cuda needs a CUDA GPU")
def test_video_through_cuda_shared_memory(null_server, tmp_path, capsys):
    url = f"localhost:{null_server['grpc']}"
    video = make_video(tmp_path / "drive.mp4", n=6, size=(192, 128))
    rc = segment_main([str(video), "--shm", "cuda", "--url", url, "--protocol", "grpc", "--model", "null",
                       "--in-flight", "2", "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert rc == 0 and "6 frames 192x128" in out and "CUDA shm in, system shm out" in out, out
