"""Every bench command: --help documents each option; failures are one `error:` line (client.cli.run)."""
import importlib
import re

import pytest

BENCHES = ["bench.cpu", "bench.gpu", "bench.kernels_gpu", "bench.kernels_mixffn", "bench.kernel_resources", "bench.build_times", "bench.resize_modes", "bench.video"]


def _undocumented(text: str) -> list[str]:
    lines = text.splitlines()
    missing = []
    for i, line in enumerate(lines):
        m = re.match(r"^  (?:-\w[^,]*, )?(--[\w-]+)", line)
        if not m or m.group(1) == "--help":
            continue
        documented = re.search(r"\S\s{2,}\S", line.strip()) or (
            i + 1 < len(lines) and re.match(r"^\s{6,}\S", lines[i + 1]) and not lines[i + 1].lstrip().startswith("-"))
        if not documented:
            missing.append(m.group(1))
    return missing


@pytest.mark.parametrize("module", BENCHES)
def test_help_documents_every_option(module, capsys):
    with pytest.raises(SystemExit) as exc:
        importlib.import_module(module).main(["--help"])
    assert exc.value.code == 0
    assert _undocumented(capsys.readouterr().out) == []


def test_video_without_frames_is_one_error_line(tmp_path, capsys):
    from bench.video import main

    assert main(["--frames", str(tmp_path), "--out", str(tmp_path / "never")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {tmp_path}: no .jpg frames")
