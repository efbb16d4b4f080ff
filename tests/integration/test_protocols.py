"""Issue-30 client items against the real Triton, over HTTP and gRPC: every threaded client path (video is in
test_video_served, locust in tests/loadtest) over both protocols, wrong ports named as such (one `error:` line,
exit 2, no traceback), a row built on disk but not loaded named with the fix, a short soak's memory line."""
import json

import numpy as np
import pytest
from PIL import Image

from client.segment import main as segment_main

pytestmark = pytest.mark.integration


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "street.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 160, 3), np.uint8)).save(path)
    return path


@pytest.mark.parametrize("protocol,port,expect", [
    ("http", "grpc", "is Triton's gRPC endpoint, not HTTP: pass --protocol grpc"),
    ("http", "metrics", "is Triton's metrics endpoint"),
    ("grpc", "http", "is Triton's HTTP endpoint, not gRPC: pass --protocol http"),
    ("grpc", "metrics", "is Triton's metrics endpoint"),
])
def test_a_wrong_port_is_named_in_one_line(server, image, tmp_path, capsys, protocol, port, expect):
    url = f"localhost:{server['ports'][port]}"
    rc = segment_main([str(image), "--url", url, "--protocol", protocol, "--model", server["model"],
                       "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and expect in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_a_row_built_but_not_loaded_says_how_to_load_it(server, image, tmp_path, capsys, monkeypatch):
    repo = tmp_path / "model_repository"
    (repo / "new_row").mkdir(parents=True)
    (repo / "new_row" / "config.pbtxt").write_text('name: "new_row"\n')
    monkeypatch.setenv("SEGFORMER_MODEL_REPOSITORY", str(repo))
    rc = segment_main([str(image), "--url", f"localhost:{server['ports']['http']}", "--model", "new_row",
                       "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "'new_row' is not served" in err and "It is built in model_repository/" in err
    assert "make stop serve" in err


def test_options_between_files_and_the_model_size_as_h_x_w(server, image, tmp_path, capsys):
    other = tmp_path / "b.png"
    Image.fromarray(np.zeros((90, 200, 3), np.uint8)).save(other)
    rc = segment_main([str(image), "--url", f"localhost:{server['ports']['http']}", str(other), "--model",
                       server["model"], "--out", str(tmp_path / "o")])
    out = capsys.readouterr().out
    assert rc == 0 and "street.png: 120x160 (HxW) -> " in out and "b.png: 90x200 (HxW)" in out


def test_a_folder_without_video_gets_the_hint(image, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        segment_main([str(image.parent), "--model", "x"])
    assert e.value.code == 2 and "pass --video" in capsys.readouterr().err


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_evaluate_over_both_protocols(server, image, tmp_path, protocol):
    from client.evaluate import main as evaluate_main

    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (100, 140, 3), np.uint8)).save(images / f"{i}.png")
    rc = evaluate_main(["--images", str(images), "--models", server["other"], "--reference", server["model"],
                        "--url", f"localhost:{server['ports'][protocol]}", "--protocol", protocol,
                        "--concurrency", "3", "--out", str(tmp_path / "r")])
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert rc in (0, 1) and report["images"] == 3, report


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_closed_loop_over_both_protocols(server, tmp_path, protocol):
    from loadtest import closed_loop

    args = closed_loop.parser().parse_args(
        ["--model", server["null"], "--url", f"localhost:{server['ports'][protocol]}", "--protocol", protocol,
         "--metrics-url", f"localhost:{server['ports']['metrics']}", "--processes", "1", "--concurrency", "3",
         "--duration", "2", "--warmup", "0.5", "--payload", "raw-shm"])
    s = closed_loop.run(args)
    assert s["requests"] > 10 and s["failures"] == 0 and s["protocol"] == protocol, s


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_short_soak_over_both_protocols_reports_its_memory(server, tmp_path, capsys, protocol):
    from loadtest.soak import main as soak_main

    out = tmp_path / "soak"
    rc = soak_main(["--model", server["null"], "--url", f"localhost:{server['ports'][protocol]}", "--protocol",
                    protocol, "--duration", "4", "--probe", "2", "--warmup", "60", "--sample", "1",
                    "--in-flight", "3", "--server-pid", str(server["pid"]), "--out", str(out)])
    printed = capsys.readouterr().out
    r = json.loads((out / "soak.json").read_text())
    assert rc == 0 and r["summary"]["failures"] == 0 and r["protocol"] == protocol, printed
    rss = r["summary"]["rss_first_min_mb"]
    assert rss and rss > 10 and f"RSS {rss:.0f} -> " in printed  # not "RSS 0 -> 0 MB" when shorter than warm-up
