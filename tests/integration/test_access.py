"""`make serve` is not open to the network by default and keeps model control for the operator."""
import json

import pytest

from client.runners import TritonRunner
from server.access import ADMIN_HEADER, access_args, check_host, exposure_warning, is_loopback
from tests.conftest import http_post

pytestmark = pytest.mark.integration


def _listening(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on `port` (from /proc/net/tcp{,6})."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.split(":")
            if state == "0A" and int(p, 16) == port:  # 0A = LISTEN
                found.add(_address(addr))
    return found


def _address(hex_addr: str) -> str:
    """/proc/net/tcp{,6} local address -> text; IPv4-mapped IPv6 (::ffff:a.b.c.d) shown as IPv4."""
    if set(hex_addr) == {"0"}:
        return "0.0.0.0"
    if len(hex_addr) == 32 and hex_addr.startswith("0000000000000000FFFF0000"):
        hex_addr = hex_addr[24:]
    if len(hex_addr) == 8:
        return ".".join(str(int(hex_addr[i:i + 2], 16)) for i in (6, 4, 2, 0))
    return "::1" if hex_addr == "00000000000000000000000001000000" else hex_addr


def test_every_endpoint_listens_on_loopback_only(server):
    for name, port in server["ports"].items():
        assert _listening(port) == {"127.0.0.1"}, (name, _listening(port))


def test_model_control_is_refused_without_the_admin_key(server):
    base = f"http://127.0.0.1:{server['ports']['http']}/v2"
    status, body = http_post(f"{base}/repository/models/{server['model']}/unload")
    assert status in (401, 403) and "restricted" in body.lower() and ADMIN_HEADER in body
    status, _ = http_post(f"{base}/repository/index")
    assert status in (401, 403)
    with TritonRunner(server["model"], f"localhost:{server['ports']['http']}") as r:  # still served
        assert server["model"] in r.served_models()
    key = (server["state"] / "admin-key").read_text().strip()
    assert oct((server["state"] / "admin-key").stat().st_mode & 0o777) == "0o600"
    status, body = http_post(f"{base}/repository/index", headers={ADMIN_HEADER: key})
    assert status == 200 and server["model"] in {m["name"] for m in json.loads(body)}


def test_grpc_model_control_is_refused_too(server):
    import tritonclient.grpc as grpc
    from tritonclient.utils import InferenceServerException

    c = grpc.InferenceServerClient(f"localhost:{server['ports']['grpc']}")
    with pytest.raises(InferenceServerException, match="(?i)restricted"):
        c.unload_model(server["model"])
    assert c.is_model_ready(server["model"])


def test_host_option_checks_and_warns():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and not is_loopback("0.0.0.0")
    assert exposure_warning("127.0.0.1") is None and "0.0.0.0" in exposure_warning("0.0.0.0")
    with pytest.raises(ValueError, match="not an IP address"):
        check_host("everywhere")
    args = access_args("0.0.0.0", "k")
    assert "--http-address=0.0.0.0" in args and any(a.startswith("--grpc-restricted-protocol=model-repository")
                                                      for a in args)
