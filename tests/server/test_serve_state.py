"""`make stop` trusts nothing: a corrupt pid file, a server that exited and a pid reused by another process all
give one line and signal nothing."""
import json
import subprocess
import sys

from server.serve import recorded_server, write_pid


def test_pid_file_names_one_process(tmp_path):
    path = tmp_path / "server.pid"
    assert recorded_server(path) == (None, "no server running")
    path.write_text("garbage")
    pid, why = recorded_server(path)
    assert pid is None and "unreadable" in why
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        write_pid(path, proc.pid)
        assert recorded_server(path) == (proc.pid, "")
        rec = json.loads(path.read_text())
        path.write_text(json.dumps({"pid": proc.pid, "start": rec["start"] - 1}))  # same pid, another process
        pid, why = recorded_server(path)
        assert pid is None and "another process" in why
    finally:
        proc.kill()
        proc.wait()
    write_pid(path, proc.pid)
    pid, why = recorded_server(path)
    assert pid is None and "exited" in why
